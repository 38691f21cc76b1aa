"""Winograd F(2x2, 3x3) forward pass of a 3x3, stride-1 Conv2D with its 2x2 max pool fused.

Each 2x2 block of conv outputs, which is exactly one window of the pool, comes from the
4x4 input patch under it: transformed (B^T d B) per input channel, multiplied position by
position with the transformed kernel (G g G^T), summed over input channels, and transformed
back (A^T m A). That is 16 multiply-adds per (input, output) channel pair and block
instead of 36, 2.25x fewer, and the sum over input channels is 16 small matmuls (one per
position), which run in BLAS. Lavin & Gray, "Fast Algorithms for Convolutional Neural
Networks" (2016). The results equal the direct convolution's up to float rounding.

The batch is split across the matmul workers (see matmul.py), and each worker runs its
images a chunk at a time, so the transformed input and products of a chunk (CHUNK_TILES
blocks: 2.4 MB for 32 -> 64 channels) stay in its core's cache; over a whole batch of
128 the products alone are 13 MB, and BLAS ran these matmuls at 105 GFLOP/s instead of
175-180 GFLOP/s on chunks. Only the CPU has this path; the GPU runs im2col and its GEMM.
"""

import threading

import numpy as np
from numba import njit

from .activations import RELU
from .conv import pad_image
from .matmul import for_each_worker

CHUNK_TILES = 400
_scratch = threading.local()


def applies(kernel_size, strides, pool_size):
    """Whether a Conv2D (with its max pool absorbed) can take this path."""
    return tuple(kernel_size) == (3, 3) and tuple(strides) == (1, 1) and tuple(pool_size) == (2, 2)


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


@njit(cache=True, nogil=True)
def output_maxpool(m, bias, code, first, stop, y, argmax):
    """y[n, i, j, o] = activation(max of the 2x2 block A^T m A + bias) for block (i, j) of
    images first..stop-1 (A^T = [[1,1,1,0], [0,1,-1,-1]]), and argmax its flat position
    in the (2*out_h, 2*out_w) conv output, as bias_activation_maxpool records them (the
    bias added before the comparison, ties keeping the first position)."""
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
                    # A^T m down each of the 4 columns, then (.) A along each row.
                    a0 = m[0, tile, o] + m[4, tile, o] + m[8, tile, o]
                    b0 = m[1, tile, o] + m[5, tile, o] + m[9, tile, o]
                    c0 = m[2, tile, o] + m[6, tile, o] + m[10, tile, o]
                    d0 = m[3, tile, o] + m[7, tile, o] + m[11, tile, o]
                    a1 = m[4, tile, o] - m[8, tile, o] - m[12, tile, o]
                    b1 = m[5, tile, o] - m[9, tile, o] - m[13, tile, o]
                    c1 = m[6, tile, o] - m[10, tile, o] - m[14, tile, o]
                    d1 = m[7, tile, o] - m[11, tile, o] - m[15, tile, o]
                    top_left, top_right = a0 + b0 + c0 + shift, b0 - c0 - d0 + shift
                    bottom_left, bottom_right = a1 + b1 + c1 + shift, b1 - c1 - d1 + shift
                    value, position = top_left, corner
                    if top_right > value:
                        value, position = top_right, corner + 1
                    if bottom_left > value:
                        value, position = bottom_left, corner + width
                    if bottom_right > value:
                        value, position = bottom_right, corner + width + 1
                    if relu and not value > zero:
                        value = zero
                    best[o] = value
                    where[o] = position
                tile += 1


def _worker_scratch(shape_v, shape_m, image_size, dtype):
    """This worker thread's chunk buffers, kept between calls (reallocated on a new shape)."""
    key = (shape_v, shape_m, image_size, np.dtype(dtype).str)
    if getattr(_scratch, "key", None) != key:
        _scratch.key = key
        _scratch.v = np.empty(shape_v, dtype)
        _scratch.m = np.empty(shape_m, dtype)
        _scratch.image = np.zeros(image_size, dtype)
    return _scratch.v, _scratch.m, _scratch.image


def conv3x3_maxpool_forward(x, kernel, bias, code, pad_top, pad_left, u, y, argmax):
    """y, argmax = the 2x2 max pool (stride 2) of activation(conv3x3(x, kernel) + bias), as
    im2col + matmul + bias_activation_maxpool give them for ``code`` RELU or LINEAR; the
    conv output that y's windows cover is (2*out_h, 2*out_w) from the input corner
    (-pad_top, -pad_left). ``kernel`` is (3, 3, in, out); ``u`` a (16, in, out) buffer
    for its transform; ``bias`` of length 0 means none."""
    batch, tiles_h, tiles_w, filters = y.shape
    channels = x.shape[3]
    kernel_transform(kernel, u)
    per_image = tiles_h * tiles_w
    images = max(1, CHUNK_TILES // per_image)
    image_size = (2 * tiles_h + 2) * (2 * tiles_w + 2) * channels

    def run(first, stop):
        v, m, image = _worker_scratch((16, images * per_image, channels), (16, images * per_image, filters),
                                      image_size, x.dtype)
        for start in range(first, stop, images):
            end = min(start + images, stop)
            tiles = (end - start) * per_image
            input_transform(x, start, end, pad_top, pad_left, tiles_h, tiles_w, image, v)
            np.matmul(v[:, :tiles], u, out=m[:, :tiles])
            output_maxpool(m, bias, code, start, end, y, argmax)

    for_each_worker(run, batch)
