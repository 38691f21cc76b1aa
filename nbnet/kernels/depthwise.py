"""Depthwise, grouped and dilated convolutions (DepthwiseConv2D, and Conv2D with groups > 1
or dilation_rate > 1), NHWC activations.

Two paths, picked by the layer:

* Depthwise (DepthwiseConv2D, and Conv2D with groups == in_channels): direct loops. The
  kernel is viewed as (kh, kw, C*M), M the depth multiplier, so output channel c*M + m,
  Keras's order, reads input channel c; with M == 1 the innermost loop runs over
  contiguous channels of input, kernel and output alike, and vectorises. Each output
  value needs only kh*kw*M multiply-adds, so im2col + BLAS would mostly copy.
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

from . import REDUCTION_CHUNKS
from .parallel import parallel_ranges, range_body
from .matmul import add_transposed_product, matmul


@range_body
def _depthwise_forward_range(begin, end, x, kernel, kh, kw, sh, sw, dh, dw, pad_top, pad_left, out_h, out_w, z):
    batch, height, width, channels = x.shape
    outs = z.shape[1]
    mult = outs // channels
    zero = z.dtype.type(0.0)
    for n in range(begin, end):
        for i in range(out_h):
            for j in range(out_w):
                out = z[(n * out_h + i) * out_w + j]
                for o in range(outs):
                    out[o] = zero
                for p in range(kh):
                    y = i * sh - pad_top + p * dh
                    if y < 0 or y >= height:
                        continue
                    for q in range(kw):
                        xx = j * sw - pad_left + q * dw
                        if xx < 0 or xx >= width:
                            continue
                        pixel, taps = x[n, y, xx], kernel[p, q]
                        if mult == 1:
                            for c in range(channels):
                                out[c] += pixel[c] * taps[c]
                        else:
                            for c in range(channels):
                                value = pixel[c]
                                for m in range(mult):
                                    out[c * mult + m] += value * taps[c * mult + m]


@njit(cache=True)
def depthwise_forward(x, kernel, kh, kw, sh, sw, dh, dw, pad_top, pad_left, out_h, out_w, z):
    """z[(n*out_h + i)*out_w + j, c*M + m] = sum over (p, q) of x[n, i*sh - pad_top + p*dh,
    j*sw - pad_left + q*dw, c] * kernel[p, q, c*M + m] (no bias); zero outside the image."""
    parallel_ranges(_depthwise_forward_range, x.shape[0], (x, kernel, kh, kw, sh, sw, dh, dw, pad_top, pad_left, out_h,
                    out_w, z))


@range_body
def _depthwise_backward_chunks_range(begin, end, x, kernel, dz, kh, kw, sh, sw, dh, dw, pad_top, pad_left, out_h,
                                     out_w, partial, need_dx, dx):
    batch, height, width, channels = x.shape
    outs = dz.shape[1]
    mult = outs // channels
    chunks = partial.shape[0]
    zero = dz.dtype.type(0.0)
    for chunk in range(begin, end):
        grad = partial[chunk]
        grad[:] = zero
        for n in range(chunk * batch // chunks, (chunk + 1) * batch // chunks):
            if need_dx:
                dx[n] = zero
            for i in range(out_h):
                for j in range(out_w):
                    rows = dz[(n * out_h + i) * out_w + j]
                    for p in range(kh):
                        y = i * sh - pad_top + p * dh
                        if y < 0 or y >= height:
                            continue
                        for q in range(kw):
                            xx = j * sw - pad_left + q * dw
                            if xx < 0 or xx >= width:
                                continue
                            pixel, taps, dtaps = x[n, y, xx], kernel[p, q], grad[p, q]
                            # mult == 1 apart: loops over contiguous channels vectorise (3x3 on 128x28x28x32,
                            # forward + backward: 53 -> 28 ms on 2 busy cores).
                            if mult == 1:
                                for c in range(channels):
                                    dtaps[c] += pixel[c] * rows[c]
                            else:
                                for c in range(channels):
                                    value = pixel[c]
                                    for m in range(mult):
                                        dtaps[c * mult + m] += value * rows[c * mult + m]
                            if need_dx:
                                dpixel = dx[n, y, xx]
                                if mult == 1:
                                    for c in range(channels):
                                        dpixel[c] += rows[c] * taps[c]
                                else:
                                    for c in range(channels):
                                        total = zero
                                        for m in range(mult):
                                            total += rows[c * mult + m] * taps[c * mult + m]
                                        dpixel[c] += total


@njit(cache=True)
def _depthwise_backward_chunks(x, kernel, dz, kh, kw, sh, sw, dh, dw, pad_top, pad_left, out_h, out_w, partial,
                               need_dx, dx):
    """Per fixed chunk of images: partial[chunk] = the chunk's kernel gradient; with
    ``need_dx``, dx of its images. A chunk owns its images' dx and its partial row, so no
    two threads add into one slot, and the sum does not depend on the thread count."""
    parallel_ranges(_depthwise_backward_chunks_range, partial.shape[0], (x, kernel, dz, kh, kw, sh, sw, dh, dw,
                    pad_top, pad_left, out_h, out_w, partial, need_dx, dx))


def depthwise_backward(x, kernel, dz, kh, kw, sh, sw, dh, dw, pad_top, pad_left, out_h, out_w, dkernel, need_dx, dx):
    """dkernel (kh, kw, C*M) += the kernel gradient from ``dz`` (rows, C*M), the gradient
    before the activation; with ``need_dx``, dx (overwritten) = the input gradient."""
    chunks = min(REDUCTION_CHUNKS, x.shape[0])
    partial = np.empty((chunks,) + dkernel.shape, dz.dtype)
    _depthwise_backward_chunks(x, kernel, dz, kh, kw, sh, sw, dh, dw, pad_top, pad_left, out_h, out_w, partial,
                               need_dx, dx if need_dx else x[:0])
    for chunk in range(chunks):  # in chunk order: the same sum whatever the threads
        dkernel += partial[chunk]


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
