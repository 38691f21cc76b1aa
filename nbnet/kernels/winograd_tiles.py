"""Winograd F(m x m, r x r) passes of a stride-1 Conv2D in float32, every transform a
lane map (lane_maps.py): F(4x4, 3x3) for 3x3 kernels without a fused pool, F(2x2, 5x5)
for 5x5 kernels, and F(2x2, 3x3)'s input transform for winograd.py's pooled pass.

Each m x m block of outputs comes from the n x n input patch under it (n = m + r - 1):
transformed (B^T d B) per input channel, multiplied position by position with the
transformed kernel (G g G^T) and summed over the input channels (n*n small matmuls, one
per position, in BLAS), then transformed back (A^T m A). F(4x4, 3x3) spends 36 products
on 16 outputs where F(2x2, 3x3) spends 16 on 4: 1.78x fewer multiplies (on sides that are
a multiple of 4; a 14x14 output wastes a quarter of its 4x4 blocks, 1.36x). The backward
pass is the exact adjoint of these steps. Toom-Cook's transforms on the points 0, 1, -1,
2, -2 and infinity (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks",
2016); their coefficients reach 5 (B^T) and 8 (A^T), so results round about 5-10x as
far from im2col's as a direct sum (2e-5 of the outputs' scale; the tests bound it).

The batch is split across the matmul workers (matmul.py), each running its images a
chunk at a time so the chunk's transformed input and products (CHUNK_VALUES) stay in its
core's cache.

Float64 (the reference path of gradient checks) runs winograd.py's and winograd5x5.py's
Numba loops.
"""

import threading

import numpy as np
from numba import njit
from numpy.polynomial import polynomial

from . import l2_cache_bytes
from .conv import crop_image, pad_image
from .lane_maps import LANES, lane_map, masked_lane_map
from .matmul import for_each_worker

# Values (transformed input + products) per chunk, from the core's L2 cache: 0.4 a byte,
# their float32 bytes 1.6x the L2. On the AMD EPYC (1 MB L2 a core) the passes were
# written with 400k (not measured there against other sizes); on the Intel Xeon (2 MB)
# 800k measured faster: forward + backward, BLAS on one thread, ms, 400k -> 800k, two rounds,
# batch 128, 28x28x32 -> 32 (F(4x4)) 24.6 / 24.0 -> 22.1 / 23.5, 14x14x64 -> 64 20.8 / 21.6
# -> 20.6 / 20.3, 16x16x128 -> 128 77.8 / 76.8 -> 70.4 / 73.6; batch 32 14x14x64 -> 64 5.7 /
# 6.3 -> 5.7 / 5.9 (1.2M and 1.6M were no better: 14x14x64 -> 64 21.4 / 20.9); training
# steps b128 (tools/bench_zoo.py, alternating processes) cifar_bn 93.4 / 84.9 -> 83.7 /
# 82.8 ms, cifar 91.3 / 82.3 -> 79.7 / 79.7, kaggle_bn 119 / 106 -> 114 / 108. On an AMD EPYC
# of Zen 3 (512 kB L2 a core, 32 MB L3) the L2's share, 210k, was 10-15 % slower than 500k
# or 800k (one process, alternating, forward + backward, batch 128, ms, 210k / 500k / 800k:
# F(4x4) 14x14x64 -> 64 20.7 / 18.0 / 18.3, 8x8x128 -> 128 29.5 / 24.2 / 24.5, F(2x2)
# 8x8x128 -> 128 36.6 / 33.8 / 33.5; 1.6M no better): the products' GEMMs grow too small
# before the L2 pays. So no fewer than 800k on any core.
MIN_CHUNK_VALUES = 800_000


def chunk_values(l2_bytes):
    """Values a chunk holds on a core with ``l2_bytes`` of L2 cache."""
    return max(MIN_CHUNK_VALUES, l2_bytes * 2 // 5)


CHUNK_VALUES = chunk_values(l2_cache_bytes())


def toom_cook(m, r, points):
    """(A^T, G, B^T) of Winograd's F(m, r) on ``points`` (m + r - 2 distinct values; the
    last point is infinity): for a signal d of m + r - 1 values and a filter g of r, the
    correlation y[i] = sum_k g[k] d[i + k] is A^T ((G g) * (B^T d))."""
    n = m + r - 1
    points = np.asarray(points, np.float64)
    if len(points) != n - 1 or len(set(points.tolist())) != n - 1:
        raise ValueError(f"F({m}, {r}) needs {n - 1} distinct points, received {points.tolist()}.")
    a_t, g, b_t = np.zeros((m, n)), np.zeros((n, r)), np.zeros((n, n))
    for j, point in enumerate(points):
        others = np.delete(points, j)
        a_t[:, j] = point ** np.arange(m)
        g[j] = point ** np.arange(r) / np.prod(point - others)
        b_t[j, :n - 1] = polynomial.polyfromroots(others)  # ascending powers
    a_t[m - 1, n - 1] = g[n - 1, r - 1] = 1.0
    b_t[n - 1] = polynomial.polyfromroots(points)
    return a_t, g, b_t


# The variants, by (m, r). F(2x2, 3x3) takes winograd.py's matrices (its kernel transform
# and pooled output pass are there), the others Toom-Cook's.
F2_3, F4_3, F2_5 = 0, 1, 2
SIZES = {F2_3: (2, 3), F4_3: (4, 3), F2_5: (2, 5)}
_POINTS = (0.0, 1.0, -1.0, 2.0, -2.0)
_MATRICES = {
    F2_3: (np.array([[1, 1, 1, 0], [0, 1, -1, -1]]),
           np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]]),
           np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]])),
    F4_3: toom_cook(4, 3, _POINTS),
    F2_5: toom_cook(2, 5, _POINTS),
}
# (G g G^T)[i, j] = sum over p, q of G[i, p] G[j, q] g[p, q]: one matmul by kron(G, G).
_GG = {variant: np.kron(g, g).astype(np.float32) for variant, (_, g, _) in _MATRICES.items()}


def _maps(variant):
    """(input, adjoint, output, gradient) lane maps, each whole and masked: B^T d B; its
    adjoint B dv B^T, added onto the patch; A^T m A, with a bias and relu (see
    lane_maps.bias_and_relu); its adjoint A E A^T."""
    a_t, _, b_t = _MATRICES[variant]
    pairs = ((b_t, False, False), (b_t.T, True, False), (a_t, False, True), (a_t.T, False, False))
    return [make(matrix, matrix, accumulate, finished) for matrix, accumulate, finished in pairs
            for make in (lane_map, masked_lane_map)]


(_input23, _input23_masked, _adjoint23, _adjoint23_masked, _output23, _output23_masked,
 _gradient23, _gradient23_masked) = _maps(F2_3)
(_input43, _input43_masked, _adjoint43, _adjoint43_masked, _output43, _output43_masked,
 _gradient43, _gradient43_masked) = _maps(F4_3)
(_input25, _input25_masked, _adjoint25, _adjoint25_masked, _output25, _output25_masked,
 _gradient25, _gradient25_masked) = _maps(F2_5)


# Each map over a row of values (channels or filters), LANES at a time and the rest masked.
# The variant is a plain argument: one compiled loop serves all three.
@njit(inline="always")
def _input(variant, source, row, column, target, target_row, target_column, count):
    for c in range(0, count, LANES):
        lanes = min(LANES, count - c)
        s, t = source + 4 * c, target + 4 * c
        if variant == F2_3:
            if lanes == LANES:
                _input23(s, row, column, t, target_row, target_column, lanes)
            else:
                _input23_masked(s, row, column, t, target_row, target_column, lanes)
        elif variant == F4_3:
            if lanes == LANES:
                _input43(s, row, column, t, target_row, target_column, lanes)
            else:
                _input43_masked(s, row, column, t, target_row, target_column, lanes)
        else:
            if lanes == LANES:
                _input25(s, row, column, t, target_row, target_column, lanes)
            else:
                _input25_masked(s, row, column, t, target_row, target_column, lanes)


@njit(inline="always")
def _adjoint(variant, source, row, column, target, target_row, target_column, count):
    for c in range(0, count, LANES):
        lanes = min(LANES, count - c)
        s, t = source + 4 * c, target + 4 * c
        if variant == F2_3:
            if lanes == LANES:
                _adjoint23(s, row, column, t, target_row, target_column, lanes)
            else:
                _adjoint23_masked(s, row, column, t, target_row, target_column, lanes)
        elif variant == F4_3:
            if lanes == LANES:
                _adjoint43(s, row, column, t, target_row, target_column, lanes)
            else:
                _adjoint43_masked(s, row, column, t, target_row, target_column, lanes)
        else:
            if lanes == LANES:
                _adjoint25(s, row, column, t, target_row, target_column, lanes)
            else:
                _adjoint25_masked(s, row, column, t, target_row, target_column, lanes)


@njit(inline="always")
def _output(variant, source, row, column, target, target_row, target_column, count, bias, relu):
    for c in range(0, count, LANES):
        lanes = min(LANES, count - c)
        s, t = source + 4 * c, target + 4 * c
        shift = bias + 4 * c if bias else 0
        if variant == F2_3:
            if lanes == LANES:
                _output23(s, row, column, t, target_row, target_column, lanes, shift, relu)
            else:
                _output23_masked(s, row, column, t, target_row, target_column, lanes, shift, relu)
        elif variant == F4_3:
            if lanes == LANES:
                _output43(s, row, column, t, target_row, target_column, lanes, shift, relu)
            else:
                _output43_masked(s, row, column, t, target_row, target_column, lanes, shift, relu)
        else:
            if lanes == LANES:
                _output25(s, row, column, t, target_row, target_column, lanes, shift, relu)
            else:
                _output25_masked(s, row, column, t, target_row, target_column, lanes, shift, relu)


@njit(inline="always")
def gradient_map(variant, source, row, column, target, target_row, target_column, count):
    for c in range(0, count, LANES):
        lanes = min(LANES, count - c)
        s, t = source + 4 * c, target + 4 * c
        if variant == F2_3:
            if lanes == LANES:
                _gradient23(s, row, column, t, target_row, target_column, lanes)
            else:
                _gradient23_masked(s, row, column, t, target_row, target_column, lanes)
        elif variant == F4_3:
            if lanes == LANES:
                _gradient43(s, row, column, t, target_row, target_column, lanes)
            else:
                _gradient43_masked(s, row, column, t, target_row, target_column, lanes)
        else:
            if lanes == LANES:
                _gradient25(s, row, column, t, target_row, target_column, lanes)
            else:
                _gradient25_masked(s, row, column, t, target_row, target_column, lanes)


def padded_size(variant, tiles_h, tiles_w):
    """(rows, columns) of the zero-bordered image whose n x n patches the blocks read."""
    m, r = SIZES[variant]
    return m * tiles_h + r - 1, m * tiles_w + r - 1


@njit(cache=True, nogil=True)
def input_transform(variant, m, n, x, first, stop, pad_top, pad_left, tiles_h, tiles_w, image, v):
    """v[n*i + j, t, c] = (B^T d B)[i, j] of the n x n patch d of channel c under block t
    (its corner m rows and columns past the previous block's), the blocks of images
    first..stop-1 in row-major order per image. ``image`` is a zeroed buffer of the
    padded size (padded_size) times the channels: each image is copied into it with its
    padding, so no patch needs a bounds check."""
    channels = x.shape[3]
    padded_h, padded_w = m * tiles_h + n - m, m * tiles_w + n - m
    line = padded_w * channels
    position = v.shape[1] * channels
    source, target = image.ctypes.data, v.ctypes.data
    tile = 0
    for image_index in range(first, stop):
        pad_image(x, image_index, pad_top, pad_left, padded_h, padded_w, image)
        for ti in range(tiles_h):
            for tj in range(tiles_w):
                corner = (m * ti * padded_w + m * tj) * channels
                _input(variant, source + 4 * corner, line, channels, target + 4 * tile * channels, n * position,
                       position, channels)
                tile += 1


@njit(cache=True, nogil=True)
def input_transform_adjoint(variant, m, n, dv, first, stop, pad_top, pad_left, tiles_h, tiles_w, dimage, dx):
    """dx[image] = the sum over blocks of B dv B^T, each on its n x n patch: the adjoint of
    input_transform for images first..stop-1. ``dimage`` (the padded image's size) is
    scratch; input pixels no patch reaches get zero."""
    channels = dx.shape[3]
    padded_h, padded_w = m * tiles_h + n - m, m * tiles_w + n - m
    line = padded_w * channels
    position = dv.shape[1] * channels
    source, target = dv.ctypes.data, dimage.ctypes.data
    tile = 0
    for image_index in range(first, stop):
        dimage[:] = 0.0
        for ti in range(tiles_h):
            for tj in range(tiles_w):
                corner = (m * ti * padded_w + m * tj) * channels
                _adjoint(variant, source + 4 * tile * channels, n * position, position, target + 4 * corner, line,
                         channels, channels)
                tile += 1
        crop_image(dimage, image_index, pad_top, pad_left, padded_h, padded_w, dx)


@njit(cache=True, nogil=True)
def output_blocks(variant, m, n, products, first, stop, block, bias, relu, z):
    """z[image, m*ti + r, m*tj + s] = (A^T p A)[r, s] for block (ti, tj) of images
    first..stop-1 and its products p, where that lies inside z: blocks partly outside
    (sides that are not a multiple of m) are written through ``block`` (m*m, filters).
    ``bias`` (length 0: none) added and with ``relu`` the rectifier applied as they are
    stored."""
    out_h, out_w, filters = z.shape[1], z.shape[2], z.shape[3]
    shift = bias.ctypes.data if bias.size else 0
    tiles_h, tiles_w = -(-out_h // m), -(-out_w // m)
    position = products.shape[1] * filters
    tile = 0
    for image_index in range(first, stop):
        for ti in range(tiles_h):
            for tj in range(tiles_w):
                source = products.ctypes.data + 4 * tile * filters
                if m * ti + m <= out_h and m * tj + m <= out_w:
                    corner = ((image_index * out_h + m * ti) * out_w + m * tj) * filters
                    _output(variant, source, n * position, position, z.ctypes.data + 4 * corner, out_w * filters,
                            filters, filters, shift, relu)
                else:
                    _output(variant, source, n * position, position, block.ctypes.data, m * filters, filters, filters,
                            shift, relu)
                    for r in range(min(m, out_h - m * ti)):
                        for s in range(min(m, out_w - m * tj)):
                            target, values = z[image_index, m * ti + r, m * tj + s], block[m * r + s]
                            for o in range(filters):
                                target[o] = values[o]
                tile += 1


@njit(cache=True, nogil=True)
def gradient_blocks(variant, m, n, dz, first, stop, block, products):
    """products[n*a + b, t, o] = (A E A^T)[a, b] for block t's m x m gradient E of the conv
    output (zero past the output's edge, read through ``block`` (m*m, filters)): the
    adjoint of output_blocks."""
    out_h, out_w, filters = dz.shape[1], dz.shape[2], dz.shape[3]
    tiles_h, tiles_w = -(-out_h // m), -(-out_w // m)
    position = products.shape[1] * filters
    tile = 0
    for image_index in range(first, stop):
        for ti in range(tiles_h):
            for tj in range(tiles_w):
                if m * ti + m <= out_h and m * tj + m <= out_w:
                    source = dz.ctypes.data + 4 * (((image_index * out_h + m * ti) * out_w + m * tj) * filters)
                    row = out_w * filters
                else:
                    for r in range(m):
                        for s in range(m):
                            values = block[m * r + s]
                            if m * ti + r < out_h and m * tj + s < out_w:
                                gradients = dz[image_index, m * ti + r, m * tj + s]
                                for o in range(filters):
                                    values[o] = gradients[o]
                            else:
                                for o in range(filters):
                                    values[o] = 0.0
                    source, row = block.ctypes.data, m * filters
                gradient_map(variant, source, row, filters, products.ctypes.data + 4 * tile * filters, n * position,
                          position, filters)
                tile += 1


def kernel_transform(variant, kernel, u):
    """u[n*i + j, c, o] = (G g G^T)[i, j] of each r x r slice g = kernel[:, :, c, o]."""
    np.matmul(_GG[variant], kernel.reshape(kernel.shape[0] * kernel.shape[1], -1), out=u.reshape(u.shape[0], -1))


def positions(variant):
    """n*n: the transformed kernel's first axis."""
    m, r = SIZES[variant]
    return (m + r - 1) ** 2


def chunk_ranges(first, stop, per_image, chunk_tiles):
    """(start, end, blocks) of the chunks of images first..stop-1, ``chunk_tiles`` blocks or
    fewer each (at least one image)."""
    images = max(1, chunk_tiles // per_image)
    for start in range(first, stop, images):
        end = min(start + images, stop)
        yield start, end, (end - start) * per_image


_scratch = threading.local()


def worker_buffers(key, make):
    """This worker thread's buffers for ``key``, made by ``make()`` the first time and kept
    between calls (a model's layers keep theirs)."""
    store = getattr(_scratch, "buffers", None)
    if store is None:
        store = _scratch.buffers = {}
    if key not in store:
        store[key] = make()
    return store[key]


def _geometry(variant, x, z_shape):
    """(m, n, tiles_h, tiles_w, blocks a chunk) of a pass with output shape ``z_shape``."""
    m, r = SIZES[variant]
    n = m + r - 1
    _, out_h, out_w, filters = z_shape
    tiles_h, tiles_w = -(-out_h // m), -(-out_w // m)
    return m, n, tiles_h, tiles_w, max(1, CHUNK_VALUES // (n * n * (x.shape[3] + filters)))


def image_placement(x, pad_top, pad_left):
    """What decides which cells of a zero-bordered image buffer pad_image writes: a
    buffer is kept per placement, as the cells it does not write must stay zero (two
    layers of one block grid, one 'same' and one 'valid', sharing a buffer read each
    other's pixels as padding)."""
    return x.shape[1], x.shape[2], pad_top, pad_left


def _worker_scratch(variant, n, x, tiles_h, tiles_w, filters, chunk_tiles, pad_top, pad_left):
    """This worker thread's chunk buffers (v, products, the padded image, an m*m block)."""
    m = SIZES[variant][0]
    blocks = max(1, chunk_tiles // (tiles_h * tiles_w)) * tiles_h * tiles_w
    # An odd count of blocks a position: the n*n positions of one block then lie on many
    # cache sets. 80 blocks of 64 channels put all 36 of F(4x4, 3x3) 20 KB apart, on one
    # set of the (4 KB-aliased) L1: 14x14x64 -> 64 forward + backward, batch 128, 28.4 ->
    # 24.8 ms, batch 32 8.1 -> 7.3 (its input transform alone 8.9 -> 4.2 ms of thread time).
    blocks += 1 - blocks % 2
    channels = x.shape[3]
    rows, columns = padded_size(variant, tiles_h, tiles_w)
    key = ("winograd", variant, blocks, channels, filters, tiles_h, tiles_w, image_placement(x, pad_top, pad_left))
    return worker_buffers(key, lambda: (
        np.empty((n * n, blocks, channels), np.float32), np.empty((n * n, blocks, filters), np.float32),
        np.zeros(rows * columns * channels, np.float32), np.empty((m * m, filters), np.float32)))


def forward(variant, x, kernel, pad_top, pad_left, u, z, bias=None, relu=False):
    """z = the stride-1 convolution of x by ``kernel`` (r, r, in, out), z of shape (batch,
    out_h, out_w, filters) from the input corner (-pad_top, -pad_left); ``u`` a
    (positions(variant), in, out) buffer for the kernel's transform. With ``bias`` it is
    added, with ``relu`` the rectifier applied, as the output is stored (the same bits
    as bias_activation_forward's pass). Float32."""
    m, n, tiles_h, tiles_w, chunk = _geometry(variant, x, z.shape)
    bias = np.zeros(0, np.float32) if bias is None else np.ascontiguousarray(bias)
    kernel_transform(variant, kernel, u)
    filters = z.shape[3]

    def run(first, stop):
        v, products, image, block = _worker_scratch(variant, n, x, tiles_h, tiles_w, filters, chunk, pad_top, pad_left)
        for start, end, tiles in chunk_ranges(first, stop, tiles_h * tiles_w, chunk):
            input_transform(variant, m, n, x, start, end, pad_top, pad_left, tiles_h, tiles_w, image, v)
            np.matmul(v[:, :tiles], u, out=products[:, :tiles])
            output_blocks(variant, m, n, products, start, end, block, bias, int(relu), z)

    for_each_worker(run, x.shape[0])


def backward(variant, x, kernel, dz, pad_top, pad_left, u, dkernel, need_dx, dx):
    """The backward pass of forward from ``dz`` (the gradient of its output): adds into
    ``dkernel`` (r, r, in, out); with ``need_dx``, writes the input gradient into ``dx``.
    Each worker sums its images' kernel gradients; the sums are added in a fixed order."""
    m, n, tiles_h, tiles_w, chunk = _geometry(variant, x, dz.shape)
    kernel_transform(variant, kernel, u)
    filters = dz.shape[3]
    dz = np.ascontiguousarray(dz)
    u_t = np.ascontiguousarray(u.transpose(0, 2, 1))  # BLAS ran m @ u.T 1.5x slower on the strided view

    def run(first, stop):
        v, products, image, block = _worker_scratch(variant, n, x, tiles_h, tiles_w, filters, chunk, pad_top, pad_left)
        # Keyed by the image's size too: passes of one chunk shape can pad different
        # images (5x5, 16 -> 32: 4 images of 14x14 or one of 28x28 make 197 blocks).
        key = ("winograd backward", variant, v.shape, filters, image.size)
        dv, du_chunk, du, dimage = worker_buffers(key, lambda: (
            np.empty_like(v), np.empty((n * n, v.shape[2], filters), np.float32),
            np.empty((n * n, v.shape[2], filters), np.float32), np.empty_like(image)))
        du[:] = 0
        for start, end, tiles in chunk_ranges(first, stop, tiles_h * tiles_w, chunk):
            input_transform(variant, m, n, x, start, end, pad_top, pad_left, tiles_h, tiles_w, image, v)
            gradient_blocks(variant, m, n, dz, start, end, block, products)
            np.matmul(v[:, :tiles].transpose(0, 2, 1), products[:, :tiles], out=du_chunk)
            du += du_chunk
            if need_dx:
                np.matmul(products[:, :tiles], u_t, out=dv[:, :tiles])
                input_transform_adjoint(variant, m, n, dv, start, end, pad_top, pad_left, tiles_h, tiles_w, dimage,
                                        dx)
        # A copy: the pool may run both parts on one thread, one after the other, and the
        # second would reset the first's sum in this thread's scratch.
        return du.copy()

    sums = for_each_worker(run, x.shape[0])
    du = sums[0]
    for more in sums[1:]:
        du += more
    dkernel += (_GG[variant].T @ du.reshape(n * n, -1)).reshape(dkernel.shape)
