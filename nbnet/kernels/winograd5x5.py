"""Winograd F(2x2, 5x5) passes of a 5x5, stride-1 Conv2D (``conv5x5_forward`` /
``conv5x5_backward``: the conv output itself, before bias and activation, which the layer
adds as on its im2col path, and a max pool after it runs as on the planar path).

A 5x5 convolution of C input and F output channels costs 25*C*F multiply-adds per output
pixel; im2col + GEMM spends them all in BLAS, which runs at its peak there (130-140
GFLOP/s on this 2-core machine), so only fewer multiplies make it faster. Here each 2x2
block of outputs comes from the 6x6 input patch under it: transformed (B^T d B) per input
channel, multiplied position by position with the transformed kernel (G g G^T) and summed
over input channels (36 small matmuls, one per position, in BLAS), then transformed back
(A^T m A): 9 multiply-adds per pixel and channel pair instead of 25. The transforms are
Toom-Cook's on the points 0, 1, -1, 2, -2 and infinity (Lavin & Gray, "Fast Algorithms
for Convolutional Neural Networks", 2016), built below from those points. The backward
pass is the exact adjoint of these steps. Results equal im2col's up to float32 rounding
(the transforms' largest coefficient is 5: about 5x im2col's rounding, 2e-5 of the
outputs' scale; tests/test_winograd5x5.py bounds it).

Training step of a Conv2D + max pool + GAP + dense model, batch 128, 2 cores, ms, im2col
(or planar) -> Winograd: 14x14x32 -> 64 with a 2x2 pool 45 -> 21, 14x14x64 -> 64 79 ->
34, 14x14x16 -> 32 (planar) 15.3 -> 13, 10x10x16 -> 32 7.6 -> 5.5, 28x28x16 -> 32 with a
pool (planar) even at 40; batch 32, 14x14x32 -> 64: 10.7 -> 7. The batch is split across
the matmul workers as in winograd.py, each running its images a chunk at a time so the
chunk's transformed input and products stay in its core's cache.
"""

import numpy as np
from numba import njit

from .conv import crop_image, pad_image
from .matmul import for_each_worker
from . import host_cpu_name, is_zen4, winograd_tiles
from .winograd_tiles import F2_5, chunk_ranges, image_placement, toom_cook, worker_buffers

# Values (transformed input + products) per chunk: about 1.6 MB of float32.
CHUNK_VALUES = 400_000
# One pass, 2 cores, ms. Against im2col + BLAS (batch 128): 14x14x32 -> 64 'same' 22.8 ->
# 16.5, 28x28x16 -> 32 42.8 -> 24.1, 14x14x64 -> 64 48.5 -> 29.8, 13x13x32 -> 64 'valid'
# 10.4 -> 9.6; at 8 input channels even (32x32x8 -> 16, batch 32: 7.2 against 7.0).
# Against the planar pass, which Conv2D takes for few channels and filters (batch 1000):
# 14x14x16 -> 32 56.6 -> 37.9, but 14x14x16 -> 16 28.9 -> 35.8 and 10x10x6 -> 16 6.8 ->
# 11.7. So from 16 channels and 512 channel pairs. Small outputs pay the transforms and
# the per-chunk products for little work: against the implicit GEMM (float32, forward +
# backward, 2 cores, batch 128 / 32, ms, with winograd_tiles.py's transforms) 14x14x16 ->
# 32 9.2 -> 6.5 / 2.37 -> 1.93, 10x10x16 -> 32 4.75 -> 3.44 / 1.23 -> 1.16, but 7x7x16 ->
# 32 2.76 -> 3.03 / 0.72 -> 1.15: from 10x10.
MIN_CHANNELS = 16
MIN_CHANNEL_PAIRS = 512
MIN_PIXELS = 100
# On an Intel Xeon (Sapphire Rapids class) the implicit GEMM, with two vectors a row from
# 32 filters, kept up to 1024 pairs. Forward + backward, 2 cores, BLAS on one thread, in
# one process, batch 128, implicit against F(2x2, 5x5), ms, two rounds: 14x14x16 -> 32 9.6
# / 8.6 against 12.0 / 11.7 (batch 32 2.2 / 2.2 against 3.5 / 3.7), 28x28x16 -> 32 35.7 /
# 34.3 against 42.0 / 41.0, 10x10x16 -> 32 4.6 / 4.7 against 6.5 / 6.7, 14x14x32 -> 32 16.7
# / 16.7 against 17.5 / 17.3, 14x14x16 -> 64 18.3 / 18.4 against 17.0 / 18.6; from there
# Winograd: 14x14x24 -> 48 24.5 / 25.0 against 20.0 / 20.2, 14x14x32 -> 64 36.2 / 36.9
# against 30.4 / 32.4, 14x14x64 -> 64 71.6 / 69.9 against 52.3 / 52.3. An AMD EPYC of Zen 3
# (AVX2, the implicit GEMM's blocks of 8 lanes), one process, batch 128, implicit against
# F(2x2, 5x5), ms: 14x14x16 -> 32 14.9 against 17.0, 28x28x16 -> 32 53.1 against 56.3,
# 14x14x32 -> 32 23.6 against 21.1, 14x14x16 -> 64 23.3 against 22.3, 14x14x32 -> 64 54.3
# against 34.9: its crossing lies between 512 and 1024 pairs, where the Xeon's lay at 1024
# (Winograd 5-10 % ahead there on Zen 3, 0-5 % behind on the Xeon); it keeps the Xeon's
# rule. Zen 4 keeps MIN_CHANNEL_PAIRS (measured there as above).
WIDE_MIN_CHANNEL_PAIRS = 1025


def min_channel_pairs(cpu_name):
    """The channel pairs from which a 5x5 conv takes this path on the CPU LLVM names
    ``cpu_name``."""
    return MIN_CHANNEL_PAIRS if is_zen4(cpu_name) else WIDE_MIN_CHANNEL_PAIRS


HOST_MIN_CHANNEL_PAIRS = min_channel_pairs(host_cpu_name())


_A_T, _G, _B_T = toom_cook(2, 5, (0.0, 1.0, -1.0, 2.0, -2.0))
# (G g G^T)[i, j] = sum over r, s of G[i, r] G[j, s] g[r, s]: one matmul by kron(G, G).
_GG = {np.dtype(dtype): np.kron(_G, _G).astype(dtype) for dtype in (np.float32, np.float64)}


def applies(kernel_size, strides, channels, filters, out_pixels):
    """Whether a plain (ungrouped, undilated) Conv2D takes this path, in training and inference."""
    return (tuple(kernel_size) == (5, 5) and tuple(strides) == (1, 1) and channels >= MIN_CHANNELS
            and channels * filters >= HOST_MIN_CHANNEL_PAIRS and out_pixels >= MIN_PIXELS)


def kernel_transform(kernel, u):
    """u[6*i + j, c, o] = (G g G^T)[i, j] of each 5x5 slice g = kernel[:, :, c, o]."""
    np.matmul(_GG[kernel.dtype], kernel.reshape(25, -1), out=u.reshape(36, -1))


def _terms(matrix, count):
    """Each row's nonzero coefficients as ``count`` (column, coefficient) pairs, padded
    with zero coefficients on column 0, so every pass below is a fixed-size sum."""
    columns = np.zeros((matrix.shape[0], count), np.intp)
    coefficients = np.zeros((matrix.shape[0], count))
    for row in range(matrix.shape[0]):
        nonzero = np.flatnonzero(matrix[row])
        columns[row, :len(nonzero)] = nonzero
        coefficients[row, :len(nonzero)] = matrix[row, nonzero]
    return columns, coefficients


# The transforms run two passes of small matrix products (rows, then columns), each output
# one vector pass over the channels (or filters) with every input term at once: a pass of
# a fixed few inputs is what LLVM vectorises, where adding term by term into the output
# read and wrote it once per term (3x slower). B^T has 3-4 nonzeros a row, A^T 5.
_B_COLUMNS, _B_COEFFICIENTS = _terms(_B_T, 4)
_A_COLUMNS, _A_COEFFICIENTS = _terms(_A_T, 5)
# The backward pass's adjoints run the transposed matrices the same way: B (columns of
# B^T) has 1-5 nonzeros a row, A 1-2.
_BT_COLUMNS, _BT_COEFFICIENTS = _terms(_B_T.T, 5)
_AT_COLUMNS, _AT_COEFFICIENTS = _terms(_A_T.T, 2)


# 'contract': each coefficient * value + sum is one FMA.
@njit(cache=True, nogil=True, fastmath={"contract"})
def input_transform(x, first, stop, pad_top, pad_left, tiles_h, tiles_w, image, rows, v):
    """v[6*i + j, t, c] = (B^T d B)[i, j] of the 6x6 patch d of channel c under block t,
    the blocks of images first..stop-1 in row-major order per image. ``image`` is a zeroed
    buffer of (2*tiles_h + 4) * (2*tiles_w + 4) * channels (each image is copied into it
    with its padding, so no patch needs a bounds check); ``rows`` (36, channels) scratch."""
    channels = x.shape[3]
    padded_h, padded_w = 2 * tiles_h + 4, 2 * tiles_w + 4
    line = padded_w * channels
    tile = 0
    for n in range(first, stop):
        pad_image(x, n, pad_top, pad_left, padded_h, padded_w, image)
        for ti in range(tiles_h):
            for tj in range(tiles_w):
                corner = (2 * ti * padded_w + 2 * tj) * channels
                for i in range(6):  # rows[6*i + b] = (B^T d)[i, b]
                    a0, a1, a2, a3 = _B_COLUMNS[i, 0], _B_COLUMNS[i, 1], _B_COLUMNS[i, 2], _B_COLUMNS[i, 3]
                    k0 = x.dtype.type(_B_COEFFICIENTS[i, 0])
                    k1 = x.dtype.type(_B_COEFFICIENTS[i, 1])
                    k2 = x.dtype.type(_B_COEFFICIENTS[i, 2])
                    k3 = x.dtype.type(_B_COEFFICIENTS[i, 3])
                    for b in range(6):
                        # Slices count from 0: no negative-wraparound check per index.
                        base = corner + b * channels
                        s0, s1 = image[np.uintp(base + a0 * line):], image[np.uintp(base + a1 * line):]
                        s2, s3 = image[np.uintp(base + a2 * line):], image[np.uintp(base + a3 * line):]
                        out = rows[6 * i + b]
                        for c in range(channels):
                            out[c] = k0 * s0[c] + k1 * s1[c] + k2 * s2[c] + k3 * s3[c]
                for j in range(6):  # v[6*i + j] = ((B^T d) B)[i, j]
                    b0, b1, b2, b3 = _B_COLUMNS[j, 0], _B_COLUMNS[j, 1], _B_COLUMNS[j, 2], _B_COLUMNS[j, 3]
                    k0 = x.dtype.type(_B_COEFFICIENTS[j, 0])
                    k1 = x.dtype.type(_B_COEFFICIENTS[j, 1])
                    k2 = x.dtype.type(_B_COEFFICIENTS[j, 2])
                    k3 = x.dtype.type(_B_COEFFICIENTS[j, 3])
                    for i in range(6):
                        s0, s1, s2, s3 = rows[6 * i + b0], rows[6 * i + b1], rows[6 * i + b2], rows[6 * i + b3]
                        out = v[6 * i + j, tile]
                        for c in range(channels):
                            out[c] = k0 * s0[c] + k1 * s1[c] + k2 * s2[c] + k3 * s3[c]
                tile += 1


@njit(cache=True, nogil=True, fastmath={"contract"})
def output_blocks(m, first, stop, rows, z):
    """z[n, 2*ti + r, 2*tj + s] = (A^T m A)[r, s] for block (ti, tj) of images
    first..stop-1, where that lies inside z (an odd side's last blocks are half outside).
    ``rows`` (12, filters) scratch."""
    out_h, out_w, filters = z.shape[1], z.shape[2], z.shape[3]
    tiles_h, tiles_w = (out_h + 1) // 2, (out_w + 1) // 2
    tile = 0
    for n in range(first, stop):
        for ti in range(tiles_h):
            for tj in range(tiles_w):
                for i in range(2):  # rows[6*i + b] = (A^T m)[i, b]
                    a0, a1, a2 = _A_COLUMNS[i, 0], _A_COLUMNS[i, 1], _A_COLUMNS[i, 2]
                    a3, a4 = _A_COLUMNS[i, 3], _A_COLUMNS[i, 4]
                    k0 = z.dtype.type(_A_COEFFICIENTS[i, 0])
                    k1 = z.dtype.type(_A_COEFFICIENTS[i, 1])
                    k2 = z.dtype.type(_A_COEFFICIENTS[i, 2])
                    k3 = z.dtype.type(_A_COEFFICIENTS[i, 3])
                    k4 = z.dtype.type(_A_COEFFICIENTS[i, 4])
                    for b in range(6):
                        s0, s1, s2 = m[6 * a0 + b, tile], m[6 * a1 + b, tile], m[6 * a2 + b, tile]
                        s3, s4 = m[6 * a3 + b, tile], m[6 * a4 + b, tile]
                        out = rows[6 * i + b]
                        for o in range(filters):
                            out[o] = k0 * s0[o] + k1 * s1[o] + k2 * s2[o] + k3 * s3[o] + k4 * s4[o]
                for j in range(2):
                    col = 2 * tj + j
                    b0, b1, b2 = _A_COLUMNS[j, 0], _A_COLUMNS[j, 1], _A_COLUMNS[j, 2]
                    b3, b4 = _A_COLUMNS[j, 3], _A_COLUMNS[j, 4]
                    k0 = z.dtype.type(_A_COEFFICIENTS[j, 0])
                    k1 = z.dtype.type(_A_COEFFICIENTS[j, 1])
                    k2 = z.dtype.type(_A_COEFFICIENTS[j, 2])
                    k3 = z.dtype.type(_A_COEFFICIENTS[j, 3])
                    k4 = z.dtype.type(_A_COEFFICIENTS[j, 4])
                    for i in range(2):
                        row = 2 * ti + i
                        if row < out_h and col < out_w:
                            s0, s1, s2 = rows[6 * i + b0], rows[6 * i + b1], rows[6 * i + b2]
                            s3, s4 = rows[6 * i + b3], rows[6 * i + b4]
                            out = z[n, row, col]
                            for o in range(filters):
                                out[o] = k0 * s0[o] + k1 * s1[o] + k2 * s2[o] + k3 * s3[o] + k4 * s4[o]
                tile += 1


# The backward pass is the adjoint of each forward step, in reverse: the output gradient
# into the transformed domain (A E A^T), the 36 products transposed (one for the kernel's
# gradient, one for the input's), and B dV B^T added back onto the overlapping patches.
@njit(cache=True, nogil=True, fastmath={"contract"})
def gradient_blocks(dz, first, stop, quad, rows, m):
    """m[6*a + b, t, o] = (A E A^T)[a, b] for block t's 2x2 gradient E of the conv output
    (zero past an odd side's edge): the adjoint of output_blocks. ``quad`` (4, filters)
    and ``rows`` (12, filters) are scratch."""
    out_h, out_w, filters = dz.shape[1], dz.shape[2], dz.shape[3]
    tiles_h, tiles_w = (out_h + 1) // 2, (out_w + 1) // 2
    zero = dz.dtype.type(0.0)
    tile = 0
    for n in range(first, stop):
        for ti in range(tiles_h):
            for tj in range(tiles_w):
                for position in range(4):
                    row, col = 2 * ti + position // 2, 2 * tj + position % 2
                    out = quad[position]
                    if row < out_h and col < out_w:
                        source = dz[n, row, col]
                        for o in range(filters):
                            out[o] = source[o]
                    else:
                        out[:] = zero
                for b in range(6):  # rows[6*i + b] = (E A^T)[i, b]
                    j0, j1 = _AT_COLUMNS[b, 0], _AT_COLUMNS[b, 1]
                    k0 = dz.dtype.type(_AT_COEFFICIENTS[b, 0])
                    k1 = dz.dtype.type(_AT_COEFFICIENTS[b, 1])
                    for i in range(2):
                        s0, s1 = quad[2 * i + j0], quad[2 * i + j1]
                        out = rows[6 * i + b]
                        for o in range(filters):
                            out[o] = k0 * s0[o] + k1 * s1[o]
                for a in range(6):  # m[6*a + b] = (A (E A^T))[a, b]
                    i0, i1 = _AT_COLUMNS[a, 0], _AT_COLUMNS[a, 1]
                    k0 = dz.dtype.type(_AT_COEFFICIENTS[a, 0])
                    k1 = dz.dtype.type(_AT_COEFFICIENTS[a, 1])
                    for b in range(6):
                        s0, s1 = rows[6 * i0 + b], rows[6 * i1 + b]
                        out = m[6 * a + b, tile]
                        for o in range(filters):
                            out[o] = k0 * s0[o] + k1 * s1[o]
                tile += 1


@njit(cache=True, nogil=True, fastmath={"contract"})
def input_transform_adjoint(dv, first, stop, pad_top, pad_left, tiles_h, tiles_w, rows, dimage, dx):
    """dx[n] = the sum over blocks of B dv B^T, each on its 6x6 patch: the adjoint of
    input_transform for images first..stop-1. ``rows`` (36, channels) and ``dimage`` (the
    padded image's size) are scratch; input pixels no patch reaches get zero."""
    channels = dx.shape[3]
    padded_h, padded_w = 2 * tiles_h + 4, 2 * tiles_w + 4
    zero = dx.dtype.type(0.0)
    tile = 0
    for n in range(first, stop):
        dimage[:] = zero
        for ti in range(tiles_h):
            for tj in range(tiles_w):
                for b in range(6):  # rows[6*i + b] = (dv B^T)[i, b]
                    j0, j1, j2 = _BT_COLUMNS[b, 0], _BT_COLUMNS[b, 1], _BT_COLUMNS[b, 2]
                    j3, j4 = _BT_COLUMNS[b, 3], _BT_COLUMNS[b, 4]
                    k0 = dx.dtype.type(_BT_COEFFICIENTS[b, 0])
                    k1 = dx.dtype.type(_BT_COEFFICIENTS[b, 1])
                    k2 = dx.dtype.type(_BT_COEFFICIENTS[b, 2])
                    k3 = dx.dtype.type(_BT_COEFFICIENTS[b, 3])
                    k4 = dx.dtype.type(_BT_COEFFICIENTS[b, 4])
                    for i in range(6):
                        s0, s1, s2 = dv[6 * i + j0, tile], dv[6 * i + j1, tile], dv[6 * i + j2, tile]
                        s3, s4 = dv[6 * i + j3, tile], dv[6 * i + j4, tile]
                        out = rows[6 * i + b]
                        for c in range(channels):
                            out[c] = k0 * s0[c] + k1 * s1[c] + k2 * s2[c] + k3 * s3[c] + k4 * s4[c]
                for a in range(6):  # the patch's row a += (B (dv B^T))[a, b]
                    i0, i1, i2 = _BT_COLUMNS[a, 0], _BT_COLUMNS[a, 1], _BT_COLUMNS[a, 2]
                    i3, i4 = _BT_COLUMNS[a, 3], _BT_COLUMNS[a, 4]
                    k0 = dx.dtype.type(_BT_COEFFICIENTS[a, 0])
                    k1 = dx.dtype.type(_BT_COEFFICIENTS[a, 1])
                    k2 = dx.dtype.type(_BT_COEFFICIENTS[a, 2])
                    k3 = dx.dtype.type(_BT_COEFFICIENTS[a, 3])
                    k4 = dx.dtype.type(_BT_COEFFICIENTS[a, 4])
                    for b in range(6):
                        s0, s1, s2 = rows[6 * i0 + b], rows[6 * i1 + b], rows[6 * i2 + b]
                        s3, s4 = rows[6 * i3 + b], rows[6 * i4 + b]
                        out = dimage[np.uintp(((2 * ti + a) * padded_w + 2 * tj + b) * channels):]
                        for c in range(channels):
                            out[c] += k0 * s0[c] + k1 * s1[c] + k2 * s2[c] + k3 * s3[c] + k4 * s4[c]
                tile += 1
        crop_image(dimage, n, pad_top, pad_left, padded_h, padded_w, dx)


def _worker_scratch(x, tiles_h, tiles_w, filters, chunk_tiles, pad_top, pad_left):
    """This worker thread's chunk buffers (v, m, the padded image, the two transforms' rows)."""
    blocks = max(1, chunk_tiles // (tiles_h * tiles_w)) * tiles_h * tiles_w
    channels = x.shape[3]
    key = ("forward 5x5", blocks, channels, filters, tiles_h, tiles_w, x.dtype.str,
           image_placement(x, pad_top, pad_left))
    return worker_buffers(key, lambda: (
        np.empty((36, blocks, channels), x.dtype), np.empty((36, blocks, filters), x.dtype),
        np.zeros((2 * tiles_h + 4) * (2 * tiles_w + 4) * channels, x.dtype), np.empty((36, channels), x.dtype),
        np.empty((12, filters), x.dtype)))


def conv5x5_forward(x, kernel, pad_top, pad_left, u, z, bias=None, relu=False):
    """z = conv5x5(x, kernel), z of shape (batch, out_h, out_w, filters) from the input
    corner (-pad_top, -pad_left); ``u`` a (36, in, out) buffer for the kernel's transform;
    in float32 (only) a ``bias`` added and ``relu`` applied as z is stored (see
    winograd_tiles.forward)."""
    if z.dtype == np.float32:
        winograd_tiles.forward(F2_5, x, kernel, pad_top, pad_left, u, z, bias, relu)
        return
    if bias is not None or relu:
        raise ValueError("conv5x5_forward adds a bias and relu in float32 only")
    _, out_h, out_w, filters = z.shape
    tiles_h, tiles_w = (out_h + 1) // 2, (out_w + 1) // 2
    kernel_transform(kernel, u)
    chunk = max(1, CHUNK_VALUES // (36 * (x.shape[3] + filters)))

    def run(first, stop):
        v, m, image, in_rows, out_rows = _worker_scratch(x, tiles_h, tiles_w, filters, chunk, pad_top, pad_left)
        for start, end, tiles in chunk_ranges(first, stop, tiles_h * tiles_w, chunk):
            input_transform(x, start, end, pad_top, pad_left, tiles_h, tiles_w, image, in_rows, v)
            np.matmul(v[:, :tiles], u, out=m[:, :tiles])
            output_blocks(m, start, end, out_rows, z)

    for_each_worker(run, x.shape[0])


def _worker_backward_scratch(v, m, image):
    """This worker thread's buffers for the backward pass, shaped after its forward ones."""
    _, blocks, channels = v.shape
    filters = m.shape[2]
    return worker_buffers(("backward 5x5", blocks, channels, filters, image.size, v.dtype.str), lambda: (
        np.empty_like(v), np.empty((36, channels, filters), v.dtype), np.empty((36, channels, filters), v.dtype),
        np.empty_like(image), np.empty((4, filters), v.dtype)))


def conv5x5_backward(x, kernel, dz, pad_top, pad_left, u, dkernel, need_dx, dx):
    """The backward pass of conv5x5_forward from ``dz`` (the gradient of its output, the
    activation's already applied): adds into ``dkernel`` (5, 5, in, out); with ``need_dx``,
    writes the input gradient into ``dx``. Each worker sums its images' kernel gradients;
    the sums are added in a fixed order."""
    if dz.dtype == np.float32:
        winograd_tiles.backward(F2_5, x, kernel, dz, pad_top, pad_left, u, dkernel, need_dx, dx)
        return
    _, out_h, out_w, filters = dz.shape
    tiles_h, tiles_w = (out_h + 1) // 2, (out_w + 1) // 2
    kernel_transform(kernel, u)
    chunk = max(1, CHUNK_VALUES // (36 * (x.shape[3] + filters)))
    u_t = np.ascontiguousarray(u.transpose(0, 2, 1))  # (BLAS ran m @ u.T slower on the strided view in winograd.py)

    def run(first, stop):
        v, m, image, in_rows, out_rows = _worker_scratch(x, tiles_h, tiles_w, filters, chunk, pad_top, pad_left)
        dv, du_chunk, du, dimage, quad = _worker_backward_scratch(v, m, image)
        du[:] = 0
        for start, end, tiles in chunk_ranges(first, stop, tiles_h * tiles_w, chunk):
            input_transform(x, start, end, pad_top, pad_left, tiles_h, tiles_w, image, in_rows, v)
            gradient_blocks(dz, start, end, quad, out_rows, m)
            np.matmul(v[:, :tiles].transpose(0, 2, 1), m[:, :tiles], out=du_chunk)
            du += du_chunk
            if need_dx:
                np.matmul(m[:, :tiles], u_t, out=dv[:, :tiles])
                input_transform_adjoint(dv, start, end, pad_top, pad_left, tiles_h, tiles_w, in_rows, dimage, dx)
        # A copy: the pool may run both parts on one thread, one after the other, and the
        # second would reset the first's sum in this thread's scratch.
        return du.copy()

    sums = for_each_worker(run, x.shape[0])
    du = sums[0]
    for more in sums[1:]:
        du += more
    dkernel += (_GG[kernel.dtype].T @ du.reshape(36, -1)).reshape(dkernel.shape)
