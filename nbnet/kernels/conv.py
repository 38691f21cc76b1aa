"""Conv2D kernels, NHWC activations and Keras's (kh, kw, in, out) kernels.

The convolution is im2col + one BLAS matmul: each output pixel's receptive field is
copied into a row of ``cols`` in (kh, kw, in) order, which is exactly the row order of
the Keras kernel reshaped to (kh*kw*in, out), so the matmul yields NHWC output directly.
The matmuls run in NumPy's BLAS, called from Python between kernels (see matmul.py), so
that Numba's threads and BLAS's threads never run at the same time, and SciPy is not needed.
"""

import numpy as np
from numba import njit, prange

from . import REDUCTION_CHUNKS
from .activations import activation_backward
from .matmul import add_transposed_product, matmul


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


@njit(parallel=True, cache=True)
def im2col(x, kh, kw, sh, sw, pad_top, pad_left, out_h, out_w, cols):
    """cols[(n*out_h + i)*out_w + j, (p*kw + q)*C + c] = x[n, i*sh - pad_top + p, j*sw - pad_left + q, c],
    zero where the window overhangs the border."""
    batch, height, width, channels = x.shape
    zero = x.dtype.type(0.0)
    for n in prange(batch):
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


@njit(parallel=True, cache=True)
def col2im(dcols, kh, kw, sh, sw, pad_top, pad_left, out_h, out_w, dx):
    """The adjoint of im2col: dx = sum of every column entry back onto the pixel it came
    from. Parallel over images only, so no two threads ever add into the same pixel."""
    batch, height, width, channels = dx.shape
    for n in prange(batch):
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


# Up to this receptive field (kh*kw*in) a direct loop beats im2col + BLAS: the product is
# too thin for BLAS to run fast, and im2col would write the input out kh*kw times. The
# MNIST CNN's first layer (3x3x1 = 9) measured 3.4 ms -> 1 ms per step forward and backward.
DIRECT_MAX_FIELD = 16


@njit(parallel=True, cache=True)
def direct_conv_forward(x, kernel2d, kh, kw, sh, sw, pad_top, pad_left, out_h, out_w, z):
    """z[(n*out_h + i)*out_w + j, o] = sum over the window of x * kernel (no bias), the
    filters innermost so each input value updates all of them in one vector pass."""
    batch, height, width, channels = x.shape
    filters = kernel2d.shape[1]
    for n in prange(batch):
        for i in range(out_h):
            for j in range(out_w):
                row = (n * out_h + i) * out_w + j
                for o in range(filters):
                    z[row, o] = 0
                for p in range(kh):
                    r = i * sh - pad_top + p
                    if r < 0 or r >= height:
                        continue
                    for q in range(kw):
                        s = j * sw - pad_left + q
                        if s < 0 or s >= width:
                            continue
                        base = (p * kw + q) * channels
                        for c in range(channels):
                            value = x[n, r, s, c]
                            for o in range(filters):
                                z[row, o] += value * kernel2d[base + c, o]


@njit(parallel=True, cache=True)
def direct_conv_backward(x, kernel2d, dz, kh, kw, sh, sw, pad_top, pad_left, out_h, out_w, dkernel2d, need_dx, dx):
    """dkernel2d += the window-by-gradient products summed over the batch (partial sums
    per fixed chunk of images, so no race and a thread-count-independent result); with
    ``need_dx``, dx = the gradient spread back through the kernel (each image its own)."""
    batch, height, width, channels = x.shape
    field, filters = kernel2d.shape
    chunks = min(REDUCTION_CHUNKS, batch)
    partial = np.zeros((chunks, field, filters), dtype=x.dtype)
    for chunk in prange(chunks):
        for n in range(chunk * batch // chunks, (chunk + 1) * batch // chunks):
            if need_dx:
                dx[n] = 0
            for i in range(out_h):
                for j in range(out_w):
                    row = (n * out_h + i) * out_w + j
                    for p in range(kh):
                        r = i * sh - pad_top + p
                        if r < 0 or r >= height:
                            continue
                        for q in range(kw):
                            s = j * sw - pad_left + q
                            if s < 0 or s >= width:
                                continue
                            base = (p * kw + q) * channels
                            for c in range(channels):
                                value = x[n, r, s, c]
                                for o in range(filters):
                                    partial[chunk, base + c, o] += value * dz[row, o]
                                if need_dx:
                                    total = x.dtype.type(0.0)
                                    for o in range(filters):
                                        total += dz[row, o] * kernel2d[base + c, o]
                                    dx[n, r, s, c] += total
    for chunk in range(chunks):
        for k in range(field):
            for o in range(filters):
                dkernel2d[k, o] += partial[chunk, k, o]


def conv2d_backward(cols, kernel2d, y, dy, geometry, code, alpha, dkernel2d, dbias, scratch, dcols, dx):
    """Adds the kernel and bias gradients into ``dkernel2d``/``dbias`` (``scratch``: see
    matmul.add_transposed_product); ``dcols`` may be ``cols`` itself. Writes the input
    gradient into ``dx`` unless ``dx`` is None (a first layer needs none). ``dy`` is
    overwritten with the gradient before the activation."""
    dz = dy.reshape(-1, kernel2d.shape[1])
    activation_backward(y.reshape(dz.shape), dz, code, alpha, dz, dbias)
    add_transposed_product(cols, dz, dkernel2d, scratch)
    if dx is not None:
        matmul(dz, kernel2d.T, out=dcols)
        col2im(dcols, *geometry, dx)
