"""CUDA twin of ``nbnet.kernels.dropout``: keep and scale where the bits hashed from the
step's key and the unit's index reach the threshold (the same hash, so the same units)."""

import numpy as np
from numba import cuda

from ..dropout import GOLDEN, MIX_1, MIX_2
from . import as_scalar, launch_1d


@cuda.jit(device=True)
def _keep_bits(key, index):
    z = key + (index + np.uint64(1)) * GOLDEN
    z = (z ^ (z >> np.uint64(30))) * MIX_1
    z = (z ^ (z >> np.uint64(27))) * MIX_2
    return (z ^ (z >> np.uint64(31))) >> np.uint64(32)


@cuda.jit
def _apply_mask_kernel(values, key, threshold, scale, zero, out):
    for i in range(cuda.grid(1), values.shape[0], cuda.gridsize(1)):
        out[i] = values[i] * scale if _keep_bits(key, np.uint64(i)) >= threshold else zero


def apply_mask(values, key, threshold, scale, out):
    """out = values * scale where the unit's bits under ``key`` reach ``threshold``, else 0,
    elementwise over 1-D views; ``out`` may be ``values``."""
    n = values.shape[0]
    if n:
        blocks, threads = launch_1d(n)
        _apply_mask_kernel[blocks, threads](values, np.uint64(key), np.uint64(threshold), as_scalar(scale, out.dtype),
                                            as_scalar(0.0, out.dtype), out)
