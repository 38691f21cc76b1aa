"""Rescaling's kernel: y = x * scale + offset, elementwise."""

import numpy as np
from numba import njit

from .parallel import parallel_ranges, range_body


@range_body
def _scale_shift_range(begin, end, values, scale, offset, out):
    s = out.dtype.type(scale)
    o = out.dtype.type(offset)
    for i in range(np.uint64(begin), np.uint64(end)):
        out[i] = values[i] * s + o


@njit(cache=True)
def scale_shift(values, scale, offset, out):
    """out = values * scale + offset over 1-D views, in the output's dtype (``out`` may be
    ``values``). The backward pass is the same kernel with offset 0."""
    parallel_ranges(_scale_shift_range, values.shape[0], (values, scale, offset, out))
