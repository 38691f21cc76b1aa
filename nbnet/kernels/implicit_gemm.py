"""Conv2D as an implicit GEMM with its accumulators in vector registers.

A conv is a product: output pixel r, filter f = the sum over taps k (p, q, c) of
x_padded[position(r) + offset(k)] * kernel[k, f]. ``_block`` computes ROWS such outputs
for LANES filters at once (a float32 vector: 16 with AVX-512, 8 with AVX2; fewer lanes
masked), each in a vector register
for the whole sum over the taps: per tap one vector load of the kernel row, one
broadcast value per output and a fused multiply-add. Numba's own loops cannot keep a
vector in a register across a loop (each accumulator row is loaded and stored around
every pass: the planar kernels reach 42 GFLOP/s a core on a 16 -> 16 3x3 conv), so the
block is written in LLVM IR (96 GFLOP/s, the core's sgemm rate). From 2 * LANES filters
``_wide_block`` takes two vectors a row (2 * ROWS accumulators, each broadcast used twice): on
an Intel Xeon (Sapphire Rapids class, two FMA units) the one-vector block reached 105
GFLOP/s a core against sgemm's 150, and two vectors ran 14-20% faster, forward and
backward (500x16x16x32 -> 64 3x3 forward 20.9 -> 17.8 ms, backward at 128 images 13.0 ->
10.4; the strided CNN's step b128 5.95 -> 5.25 ms), the same bits. The block reads its
operands and writes its results through index tables, so the same block makes

- the forward pass: rows = output pixels (any stride), taps as above;
- the kernel gradient: rows = taps, the sum over the image's output pixels, the
  "kernel" operand being the output gradient (one row per pixel);
- the input gradient: per phase of the strides (see _phase_tables), a stride-1 correlation of
  the zero-padded output gradient with that phase's taps, flipped, channels and filters
  swapped (one phase at stride 1), its vectors along the channels; below
  COLUMNS_BELOW_CHANNELS channels, rows = output pixels, each one's window gradient
  (dz @ kernel.T, vectors along the window's taps and channels), added back onto the
  image (see _input_gradient_images).

Each image is first copied into a zero-bordered buffer of its own, so no tap reads
outside it. Float32 only (the float64 reference path keeps the other passes).

Conv2D takes it where the planar pass, im2col, the direct kernels (without a fused max
pool: the MNIST CNN's first layer, 26x26x32 written whole, 9.5 -> 20.7 ms a step
otherwise) or (to 16 channels, see Conv2D's IMPLICIT_OVER_WINOGRAD_CHANNELS) Winograd
applied. 14x14x16 -> 16 3x3 at batch 128, 2 cores, ms: forward 1.28 planar -> 0.58,
backward 2.43 -> 1.18 (190-197 GFLOP/s). Training steps (b128, b32) and 1000-image
predicts, ms, alternating in one process: the small ResNet of tools/bench_zoo.py 21.0 ->
13.1, 6.6 -> 4.1, 55 -> 31; first layers of 3 channels (direct before) cifar 75.8 -> 70.4
and 216 -> 198, cifar_bn 73.2 -> 68.8 and 186 -> 169; strided 3x3 convs (im2col before:
no column matrix written) 6.05 -> 5.55 and 48 -> 16; big_kernels' 5x5 16 -> 32 layer
(Winograd before; its 7x7 first layer on this path both ways) 16.1 -> 13.7, 4.7 -> 3.7
and 53 -> 42. Layers of few
filters, masked lanes and all, b128 step: LeNet-5's 5x5 1 -> 6 2.69 -> 2.58 and 6 -> 16
3.99 -> 3.06 (planar before), 3x3 3 -> 24 6.39 -> 4.08 (direct), stride-2 24 -> 48 19.9
-> 15.2 (im2col). From 32 channels Winograd (3x3, 5x5) stays ahead by its 2.25-2.8x
fewer multiplies: the implicit GEMM taking every shape measured the Kaggle-style CNN 76
-> 90 ms a step, the CIFAR CNN 74 -> 88, tf_mnist_5x5 50 -> 60.
"""

import functools

import numba
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from ..threads import numba_thread_count
from . import REDUCTION_CHUNKS, add_partials, contiguous
from .parallel import parallel_ranges, range_body
from .lane_maps import LANES, bias_and_relu, vector_access
from .activations import LINEAR, RELU, activate_fusable
from .pool import max_of_window, maxpool_2x2_image, maxpool_any_image, maxpool_activation_backward_image

# Pixels a block: _wide_block holds 2 * ROWS accumulators, its two kernel vectors and the
# broadcast value in registers: 19 of AVX-512's 32 at 8 rows, 15 of AVX2's 16 at 6. On an
# AMD EPYC (Zen 3, AVX2), 2 cores, batch 128, forward / backward ms, (16 lanes, 8 rows,
# sized for AVX-512) -> (8, 8) -> (8, 6): 14x14x16 -> 16 3x3 'same' 2.46 / 7.53 -> 1.76 /
# 3.10 -> 0.86 / 1.60, 16x16x32 -> 64 3x3 16.7 / 42.1 -> 12.5 / 27.4 -> 8.3 / 20.2,
# 28x28x24 -> 48 3x3 stride 2 9.3 / 36.7 -> 9.2 / 17.4 -> 4.7 / 11.1, 14x14x6 -> 16 5x5
# 1.39 / 3.96 -> 1.60 / 3.94 -> 0.55 / 1.91, 28x28x1 -> 6 5x5 2.85 / 7.39 -> 1.74 / 5.25 ->
# 1.59 / 4.40 (4 rows: some shapes faster, the strided one twice slower).
ROWS = 8 if LANES == 16 else 6


def applies(dtype):
    """Whether a plain (ungrouped, undilated) Conv2D can take this path: float32, any
    kernel size, stride, channels and filters."""
    return np.dtype(dtype) == np.float32


def _emit_block(builder, args, masked, vectors=1, planar=False):
    """The IR of _block (see there); with ``masked``, every load and store of B and C
    covers only the first ``lanes`` lanes (a separate block: a target without masked
    vector instructions would pay for the masks on every tap); ``vectors`` (unmasked
    only) side by side vectors of filters per row; ``planar``: the table gives B's
    offsets and A's are consecutive (see _planar_block)."""
    a, row_offsets, column_offsets, count, b, b_stride, c, c_offsets, valid_rows, add, lanes, bias, relu = args
    i32, i64, f32 = ir.IntType(32), ir.IntType(64), ir.FloatType()
    vector, pointer, zero, load, store = vector_access(builder, masked, lanes)
    fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vector, [vector] * 3), f"llvm.fma.v{LANES}f32")
    a = builder.inttoptr(a, f32.as_pointer())
    row_offsets = builder.inttoptr(row_offsets, i64.as_pointer())
    column_offsets = builder.inttoptr(column_offsets, i64.as_pointer())
    b = builder.inttoptr(b, f32.as_pointer())
    c = builder.inttoptr(c, f32.as_pointer())
    c_offsets = builder.inttoptr(c_offsets, i64.as_pointer())
    rows = [builder.load(builder.gep(row_offsets, [ir.Constant(i64, r)])) for r in range(ROWS)]
    undefined = ir.Constant(vector, ir.Undefined)
    first_lane = ir.Constant(ir.VectorType(i32, LANES), [0] * LANES)

    before = builder.block
    loop = builder.append_basic_block("taps")
    after = builder.append_basic_block("store")
    builder.cbranch(builder.icmp_signed(">", count, ir.Constant(i64, 0)), loop, after)

    builder.position_at_end(loop)
    k = builder.phi(i64)
    k.add_incoming(ir.Constant(i64, 0), before)
    sums = []
    for _ in range(ROWS * vectors):
        phi = builder.phi(vector)
        phi.add_incoming(zero, before)
        sums.append(phi)
    column = builder.load(builder.gep(column_offsets, [k]))
    row_of_b = builder.gep(b, [column if planar else builder.mul(k, b_stride)])
    weights = [load(builder.bitcast(builder.gep(row_of_b, [ir.Constant(i64, v * LANES)]), pointer))
               for v in range(vectors)]
    added = []
    for r in range(ROWS):
        value = builder.load(builder.gep(a, [builder.add(rows[r], k if planar else column)]))
        spread = builder.shuffle_vector(builder.insert_element(undefined, value, ir.Constant(i32, 0)), undefined,
                                        first_lane)
        for v in range(vectors):
            added.append(builder.call(fma, [spread, weights[v], sums[r * vectors + v]]))
    following = builder.add(k, ir.Constant(i64, 1))
    k.add_incoming(following, loop)
    for phi, value in zip(sums, added):
        phi.add_incoming(value, loop)
    builder.cbranch(builder.icmp_signed("<", following, count), loop, after)

    builder.position_at_end(after)
    totals = []
    for index in range(ROWS * vectors):
        total = builder.phi(vector)
        total.add_incoming(zero, before)
        total.add_incoming(added[index], loop)
        totals.append(total)
    if planar:
        _store_transposed(builder, totals, c, pointer)
        return
    # The forward pass adds the bias (an address, 0 for none) and applies relu here, as
    # bias_activation_forward would in a pass of its own.
    has_bias = builder.icmp_unsigned("!=", bias, ir.Constant(i64, 0))
    finishes = [bias_and_relu(builder, load, zero,
                              builder.select(has_bias, builder.add(bias, ir.Constant(i64, 4 * LANES * v)), bias), relu)
                for v in range(vectors)]
    adding = builder.icmp_signed("!=", add, ir.Constant(i64, 0))
    for r in range(ROWS):
        with builder.if_then(builder.icmp_signed("<", ir.Constant(i64, r), valid_rows)):
            at = builder.load(builder.gep(c_offsets, [ir.Constant(i64, r)]))
            for v in range(vectors):
                total = finishes[v](totals[r * vectors + v])
                target = builder.bitcast(builder.gep(c, [builder.add(at, ir.Constant(i64, v * LANES))]), pointer)
                with builder.if_else(adding) as (then, otherwise):
                    with then:
                        store(builder.fadd(load(target), total), target)
                    with otherwise:
                        store(total, target)


def _store_transposed(builder, totals, c, pointer):
    """Stores the planar block's sums (ROWS = 8 rows of filters, two vectors of 16
    positions each) as 32 positions of 8 values, position-major, from address ``c``:
    three rounds of interleaving shuffles turn each two rows of 16 into vectors of two
    positions' 8 filters."""
    i64 = ir.IntType(64)

    def interleave(x, y, mask):
        return builder.shuffle_vector(x, y, ir.Constant(ir.VectorType(ir.IntType(32), 16), mask))

    for v in range(2):
        rows = [totals[r * 2 + v] for r in range(8)]
        # Round 1: rows 2h, 2h+1 -> (position, row) pairs, positions 0-7 and 8-15.
        pairs = []
        for h in range(4):
            x, y = rows[2 * h], rows[2 * h + 1]
            pairs.append((interleave(x, y, [i // 2 + 16 * (i % 2) for i in range(16)]),
                          interleave(x, y, [8 + i // 2 + 16 * (i % 2) for i in range(16)])))
        # Round 2: two pairs -> four rows a position, positions 0-3, 4-7 (of each half).
        quads = []
        for h in range(2):
            for half in range(2):
                x, y = pairs[2 * h][half], pairs[2 * h + 1][half]
                low = [(i // 4) * 2 + (i % 4 % 2) + 16 * (i % 4 // 2) for i in range(16)]
                quads.append((interleave(x, y, low), interleave(x, y, [m + 8 for m in low])))
        # quads[h * 2 + half][part]: rows 4h..4h+3, positions half * 8 + part * 4 + (0..3).
        for half in range(2):
            for part in range(2):
                x, y = quads[half][part], quads[2 + half][part]
                for pair in range(2):
                    mask = [pair * 8 + (i % 8 // 4) * 16 + (i // 8) * 4 + i % 4 for i in range(16)]
                    position = v * 16 + half * 8 + part * 4 + pair * 2
                    target = builder.bitcast(builder.gep(c, [ir.Constant(i64, position * 8)]), pointer)
                    builder.store(interleave(x, y, mask), target, align=4)


@intrinsic
def _block(typingctx, a, row_offsets, column_offsets, count, b, b_stride, c, c_offsets, valid_rows, add, lanes, bias,
           relu):
    """For r < ROWS: C[c_offsets[r] + :LANES] (+)= the sum over k < count of
    A[row_offsets[r] + column_offsets[k]] * B[k * b_stride + :LANES]; rows from
    ``valid_rows`` on are not stored. Arguments are addresses (float32 A, B, C; int64
    offset tables) and element counts; ``lanes`` must be LANES (see _masked_block). With
    ``bias`` (an address, or 0) the sum gets bias[:LANES] added, with ``relu`` (1) then
    the rectifier, before it is stored."""
    def codegen(context, builder, signature, args):
        _emit_block(builder, args, masked=False)
        return context.get_dummy_value()

    return types.void(*([types.int64] * 13)), codegen


@intrinsic
def _wide_block(typingctx, a, row_offsets, column_offsets, count, b, b_stride, c, c_offsets, valid_rows, add, lanes,
                bias, relu):
    """_block over 2 * LANES filters: two vectors a row, 2 * ROWS accumulators, each
    broadcast value used twice."""
    def codegen(context, builder, signature, args):
        _emit_block(builder, args, masked=False, vectors=2)
        return context.get_dummy_value()

    return types.void(*([types.int64] * 13)), codegen


@intrinsic
def _planar_block(typingctx, a, row_offsets, column_offsets, count, b, b_stride, c, c_offsets, valid_rows, add, lanes,
                  bias, relu):
    """_wide_block with the operands' roles turned (kernels/planar_blocks.py): for r <
    ROWS, the sum over k < count of A[row_offsets[r] + k] * B[column_offsets[k] + :2 *
    LANES] (rows are filters, A their taps' weights, B an image's planes at each tap's
    offset, the lanes consecutive output positions), stored turned from C: position p's
    ROWS sums at C[p * ROWS:] (_store_transposed). ``b_stride``, ``c_offsets``,
    ``valid_rows``, ``add``, ``bias`` and ``relu`` are not read (every row is stored)."""
    def codegen(context, builder, signature, args):
        _emit_block(builder, args, masked=False, vectors=2, planar=True)
        return context.get_dummy_value()

    return types.void(*([types.int64] * 13)), codegen


@intrinsic
def _masked_block(typingctx, a, row_offsets, column_offsets, count, b, b_stride, c, c_offsets, valid_rows, add, lanes,
                  bias, relu):
    """_block over the first ``lanes`` lanes only (fewer than LANES): the rest of B and C
    is neither read nor written."""
    def codegen(context, builder, signature, args):
        _emit_block(builder, args, masked=True)
        return context.get_dummy_value()

    return types.void(*([types.int64] * 13)), codegen


@njit(cache=True, inline="always")
def _tap_offsets(kh, kw, channels, wide):
    """Offset of tap (p, q, c), in Keras's kernel order, from a window's corner in a
    padded (rows, wide, channels) buffer."""
    offsets = np.empty(kh * kw * channels, np.int64)
    t = 0
    for p in range(kh):
        for q in range(kw):
            for c in range(channels):
                offsets[t] = (p * wide + q) * channels + c
                t += 1
    return offsets


@njit(cache=True, inline="always")
def _pixel_offsets(out_h, out_w, sh, sw, wide, channels):
    """Offset of each output pixel's window corner in the padded buffer."""
    offsets = np.empty(out_h * out_w, np.int64)
    for i in range(out_h):
        for j in range(out_w):
            offsets[i * out_w + j] = (i * sh * wide + j * sw) * channels
    return offsets


@njit(cache=True, inline="always")
def _pad_image(source, top, left, buffer):
    """Copies the (height, width, channels) image ``source`` into buffer (rows, wide,
    channels) at (top, left); parts outside the buffer are cut off. The rest of the buffer
    keeps what it had: zeros, the buffer made with np.zeros (or _zero_border) and every
    image of a call landing on the same part of it."""
    _pad_rows(source, top, left, buffer, 0, buffer.shape[0])


@njit(cache=True, inline="always")
def _pad_rows(source, top, left, buffer, first, stop):
    """_pad_image for the buffer's rows first..stop-1 only."""
    rows, wide, channels = buffer.shape
    height, width = source.shape[0], source.shape[1]
    run = np.uint64(channels)  # unsigned: see conv.pad_image
    for y in range(max(0, -top, first - top), min(height, rows - top, stop - top)):
        for xx in range(max(0, -left), min(width, wide - left)):
            for c in range(np.uint64(0), run):
                buffer[y + top, xx + left, c] = source[y, xx, c]


@njit(cache=True, inline="always")
def _zero_border(buffer, top, left, height, width):
    """Zeroes what _pad_image leaves alone in ``buffer`` for a (height, width) image at
    (top, left): the border, not the whole buffer, which the image then covers."""
    rows, wide, channels = buffer.shape
    inside_top, inside_stop = min(rows, max(0, top)), max(0, min(rows, top + height))
    inside_stop = max(inside_top, inside_stop)
    inside_left, inside_right = min(wide, max(0, left)), max(0, min(wide, left + width))
    inside_right = max(inside_left, inside_right)
    zero = np.float32(0.0)
    for y in range(rows):
        if y < inside_top or y >= inside_stop:
            buffer[y] = zero
        else:
            buffer[y, :inside_left] = zero
            buffer[y, inside_right:] = zero


# Inlined into its callers (Numba's inline="always": no library of its own), as are
# _pad_image and pool.maxpool_activation_image / maxpool_activation_backward_image: a
# callee compiled on its own is emitted twice, in its library and again in each kernel
# that links it (_correlate 1.5 s of kaggle_bn's 15 s of compiling, for its layouts).
# First fit in one process, empty cache: kaggle_bn 14.9-15.2 -> 13.9 s.
@njit(cache=True, inline="always")
def _correlate(padded, pixel_offsets, targets, tap_offsets, kernel2d, out, add, rows, places, bias, relu):
    """out[targets[k] + f] (+)= the sum over taps t of padded[pixel_offsets[k] +
    tap_offsets[t]] * kernel2d[t, f], ROWS pixels by LANES filters a block (``rows`` and
    ``places``: ROWS-long scratch); ``bias`` (length 0: none) added and with ``relu`` the
    rectifier applied before the store."""
    pixels = pixel_offsets.size
    filters = kernel2d.shape[1]
    biased = bias.size > 0
    for start in range(0, pixels, ROWS):
        valid = min(ROWS, pixels - start)
        for r in range(ROWS):
            rows[r] = pixel_offsets[start + min(r, valid - 1)]
            places[r] = targets[start + min(r, valid - 1)]
        f = 0
        while f < filters:
            shift = bias.ctypes.data + 4 * f if biased else 0
            if filters - f >= 2 * LANES:
                _wide_block(padded.ctypes.data, rows.ctypes.data, tap_offsets.ctypes.data, tap_offsets.size,
                            kernel2d.ctypes.data + 4 * f, filters, out.ctypes.data + 4 * f, places.ctypes.data, valid,
                            add, LANES, shift, relu)
                f += 2 * LANES
            elif filters - f >= LANES:
                _block(padded.ctypes.data, rows.ctypes.data, tap_offsets.ctypes.data, tap_offsets.size,
                       kernel2d.ctypes.data + 4 * f, filters, out.ctypes.data + 4 * f, places.ctypes.data, valid, add,
                       LANES, shift, relu)
                f += LANES
            else:
                _masked_block(padded.ctypes.data, rows.ctypes.data, tap_offsets.ctypes.data, tap_offsets.size,
                              kernel2d.ctypes.data + 4 * f, filters, out.ctypes.data + 4 * f, places.ctypes.data,
                              valid, add, filters - f, shift, relu)
                f = filters


@njit(cache=True, inline="always")
def _rows_of(count, width):
    """0, width, 2*width, ...: where each of ``count`` rows of ``width`` values starts. (A
    loop: np.arange(count) * width compiled 0.4 s of the first conv's wait, this 0.1.)"""
    starts = np.empty(count, np.int64)
    for i in range(count):
        starts[i] = i * width
    return starts


@range_body
def _forward_jobs(first, stop, x, kernel2d, kh, kw, sh, sw, pad_top, pad_left, out_h, out_w, bias, code, alpha, z,
                  parts):
    """Jobs first..stop-1 of _forward: job (image n, part) makes that part of the image's
    pixels (each pixel's sums are the same whichever block makes them: the same bits at
    any split), then runs an activation other than relu over them while they are in cache."""
    channels = x.shape[3]
    filters = kernel2d.shape[1]
    rows, wide = (out_h - 1) * sh + kh, (out_w - 1) * sw + kw
    taps = _tap_offsets(kh, kw, channels, wide)
    pixels = _pixel_offsets(out_h, out_w, sh, sw, wide, channels)
    targets = _rows_of(out_h * out_w, filters)
    blocks = (pixels.size + ROWS - 1) // ROWS
    padded = np.empty((rows, wide, channels), np.float32)
    _zero_border(padded, pad_top, pad_left, x.shape[1], x.shape[2])
    spare, places = np.empty(ROWS, np.int64), np.empty(ROWS, np.int64)
    relu = int(code == RELU)
    for job in range(first, stop):
        n, part = job // parts, job % parts
        start, end = part * blocks // parts * ROWS, min(pixels.size, (part + 1) * blocks // parts * ROWS)
        if end <= start:
            continue
        # A part of an image (a one-image predict split over the threads) copies only the
        # rows its windows read.
        _pad_rows(x[n], pad_top, pad_left, padded, start // out_w * sh, (end - 1) // out_w * sh + kh)
        _correlate(padded, pixels[start:end], targets[start:end], taps, kernel2d, z[n], 0, spare, places, bias, relu)
        if code != LINEAR and code != RELU:
            activate_fusable(code, alpha, z[n].reshape(-1)[start * filters:end * filters])


@njit(cache=True)
def _forward(x, kernel2d, kh, kw, sh, sw, pad_top, pad_left, out_h, out_w, bias, code, alpha, z, parts):
    """Each image's pixels in ``parts`` parts (more than one where the images are fewer
    than the threads), the jobs spread over the threads."""
    parallel_ranges(_forward_jobs, x.shape[0] * parts,
                    (x, kernel2d, kh, kw, sh, sw, pad_top, pad_left, out_h, out_w, bias, code, alpha, z, parts))


# From this many multiply-adds an image's pixels are split across the threads where the
# images are fewer than them (a one-image predict that measured faster on two threads, see
# inference_program._fastest). One conv forward, one image, 2 cores, us, one thread -> two:
# 13x13x32 -> 64 3x3 (2.2M) 48 -> 41, 14x14x32 -> 64 'same' 71 -> 53, 28x28x32 -> 32 'same'
# (7.2M) 123 -> 78; 32x32x3 -> 32 (0.9M) 25 -> 21, 28x28x1 -> 32 (0.2M) 9 -> 13.
SPLIT_IMAGE_MIN_MACS = 2_000_000


def implicit_conv_forward(x, kernel, sh, sw, pad_top, pad_left, out_h, out_w, z, bias=None, code=LINEAR,
                          alpha=0.0):
    """z[n, i*out_w + j, o] = sum over the window of x * kernel, ``kernel`` Keras's (kh, kw,
    in, out), strides (sh, sw); z is (batch * out_h * out_w, filters). With ``bias`` it is
    added and activation ``code`` (one of activations.activate_fusable's: relu, leaky relu
    of slope ``alpha``, sigmoid, tanh) applied in the same pass, with the same result as
    bias_activation_forward's: relu as each block stores (a separate pass over z: 1.9 of
    the 15.7 ms the strided CNN of tools/bench_zoo.py took for 1000 images), the others
    over each part of an image once its blocks are stored, still in cache (LeNet-5's
    tanh convs, see Conv2D.forward)."""
    function, args = _forward_call(x, kernel, sh, sw, pad_top, pad_left, out_h, out_w, z, bias, code, alpha,
                                   numba_thread_count())
    function(*args)


def _forward_call(x, kernel, sh, sw, pad_top, pad_left, out_h, out_w, z, bias, code, alpha, threads):
    """The kernel call implicit_conv_forward makes, its images split in parts for
    ``threads`` threads: (function, args)."""
    kh, kw, channels, filters = kernel.shape
    bias = np.zeros(0, np.float32) if bias is None else np.ascontiguousarray(bias)
    return _forward, (np.ascontiguousarray(x), np.ascontiguousarray(kernel.reshape(-1, filters)), kh, kw, sh, sw,
                      pad_top, pad_left, out_h, out_w, bias, int(code), float(alpha),
                      z.reshape(x.shape[0], out_h * out_w, filters), image_parts(kernel.shape, out_h, out_w,
                                                                                 x.shape[0], threads))


def image_parts(kernel_shape, out_h, out_w, batch, threads):
    """The parts each image's pixels are split into for ``threads`` threads: more than one
    where the images are fewer than the threads and an image's conv is large (see
    SPLIT_IMAGE_MIN_MACS)."""
    kh, kw, channels, filters = kernel_shape
    large = out_h * out_w * filters * kh * kw * channels >= SPLIT_IMAGE_MIN_MACS
    return max(1, threads // batch) if large else 1


def _forward_replayed_as(x, kernel, sh, sw, pad_top, pad_left, out_h, out_w, z, bias=None, code=LINEAR, alpha=0.0):
    """The kernel call itself, for a recorded inference program to make (see
    inference_program; a one-image conv's wrapper took 3 of its 16 us), its images split
    for as many threads as Numba has (the program may run on fewer: the same bits); None
    where an operand is not contiguous (the call would read a copy made now)."""
    if not contiguous(x, kernel, z, bias):
        return None
    function, args = _forward_call(x, kernel, sh, sw, pad_top, pad_left, out_h, out_w, z, bias, code, alpha,
                                   numba.config.NUMBA_NUM_THREADS)
    return function, args, {}


implicit_conv_forward.replayed_as = _forward_replayed_as


# A conv whose max pool is fused (the direct kernels' case, see Conv2D): each image's conv
# rows go to a buffer of one image (in cache), then the pool takes the maximum over z +
# bias and the activation: the same sums, tap after tap, as the direct kernel's (the same
# bits up to 9 values a window; it sums larger fields in groups of 9), in vector
# registers. Per image, us, 1000 images on 2 cores: 28x28x1 -> 26x26x32 3x3 then 2x2 max
# pool 7.03 -> 5.12.
#
# Below PLANES_BELOW_FILTERS filters, for a 2x2 pool, the rows go out as four planes, one
# per corner of the windows, each laid out as the pooled output, the bias added as they
# are stored: the pool is then one loop over the output's values, where
# pool.maxpool_activation_image's loop over each window's channels ran unvectorised. 128
# 'same' 28x28x1 images, us per image on 2 cores, windows' loop -> planes: 6 filters 4.4 ->
# 2.9, 8 4.8 -> 3.1, 12 5.5 -> 3.8, 16 6.2 -> 3.7, 20 8.8 -> 5.5; from 24 the windows' loop
# is 5 % ahead (24 5.5 / 5.8, 32 4.9 / 5.2, 48 6.9 / 7.3, 64 8.4 / 8.8).
PLANES_BELOW_FILTERS = 24


@njit(cache=True)
def _corner_planes(out_h, out_w, filters):
    """Where each conv output pixel's row goes for a 2x2 pool: into the plane of its
    corner of its window (top-left, top-right, bottom-left, bottom-right), at its
    window's place in the pooled output's layout."""
    pooled_w = out_w // 2
    plane = out_h // 2 * pooled_w * filters
    targets = np.empty(out_h * out_w, np.int64)
    for r in range(out_h):
        for s in range(out_w):
            targets[r * out_w + s] = ((r % 2) * 2 + s % 2) * plane + ((r // 2) * pooled_w + s // 2) * filters
    return targets


@njit(cache=True)
def _window_corners(out_h, out_w, filters):
    """Per pooled output value, the flat position (row * out_w + column) of its window's
    top-left pixel in the conv output: what argmax records, offset by the corner taken."""
    pooled_h, pooled_w = out_h // 2, out_w // 2
    corners = np.empty(pooled_h * pooled_w * filters, np.int32)
    for i in range(pooled_h):
        for j in range(pooled_w):
            for f in range(filters):
                corners[(i * pooled_w + j) * filters + f] = 2 * i * out_w + 2 * j
    return corners


@njit(inline="always")
def _pool_planes(planes, corners, width, relu, y, argmax):
    """y, argmax (flat) = the 2x2 max pool of the four corner planes of ``planes``, as
    pool.max_of_window takes it (ties keep the first in row-major order)."""
    count = corners.shape[0]
    zero = planes.dtype.type(0.0)
    top_left, top_right = planes[:count], planes[count:2 * count]
    bottom_left, bottom_right = planes[2 * count:3 * count], planes[3 * count:4 * count]
    for k in range(count):
        y[k], argmax[k] = max_of_window(top_left[k], top_right[k], bottom_left[k], bottom_right[k], corners[k], width,
                                        relu, zero)


@njit(inline="always")
def _pooled_scratch(x, kernel2d, kh, kw, sh, sw, out_h, out_w):
    """A piece of images' buffers: the zero-bordered image, the blocks' two ROWS-long
    tables, one image's conv rows."""
    rows, wide = (out_h - 1) * sh + kh, (out_w - 1) * sw + kw
    return (np.zeros((rows, wide, x.shape[3]), np.float32), np.empty(ROWS, np.int64), np.empty(ROWS, np.int64),
            np.empty((out_h * out_w, kernel2d.shape[1]), np.float32))


# Two bodies, the pool's two layouts (see PLANES_BELOW_FILTERS): a model compiles the one
# its layers take (both in one body: 0.9 s more of a cold start for the other's pool).
@njit(cache=True)
def _planes_images(first, stop, x, kernel2d, kh, kw, sh, sw, pad_top, pad_left, out_h, out_w, bias, code, taps, pixels,
                   targets, corners, y, argmax):
    """Images first..stop-1 of implicit_conv_maxpool_forward, the rows laid out as corner
    planes (``targets``, ``corners``: _pooled_tables), the bias added as they are stored."""
    padded, spare, places, image_z = _pooled_scratch(x, kernel2d, kh, kw, sh, sw, out_h, out_w)
    for n in range(first, stop):
        _pad_image(x[n], pad_top, pad_left, padded)
        _correlate(padded, pixels, targets, taps, kernel2d, image_z, 0, spare, places, bias, 0)
        _pool_planes(image_z.reshape(-1), corners, out_w, code == RELU, y[n].reshape(-1), argmax[n].reshape(-1))


@njit(cache=True)
def _windows_images(first, stop, x, kernel2d, kh, kw, sh, sw, pad_top, pad_left, out_h, out_w, bias, code, ph, pw, taps,
                    pixels, targets, y, argmax):
    """Images first..stop-1 of implicit_conv_maxpool_forward, the rows in the conv's layout,
    pooled (with the bias and activation) window by window, for windows other than 2x2
    (_windows_2x2_images)."""
    padded, spare, places, image_z = _pooled_scratch(x, kernel2d, kh, kw, sh, sw, out_h, out_w)
    no_bias = np.zeros(0, np.float32)
    for n in range(first, stop):
        _pad_image(x[n], pad_top, pad_left, padded)
        _correlate(padded, pixels, targets, taps, kernel2d, image_z, 0, spare, places, no_bias, 0)
        maxpool_any_image(image_z.reshape(out_h, out_w, kernel2d.shape[1]), bias, code, ph, pw, y[n], argmax[n])


# A body of its own for 2x2 windows, as pool.bias_activation_maxpool has (the loops for any
# window in the same body: 0.7 s more of a cold start).
@njit(cache=True)
def _windows_2x2_images(first, stop, x, kernel2d, kh, kw, sh, sw, pad_top, pad_left, out_h, out_w, bias, code, taps,
                        pixels, targets, y, argmax):
    padded, spare, places, image_z = _pooled_scratch(x, kernel2d, kh, kw, sh, sw, out_h, out_w)
    no_bias = np.zeros(0, np.float32)
    for n in range(first, stop):
        _pad_image(x[n], pad_top, pad_left, padded)
        _correlate(padded, pixels, targets, taps, kernel2d, image_z, 0, spare, places, no_bias, 0)
        maxpool_2x2_image(image_z.reshape(out_h, out_w, kernel2d.shape[1]), bias, code, y[n], argmax[n])


@functools.lru_cache(maxsize=128)
def _pooled_tables(kh, kw, channels, filters, sh, sw, out_h, out_w, ph, pw):
    """(taps, pixels, targets, corners) of _planes_images (corners empty: of
    _windows_images), made once per layer geometry
    (shared: read only). Made in each chunk of images, they cost a quarter of the pass:
    128 images 28x28x1, us a call, 16 filters 'same' 600 -> 455, 32 'valid' 783 -> 620."""
    wide = (out_w - 1) * sw + kw
    planes = ph == 2 and pw == 2 and filters < PLANES_BELOW_FILTERS
    targets = _corner_planes(out_h, out_w, filters) if planes else _rows_of(out_h * out_w, filters)
    corners = _window_corners(out_h, out_w, filters) if planes else np.zeros(0, np.int32)
    return (_tap_offsets(kh, kw, channels, wide), _pixel_offsets(out_h, out_w, sh, sw, wide, channels), targets,
            corners)


@njit(cache=True)
def _planes_forward(x, kernel2d, kh, kw, sh, sw, pad_top, pad_left, out_h, out_w, bias, code, taps, pixels, targets,
                    corners, y, argmax):
    parallel_ranges(_planes_images, x.shape[0], (x, kernel2d, kh, kw, sh, sw, pad_top, pad_left, out_h, out_w, bias,
                                                 code, taps, pixels, targets, corners, y, argmax))


@njit(cache=True)
def _windows_forward(x, kernel2d, kh, kw, sh, sw, pad_top, pad_left, out_h, out_w, bias, code, ph, pw, taps, pixels,
                     targets, y, argmax):
    parallel_ranges(_windows_images, x.shape[0], (x, kernel2d, kh, kw, sh, sw, pad_top, pad_left, out_h, out_w, bias,
                                                  code, ph, pw, taps, pixels, targets, y, argmax))


@njit(cache=True)
def _windows_2x2_forward(x, kernel2d, kh, kw, sh, sw, pad_top, pad_left, out_h, out_w, bias, code, taps, pixels,
                         targets, y, argmax):
    parallel_ranges(_windows_2x2_images, x.shape[0], (x, kernel2d, kh, kw, sh, sw, pad_top, pad_left, out_h, out_w,
                                                      bias, code, taps, pixels, targets, y, argmax))


def implicit_conv_maxpool_forward(x, kernel, bias, code, sh, sw, pad_top, pad_left, out_h, out_w, ph, pw, y, argmax):
    """y = maxpool of activation ``code`` of (conv of x + bias), with its argmax, as
    conv.direct_conv_maxpool_forward makes them; ``kernel`` Keras's."""
    function, args = _maxpool_forward_call(x, kernel, bias, code, sh, sw, pad_top, pad_left, out_h, out_w, ph, pw, y,
                                           argmax)
    function(*args)


def _maxpool_forward_call(x, kernel, bias, code, sh, sw, pad_top, pad_left, out_h, out_w, ph, pw, y, argmax):
    """The kernel call implicit_conv_maxpool_forward makes: (function, args)."""
    kh, kw, channels, filters = kernel.shape
    taps, pixels, targets, corners = _pooled_tables(kh, kw, channels, filters, sh, sw, out_h, out_w, ph, pw)
    args = (np.ascontiguousarray(x), np.ascontiguousarray(kernel.reshape(-1, filters)), kh, kw, sh, sw, pad_top,
            pad_left, out_h, out_w, np.ascontiguousarray(bias), code)
    if corners.size:
        return _planes_forward, args + (taps, pixels, targets, corners, y, argmax)
    if ph == 2 and pw == 2:
        return _windows_2x2_forward, args + (taps, pixels, targets, y, argmax)
    return _windows_forward, args + (ph, pw, taps, pixels, targets, y, argmax)


def _maxpool_forward_replayed_as(x, kernel, bias, code, sh, sw, pad_top, pad_left, out_h, out_w, ph, pw, y, argmax):
    """As _forward_replayed_as, for implicit_conv_maxpool_forward."""
    if not contiguous(x, kernel, bias):
        return None
    function, args = _maxpool_forward_call(x, kernel, bias, code, sh, sw, pad_top, pad_left, out_h, out_w, ph, pw,
                                           y, argmax)
    return function, args, {}


implicit_conv_maxpool_forward.replayed_as = _maxpool_forward_replayed_as


@njit(cache=True, inline="always")
def _kernel_gradient_tables(kh, kw, sh, sw, out_h, out_w, channels, filters):
    """The padded image's (rows, wide), and _correlate's tables for a kernel gradient: the
    taps' offsets (the block's rows), the pixels' (its sum) and where each tap's row of
    the (taps, filters) sums starts."""
    rows, wide = (out_h - 1) * sh + kh, (out_w - 1) * sw + kw
    taps = _tap_offsets(kh, kw, channels, wide)
    return rows, wide, taps, _pixel_offsets(out_h, out_w, sh, sw, wide, channels), _rows_of(taps.size, filters)


# A first layer with its max pool fused (no input gradient): each image's conv gradient is
# made from the pooled one into a buffer of one image, then its kernel gradient summed as
# in _backward_chunks (taps as the block's rows, the image's pixels as the sum). The
# direct kernels' loop (conv._direct_backward_chunks, still float64's) ran at 17-18 GFLOP/s on an
# AMD EPYC (Zen 3). Batch 128, 2 cores, ms, direct -> this, alternating in one process:
# 28x28x1 -> 26x26x32 3x3, 2x2 pool 1.64 -> 1.24, 'same' 28x28x1 -> 16 1.92 -> 1.30,
# 32x32x3 -> 32 6.18 -> 3.34; a cold compile 3.2 -> 2.4 s.
@njit(cache=True)
def _pooled_kernel_gradient_chunks(first, stop, x, kh, kw, sh, sw, pad_top, pad_left, dy, argmax, y, code, ph, pw,
                                   out_h, out_w, partial, bias_partial):
    batch, channels = x.shape[0], x.shape[3]
    filters = dy.shape[3]
    rows, wide, taps, pixels, tap_places = _kernel_gradient_tables(kh, kw, sh, sw, out_h, out_w, channels, filters)
    nothing = np.zeros(0, np.float32)
    padded = np.zeros((rows, wide, channels), np.float32)
    image_dz = np.empty((out_h, out_w, filters), np.float32)
    spare, places = np.empty(ROWS, np.int64), np.empty(ROWS, np.int64)
    chunks = partial.shape[0]
    for chunk in range(first, stop):
        sums = partial[chunk]
        sums[:] = 0.0
        for n in range(chunk * batch // chunks, (chunk + 1) * batch // chunks):
            _pad_image(x[n], pad_top, pad_left, padded)
            maxpool_activation_backward_image(dy[n], argmax[n], y[n], code, ph, pw, image_dz, bias_partial[chunk])
            _correlate(padded, taps, tap_places, pixels, image_dz.reshape(-1, filters), sums, 1, spare, places,
                       nothing, 0)


@njit(cache=True)
def _pooled_kernel_gradient(x, kh, kw, sh, sw, pad_top, pad_left, dy, argmax, y, code, ph, pw, out_h, out_w, partial,
                            bias_partial):
    parallel_ranges(_pooled_kernel_gradient_chunks, partial.shape[0],
                    (x, kh, kw, sh, sw, pad_top, pad_left, dy, argmax, y, code, ph, pw, out_h, out_w, partial,
                     bias_partial))


def implicit_conv_maxpool_backward(x, kernel, dy, argmax, y, code, sh, sw, pad_top, pad_left, out_h, out_w, ph, pw,
                                   dkernel, dbias):
    """The kernel and bias gradients of implicit_conv_maxpool_forward (a first layer: no
    input gradient) from the pooled gradient ``dy``: added into ``dkernel`` (Keras's
    shape) and ``dbias`` (length 0: none). Partial sums per fixed chunk of images, added
    in order: a result that does not depend on the thread count."""
    kh, kw, channels, filters = kernel.shape
    batch = x.shape[0]
    if batch == 0:
        return
    chunks = min(REDUCTION_CHUNKS, batch)
    partial = np.empty((chunks, kh * kw * channels, filters), np.float32)
    bias_partial = np.zeros((chunks, filters), np.float32)
    _pooled_kernel_gradient(np.ascontiguousarray(x), kh, kw, sh, sw, pad_top, pad_left, np.ascontiguousarray(dy),
                            argmax, y, code, ph, pw, out_h, out_w, partial, bias_partial)
    add_partials(partial, dkernel)
    if dbias.shape[0] > 0:
        add_partials(bias_partial, dbias)


# The input gradient of a strided conv, by phases: the input pixels (u, v) of the padded
# input with u = ru (mod sh), v = rv (mod sw) receive only the taps p = ru, q = rv (mod
# the strides), so phase (ru, rv) is a stride-1 correlation of the output gradient with
# that sub-kernel, flipped, written to every sh-th row and sw-th column. The output
# gradient is laid on a grid with (taps per phase - 1) zero rows and columns before it.
@functools.lru_cache(maxsize=128)
def _phase_tables(kernel_shape, sh, sw, pad_top, pad_left, height, width, out_h, out_w):
    """The input gradient's index tables, made once per layer geometry: the grid's
    (rows, wide, top, left); per phase with taps its bounds in the joined tables (taps
    from, to; pixels from, to); the joined tap offsets on the grid, the flat indices into
    the kernel of each phase's flipped sub-kernel (taps * filters, channels), the grid
    offsets of the pixels' window corners and their places in dx (element offsets in one
    image); and whether some pixels belong to no tap (a kernel smaller than its stride:
    those gradients are zero)."""
    kh, kw, channels, filters = kernel_shape
    grid_top, grid_left = -(-kh // sh) - 1, -(-kw // sw) - 1
    grid = (grid_top + max(out_h, (height - 1 + pad_top) // sh + 1),
            grid_left + max(out_w, (width - 1 + pad_left) // sw + 1), grid_top, grid_left)
    grid_wide = grid[1]
    tables, bounds, uncovered = [], [], False
    taps_so_far = pixels_so_far = 0
    for ru in range(sh):
        for rv in range(sw):
            mh, mw = len(range(ru, kh, sh)), len(range(rv, kw, sw))
            us = np.arange(ru, height + pad_top, sh)
            vs = np.arange(rv, width + pad_left, sw)
            us, vs = us[us >= pad_top], vs[vs >= pad_left]
            if us.size == 0 or vs.size == 0:
                continue
            if mh == 0 or mw == 0:
                uncovered = True
                continue
            m, n = np.arange(mh)[:, None, None], np.arange(mw)[None, :, None]
            f = np.arange(filters)[None, None, :]
            taps = ((m * grid_wide + n) * filters + f).ravel()
            # Row (m, n, f), column c of the sub-kernel: kernel[p, q, c, f], flipped.
            p, q = ru + sh * (mh - 1 - m), rv + sw * (mw - 1 - n)
            weights = (((p * kw + q) * channels)[..., None] * filters + f[..., None]
                       + np.arange(channels) * filters).reshape(-1, channels)
            big_u, big_v = (us - ru) // sh, (vs - rv) // sw
            corners = (((big_u + grid_top - mh + 1)[:, None] * grid_wide + (big_v + grid_left - mw + 1)[None, :])
                       * filters).ravel()
            places = (((us - pad_top)[:, None] * width + (vs - pad_left)[None, :]) * channels).ravel()
            tables.append((taps, weights, corners, places))
            bounds.append((taps_so_far, taps_so_far + taps.size, pixels_so_far, pixels_so_far + corners.size))
            taps_so_far, pixels_so_far = bounds[-1][1], bounds[-1][3]
    if tables:
        joined = [np.concatenate(part).astype(np.int64) for part in zip(*tables)]
    else:
        joined = [np.empty(0, np.int64), np.empty((0, channels), np.int64), np.empty(0, np.int64),
                  np.empty(0, np.int64)]
    return np.array(grid, np.int64), np.array(bounds, np.int64).reshape(-1, 4), joined, uncovered


@njit(cache=True)
def _backward_chunks(first, stop, x, kernel2d, kh, kw, sh, sw, pad_top, pad_left, dz, partial, need_dx, grid_shape,
                     phase_bounds, phase_taps, phase_weights, phase_corners, phase_places, uncovered, dx):
    """Chunks first..stop-1 of partial.shape[0] of the images: each chunk's kernel gradient
    summed into partial[chunk], and with ``need_dx`` their input gradients."""
    batch, height, width, channels = x.shape
    _, out_h, out_w, filters = dz.shape
    rows, wide, taps, pixels, tap_places = _kernel_gradient_tables(kh, kw, sh, sw, out_h, out_w, channels, filters)
    grid_rows, grid_wide, grid_top, grid_left = grid_shape[0], grid_shape[1], grid_shape[2], grid_shape[3]
    nothing = np.zeros(0, np.float32)
    padded = np.zeros((rows, wide, channels), np.float32)
    grid = np.zeros((grid_rows if need_dx else 0, grid_wide, filters), np.float32)
    spare, places = np.empty(ROWS, np.int64), np.empty(ROWS, np.int64)
    chunks = partial.shape[0]
    for chunk in range(first, stop):
        sums = partial[chunk]
        sums[:] = 0.0
        for n in range(chunk * batch // chunks, (chunk + 1) * batch // chunks):
            _pad_image(x[n], pad_top, pad_left, padded)
            if need_dx:
                _pad_image(dz[n], grid_top, grid_left, grid)
                if uncovered:
                    dx[n] = 0.0
            # Pass -1: sums[t, f] += the sum over pixels of padded[pixel + tap t] * dz[pixel,
            # f] (taps as the block's rows, pixels as its sum, dz's rows as the "kernel");
            # then with need_dx one pass a phase into dx. One call of _correlate for all
            # (it is inlined: two calls compiled its blocks twice, 0.7 s of a cold start).
            for step in range(-1, phase_bounds.shape[0] if need_dx else 0):
                if step < 0:
                    source, rows_at, places_at, sum_at = padded, taps, tap_places, pixels
                    operand, target, add = dz[n].reshape(-1, filters), sums, 1
                else:
                    t0, t1 = phase_bounds[step, 0], phase_bounds[step, 1]
                    p0, p1 = phase_bounds[step, 2], phase_bounds[step, 3]
                    source, rows_at, places_at = grid, phase_corners[p0:p1], phase_places[p0:p1]
                    sum_at = phase_taps[t0:t1]
                    operand, target, add = phase_weights[t0:t1], dx[n].reshape(-1, channels), 0
                _correlate(source, rows_at, places_at, sum_at, operand, target, add, spare, places, nothing, 0)


@njit(cache=True)
def _backward(x, kernel2d, kh, kw, sh, sw, pad_top, pad_left, dz, partial, need_dx, grid_shape, phase_bounds,
              phase_taps, phase_weights, phase_corners, phase_places, uncovered, dx):
    parallel_ranges(_backward_chunks, partial.shape[0],
                    (x, kernel2d, kh, kw, sh, sw, pad_top, pad_left, dz, partial, need_dx, grid_shape, phase_bounds,
                     phase_taps, phase_weights, phase_corners, phase_places, uncovered, dx))


@njit(cache=True)
def _input_gradient_images(first, stop, dz, kernel_t, kh, kw, sh, sw, pad_top, pad_left, dx):
    """dx[n] for images first..stop-1 from their ``dz`` (out_h, out_w, filters): each image's
    columns (each output pixel's window gradient: dz @ kernel.T, ``kernel_t`` the
    (filters, taps) transpose) added back onto a zero-bordered image, then cut out."""
    _, height, width, channels = dx.shape
    _, out_h, out_w, filters = dz.shape
    rows, wide = (out_h - 1) * sh + kh, (out_w - 1) * sw + kw
    pixels = _pixel_offsets(out_h, out_w, sh, sw, wide, channels)
    gradient_rows = _rows_of(pixels.size, filters)
    column_rows = _rows_of(pixels.size, kernel_t.shape[1])
    filter_taps = _rows_of(filters, 1)
    columns = np.empty((pixels.size, kernel_t.shape[1]), np.float32)
    image = np.empty((rows, wide, channels), np.float32)
    flat = image.reshape(-1)
    spare, places = np.empty(ROWS, np.int64), np.empty(ROWS, np.int64)
    nothing = np.zeros(0, np.float32)
    run, row_step = kw * channels, wide * channels
    for n in range(first, stop):
        # columns[k, t] = the sum over f of dz[pixel k, f] * kernel[t, f]: dz's rows as the
        # block's rows, its filters as the sum.
        _correlate(dz[n], gradient_rows, column_rows, filter_taps, kernel_t, columns, 0, spare, places, nothing, 0)
        # Each column back at its window, a contiguous run of taps and channels per kernel
        # row: the adjoint of reading the windows, summed in pixel order.
        flat[:] = 0.0
        for k in range(pixels.size):
            for p in range(kh):
                source = columns[k, p * run:(p + 1) * run]
                target = flat[pixels[k] + p * row_step:pixels[k] + p * row_step + run]
                for e in range(run):
                    target[e] += source[e]
        if rows - pad_top < height or wide - pad_left < width:
            dx[n] = 0.0  # pixels past the padded image: no window reached them
        _pad_image(image, -pad_top, -pad_left, dx[n])  # the image without its border


@njit(cache=True)
def _input_gradient(dz, kernel_t, kh, kw, sh, sw, pad_top, pad_left, dx):
    parallel_ranges(_input_gradient_images, dz.shape[0], (dz, kernel_t, kh, kw, sh, sw, pad_top, pad_left, dx))


# Below this many input channels the input gradient is made as columns (see
# _input_gradient_images: vectors along the window's taps and channels) instead of by the
# phase correlations, whose vectors run along the few channels, most lanes masked.
# Backward with dx at 128 images, 2 cores, ms, phases -> columns: 14x14x6 -> 16 5x5 (LeNet-5's
# second layer) 1.98 -> 1.10, 28x28x1 -> 32 3x3 'same' 5.7 -> 2.1, 16x16x3 -> 24 stride 2
# 0.53 -> 0.41, 15x15x4 -> 8 stride 2 even; 8 channels 1.03-1.06 against 0.99-1.17, 12
# even, 16 1.28 against 1.61 (the kernel gradient included: 0.41 of LeNet's 1.98). A
# LeNet-5 training step, alternating in one process: b128 8.9 -> 7.8 ms, b32 3.1 -> 2.8.
COLUMNS_BELOW_CHANNELS = 8
# From more channels too where the phase correlations would make this many times the
# columns' vector multiply-adds (masked lanes counted whole): a 'valid' conv of a large
# kernel, whose input has many more pixels than its output (each a row of the phases'
# work), with fewer channels than two vectors. Backward with dx at 128 images, 2 cores,
# ms, phases -> columns (work ratio): 12x12x20 -> 50 5x5 'valid' (Caffe's LeNet) 8.8 ->
# 4.4 (3.5), 12x12x16 -> 50 5.1 -> 3.5 (2.25), 12x12x16 -> 16 1.6 -> 1.3 (2.25); below the
# ratio phases kept: 7x7x20 -> 50 3x3 'same' 1.60 / 1.35 (1.5), 14x14x20 -> 32 3.3 / 3.0
# (1.5), 28x28x20 -> 20 12.0 / 12.7 (1.5), 28x28x10 -> 16 4.3 / 4.8 (1.5), 14x14x16 -> 16
# 1.2 / 1.5 (1), 14x14x48 -> 64 12.6 / 13.3 (1).
COLUMNS_FROM_WORK_RATIO = 2.0


def input_gradient_as_columns(kernel_shape, sh, sw, height, width, out_h, out_w):
    """Whether the input gradient is made as columns (see COLUMNS_BELOW_CHANNELS and
    COLUMNS_FROM_WORK_RATIO) rather than by the phase correlations."""
    kh, kw, channels, _ = kernel_shape
    if channels < COLUMNS_BELOW_CHANNELS:
        return True
    phases = height * width * -(-channels // LANES) * kh * kw / (sh * sw)
    columns = out_h * out_w * -(-(kh * kw * channels) // LANES)
    return phases >= COLUMNS_FROM_WORK_RATIO * columns


def implicit_conv_backward(x, kernel, dz, sh, sw, pad_top, pad_left, out_h, out_w, dkernel, need_dx, dx):
    """dkernel (kh, kw, in, out) += the window-by-gradient products summed over the batch,
    ``dz`` the (pixels, filters) gradient before the activation; with ``need_dx``, dx =
    ``dz`` spread back through the kernel. Partial sums per fixed chunk of images, added
    in order: a result that does not depend on the thread count."""
    kh, kw, channels, filters = kernel.shape
    batch, height, width, _ = x.shape
    if batch == 0:
        return
    if need_dx and input_gradient_as_columns(kernel.shape, sh, sw, height, width, out_h, out_w):
        implicit_conv_backward(x, kernel, dz, sh, sw, pad_top, pad_left, out_h, out_w, dkernel, False, dx)
        _input_gradient(np.ascontiguousarray(dz).reshape(batch, out_h, out_w, filters),
                        np.ascontiguousarray(kernel.reshape(-1, filters).T), kh, kw, sh, sw, pad_top, pad_left, dx)
        return
    chunks = min(REDUCTION_CHUNKS, batch)
    partial = np.empty((chunks, kh * kw * channels, filters), np.float32)
    if need_dx:
        grid, bounds, (taps, weight_index, corners, places), uncovered = _phase_tables(
            kernel.shape, sh, sw, pad_top, pad_left, height, width, out_h, out_w)
        weights = kernel.reshape(-1)[weight_index]
    else:
        grid, bounds, uncovered = np.zeros(4, np.int64), np.zeros((0, 4), np.int64), False
        taps = corners = places = np.empty(0, np.int64)
        weights = np.empty((0, channels), np.float32)
    target = dx if need_dx else np.empty((batch, 0, 0, channels), np.float32)
    _backward(np.ascontiguousarray(x), np.ascontiguousarray(kernel.reshape(-1, filters)), kh, kw, sh, sw, pad_top,
              pad_left, np.ascontiguousarray(dz).reshape(batch, out_h, out_w, filters), partial, need_dx, grid, bounds,
              taps, weights, corners, places, uncovered, target)
    add_partials(partial, dkernel)
