"""Activation kernels, fused with the bias add (forward) and the bias gradient (backward).

Arrays are viewed as 2-D (rows, channels): channels is the last axis of a Dense or
NHWC Conv2D output. Derivatives are computed from the activation's *output*, so the
forward pass needs to keep only one array per layer.
"""

import numpy as np
from numba import njit, prange

from . import REDUCTION_CHUNKS

LINEAR, RELU, SIGMOID, TANH, SOFTMAX, LEAKY_RELU = 0, 1, 2, 3, 4, 5


@njit(parallel=True, cache=True)
def bias_activation_forward(z, bias, code, alpha, y):
    """y = activation(z + bias), row by row; ``y`` may be ``z`` itself (in place).

    ``bias`` of length 0 means no bias. Softmax is taken over each row.
    """
    rows, channels = z.shape
    has_bias = bias.shape[0] > 0
    one = z.dtype.type(1.0)
    zero = z.dtype.type(0.0)
    for i in prange(rows):
        if code == SOFTMAX:
            peak = -np.inf
            for k in range(channels):
                value = z[i, k] + bias[k] if has_bias else z[i, k]
                y[i, k] = value
                peak = max(peak, value)
            total = 0.0
            for k in range(channels):
                e = np.exp(y[i, k] - peak)
                y[i, k] = e
                total += e
            inverse = one / total
            for k in range(channels):
                y[i, k] *= inverse
            continue
        for k in range(channels):
            value = z[i, k] + bias[k] if has_bias else z[i, k]
            if code == RELU:
                value = value if value > 0 else zero
            elif code == SIGMOID:
                if value >= 0:
                    value = one / (one + np.exp(-value))
                else:
                    e = np.exp(value)
                    value = e / (one + e)
            elif code == TANH:
                value = np.tanh(value)
            elif code == LEAKY_RELU:
                value = value if value > 0 else alpha * value
            y[i, k] = value


@njit(parallel=True, cache=True)
def activation_backward(y, dy, code, alpha, dz, dbias):
    """dz = dy * activation'(.) computed from the output ``y``; adds the bias gradient
    (column sums of dz) into ``dbias`` unless it has length 0. ``dz`` may be ``dy``."""
    rows, channels = y.shape
    chunks = min(REDUCTION_CHUNKS, rows) if rows > 0 else 1
    partial = np.zeros((chunks, channels), dtype=y.dtype)
    zero = y.dtype.type(0.0)
    for chunk in prange(chunks):
        start = chunk * rows // chunks
        stop = (chunk + 1) * rows // chunks
        for i in range(start, stop):
            if code == SOFTMAX:
                dot = 0.0
                for k in range(channels):
                    dot += dy[i, k] * y[i, k]
                for k in range(channels):
                    dz[i, k] = y[i, k] * (dy[i, k] - dot)
            else:
                for k in range(channels):
                    out = y[i, k]
                    grad = dy[i, k]
                    if code == RELU:
                        grad = grad if out > 0 else zero
                    elif code == SIGMOID:
                        grad = grad * out * (1 - out)
                    elif code == TANH:
                        grad = grad * (1 - out * out)
                    elif code == LEAKY_RELU:
                        grad = grad if out > 0 else alpha * grad
                    dz[i, k] = grad
            for k in range(channels):
                partial[chunk, k] += dz[i, k]
    if dbias.shape[0] > 0:
        for chunk in range(chunks):
            for k in range(channels):
                dbias[k] += partial[chunk, k]

