"""BatchNormalization (with a rectifier or no activation) and the max pool after it, in
one pass each way: the VGG-style block conv -> norm -> relu -> pool.

Forward normalises each window's pixels and keeps only the window's maximum and where it
lay (as pool.maxpool_forward records it: the flat h*W + w index), never writing the
normalised batch; the max is taken over the pre-activation, the rectifier applied to it
(non-decreasing: the same values). Backward makes each pixel's gradient from the pooled
gradient where the pixel was its window's maximum and the rectifier passed it, inside
the norm's own two passes, never writing the full-size gradient; the rectifier's side is
taken from the pre-activation made again from the input, as normalization.py does. The
statistics still run over every pixel, those a tiling pool leaves out included.

Windows of 2x2 at stride 2 ('valid'; the pool nearly every CNN uses) only: see
executor.Plan._fuse_norm_pool.

Apart, the norm's pass wrote the batch and the pool's read it back, and the pool's
backward wrote the full gradient (zeroed) that the norm's two passes read again. 128 x
28x28x32 with relu, 2 cores, ms, after a 64 MB sweep: forward 3.6-4.6 -> 1.9, backward
5.3-6.1 -> 4.5, the same bits. Training steps of tools/bench_zoo.py's networks, ms,
alternating in one process: cifar_bn b32 24.2 -> 22.5, b128 85.5 -> 74.7; kaggle_bn b32
38.7 -> 34.9, b128 111.3 -> 106.0. The three kernels cost compile time: a cold first fit
(helper process on) of kaggle_bn 16.1 -> 18.0 s, of cifar_bn 18.0 -> 17.9 s.
"""

import numpy as np
from numba import njit

from .activations import RELU
from .parallel import parallel_ranges, range_body
from .normalization import (_parameter_gradients, _partials, batch_statistics, input_gradient_terms, moving_scale,
                            moving_scale_into)
from .pool import max_of_window


@range_body(fastmath={"contract"})
def _affine_maxpool_range(begin, end, x, center, scale, shift, relu, y, argmax):
    width, channels = x.shape[2], x.shape[3]
    out_h, out_w = y.shape[1], y.shape[2]
    zero = x.dtype.type(0.0)
    for n in range(begin, end):
        for i in range(out_h):
            for j in range(out_w):
                best, where = y[n, i, j], argmax[n, i, j]
                r, s = 2 * i, 2 * j
                top_left, top_right = x[n, r, s], x[n, r, s + 1]
                bottom_left, bottom_right = x[n, r + 1, s], x[n, r + 1, s + 1]
                for c in range(channels):
                    best[c], where[c] = max_of_window(
                        (top_left[c] - center[c]) * scale[c] + shift[c],
                        (top_right[c] - center[c]) * scale[c] + shift[c],
                        (bottom_left[c] - center[c]) * scale[c] + shift[c],
                        (bottom_right[c] - center[c]) * scale[c] + shift[c], r * width + s, width, relu, zero)


@njit(cache=True)
def _affine_maxpool(x, center, scale, shift, relu, y, argmax):
    """y = maxpool(activation((x - center) * scale + shift)), x NHWC, over 2x2 windows at
    stride 2: each window's four pixels in one pass over the channels (as
    pool.maxpool_2x2_image); ties keep the first maximum. (Any window size in a loop
    over its pixels compiled in 3.2 s against 1.4, ran 2.2-2.8 ms against 1.4 on
    128x28x28x32.)"""
    parallel_ranges(_affine_maxpool_range, x.shape[0], (x, center, scale, shift, relu, y, argmax))


@njit(inline="always")
def _pixel_gradient(dy, argmax, n, a, b, k, position, relu, pre, zero):
    """The gradient reaching a covered pixel's normalised value: its window's, where the
    pixel was the maximum and the rectifier passed it (pre-activation above 0). No branch
    and the load made unconditionally: LLVM then vectorises the loop over channels (with
    a short-circuit test and a conditional load it did not)."""
    passes = (argmax[n, a, b, k] == position) & ((not relu) | (pre > zero))
    grad = dy[n, a, b, k]
    return grad if passes else zero


@range_body(fastmath={"contract"})
def _gradient_partials_range(begin, end, dy, argmax, relu, ph, pw, x, center, scale, shift, inv_std, sum_dy,
                             sum_dy_xhat):
    batch, height, width, channels = x.shape
    out_h, out_w = dy.shape[1], dy.shape[2]
    rows = batch * height * width
    chunks = sum_dy.shape[0]
    zero = x.dtype.type(0.0)
    for chunk in range(begin, end):
        first = chunk * rows // chunks
        n, r, s = first // (height * width), first // width % height, first % width
        for _ in range(first, (chunk + 1) * rows // chunks):
            a, b = r // ph, s // pw
            if a < out_h and b < out_w:
                position = r * width + s
                values = x[n, r, s]
                for k in range(channels):
                    centered = values[k] - center[k]
                    grad = _pixel_gradient(dy, argmax, n, a, b, k, position, relu, centered * scale[k] + shift[k],
                                           zero)
                    sum_dy[chunk, k] += grad
                    sum_dy_xhat[chunk, k] += grad * (centered * inv_std[k])
            s += 1
            if s == width:
                s, r = 0, r + 1
                if r == height:
                    r, n = 0, n + 1


@njit(cache=True)
def _gradient_partials(dy, argmax, relu, ph, pw, x, center, scale, shift, inv_std, sum_dy, sum_dy_xhat):
    """Per chunk of rows of x's (N*H*W, C) view (normalization._gradient_partials's
    chunks: the same sums), the sums of the gradient g and of g * x_hat per channel;
    pixels no window covers have g = 0. The pixel's place is carried along the rows (a
    division per row cost more than the pass saved)."""
    parallel_ranges(_gradient_partials_range, sum_dy.shape[0], (dy, argmax, relu, ph, pw, x, center, scale, shift,
                    inv_std, sum_dy, sum_dy_xhat))


@range_body(fastmath={"contract"})
def _input_gradient_range(begin, end, dy, argmax, relu, ph, pw, x, center, scale, shift, g_scale, x_scale, g_shift, dx):
    batch, height, width, channels = x.shape
    out_h, out_w = dy.shape[1], dy.shape[2]
    zero = x.dtype.type(0.0)
    for n in range(begin, end):
        for r in range(height):
            a = r // ph
            for s in range(width):
                b = s // pw
                values, grads = x[n, r, s], dx[n, r, s]
                if a < out_h and b < out_w:
                    position = r * width + s
                    for k in range(channels):
                        centered = values[k] - center[k]
                        grad = _pixel_gradient(dy, argmax, n, a, b, k, position, relu,
                                               centered * scale[k] + shift[k], zero)
                        grads[k] = g_scale[k] * grad + x_scale[k] * centered + g_shift[k]
                else:
                    for k in range(channels):
                        grads[k] = g_scale[k] * zero + x_scale[k] * (values[k] - center[k]) + g_shift[k]


@njit(cache=True)
def _input_gradient(dy, argmax, relu, ph, pw, x, center, scale, shift, g_scale, x_scale, g_shift, dx):
    """dx = g_scale * g + x_scale * (x - center) + g_shift per channel, g as above; x and
    dx NHWC."""
    parallel_ranges(_input_gradient_range, x.shape[0], (dy, argmax, relu, ph, pw, x, center, scale, shift, g_scale,
                    x_scale, g_shift, dx))


def batchnorm_pool_train_forward(x, gamma, beta, epsilon, code, y, argmax, mean_out, variance_out):
    """normalization.batchnorm_train_forward (``code`` LINEAR or RELU) with the 2x2 max
    pool after it: ``x`` NHWC, ``y`` and ``argmax`` the pooled shape. Returns the
    per-channel 1/std (float64)."""
    mean, inv_std = batch_statistics(x.reshape(-1, x.shape[-1]), epsilon, mean_out, variance_out)
    dtype = x.dtype
    _affine_maxpool(x, mean.astype(dtype), (gamma * inv_std).astype(dtype), beta, code == RELU, y, argmax)
    return inv_std


def batchnorm_pool_infer(x, gamma, beta, moving_mean, moving_variance, epsilon, code, y, argmax):
    """normalization.batchnorm_infer with the max pool after it (see above)."""
    for function, args, _ in _batchnorm_pool_infer_calls(x, gamma, beta, moving_mean, moving_variance, epsilon, code,
                                                         y, argmax):
        function(*args)


def _batchnorm_pool_infer_calls(x, gamma, beta, moving_mean, moving_variance, epsilon, code, y, argmax):
    """The kernel calls batchnorm_pool_infer makes (see normalization._batchnorm_infer_calls)."""
    scale = np.empty(gamma.shape, x.dtype)
    return [(moving_scale_into, (gamma, moving_variance, float(epsilon), scale), {}),
            (_affine_maxpool, (x, moving_mean, scale, beta, code == RELU, y, argmax), {})]


batchnorm_pool_infer.replayed_as = _batchnorm_pool_infer_calls


def batchnorm_pool_backward(dy, argmax, code, x, mean, gamma, beta, inv_std, dgamma, dbeta, dx):
    """normalization.batchnorm_backward from the pooled gradient ``dy`` and the forward's
    ``argmax`` (NHWC, the pooled shape); ``x`` and ``dx`` NHWC."""
    dtype = x.dtype
    rows, channels = x.size // x.shape[-1], x.shape[-1]
    scale = (gamma * inv_std).astype(dtype)  # the forward's
    relu = code == RELU
    sum_dy, sum_dy_xhat = _partials(rows, channels)
    _gradient_partials(dy, argmax, relu, 2, 2, x, mean, scale, beta, inv_std.astype(dtype),
                       sum_dy, sum_dy_xhat)
    mean_dy, mean_dy_xhat = _parameter_gradients(sum_dy, sum_dy_xhat, rows, dgamma, dbeta)
    _input_gradient(dy, argmax, relu, 2, 2, x, mean, scale, beta,
                    *input_gradient_terms(gamma, inv_std, mean_dy, mean_dy_xhat, dtype), dx)


def batchnorm_pool_infer_backward(dy, argmax, code, x, gamma, beta, moving_mean, moving_variance, epsilon, dgamma,
                                  dbeta, dx):
    """normalization.batchnorm_infer_backward from the pooled gradient (see above)."""
    dtype = x.dtype
    rows, channels = x.size // x.shape[-1], x.shape[-1]
    inv_std = 1.0 / np.sqrt(moving_variance.astype(np.float64) + epsilon)
    scale = moving_scale(gamma, moving_variance, epsilon).astype(dtype)  # batchnorm_pool_infer's
    relu = code == RELU
    sum_dy, sum_dy_xhat = _partials(rows, channels)
    _gradient_partials(dy, argmax, relu, 2, 2, x, moving_mean, scale, beta,
                       inv_std.astype(dtype), sum_dy, sum_dy_xhat)
    _parameter_gradients(sum_dy, sum_dy_xhat, rows, dgamma, dbeta)
    nothing = np.zeros(channels, dtype)
    _input_gradient(dy, argmax, relu, 2, 2, x, moving_mean, scale, beta,
                    (gamma * inv_std).astype(dtype), nothing, nothing, dx)
