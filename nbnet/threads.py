"""BLAS thread control while nbnet computes.

nbnet's own kernels run on Numba's threads; the matmuls between them run in NumPy's
BLAS. Left alone, OpenBLAS keeps its own threads spinning after each call, and on a
2-core machine they fight Numba's threads: a training step of the MNIST CNN measured
109 ms that way and 25 ms with BLAS held to one thread. threadpoolctl limits every BLAS
copy loaded in the process, and restores the user's setting afterwards.
"""

import functools

_blas_libraries = None
_numba_parallel = None  # numba.np.ufunc.parallel, imported on first use (numba loads slowly)


def numba_thread_count():
    """numba.get_num_threads(), read in 0.14 us instead of 0.73: Numba's own call takes two
    locks every time, and a one-image predict asks two to four times. Once Numba's threads
    run, its thread-local count is read directly (a private name of Numba's: where a version
    lacks it, or before the threads start, Numba's call answers)."""
    global _numba_parallel
    if _numba_parallel is None:
        from numba.np.ufunc import parallel

        _numba_parallel = parallel
    reader = getattr(_numba_parallel, "_get_num_threads", None)
    count = reader() if reader is not None else 0
    return count if count > 0 else _numba_parallel.get_num_threads()


def _blas():
    global _blas_libraries
    if _blas_libraries is None:
        from threadpoolctl import ThreadpoolController

        # Inspecting the loaded libraries costs ms: do it once. Each call then reads and
        # sets the thread counts directly (1.5 us), where threadpoolctl's limit() takes
        # stock of every library first (7.6 us: a tenth of a one-image predict).
        _blas_libraries = ThreadpoolController().select(user_api="blas").lib_controllers
    return _blas_libraries


# Both context managers are classes rather than @contextmanager generators: a one-image
# predict enters them on every call (enter and exit, warm, generator -> class: the BLAS one
# 1.5 -> 0.8 us, the Numba one 4.3 -> 3.7).
class single_threaded_blas:
    """Every BLAS library loaded runs on one thread inside the block; each gets its own
    count back after it."""

    __slots__ = ("_before",)

    def __enter__(self):
        self._before = before = [library.num_threads for library in _blas()]
        for library, count in zip(_blas_libraries, before):
            if count != 1:
                library.set_num_threads(1)
        return self

    def __exit__(self, *exception):
        for library, count in zip(_blas_libraries, self._before):
            if count != 1:
                library.set_num_threads(count)


class numba_threads:
    """Numba's parallel kernels launched from this thread run on at most ``count``
    threads while the block runs. One sample's kernels are too small to share: waking the
    second core for each costs more than it saves (a one-image predict of
    tools/bench_zoo.py's networks, 2 cores, us, two threads -> one: seed_cnn 245 -> 162,
    mlp 261 -> 163, cifar 1050 -> 836, resnet_small 260 -> 226, strided 99 -> 95; at 4
    images one thread still won on seed_cnn, 0.88x, but lost or tied on mlp, cifar,
    resnet_small and strided, 1.0-1.3x). A one-image predict recorded as a program (see
    inference_program) runs on one thread or all, whichever it measured faster: a net of
    large convs gains by splitting their pixels."""

    __slots__ = ("_count", "_before")

    def __init__(self, count):
        self._count = count

    def __enter__(self):
        import numba

        self._before = numba_thread_count()
        if self._count < self._before:
            numba.set_num_threads(self._count)
        return self

    def __exit__(self, *exception):
        if self._count < self._before:
            import numba

            numba.set_num_threads(self._before)


def blas_limited(method):
    """Run ``method`` under single_threaded_blas."""
    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        with single_threaded_blas():
            return method(*args, **kwargs)

    return wrapper
