"""CUDA twins of ``nbnet.kernels.activations``: bias + activation (forward), activation
derivative + bias gradient (backward), and column sums, over 2-D (rows, channels) device
arrays. Expressions mirror the CPU kernels so the dtypes of intermediates match.

Elementwise activations run one thread per element; softmax one thread per row (as the
CPU kernel does). The bias gradient is a deterministic two-pass reduction: each thread
of the fused backward kernel owns one (row chunk, channel) pair, writes dz for its rows
and their partial sum; a second kernel adds the chunk partials, in order, into dbias.
"""

import math

from numba import cuda

from ..activations import (ELU, LEAKY_RELU, LINEAR, RELU, SELU, SELU_ALPHA, SELU_SCALE, SIGMOID,  # noqa: F401
                           SOFTMAX, SOFTPLUS, TANH)  # (the codes re-exported)
from . import as_scalar, chunking, launch_1d, workspace


@cuda.jit(device=True)
def _max(a, b):
    """Python's max(a, b), spelled out: with Numba 0.68's CUDA target the two-argument
    builtin failed to compile in the offline PTX check (tests/test_cuda_kernels.py)."""
    return b if b > a else a


@cuda.jit(device=True)
def _exponential_activation(x, code, alpha):
    """ELU (``alpha``), SELU or softplus of the float64 ``x``, as the CPU's
    exponential_unit and softplus."""
    if code == SOFTPLUS:
        return _max(x, 0.0) + math.log1p(math.exp(-abs(x)))
    unit_alpha = alpha if code == ELU else SELU_ALPHA
    unit_scale = 1.0 if code == ELU else SELU_SCALE
    return unit_scale * x if x > 0.0 else unit_scale * unit_alpha * math.expm1(x)


@cuda.jit
def _bias_activation_kernel(z, bias, code, alpha, one, zero, y):
    rows, channels = z.shape
    has_bias = bias.shape[0] > 0
    for idx in range(cuda.grid(1), rows * channels, cuda.gridsize(1)):
        i = idx // channels
        k = idx - i * channels
        value = z[i, k] + bias[k] if has_bias else z[i, k]
        if code == RELU:
            value = value if value > 0 else zero
        elif code == SIGMOID:
            if value >= 0:
                value = one / (one + math.exp(-value))
            else:
                e = math.exp(value)
                value = e / (one + e)
        elif code == TANH:
            value = math.tanh(value)
        elif code == LEAKY_RELU:
            value = value if value > 0 else alpha * value
        elif code == ELU or code == SELU or code == SOFTPLUS:
            # In float64 as the CPU kernel, stored straight into y (``value`` keeps its
            # dtype for the other codes).
            y[i, k] = _exponential_activation(value + 0.0, code, alpha + 0.0)
            continue
        y[i, k] = value


@cuda.jit
def _softmax_rows_kernel(z, bias, one, y):
    rows, channels = z.shape
    has_bias = bias.shape[0] > 0
    for i in range(cuda.grid(1), rows, cuda.gridsize(1)):
        peak = -math.inf
        for k in range(channels):
            value = z[i, k] + bias[k] if has_bias else z[i, k]
            y[i, k] = value
            peak = _max(peak, value)
        total = 0.0
        for k in range(channels):
            e = math.exp(y[i, k] - peak)
            y[i, k] = e
            total += e
        inverse = one / total
        for k in range(channels):
            y[i, k] *= inverse


def bias_activation_forward(z, bias, code, alpha, y):
    """y = activation(z + bias), row by row; ``y`` may be ``z`` itself (in place).
    ``bias`` of length 0 (or None) means no bias. Softmax is taken over each row."""
    rows, channels = z.shape
    if rows * channels == 0:
        return
    if bias is None:
        from . import empty

        bias = empty(z.dtype)
    one = as_scalar(1.0, z.dtype)
    if code == SOFTMAX:
        blocks, threads = launch_1d(rows)
        _softmax_rows_kernel[blocks, threads](z, bias, one, y)
    else:
        blocks, threads = launch_1d(rows * channels)
        _bias_activation_kernel[blocks, threads](z, bias, int(code), as_scalar(alpha, z.dtype), one,
                                                 as_scalar(0.0, z.dtype), y)


@cuda.jit(device=True)
def _derivative(out, grad, code, alpha, zero):
    if code == RELU:
        grad = grad if out > 0 else zero
    elif code == SIGMOID:
        grad = grad * out * (1 - out)
    elif code == TANH:
        grad = grad * (1 - out * out)
    elif code == LEAKY_RELU:
        grad = grad if out > 0 else alpha * grad
    elif code == ELU:
        grad = grad if out > 0 else grad * (out + alpha)
    elif code == SELU:
        grad = grad * SELU_SCALE if out > 0 else grad * (out + SELU_SCALE * SELU_ALPHA)
    elif code == SOFTPLUS:
        grad = grad * -math.expm1(-out)
    return grad


@cuda.jit
def _activation_backward_kernel(y, dy, code, alpha, zero, dz):
    rows, channels = y.shape
    for idx in range(cuda.grid(1), rows * channels, cuda.gridsize(1)):
        i = idx // channels
        k = idx - i * channels
        dz[i, k] = _derivative(y[i, k], dy[i, k], code, alpha, zero)


@cuda.jit
def _activation_backward_partials_kernel(y, dy, code, alpha, zero, dz, partial):
    """One thread per (chunk, channel): dz for the chunk's rows and their column sum."""
    rows, channels = y.shape
    chunks = partial.shape[0]
    for idx in range(cuda.grid(1), chunks * channels, cuda.gridsize(1)):
        chunk = idx // channels
        k = idx - chunk * channels
        acc = zero
        for i in range(chunk * rows // chunks, (chunk + 1) * rows // chunks):
            dz[i, k] = _derivative(y[i, k], dy[i, k], code, alpha, zero)
            acc += dz[i, k]
        partial[chunk, k] = acc


@cuda.jit
def _softmax_backward_kernel(y, dy, dz):
    rows, channels = y.shape
    for i in range(cuda.grid(1), rows, cuda.gridsize(1)):
        dot = 0.0
        for k in range(channels):
            dot += dy[i, k] * y[i, k]
        for k in range(channels):
            dz[i, k] = y[i, k] * (dy[i, k] - dot)


@cuda.jit
def _column_partials_kernel(x, zero, partial):
    rows, channels = x.shape
    chunks = partial.shape[0]
    for idx in range(cuda.grid(1), chunks * channels, cuda.gridsize(1)):
        chunk = idx // channels
        k = idx - chunk * channels
        acc = zero
        for i in range(chunk * rows // chunks, (chunk + 1) * rows // chunks):
            acc += x[i, k]
        partial[chunk, k] = acc


@cuda.jit
def _add_partials_kernel(partial, out):
    """out[k] += partial[0, k] + partial[1, k] + ... (in chunk order), one thread per k."""
    chunks, channels = partial.shape
    for k in range(cuda.grid(1), channels, cuda.gridsize(1)):
        for chunk in range(chunks):
            out[k] += partial[chunk, k]


def add_partials(partial, out):
    """Second pass of a column reduction: out += partial.sum(axis=0), in chunk order."""
    channels = partial.shape[1]
    if channels == 0:
        return
    blocks, threads = launch_1d(channels)
    _add_partials_kernel[blocks, threads](partial, out)


def activation_backward(y, dy, code, alpha, dz, dbias):
    """dz = dy * activation'(.) computed from the output ``y``; adds the bias gradient
    (column sums of dz) into ``dbias`` unless it has length 0 (or is None). ``dz`` may be ``dy``."""
    rows, channels = y.shape
    if rows * channels == 0:
        return
    has_dbias = dbias is not None and dbias.shape[0] > 0
    zero = as_scalar(0.0, y.dtype)
    if code == SOFTMAX:
        blocks, threads = launch_1d(rows)
        _softmax_backward_kernel[blocks, threads](y, dy, dz)
        if has_dbias:
            column_sums_into(dz, dbias)
        return
    alpha = as_scalar(alpha, y.dtype)
    if not has_dbias:
        blocks, threads = launch_1d(rows * channels)
        _activation_backward_kernel[blocks, threads](y, dy, int(code), alpha, zero, dz)
        return
    chunks = chunking(rows)
    partial = workspace("activations.partial", (chunks, channels), y.dtype)
    blocks, threads = launch_1d(chunks * channels)
    _activation_backward_partials_kernel[blocks, threads](y, dy, int(code), alpha, zero, dz, partial)
    add_partials(partial, dbias)


def column_sums_into(dz, dbias):
    """dbias += column sums of dz (the bias gradient when no activation is fused)."""
    rows, channels = dz.shape
    if rows * channels == 0:
        return
    chunks = chunking(rows)
    partial = workspace("activations.partial", (chunks, channels), dz.dtype)
    blocks, threads = launch_1d(chunks * channels)
    _column_partials_kernel[blocks, threads](dz, as_scalar(0.0, dz.dtype), partial)
    add_partials(partial, dbias)
