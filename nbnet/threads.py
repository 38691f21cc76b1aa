"""BLAS thread control while nbnet computes.

nbnet's own kernels run on Numba's threads; the matmuls between them run in NumPy's
BLAS. Left alone, OpenBLAS keeps its own threads spinning after each call, and on a
2-core machine they fight Numba's threads: a training step of the MNIST CNN measured
109 ms that way and 25 ms with BLAS held to one thread. threadpoolctl limits every BLAS
copy loaded in the process, and restores the user's setting afterwards.
"""

import functools
from contextlib import contextmanager

_controller = None


@contextmanager
def single_threaded_blas():
    global _controller
    if _controller is None:
        from threadpoolctl import ThreadpoolController

        _controller = ThreadpoolController()  # inspecting the loaded libraries costs ms: do it once
    with _controller.limit(limits=1, user_api="blas"):
        yield


def blas_limited(method):
    """Run ``method`` under single_threaded_blas."""
    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        with single_threaded_blas():
            return method(*args, **kwargs)

    return wrapper
