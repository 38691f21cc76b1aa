"""Max and average pooling kernels over NHWC arrays, parallel over images.

Max pooling records the flat (h*W + w) index of each window's maximum, so the backward
pass is a scatter that needs no search. Average pooling with 'same' padding divides by
the number of real (unpadded) pixels in the window, as Keras and ONNX (count_include_pad=0) do.
"""

import numpy as np
from numba import njit

from . import REDUCTION_CHUNKS
from .activations import LINEAR, RELU, add_chunk_sums
from .parallel import parallel_ranges, range_body


# Loops run channels innermost: NHWC keeps a pixel's channels contiguous, so each window
# position is one vectorised pass over the channels (4-6x faster than a window per channel).


@range_body
def _maxpool_forward_range(begin, end, x, ph, pw, sh, sw, pad_top, pad_left, y, argmax):
    batch, height, width, channels = x.shape
    _, out_h, out_w, _ = y.shape
    for n in range(begin, end):
        for i in range(out_h):
            for j in range(out_w):
                first = True
                for p in range(ph):
                    r = i * sh - pad_top + p
                    if r < 0 or r >= height:
                        continue
                    for q in range(pw):
                        s = j * sw - pad_left + q
                        if s < 0 or s >= width:
                            continue
                        where = r * width + s
                        if first:
                            for c in range(channels):
                                y[n, i, j, c] = x[n, r, s, c]
                                argmax[n, i, j, c] = where
                            first = False
                        else:
                            for c in range(channels):
                                value = x[n, r, s, c]
                                if value > y[n, i, j, c]:  # ties keep the first maximum
                                    y[n, i, j, c] = value
                                    argmax[n, i, j, c] = where


@njit(cache=True)
def maxpool_forward(x, ph, pw, sh, sw, pad_top, pad_left, y, argmax):
    parallel_ranges(_maxpool_forward_range, x.shape[0], (x, ph, pw, sh, sw, pad_top, pad_left, y, argmax))


@range_body
def _maxpool_backward_range(begin, end, dy, argmax, dx):
    batch, out_h, out_w, channels = dy.shape
    _, height, width, _ = dx.shape
    for n in range(begin, end):
        pixels = dx[n].reshape(height * width, channels)
        pixels[:] = 0
        for i in range(out_h):
            for j in range(out_w):
                for c in range(channels):
                    pixels[argmax[n, i, j, c], c] += dy[n, i, j, c]


@njit(cache=True)
def maxpool_backward(dy, argmax, dx):
    parallel_ranges(_maxpool_backward_range, dy.shape[0], (dy, argmax, dx))


# 2x2 windows of stride 2 without padding (LeNet-5's) take loops of their own over each
# pair of rows, unrolled over the window: the general loops ran 6 channels at 10 GB/s.
# 1000 x 28x28x6, 2 cores, forward 2.38 -> 0.85 ms, backward 2.09 -> 0.88; 128 x 14x14x32
# 0.096 -> 0.062 and 0.136 -> 0.105 (both forms vary up to 1.5x with where the arrays lie);
# the same bits (the window summed in the same order). LeNet-5 (tools/ab_zoo.sh, three
# rounds): b128 step 5.0 -> 4.55 ms, predict b1000 72-73k -> 80-83k images/s. Their cost:
# a model with an average pool compiles 0.75 s more (first calls on an empty cache,
# forward 0.64 -> 1.09 s, backward 0.38 -> 0.71; the same with the loops inside the
# general bodies instead of bodies of their own).
@njit(inline="always")
def _tiles_2x2(ph, pw, sh, sw, pad_top, pad_left, out_h, out_w, height, width):
    """Whether every window is 2x2, stride 2, inside the image ('same' on an odd side has
    a last window half outside)."""
    return (ph == 2 and pw == 2 and sh == 2 and sw == 2 and pad_top == 0 and pad_left == 0
            and 2 * out_h <= height and 2 * out_w <= width)


@range_body
def _avgpool_2x2_forward_range(begin, end, x, y):
    channels = x.shape[3]
    _, out_h, out_w, _ = y.shape
    run = 2 * channels
    quarter = x.dtype.type(0.25)
    for n in range(begin, end):
        for i in range(out_h):
            top, bottom, out = x[n, 2 * i].reshape(-1), x[n, 2 * i + 1].reshape(-1), y[n, i].reshape(-1)
            for j in range(out_w):
                for c in range(channels):
                    k = j * run + c  # (not 2 * j * channels: that form ran 1.5x slower)
                    out[j * channels + c] = (((top[k] + top[k + channels]) + bottom[k]) + bottom[k + channels]) * quarter


@range_body
def _avgpool_forward_range(begin, end, x, ph, pw, sh, sw, pad_top, pad_left, y):
    batch, height, width, channels = x.shape
    _, out_h, out_w, _ = y.shape
    for n in range(begin, end):
        for i in range(out_h):
            r0, r1 = max(i * sh - pad_top, 0), min(i * sh - pad_top + ph, height)
            for j in range(out_w):
                s0, s1 = max(j * sw - pad_left, 0), min(j * sw - pad_left + pw, width)
                inverse = x.dtype.type(1.0) / ((r1 - r0) * (s1 - s0))
                for c in range(channels):
                    y[n, i, j, c] = 0
                for r in range(r0, r1):
                    for s in range(s0, s1):
                        for c in range(channels):
                            y[n, i, j, c] += x[n, r, s, c]
                for c in range(channels):
                    y[n, i, j, c] *= inverse


@njit(cache=True)
def avgpool_forward(x, ph, pw, sh, sw, pad_top, pad_left, y):
    if _tiles_2x2(ph, pw, sh, sw, pad_top, pad_left, y.shape[1], y.shape[2], x.shape[1], x.shape[2]):
        # Its rows are read flat: a strided view of an input is copied first.
        parallel_ranges(_avgpool_2x2_forward_range, x.shape[0], (np.ascontiguousarray(x), y))
    else:
        parallel_ranges(_avgpool_forward_range, x.shape[0], (x, ph, pw, sh, sw, pad_top, pad_left, y))


@range_body
def _avgpool_2x2_backward_range(begin, end, dy, dx):
    _, height, width, channels = dx.shape
    _, out_h, out_w, _ = dy.shape
    run = 2 * channels
    quarter = dx.dtype.type(0.25)
    for n in range(begin, end):
        if 2 * out_h < height or 2 * out_w < width:
            dx[n] = 0  # the last row or column, in no window
        for i in range(out_h):
            top, bottom, grad = dx[n, 2 * i].reshape(-1), dx[n, 2 * i + 1].reshape(-1), dy[n, i].reshape(-1)
            for j in range(out_w):
                for c in range(channels):
                    k = j * run + c
                    share = grad[j * channels + c] * quarter
                    top[k] = share
                    top[k + channels] = share
                    bottom[k] = share
                    bottom[k + channels] = share


@range_body
def _avgpool_backward_range(begin, end, dy, ph, pw, sh, sw, pad_top, pad_left, dx):
    batch, height, width, channels = dx.shape
    _, out_h, out_w, _ = dy.shape
    for n in range(begin, end):
        dx[n] = 0
        for i in range(out_h):
            r0, r1 = max(i * sh - pad_top, 0), min(i * sh - pad_top + ph, height)
            for j in range(out_w):
                s0, s1 = max(j * sw - pad_left, 0), min(j * sw - pad_left + pw, width)
                inverse = dx.dtype.type(1.0) / ((r1 - r0) * (s1 - s0))
                for r in range(r0, r1):
                    for s in range(s0, s1):
                        for c in range(channels):
                            dx[n, r, s, c] += dy[n, i, j, c] * inverse


@njit(cache=True)
def avgpool_backward(dy, ph, pw, sh, sw, pad_top, pad_left, dx):
    if _tiles_2x2(ph, pw, sh, sw, pad_top, pad_left, dy.shape[1], dy.shape[2], dx.shape[1], dx.shape[2]):
        parallel_ranges(_avgpool_2x2_backward_range, dy.shape[0], (np.ascontiguousarray(dy), dx))
    else:
        parallel_ranges(_avgpool_backward_range, dy.shape[0], (dy, ph, pw, sh, sw, pad_top, pad_left, dx))


# GlobalAveragePooling2D's mean over each image: kernels of their own, so that a model with
# one and no AveragePooling2D compiles none of the windows' loops (avgpool_forward and
# avgpool_backward with their 2x2 loops: 1.55-1.65 s of LeNet-5's compile in one process,
# these two 0.42-0.50 of the BatchNormalization CIFAR CNN's). The same sums in the same
# order as avgpool_forward's over one window of the whole image.
@range_body
def _global_avgpool_forward_range(begin, end, x, y):
    _, height, width, channels = x.shape
    inverse = x.dtype.type(1.0) / (height * width)
    for n in range(begin, end):
        for c in range(channels):
            y[n, c] = 0
        for r in range(height):
            for s in range(width):
                for c in range(channels):
                    y[n, c] += x[n, r, s, c]
        for c in range(channels):
            y[n, c] *= inverse


@njit(cache=True)
def global_avgpool_forward(x, y):
    """y[n, c] = the mean of x[n, :, :, c]; ``y`` is (batch, channels)."""
    parallel_ranges(_global_avgpool_forward_range, x.shape[0], (x, y))


@range_body
def _global_avgpool_backward_range(begin, end, dy, dx):
    _, height, width, channels = dx.shape
    inverse = dx.dtype.type(1.0) / (height * width)
    for n in range(begin, end):
        for r in range(height):
            for s in range(width):
                for c in range(channels):
                    dx[n, r, s, c] = dy[n, c] * inverse


@njit(cache=True)
def global_avgpool_backward(dy, dx):
    """dx[n, :, :, c] = dy[n, c] / (height * width); ``dy`` is (batch, channels)."""
    parallel_ranges(_global_avgpool_backward_range, dy.shape[0], (dy, dx))


# A Conv2D whose activation is ReLU or linear, followed by a max pool whose windows tile
# the image (strides == pool size, 'valid'), runs as one pass each way: the max is taken
# over the pre-activation (z + bias), and the activation applied to the window's maximum
# only. ReLU is non-decreasing, so max(relu(v)) == relu(max(v)) exactly; where the two
# could pick different window positions (every value <= 0), the ReLU's zero derivative
# drops the gradient either way. So outputs and gradients equal the unfused layers'; only
# the bias gradient's sum runs in another order.


@njit(inline="always")
def max_of_window(top_left, top_right, bottom_left, bottom_right, corner, width, relu, zero):
    """(value, position) of a 2x2 window's maximum, ties keeping the first in row-major
    order, ``position`` the flat index from the top-left pixel's ``corner`` in rows of
    ``width``; with ``relu`` a value not above ``zero`` (NaN included) becomes zero."""
    value, position = top_left, corner
    if top_right > value:
        value, position = top_right, corner + 1
    if bottom_left > value:
        value, position = bottom_left, corner + width
    if bottom_right > value:
        value, position = bottom_right, corner + width + 1
    if relu and not value > zero:
        value = zero
    return value, position


@njit(inline="always")
def maxpool_2x2_image(z, bias, code, y, argmax):
    """maxpool_activation_image for 2x2 windows: each window's four pixels in one pass
    over the channels, which halves the time of a pass per pixel (3.97 -> 1.96 us per
    26x26x32 image) when there are few channels to amortise each pass's set-up."""
    width, channels = z.shape[1], z.shape[2]
    has_bias = bias.shape[0] > 0
    relu = code == RELU
    zero = z.dtype.type(0.0)
    for i in range(y.shape[0]):
        for j in range(y.shape[1]):
            best, where = y[i, j], argmax[i, j]
            r, s = 2 * i, 2 * j
            top_left, top_right, bottom_left, bottom_right = z[r, s], z[r, s + 1], z[r + 1, s], z[r + 1, s + 1]
            corner = r * width + s
            for c in range(channels):
                shift = bias[c] if has_bias else zero
                best[c], where[c] = max_of_window(top_left[c] + shift, top_right[c] + shift, bottom_left[c] + shift,
                                                  bottom_right[c] + shift, corner, width, relu, zero)


@njit(cache=True, inline="always")
def maxpool_activation_image(z, bias, code, ph, pw, y, argmax):
    """One image of bias_activation_maxpool: ``z`` (H, W, C), ``y``/``argmax`` (out_h, out_w, C)."""
    if ph == 2 and pw == 2:
        maxpool_2x2_image(z, bias, code, y, argmax)
    else:
        maxpool_any_image(z, bias, code, ph, pw, y, argmax)


@njit(inline="always")
def maxpool_any_image(z, bias, code, ph, pw, y, argmax):
    """maxpool_activation_image for any window (2x2 included: its own loop is faster)."""
    width, channels = z.shape[1], z.shape[2]
    out_h, out_w = y.shape[0], y.shape[1]
    has_bias = bias.shape[0] > 0
    zero = z.dtype.type(0.0)
    for i in range(out_h):
        for j in range(out_w):
            best, where = y[i, j], argmax[i, j]
            for p in range(ph):
                r = i * ph + p
                for q in range(pw):
                    s = j * pw + q
                    values = z[r, s]
                    position = r * width + s
                    if p == 0 and q == 0:
                        for c in range(channels):
                            best[c] = values[c] + bias[c] if has_bias else values[c]
                            where[c] = position
                    else:
                        for c in range(channels):
                            value = values[c] + bias[c] if has_bias else values[c]
                            if value > best[c]:  # ties keep the first maximum
                                best[c] = value
                                where[c] = position
            if code == RELU:
                for c in range(channels):
                    best[c] = best[c] if best[c] > zero else zero


# Below this many channels maxpool_activation_backward sends each pooled gradient to its
# window's maximum alone, into an image zeroed first, where the pass over every pixel's
# channels spends its time on short loops (128 images on one core, ms, that pass -> this:
# 28x28x6 1.31 -> 0.36, 28x28x8 0.66 -> 0.46, 10x10x16 0.12 -> 0.13, 30x30x32 1.62 ->
# 2.04). Not in the fused conv + pool kernels, which inline maxpool_activation_backward_image
# (0.3 s more of their compile).
SCATTER_BELOW_CHANNELS = 16


@njit(inline="always")
def _scatter_window_gradients(dy, argmax, y, linear, dz, dbias_sums):
    """maxpool_activation_backward_image for few channels: dz zeroed, then each window's
    gradient stored at its maximum, the bias sums added window after window (the pass over
    every pixel adds them row after row: other roundings. Keeping its order took a second
    pass, and 28x28x6 back to 2.0 ms)."""
    channels = dz.shape[2]
    zero = dz.dtype.type(0.0)
    flat = dz.reshape(-1)
    for k in range(flat.size):
        flat[k] = zero
    for i in range(dy.shape[0]):
        for j in range(dy.shape[1]):
            pooled_grads, where, pooled = dy[i, j], argmax[i, j], y[i, j]
            for c in range(channels):
                grad = pooled_grads[c] if linear | (pooled[c] > zero) else zero
                flat[where[c] * channels + c] = grad
                dbias_sums[c] += grad


@njit(cache=True, inline="always")
def maxpool_activation_backward_image(dy, argmax, y, code, ph, pw, dz, dbias_sums):
    """One image of maxpool_activation_backward: ``dz`` (H, W, C) from ``dy``, ``argmax``
    and ``y`` (out_h, out_w, C); adds dz's column sums into ``dbias_sums`` (C,)."""
    height, width, channels = dz.shape
    out_h, out_w = dy.shape[0], dy.shape[1]
    linear = code == LINEAR
    zero = dz.dtype.type(0.0)
    # Loops over windows and their positions, so no pixel needs a division to find its window.
    for i in range(out_h):
        for p in range(ph):
            r = i * ph + p
            for j in range(out_w):
                pooled_grads, where, pooled = dy[i, j], argmax[i, j], y[i, j]
                for q in range(pw):
                    s = j * pw + q
                    pixel = r * width + s
                    grads = dz[r, s]
                    for c in range(channels):
                        passes = (where[c] == pixel) & (linear | (pooled[c] > zero))
                        grad = pooled_grads[c] if passes else zero
                        grads[c] = grad
                        dbias_sums[c] += grad
            # A column past the last whole window gets no gradient.
            dz[r, out_w * pw:] = zero
    dz[out_h * ph:] = zero


# Two bodies, 2x2 windows and any: a model compiles the one its pools take (the loops for
# any window cost 0.7 s of the 1.2 s this body took to compile with both).
@njit(cache=True)
def _maxpool_2x2_images(first, stop, z, bias, code, y, argmax):
    for n in range(first, stop):
        maxpool_2x2_image(z[n], bias, code, y[n], argmax[n])


@njit(cache=True)
def _maxpool_any_images(first, stop, z, bias, code, ph, pw, y, argmax):
    for n in range(first, stop):
        maxpool_any_image(z[n], bias, code, ph, pw, y[n], argmax[n])


@njit(cache=True)
def _maxpool_2x2(z, bias, code, y, argmax):
    parallel_ranges(_maxpool_2x2_images, z.shape[0], (z, bias, code, y, argmax))


@njit(cache=True)
def _maxpool_any(z, bias, code, ph, pw, y, argmax):
    parallel_ranges(_maxpool_any_images, z.shape[0], (z, bias, code, ph, pw, y, argmax))


def bias_activation_maxpool(z, bias, code, ph, pw, y, argmax):
    """y = maxpool(activation(z + bias)) over (ph, pw) windows at stride (ph, pw), for
    ``code`` RELU or LINEAR; argmax as maxpool_forward records it. ``z`` is the conv's
    NHWC pre-activation; ``bias`` of length 0 means no bias."""
    if ph == 2 and pw == 2:
        _maxpool_2x2(z, bias, code, y, argmax)
    else:
        _maxpool_any(z, bias, code, ph, pw, y, argmax)


@njit(cache=True)
def _maxpool_backward_chunks(first, stop, dy, argmax, y, code, ph, pw, dz, partial):
    batch, chunks = dz.shape[0], partial.shape[0]
    for chunk in range(first, stop):
        for n in range(chunk * batch // chunks, (chunk + 1) * batch // chunks):
            if dz.shape[3] < SCATTER_BELOW_CHANNELS:
                _scatter_window_gradients(dy[n], argmax[n], y[n], code == LINEAR, dz[n], partial[chunk])
            else:
                maxpool_activation_backward_image(dy[n], argmax[n], y[n], code, ph, pw, dz[n], partial[chunk])


@njit(cache=True)
def _maxpool_backward(dy, argmax, y, code, ph, pw, dz, partial):
    parallel_ranges(_maxpool_backward_chunks, partial.shape[0], (dy, argmax, y, code, ph, pw, dz, partial))


def maxpool_activation_backward(dy, argmax, y, code, ph, pw, dz, dbias):
    """The conv's pre-activation gradient ``dz`` (NHWC) from the pooled gradient ``dy``:
    each window's gradient goes to its maximum where the activation passed it; adds the
    column sums of dz into ``dbias`` unless it has length 0 (partial sums per fixed chunk
    of images, so the result does not depend on the thread count). The allocation stays
    out of the parallel kernel: see activations.bias_activation_forward."""
    batch, channels = dz.shape[0], dz.shape[3]
    partial = np.zeros((max(min(REDUCTION_CHUNKS, batch), 1), channels), dtype=dz.dtype)
    _maxpool_backward(dy, argmax, y, code, ph, pw, dz, partial)
    if dbias.shape[0] > 0:
        add_chunk_sums(partial, dbias)
