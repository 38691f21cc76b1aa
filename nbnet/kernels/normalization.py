"""BatchNormalization kernels over (rows, channels) views: statistics per channel.

Statistics accumulate in float64 per fixed chunk of rows, so a float32 batch of
hundreds of thousands of rows keeps its precision and the result does not depend on
the thread count.

Each kernel also runs the elementwise activation of an Activation layer that follows the
normalisation (``code``, ``alpha`` as in activations.py; LINEAR for none): forward applies
it to each row as it is written, backward takes the gradient through it from the output
``y`` on the fly, so neither the activation's output nor its gradient is a pass of its own.
"""

import numpy as np
from numba import njit, prange

from . import REDUCTION_CHUNKS
from .activations import activate, gradient_from_output


@njit(parallel=True, cache=True)
def _column_moments(x):
    rows, channels = x.shape
    chunks = min(REDUCTION_CHUNKS, rows)
    sums = np.zeros((chunks, channels))
    squares = np.zeros((chunks, channels))
    for chunk in prange(chunks):
        for i in range(chunk * rows // chunks, (chunk + 1) * rows // chunks):
            for k in range(channels):
                value = np.float64(x[i, k])
                sums[chunk, k] += value
                squares[chunk, k] += value * value
    mean = sums.sum(axis=0) / rows
    variance = np.maximum(squares.sum(axis=0) / rows - mean * mean, 0.0)
    return mean, variance


@njit(parallel=True, cache=True, error_model="numpy", fastmath={"contract"})
def batchnorm_train_forward(x, gamma, beta, epsilon, code, alpha, x_hat, y, mean_out, variance_out):
    """y = activation(gamma * x_hat + beta), x_hat normalised with the batch's own mean and
    (biased) variance; keeps x_hat for backward."""
    rows, channels = x.shape
    mean, variance = _column_moments(x)
    inv_std = 1.0 / np.sqrt(variance + epsilon)
    for k in range(channels):
        mean_out[k] = mean[k]
        variance_out[k] = variance[k]
    for i in prange(rows):
        for k in range(channels):
            normed = (x[i, k] - mean[k]) * inv_std[k]
            x_hat[i, k] = normed
            y[i, k] = gamma[k] * normed + beta[k]
        activate(code, alpha, y[i])
    return inv_std


@njit(cache=True)
def update_moving_averages(moving_mean, moving_variance, mean, variance, momentum):
    """moving = momentum * moving + (1 - momentum) * batch statistic (Keras's rule)."""
    keep = moving_mean.dtype.type(momentum)
    take = moving_mean.dtype.type(1.0 - momentum)
    for k in range(moving_mean.shape[0]):
        moving_mean[k] = keep * moving_mean[k] + take * mean[k]
        moving_variance[k] = keep * moving_variance[k] + take * variance[k]


@njit(parallel=True, cache=True, error_model="numpy", fastmath={"contract"})
def batchnorm_infer(x, gamma, beta, moving_mean, moving_variance, epsilon, code, alpha, y):
    """y = activation(the affine map of the moving statistics applied to x)."""
    rows, channels = x.shape
    scale = np.empty(channels, dtype=x.dtype)
    shift = np.empty(channels, dtype=x.dtype)
    for k in range(channels):
        scale[k] = gamma[k] / np.sqrt(moving_variance[k] + epsilon)
        shift[k] = beta[k] - moving_mean[k] * scale[k]
    for i in prange(rows):
        for k in range(channels):
            y[i, k] = x[i, k] * scale[k] + shift[k]
        activate(code, alpha, y[i])


@njit(parallel=True, cache=True)
def batchnorm_backward(dy, y, code, alpha, x_hat, gamma, inv_std, dgamma, dbeta, dx):
    """With g = dy * activation'(.) (from the output ``y``): adds into dgamma/dbeta;
    dx = gamma*inv_std*(g - mean(g) - x_hat*mean(g*x_hat))."""
    rows, channels = dy.shape
    chunks = min(REDUCTION_CHUNKS, rows)
    sum_dy = np.zeros((chunks, channels))
    sum_dy_xhat = np.zeros((chunks, channels))
    zero = dy.dtype.type(0.0)
    for chunk in prange(chunks):
        for i in range(chunk * rows // chunks, (chunk + 1) * rows // chunks):
            for k in range(channels):
                grad = gradient_from_output(code, alpha, y[i, k], dy[i, k], zero)
                sum_dy[chunk, k] += grad
                sum_dy_xhat[chunk, k] += grad * x_hat[i, k]
    total_dy = sum_dy.sum(axis=0)
    total_dy_xhat = sum_dy_xhat.sum(axis=0)
    for k in range(channels):
        dbeta[k] += total_dy[k]
        dgamma[k] += total_dy_xhat[k]
    mean_dy = total_dy / rows
    mean_dy_xhat = total_dy_xhat / rows
    for i in prange(rows):
        for k in range(channels):
            grad = gradient_from_output(code, alpha, y[i, k], dy[i, k], zero)
            dx[i, k] = gamma[k] * inv_std[k] * (grad - mean_dy[k] - x_hat[i, k] * mean_dy_xhat[k])


@njit(parallel=True, cache=True)
def batchnorm_infer_backward(dy, y, code, alpha, x, gamma, moving_mean, moving_variance, epsilon, dgamma, dbeta, dx):
    """Backward of the inference transform (moving statistics held fixed), with g = dy *
    activation'(.) (from the output ``y``): adds into dgamma/dbeta; dx = gamma * g /
    sqrt(moving_variance + epsilon)."""
    rows, channels = dy.shape
    chunks = max(min(REDUCTION_CHUNKS, rows), 1)
    inv_std = 1.0 / np.sqrt(moving_variance.astype(np.float64) + epsilon)
    sum_dy = np.zeros((chunks, channels))
    sum_dy_xhat = np.zeros((chunks, channels))
    zero = dy.dtype.type(0.0)
    for chunk in prange(chunks):
        for i in range(chunk * rows // chunks, (chunk + 1) * rows // chunks):
            for k in range(channels):
                grad = gradient_from_output(code, alpha, y[i, k], dy[i, k], zero)
                sum_dy[chunk, k] += grad
                sum_dy_xhat[chunk, k] += grad * (x[i, k] - moving_mean[k]) * inv_std[k]
    total_dy = sum_dy.sum(axis=0)
    total_dy_xhat = sum_dy_xhat.sum(axis=0)
    for k in range(channels):
        dbeta[k] += total_dy[k]
        dgamma[k] += total_dy_xhat[k]
    for i in prange(rows):
        for k in range(channels):
            dx[i, k] = gamma[k] * inv_std[k] * gradient_from_output(code, alpha, y[i, k], dy[i, k], zero)
