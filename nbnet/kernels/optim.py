"""Optimizer update kernels over one flat parameter vector.

Every parameter of a model lives in one contiguous float32 array (layers hold views
into it), so each optimizer step is a single kernel launch over all parameters.
Elementwise only: each thread's piece of the vector (parallel.parallel_ranges) touches its
own elements, so there is no race.
Formulas follow Keras 3 (see nbnet/optimizers.py for the conventions).
"""

import numpy as np
from numba import njit

from .parallel import parallel_ranges, range_body


@range_body
def _sgd_update_range(begin, end, params, grads, velocity, learning_rate, momentum, nesterov):
    lr = params.dtype.type(learning_rate)
    mu = params.dtype.type(momentum)
    for i in range(np.uint64(begin), np.uint64(end)):
        if momentum == 0.0:
            params[i] -= lr * grads[i]
        else:
            v = mu * velocity[i] - lr * grads[i]
            velocity[i] = v
            params[i] += mu * v - lr * grads[i] if nesterov else v


@njit(cache=True)
def sgd_update(params, grads, velocity, learning_rate, momentum, nesterov):
    parallel_ranges(_sgd_update_range, params.shape[0], (params, grads, velocity, learning_rate, momentum, nesterov))


@range_body
def _adam_update_range(begin, end, params, grads, m, v, step_size, beta_1, beta_2, epsilon, decay):
    b1 = params.dtype.type(beta_1)
    b2 = params.dtype.type(beta_2)
    alpha = params.dtype.type(step_size)
    eps = params.dtype.type(epsilon)
    shrink = params.dtype.type(1.0 - decay)
    one = params.dtype.type(1.0)
    for i in range(np.uint64(begin), np.uint64(end)):
        g = grads[i]
        m[i] = b1 * m[i] + (one - b1) * g
        v[i] = b2 * v[i] + (one - b2) * g * g
        params[i] = params[i] * shrink - alpha * m[i] / (np.sqrt(v[i]) + eps)


@njit(cache=True)
def adam_update(params, grads, m, v, step_size, beta_1, beta_2, epsilon, decay):
    """m, v moments; ``step_size`` = lr*sqrt(1-beta_2^t)/(1-beta_1^t) (Keras's folded bias
    correction); ``decay`` = lr*weight_decay for AdamW's decoupled decay, else 0."""
    parallel_ranges(_adam_update_range, params.shape[0], (params, grads, m, v, step_size, beta_1, beta_2, epsilon,
                    decay))


@range_body
def _rmsprop_update_range(begin, end, params, grads, mean_square, average_grad, velocity, learning_rate, rho, momentum,
                         epsilon, centered):
    lr = params.dtype.type(learning_rate)
    r = params.dtype.type(rho)
    mu = params.dtype.type(momentum)
    eps = params.dtype.type(epsilon)
    one = params.dtype.type(1.0)
    for i in range(np.uint64(begin), np.uint64(end)):
        g = grads[i]
        mean_square[i] = r * mean_square[i] + (one - r) * g * g
        denominator = mean_square[i] + eps
        if centered:
            average_grad[i] = r * average_grad[i] + (one - r) * g
            denominator -= average_grad[i] * average_grad[i]
        update = lr * g / np.sqrt(denominator)
        if momentum > 0.0:
            velocity[i] = mu * velocity[i] + update
            update = velocity[i]
        params[i] -= update


@njit(cache=True)
def rmsprop_update(params, grads, mean_square, average_grad, velocity, learning_rate, rho, momentum, epsilon, centered):
    """Keras 3's RMSprop: epsilon inside the square root, lr * g / sqrt(ms + eps); centered
    subtracts the squared running mean of the gradient (``average_grad``) from ms."""
    parallel_ranges(_rmsprop_update_range, params.shape[0], (params, grads, mean_square, average_grad, velocity,
                    learning_rate, rho, momentum, epsilon, centered))


@range_body
def _adagrad_update_range(begin, end, params, grads, accumulator, learning_rate, epsilon):
    lr = params.dtype.type(learning_rate)
    eps = params.dtype.type(epsilon)
    for i in range(np.uint64(begin), np.uint64(end)):
        g = grads[i]
        accumulator[i] += g * g
        params[i] -= lr * g / np.sqrt(accumulator[i] + eps)


@njit(cache=True)
def adagrad_update(params, grads, accumulator, learning_rate, epsilon):
    """Keras 3's Adagrad: acc += g^2; p -= lr * g / sqrt(acc + eps)."""
    parallel_ranges(_adagrad_update_range, params.shape[0], (params, grads, accumulator, learning_rate, epsilon))


@range_body
def _adadelta_update_range(begin, end, params, grads, accumulated_grad, accumulated_delta, learning_rate, rho, epsilon):
    lr = params.dtype.type(learning_rate)
    r = params.dtype.type(rho)
    eps = params.dtype.type(epsilon)
    one = params.dtype.type(1.0)
    for i in range(np.uint64(begin), np.uint64(end)):
        g = grads[i]
        accumulated_grad[i] = r * accumulated_grad[i] + (one - r) * g * g
        delta = -np.sqrt(accumulated_delta[i] + eps) * g / np.sqrt(accumulated_grad[i] + eps)
        accumulated_delta[i] = r * accumulated_delta[i] + (one - r) * delta * delta
        params[i] += lr * delta


@njit(cache=True)
def adadelta_update(params, grads, accumulated_grad, accumulated_delta, learning_rate, rho, epsilon):
    """Keras 3's Adadelta: the step is g scaled by rms(past steps) / rms(past gradients),
    each rms with epsilon inside the root, then multiplied by lr."""
    parallel_ranges(_adadelta_update_range, params.shape[0], (params, grads, accumulated_grad, accumulated_delta,
                    learning_rate, rho, epsilon))


@range_body
def _adamax_update_range(begin, end, params, grads, m, u, step_size, beta_1, beta_2, epsilon):
    b1 = params.dtype.type(beta_1)
    b2 = params.dtype.type(beta_2)
    alpha = params.dtype.type(step_size)
    eps = params.dtype.type(epsilon)
    one = params.dtype.type(1.0)
    for i in range(np.uint64(begin), np.uint64(end)):
        g = grads[i]
        m[i] = b1 * m[i] + (one - b1) * g
        u[i] = max(b2 * u[i], abs(g))
        params[i] -= alpha * m[i] / (u[i] + eps)


@njit(cache=True)
def adamax_update(params, grads, m, u, step_size, beta_1, beta_2, epsilon):
    """Keras 3's Adamax: u = max(beta_2 * u, |g|); ``step_size`` = lr / (1 - beta_1^t)."""
    parallel_ranges(_adamax_update_range, params.shape[0], (params, grads, m, u, step_size, beta_1, beta_2, epsilon))


@range_body
def _nadam_update_range(begin, end, params, grads, m, v, learning_rate, beta_1, beta_2, momentum_scale, gradient_scale,
                       velocity_scale, epsilon):
    lr = params.dtype.type(learning_rate)
    b1 = params.dtype.type(beta_1)
    b2 = params.dtype.type(beta_2)
    cm = params.dtype.type(momentum_scale)
    cg = params.dtype.type(gradient_scale)
    cv = params.dtype.type(velocity_scale)
    eps = params.dtype.type(epsilon)
    one = params.dtype.type(1.0)
    for i in range(np.uint64(begin), np.uint64(end)):
        g = grads[i]
        m[i] = b1 * m[i] + (one - b1) * g
        v[i] = b2 * v[i] + (one - b2) * g * g
        params[i] -= lr * (cm * m[i] + cg * g) / (np.sqrt(cv * v[i]) + eps)


@njit(cache=True)
def nadam_update(params, grads, m, v, learning_rate, beta_1, beta_2, momentum_scale, gradient_scale, velocity_scale,
                 epsilon):
    """Keras 3's Nadam. The per-step scalars come from the optimizer: m_hat =
    momentum_scale * m + gradient_scale * g, v_hat = velocity_scale * v."""
    parallel_ranges(_nadam_update_range, params.shape[0], (params, grads, m, v, learning_rate, beta_1, beta_2,
                    momentum_scale, gradient_scale, velocity_scale, epsilon))


@range_body
def _clip_by_value_range(begin, end, grads, limit):
    high = grads.dtype.type(limit)
    for i in range(np.uint64(begin), np.uint64(end)):
        grads[i] = min(max(grads[i], -high), high)


@njit(cache=True)
def clip_by_value(grads, limit):
    """Keras's clipvalue: every gradient into [-limit, limit]."""
    parallel_ranges(_clip_by_value_range, grads.shape[0], (grads, limit))


@range_body
def _clip_segments_by_norm_range(begin, end, grads, offsets, max_norm):
    for k in range(begin, end):
        total = 0.0
        for i in range(offsets[k], offsets[k + 1]):
            total += np.float64(grads[i]) * grads[i]
        norm = np.sqrt(total)
        if norm > max_norm:
            scale = grads.dtype.type(max_norm / norm)
            for i in range(offsets[k], offsets[k + 1]):
                grads[i] *= scale


@njit(cache=True)
def clip_segments_by_norm(grads, offsets, max_norm):
    """Keras's clipnorm (one segment per weight array) and global_clipnorm (one segment):
    a segment whose L2 norm exceeds ``max_norm`` is scaled down to it."""
    parallel_ranges(_clip_segments_by_norm_range, offsets.shape[0] - 1, (grads, offsets, max_norm))


@range_body
def _decay_weights_range(begin, end, params, factor):
    keep = params.dtype.type(1.0 - factor)
    for i in range(np.uint64(begin), np.uint64(end)):
        params[i] *= keep


@njit(cache=True)
def decay_weights(params, factor):
    """Keras 3's decoupled weight decay for any optimizer: w -= lr * weight_decay * w."""
    parallel_ranges(_decay_weights_range, params.shape[0], (params, factor))
