"""The worker threads that the large matrix products and the per-image kernels run on.

Plain Python threads, one per core: NumPy's BLAS and ``@njit(nogil=True)`` kernels release
the GIL, so the workers run truly in parallel, and idle workers sleep on a queue instead of
spinning. A kernel run this way is compiled without ``parallel=True``, whose lowering cost
~1-2.5 s of compile time per kernel; and it shares its threads with the matmuls, so no two
thread pools contend for the cores between one call and the next.
"""

import os
from concurrent.futures import ThreadPoolExecutor

_pool = None
_count = None


def executor():
    """(pool, number of workers): one worker per core Numba may use."""
    global _pool, _count
    if _pool is None:
        import numba

        _count = max(1, min(numba.get_num_threads(), os.cpu_count() or 1))
        _pool = ThreadPoolExecutor(max_workers=_count, thread_name_prefix="nbnet-worker")
    return _pool, _count


def count():
    return executor()[1]


def run_chunks(kernel, chunks, *args):
    """kernel(first, stop, *args) over chunks 0..chunks-1, one contiguous share per worker
    (the calling thread takes the first). ``kernel`` must be @njit(nogil=True), and each
    chunk must write only its own outputs: the shares run at the same time."""
    pool, workers = executor()
    shares = min(workers, chunks)
    if shares <= 1:
        kernel(0, chunks, *args)
        return
    bounds = [chunks * k // shares for k in range(shares + 1)]
    futures = [pool.submit(kernel, first, stop, *args) for first, stop in zip(bounds[1:-1], bounds[2:])]
    try:
        kernel(bounds[0], bounds[1], *args)
    finally:
        for future in futures:
            future.result()
