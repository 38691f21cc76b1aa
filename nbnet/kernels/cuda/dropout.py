"""CUDA twin of ``nbnet.kernels.dropout``: keep and scale where the host-drawn bits reach
the threshold."""

from numba import cuda

from . import as_scalar, launch_1d


@cuda.jit
def _apply_mask_kernel(values, keep_bits, threshold, scale, zero, out):
    for i in range(cuda.grid(1), values.shape[0], cuda.gridsize(1)):
        out[i] = values[i] * scale if keep_bits[i] >= threshold else zero


def apply_mask(values, keep_bits, threshold, scale, out):
    """out = values * scale where keep_bits >= threshold, else 0, elementwise over 1-D
    views; ``out`` may be ``values``."""
    n = values.shape[0]
    if n:
        blocks, threads = launch_1d(n)
        _apply_mask_kernel[blocks, threads](values, keep_bits, threshold, as_scalar(scale, out.dtype),
                                            as_scalar(0.0, out.dtype), out)
