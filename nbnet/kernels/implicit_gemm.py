"""Stride-1 Conv2D as an implicit GEMM with its accumulators in vector registers: the
path for convs whose filters and channels are whole multiples of 16 (a float32 vector
of 16 lanes).

A conv is a product: output pixel r, filter f = the sum over taps k (p, q, c) of
x_padded[position(r) + offset(k)] * kernel[k, f]. ``_block`` computes ROWS such outputs
for 16 filters at once, each in a vector register for the whole sum over the taps: per
tap one vector load of the kernel row, one broadcast value per output and a fused
multiply-add. Numba's own loops cannot keep a vector in a register across a loop (each
accumulator row is loaded and stored around every pass: the planar kernels reach 42
GFLOP/s a core on a 16 -> 16 3x3 conv), so the block is written in LLVM IR (96 GFLOP/s,
the core's sgemm rate). The block reads its operands through index tables: the same
block makes

- the forward pass: rows = output pixels, taps as above;
- the kernel gradient: rows = taps, the sum over the image's output pixels, the
  "kernel" operand being the output gradient (one row per pixel);
- the input gradient: the forward pass of the output gradient, zero-padded to
  full correlation, with the kernel flipped and its channels and filters swapped.

Each image is first copied into a zero-bordered buffer of its own, so no tap reads
outside it. Float32 only (the float64 reference path keeps the planar kernels).

Conv2D takes it where the planar pass or (without a fused max pool) the direct kernels
applied, the filters are multiples of 16, and so are the channels unless the layer makes
no input gradient (a first layer: its vectors run along the filters only). 14x14x16 ->
16 3x3 at batch 128, 2 cores, ms: forward 1.28 planar -> 0.58, backward 2.43 -> 1.18
(190-197 GFLOP/s). Training steps (b128, b32) and 1000-image predicts, ms, alternating
in one process: the small ResNet of tools/bench_zoo.py 21.0 -> 13.1, 6.6 -> 4.1, 55 -> 31;
first layers of 3 channels (direct before) cifar 75.8 -> 70.4 and 216 -> 198, cifar_bn
73.2 -> 68.8 and 186 -> 169; a 7x7 first layer (planar before) big_kernels 18.4 -> 16.2.
Against Winograd (32-64 channels, or a fused max pool), F(2x2, 5x5) and BLAS (1x1) it
measured slower, by the 2.25-2.8x fewer multiplies or the pass they save: as the only
pass for every shape it fits, the Kaggle-style CNN 76 -> 90 ms a step, the CIFAR CNN 74 ->
88, tf_mnist_5x5 50 -> 60, pointwise_gap 38 -> 54.
"""

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from . import REDUCTION_CHUNKS

LANES = 16
ROWS = 8  # accumulators: 8 of the 32 vector registers, the rest for the broadcasts


def applies(kernel_size, strides, channels, filters, dtype, need_dx=True):
    """Whether a plain (ungrouped, undilated) Conv2D can take this path: the filters fill
    whole vectors, and so do the channels where the input gradient is made (its vectors
    run along them)."""
    return (tuple(strides) == (1, 1) and filters % LANES == 0 and (channels % LANES == 0 or not need_dx)
            and np.dtype(dtype) == np.float32)


@intrinsic
def _block(typingctx, a, row_offsets, column_offsets, count, b, b_stride, c, c_stride, valid_rows, add):
    """For r < ROWS: C[r, :LANES] (+)= sum over k < count of A[row_offsets[r] +
    column_offsets[k]] * B[k, :LANES]; rows from ``valid_rows`` on are not stored.
    Arguments are addresses (float32 A, B, C; int64 offsets) and element strides."""
    sig = types.void(*([types.int64] * 10))

    def codegen(context, builder, signature, args):
        a, row_offsets, column_offsets, count, b, b_stride, c, c_stride, valid_rows, add = args
        i32, i64, f32 = ir.IntType(32), ir.IntType(64), ir.FloatType()
        vector = ir.VectorType(f32, LANES)
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vector, [vector] * 3),
                                             f"llvm.fma.v{LANES}f32")
        a = builder.inttoptr(a, f32.as_pointer())
        row_offsets = builder.inttoptr(row_offsets, i64.as_pointer())
        column_offsets = builder.inttoptr(column_offsets, i64.as_pointer())
        b = builder.inttoptr(b, f32.as_pointer())
        c = builder.inttoptr(c, f32.as_pointer())
        rows = [builder.load(builder.gep(row_offsets, [ir.Constant(i64, r)])) for r in range(ROWS)]
        zero = ir.Constant(vector, [0.0] * LANES)
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
        for _ in range(ROWS):
            phi = builder.phi(vector)
            phi.add_incoming(zero, before)
            sums.append(phi)
        column = builder.load(builder.gep(column_offsets, [k]))
        b_row = builder.bitcast(builder.gep(b, [builder.mul(k, b_stride)]), vector.as_pointer())
        weights = builder.load(b_row, align=4)
        added = []
        for r in range(ROWS):
            value = builder.load(builder.gep(a, [builder.add(rows[r], column)]))
            spread = builder.shuffle_vector(builder.insert_element(undefined, value, ir.Constant(i32, 0)),
                                            undefined, first_lane)
            added.append(builder.call(fma, [spread, weights, sums[r]]))
        following = builder.add(k, ir.Constant(i64, 1))
        k.add_incoming(following, loop)
        for phi, value in zip(sums, added):
            phi.add_incoming(value, loop)
        builder.cbranch(builder.icmp_signed("<", following, count), loop, after)

        builder.position_at_end(after)
        totals = []
        for r in range(ROWS):
            total = builder.phi(vector)
            total.add_incoming(zero, before)
            total.add_incoming(added[r], loop)
            totals.append(total)
        adding = builder.icmp_signed("!=", add, ir.Constant(i64, 0))
        for r, total in enumerate(totals):
            with builder.if_then(builder.icmp_signed("<", ir.Constant(i64, r), valid_rows)):
                target = builder.bitcast(builder.gep(c, [builder.mul(ir.Constant(i64, r), c_stride)]),
                                         vector.as_pointer())
                with builder.if_else(adding) as (then, otherwise):
                    with then:
                        builder.store(builder.fadd(builder.load(target, align=4), total), target, align=4)
                    with otherwise:
                        builder.store(total, target, align=4)
        return context.get_dummy_value()

    return sig, codegen


@njit(cache=True)
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


@njit(cache=True)
def _pixel_offsets(out_h, out_w, wide, channels):
    """Offset of each output pixel's window corner in the padded buffer."""
    offsets = np.empty(out_h * out_w, np.int64)
    for i in range(out_h):
        for j in range(out_w):
            offsets[i * out_w + j] = (i * wide + j) * channels
    return offsets


@njit(cache=True)
def _pad_image(source, top, left, buffer):
    """buffer (rows, wide, channels) = the (height, width, channels) image ``source``
    placed at (top, left), zero elsewhere; parts outside the buffer are cut off."""
    buffer[:] = 0.0
    rows, wide, channels = buffer.shape
    height, width = source.shape[0], source.shape[1]
    for y in range(max(0, -top), min(height, rows - top)):
        for xx in range(max(0, -left), min(width, wide - left)):
            for c in range(channels):
                buffer[y + top, xx + left, c] = source[y, xx, c]


@njit(cache=True)
def _correlate_image(padded, pixel_offsets, tap_offsets, kernel2d, out, spare_rows):
    """out (pixels, filters) = the image's outputs: ROWS pixels by LANES filters a block."""
    pixels = pixel_offsets.size
    filters = kernel2d.shape[1]
    rows = spare_rows
    for start in range(0, pixels, ROWS):
        valid = min(ROWS, pixels - start)
        for r in range(ROWS):
            rows[r] = pixel_offsets[start + min(r, valid - 1)]
        for f in range(0, filters, LANES):
            _block(padded.ctypes.data, rows.ctypes.data, tap_offsets.ctypes.data, tap_offsets.size,
                   kernel2d.ctypes.data + 4 * f, filters, out.ctypes.data + 4 * (start * filters + f), filters,
                   valid, 0)


@njit(parallel=True, cache=True)
def _forward(x, kernel2d, kh, kw, pad_top, pad_left, out_h, out_w, z):
    batch, _, _, channels = x.shape
    rows, wide = out_h + kh - 1, out_w + kw - 1
    taps = _tap_offsets(kh, kw, channels, wide)
    pixels = _pixel_offsets(out_h, out_w, wide, channels)
    chunks = min(REDUCTION_CHUNKS, batch)
    for chunk in prange(chunks):
        padded = np.empty((rows, wide, channels), np.float32)
        spare = np.empty(ROWS, np.int64)
        for n in range(chunk * batch // chunks, (chunk + 1) * batch // chunks):
            _pad_image(x[n], pad_top, pad_left, padded)
            _correlate_image(padded, pixels, taps, kernel2d, z[n], spare)


def implicit_conv_forward(x, kernel, pad_top, pad_left, out_h, out_w, z):
    """z[n, i*out_w + j, o] = sum over the window of x * kernel (no bias), ``kernel`` Keras's
    (kh, kw, in, out); z is (batch * out_h * out_w, filters)."""
    kh, kw, channels, filters = kernel.shape
    if filters % LANES:
        raise ValueError(f"implicit_conv_forward: {filters} filters do not fill vectors of {LANES}")
    _forward(np.ascontiguousarray(x), np.ascontiguousarray(kernel.reshape(-1, filters)), kh, kw, pad_top, pad_left,
             out_h, out_w, z.reshape(x.shape[0], out_h * out_w, filters))


@njit(parallel=True, cache=True)
def _backward(x, kernel2d, flipped2d, kh, kw, pad_top, pad_left, dz, partial, need_dx, dx):
    batch, height, width, channels = x.shape
    _, out_h, out_w, filters = dz.shape
    rows, wide = out_h + kh - 1, out_w + kw - 1
    taps = _tap_offsets(kh, kw, channels, wide)
    pixels = _pixel_offsets(out_h, out_w, wide, channels)
    # The input gradient: the output gradient on a grid of (height + kh - 1, width + kw -
    # 1), correlated with the flipped kernel (filters now the channels).
    grad_wide = width + kw - 1
    grad_taps = _tap_offsets(kh, kw, filters, grad_wide)
    grad_pixels = _pixel_offsets(height, width, grad_wide, filters)
    chunks = partial.shape[0]
    for chunk in prange(chunks):
        padded = np.empty((rows, wide, channels), np.float32)
        grad_padded = np.empty((height + kh - 1, grad_wide, filters), np.float32)
        spare = np.empty(ROWS, np.int64)
        sums = partial[chunk]
        sums[:] = 0.0
        field = taps.size
        for n in range(chunk * batch // chunks, (chunk + 1) * batch // chunks):
            _pad_image(x[n], pad_top, pad_left, padded)
            # sums[t, f] += sum over pixels of padded[pixel + tap t] * dz[pixel, f]
            for start in range(0, field, ROWS):
                valid = min(ROWS, field - start)
                for r in range(ROWS):
                    spare[r] = taps[start + min(r, valid - 1)]
                for f in range(0, filters, LANES):
                    _block(padded.ctypes.data, spare.ctypes.data, pixels.ctypes.data, pixels.size,
                           dz[n].ctypes.data + 4 * f, filters, sums.ctypes.data + 4 * (start * filters + f), filters,
                           valid, 1)
            if need_dx:
                _pad_image(dz[n], kh - 1 - pad_top, kw - 1 - pad_left, grad_padded)
                _correlate_image(grad_padded, grad_pixels, grad_taps, flipped2d, dx[n], spare)


def implicit_conv_backward(x, kernel, dz, pad_top, pad_left, out_h, out_w, dkernel, need_dx, dx):
    """dkernel (kh, kw, in, out) += the window-by-gradient products summed over the batch,
    ``dz`` the (pixels, filters) gradient before the activation; with ``need_dx``, dx =
    ``dz`` spread back through the kernel. Partial sums per fixed chunk of images, added
    in order: a result that does not depend on the thread count."""
    kh, kw, channels, filters = kernel.shape
    if filters % LANES or (need_dx and channels % LANES):
        raise ValueError(f"implicit_conv_backward: {channels} channels -> {filters} filters do not fill vectors of "
                         f"{LANES} (see applies())")
    batch = x.shape[0]
    chunks = min(REDUCTION_CHUNKS, batch)
    partial = np.empty((chunks, kh * kw * channels, filters), np.float32)
    flipped = np.ascontiguousarray(kernel[::-1, ::-1].transpose(0, 1, 3, 2)).reshape(-1, channels)
    grads = np.ascontiguousarray(dz).reshape(batch, out_h, out_w, filters)
    target = dx.reshape(batch, -1, channels) if need_dx else np.empty((batch, 0, channels), np.float32)
    _backward(np.ascontiguousarray(x), kernel.reshape(-1, filters), flipped, kh, kw, pad_top, pad_left, grads,
              partial, need_dx, target)
    total = partial[0]
    for chunk in range(1, chunks):
        total = total + partial[chunk]
    dkernel += total.reshape(dkernel.shape)
