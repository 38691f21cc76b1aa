"""Optimizer update kernels over one flat parameter vector.

Every parameter of a model lives in one contiguous float32 array (layers hold views
into it), so each optimizer step is a single kernel launch over all parameters.
Elementwise only: each prange iteration touches its own element, so there is no race.
Formulas follow Keras 3 (see nbnet/optimizers.py for the conventions).
"""

import numpy as np
from numba import njit, prange


@njit(parallel=True, cache=True)
def sgd_update(params, grads, velocity, learning_rate, momentum, nesterov):
    lr = params.dtype.type(learning_rate)
    mu = params.dtype.type(momentum)
    for i in prange(params.shape[0]):
        if momentum == 0.0:
            params[i] -= lr * grads[i]
        else:
            v = mu * velocity[i] - lr * grads[i]
            velocity[i] = v
            params[i] += mu * v - lr * grads[i] if nesterov else v


@njit(parallel=True, cache=True)
def adam_update(params, grads, m, v, step_size, beta_1, beta_2, epsilon, decay):
    """m, v moments; ``step_size`` = lr*sqrt(1-beta_2^t)/(1-beta_1^t) (Keras's folded bias
    correction); ``decay`` = lr*weight_decay for AdamW's decoupled decay, else 0."""
    b1 = params.dtype.type(beta_1)
    b2 = params.dtype.type(beta_2)
    alpha = params.dtype.type(step_size)
    eps = params.dtype.type(epsilon)
    shrink = params.dtype.type(1.0 - decay)
    one = params.dtype.type(1.0)
    for i in prange(params.shape[0]):
        g = grads[i]
        m[i] = b1 * m[i] + (one - b1) * g
        v[i] = b2 * v[i] + (one - b2) * g * g
        params[i] = params[i] * shrink - alpha * m[i] / (np.sqrt(v[i]) + eps)


@njit(parallel=True, cache=True)
def rmsprop_update(params, grads, mean_square, velocity, learning_rate, rho, momentum, epsilon):
    lr = params.dtype.type(learning_rate)
    r = params.dtype.type(rho)
    mu = params.dtype.type(momentum)
    eps = params.dtype.type(epsilon)
    one = params.dtype.type(1.0)
    for i in prange(params.shape[0]):
        g = grads[i]
        mean_square[i] = r * mean_square[i] + (one - r) * g * g
        update = lr * g / (np.sqrt(mean_square[i]) + eps)
        if momentum > 0.0:
            velocity[i] = mu * velocity[i] + update
            update = velocity[i]
        params[i] -= update
