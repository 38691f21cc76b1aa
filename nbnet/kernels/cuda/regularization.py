"""CUDA twin of ``nbnet.kernels.regularization``: the weight penalty
l1 * sum|w| + l2 * sum(w^2), with its gradient added in place, over flat device arrays.
One thread per weight adds its gradient and writes its penalty term (float64); the terms
are summed deterministically (see ``losses.sum_float64``)."""

import numpy as np
from numba import cuda

from . import as_scalar, launch_1d, workspace
from .losses import sum_float64


@cuda.jit
def _penalty_kernel(weights, l1, l2, sign_scale, square_scale, zero, terms, grads):
    for i in range(cuda.grid(1), weights.shape[0], cuda.gridsize(1)):
        w = weights[i]
        terms[i] = l1 * abs(w) + l2 * w * w
        if w > 0:
            sign = sign_scale
        elif w < 0:
            sign = -sign_scale
        elif w == 0:
            sign = zero
        else:  # NaN, as np.sign
            sign = w
        grads[i] += sign + square_scale * w


def penalty_and_gradient(weights, l1, l2, grads, total_out=None):
    """Adds the penalty's gradient into ``grads``; returns the penalty (a Python float, or
    ``total_out``, a float64 device array of shape (1,), filled on the device)."""
    n = weights.shape[0]
    terms = workspace("regularization.terms", n, np.float64)
    if n:
        blocks, threads = launch_1d(n)
        dtype = weights.dtype
        _penalty_kernel[blocks, threads](weights, float(l1), float(l2), as_scalar(l1, dtype),
                                         as_scalar(2.0 * l2, dtype), as_scalar(0.0, dtype), terms, grads)
    return sum_float64(terms, total_out)
