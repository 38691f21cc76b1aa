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
runs im2col and its GEMM.
"""

import numba
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from ..threads import numba_thread_count
from . import REDUCTION_CHUNKS
from .activations import LINEAR, activate_fusable
from .implicit_gemm import ROWS, SPLIT_IMAGE_MIN_MACS, _pad_image, _planar_block
from .lane_maps import LANES
from .parallel import parallel_ranges, range_body

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
    t = 0
    for c in range(channels):
        for p in range(kh):
            for q in range(kw):
                offsets[t] = c * plane + p * wide + q
                for o in range(filters):
                    weights[o, t] = kernel[p, q, c, o]
                t += 1
    return offsets, weights


@intrinsic
def _pixels_to_planes(typingctx, source, pixel_stride, target, plane_stride):
    """16 pixels' 8 channels (float32 at ``source``, pixel p's at source + p * pixel_stride
    values) stored as 8 runs of 16 values, channel c's from target + c * plane_stride: a
    16 x 8 transpose in registers, three rounds of two-vector shuffles each moving one bit
    of the pixel index into the lanes and one of the channel out (then one reordering of
    the lanes), where a loop of scalar copies took 2.8 us an image of 28x28x8."""
    def codegen(context, builder, signature, args):
        source, pixel_stride, target, plane_stride = args
        i32, i64, f32 = ir.IntType(32), ir.IntType(64), ir.FloatType()
        half, full = ir.VectorType(f32, 8), ir.VectorType(f32, 16)
        source, target = builder.inttoptr(source, f32.as_pointer()), builder.inttoptr(target, f32.as_pointer())

        def shuffle(x, y, mask):
            return builder.shuffle_vector(x, y, ir.Constant(ir.VectorType(i32, len(mask)), mask))

        def pixel(p):
            at = builder.gep(source, [builder.mul(pixel_stride, ir.Constant(i64, p))])
            return builder.load(builder.bitcast(at, half.as_pointer()), align=4)

        # vectors[m] lane i: pixel 2m + i // 8, channel i % 8 (vector index bits p3 p2 p1).
        vectors = [shuffle(pixel(2 * m), pixel(2 * m + 1), list(range(16))) for m in range(8)]
        for bit in range(3):  # swap the vector index's bit with the lane's (channel) bit
            step = 1 << bit
            turned = list(vectors)
            for m in range(8):
                if m & step:
                    continue
                x, y = vectors[m], vectors[m | step]
                for b in range(2):
                    mask = [((i >> bit) & 1) * 16 + (i & ~step & 15) + b * step for i in range(16)]
                    turned[m | (b * step)] = shuffle(x, y, mask)
            vectors = turned
        # Lanes now (p0 p3 p2 p1): reorder to pixel order.
        order = [(p & 1) * 8 + (p >> 1) for p in range(16)]
        for c in range(8):
            at = builder.gep(target, [builder.mul(plane_stride, ir.Constant(i64, c))])
            builder.store(shuffle(vectors[c], vectors[c], order), builder.bitcast(at, full.as_pointer()), align=4)
        return context.get_dummy_value()

    return types.void(types.int64, types.int64, types.int64, types.int64), codegen


@njit(inline="always")
def _to_planes_fast(x, n, top, left, rows, wide, buffer):
    """_to_planes for float32 images of a multiple of 8 channels: runs of 16 pixels turned
    in registers (_pixels_to_planes), a row's last run overlapping the one before it (the
    same values written twice); rows of fewer than 16 pixels by _to_planes' loop."""
    height, width, channels = x.shape[1:]
    plane = rows * wide
    first, stop = max(0, -left), min(width, wide - left)
    image = x[n]
    for y in range(max(0, -top), min(height, rows - top)):
        base = (y + top) * wide + left
        if stop - first < 16:
            for c in range(channels):
                for xx in range(first, stop):
                    buffer[c * plane + base + xx] = image[y, xx, c]
            continue
        for run in range(-(-(stop - first) // 16)):
            xx = min(first + 16 * run, stop - 16)
            for group in range(channels // 8):
                _pixels_to_planes(image[y, xx:].ctypes.data + 32 * group, channels,
                                  buffer.ctypes.data + 4 * (group * 8 * plane + base + xx), plane)


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


# The forward pass in vector registers (float32): implicit_gemm's block with the operands'
# roles turned (_planar_block): a block's rows are filters, its lanes 2 * LANES consecutive
# positions of the planes, so a layer of few filters fills every lane, where the implicit
# GEMM's vectors run along the filters (6 of its 16 lanes for LeNet-5's first conv).
@njit(cache=True, inline="always")
def _block_taps(kernel, plane, wide):
    """(offsets, weights) as _taps makes them, unpadded: weights (filters, taps) float32."""
    kh, kw, channels, filters = kernel.shape
    offsets = np.empty(kh * kw * channels, np.int64)
    weights = np.empty((filters, offsets.size), np.float32)
    t = 0
    for c in range(channels):
        for p in range(kh):
            for q in range(kw):
                offsets[t] = c * plane + p * wide + q
                for o in range(filters):
                    weights[o, t] = kernel[p, q, c, o]
                t += 1
    return offsets, weights


@njit(cache=True, inline="always")
def _correlate_blocks(source, offsets, weights, first, stop, out, rows):
    """out[f, o] = sum over taps t of weights[o, t] * source[offsets[t] + f] for f in
    [first, stop) (whole blocks of 2 * LANES), ``out`` (positions, ROWS) position-major:
    the block stores its sums turned (see implicit_gemm._store_transposed)."""
    filters, taps = weights.shape
    for r in range(ROWS):
        rows[r] = min(r, filters - 1) * taps
    for f in range(first, stop, 2 * LANES):
        _planar_block(weights.ctypes.data, rows.ctypes.data, offsets.ctypes.data, taps, source.ctypes.data + 4 * f,
                      0, out.ctypes.data + 4 * ROWS * f, 0, ROWS, 0, LANES, 0, 0)


@range_body
def _block_forward_jobs(first, stop, x, kernel, pad_top, pad_left, out_h, out_w, bias, code, alpha, z, parts):
    """Jobs first..stop-1: job (image n, part) makes that part of the image's positions,
    moves them to z's (pixel, filter) rows with the bias, and runs the activation over them
    while they are in cache."""
    kh, kw, channels, filters = kernel.shape
    rows_n, wide = out_h + kh - 1, out_w + kw - 1
    offsets, weights = _block_taps(kernel, rows_n * wide, wide)
    length = _span(out_h * wide)
    planes = np.zeros(channels * rows_n * wide + length, np.float32)
    out = np.empty((length, ROWS), np.float32)
    rows = np.empty(ROWS, np.int64)
    blocks = length // (2 * LANES)
    biased = bias.size > 0
    tiled = np.empty(out_w * ROWS if biased and filters == ROWS else 0, np.float32)  # the bias, pixel after pixel
    for k in range(tiled.size):
        tiled[k] = bias[k % ROWS]
    for job in range(first, stop):
        n, part = job // parts, job % parts
        low, high = part * blocks // parts * 2 * LANES, (part + 1) * blocks // parts * 2 * LANES
        if high <= low:
            continue
        if channels % 8 == 0:
            _to_planes_fast(x, n, pad_top, pad_left, rows_n, wide, planes)
        else:
            _to_planes(x, n, pad_top, pad_left, rows_n, wide, planes)
        _correlate_blocks(planes, offsets, weights, low, high, out, rows)
        i_low, i_high = low // wide, min(out_h, -(-high // wide))
        image = z[n]
        for i in range(i_low, i_high):
            j_low, j_high = max(0, low - i * wide), min(out_w, high - i * wide)
            if filters == ROWS:
                # z's rows are the positions' own 8 values: one flat run a row (an image
                # of 28x28x8 on one core 1.7 -> 1.2 us, against the loop below).
                sums = out.reshape(-1)[(i * wide + j_low) * ROWS:(i * wide + j_high) * ROWS]
                row = image.reshape(-1)[(i * out_w + j_low) * ROWS:(i * out_w + j_high) * ROWS]
                if biased:
                    for k in range(sums.size):
                        row[k] = sums[k] + tiled[k]
                else:
                    row[:] = sums
                continue
            for j in range(j_low, j_high):
                row, sums = image[i * out_w + j], out[i * wide + j]
                if biased:
                    for o in range(filters):
                        row[o] = sums[o] + bias[o]
                else:
                    for o in range(filters):
                        row[o] = sums[o]
        if code != LINEAR:
            p_low = i_low * out_w + max(0, min(out_w, low - i_low * wide))
            p_high = (i_high - 1) * out_w + max(0, min(out_w, high - (i_high - 1) * wide))
            if p_high > p_low:
                activate_fusable(code, alpha, image.reshape(-1)[p_low * filters:p_high * filters])


@njit(cache=True)
def _block_forward(x, kernel, pad_top, pad_left, out_h, out_w, bias, code, alpha, z, parts):
    parallel_ranges(_block_forward_jobs, x.shape[0] * parts,
                    (x, kernel, pad_top, pad_left, out_h, out_w, bias, code, alpha, z, parts))


# Where the turned block runs a stride-1 float32 conv: fewer filters than a vector's lanes
# (the implicit GEMM leaves the rest of its lanes empty) on rows whose dropped positions
# (kw - 1 of each wide row) are a small share.
def blocks_apply(kernel_size, strides, filters, out_w, dtype):
    kh, kw = kernel_size
    return (np.dtype(dtype) == np.float32 and LANES == 16 and ROWS == 8 and tuple(strides) == (1, 1)
            and filters <= ROWS and out_w >= 3 * (kw - 1))


def planar_block_forward(x, kernel, sh, sw, pad_top, pad_left, out_h, out_w, z, bias=None, code=LINEAR, alpha=0.0):
    """implicit_gemm.implicit_conv_forward's result (the same arguments; strides 1 only) by
    the turned block; ``z`` is (batch * out_h * out_w, filters)."""
    if LANES != 16 or ROWS != 8 or kernel.shape[3] > ROWS:
        raise ValueError("planar_block_forward makes up to 8 filters with 16-lane vectors (AVX-512): see blocks_apply")
    function, args = _block_forward_call(x, kernel, pad_top, pad_left, out_h, out_w, z, bias, code, alpha,
                                         numba_thread_count())
    function(*args)


def _block_forward_call(x, kernel, pad_top, pad_left, out_h, out_w, z, bias, code, alpha, threads):
    kh, kw, channels, filters = kernel.shape
    bias = np.zeros(0, np.float32) if bias is None else np.ascontiguousarray(bias)
    batch = x.shape[0]
    large = out_h * out_w * filters * kh * kw * channels >= SPLIT_IMAGE_MIN_MACS
    parts = max(1, threads // batch) if large else 1
    return _block_forward, (np.ascontiguousarray(x), np.ascontiguousarray(kernel), pad_top, pad_left, out_h, out_w,
                            bias, int(code), float(alpha), z.reshape(batch, out_h * out_w, filters), parts)


def _block_forward_replayed_as(x, kernel, sh, sw, pad_top, pad_left, out_h, out_w, z, bias=None, code=LINEAR,
                               alpha=0.0):
    """As implicit_gemm's: the kernel call itself, split for Numba's full thread count."""
    if not all(array.flags.c_contiguous for array in (x, kernel, z) + (() if bias is None else (bias,))):
        return None
    function, args = _block_forward_call(x, kernel, pad_top, pad_left, out_h, out_w, z, bias, code, alpha,
                                         numba.config.NUMBA_NUM_THREADS)
    return function, args, {}


planar_block_forward.replayed_as = _block_forward_replayed_as


def planar_block_input_gradient(dz, kernel, pad_top, pad_left, out_h, out_w, dx):
    """dx = the input gradient of a stride-1 conv (``kernel`` Keras's (kh, kw, in, out),
    padding (pad_top, pad_left)) from ``dz``, its (batch * out_h * out_w, filters) gradient
    before the activation: the conv of dz, zero-padded by the kernel's size less the
    forward's padding, with the kernel turned half round and its channels and filters
    swapped, made by planar_block_forward (its rows the input's channels)."""
    kh, kw, channels, filters = kernel.shape
    batch, height, width, _ = dx.shape
    turned = np.ascontiguousarray(kernel[::-1, ::-1].transpose(0, 1, 3, 2))
    planar_block_forward(dz.reshape(batch, out_h, out_w, filters), turned, 1, 1, kh - 1 - pad_top, kw - 1 - pad_left,
                         height, width, dx.reshape(batch * height * width, channels))


# The kernel gradient of a conv of at most 8 filters by the turned block: its rows the
# filters (the output gradient turned into planes, one run of pixels a filter), its lanes
# 32 consecutive values of a kernel row's window in the zero-bordered NHWC image (kw *
# channels of them: the taps (q, c) of row p, in the kernel's own order), the sum over the
# image's pixels; where the implicit GEMM's vectors run along the few filters.
@range_body
def _block_kernel_gradient_chunks(first, stop, x, dz, kh, kw, sh, sw, pad_top, pad_left, partial):
    batch, height, width, channels = x.shape
    _, out_h, out_w, filters = dz.shape
    rows_n, wide = (out_h - 1) * sh + kh, (out_w - 1) * sw + kw
    span = kw * channels
    groups = -(-span // (2 * LANES))
    # (the window's last vector reads up to 2 * LANES values past the image's end)
    flat = np.zeros(rows_n * wide * channels + (groups + 1) * 2 * LANES, np.float32)
    padded = flat[:rows_n * wide * channels].reshape(rows_n, wide, channels)
    pixels = out_h * out_w
    offsets = np.empty(pixels, np.int64)
    for i in range(out_h):
        for j in range(out_w):
            offsets[i * out_w + j] = (i * sh * wide + j * sw) * channels
    turned = np.empty(filters * pixels, np.float32)
    rows = np.empty(ROWS, np.int64)
    for r in range(ROWS):
        rows[r] = min(r, filters - 1) * pixels
    scratch = np.empty((2 * LANES, ROWS), np.float32)
    chunks = partial.shape[0]
    for chunk in range(first, stop):
        sums = partial[chunk]
        sums[:] = 0.0
        for n in range(chunk * batch // chunks, (chunk + 1) * batch // chunks):
            _pad_image(x[n], pad_top, pad_left, padded)
            if filters % 8 == 0:
                _to_planes_fast(dz, n, 0, 0, out_h, out_w, turned)
            else:
                _to_planes(dz, n, 0, 0, out_h, out_w, turned)
            for p in range(kh):
                for group in range(groups):
                    _planar_block(turned.ctypes.data, rows.ctypes.data, offsets.ctypes.data, pixels,
                                  flat.ctypes.data + 4 * (p * wide * channels + group * 2 * LANES), 0,
                                  scratch.ctypes.data, 0, ROWS, 0, LANES, 0, 0)
                    base = p * span + group * 2 * LANES
                    for lane in range(min(2 * LANES, span - group * 2 * LANES)):
                        for o in range(filters):
                            sums[base + lane, o] += scratch[lane, o]


@njit(cache=True)
def _block_kernel_gradient(x, dz, kh, kw, sh, sw, pad_top, pad_left, partial):
    parallel_ranges(_block_kernel_gradient_chunks, partial.shape[0],
                    (x, dz, kh, kw, sh, sw, pad_top, pad_left, partial))


def kernel_gradient_blocks_apply(kernel_shape, filters, dtype):
    """Whether the turned block makes the kernel gradient: float32, AVX-512, at most 8
    filters, and a kernel row's window (kw * channels values) filling more than half the
    lanes of its vectors (the implicit GEMM fills filters / 16 of its lanes)."""
    kh, kw, channels = kernel_shape[:3]
    span = kw * channels
    lanes = -(-span // (2 * LANES)) * 2 * LANES
    return (np.dtype(dtype) == np.float32 and LANES == 16 and ROWS == 8 and filters <= ROWS
            and 2 * span > lanes)


def planar_block_kernel_gradient(x, kernel, dz, sh, sw, pad_top, pad_left, out_h, out_w, dkernel):
    """dkernel (Keras's (kh, kw, in, out)) += the conv's kernel gradient from ``dz``, its
    (batch * out_h * out_w, filters) gradient before the activation, by the turned block.
    Partial sums per fixed chunk of images, added in order: the same bits at any thread
    count."""
    kh, kw, channels, filters = kernel.shape
    if LANES != 16 or ROWS != 8 or filters > ROWS:
        raise ValueError("planar_block_kernel_gradient makes up to 8 filters with 16-lane vectors (AVX-512)")
    batch = x.shape[0]
    if batch == 0:
        return
    chunks = min(REDUCTION_CHUNKS, batch)
    partial = np.empty((chunks, kh * kw * channels, filters), np.float32)
    _block_kernel_gradient(np.ascontiguousarray(x), np.ascontiguousarray(dz).reshape(batch, out_h, out_w, filters),
                           kh, kw, sh, sw, pad_top, pad_left, partial)
    for chunk in range(chunks):
        dkernel += partial[chunk].reshape(dkernel.shape)
