"""Rescaling's kernel: y = x * scale + offset, elementwise."""

from numba import njit, prange


@njit(parallel=True, cache=True)
def scale_shift(values, scale, offset, out):
    """out = values * scale + offset over 1-D views, in the output's dtype (``out`` may be
    ``values``). The backward pass is the same kernel with offset 0."""
    s = out.dtype.type(scale)
    o = out.dtype.type(offset)
    for i in prange(values.shape[0]):
        out[i] = values[i] * s + o
