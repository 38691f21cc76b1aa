"""Dropout's kernel: multiply by a keep-mask already scaled by 1/(1 - rate). The mask is
drawn on the host from the model's seeded generator, so a seeded run drops the same units
on the CPU and on the GPU."""

from numba import njit


@njit(cache=True)
def apply_mask(values, mask, out):
    """out = values * mask, elementwise over 1-D views; ``out`` may be ``values``."""
    for i in range(values.shape[0]):
        out[i] = values[i] * mask[i]
