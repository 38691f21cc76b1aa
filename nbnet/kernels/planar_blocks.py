"""Conv2D of few filters by the implicit GEMM's block turned (float32, AVX-512).

implicit_gemm's block keeps ROWS x 2 vectors of sums in registers, its vectors running
along the filters: a layer of 8 filters leaves half of each vector idle (6 of 16 lanes for
LeNet-5's first conv). Here its rows are the filters and its lanes 32 consecutive
positions of an image copied into planes (channel after channel, as planar.py lays them
out: tap (c, p, q) of every position is the planes read at an offset), the sums turned
back into (position, filter) rows by shuffles as they are stored (implicit_gemm's
_planar_block and _store_transposed):

- the forward pass of a stride-1 conv of at most 8 filters, its bias and activation run
  over each part of an image as it is made;
- the input gradient of a stride-1 conv of 8 channels in (where the implicit GEMM runs its
  phase correlations, vectors along the channels): the same pass over the output
  gradient with the kernel turned half round;
- the kernel gradient of a conv of at most 8 filters, any stride: rows the filters (the
  output gradient in planes), lanes 32 values of a kernel row's window in the NHWC image.

Images of 8, 16, ... channels go into planes by 16 x 8 transposes in registers
(_pixels_to_planes). Conv2D chooses these (blocks_apply, kernel_gradient_blocks_apply);
at 8 lanes (AVX2) the implicit GEMM keeps them.
"""

import numba
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from ..threads import numba_thread_count
from . import REDUCTION_CHUNKS, add_partials, contiguous
from .activations import LINEAR, activate_fusable
from .implicit_gemm import ROWS, _pad_image, _planar_block, image_parts
from .lane_maps import LANES
from .parallel import parallel_ranges, range_body
from .planar import _span, _to_planes, fill_taps


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
    fill_taps(kernel, plane, wide, offsets, weights)
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
                # (a loop, not row[:] = sums: an array's slice assignment compiles Numba's
                # shape-mismatch message, 1.5 s of a cold start)
                for k in range(sums.size):
                    row[k] = sums[k] + tiled[k] if biased else sums[k]
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
# (kw - 1 of each wide row) are a small share: planar.applies' rule of three, not measured
# again for this block.
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
    batch, filters = x.shape[0], kernel.shape[3]
    bias = np.zeros(0, np.float32) if bias is None else np.ascontiguousarray(bias)
    return _block_forward, (np.ascontiguousarray(x), np.ascontiguousarray(kernel), pad_top, pad_left, out_h, out_w,
                            bias, int(code), float(alpha), z.reshape(batch, out_h * out_w, filters),
                            image_parts(kernel.shape, out_h, out_w, batch, threads))


def _block_forward_replayed_as(x, kernel, sh, sw, pad_top, pad_left, out_h, out_w, z, bias=None, code=LINEAR,
                               alpha=0.0):
    """As implicit_gemm's: the kernel call itself, split for Numba's full thread count."""
    if not contiguous(x, kernel, z, bias):
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
    add_partials(partial, dkernel)
