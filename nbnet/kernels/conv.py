"""Conv2D kernels, NHWC activations and Keras's (kh, kw, in, out) kernels.

The convolution is im2col + one BLAS matmul: each output pixel's receptive field is
copied into a row of ``cols`` in (kh, kw, in) order, which is exactly the row order of
the Keras kernel reshaped to (kh*kw*in, out), so the matmul yields NHWC output directly.
The matmuls run in NumPy's BLAS, called from Python between kernels (see matmul.py), so
that Numba's threads and BLAS's threads never run at the same time, and SciPy is not needed.
"""

import numpy as np
from numba import njit, prange

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


def conv2d_backward(cols, kernel2d, y, dy, geometry, code, alpha, dkernel2d, dbias, scratch, dcols, dx):
    """Adds the kernel and bias gradients into ``dkernel2d``/``dbias`` (``scratch``: see
    matmul.add_transposed_product); writes the input
    gradient into ``dx`` unless ``dx`` is None (a first layer needs none). ``dy`` is
    overwritten with the gradient before the activation."""
    dz = dy.reshape(-1, kernel2d.shape[1])
    activation_backward(y.reshape(dz.shape), dz, code, alpha, dz, dbias)
    add_transposed_product(cols, dz, dkernel2d, scratch)
    if dx is not None:
        matmul(dz, kernel2d.T, out=dcols)
        col2im(dcols, *geometry, dx)
