"""CUDA twins of ``nbnet.kernels.conv``: im2col, col2im and the Conv2D passes, over NHWC
device arrays and Keras's (kh, kw, in, out) kernel viewed as (kh*kw*in, out).

im2col runs one thread per ``cols`` entry. col2im runs one thread per input pixel, which
*gathers* every column entry that came from it (in the CPU kernel's (i, j) order, so the
sums match it), so no two threads write one pixel and no atomics are needed. The matmuls
use the tiled kernel in ``gemm``. The direct convolution (small receptive fields, no
im2col) runs one thread per output value forward; backward, the kernel gradient is a
two-pass reduction over row chunks and the input gradient gathers per pixel like col2im.
Geometry tuples are the CPU path's: (kh, kw, sh, sw, pad_top, pad_left, out_h, out_w).
"""

from numba import cuda

from . import as_scalar, chunking, launch_1d, workspace
from .activations import add_partials
from .gemm import matmul
from .pool import bias_activation_maxpool, maxpool_activation_backward, nhwc_index


@cuda.jit
def _im2col_kernel(x, kh, kw, sh, sw, pad_top, pad_left, out_h, out_w, zero, cols):
    batch, height, width, channels = x.shape
    rows, depth = cols.shape
    for idx in range(cuda.grid(1), rows * depth, cuda.gridsize(1)):
        row = idx // depth
        col = idx - row * depth
        j = row % out_w
        i = (row // out_w) % out_h
        n = row // (out_w * out_h)
        c = col % channels
        q = (col // channels) % kw
        p = col // (channels * kw)
        y = i * sh - pad_top + p
        xx = j * sw - pad_left + q
        if 0 <= y < height and 0 <= xx < width:
            cols[row, col] = x[n, y, xx, c]
        else:
            cols[row, col] = zero


def im2col(x, kh, kw, sh, sw, pad_top, pad_left, out_h, out_w, cols):
    """cols[(n*out_h + i)*out_w + j, (p*kw + q)*C + c] = x[n, i*sh - pad_top + p, j*sw - pad_left + q, c],
    zero where the window overhangs the border."""
    size = cols.shape[0] * cols.shape[1]
    if size == 0:
        return
    blocks, threads = launch_1d(size)
    _im2col_kernel[blocks, threads](x, kh, kw, sh, sw, pad_top, pad_left, out_h, out_w,
                                    as_scalar(0.0, x.dtype), cols)


@cuda.jit
def _col2im_kernel(dcols, kh, kw, sh, sw, pad_top, pad_left, out_h, out_w, zero, dx):
    batch, height, width, channels = dx.shape
    for idx in range(cuda.grid(1), batch * height * width * channels, cuda.gridsize(1)):
        n, y, xx, c = nhwc_index(idx, height, width, channels)
        total = zero
        # Window rows p from the last down to 0 visit output rows i in increasing order
        # (and likewise q, j), the order the CPU kernel adds in.
        for p in range(kh - 1, -1, -1):
            t = y + pad_top - p
            if t < 0 or t % sh != 0:
                continue
            i = t // sh
            if i >= out_h:
                continue
            for q in range(kw - 1, -1, -1):
                u = xx + pad_left - q
                if u < 0 or u % sw != 0:
                    continue
                j = u // sw
                if j >= out_w:
                    continue
                total += dcols[(n * out_h + i) * out_w + j, (p * kw + q) * channels + c]
        dx[n, y, xx, c] = total


def col2im(dcols, kh, kw, sh, sw, pad_top, pad_left, out_h, out_w, dx):
    """The adjoint of im2col: dx = sum of every column entry back onto the pixel it came
    from (dx is overwritten). One thread per pixel, gathering, so no atomics."""
    size = dx.size
    if size == 0:
        return
    blocks, threads = launch_1d(size)
    _col2im_kernel[blocks, threads](dcols, kh, kw, sh, sw, pad_top, pad_left, out_h, out_w,
                                    as_scalar(0.0, dx.dtype), dx)


@cuda.jit
def _direct_conv_forward_kernel(x, kernel2d, kh, kw, sh, sw, pad_top, pad_left, out_h, out_w, zero, z):
    batch, height, width, channels = x.shape
    rows, filters = z.shape
    for idx in range(cuda.grid(1), rows * filters, cuda.gridsize(1)):
        row = idx // filters
        o = idx - row * filters
        j = row % out_w
        i = (row // out_w) % out_h
        n = row // (out_w * out_h)
        total = zero
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
                    total += x[n, r, s, c] * kernel2d[base + c, o]
        z[row, o] = total


def direct_conv_forward(x, kernel2d, kh, kw, sh, sw, pad_top, pad_left, out_h, out_w, z):
    """z[(n*out_h + i)*out_w + j, o] = sum over the window of x * kernel (no bias); one
    thread per output value."""
    size = z.shape[0] * z.shape[1]
    if size == 0:
        return
    blocks, threads = launch_1d(size)
    _direct_conv_forward_kernel[blocks, threads](x, kernel2d, kh, kw, sh, sw, pad_top, pad_left, out_h, out_w,
                                                 as_scalar(0.0, x.dtype), z)


@cuda.jit
def _direct_conv_dkernel_partials_kernel(x, dz, kh, kw, sh, sw, pad_top, pad_left, out_h, out_w, zero, partial):
    """partial[chunk, k*filters + o] = the chunk's rows' sum of window value k times dz[:, o]."""
    batch, height, width, channels = x.shape
    rows, filters = dz.shape
    chunks, cells = partial.shape
    for idx in range(cuda.grid(1), chunks * cells, cuda.gridsize(1)):
        chunk = idx // cells
        cell = idx - chunk * cells
        k = cell // filters
        o = cell - k * filters
        c = k % channels
        q = (k // channels) % kw
        p = k // (channels * kw)
        acc = zero
        for row in range(chunk * rows // chunks, (chunk + 1) * rows // chunks):
            j = row % out_w
            i = (row // out_w) % out_h
            n = row // (out_w * out_h)
            r = i * sh - pad_top + p
            s = j * sw - pad_left + q
            if 0 <= r < height and 0 <= s < width:
                acc += x[n, r, s, c] * dz[row, o]
        partial[chunk, cell] = acc


@cuda.jit
def _direct_conv_dx_kernel(dz, kernel2d, kh, kw, sh, sw, pad_top, pad_left, out_h, out_w, zero, dx):
    batch, height, width, channels = dx.shape
    filters = dz.shape[1]
    for idx in range(cuda.grid(1), batch * height * width * channels, cuda.gridsize(1)):
        n, r, s, c = nhwc_index(idx, height, width, channels)
        acc = zero
        # Output positions in increasing (i, j) order, as the CPU kernel adds them.
        for p in range(kh - 1, -1, -1):
            t = r + pad_top - p
            if t < 0 or t % sh != 0:
                continue
            i = t // sh
            if i >= out_h:
                continue
            for q in range(kw - 1, -1, -1):
                u = s + pad_left - q
                if u < 0 or u % sw != 0:
                    continue
                j = u // sw
                if j >= out_w:
                    continue
                row = (n * out_h + i) * out_w + j
                base = (p * kw + q) * channels + c
                total = zero
                for o in range(filters):
                    total += dz[row, o] * kernel2d[base, o]
                acc += total
        dx[n, r, s, c] = acc


def direct_conv_backward(x, kernel2d, dz, kh, kw, sh, sw, pad_top, pad_left, out_h, out_w, dkernel2d, need_dx, dx):
    """dkernel2d += the window-by-gradient products summed over the batch (two-pass:
    chunk partials, then added in order); with ``need_dx``, dx (overwritten) = the gradient
    spread back through the kernel, gathered per input pixel. ``dz`` is the gradient
    before the activation (rows, filters), as on the CPU."""
    field, filters = kernel2d.shape
    rows = dz.shape[0]
    if rows and field * filters:
        chunks = chunking(rows)
        partial = workspace("conv.direct_partial", (chunks, field * filters), dz.dtype)
        blocks, threads = launch_1d(chunks * field * filters)
        _direct_conv_dkernel_partials_kernel[blocks, threads](x, dz, kh, kw, sh, sw, pad_top, pad_left, out_h, out_w,
                                                              as_scalar(0.0, dz.dtype), partial)
        add_partials(partial, dkernel2d.reshape(field * filters))
    if need_dx and dx is not None and dx.size:
        blocks, threads = launch_1d(dx.size)
        _direct_conv_dx_kernel[blocks, threads](dz, kernel2d, kh, kw, sh, sw, pad_top, pad_left, out_h, out_w,
                                                as_scalar(0.0, dx.dtype), dx)


def conv2d_backward(cols, kernel2d, dz, geometry, dkernel2d, scratch, dcols, dx):
    """Adds the kernel gradient into ``dkernel2d`` from ``dz``, the gradient before the
    activation; writes the input gradient into ``dx`` unless ``dx`` is None (a first layer
    needs none). ``scratch`` is unused (the kernel gradient accumulates straight into
    ``dkernel2d``); kept for the CPU signature."""
    matmul(cols, dz, dkernel2d, trans_a=True, accumulate=True)
    if dx is not None:
        matmul(dz, kernel2d, dcols, trans_b=True)
        col2im(dcols, *geometry, dx)


def direct_conv_maxpool_forward(x, kernel2d, bias, code, kh, kw, sh, sw, pad_top, pad_left, out_h, out_w, ph, pw,
                                y, argmax):
    """direct_conv_forward, then pool.bias_activation_maxpool (the CPU kernel fuses them
    per image to keep the conv output in cache; here it passes through a workspace)."""
    z = workspace("conv.direct_pool_z", (x.shape[0], out_h, out_w, kernel2d.shape[1]), x.dtype)
    direct_conv_forward(x, kernel2d, kh, kw, sh, sw, pad_top, pad_left, out_h, out_w,
                        z.reshape(z.size // kernel2d.shape[1], kernel2d.shape[1]))
    bias_activation_maxpool(z, bias, code, ph, pw, y, argmax)


def direct_conv_maxpool_backward(x, kernel2d, dy, argmax, y, code, kh, kw, sh, sw, pad_top, pad_left, out_h, out_w,
                                 ph, pw, dkernel2d, dbias, need_dx, dx):
    """The backward pass of direct_conv_maxpool_forward from the pooled gradient ``dy``."""
    dz = workspace("conv.direct_pool_z", (x.shape[0], out_h, out_w, kernel2d.shape[1]), x.dtype)
    maxpool_activation_backward(dy, argmax, y, code, ph, pw, dz, dbias)
    direct_conv_backward(x, kernel2d, dz.reshape(dz.size // kernel2d.shape[1], kernel2d.shape[1]), kh, kw, sh, sw,
                         pad_top, pad_left, out_h, out_w, dkernel2d, need_dx, dx)
