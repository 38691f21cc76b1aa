"""CUDA twin of ``nbnet.kernels.rescaling``."""

from numba import cuda

from . import as_scalar, launch_1d


@cuda.jit
def _scale_shift_kernel(values, scale, offset, out):
    for i in range(cuda.grid(1), values.shape[0], cuda.gridsize(1)):
        out[i] = values[i] * scale + offset


def scale_shift(values, scale, offset, out):
    """out = values * scale + offset over 1-D views (``out`` may be ``values``)."""
    n = values.shape[0]
    if n:
        blocks, threads = launch_1d(n)
        _scale_shift_kernel[blocks, threads](values, as_scalar(scale, out.dtype), as_scalar(offset, out.dtype), out)
