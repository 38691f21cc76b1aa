"""CUDA twins of ``nbnet.kernels.optim``: one fused, elementwise update kernel per
optimizer over the flat parameter vector (one thread per parameter, grid-stride), with the
CPU kernels' Keras 3 formulas and the hyperparameters cast to the parameters' dtype.

Each launcher takes an optional ``halt`` (int32 device array of shape (1,)): while
halt[0] != 0 the kernel changes nothing. ``training.check_finite`` sets it when a step's
loss or gradients are not finite, so a diverged run keeps the weights of its last good
step without the host checking every step."""

import math

from numba import cuda

import numpy as np

from . import as_scalar, launch_1d

_never_halted = []


def _halt_flag(halt):
    if halt is not None:
        return halt
    if not _never_halted:
        _never_halted.append(cuda.to_device(np.zeros(1, np.int32)))
    return _never_halted[0]


def _launch_update(kernel, params, arrays, scalars, halt):
    """An elementwise update over the flat parameters: ``arrays`` (gradients, slots), then
    ``scalars`` cast to the parameters' dtype, then the halt flag."""
    if params.shape[0] == 0:
        return
    blocks, threads = launch_1d(params.shape[0])
    kernel[blocks, threads](params, *arrays, *(as_scalar(value, params.dtype) for value in scalars), _halt_flag(halt))


@cuda.jit
def _sgd_kernel(params, grads, velocity, lr, mu, use_momentum, nesterov, halt):
    if halt[0] != 0:
        return
    for i in range(cuda.grid(1), params.shape[0], cuda.gridsize(1)):
        if not use_momentum:
            params[i] -= lr * grads[i]
        else:
            v = mu * velocity[i] - lr * grads[i]
            velocity[i] = v
            params[i] += mu * v - lr * grads[i] if nesterov else v


def sgd_update(params, grads, velocity, learning_rate, momentum, nesterov, halt=None):
    n = params.shape[0]
    if n == 0:
        return
    dtype = params.dtype
    blocks, threads = launch_1d(n)
    _sgd_kernel[blocks, threads](params, grads, velocity, as_scalar(learning_rate, dtype), as_scalar(momentum, dtype),
                                 float(momentum) != 0.0, bool(nesterov), _halt_flag(halt))


@cuda.jit
def _adam_kernel(params, grads, m, v, alpha, b1, b2, eps, shrink, one, halt):
    if halt[0] != 0:
        return
    for i in range(cuda.grid(1), params.shape[0], cuda.gridsize(1)):
        g = grads[i]
        m[i] = b1 * m[i] + (one - b1) * g
        v[i] = b2 * v[i] + (one - b2) * g * g
        params[i] = params[i] * shrink - alpha * m[i] / (math.sqrt(v[i]) + eps)


def adam_update(params, grads, m, v, step_size, beta_1, beta_2, epsilon, decay, halt=None):
    """m, v moments; ``step_size`` = lr*sqrt(1-beta_2^t)/(1-beta_1^t) (Keras's folded bias
    correction); ``decay`` = lr*weight_decay for AdamW's decoupled decay, else 0."""
    _launch_update(_adam_kernel, params, (grads, m, v), (step_size, beta_1, beta_2, epsilon, 1.0 - decay, 1.0), halt)


@cuda.jit
def _rmsprop_kernel(params, grads, mean_square, average_grad, velocity, lr, r, mu, use_momentum, eps, centered, one,
                    halt):
    if halt[0] != 0:
        return
    for i in range(cuda.grid(1), params.shape[0], cuda.gridsize(1)):
        g = grads[i]
        mean_square[i] = r * mean_square[i] + (one - r) * g * g
        denominator = mean_square[i] + eps
        if centered:
            average_grad[i] = r * average_grad[i] + (one - r) * g
            denominator -= average_grad[i] * average_grad[i]
        update = lr * g / math.sqrt(denominator)
        if use_momentum:
            velocity[i] = mu * velocity[i] + update
            update = velocity[i]
        params[i] -= update


def rmsprop_update(params, grads, mean_square, average_grad, velocity, learning_rate, rho, momentum, epsilon,
                   centered, halt=None):
    n = params.shape[0]
    if n == 0:
        return
    dtype = params.dtype
    blocks, threads = launch_1d(n)
    _rmsprop_kernel[blocks, threads](params, grads, mean_square, average_grad, velocity,
                                     as_scalar(learning_rate, dtype), as_scalar(rho, dtype), as_scalar(momentum, dtype),
                                     float(momentum) > 0.0, as_scalar(epsilon, dtype), bool(centered),
                                     as_scalar(1.0, dtype), _halt_flag(halt))


@cuda.jit
def _adagrad_kernel(params, grads, accumulator, lr, eps, halt):
    if halt[0] != 0:
        return
    for i in range(cuda.grid(1), params.shape[0], cuda.gridsize(1)):
        g = grads[i]
        accumulator[i] += g * g
        params[i] -= lr * g / math.sqrt(accumulator[i] + eps)


def adagrad_update(params, grads, accumulator, learning_rate, epsilon, halt=None):
    _launch_update(_adagrad_kernel, params, (grads, accumulator), (learning_rate, epsilon), halt)


@cuda.jit
def _adadelta_kernel(params, grads, accumulated_grad, accumulated_delta, lr, r, eps, one, halt):
    if halt[0] != 0:
        return
    for i in range(cuda.grid(1), params.shape[0], cuda.gridsize(1)):
        g = grads[i]
        accumulated_grad[i] = r * accumulated_grad[i] + (one - r) * g * g
        delta = -math.sqrt(accumulated_delta[i] + eps) * g / math.sqrt(accumulated_grad[i] + eps)
        accumulated_delta[i] = r * accumulated_delta[i] + (one - r) * delta * delta
        params[i] += lr * delta


def adadelta_update(params, grads, accumulated_grad, accumulated_delta, learning_rate, rho, epsilon, halt=None):
    _launch_update(_adadelta_kernel, params, (grads, accumulated_grad, accumulated_delta),
                   (learning_rate, rho, epsilon, 1.0), halt)


@cuda.jit
def _adamax_kernel(params, grads, m, u, alpha, b1, b2, eps, one, halt):
    if halt[0] != 0:
        return
    for i in range(cuda.grid(1), params.shape[0], cuda.gridsize(1)):
        g = grads[i]
        m[i] = b1 * m[i] + (one - b1) * g
        scaled = b2 * u[i]
        magnitude = abs(g)
        u[i] = scaled if scaled > magnitude else magnitude
        params[i] -= alpha * m[i] / (u[i] + eps)


def adamax_update(params, grads, m, u, step_size, beta_1, beta_2, epsilon, halt=None):
    _launch_update(_adamax_kernel, params, (grads, m, u), (step_size, beta_1, beta_2, epsilon, 1.0), halt)


@cuda.jit
def _nadam_kernel(params, grads, m, v, lr, b1, b2, cm, cg, cv, eps, one, halt):
    if halt[0] != 0:
        return
    for i in range(cuda.grid(1), params.shape[0], cuda.gridsize(1)):
        g = grads[i]
        m[i] = b1 * m[i] + (one - b1) * g
        v[i] = b2 * v[i] + (one - b2) * g * g
        params[i] -= lr * (cm * m[i] + cg * g) / (math.sqrt(cv * v[i]) + eps)


def nadam_update(params, grads, m, v, learning_rate, beta_1, beta_2, momentum_scale, gradient_scale, velocity_scale,
                 epsilon, halt=None):
    _launch_update(_nadam_kernel, params, (grads, m, v), (learning_rate, beta_1, beta_2, momentum_scale, gradient_scale,
                                                         velocity_scale, epsilon, 1.0), halt)


@cuda.jit
def _clip_by_value_kernel(grads, high):
    # Comparisons, not min/max: the two-argument builtins fail Numba's CUDA PTX compile.
    for i in range(cuda.grid(1), grads.shape[0], cuda.gridsize(1)):
        g = grads[i]
        grads[i] = high if g > high else (-high if g < -high else g)


def clip_by_value(grads, limit, halt=None):
    if grads.shape[0]:
        blocks, threads = launch_1d(grads.shape[0])
        _clip_by_value_kernel[blocks, threads](grads, as_scalar(limit, grads.dtype))


@cuda.jit
def _clip_segments_kernel(grads, offsets, max_norm):
    """One thread per segment (a weight array): few segments, each summed in order."""
    for k in range(cuda.grid(1), offsets.shape[0] - 1, cuda.gridsize(1)):
        total = 0.0
        for i in range(offsets[k], offsets[k + 1]):
            total += grads[i] * grads[i]
        norm = math.sqrt(total)
        if norm > max_norm:
            scale = max_norm / norm
            for i in range(offsets[k], offsets[k + 1]):
                grads[i] *= scale


def clip_segments_by_norm(grads, offsets, max_norm, halt=None):
    if offsets.shape[0] > 1:
        blocks, threads = launch_1d(offsets.shape[0] - 1)
        _clip_segments_kernel[blocks, threads](grads, cuda.to_device(np.ascontiguousarray(offsets, np.int64)),
                                               float(max_norm))


@cuda.jit
def _decay_weights_kernel(params, keep, halt):
    if halt[0] != 0:
        return
    for i in range(cuda.grid(1), params.shape[0], cuda.gridsize(1)):
        params[i] *= keep


def decay_weights(params, factor, halt=None):
    _launch_update(_decay_weights_kernel, params, (), (1.0 - factor,), halt)
