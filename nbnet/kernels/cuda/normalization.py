"""CUDA twins of ``nbnet.kernels.normalization``: BatchNormalization over (rows, channels)
device arrays, statistics per channel.

Statistics accumulate in float64, as on the CPU, by a deterministic two-pass reduction:
one thread per (row chunk, channel) writes partial sums, then one thread per channel adds
the chunks in order and finishes the per-channel values; the normalisation itself runs one
thread per element. A fused activation (``code``, ``alpha``) runs as the activation
kernels of activations.py, after the forward normalisation and before the backward one
(on the gradient in place): the same values as the CPU's single pass.
"""

import math

import numpy as np
from numba import cuda

from . import as_scalar, chunking, launch_1d, workspace
from .activations import LINEAR, activation_backward, bias_activation_forward


@cuda.jit(device=True)
def _max(a, b):
    """Python's max(a, b), spelled out: with Numba 0.68's CUDA target the two-argument
    builtin failed to compile in the offline PTX check (tests/test_cuda_kernels.py)."""
    return b if b > a else a


@cuda.jit
def _moment_partials_kernel(x, sums, squares):
    rows, channels = x.shape
    chunks = sums.shape[0]
    for idx in range(cuda.grid(1), chunks * channels, cuda.gridsize(1)):
        chunk = idx // channels
        k = idx - chunk * channels
        total = 0.0
        total_sq = 0.0
        for i in range(chunk * rows // chunks, (chunk + 1) * rows // chunks):
            value = x[i, k] + 0.0  # float64, as np.float64(x[i, k])
            total += value
            total_sq += value * value
        sums[chunk, k] = total
        squares[chunk, k] = total_sq


@cuda.jit
def _moments_finish_kernel(sums, squares, rows, epsilon, mean_out, variance_out, mean64, inv_std):
    chunks, channels = sums.shape
    for k in range(cuda.grid(1), channels, cuda.gridsize(1)):
        total = 0.0
        total_sq = 0.0
        for chunk in range(chunks):
            total += sums[chunk, k]
            total_sq += squares[chunk, k]
        mean = total / rows
        variance = _max(total_sq / rows - mean * mean, 0.0)
        mean_out[k] = mean
        variance_out[k] = variance
        mean64[k] = mean
        inv_std[k] = 1.0 / math.sqrt(variance + epsilon)


@cuda.jit
def _normalise_kernel(x, gamma, beta, mean64, inv_std, y):
    rows, channels = x.shape
    for idx in range(cuda.grid(1), rows * channels, cuda.gridsize(1)):
        i = idx // channels
        k = idx - i * channels
        y[i, k] = gamma[k] * ((x[i, k] - mean64[k]) * inv_std[k]) + beta[k]


def batchnorm_train_forward(x, gamma, beta, epsilon, code, alpha, y, mean_out, variance_out, inv_std=None):
    """Normalise with the batch's own mean and (biased) variance (backward takes x_hat again
    from x, ``mean_out`` and inv_std).
    Returns ``inv_std`` (float64, per channel; a new device array unless one is given),
    which ``batchnorm_backward`` takes."""
    rows, channels = x.shape
    if inv_std is None:
        inv_std = cuda.device_array(channels, dtype=np.float64)
    if rows * channels == 0:
        return inv_std
    chunks = chunking(rows)
    sums = workspace("normalization.sums", (chunks, channels), np.float64)
    squares = workspace("normalization.squares", (chunks, channels), np.float64)
    mean64 = workspace("normalization.mean", channels, np.float64)
    blocks, threads = launch_1d(chunks * channels)
    _moment_partials_kernel[blocks, threads](x, sums, squares)
    blocks, threads = launch_1d(channels)
    _moments_finish_kernel[blocks, threads](sums, squares, rows, float(epsilon), mean_out, variance_out, mean64,
                                            inv_std)
    blocks, threads = launch_1d(rows * channels)
    _normalise_kernel[blocks, threads](x, gamma, beta, mean64, inv_std, y)
    if code != LINEAR:
        bias_activation_forward(y, None, code, alpha, y)
    return inv_std


@cuda.jit
def _moving_averages_kernel(moving_mean, moving_variance, mean, variance, keep, take):
    for k in range(cuda.grid(1), moving_mean.shape[0], cuda.gridsize(1)):
        moving_mean[k] = keep * moving_mean[k] + take * mean[k]
        moving_variance[k] = keep * moving_variance[k] + take * variance[k]


def update_moving_averages(moving_mean, moving_variance, mean, variance, momentum):
    """moving = momentum * moving + (1 - momentum) * batch statistic (Keras's rule)."""
    channels = moving_mean.shape[0]
    if channels == 0:
        return
    dtype = moving_mean.dtype
    blocks, threads = launch_1d(channels)
    _moving_averages_kernel[blocks, threads](moving_mean, moving_variance, mean, variance,
                                             as_scalar(momentum, dtype), as_scalar(1.0 - momentum, dtype))


@cuda.jit
def _infer_coefficients_kernel(gamma, beta, moving_mean, moving_variance, epsilon, scale, shift):
    for k in range(cuda.grid(1), gamma.shape[0], cuda.gridsize(1)):
        scale[k] = gamma[k] / math.sqrt(moving_variance[k] + epsilon)
        shift[k] = beta[k] - moving_mean[k] * scale[k]


@cuda.jit
def _affine_kernel(x, scale, shift, y):
    rows, channels = x.shape
    for idx in range(cuda.grid(1), rows * channels, cuda.gridsize(1)):
        i = idx // channels
        k = idx - i * channels
        y[i, k] = x[i, k] * scale[k] + shift[k]


def batchnorm_infer(x, gamma, beta, moving_mean, moving_variance, epsilon, code, alpha, y):
    rows, channels = x.shape
    if rows * channels == 0:
        return
    coefficients = workspace("normalization.coefficients", (2, channels), x.dtype)
    scale, shift = coefficients[0], coefficients[1]
    blocks, threads = launch_1d(channels)
    _infer_coefficients_kernel[blocks, threads](gamma, beta, moving_mean, moving_variance, float(epsilon), scale,
                                                shift)
    blocks, threads = launch_1d(rows * channels)
    _affine_kernel[blocks, threads](x, scale, shift, y)
    if code != LINEAR:
        bias_activation_forward(y, None, code, alpha, y)


@cuda.jit
def _backward_partials_kernel(dy, x, center, inv_std, sum_dy, sum_dy_xhat):
    """Per (chunk, channel): the sums of dy and of dy * x_hat, x_hat = (x - center) * inv_std."""
    rows, channels = dy.shape
    chunks = sum_dy.shape[0]
    for idx in range(cuda.grid(1), chunks * channels, cuda.gridsize(1)):
        chunk = idx // channels
        k = idx - chunk * channels
        total = 0.0
        total_xhat = 0.0
        for i in range(chunk * rows // chunks, (chunk + 1) * rows // chunks):
            total += dy[i, k]
            total_xhat += dy[i, k] * (x[i, k] - center[k]) * inv_std[k]
        sum_dy[chunk, k] = total
        sum_dy_xhat[chunk, k] = total_xhat


@cuda.jit
def _backward_finish_kernel(sum_dy, sum_dy_xhat, rows, dgamma, dbeta, means):
    """Adds the totals into dgamma/dbeta; means[0] = mean(dy), means[1] = mean(dy*x_hat)."""
    chunks, channels = sum_dy.shape
    for k in range(cuda.grid(1), channels, cuda.gridsize(1)):
        total = 0.0
        total_xhat = 0.0
        for chunk in range(chunks):
            total += sum_dy[chunk, k]
            total_xhat += sum_dy_xhat[chunk, k]
        dbeta[k] += total
        dgamma[k] += total_xhat
        means[0, k] = total / rows
        means[1, k] = total_xhat / rows


@cuda.jit
def _backward_dx_kernel(dy, x, mean, gamma, inv_std, means, dx):
    rows, channels = dy.shape
    for idx in range(cuda.grid(1), rows * channels, cuda.gridsize(1)):
        i = idx // channels
        k = idx - i * channels
        x_hat = (x[i, k] - mean[k]) * inv_std[k]
        dx[i, k] = gamma[k] * inv_std[k] * (dy[i, k] - means[0, k] - x_hat * means[1, k])


def batchnorm_backward(dy, y, code, alpha, x, mean, gamma, beta, inv_std, dgamma, dbeta, dx):
    """With dy first taken through the activation from the output ``y`` (in place) and
    x_hat = (x - mean) * inv_std (the forward's input and batch statistics): adds into
    dgamma/dbeta; dx = gamma*inv_std*(dy - mean(dy) - x_hat*mean(dy*x_hat))."""
    rows, channels = dy.shape
    if rows * channels == 0:
        return
    if code != LINEAR:
        activation_backward(y, dy, code, alpha, dy, None)
    chunks = chunking(rows)
    sum_dy = workspace("normalization.sums", (chunks, channels), np.float64)
    sum_dy_xhat = workspace("normalization.squares", (chunks, channels), np.float64)
    means = workspace("normalization.means", (2, channels), np.float64)
    blocks, threads = launch_1d(chunks * channels)
    _backward_partials_kernel[blocks, threads](dy, x, mean, inv_std, sum_dy, sum_dy_xhat)
    blocks, threads = launch_1d(channels)
    _backward_finish_kernel[blocks, threads](sum_dy, sum_dy_xhat, rows, dgamma, dbeta, means)
    blocks, threads = launch_1d(rows * channels)
    _backward_dx_kernel[blocks, threads](dy, x, mean, gamma, inv_std, means, dx)


@cuda.jit
def _inv_std_kernel(moving_variance, epsilon, inv_std):
    for k in range(cuda.grid(1), moving_variance.shape[0], cuda.gridsize(1)):
        inv_std[k] = 1.0 / math.sqrt(moving_variance[k] + 0.0 + epsilon)


@cuda.jit
def _scale_kernel(dy, gamma, inv_std, dx):
    rows, channels = dy.shape
    for idx in range(cuda.grid(1), rows * channels, cuda.gridsize(1)):
        i = idx // channels
        k = idx - i * channels
        dx[i, k] = gamma[k] * inv_std[k] * dy[i, k]


def batchnorm_infer_backward(dy, y, code, alpha, x, gamma, beta, moving_mean, moving_variance, epsilon, dgamma, dbeta,
                             dx):
    """Backward of the inference transform (moving statistics held fixed), with dy first
    taken through the activation from the output ``y`` (in place): adds into dgamma/dbeta;
    dx = gamma * dy / sqrt(moving_variance + epsilon)."""
    rows, channels = dy.shape
    if channels == 0:
        return
    if code != LINEAR and rows > 0:
        activation_backward(y, dy, code, alpha, dy, None)
    chunks = chunking(rows)
    inv_std = workspace("normalization.inv_std", channels, np.float64)
    sum_dy = workspace("normalization.sums", (chunks, channels), np.float64)
    sum_dy_xhat = workspace("normalization.squares", (chunks, channels), np.float64)
    means = workspace("normalization.means", (2, channels), np.float64)
    blocks, threads = launch_1d(channels)
    _inv_std_kernel[blocks, threads](moving_variance, float(epsilon), inv_std)
    blocks, threads = launch_1d(chunks * channels)
    _backward_partials_kernel[blocks, threads](dy, x, moving_mean, inv_std, sum_dy, sum_dy_xhat)
    blocks, threads = launch_1d(channels)
    _backward_finish_kernel[blocks, threads](sum_dy, sum_dy_xhat, max(rows, 1), dgamma, dbeta, means)
    if rows:
        blocks, threads = launch_1d(rows * channels)
        _scale_kernel[blocks, threads](dy, gamma, inv_std, dx)

