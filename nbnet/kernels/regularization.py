"""Weight-penalty kernel: l1 * sum|w| + l2 * sum(w^2), with its gradient added in place."""

import numpy as np
from numba import njit


@njit(cache=True)
def penalty_and_gradient(weights, l1, l2, grads):
    total = 0.0
    sign_scale = weights.dtype.type(l1)
    square_scale = weights.dtype.type(2.0 * l2)
    for i in range(weights.shape[0]):
        w = weights[i]
        total += l1 * abs(w) + l2 * w * w
        grads[i] += sign_scale * np.sign(w) + square_scale * w
    return total
