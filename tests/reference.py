"""Independent NumPy reference implementations, written from the math.

Nothing here imports nbnet: these are the definitions the layers are checked against.
All arrays are channels-last (NHWC). Computation is done in float64.

Padding follows Keras/TensorFlow:
  * 'valid': only windows that lie entirely inside the input; the output has
    len(range(0, size - window + 1, stride)) positions.
  * 'same': the output has ceil(size / stride) positions; the input is padded with
    max((out - 1) * stride + window - size, 0) pixels in total, half of it (rounded
    down) before and the rest (one more when odd) after, i.e. at the bottom/right.
"""

import numpy as np


# --------------------------------------------------------------------------- padding
def window_positions(size, window, stride, padding):
    """(number of output positions, padding before, padding after) along one axis."""
    if padding == "valid":
        return len(range(0, size - window + 1, stride)), 0, 0
    if padding == "same":
        out = len(range(0, size, stride))  # == ceil(size / stride)
        total = max((out - 1) * stride + window - size, 0)
        return out, total // 2, total - total // 2
    raise ValueError(padding)


def _pad(x, window, strides, padding, value):
    """Pad the two spatial axes of NHWC ``x`` with ``value``; return (padded, out_h, out_w)."""
    out_h, top, bottom = window_positions(x.shape[1], window[0], strides[0], padding)
    out_w, left, right = window_positions(x.shape[2], window[1], strides[1], padding)
    padded = np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)), mode="constant", constant_values=value)
    return padded, out_h, out_w


def _taps(padded, window, strides, out_h, out_w):
    """Yield (p, q, view): for each window offset (p, q), the (N, out_h, out_w, C) array of the
    input pixels seen at that offset by every output position."""
    (kh, kw), (sh, sw) = window, strides
    for p in range(kh):
        for q in range(kw):
            yield p, q, padded[:, p:p + sh * (out_h - 1) + 1:sh, q:q + sw * (out_w - 1) + 1:sw, :]


# --------------------------------------------------------------------------- activations
def activation(name, z, negative_slope=0.2):
    z = np.asarray(z, dtype=np.float64)
    if name in (None, "linear"):
        return z.copy()
    if name == "relu":
        return np.maximum(z, 0.0)
    if name == "sigmoid":
        return 1.0 / (1.0 + np.exp(-z))
    if name == "tanh":
        return np.tanh(z)
    if name == "leaky_relu":
        return np.where(z > 0, z, negative_slope * z)
    if name == "elu":  # negative_slope: its alpha
        return np.where(z > 0, z, negative_slope * (np.exp(np.minimum(z, 0)) - 1))
    if name == "selu":  # Klambauer et al.'s constants, as Keras
        alpha, scale = 1.6732632423543772848170429916717, 1.0507009873554804934193349852946
        return scale * np.where(z > 0, z, alpha * (np.exp(np.minimum(z, 0)) - 1))
    if name == "softplus":
        return np.log(1 + np.exp(z))
    if name == "softmax":
        e = np.exp(z - z.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)
    raise ValueError(name)


# --------------------------------------------------------------------------- layers
def dense(x, kernel, bias=None, activation_name=None, negative_slope=0.2):
    z = np.asarray(x, np.float64) @ np.asarray(kernel, np.float64)
    if bias is not None:
        z = z + bias
    return activation(activation_name, z, negative_slope)


def conv2d(x, kernel, bias=None, strides=(1, 1), padding="valid", activation_name=None, negative_slope=0.2):
    """y[n, i, j, f] = sum_{p, q, c} xpad[n, i*sh + p, j*sw + q, c] * kernel[p, q, c, f] + bias[f]
    with zero padding, Keras kernel layout (kh, kw, in, out)."""
    x = np.asarray(x, np.float64)
    kernel = np.asarray(kernel, np.float64)
    kh, kw, cin, filters = kernel.shape
    assert x.shape[3] == cin
    padded, out_h, out_w = _pad(x, (kh, kw), strides, padding, 0.0)
    z = np.zeros((x.shape[0], out_h, out_w, filters))
    for p, q, view in _taps(padded, (kh, kw), strides, out_h, out_w):
        z += np.tensordot(view, kernel[p, q], axes=([3], [0]))
    if bias is not None:
        z = z + bias
    return activation(activation_name, z, negative_slope)


def max_pool2d(x, pool_size, strides=None, padding="valid"):
    """Max over each window; padding is -inf, so padded pixels never win."""
    strides = pool_size if strides is None else strides
    padded, out_h, out_w = _pad(np.asarray(x, np.float64), pool_size, strides, padding, -np.inf)
    y = np.full((x.shape[0], out_h, out_w, x.shape[3]), -np.inf)
    for _, _, view in _taps(padded, pool_size, strides, out_h, out_w):
        y = np.maximum(y, view)
    return y


def average_pool2d(x, pool_size, strides=None, padding="valid"):
    """Mean over the real (unpadded) pixels of each window."""
    strides = pool_size if strides is None else strides
    x = np.asarray(x, np.float64)
    padded, out_h, out_w = _pad(x, pool_size, strides, padding, 0.0)
    real, _, _ = _pad(np.ones_like(x), pool_size, strides, padding, 0.0)
    total = np.zeros((x.shape[0], out_h, out_w, x.shape[3]))
    count = np.zeros_like(total)
    for (_, _, view), (_, _, mask) in zip(_taps(padded, pool_size, strides, out_h, out_w),
                                          _taps(real, pool_size, strides, out_h, out_w)):
        total += view
        count += mask
    return total / count


def batchnorm_train(x, gamma, beta, epsilon):
    """Normalise over every axis but the last with the batch's mean and biased variance.
    Returns (y, batch_mean, batch_variance)."""
    x = np.asarray(x, np.float64)
    axes = tuple(range(x.ndim - 1))
    mean = x.mean(axis=axes)
    variance = ((x - mean) ** 2).mean(axis=axes)
    return gamma * (x - mean) / np.sqrt(variance + epsilon) + beta, mean, variance


def batchnorm_infer(x, gamma, beta, moving_mean, moving_variance, epsilon):
    return gamma * (np.asarray(x, np.float64) - moving_mean) / np.sqrt(moving_variance + epsilon) + beta


def l1_l2_penalty(w, l1, l2):
    """(penalty, gradient) of l1 * sum|w| + l2 * sum(w^2)."""
    w = np.asarray(w, np.float64)
    return l1 * np.abs(w).sum() + l2 * (w * w).sum(), l1 * np.sign(w) + 2.0 * l2 * w
