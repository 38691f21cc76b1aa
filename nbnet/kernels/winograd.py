"""Winograd F(2x2, 3x3) passes of a 3x3, stride-1 Conv2D, with its 2x2 max pool fused or
without a pool (``conv3x3_forward`` / ``conv3x3_backward``: the conv output itself, before
bias and activation, which the layer adds as on its im2col path). In float32 the unpooled
pass runs winograd_tiles.py (F(4x4, 3x3) where the output suits it, see plain_variant)
and the pooled one takes its transforms from there; the Numba loops below are the
float64 reference path's and the pooled pass's own.

Each 2x2 block of conv outputs, which is exactly one window of the pool, comes from the
4x4 input patch under it: transformed (B^T d B) per input channel, multiplied position by
position with the transformed kernel (G g G^T), summed over input channels, and transformed
back (A^T m A). That is 16 multiply-adds per (input, output) channel pair and block
instead of 36, 2.25x fewer, and the sum over input channels is 16 small matmuls (one per
position), which run in BLAS. Lavin & Gray, "Fast Algorithms for Convolutional Neural
Networks" (2016). The backward pass is the exact adjoint of these steps, so its gradients
are those of the forward pass; both equal the direct convolution's up to float rounding.

The batch is split across the matmul workers (see matmul.py), and each worker runs its
images a chunk at a time, so the transformed input and products of a chunk (CHUNK_TILES
blocks: 2.4 MB for 32 -> 64 channels) stay in its core's cache; over a whole batch of
128 the products alone are 13 MB, and BLAS ran these matmuls at 105 GFLOP/s instead of
175-180 GFLOP/s on chunks. Only the CPU has this path; the GPU runs im2col and its GEMM.
"""

import numpy as np
from numba import njit

from .activations import LINEAR, RELU
from . import host_cpu_name, is_zen4, winograd_tiles
from .conv import crop_image, pad_image
from .matmul import for_each_worker
from .pool import max_of_window
from .winograd_tiles import F2_3, F4_3, chunk_ranges, image_placement, worker_buffers

CHUNK_TILES = 400
PLAIN_CHUNK_VALUES = 25600


def applies(kernel_size, strides, pool_size):
    """Whether a Conv2D (with its max pool absorbed) can take this path."""
    return tuple(kernel_size) == (3, 3) and tuple(strides) == (1, 1) and tuple(pool_size) == (2, 2)


# Where the unpooled pass beats im2col + BLAS (layer forward + backward, batch 128, 2
# cores): from 8 input channels (fewer, and the transforms cost more than the multiplies
# they save), on outputs of 8x8 or more (7x7x64 -> 64: 9.0 ms, 10.9; an odd side wastes a
# quarter of its blocks). No upper limit: up to 64 channels before (14x14x128 -> 128 with
# F(2x2) in Numba loops: im2col 140 ms, Winograd 198), but with winograd_tiles.py's passes
# wide layers gain most (products grow with channels x filters, transforms with channels
# + filters). Against the implicit GEMM, which took them, on an Intel Xeon, BLAS on one
# thread, ms, two rounds: 16x16x128 -> 128 b128 146 / 149 -> 70 / 74 (F(4x4)), b32 39.5 /
# 38.7 -> 24.6 / 24.6, 8x8x128 -> 128 34.3 / 34.8 -> 21.9 / 22.5, 8x8x128 -> 256 82.7 / 83.3
# -> 41.5 / 40.5, 10x10x128 -> 128 (F(2x2)) 61.5 / 61.3 -> 44.5 / 45.2, 9x9x128 -> 128 49.9 /
# 50.1 -> 42.7 / 43.0, 8x8x512 -> 512 at batch 16 213 / 211 -> 187 / 184. A VGG-style CIFAR
# net (32, 32, pool, 64, 64, pool, 128, 128, 128, pool; alternating processes) b128 169 /
# 162 -> 151 / 137 ms a step, b32 58 / 55 -> 54 / 51, predict 1000 424 / 418 -> 389 / 347.
PLAIN_MIN_CHANNELS = 8
PLAIN_MIN_PIXELS = 64


# In float32 the unpooled pass runs winograd_tiles.py: F(4x4, 3x3) where its products are
# at most this share of F(2x2, 3x3)'s (sides that are multiples of 4, or one short: 28x28,
# 16x16, 7x7 give 0.56), F(2x2, 3x3) elsewhere (14x14: 0.73, 6x6: 1.0). Layer forward +
# backward, 2 cores, batch 128, F(2x2) -> F(4x4) ms, alternating, on an AMD EPYC (Zen 4):
# 28x28x32 -> 32 18.7 -> 13.5, 7x7x64 -> 64 10.7 -> 7.0, 16x16x64 -> 64 43.7 -> 29.7,
# 6x6x64 -> 128 10.6 -> 13.3; at 14x14 (0.73) 14x14x32 -> 64 8.2 -> 7.2 but 14x14x64 -> 64
# 15.4 -> 24.9 (BLAS on one thread, as in training; the others with BLAS's own threads,
# which slowed both sides). Thin layers (f4_over_implicit) keep this share on every CPU.
F4_MAX_PRODUCTS = 0.65
# On an Intel Xeon (Sapphire Rapids class) F(4x4) won at 14x14 too, both sizes, in one
# process, BLAS on one thread, forward + backward, F(2x2) -> F(4x4) ms, two rounds: batch
# 128 14x14x64 -> 64 21.9 / 22.2 -> 18.6 / 18.9, 14x14x32 -> 64 12.5 -> 11.0 / 10.9, 16x16x64
# -> 14x14x64 ('valid') 21.6 / 20.7 -> 18.4 / 19.0; batch 32 14x14x64 -> 64 6.1 / 6.2 ->
# 5.8 / 5.7; the other shares it now covers, batch 128: 28x28x32 -> 26x26x32 ('valid', 0.65)
# 28.1 / 25.9 -> 22.1 / 20.6, 15x15x64 -> 13x13x64 (0.73) 21.0 / 20.9 -> 17.8 / 18.2, 18x18x32
# -> 32 (0.69) 11.8 / 11.9 -> 9.9 / 10.4, 22x22x32 -> 32 (0.67) 18.6 / 19.2 -> 15.7 / 15.2. The
# Kaggle-style CNN of tools/bench_zoo.py (two such layers), b128 97.2 /
# 101.8 -> 92.0 / 92.4 ms a step, b32 32.6 / 31.7 -> 30.8 / 29.6 (alternating processes).
# On an AMD EPYC of Zen 3 (AVX2) too, forward + backward, BLAS on one thread, batch 128,
# ms, F(2x2) -> F(4x4), two runs (chunks of 400k and 500k values): 14x14x64 -> 64 33.1 / 28.9 -> 27.5 / 18.0, 28x28x32 -> 32
# 43.1 / 53.4 -> 20.1 / 31.6, 8x8x128 -> 128 46.3 / 33.8 -> 27.4 / 24.2. So the unpooled
# pass takes F(4x4) up to 0.75 except on Zen 4, where 14x14 was measured the other way;
# the pooled pass goes apart up to the same share (see pool_apart).
WIDE_F4_MAX_PRODUCTS = 0.75


def host_f4_max_products(cpu_name):
    """The share of F(2x2)'s products up to which the unpooled pass and a pool apart take
    F(4x4) on the CPU LLVM names ``cpu_name``."""
    return F4_MAX_PRODUCTS if is_zen4(cpu_name) else WIDE_F4_MAX_PRODUCTS


HOST_F4_MAX_PRODUCTS = host_f4_max_products(host_cpu_name())


def _f4_products(out_h, out_w):
    """Products a channel pair of F(4x4, 3x3) makes for this output: 36 a 4x4 block."""
    return -(-out_h // 4) * -(-out_w // 4) * 36


def _f4_share(out_h, out_w):
    """F(4x4, 3x3)'s products for this output over F(2x2, 3x3)'s."""
    return _f4_products(out_h, out_w) / (-(-out_h // 2) * -(-out_w // 2) * 16)


def plain_variant(out_h, out_w):
    """winograd_tiles' variant for a float32 unpooled pass with this output."""
    return F4_3 if _f4_share(out_h, out_w) <= HOST_F4_MAX_PRODUCTS else F2_3


# From 512 channel pairs F(4x4, 3x3) beats the implicit GEMM on thin layers too (which
# Conv2D otherwise gives it up to 16 channels). Forward + backward, 2 cores, BLAS on one
# thread, batch 128 / 32, implicit -> F(4x4) ms: 28x28x16 -> 32 13.3 -> 7.9 / 3.3 -> 2.1,
# 16x16x16 -> 32 4.3 -> 2.9 / 1.11 -> 1.01, 32x32x16 -> 32 17.3 -> 10.4 / 4.2 -> 2.6,
# 28x28x12 -> 24 10.4 -> 6.7 / 2.5 -> 1.8; fewer pairs are even or lose (16x16x16 -> 16 2.2
# -> 2.0 / 0.62 -> 0.69, 28x28x8 -> 16 4.9 -> 4.6 / 1.20 -> 1.26), as does F(2x2)
# (14x14x16 -> 32 3.4 -> 3.0 / 0.89 -> 1.12).
F4_MIN_CHANNEL_PAIRS = 512


def f4_over_implicit(dtype, channels, filters, out_h, out_w):
    """Whether a thin float32 3x3 conv (which Conv2D would give the implicit GEMM) runs
    faster as F(4x4, 3x3)."""
    return (np.dtype(dtype) == np.float32 and _f4_share(out_h, out_w) <= F4_MAX_PRODUCTS
            and channels * filters >= F4_MIN_CHANNEL_PAIRS)


def pool_apart(dtype, out_h, out_w):
    """Whether a float32 3x3 conv followed by a 2x2 max pool runs faster as the unpooled
    pass (F(4x4, 3x3) over the whole output) and the pool apart than as the fused pooled
    pass (F(2x2, 3x3) over the pooled part): where F(4x4)'s products are at most
    HOST_F4_MAX_PRODUCTS of the fused pass's. Forward + backward, batch 128 / 32, 2 cores,
    ms, fused -> apart, on the EPYC: 30x30x32 -> 32 22.8 -> 18.7 / 6.7 -> 5.6, 28x28x32 ->
    32 ('same') 20.0 -> 15.5 / 5.2 -> 4.1, 16x16x32 -> 64 12.8 -> 11.0 / 5.9 -> 5.4; the
    MNIST CNN's second conv (out_h, out_w 10x10: the pool's part of its 11x11 output; 0.81)
    stays fused: 6.0 -> 6.0 / 2.35 -> 3.6. The CIFAR CNN of tools/bench_zoo.py, b128 57.4 ->
    48.1 ms a step. On the Intel Xeon (relu layers, two rounds in one process, BLAS on one
    thread): 28x28x32 -> 26x26x64 'valid' (0.65) 48.8 / 45.8 -> 41.0 / 40.2, batch 32 13.0 /
    13.3 -> 10.8 / 11.0, 18x18x32 -> 32 (0.69) 15.1 / 15.5 -> 14.4 / 13.9, 16x16x64 ->
    14x14x64 (0.73) 26.2 / 25.3 -> 23.9 / 24.3, 14x14x64 -> 64 24.3 / 22.8 -> 21.4 / 22.5
    (batch 32 even); tools/bench_zoo.py's pointwise_gap (its 26x26 layer) b128 58.4 / 56.1
    -> 48.1 / 50.1 ms a step, predict 1000 155 / 163 -> 125 / 129 ms."""
    if np.dtype(dtype) != np.float32:
        return False
    fused = (out_h // 2) * (out_w // 2) * 16
    return _f4_products(out_h, out_w) <= HOST_F4_MAX_PRODUCTS * fused


def plain_positions(dtype, out_h, out_w):
    """The first axis of conv3x3_forward's kernel-transform buffer: 16 for F(2x2, 3x3), 36
    for F(4x4, 3x3)."""
    return winograd_tiles.positions(plain_variant(out_h, out_w)) if np.dtype(dtype) == np.float32 else 16


def plain_applies(kernel_size, strides, channels, out_pixels):
    """Whether a Conv2D without an absorbed pool can take the Winograd path."""
    return (tuple(kernel_size) == (3, 3) and tuple(strides) == (1, 1)
            and channels >= PLAIN_MIN_CHANNELS and out_pixels >= PLAIN_MIN_PIXELS)


# G = [[1,0,0], [1/2,1/2,1/2], [1/2,-1/2,1/2], [0,0,1]]; (G g G^T)[i, j] = sum over r, s of
# G[i, r] G[j, s] g[r, s], so the whole kernel transforms in one matmul by kron(G, G).
_G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]])
_GG = {np.dtype(dtype): np.kron(_G, _G).astype(dtype) for dtype in (np.float32, np.float64)}


def kernel_transform(kernel, u):
    """u[4*i + j, c, o] = (G g G^T)[i, j] of each 3x3 slice g = kernel[:, :, c, o]."""
    np.matmul(_GG[kernel.dtype], kernel.reshape(9, -1), out=u.reshape(16, -1))


# B^T = [[1,0,-1,0], [0,1,1,0], [0,-1,1,0], [0,1,0,-1]]: row i of B^T d is
# d[_PAIRS[i, 0]] + _SIGNS[i] * d[_PAIRS[i, 1]], and (.) B combines columns the same way.
_PAIRS = np.array([[0, 2], [1, 2], [2, 1], [1, 3]], np.intp)
_SIGNS = np.array([-1.0, 1.0, -1.0, -1.0])


# 'contract': each a + sign * b is one exact FMA (sign is +-1).
@njit(cache=True, nogil=True, fastmath={"contract"})
def input_transform(x, first, stop, pad_top, pad_left, tiles_h, tiles_w, image, v):
    """v[4*i + j, t, c] = (B^T d B)[i, j] of the 4x4 patch d of channel c under block t,
    the blocks of images first..stop-1 in row-major order per image. ``image`` is a zeroed
    buffer of (2*tiles_h + 2) * (2*tiles_w + 2) * channels: each image is copied into it
    with its padding, so no patch needs a bounds check."""
    channels = x.shape[3]
    padded_h, padded_w = 2 * tiles_h + 2, 2 * tiles_w + 2
    line = padded_w * channels
    tile = 0
    for n in range(first, stop):
        pad_image(x, n, pad_top, pad_left, padded_h, padded_w, image)
        for ti in range(tiles_h):
            for tj in range(tiles_w):
                corner = (2 * ti * padded_w + 2 * tj) * channels
                # One pass over the channels per output position, with four input rows: few
                # enough pointers for LLVM to vectorise it (all 16 at once stayed scalar, 1.6x slower).
                for i in range(4):
                    row_a, row_b = corner + _PAIRS[i, 0] * line, corner + _PAIRS[i, 1] * line
                    sign_i = x.dtype.type(_SIGNS[i])
                    for j in range(4):
                        col_a, col_b = _PAIRS[j, 0] * channels, _PAIRS[j, 1] * channels
                        sign_j = x.dtype.type(_SIGNS[j])
                        # Slices count from 0, so no index needs a negative-wraparound check.
                        aa, ab = image[np.uintp(row_a + col_a):], image[np.uintp(row_a + col_b):]
                        ba, bb = image[np.uintp(row_b + col_a):], image[np.uintp(row_b + col_b):]
                        out = v[4 * i + j, tile]
                        for c in range(channels):
                            out[c] = (aa[c] + sign_j * ab[c]) + sign_i * (ba[c] + sign_j * bb[c])
                tile += 1


@njit(inline="always")
def _output_block(m, tile, o):
    """The 2x2 block A^T m A of filter o (A^T = [[1,1,1,0], [0,1,-1,-1]]): A^T m down each of
    the 4 columns, then (.) A along each row."""
    a0 = m[0, tile, o] + m[4, tile, o] + m[8, tile, o]
    b0 = m[1, tile, o] + m[5, tile, o] + m[9, tile, o]
    c0 = m[2, tile, o] + m[6, tile, o] + m[10, tile, o]
    d0 = m[3, tile, o] + m[7, tile, o] + m[11, tile, o]
    a1 = m[4, tile, o] - m[8, tile, o] - m[12, tile, o]
    b1 = m[5, tile, o] - m[9, tile, o] - m[13, tile, o]
    c1 = m[6, tile, o] - m[10, tile, o] - m[14, tile, o]
    d1 = m[7, tile, o] - m[11, tile, o] - m[15, tile, o]
    return a0 + b0 + c0, b0 - c0 - d0, a1 + b1 + c1, b1 - c1 - d1


@njit(cache=True, nogil=True)
def output_maxpool(m, bias, code, first, stop, y, argmax):
    """y[n, i, j, o] = activation(max of the 2x2 block A^T m A + bias) for block (i, j) of
    images first..stop-1 (A^T = [[1,1,1,0], [0,1,-1,-1]]), and argmax its flat position
    in the (2*out_h, 2*out_w) conv output, as bias_activation_maxpool records them (the
    bias added before the comparison, ties keeping the first position). (Numba's loop
    over the filters vectorises here: a lane map through a scratch block measured 41 ->
    46 us a chunk of 16 of the MNIST CNN's images.)"""
    tiles_h, tiles_w, filters = y.shape[1], y.shape[2], y.shape[3]
    width = 2 * tiles_w
    has_bias = bias.shape[0] > 0
    relu = code == RELU
    zero = y.dtype.type(0.0)
    tile = 0
    for n in range(first, stop):
        for ti in range(tiles_h):
            for tj in range(tiles_w):
                best, where = y[n, ti, tj], argmax[n, ti, tj]
                corner = 2 * ti * width + 2 * tj
                for o in range(filters):
                    shift = bias[o] if has_bias else zero
                    y00, y01, y10, y11 = _output_block(m, tile, o)
                    best[o], where[o] = max_of_window(y00 + shift, y01 + shift, y10 + shift, y11 + shift,
                                                      corner, width, relu, zero)
                tile += 1


# The backward pass is the adjoint of each forward step, in reverse: the pooled gradient
# into the transformed domain (A Y A^T), the 16 matmuls transposed (one for the kernel's
# gradient, one for the input's), and B V B^T added back onto the overlapping patches.
# A = the transpose of A^T above: column r of A weighs output row (or column) r.
_A = np.array([[1.0, 0.0], [1.0, 1.0], [1.0, -1.0], [0.0, -1.0]])
# The adjoint of B^T: patch row r = sum over a of _ADJOINT_SIGNS[r, a] * transformed row
# _ADJOINT_ROWS[r, a] (d0 = v0, d1 = v1 - v2 + v3, d2 = v1 + v2 - v0, d3 = -v3), padded
# to three terms with zero signs so every patch position is one fixed-size sum.
_ADJOINT_ROWS = np.array([[0, 0, 0], [1, 2, 3], [0, 1, 2], [3, 3, 3]], np.intp)
_ADJOINT_SIGNS = np.array([[1.0, 0.0, 0.0], [1.0, -1.0, 1.0], [-1.0, 1.0, 1.0], [-1.0, 0.0, 0.0]])


@njit(cache=True, nogil=True)
def output_blocks(m, first, stop, quad, z):
    """z[n, 2*ti + r, 2*tj + s, o] = (A^T m A)[r, s] for block (ti, tj) of images
    first..stop-1, where that lies inside z (an odd side's last blocks are half outside).
    ``quad`` (4, filters) is scratch."""
    out_h, out_w, filters = z.shape[1], z.shape[2], z.shape[3]
    tiles_h, tiles_w = (out_h + 1) // 2, (out_w + 1) // 2
    tile = 0
    for n in range(first, stop):
        for ti in range(tiles_h):
            for tj in range(tiles_w):
                q0, q1, q2, q3 = quad[0], quad[1], quad[2], quad[3]
                for o in range(filters):
                    q0[o], q1[o], q2[o], q3[o] = _output_block(m, tile, o)
                for position in range(4):
                    row, col = 2 * ti + position // 2, 2 * tj + position % 2
                    if row < out_h and col < out_w:
                        # Copied value by value: an array assigned to an array slice
                        # compiles Numba's general broadcasting copy (1.7 s of this kernel's
                        # 2.3 s of compile time).
                        target, source = z[n, row, col], quad[position]
                        for o in range(filters):
                            target[o] = source[o]
                tile += 1


@njit(inline="always")
def _transform_gradient(quad, m, tile):
    """m[4*i + j, tile] = (A E A^T)[i, j] of the 2x2 gradient E in ``quad`` (4, filters),
    one output position a pass."""
    e00, e01, e10, e11 = quad[0], quad[1], quad[2], quad[3]
    filters = quad.shape[1]
    for i in range(4):
        top_i, bottom_i = quad.dtype.type(_A[i, 0]), quad.dtype.type(_A[i, 1])
        for j in range(4):
            left_j, right_j = quad.dtype.type(_A[j, 0]), quad.dtype.type(_A[j, 1])
            w00, w01 = top_i * left_j, top_i * right_j
            w10, w11 = bottom_i * left_j, bottom_i * right_j
            out = m[4 * i + j, tile]
            for o in range(filters):
                out[o] = w00 * e00[o] + w01 * e01[o] + w10 * e10[o] + w11 * e11[o]


@njit(cache=True, nogil=True, fastmath={"contract"})
def gradient_blocks(dz, first, stop, quad, m):
    """m[4*i + j, t, o] = (A E A^T)[i, j] for block t's 2x2 gradient E of the conv output
    (zero past an odd side's edge): the adjoint of output_blocks. ``quad`` is scratch."""
    out_h, out_w, filters = dz.shape[1], dz.shape[2], dz.shape[3]
    tiles_h, tiles_w = (out_h + 1) // 2, (out_w + 1) // 2
    zero = dz.dtype.type(0.0)
    tile = 0
    for n in range(first, stop):
        for ti in range(tiles_h):
            for tj in range(tiles_w):
                for position in range(4):
                    row, col = 2 * ti + position // 2, 2 * tj + position % 2
                    target = quad[position]
                    if row < out_h and col < out_w:  # value by value: see output_blocks
                        source = dz[n, row, col]
                        for o in range(filters):
                            target[o] = source[o]
                    else:
                        for o in range(filters):
                            target[o] = zero
                _transform_gradient(quad, m, tile)
                tile += 1


@njit(cache=True, nogil=True, fastmath={"contract"})
def gradient_transform(dy, argmax, y, code, first, stop, quad, m, bias_sums, lanes):
    """m[4*i + j, t, o] = (A E A^T)[i, j] for block t's 2x2 gradient E of the conv
    output: the pooled gradient dy at the window's maximum (argmax) where the activation
    passed it, zero elsewhere. ``quad`` (4, filters) is scratch for E. Adds the passed
    gradients into ``bias_sums``. With ``lanes`` (float32 only) the transform runs as a
    lane map (the MNIST CNN's 13x13x32 -> 64 layer: 106 -> 58 us a chunk of 16 images)."""
    tiles_h, tiles_w, filters = dy.shape[1], dy.shape[2], dy.shape[3]
    position = m.shape[1] * filters
    width = 2 * tiles_w
    linear = code == LINEAR
    zero = dy.dtype.type(0.0)
    tile = 0
    for n in range(first, stop):
        for ti in range(tiles_h):
            for tj in range(tiles_w):
                grads, where, pooled = dy[n, ti, tj], argmax[n, ti, tj], y[n, ti, tj]
                corner = 2 * ti * width + 2 * tj
                # E, one window position a pass (r, s = position // 2, position % 2).
                for corner_position in range(4):
                    pixel = corner + (corner_position // 2) * width + corner_position % 2
                    out = quad[corner_position]
                    for o in range(filters):
                        passes = (where[o] == pixel) & (linear | (pooled[o] > zero))
                        out[o] = grads[o] if passes else zero
                for corner_position in range(4):
                    passed = quad[corner_position]
                    for o in range(filters):
                        bias_sums[o] += passed[o]
                if lanes:
                    winograd_tiles.gradient_map(F2_3, quad.ctypes.data, 2 * filters, filters,
                                                m.ctypes.data + 4 * tile * filters, 4 * position, position, filters)
                else:
                    _transform_gradient(quad, m, tile)
                tile += 1


@njit(cache=True, nogil=True, fastmath={"contract"})
def input_transform_adjoint(dv, first, stop, pad_top, pad_left, tiles_h, tiles_w, rows, dimage, dx):
    """dx[n] = the sum over blocks of B dv B^T, each on its 4x4 patch: the adjoint of
    input_transform for images first..stop-1. ``rows`` (16, channels) and ``dimage`` (the
    padded image's size) are scratch; input pixels no patch reaches get zero."""
    channels = dx.shape[3]
    padded_h, padded_w = 2 * tiles_h + 2, 2 * tiles_w + 2
    zero = dx.dtype.type(0.0)
    tile = 0
    for n in range(first, stop):
        dimage[:] = zero
        for ti in range(tiles_h):
            for tj in range(tiles_w):
                # B (.) down the rows into ``rows``, then (.) B^T along them onto the patch:
                # passes of three inputs and one output each, which LLVM vectorises (one
                # pass of nine inputs per patch position stayed scalar, 2.5x slower).
                for r in range(4):
                    i0, i1, i2 = _ADJOINT_ROWS[r, 0], _ADJOINT_ROWS[r, 1], _ADJOINT_ROWS[r, 2]
                    a0 = dx.dtype.type(_ADJOINT_SIGNS[r, 0])
                    a1 = dx.dtype.type(_ADJOINT_SIGNS[r, 1])
                    a2 = dx.dtype.type(_ADJOINT_SIGNS[r, 2])
                    for j in range(4):
                        w0, w1, w2 = dv[4 * i0 + j, tile], dv[4 * i1 + j, tile], dv[4 * i2 + j, tile]
                        out = rows[4 * r + j]
                        for c in range(channels):
                            out[c] = a0 * w0[c] + a1 * w1[c] + a2 * w2[c]
                for r in range(4):
                    for s in range(4):
                        j0, j1, j2 = _ADJOINT_ROWS[s, 0], _ADJOINT_ROWS[s, 1], _ADJOINT_ROWS[s, 2]
                        b0 = dx.dtype.type(_ADJOINT_SIGNS[s, 0])
                        b1 = dx.dtype.type(_ADJOINT_SIGNS[s, 1])
                        b2 = dx.dtype.type(_ADJOINT_SIGNS[s, 2])
                        t0, t1, t2 = rows[4 * r + j0], rows[4 * r + j1], rows[4 * r + j2]
                        out = dimage[np.uintp(((2 * ti + r) * padded_w + 2 * tj + s) * channels):]
                        for c in range(channels):
                            out[c] += b0 * t0[c] + b1 * t1[c] + b2 * t2[c]
                tile += 1
        crop_image(dimage, n, pad_top, pad_left, padded_h, padded_w, dx)


def _chunk_tiles(channels, filters, pooled):
    """Blocks a chunk: as many as keep the chunk's v and m near 1.6 MB (400 blocks at 32 ->
    32 channels, 200 at 64 -> 64: 14x14x64 -> 64 at batch 128 took 36 ms with 400, 18 with
    200), for the pooled pass at most CHUNK_TILES (tuned on the MNIST CNN; pooled
    14x14x64 -> 64, batch 128, forward + backward: 89 ms with 400, 30 with 200)."""
    plain = max(1, PLAIN_CHUNK_VALUES // (channels + filters))
    return min(CHUNK_TILES, plain) if pooled else plain


def _worker_scratch(x, tiles_h, tiles_w, filters, chunk_tiles, pad_top, pad_left):
    """This worker thread's chunk buffers (v, m, the padded image, a (4, filters) quad)."""
    blocks = max(1, chunk_tiles // (tiles_h * tiles_w)) * tiles_h * tiles_w
    # An odd count of blocks a position (see winograd_tiles._worker_scratch): pooled
    # 26x26x32 -> 32 forward + backward, batch 128, 18.2 -> 15.9 ms, 13x13x32 -> 64 6.1 -> 5.7.
    blocks += 1 - blocks % 2
    channels = x.shape[3]
    key = ("forward 3x3", blocks, channels, filters, tiles_h, tiles_w, x.dtype.str,
           image_placement(x, pad_top, pad_left))
    return worker_buffers(key, lambda: (
        np.empty((16, blocks, channels), x.dtype), np.empty((16, blocks, filters), x.dtype),
        np.zeros((2 * tiles_h + 2) * (2 * tiles_w + 2) * channels, x.dtype), np.empty((4, filters), x.dtype)))


def _input_transform(x, first, stop, pad_top, pad_left, tiles_h, tiles_w, image, v):
    """input_transform; in float32 as lane maps (winograd_tiles.py)."""
    if x.dtype == np.float32:
        winograd_tiles.input_transform(F2_3, 2, 4, x, first, stop, pad_top, pad_left, tiles_h, tiles_w, image, v)
    else:
        input_transform(x, first, stop, pad_top, pad_left, tiles_h, tiles_w, image, v)


def _input_transform_adjoint(dv, first, stop, pad_top, pad_left, tiles_h, tiles_w, rows, dimage, dx):
    """input_transform_adjoint; in float32 as lane maps (winograd_tiles.py)."""
    if dx.dtype == np.float32:
        winograd_tiles.input_transform_adjoint(F2_3, 2, 4, dv, first, stop, pad_top, pad_left, tiles_h, tiles_w,
                                               dimage, dx)
    else:
        input_transform_adjoint(dv, first, stop, pad_top, pad_left, tiles_h, tiles_w, rows, dimage, dx)


def _forward(x, kernel, pad_top, pad_left, u, tiles_h, tiles_w, pooled, finish):
    """The forward pass over chunks of images on the workers: input transform, the 16
    products, then ``finish(m, start, end, quad)`` writes the chunk's output."""
    kernel_transform(kernel, u)
    filters = kernel.shape[3]
    chunk = _chunk_tiles(x.shape[3], filters, pooled)

    def run(first, stop):
        v, m, image, quad = _worker_scratch(x, tiles_h, tiles_w, filters, chunk, pad_top, pad_left)
        for start, end, tiles in chunk_ranges(first, stop, tiles_h * tiles_w, chunk):
            _input_transform(x, start, end, pad_top, pad_left, tiles_h, tiles_w, image, v)
            np.matmul(v[:, :tiles], u, out=m[:, :tiles])
            finish(m, start, end, quad)

    for_each_worker(run, x.shape[0])


def conv3x3_maxpool_forward(x, kernel, bias, code, pad_top, pad_left, u, y, argmax):
    """y, argmax = the 2x2 max pool (stride 2) of activation(conv3x3(x, kernel) + bias), as
    im2col + matmul + bias_activation_maxpool give them for ``code`` RELU or LINEAR; the
    conv output that y's windows cover is (2*out_h, 2*out_w) from the input corner
    (-pad_top, -pad_left). ``kernel`` is (3, 3, in, out); ``u`` a (16, in, out) buffer
    for its transform; ``bias`` of length 0 means none."""
    _, tiles_h, tiles_w, _ = y.shape
    _forward(x, kernel, pad_top, pad_left, u, tiles_h, tiles_w, True,
             lambda m, start, end, quad: output_maxpool(m, bias, code, start, end, y, argmax))


def conv3x3_forward(x, kernel, pad_top, pad_left, u, z, bias=None, relu=False):
    """z = conv3x3(x, kernel), z of shape (batch, out_h, out_w, filters) from the input
    corner (-pad_top, -pad_left); ``u`` a (plain_positions, in, out) buffer for the
    kernel's transform; in float32 (only) a ``bias`` added and ``relu`` applied as z is
    stored (see winograd_tiles.forward). Forward and backward of a Conv2D layer, batch 128 on 2 cores, im2col ->
    Winograd (ms): 28x28x32 -> 32 filters 71.0 -> 26.7, 16x16x64 -> 64 59.7 -> 24.2,
    14x14x64 -> 64 40.7 -> 19.4, 16x16x32 -> 64 30.3 -> 14.1, 14x14x16 -> 16 9.0 -> 5.6;
    batch 32: 28x28x32 -> 32 18.1 -> 10.1, 14x14x64 -> 64 12.5 -> 6.4."""
    _, out_h, out_w, _ = z.shape
    if z.dtype == np.float32:
        winograd_tiles.forward(plain_variant(out_h, out_w), x, kernel, pad_top, pad_left, u, z, bias, relu)
        return
    if bias is not None or relu:
        raise ValueError("conv3x3_forward adds a bias and relu in float32 only")
    _forward(x, kernel, pad_top, pad_left, u, (out_h + 1) // 2, (out_w + 1) // 2, False,
             lambda m, start, end, quad: output_blocks(m, start, end, quad, z))


def _worker_backward_scratch(v, m, image):
    """This worker thread's buffers for the backward pass, shaped after its forward ones
    (from _worker_scratch)."""
    _, blocks, channels = v.shape
    filters = m.shape[2]
    return worker_buffers(("backward 3x3", blocks, channels, filters, image.size, v.dtype.str), lambda: (
        np.empty_like(v), np.empty((16, channels, filters), v.dtype), np.empty((16, channels, filters), v.dtype),
        np.empty_like(image), np.empty((16, channels), v.dtype), np.empty((4, filters), v.dtype),
        np.empty(filters, v.dtype)))


def _backward(x, kernel, pad_top, pad_left, u, tiles_h, tiles_w, pooled, gradient, dkernel, need_dx, dx):
    """The backward pass over chunks of images on the workers: ``gradient(m, start, end,
    quad, bias_sums)`` writes the chunk's transformed output gradient into m (adding its
    bias gradient into bias_sums where it has one), then the kernel gradient's 16
    products and, with ``need_dx``, the input gradient. Adds into ``dkernel``; returns
    the workers' bias sums. Each worker sums its images; the sums are added in a fixed
    order."""
    kernel_transform(kernel, u)
    filters = kernel.shape[3]
    chunk = _chunk_tiles(x.shape[3], filters, pooled)
    u_t = np.ascontiguousarray(u.transpose(0, 2, 1))  # BLAS ran m @ u.T 1.5x slower on the strided view

    def run(first, stop):
        v, m, image, _ = _worker_scratch(x, tiles_h, tiles_w, filters, chunk, pad_top, pad_left)
        dv, du_chunk, du, dimage, rows, quad, bias_sums = _worker_backward_scratch(v, m, image)
        du[:] = 0
        bias_sums[:] = 0
        for start, end, tiles in chunk_ranges(first, stop, tiles_h * tiles_w, chunk):
            _input_transform(x, start, end, pad_top, pad_left, tiles_h, tiles_w, image, v)
            gradient(m, start, end, quad, bias_sums)
            np.matmul(v[:, :tiles].transpose(0, 2, 1), m[:, :tiles], out=du_chunk)
            du += du_chunk
            if need_dx:
                np.matmul(m[:, :tiles], u_t, out=dv[:, :tiles])
                _input_transform_adjoint(dv, start, end, pad_top, pad_left, tiles_h, tiles_w, rows, dimage, dx)
        # Copies: the pool may run both parts on one thread, one after the other, and
        # the second would reset the first's sums in this thread's scratch.
        return du.copy(), bias_sums.copy()

    sums = for_each_worker(run, x.shape[0])
    du = sums[0][0]
    for more, _ in sums[1:]:
        du += more
    dkernel += (_GG[kernel.dtype].T @ du.reshape(16, -1)).reshape(dkernel.shape)
    return [bias_sums for _, bias_sums in sums]


def conv3x3_maxpool_backward(x, kernel, dy, argmax, y, code, pad_top, pad_left, u, dkernel, dbias, need_dx, dx):
    """The backward pass of conv3x3_maxpool_forward from the pooled gradient ``dy`` and
    the forward's ``argmax`` and ``y``: adds into ``dkernel`` (3, 3, in, out) and ``dbias``
    (length 0: none); with ``need_dx``, writes the input gradient into ``dx``."""
    _, tiles_h, tiles_w, _ = dy.shape
    bias_sums = _backward(x, kernel, pad_top, pad_left, u, tiles_h, tiles_w, True,
                          lambda m, start, end, quad, sums: gradient_transform(dy, argmax, y, code, start, end, quad,
                                                                               m, sums, dy.dtype == np.float32),
                          dkernel, need_dx, dx)
    if dbias.shape[0] > 0:
        for sums in bias_sums:
            dbias += sums


def conv3x3_backward(x, kernel, dz, pad_top, pad_left, u, dkernel, need_dx, dx):
    """The backward pass of conv3x3_forward from ``dz`` (the gradient of its output, the
    activation's already applied): adds into ``dkernel`` (3, 3, in, out); with
    ``need_dx``, writes the input gradient into ``dx``."""
    _, out_h, out_w, _ = dz.shape
    if dz.dtype == np.float32:
        winograd_tiles.backward(plain_variant(out_h, out_w), x, kernel, dz, pad_top, pad_left, u, dkernel, need_dx, dx)
        return
    _backward(x, kernel, pad_top, pad_left, u, (out_h + 1) // 2, (out_w + 1) // 2, False,
              lambda m, start, end, quad, sums: gradient_blocks(dz, start, end, quad, m), dkernel, need_dx, dx)
