"""Conv2D kernels, NHWC activations and Keras's (kh, kw, in, out) kernels.

The convolution is im2col + one BLAS matmul: each output pixel's receptive field is
copied into a row of ``cols`` in (kh, kw, in) order, which is exactly the row order of
the Keras kernel reshaped to (kh*kw*in, out), so the matmul yields NHWC output directly.
The matmuls run in NumPy's BLAS, called from Python between kernels (see matmul.py), so
that Numba's threads and BLAS's threads never run at the same time, and SciPy is not needed.
"""

import numpy as np
from numba import njit

from . import REDUCTION_CHUNKS
from .matmul import add_transposed_product, matmul
from .parallel import parallel_ranges, range_body
from .pool import maxpool_activation_backward_image, maxpool_activation_image


def same_padding(size, kernel, stride):
    """Keras/TensorFlow 'same' padding: (output size, pad before, pad after); the extra
    pixel of an odd total goes at the end."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return out, total // 2, total - total // 2


def output_geometry(height, width, window, strides, padding):
    """(out_h, out_w, pad_top, pad_left) for a ``window`` moved by ``strides``."""
    (kh, kw), (sh, sw) = window, strides
    if padding == "same":
        out_h, top, _ = same_padding(height, kh, sh)
        out_w, left, _ = same_padding(width, kw, sw)
        return out_h, out_w, top, left
    return (height - kh) // sh + 1, (width - kw) // sw + 1, 0, 0


@range_body
def _im2col_range(begin, end, x, kh, kw, sh, sw, pad_top, pad_left, out_h, out_w, cols):
    batch, height, width, channels = x.shape
    zero = x.dtype.type(0.0)
    for n in range(begin, end):
        for i in range(out_h):
            for j in range(out_w):
                row = (n * out_h + i) * out_w + j
                for p in range(kh):
                    y = i * sh - pad_top + p
                    for q in range(kw):
                        xx = j * sw - pad_left + q
                        base = (p * kw + q) * channels
                        if 0 <= y < height and 0 <= xx < width:
                            for c in range(channels):
                                cols[row, base + c] = x[n, y, xx, c]
                        else:
                            for c in range(channels):
                                cols[row, base + c] = zero


@njit(cache=True)
def im2col(x, kh, kw, sh, sw, pad_top, pad_left, out_h, out_w, cols):
    """cols[(n*out_h + i)*out_w + j, (p*kw + q)*C + c] = x[n, i*sh - pad_top + p, j*sw - pad_left + q, c],
    zero where the window overhangs the border."""
    parallel_ranges(_im2col_range, x.shape[0], (x, kh, kw, sh, sw, pad_top, pad_left, out_h, out_w, cols))


@range_body
def _col2im_range(begin, end, dcols, kh, kw, sh, sw, pad_top, pad_left, out_h, out_w, dx):
    batch, height, width, channels = dx.shape
    for n in range(begin, end):
        dx[n] = 0
        for i in range(out_h):
            for j in range(out_w):
                row = (n * out_h + i) * out_w + j
                for p in range(kh):
                    y = i * sh - pad_top + p
                    if y < 0 or y >= height:
                        continue
                    for q in range(kw):
                        xx = j * sw - pad_left + q
                        if xx < 0 or xx >= width:
                            continue
                        base = (p * kw + q) * channels
                        for c in range(channels):
                            dx[n, y, xx, c] += dcols[row, base + c]


@njit(cache=True)
def col2im(dcols, kh, kw, sh, sw, pad_top, pad_left, out_h, out_w, dx):
    """The adjoint of im2col: dx = sum of every column entry back onto the pixel it came
    from. Parallel over images only, so no two threads ever add into the same pixel."""
    parallel_ranges(_col2im_range, dx.shape[0], (dcols, kh, kw, sh, sw, pad_top, pad_left, out_h, out_w, dx))


# Up to this receptive field (kh*kw*in) a direct loop beats im2col + BLAS: the product is
# too thin for BLAS to run fast, and im2col would write the input out kh*kw times. The
# MNIST CNN's first layer (3x3x1 = 9) measured 3.4 ms -> 1 ms per step forward and backward.
DIRECT_MAX_FIELD = 16


def direct_applies(channels, field, filters):
    """Whether the direct loop beats im2col + BLAS for this conv: small fields (above), and
    first layers on 1-3 channels with 16-32 filters up to a 7x7x1 field. Measured at batch
    128 on 2 cores (forward and backward, ms, im2col -> direct): 7x7x1 -> 16 filters
    19.6 -> 14.2, 5x5x1 -> 32 16.0 -> 11.5, 3x3x3 -> 32 20.4 -> 16.7; with 6 filters, 64
    filters or 75-tap fields im2col stays ahead (5x5x1 -> 6 7.8 vs 9.8, 3x3x3 -> 64 29 vs
    34, 5x5x3 -> 32 37 vs 41). Conv2D asks planar.applies first, which takes the stride-1
    5x5 and 7x7 ones; this loop keeps 3x3 first layers and strided ones."""
    return field <= DIRECT_MAX_FIELD or (channels <= 3 and 16 <= filters <= 32 and field <= 49)

# How the direct kernels get vectorised (2-2.5x the plain loops). LLVM vectorises only an
# innermost loop whose trip count is not a small constant (those it unrolls; Numba runs no
# SLP vectoriser), so the filters loop holds a taps loop that unrolls away: it has a fixed
# _TAP_GROUP taps (the field padded with zero taps to whole groups), which also keeps a
# window's sum in a register. Rows of weights or of gradient partial sums sit
# _FILTER_BLOCK apart in flat arrays: a row stride known at compile time proves the rows
# disjoint, where a 2-D array's runtime stride costs a runtime alias check per row on
# every pixel, or no vectorisation at all. The image is copied into a zero-bordered
# buffer, so no tap needs a bounds check, and each window into a small array (one alias
# check, its loads hoisted); those copies index with unsigned integers, which spares them
# Numba's negative-index wraparound. 9 taps fit 3x3x1 exactly; a second, 16-tap copy of
# the loops would roughly double the compile time, for fields of 10-16 only.
_TAP_GROUP = 9
_FILTER_BLOCK = 32
# The argmax argument of the shared direct kernels when no max pool is fused.
_NO_ARGMAX = np.zeros((0, 0, 0, 0), np.int32)


# In NumPy: compiled, this setup cost 0.6 s of a cold start (the direct backward's); it
# runs once a call, 25 us (the MNIST CNN's first layer: of a 12 ms step).
def _direct_setup(x, kernel2d, kh, kw, sh, sw, out_h, out_w):
    """(padded_h, padded_w, taps, offsets, packed): the zero-bordered image's size, the
    field rounded up to whole tap groups, each tap's offset in the image from its window's
    corner (0 for a padding tap), and the kernel as (filter block, tap, _FILTER_BLOCK)
    rows, zero for padding taps and past the last filter."""
    channels = x.shape[3]
    field, filters = kernel2d.shape
    padded_h, padded_w = (out_h - 1) * sh + kh, (out_w - 1) * sw + kw
    taps = -(-field // _TAP_GROUP) * _TAP_GROUP
    offsets = np.zeros(taps, np.uintp)
    rows, columns, depth = np.meshgrid(np.arange(kh), np.arange(kw), np.arange(channels), indexing="ij")
    offsets[:field] = ((rows * padded_w + columns) * channels + depth).reshape(-1)
    blocks = -(-filters // _FILTER_BLOCK)
    padded = np.zeros((taps, blocks * _FILTER_BLOCK), x.dtype)
    padded[:field, :filters] = kernel2d
    packed = np.ascontiguousarray(padded.reshape(taps, blocks, _FILTER_BLOCK).transpose(1, 0, 2)).reshape(-1)
    return padded_h, padded_w, taps, offsets, packed


# The copies index each pixel's channels with unsigned integers: from signed ones Numba's
# negative-index wraparound kept them scalar. 28x28x32 images, 7 a pass, 64 -> 20 us.
@njit(inline="always")
def pad_image(x, n, pad_top, pad_left, padded_h, padded_w, image):
    """Copies x[n] into ``image`` at (pad_top, pad_left); the border keeps its zeros."""
    height, width, channels = x.shape[1:]
    run = np.uint64(channels)
    columns = np.uint64(max(0, min(width, padded_w - pad_left)))
    for y in range(min(height, padded_h - pad_top)):
        line = np.uint64(((y + pad_top) * padded_w + pad_left) * channels)
        for xx in range(np.uint64(0), columns):
            base = line + xx * run
            for c in range(np.uint64(0), run):
                image[base + c] = x[n, y, xx, c]


@njit(inline="always")
def crop_image(dimage, n, pad_top, pad_left, padded_h, padded_w, dx):
    """dx[n] = the padded image's gradient ``dimage`` without its padding (the adjoint of
    pad_image); input pixels past the padded image get zero."""
    height, width, channels = dx.shape[1], dx.shape[2], dx.shape[3]
    zero = dx.dtype.type(0.0)
    run = np.uint64(channels)
    columns = np.uint64(max(0, min(width, padded_w - pad_left)))
    for row in range(height):
        if row + pad_top >= padded_h:
            dx[n, row] = zero
            continue
        line = np.uint64(((row + pad_top) * padded_w + pad_left) * channels)
        for col in range(np.uint64(0), columns):
            base = line + col * run
            for c in range(np.uint64(0), run):
                dx[n, row, col, c] = dimage[base + c]
        for col in range(columns, np.uint64(width)):
            for c in range(np.uint64(0), run):
                dx[n, row, col, c] = zero


@njit(inline="always")
def _load_window(image, corner, offsets, window):
    """window = the image values under the window at ``corner``, one group of taps; a
    padding tap (offset 0) reads the corner, which its zero weight cancels."""
    for t in range(_TAP_GROUP):
        window[t] = image[corner + offsets[t]]


# 'contract' lets LLVM fuse each multiply-add into an FMA; nothing is reordered. The
# per-image helpers are compiled apart from the parallel kernels that call them.
@njit(cache=True, fastmath={"contract"})
def _direct_forward_image(image, offsets, packed, taps, sh, sw, padded_w, channels, out_h, out_w, window, z):
    """z[i*out_w + j, o] = the window at (i, j) of the zero-bordered ``image`` times the
    kernel (no bias), a block of filters at a time in one vector pass per window."""
    filters = z.shape[1]
    zero = z.dtype.type(0.0)
    # One pass over the image per filter block and tap group (one for the MNIST CNN),
    # so their slices are taken once, not per pixel. A slice's indices count from 0:
    # LLVM sees them non-negative, so no wraparound (which turns vector loads into gathers).
    for start in range(0, filters, _FILTER_BLOCK):
        stop = min(start + _FILTER_BLOCK, filters)
        for group in range(0, taps, _TAP_GROUP):
            group_offsets = offsets[group:group + _TAP_GROUP]
            weights = packed[start * taps + group * _FILTER_BLOCK:]
            for i in range(out_h):
                for j in range(out_w):
                    _load_window(image, np.uintp((i * sh * padded_w + j * sw) * channels), group_offsets, window)
                    out = z[i * out_w + j, start:stop]
                    for m in range(stop - start):
                        total = zero
                        for t in range(_TAP_GROUP):
                            total += window[t] * weights[t * _FILTER_BLOCK + m]
                        if group:
                            total += out[m]
                        out[m] = total


@njit(cache=True)
def _direct_conv_images(first, stop, x, offsets, packed, taps, bias, code, sh, sw, pad_top, pad_left, padded_h,
                        padded_w, out_h, out_w, ph, pw, pooled, z, y, argmax):
    """Images first..stop-1 of direct_conv_forward, or with ``pooled`` of
    direct_conv_maxpool_forward (each image's rows then go to a one-image buffer)."""
    channels, filters = x.shape[3], z.shape[1]
    pixels = out_h * out_w
    image = np.zeros(padded_h * padded_w * channels, x.dtype)
    window = np.empty(_TAP_GROUP, x.dtype)
    image_z = np.empty((pixels if pooled else 0, filters), x.dtype)
    for n in range(first, stop):
        pad_image(x, n, pad_top, pad_left, padded_h, padded_w, image)
        rows = image_z if pooled else z[n * pixels:(n + 1) * pixels]
        _direct_forward_image(image, offsets, packed, taps, sh, sw, padded_w, channels, out_h, out_w, window, rows)
        if pooled:
            maxpool_activation_image(rows.reshape(out_h, out_w, filters), bias, code, ph, pw, y[n], argmax[n])


# One parallel kernel for both forward passes (a body of one call, shared), so the
# MNIST CNN's first layer and an unpooled direct conv compile the same code once. (Splitting
# the images over the matmul workers instead also saved compile time, but waking a worker
# costs about 0.1 ms where Numba's threads spin: forward + backward at batch 32 took 0.55 ->
# 0.82 ms.)
@njit(cache=True)
def _direct_conv(x, offsets, packed, taps, bias, code, sh, sw, pad_top, pad_left, padded_h, padded_w, out_h, out_w, ph,
                 pw, pooled, z, y, argmax):
    parallel_ranges(_direct_conv_images, x.shape[0], (x, offsets, packed, taps, bias, code, sh, sw, pad_top, pad_left,
                                                      padded_h, padded_w, out_h, out_w, ph, pw, pooled, z, y, argmax))


def direct_conv_forward(x, kernel2d, kh, kw, sh, sw, pad_top, pad_left, out_h, out_w, z):
    """z[(n*out_h + i)*out_w + j, o] = sum over the window of x * kernel (no bias)."""
    padded_h, padded_w, taps, offsets, packed = _direct_setup(x, kernel2d, kh, kw, sh, sw, out_h, out_w)
    _direct_conv(x, offsets, packed, taps, kernel2d[0, :0], 0, sh, sw, pad_top, pad_left, padded_h, padded_w,
                 out_h, out_w, 1, 1, False, z, x[:0], _NO_ARGMAX)


def direct_conv_maxpool_forward(x, kernel2d, bias, code, kh, kw, sh, sw, pad_top, pad_left, out_h, out_w, ph, pw,
                                y, argmax):
    """direct_conv_forward, then pool.bias_activation_maxpool, one image at a time: the
    conv-sized output exists only as one image's rows (in cache), never for the batch."""
    padded_h, padded_w, taps, offsets, packed = _direct_setup(x, kernel2d, kh, kw, sh, sw, out_h, out_w)
    _direct_conv(x, offsets, packed, taps, bias, code, sh, sw, pad_top, pad_left, padded_h, padded_w, out_h,
                 out_w, ph, pw, True, kernel2d[:0], y, argmax)


# 'reassoc' lets LLVM vectorise each sum over filters (several partial sums, added up at
# the end): still one fixed order for given shapes, whatever the thread count.
@njit(cache=True, fastmath={"contract", "reassoc"})
def _direct_dx_image(dz, packed, offsets, field, taps, sh, sw, pad_top, pad_left, out_h, out_w, padded_h, padded_w,
                     dimage, dx):
    """dx (H, W, C) = one image's gradient rows ``dz`` spread back through the kernel,
    summed in the zero-bordered ``dimage`` (so no tap needs a bounds check), then copied out."""
    height, width, channels = dx.shape
    filters = dz.shape[1]
    zero = dx.dtype.type(0.0)
    dimage[:] = zero
    for i in range(out_h):
        for j in range(out_w):
            corner = np.uintp((i * sh * padded_w + j * sw) * channels)
            row = i * out_w + j
            for t in range(field):
                total = zero
                for start in range(0, filters, _FILTER_BLOCK):
                    grads = dz[row, start:min(start + _FILTER_BLOCK, filters)]
                    weights = packed[start * taps + t * _FILTER_BLOCK:]
                    for m in range(grads.size):
                        total += grads[m] * weights[m]
                dimage[corner + offsets[t]] += total
    for y in range(height):
        for xx in range(width):
            py, px = y + pad_top, xx + pad_left
            inside = py < padded_h and px < padded_w
            for c in range(channels):
                dx[y, xx, c] = dimage[(py * padded_w + px) * channels + c] if inside else zero


# 'contract' as in _direct_forward_image; the partial sums keep their order.
@njit(cache=True, fastmath={"contract"})
def _direct_dkernel_image(image, dz, offsets, taps, sh, sw, padded_w, channels, out_h, out_w, window, window_b,
                          no_grads, sums):
    """sums (laid out as ``packed``) += the window-by-gradient products of one image,
    ``dz`` its gradient rows."""
    filters = dz.shape[1]
    for start in range(0, filters, _FILTER_BLOCK):
        stop = min(start + _FILTER_BLOCK, filters)
        for group in range(0, taps, _TAP_GROUP):
            group_offsets = offsets[group:group + _TAP_GROUP]
            block = sums[start * taps + group * _FILTER_BLOCK:]
            for i in range(out_h):
                # Two pixels at a time: each partial sum is loaded and stored once for
                # both (an odd row's last pixel pairs with itself, at zero gradient).
                for j in range(0, out_w, 2):
                    pair = j + 1 < out_w
                    corner = np.uintp((i * sh * padded_w + j * sw) * channels)
                    _load_window(image, corner, group_offsets, window)
                    _load_window(image, corner + np.uintp(sw * channels) if pair else corner, group_offsets, window_b)
                    row = i * out_w + j
                    grads = dz[row, start:stop]
                    grads_b = dz[row + 1, start:stop] if pair else no_grads[:stop - start]
                    for m in range(stop - start):
                        grad, grad_b = grads[m], grads_b[m]
                        for t in range(_TAP_GROUP):
                            block[t * _FILTER_BLOCK + m] += window[t] * grad + window_b[t] * grad_b


@njit(cache=True)
def _direct_backward_chunks(first, stop, x, dz, dy, argmax, y, code, field, sh, sw, pad_top, pad_left, padded_h,
                            padded_w, out_h, out_w, ph, pw, taps, offsets, packed, pooled, partial, bias_partial,
                            need_dx, dx):
    """Chunks first..stop-1 of _direct_backward: each adds its images' products into its own
    row of ``partial`` (laid out as ``packed``) and ``bias_partial``."""
    batch, channels = x.shape[0], x.shape[3]
    filters = bias_partial.shape[1]
    size = padded_h * padded_w * channels
    pixels = out_h * out_w
    image = np.zeros(size, x.dtype)
    dimage = np.empty(size if need_dx else 0, x.dtype)
    window = np.empty(_TAP_GROUP, x.dtype)
    window_b = np.empty(_TAP_GROUP, x.dtype)
    no_grads = np.zeros(_FILTER_BLOCK, x.dtype)
    image_dz = np.empty((pixels if pooled else 0, filters), x.dtype)
    chunks = partial.shape[0]
    for chunk in range(first, stop):
        for n in range(chunk * batch // chunks, (chunk + 1) * batch // chunks):
            pad_image(x, n, pad_top, pad_left, padded_h, padded_w, image)
            if pooled:
                maxpool_activation_backward_image(dy[n], argmax[n], y[n], code, ph, pw,
                                                  image_dz.reshape(out_h, out_w, filters), bias_partial[chunk])
                rows = image_dz
            else:
                rows = dz[n * pixels:(n + 1) * pixels]
            _direct_dkernel_image(image, rows, offsets, taps, sh, sw, padded_w, channels, out_h, out_w, window,
                                  window_b, no_grads, partial[chunk])
            if need_dx:
                _direct_dx_image(rows, packed, offsets, field, taps, sh, sw, pad_top, pad_left, out_h, out_w, padded_h,
                                 padded_w, dimage, dx[n])


@njit(cache=True)
def _direct_backward_pass(x, dz, dy, argmax, y, code, field, sh, sw, pad_top, pad_left, padded_h, padded_w, out_h,
                          out_w, ph, pw, taps, offsets, packed, pooled, partial, bias_partial, need_dx, dx):
    parallel_ranges(_direct_backward_chunks, partial.shape[0],
                    (x, dz, dy, argmax, y, code, field, sh, sw, pad_top, pad_left, padded_h, padded_w, out_h, out_w, ph,
                     pw, taps, offsets, packed, pooled, partial, bias_partial, need_dx, dx))


def _direct_backward(x, kernel2d, dz, dy, argmax, y, code, kh, kw, sh, sw, pad_top, pad_left, out_h, out_w, ph, pw,
                     pooled, dkernel2d, dbias, need_dx, dx):
    """direct_conv_backward, and with ``pooled`` its fusion with a max pool: each image's
    gradient rows are then made from the pooled gradient ``dy`` (see
    pool.maxpool_activation_backward) into a one-image buffer instead of read from ``dz``.
    Partial sums per fixed chunk of images: no race, and a result that does not depend
    on the thread count."""
    field, filters = kernel2d.shape
    padded_h, padded_w, taps, offsets, packed = _direct_setup(x, kernel2d, kh, kw, sh, sw, out_h, out_w)
    chunks = min(REDUCTION_CHUNKS, x.shape[0])
    partial = np.zeros((chunks, packed.size), dtype=x.dtype)
    bias_partial = np.zeros((chunks, filters), dtype=x.dtype)
    _direct_backward_pass(x, dz, dy, argmax, y, code, field, sh, sw, pad_top, pad_left, padded_h, padded_w, out_h, out_w,
                          ph, pw, taps, offsets, packed, pooled, partial, bias_partial, need_dx, dx)
    # packed (filter block, tap, filter in block) back to (tap, filter)
    blocks = packed.size // (taps * _FILTER_BLOCK)
    unpacked = partial.reshape(chunks, blocks, taps, _FILTER_BLOCK).transpose(0, 2, 1, 3).reshape(chunks, taps, -1)
    for chunk in range(chunks):
        dkernel2d += unpacked[chunk, :field, :filters]
        if pooled and dbias.shape[0] > 0:
            dbias += bias_partial[chunk]


def direct_conv_backward(x, kernel2d, dz, kh, kw, sh, sw, pad_top, pad_left, out_h, out_w, dkernel2d, need_dx, dx):
    """dkernel2d += the window-by-gradient products summed over the batch; with
    ``need_dx``, dx = the gradient ``dz`` spread back through the kernel."""
    idle4, idle1 = x[:0], kernel2d[:0, 0]
    _direct_backward(x, kernel2d, dz, idle4, _NO_ARGMAX, idle4, 0, kh, kw, sh, sw, pad_top, pad_left,
                     out_h, out_w, 1, 1, False, dkernel2d, idle1, need_dx, dx)


def direct_conv_maxpool_backward(x, kernel2d, dy, argmax, y, code, kh, kw, sh, sw, pad_top, pad_left, out_h, out_w,
                                 ph, pw, dkernel2d, dbias, need_dx, dx):
    """The backward pass of direct_conv_maxpool_forward from the pooled gradient ``dy``:
    adds into ``dkernel2d`` and ``dbias`` (length 0: none); with ``need_dx``, writes dx."""
    _direct_backward(x, kernel2d, kernel2d[:0], dy, argmax, y, code, kh, kw, sh, sw, pad_top, pad_left, out_h,
                     out_w, ph, pw, True, dkernel2d, dbias, need_dx, dx)


def conv2d_backward(cols, kernel2d, dz, geometry, dkernel2d, scratch, dcols, dx):
    """Adds the kernel gradient into ``dkernel2d`` (``scratch``: see
    matmul.add_transposed_product) from ``dz``, the gradient before the activation;
    ``dcols`` may be ``cols`` itself. Writes the input gradient into ``dx`` unless ``dx``
    is None (a first layer needs none)."""
    add_transposed_product(cols, dz, dkernel2d, scratch)
    if dx is not None:
        matmul(dz, kernel2d.T, out=dcols)
        col2im(dcols, *geometry, dx)
