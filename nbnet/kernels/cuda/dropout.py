"""CUDA twin of ``nbnet.kernels.dropout``: multiply by the (host-drawn, pre-scaled) mask."""

from numba import cuda

from . import launch_1d


@cuda.jit
def _apply_mask_kernel(values, mask, out):
    for i in range(cuda.grid(1), values.shape[0], cuda.gridsize(1)):
        out[i] = values[i] * mask[i]


def apply_mask(values, mask, out):
    """out = values * mask, elementwise over 1-D views; ``out`` may be ``values``."""
    n = values.shape[0]
    if n:
        blocks, threads = launch_1d(n)
        _apply_mask_kernel[blocks, threads](values, mask, out)
