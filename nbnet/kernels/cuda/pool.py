"""CUDA twins of ``nbnet.kernels.pool``: max and average pooling over NHWC device arrays.

Forward passes run one thread per output element. Backward passes run one thread per
*input* pixel, gathering from every window that covers it (in the CPU kernels' (i, j)
order), so they need no atomics; that is why ``maxpool_backward`` here also takes the
window geometry, which the CPU scatter does not need:
``maxpool_backward(dy, argmax, ph, pw, sh, sw, pad_top, pad_left, dx)``.
Max pooling records the flat index r*W + s of each window's maximum (int32), as on the CPU.
"""

import math

from numba import cuda

from ..activations import RELU
from . import as_scalar, launch_1d
from .activations import column_sums_into


@cuda.jit(device=True)
def nhwc_index(idx, height, width, channels):
    """(n, row, column, channel) of the flat index ``idx`` into an NHWC array."""
    c = idx % channels
    pixel = idx // channels
    return pixel // (width * height), (pixel // width) % height, pixel % width, c


@cuda.jit(device=True)
def _max(a, b):
    """Python's max(a, b), spelled out: with Numba 0.68's CUDA target the two-argument
    builtin failed to compile in the offline PTX check (tests/test_cuda_kernels.py)."""
    return b if b > a else a


@cuda.jit(device=True)
def _min(a, b):
    """Python's min(a, b), for the same reason as _max."""
    return b if b < a else a


@cuda.jit
def _maxpool_forward_kernel(x, ph, pw, sh, sw, pad_top, pad_left, y, argmax):
    batch, height, width, channels = x.shape
    _, out_h, out_w, _ = y.shape
    for idx in range(cuda.grid(1), batch * out_h * out_w * channels, cuda.gridsize(1)):
        n, i, j, c = nhwc_index(idx, out_h, out_w, channels)
        best = -math.inf
        where = -1
        for p in range(ph):
            r = i * sh - pad_top + p
            if r < 0 or r >= height:
                continue
            for q in range(pw):
                s = j * sw - pad_left + q
                if s < 0 or s >= width:
                    continue
                value = x[n, r, s, c]
                if value > best or where < 0:
                    best = value
                    where = r * width + s
        y[n, i, j, c] = best
        argmax[n, i, j, c] = where


def maxpool_forward(x, ph, pw, sh, sw, pad_top, pad_left, y, argmax):
    if y.size == 0:
        return
    blocks, threads = launch_1d(y.size)
    _maxpool_forward_kernel[blocks, threads](x, ph, pw, sh, sw, pad_top, pad_left, y, argmax)


@cuda.jit(device=True)
def _window_range(pixel, pad, size, stride, out_size):
    """The output positions whose window (size, stride, pad) covers ``pixel``:
    first, last + 1 (empty when first >= last + 1)."""
    # i*stride - pad <= pixel < i*stride - pad + size
    lo = pixel + pad - size + 1
    first = 0 if lo <= 0 else (lo + stride - 1) // stride
    last = (pixel + pad) // stride
    if last > out_size - 1:
        last = out_size - 1
    return first, last + 1


@cuda.jit
def _maxpool_backward_kernel(dy, argmax, ph, pw, sh, sw, pad_top, pad_left, zero, dx):
    batch, height, width, channels = dx.shape
    _, out_h, out_w, _ = dy.shape
    for idx in range(cuda.grid(1), batch * height * width * channels, cuda.gridsize(1)):
        n, r, s, c = nhwc_index(idx, height, width, channels)
        here = r * width + s
        total = zero
        i0, i1 = _window_range(r, pad_top, ph, sh, out_h)
        j0, j1 = _window_range(s, pad_left, pw, sw, out_w)
        for i in range(i0, i1):
            for j in range(j0, j1):
                if argmax[n, i, j, c] == here:
                    total += dy[n, i, j, c]
        dx[n, r, s, c] = total


def maxpool_backward(dy, argmax, ph, pw, sh, sw, pad_top, pad_left, dx):
    """dx (overwritten) = each window's gradient routed to its recorded maximum. Unlike
    the CPU kernel this takes the window geometry (the forward's), to gather per pixel."""
    if dx.size == 0:
        return
    blocks, threads = launch_1d(dx.size)
    _maxpool_backward_kernel[blocks, threads](dy, argmax, ph, pw, sh, sw, pad_top, pad_left,
                                              as_scalar(0.0, dx.dtype), dx)


@cuda.jit
def _avgpool_forward_kernel(x, ph, pw, sh, sw, pad_top, pad_left, one, zero, y):
    batch, height, width, channels = x.shape
    _, out_h, out_w, _ = y.shape
    for idx in range(cuda.grid(1), batch * out_h * out_w * channels, cuda.gridsize(1)):
        n, i, j, c = nhwc_index(idx, out_h, out_w, channels)
        r0, r1 = _max(i * sh - pad_top, 0), _min(i * sh - pad_top + ph, height)
        s0, s1 = _max(j * sw - pad_left, 0), _min(j * sw - pad_left + pw, width)
        inverse = one / ((r1 - r0) * (s1 - s0))
        total = zero
        for r in range(r0, r1):
            for s in range(s0, s1):
                total += x[n, r, s, c]
        y[n, i, j, c] = total * inverse


def avgpool_forward(x, ph, pw, sh, sw, pad_top, pad_left, y):
    """Average over each window's real (unpadded) pixels, as Keras and ONNX do."""
    if y.size == 0:
        return
    blocks, threads = launch_1d(y.size)
    _avgpool_forward_kernel[blocks, threads](x, ph, pw, sh, sw, pad_top, pad_left, as_scalar(1.0, x.dtype),
                                             as_scalar(0.0, x.dtype), y)


@cuda.jit
def _avgpool_backward_kernel(dy, ph, pw, sh, sw, pad_top, pad_left, one, zero, dx):
    batch, height, width, channels = dx.shape
    _, out_h, out_w, _ = dy.shape
    for idx in range(cuda.grid(1), batch * height * width * channels, cuda.gridsize(1)):
        n, r, s, c = nhwc_index(idx, height, width, channels)
        total = zero
        i0, i1 = _window_range(r, pad_top, ph, sh, out_h)
        j0, j1 = _window_range(s, pad_left, pw, sw, out_w)
        for i in range(i0, i1):
            r0, r1 = _max(i * sh - pad_top, 0), _min(i * sh - pad_top + ph, height)
            for j in range(j0, j1):
                s0, s1 = _max(j * sw - pad_left, 0), _min(j * sw - pad_left + pw, width)
                inverse = one / ((r1 - r0) * (s1 - s0))
                total += dy[n, i, j, c] * inverse
        dx[n, r, s, c] = total


def avgpool_backward(dy, ph, pw, sh, sw, pad_top, pad_left, dx):
    """dx (overwritten) = each window's gradient shared evenly over its real pixels."""
    if dx.size == 0:
        return
    blocks, threads = launch_1d(dx.size)
    _avgpool_backward_kernel[blocks, threads](dy, ph, pw, sh, sw, pad_top, pad_left, as_scalar(1.0, dx.dtype),
                                              as_scalar(0.0, dx.dtype), dx)


@cuda.jit
def _bias_activation_maxpool_kernel(z, bias, relu, ph, pw, zero, y, argmax):
    batch, height, width, channels = z.shape
    _, out_h, out_w, _ = y.shape
    has_bias = bias.shape[0] > 0
    for idx in range(cuda.grid(1), batch * out_h * out_w * channels, cuda.gridsize(1)):
        n, i, j, c = nhwc_index(idx, out_h, out_w, channels)
        best = zero
        where = -1
        for p in range(ph):
            r = i * ph + p
            for q in range(pw):
                s = j * pw + q
                value = z[n, r, s, c] + bias[c] if has_bias else z[n, r, s, c]
                if value > best or where < 0:  # ties keep the first maximum
                    best = value
                    where = r * width + s
        if relu and not best > zero:
            best = zero
        y[n, i, j, c] = best
        argmax[n, i, j, c] = where


def bias_activation_maxpool(z, bias, code, ph, pw, y, argmax):
    """y = maxpool(activation(z + bias)) over windows that tile ``z`` (stride = pool size),
    ``code`` RELU or LINEAR, as the CPU kernel; one thread per output value."""
    if y.size == 0:
        return
    blocks, threads = launch_1d(y.size)
    _bias_activation_maxpool_kernel[blocks, threads](z, bias, code == RELU, ph, pw, as_scalar(0.0, z.dtype), y,
                                                     argmax)


@cuda.jit
def _maxpool_activation_backward_kernel(dy, argmax, y, relu, ph, pw, zero, dz):
    batch, height, width, channels = dz.shape
    _, out_h, out_w, _ = dy.shape
    for idx in range(cuda.grid(1), batch * height * width * channels, cuda.gridsize(1)):
        n, r, s, c = nhwc_index(idx, height, width, channels)
        i, j = r // ph, s // pw
        grad = zero
        if i < out_h and j < out_w and argmax[n, i, j, c] == r * width + s and (not relu or y[n, i, j, c] > zero):
            grad = dy[n, i, j, c]
        dz[n, r, s, c] = grad


def maxpool_activation_backward(dy, argmax, y, code, ph, pw, dz, dbias):
    """dz (the conv's gradient before its activation, NHWC) from the pooled gradient, one
    thread per value (gathering, as maxpool_backward); adds its column sums into ``dbias``
    unless that has length 0."""
    if dz.size == 0:
        return
    blocks, threads = launch_1d(dz.size)
    _maxpool_activation_backward_kernel[blocks, threads](dy, argmax, y, code == RELU, ph, pw,
                                                         as_scalar(0.0, dz.dtype), dz)
    if dbias.shape[0] > 0:
        column_sums_into(dz.reshape(dz.size // dz.shape[3], dz.shape[3]), dbias)
