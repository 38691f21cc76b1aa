"""Stride-1 Conv2D on planar copies of each image, vectorised along the flattened rows:
the path for convs too thin for BLAS (few input channels or few filters, 5x5 and 7x7
fields), where im2col would write each input kh*kw times for a matmul of 6-16 columns.

Each image is copied channel by channel into a zero-bordered buffer of (out_h + kh - 1)
rows of ``wide`` = out_w + kw - 1 values. Read as one flat array, the window tap (c, p, q)
of every output pixel (i, j) is then the value ``c*plane + p*wide + q`` past position
``i*wide + j``: the whole conv is, per output channel, a sum over taps of the flat buffer
shifted by the tap's offset, each term one long multiply-add over out_h*wide positions
that LLVM vectorises. The kw - 1 positions at the end of each row are outputs past the
edge, computed and dropped (14-28% extra work for 5x5 at 14-28 wide), in exchange for
loops of hundreds of values instead of out_w. The backward pass runs on the same grid,
with the output gradient laid out there (its dropped positions zero): the kernel gradient
is one dot product per tap and filter, and the input gradient spreads the gradient back
through each tap's shifted range of the planes (the adjoint of the forward sum).

Taps go _TAPS at a time (the field padded with zero-weight taps), so each pass loads and
stores the accumulator once for _TAPS multiply-adds. Only the CPU has this path; the GPU
runs im2col and its GEMM. In float32 the implicit GEMM (implicit_gemm.py) and, for few
filters, its block turned (planar_blocks.py) took over these convs: this path stays the
float64 one.
"""

import numpy as np
from numba import njit

from . import REDUCTION_CHUNKS
from .parallel import parallel_ranges

_TAPS = 4
# The input gradient's pass takes this many filters at once (its accumulator is loaded and
# stored once for each), so filters are padded with zero weights to a multiple of it.
_SPREAD_FILTERS = 8
# Flat lengths are rounded up to whole multiples of this, so the vectorised loops never
# fall into their scalar remainder (up to 31 values of rows of 140-250).
_SPAN = 32


@njit(inline="always")
def _span(values):
    return -(-values // _SPAN) * _SPAN

# Where this path beats im2col + BLAS, the direct kernels and Winograd (layer forward +
# backward, batch 128, 2 cores, ms, planar against the best other): 5x5x1 -> 6 1.4 vs 3.2
# (direct), 7x7x1 -> 16 3.2 vs 5.5 (direct), 5x5x3 -> 16 5.6 vs 9.1 (direct), 5x5x8 -> 8
# 3.7-5.0 vs 14-17 (im2col), 14x14x6 -> 10x10x16 5x5 3.8 vs 5.3-7.0; 3x3 without a pool against Winograd:
# 14x14x16 -> 16 3.7 vs 4.0, 28x28x8 -> 16 8.9 vs 12.5, 32x32x16 -> 16 17.6 vs 21.9,
# 14x14x12 -> 24 4.2 vs 5.7. It loses on wide layers (14x14x16 -> 64 5x5: 34 vs 29 for
# im2col; 3x3 14x14x16 -> 32: 6.8 vs 5.9 for Winograd), on narrow outputs of wider
# layers, where the dropped positions are a large share (10x10x16 -> 32 5x5: 17 vs 13),
# and to the direct kernels on 3x3 first layers (3x3x1 -> 32: 2.5 vs 1.2); 5x5x1 -> 32
# and 14x14x16 -> 32 5x5 are even.
MAX_CHANNELS = 16
MAX_FILTERS = 32
THIN = 128
THIN_3X3 = 288


def applies(kernel_size, strides, channels, filters, out_w, pooled):
    """Whether a plain (ungrouped, undilated) Conv2D takes this path: stride 1, few
    channels and filters, rows at least three times the dropped positions unless the
    layer is thin (channels x filters <= THIN); 3x3 kernels from 4 channels (fewer: the
    direct kernels or im2col) up to channels x filters of THIN_3X3, and only without a
    2x2 max pool absorbed (``pooled``), which Winograd runs in the same pass."""
    kh, kw = kernel_size
    if tuple(strides) != (1, 1) or channels > MAX_CHANNELS or filters > MAX_FILTERS:
        return False
    if out_w < 3 * (kw - 1) and channels * filters > THIN:
        return False
    if max(kh, kw) >= 5:
        return True
    return (kh, kw) == (3, 3) and channels >= 4 and channels * filters <= THIN_3X3 and not pooled


@njit(cache=True)
def _taps(kernel, plane, wide):
    """(offsets, weights): each tap's offset in the planes, in (c, p, q) order, and
    weights[o, t] its kernel value for filter o; taps padded with zeros to whole groups of
    _TAPS, filters to whole groups of _SPREAD_FILTERS."""
    kh, kw, channels, filters = kernel.shape
    field = kh * kw * channels
    offsets = np.zeros(-(-field // _TAPS) * _TAPS, np.int64)
    weights = np.zeros((-(-filters // _SPREAD_FILTERS) * _SPREAD_FILTERS, offsets.size), kernel.dtype)
    fill_taps(kernel, plane, wide, offsets, weights)
    return offsets, weights


@njit(inline="always")
def fill_taps(kernel, plane, wide, offsets, weights):
    """offsets[t], weights[o, t] for the kernel's taps t in (c, p, q) order (the first
    kh * kw * channels of each; the rest left as they are)."""
    kh, kw, channels, filters = kernel.shape
    t = 0
    for c in range(channels):
        for p in range(kh):
            for q in range(kw):
                offsets[t] = c * plane + p * wide + q
                for o in range(filters):
                    weights[o, t] = kernel[p, q, c, o]
                t += 1


@njit(inline="always")
def _to_planes(x, n, top, left, rows, wide, buffer):
    """buffer[c*rows*wide + (y + top)*wide + xx + left] = x[n, y, xx, c] where that lands
    inside the planes; every other value keeps what it had (zero borders stay zero)."""
    height, width, channels = x.shape[1:]
    for c in range(channels):
        for y in range(max(0, -top), min(height, rows - top)):
            base = c * rows * wide + (y + top) * wide + left
            for xx in range(max(0, -left), min(width, wide - left)):
                buffer[base + xx] = x[n, y, xx, c]


# 'contract' fuses each multiply-add; the order of the sums is fixed. The weights are
# taken into scalars first: read from an array inside the loop, they could alias the
# stores, and LLVM would load them again on every iteration.
@njit(cache=True, fastmath={"contract"})
def _correlate(source, offsets, weights, length, out):
    """out[o, f] = sum over taps t of weights[o, t] * source[offsets[t] + f], f < length;
    outputs and taps _TAPS at a time, so each value loaded serves _TAPS outputs."""
    zero = out.dtype.type(0.0)
    for o in range(0, weights.shape[0], _TAPS):
        a0, a1, a2, a3 = out[o, :length], out[o + 1, :length], out[o + 2, :length], out[o + 3, :length]
        a0[:] = zero
        a1[:] = zero
        a2[:] = zero
        a3[:] = zero
        for t in range(0, offsets.size, _TAPS):
            s0 = source[offsets[t]:offsets[t] + length]
            s1 = source[offsets[t + 1]:offsets[t + 1] + length]
            s2 = source[offsets[t + 2]:offsets[t + 2] + length]
            s3 = source[offsets[t + 3]:offsets[t + 3] + length]
            w00, w01, w02, w03 = weights[o, t], weights[o, t + 1], weights[o, t + 2], weights[o, t + 3]
            w10, w11, w12, w13 = weights[o + 1, t], weights[o + 1, t + 1], weights[o + 1, t + 2], weights[o + 1, t + 3]
            w20, w21, w22, w23 = weights[o + 2, t], weights[o + 2, t + 1], weights[o + 2, t + 2], weights[o + 2, t + 3]
            w30, w31, w32, w33 = weights[o + 3, t], weights[o + 3, t + 1], weights[o + 3, t + 2], weights[o + 3, t + 3]
            for f in range(length):
                v0, v1, v2, v3 = s0[f], s1[f], s2[f], s3[f]
                a0[f] += w00 * v0 + w01 * v1 + w02 * v2 + w03 * v3
                a1[f] += w10 * v0 + w11 * v1 + w12 * v2 + w13 * v3
                a2[f] += w20 * v0 + w21 * v1 + w22 * v2 + w23 * v3
                a3[f] += w30 * v0 + w31 * v1 + w32 * v2 + w33 * v3


@njit(cache=True, fastmath={"contract"})
def _spread(grads, offsets, weights, field, length, target):
    """target[offsets[t] + f] += sum over o of weights[o, t] * grads[o, f] for the first
    ``field`` taps, f < length: the adjoint of _correlate, _SPREAD_FILTERS filters a pass.
    The taps' target ranges overlap, so each tap is its own pass."""
    for t in range(field):
        acc = target[offsets[t]:offsets[t] + length]
        for o in range(0, grads.shape[0], _SPREAD_FILTERS):
            w0, w1, w2, w3 = weights[o, t], weights[o + 1, t], weights[o + 2, t], weights[o + 3, t]
            w4, w5, w6, w7 = weights[o + 4, t], weights[o + 5, t], weights[o + 6, t], weights[o + 7, t]
            g0, g1, g2, g3 = grads[o, :length], grads[o + 1, :length], grads[o + 2, :length], grads[o + 3, :length]
            g4, g5, g6, g7 = grads[o + 4, :length], grads[o + 5, :length], grads[o + 6, :length], \
                grads[o + 7, :length]
            for f in range(length):
                acc[f] += (w0 * g0[f] + w1 * g1[f] + w2 * g2[f] + w3 * g3[f]
                           + w4 * g4[f] + w5 * g5[f] + w6 * g6[f] + w7 * g7[f])


# 'reassoc' lets LLVM vectorise each dot product (partial sums per lane, added at the end):
# one fixed order for given shapes, whatever the thread count.
@njit(cache=True, fastmath={"contract", "reassoc"})
def _tap_products(source, offsets, grads, length, sums):
    """sums[o, t] += the dot product of source[offsets[t]:][:length] and grads[o, :length],
    outputs and taps _TAPS at a time (16 sums in registers, each load serving four)."""
    zero = sums.dtype.type(0.0)
    for o in range(0, grads.shape[0], _TAPS):
        g0, g1, g2, g3 = grads[o, :length], grads[o + 1, :length], grads[o + 2, :length], grads[o + 3, :length]
        for t in range(0, offsets.size, _TAPS):
            s0 = source[offsets[t]:offsets[t] + length]
            s1 = source[offsets[t + 1]:offsets[t + 1] + length]
            s2 = source[offsets[t + 2]:offsets[t + 2] + length]
            s3 = source[offsets[t + 3]:offsets[t + 3] + length]
            d00 = d01 = d02 = d03 = d10 = d11 = d12 = d13 = zero
            d20 = d21 = d22 = d23 = d30 = d31 = d32 = d33 = zero
            for f in range(length):
                v0, v1, v2, v3 = s0[f], s1[f], s2[f], s3[f]
                e0, e1, e2, e3 = g0[f], g1[f], g2[f], g3[f]
                d00 += v0 * e0
                d01 += v1 * e0
                d02 += v2 * e0
                d03 += v3 * e0
                d10 += v0 * e1
                d11 += v1 * e1
                d12 += v2 * e1
                d13 += v3 * e1
                d20 += v0 * e2
                d21 += v1 * e2
                d22 += v2 * e2
                d23 += v3 * e2
                d30 += v0 * e3
                d31 += v1 * e3
                d32 += v2 * e3
                d33 += v3 * e3
            row0, row1, row2, row3 = sums[o, t:t + _TAPS], sums[o + 1, t:t + _TAPS], sums[o + 2, t:t + _TAPS], \
                sums[o + 3, t:t + _TAPS]
            row0[0] += d00
            row0[1] += d01
            row0[2] += d02
            row0[3] += d03
            row1[0] += d10
            row1[1] += d11
            row1[2] += d12
            row1[3] += d13
            row2[0] += d20
            row2[1] += d21
            row2[2] += d22
            row2[3] += d23
            row3[0] += d30
            row3[1] += d31
            row3[2] += d32
            row3[3] += d33


@njit(cache=True)
def _forward_images(first, stop, x, kernel, pad_top, pad_left, out_h, out_w, z):
    kh, kw, channels, filters = kernel.shape
    rows, wide = out_h + kh - 1, out_w + kw - 1
    offsets, weights = _taps(kernel, rows * wide, wide)
    length = _span(out_h * wide)
    planes = np.zeros(channels * rows * wide + length, x.dtype)
    out = np.empty((weights.shape[0], length), x.dtype)
    pixels = out_h * out_w
    for n in range(first, stop):
        _to_planes(x, n, pad_top, pad_left, rows, wide, planes)
        _correlate(planes, offsets, weights, length, out)
        for i in range(out_h):
            for j in range(out_w):
                row = z[n * pixels + i * out_w + j]
                for o in range(filters):
                    row[o] = out[o, i * wide + j]


@njit(cache=True)
def _forward(x, kernel, pad_top, pad_left, out_h, out_w, z):
    parallel_ranges(_forward_images, x.shape[0], (x, kernel, pad_top, pad_left, out_h, out_w, z))


def planar_conv_forward(x, kernel, pad_top, pad_left, out_h, out_w, z):
    """z[(n*out_h + i)*out_w + j, o] = sum over the window of x * kernel (no bias);
    ``kernel`` is Keras's (kh, kw, in, out)."""
    _forward(x, kernel, pad_top, pad_left, out_h, out_w, z)


@njit(cache=True)
def _backward_chunks(first, stop, x, kernel, dz, pad_top, pad_left, out_h, out_w, partial, need_dx, dx):
    """Adds the images of each chunk first..stop-1 of partial.shape[0] into their
    kernel-gradient products ``partial[chunk]`` (filters, taps); with ``need_dx``, writes
    their input gradients."""
    chunks = partial.shape[0]
    batch, height, width, channels = x.shape
    kh, kw, _, filters = kernel.shape
    rows, wide = out_h + kh - 1, out_w + kw - 1
    plane = rows * wide
    offsets, weights = _taps(kernel, plane, wide)
    length = _span(out_h * wide)
    planes = np.zeros(channels * plane + length, x.dtype)
    # The output gradient on the planes' flat grid; the dropped positions stay zero.
    grads = np.zeros((partial.shape[1], length), x.dtype)
    dx_planes = np.empty(channels * plane + length if need_dx else 0, x.dtype)
    zero = x.dtype.type(0.0)
    for chunk in range(first, stop):
        sums = partial[chunk]
        for n in range(chunk * batch // chunks, (chunk + 1) * batch // chunks):
            _to_planes(x, n, pad_top, pad_left, rows, wide, planes)
            for i in range(out_h):
                for j in range(out_w):
                    for o in range(filters):
                        grads[o, i * wide + j] = dz[n, i, j, o]
            _tap_products(planes, offsets, grads, length, sums)
            if need_dx:
                dx_planes[:] = zero
                _spread(grads, offsets, weights, kh * kw * channels, length, dx_planes)
                # Pixels the planes do not hold (a pool-trimmed output's last rows) get zero.
                for y in range(height):
                    inside_y = 0 <= y + pad_top < rows
                    for xx in range(width):
                        inside = inside_y and 0 <= xx + pad_left < wide
                        for c in range(channels):
                            at = c * plane + (y + pad_top) * wide + xx + pad_left
                            dx[n, y, xx, c] = dx_planes[at] if inside else zero


@njit(cache=True)
def _backward(x, kernel, dz, pad_top, pad_left, out_h, out_w, partial, need_dx, dx):
    parallel_ranges(_backward_chunks, partial.shape[0], (x, kernel, dz, pad_top, pad_left, out_h, out_w, partial,
                                                         need_dx, dx))


def planar_conv_backward(x, kernel, dz, pad_top, pad_left, out_h, out_w, dkernel, need_dx, dx):
    """dkernel (kh, kw, in, out) += the window-by-gradient products summed over the batch,
    ``dz`` the (pixels, filters) gradient before the activation; with ``need_dx``, dx =
    ``dz`` spread back through the kernel. Partial sums per fixed chunk of images: no
    race, and a result that does not depend on the thread count."""
    kh, kw, channels, filters = kernel.shape
    field = kh * kw * channels
    chunks = min(REDUCTION_CHUNKS, x.shape[0])
    partial = np.zeros((chunks, -(-filters // _SPREAD_FILTERS) * _SPREAD_FILTERS, -(-field // _TAPS) * _TAPS),
                       x.dtype)
    _backward(x, kernel, dz.reshape(-1, out_h, out_w, filters), pad_top, pad_left, out_h, out_w, partial, need_dx, dx)
    # taps run (c, p, q); the kernel is (p, q, c, o)
    total = partial[0, :filters, :field]
    for chunk in range(1, chunks):
        total = total + partial[chunk, :filters, :field]
    dkernel += total.reshape(filters, channels, kh, kw).transpose(2, 3, 1, 0)
