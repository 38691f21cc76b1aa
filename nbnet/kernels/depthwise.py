"""Depthwise, grouped and dilated convolutions (DepthwiseConv2D, and Conv2D with groups > 1
or dilation_rate > 1), NHWC activations.

Two paths, picked by the layer:

* Depthwise (DepthwiseConv2D, and Conv2D with groups == in_channels): direct loops. The
  kernel is viewed as (kh, kw, C*M), M the depth multiplier, so output channel c*M + m,
  Keras's order, reads input channel c. Each output value needs only kh*kw*M
  multiply-adds, so im2col + BLAS would mostly copy. Every innermost loop runs over
  contiguous values of input, kernel and output alike, and vectorises: with M above 1
  each image's channels are first repeated M times (_image_rows), and with a column
  stride of 1 a loop covers a whole output row per tap (the tap's weights repeated along
  it, _tap_rows), not one pixel's few channels (a pixel's C * M values at other strides).
  The kernel gradient and the input gradient are two passes: in one loop nest the input
  gradient's loops ran 4x slower than alone (measured, not understood). 2 cores, ms,
  forward / backward before -> after (128 images, 3x3 'same'): 28x28x32 2.9 / 10.2 -> 1.8
  / 3.2; 28x28x6 1.5 / 8.9 -> 0.38 / 0.86; 28x28x16 x2 7.8 / 34.5 -> 1.9 / 3.7; stride 2,
  16x16x64 0.35 / 1.1 -> 0.38 / 0.90, 28x28x16 x2 1.8 / 9.1 -> 1.06 / 2.56.
* Grouped/dilated (any other groups, or groups == 1 with a dilation): per-group im2col
  into ``cols`` (groups, rows, kh*kw*C/groups), then one BLAS matmul per group against
  the kernel's columns of that group (see grouped_conv_forward), as conv.py does for one
  group.

Geometry tuples: (kh, kw, sh, sw, dh, dw, pad_top, pad_left, out_h, out_w); tap (p, q) of
output pixel (i, j) reads input row i*sh - pad_top + p*dh, column j*sw - pad_left + q*dw.
Dilation 1 and one group never come here: conv.py's paths (and their fusions) keep them.
"""

import numpy as np
from numba import njit

from . import REDUCTION_CHUNKS, add_partials, contiguous
from .activations import LINEAR, activate_fusable
from .parallel import parallel_ranges, range_body
from .matmul import add_transposed_product, matmul


# Compile time: the kernels below take their arrays already flattened to rows (x as
# (batch, height, width * C), z and dz as (batch * out_h, out_w * C * M)), fill and zero
# with plain loops, not slice assignments or reshapes (each compiled NumPy's broadcasting
# into its kernel), and serve every stride with one body a pass (_add_tap). The holdout's
# MobileNet-style CNN (tools/bench_zoo.py), one-process first fit on an empty cache: the
# depthwise kernels compiled in 1.7 s before these loops, 7.9 s as six bodies with slice
# assignments, 5.1 s with loops, 3.4 s as three bodies; its cold start with the warmup
# helper 7.0 -> 9.2 s.


@njit(inline="always")
def _image_rows(x, n, mult, spread):
    """Image n of ``x`` (batch, height, width * C) as rows of width * C * M values: each
    channel's value repeated M times (in ``spread``, a (height, width * C * M) scratch)
    where the depth multiplier M is above 1, so output channel c*M + m's input sits at the
    same index as its output and every loop runs over contiguous values; the image itself
    with M = 1."""
    if mult == 1:
        return x[n]
    for y in range(x.shape[1]):
        source, target = x[n, y], spread[y]
        for k in range(x.shape[2]):
            value = source[k]
            for m in range(mult):
                target[k * mult + m] = value
    return spread


@njit(inline="always")
def _zero(rows):
    for y in range(rows.shape[0]):
        row = rows[y]
        for k in range(row.shape[0]):
            row[k] = 0


@njit(inline="always")
def _tap_span(q, sw, dw, pad_left, out_w, width):
    """The output columns [first, stop) whose tap q falls inside the row, and its column
    offset (input column = output column * sw + offset)."""
    offset = q * dw - pad_left
    first = (-offset + sw - 1) // sw if offset < 0 else 0
    return first, max(first, min(out_w, (width - 1 - offset) // sw + 1)), offset


@njit(inline="always")
def _add_tap(target, source, weights, first, stop, offset, sw, span):
    """target[j] += source[j * sw + offset] * weights[j] (pixels of ``span`` values) for
    output columns j in [first, stop): one run of values at a column stride of 1, a run a
    pixel else. The runs are slices indexed from 0: an index LLVM cannot prove
    non-negative keeps Numba's wraparound test, and the loop did not vectorise (5x slower)."""
    if sw == 1:
        lo, hi, shift = first * span, stop * span, offset * span
        out, values, taps = target[lo:hi], source[lo + shift:hi + shift], weights[lo:hi]
        for k in range(hi - lo):
            out[k] += values[k] * taps[k]
        return
    for j in range(first, stop):
        read = (j * sw + offset) * span
        out, values, taps = target[j * span:(j + 1) * span], source[read:read + span], weights[j * span:(j + 1) * span]
        for o in range(span):
            out[o] += values[o] * taps[o]


@njit(inline="always")
def _tap_rows(kernel, out_w):
    """(kh * kw, out_w * C * M): each tap's channel weights repeated along an output row,
    made from the kernel's values of the call (a replay after training reads new ones)."""
    kh, kw, span = kernel.shape
    rows = np.empty((kh * kw, out_w * span), kernel.dtype)
    for p in range(kh):
        for q in range(kw):
            for j in range(out_w):
                for o in range(span):
                    rows[p * kw + q, j * span + o] = kernel[p, q, o]
    return rows


@range_body(fastmath={"contract"})
def _depthwise_forward_range(begin, end, x, tap_rows, kh, kw, sh, sw, dh, dw, pad_top, pad_left, out_h, out_w, z,
                             channels, spread_shape, start, code, alpha):
    height, width = x.shape[1], x.shape[2] // channels
    span = z.shape[1] // out_w  # C * M values a pixel
    spread = np.empty(spread_shape, x.dtype)
    for n in range(begin, end):
        image = _image_rows(x, n, span // channels, spread)
        for i in range(out_h):
            row = z[n * out_h + i]
            for k in range(row.shape[0]):
                row[k] = start[k]
            for p in range(kh):
                y = i * sh - pad_top + p * dh
                if y < 0 or y >= height:
                    continue
                for q in range(kw):
                    first, stop, offset = _tap_span(q, sw, dw, pad_left, out_w, width)
                    _add_tap(row, image[y], tap_rows[p * kw + q], first, stop, offset, sw, span)
            if code != LINEAR:
                activate_fusable(code, alpha, row)


def _spread_shape(x, span):
    """The shape of the scratch _image_rows repeats an image into (none where M is 1)."""
    height, width, channels = x.shape[1:]
    return (height, width * span) if span > channels else (0, 0)


def _rows(array, count):
    """``array`` (C-contiguous) viewed as ``count`` rows."""
    return array.reshape(count, -1)


def depthwise_forward(x, kernel, kh, kw, sh, sw, dh, dw, pad_top, pad_left, out_h, out_w, z, bias=None, code=LINEAR,
                      alpha=0.0):
    """z[(n*out_h + i)*out_w + j, c*M + m] = sum over (p, q) of x[n, i*sh - pad_top + p*dh,
    j*sw - pad_left + q*dw, c] * kernel[p, q, c*M + m]; zero outside the image. With
    ``bias`` the sums start from it, and activation ``code`` (one of activate_fusable's,
    slope ``alpha``) runs over each output row once it is made, still in cache: no pass of
    their own over z (MobileNet-style predicts, the norm after the depthwise conv folded
    into it, see DepthwiseConv2D). Parallel over images, in the loops the module's
    docstring describes."""
    function, args, _ = _forward_call(np.ascontiguousarray(x), np.ascontiguousarray(kernel), kh, kw, sh, sw, dh, dw,
                                      pad_top, pad_left, out_h, out_w, z, bias, code, alpha)
    function(*args)


def _forward_call(x, kernel, kh, kw, sh, sw, dh, dw, pad_top, pad_left, out_h, out_w, z, bias=None, code=LINEAR,
                  alpha=0.0):
    batch, height, _, channels = x.shape
    spread = _spread_shape(x, z.shape[1])
    bias = np.zeros(0, z.dtype) if bias is None else np.ascontiguousarray(bias)
    rows, images = _rows(z, batch * out_h), x.reshape(batch, height, -1)
    return _depthwise_forward, (images, kernel, kh, kw, sh, sw, dh, dw, pad_top, pad_left, out_h, out_w, rows,
                                channels, spread, bias, int(code), float(alpha)), {}


def _forward_replayed_as(x, kernel, kh, kw, sh, sw, dh, dw, pad_top, pad_left, out_h, out_w, z, bias=None, code=LINEAR,
                         alpha=0.0):
    """The kernel call itself, for a recorded inference program (see inference_program);
    None where an operand is not contiguous (the call would read a copy made now)."""
    if not contiguous(x, kernel, z, bias):
        return None
    return _forward_call(x, kernel, kh, kw, sh, sw, dh, dw, pad_top, pad_left, out_h, out_w, z, bias, code, alpha)


depthwise_forward.replayed_as = _forward_replayed_as


@njit(cache=True)
def _depthwise_forward(x, kernel, kh, kw, sh, sw, dh, dw, pad_top, pad_left, out_h, out_w, z, channels, spread_shape,
                       bias, code, alpha):
    # Each output row starts from the bias (zeros without one), repeated along the row.
    span = kernel.shape[2]
    start = np.zeros(out_w * span, z.dtype)
    for j in range(out_w):
        for o in range(bias.shape[0]):
            start[j * span + o] = bias[o]
    parallel_ranges(_depthwise_forward_range, x.shape[0], (x, _tap_rows(kernel, out_w), kh, kw, sh, sw, dh, dw,
                    pad_top, pad_left, out_h, out_w, z, channels, spread_shape, start, code, alpha))


@njit(inline="always")
def _gather_spread(spread_dx, dx, n, mult):
    """dx[n][y, k] (k over width * C) = the sum over m of the spread gradient's k*M + m."""
    for y in range(dx.shape[1]):
        source, target = spread_dx[y], dx[n, y]
        for k in range(dx.shape[2]):
            total = source[k * mult]
            for m in range(1, mult):
                total += source[k * mult + m]
            target[k] = total


@range_body(fastmath={"contract"})
def _depthwise_kernel_gradient_range(begin, end, x, dz, kh, kw, sh, sw, dh, dw, pad_top, pad_left, out_h, out_w,
                                     channels, partial, spread_shape):
    batch, height, width = x.shape[0], x.shape[1], x.shape[2] // channels
    span = dz.shape[1] // out_w
    chunks = partial.shape[0]
    spread = np.empty(spread_shape, x.dtype)
    # Per tap, the products summed at each place of an output row, summed over the row's
    # pixels at the chunk's end: every loop over contiguous values.
    sums = np.empty((kh * kw, out_w * span), x.dtype)
    for chunk in range(begin, end):
        _zero(sums)
        for n in range(chunk * batch // chunks, (chunk + 1) * batch // chunks):
            image = _image_rows(x, n, span // channels, spread)
            for i in range(out_h):
                row = dz[n * out_h + i]
                for p in range(kh):
                    y = i * sh - pad_top + p * dh
                    if y < 0 or y >= height:
                        continue
                    for q in range(kw):
                        first, stop, offset = _tap_span(q, sw, dw, pad_left, out_w, width)
                        _add_tap(sums[p * kw + q], image[y], row, first, stop, offset, sw, span)
        for t in range(kh * kw):
            taps = partial[chunk, t]
            for o in range(span):
                taps[o] = 0
            for j in range(out_w):
                pixel = sums[t, j * span:(j + 1) * span]
                for o in range(span):
                    taps[o] += pixel[o]


@range_body(fastmath={"contract"})
def _depthwise_input_gradient_range(begin, end, dz, tap_rows, kh, kw, sh, sw, dh, dw, pad_top, pad_left, out_h, out_w,
                                    channels, dx, spread_shape):
    height, width = dx.shape[1], dx.shape[2] // channels
    span = dz.shape[1] // out_w
    mult = span // channels
    spread = np.empty(spread_shape, dx.dtype)
    for n in range(begin, end):
        grad = dx[n] if mult == 1 else spread
        _zero(grad)
        for i in range(out_h):
            row = dz[n * out_h + i]
            for p in range(kh):
                y = i * sh - pad_top + p * dh
                if y < 0 or y >= height:
                    continue
                target_row = grad[y]
                for q in range(kw):
                    first, stop, offset = _tap_span(q, sw, dw, pad_left, out_w, width)
                    taps = tap_rows[p * kw + q]
                    if sw == 1:
                        lo, hi, shift = first * span, stop * span, offset * span
                        grads, target, run = row[lo:hi], target_row[lo + shift:hi + shift], taps[lo:hi]
                        for k in range(hi - lo):
                            target[k] += grads[k] * run[k]
                    else:
                        for j in range(first, stop):
                            target = target_row[(j * sw + offset) * span:(j * sw + offset + 1) * span]
                            grads, run = row[j * span:(j + 1) * span], taps[j * span:(j + 1) * span]
                            for o in range(span):
                                target[o] += grads[o] * run[o]
        if mult > 1:
            _gather_spread(spread, dx, n, mult)


def depthwise_backward(x, kernel, dz, kh, kw, sh, sw, dh, dw, pad_top, pad_left, out_h, out_w, dkernel, need_dx, dx):
    """dkernel (kh, kw, C*M) += the kernel gradient from ``dz`` (rows, C*M), the gradient
    before the activation; with ``need_dx``, dx (overwritten) = the input gradient. Per
    fixed chunk of images (a chunk owns its images' dx and its partial kernel gradient, so
    no two threads add into one slot and the sums do not depend on the thread count), in
    the loops depthwise_forward takes for the stride."""
    x = np.ascontiguousarray(x)
    kernel, dz = np.ascontiguousarray(kernel), np.ascontiguousarray(dz)
    batch, height, _, channels = x.shape
    chunks = min(REDUCTION_CHUNKS, batch)
    partial = np.empty((chunks, kh * kw, dkernel.shape[-1]), dz.dtype)
    spread = _spread_shape(x, dz.shape[1])
    images, rows = x.reshape(batch, height, -1), _rows(dz, batch * out_h)
    gradient = dx.reshape(batch, height, -1) if need_dx else images[:0]
    _depthwise_backward(images, kernel, rows, kh, kw, sh, sw, dh, dw, pad_top, pad_left, out_h, out_w, channels,
                        partial, need_dx, gradient, spread)
    add_partials(partial, dkernel)


@njit(cache=True)
def _depthwise_backward(x, kernel, dz, kh, kw, sh, sw, dh, dw, pad_top, pad_left, out_h, out_w, channels, partial,
                        need_dx, dx, spread_shape):
    parallel_ranges(_depthwise_kernel_gradient_range, partial.shape[0], (x, dz, kh, kw, sh, sw, dh, dw, pad_top,
                    pad_left, out_h, out_w, channels, partial, spread_shape))
    if need_dx:
        parallel_ranges(_depthwise_input_gradient_range, x.shape[0], (dz, _tap_rows(kernel, out_w), kh, kw, sh, sw, dh,
                        dw, pad_top, pad_left, out_h, out_w, channels, dx, spread_shape))


@range_body
def _grouped_im2col_range(begin, end, x, kh, kw, sh, sw, dh, dw, pad_top, pad_left, out_h, out_w, cols):
    batch, height, width, channels = x.shape
    groups = cols.shape[0]
    per_group = channels // groups
    zero = x.dtype.type(0.0)
    for n in range(begin, end):
        for i in range(out_h):
            for j in range(out_w):
                row = (n * out_h + i) * out_w + j
                for p in range(kh):
                    y = i * sh - pad_top + p * dh
                    for q in range(kw):
                        xx = j * sw - pad_left + q * dw
                        base = (p * kw + q) * per_group
                        inside = 0 <= y < height and 0 <= xx < width
                        for g in range(groups):
                            out = cols[g, row, base:base + per_group]
                            if inside:
                                pixel = x[n, y, xx, g * per_group:(g + 1) * per_group]
                                for c in range(per_group):
                                    out[c] = pixel[c]
                            else:
                                for c in range(per_group):
                                    out[c] = zero


@njit(cache=True)
def grouped_im2col(x, kh, kw, sh, sw, dh, dw, pad_top, pad_left, out_h, out_w, cols):
    """cols[g, (n*out_h + i)*out_w + j, (p*kw + q)*Cg + c] = x[n, i*sh - pad_top + p*dh,
    j*sw - pad_left + q*dw, g*Cg + c], Cg = C / groups, zero where the tap is outside."""
    parallel_ranges(_grouped_im2col_range, x.shape[0], (x, kh, kw, sh, sw, dh, dw, pad_top, pad_left, out_h, out_w,
                    cols))


@range_body
def _grouped_col2im_range(begin, end, dcols, kh, kw, sh, sw, dh, dw, pad_top, pad_left, out_h, out_w, dx):
    batch, height, width, channels = dx.shape
    groups = dcols.shape[0]
    per_group = channels // groups
    for n in range(begin, end):
        dx[n] = 0
        for i in range(out_h):
            for j in range(out_w):
                row = (n * out_h + i) * out_w + j
                for p in range(kh):
                    y = i * sh - pad_top + p * dh
                    if y < 0 or y >= height:
                        continue
                    for q in range(kw):
                        xx = j * sw - pad_left + q * dw
                        if xx < 0 or xx >= width:
                            continue
                        base = (p * kw + q) * per_group
                        for g in range(groups):
                            source = dcols[g, row, base:base + per_group]
                            pixel = dx[n, y, xx, g * per_group:(g + 1) * per_group]
                            for c in range(per_group):
                                pixel[c] += source[c]


@njit(cache=True)
def grouped_col2im(dcols, kh, kw, sh, sw, dh, dw, pad_top, pad_left, out_h, out_w, dx):
    """The adjoint of grouped_im2col: dx (overwritten) = every column entry summed back
    onto its pixel. Parallel over images only, so no two threads add into one pixel."""
    parallel_ranges(_grouped_col2im_range, dx.shape[0], (dcols, kh, kw, sh, sw, dh, dw, pad_top, pad_left, out_h, out_w,
                    dx))


def grouped_conv_forward(x, kernel2d, geometry, cols, z):
    """z (rows, filters) = the grouped convolution (no bias): grouped_im2col into ``cols``
    (groups, rows, kh*kw*C/groups), then group g's columns times the kernel's columns
    g*F/groups..., ``kernel2d`` the Keras kernel viewed as (kh*kw*C/groups, filters)."""
    grouped_im2col(x, *geometry, cols)
    groups, per = cols.shape[0], kernel2d.shape[1] // cols.shape[0]
    for g in range(groups):
        matmul(cols[g], kernel2d[:, g * per:(g + 1) * per], out=z[:, g * per:(g + 1) * per])


def grouped_conv_backward(cols, kernel2d, dz, geometry, dkernel2d, scratch, need_dx, dx):
    """Adds the kernel gradient into ``dkernel2d`` (``scratch``: (workers, kh*kw*C/groups,
    F/groups), see matmul.add_transposed_product); with ``need_dx``, writes dx. Each
    group's column gradient overwrites its columns once they have been read, as
    conv.conv2d_backward does."""
    groups, per = cols.shape[0], kernel2d.shape[1] // cols.shape[0]
    for g in range(groups):
        part = slice(g * per, (g + 1) * per)
        add_transposed_product(cols[g], dz[:, part], dkernel2d[:, part], scratch)
        if need_dx:
            matmul(dz[:, part], kernel2d[:, part].T, out=cols[g])
    if need_dx:
        grouped_col2im(cols, *geometry, dx)
