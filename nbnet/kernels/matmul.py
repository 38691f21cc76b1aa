"""Matrix products on all cores with single-threaded BLAS.

BLAS is held to one thread while nbnet runs (see nbnet/threads.py), because OpenBLAS's
own threads spin after each call and starve Numba's. To still use every core for the
large products, they are split into row blocks (or, for x.T @ dy, blocks of the summed
axis) and each block runs on a plain worker thread: NumPy releases the GIL inside BLAS,
and idle workers sleep on a queue instead of spinning.
"""

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

# Below this many multiply-adds a product is faster on one thread than handed out: on
# 2 cores the hand-off and each worker packing the whole right-hand matrix cost more than
# the halved work up to about 50M (Dense 1600->64 at batch 128, 13M: 0.17 ms on one
# thread, 0.25 ms split; its x.T @ dy: 0.18 vs 0.41 ms; 71M: 0.92 vs 0.59 ms split).
PARALLEL_MIN_MACS = 50_000_000

_pool = None
_workers = None


def _executor():
    global _pool, _workers
    if _pool is None:
        import numba

        _workers = max(1, min(numba.get_num_threads(), os.cpu_count() or 1))
        _pool = ThreadPoolExecutor(max_workers=_workers, thread_name_prefix="nbnet-matmul")
    return _pool, _workers


def matmul(a, b, out):
    """out = a @ b, rows of ``a`` split across the worker threads when it pays."""
    rows, inner = a.shape
    pool, workers = _executor()
    if workers == 1 or rows * inner * b.shape[1] < PARALLEL_MIN_MACS or rows < 2 * workers:
        return np.matmul(a, b, out=out)
    bounds = [rows * i // workers for i in range(workers + 1)]
    futures = [pool.submit(np.matmul, a[lo:hi], b, out=out[lo:hi]) for lo, hi in zip(bounds, bounds[1:])]
    for future in futures:
        future.result()
    return out


def add_transposed_product(a, b, grad, scratch):
    """grad += a.T @ b (a weight gradient: the sum over the batch rows of ``a`` and ``b``).
    The rows are split across the workers; each writes its partial product into
    ``scratch[k]`` (``scratch`` has shape (workers(), *grad.shape)), then all are added."""
    rows = a.shape[0]
    pool, count = _executor()
    if count == 1 or rows * a.shape[1] * b.shape[1] < PARALLEL_MIN_MACS or rows < 2 * count:
        np.matmul(a.T, b, out=scratch[0])
        grad += scratch[0]
        return
    bounds = [rows * i // count for i in range(count + 1)]
    futures = [pool.submit(np.matmul, a[lo:hi].T, b[lo:hi], out=scratch[k])
               for k, (lo, hi) in enumerate(zip(bounds, bounds[1:]))]
    for future in futures:
        future.result()
    for k in range(count):
        grad += scratch[k]


def for_each_worker(task, count):
    """Runs task(first, stop) on each worker thread over its contiguous part of
    range(count), waits for all and returns their results in order; in the calling
    thread when there is one part. (Running the first part in the calling thread instead
    measured slower: the Kaggle-style CNN's training step at batch 128 80 -> 96 ms.)"""
    pool, count_workers = _executor()
    parts = min(count_workers, count)
    if parts <= 1:
        return [task(0, count)]
    bounds = [count * i // parts for i in range(parts + 1)]
    futures = [pool.submit(task, lo, hi) for lo, hi in zip(bounds, bounds[1:])]
    return [future.result() for future in futures]


def workers():
    return _executor()[1]
