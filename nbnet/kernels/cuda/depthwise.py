"""CUDA twins of ``nbnet.kernels.depthwise``: the depthwise passes and the grouped
im2col/col2im, same names and argument order, over NHWC device arrays.

Forward runs one thread per output value. Backward, the kernel gradient is a two-pass
reduction over row chunks (``chunking``, then ``add_partials``), and the input gradient
gathers per input pixel every (output pixel, tap) that read it, so no two threads write
one value and no atomics are needed; grouped_col2im gathers the same way. Geometry tuples
are the CPU's: (kh, kw, sh, sw, dh, dw, pad_top, pad_left, out_h, out_w).
"""

from numba import cuda

from . import as_scalar, chunking, launch_1d, workspace
from .activations import add_partials
from .gemm import matmul
from .pool import nhwc_index


@cuda.jit
def _depthwise_forward_kernel(x, kernel, kh, kw, sh, sw, dh, dw, pad_top, pad_left, out_h, out_w, zero, z):
    batch, height, width, channels = x.shape
    rows, outs = z.shape
    mult = outs // channels
    for idx in range(cuda.grid(1), rows * outs, cuda.gridsize(1)):
        row = idx // outs
        o = idx - row * outs
        c = o // mult
        j = row % out_w
        i = (row // out_w) % out_h
        n = row // (out_w * out_h)
        total = zero
        for p in range(kh):
            y = i * sh - pad_top + p * dh
            if y < 0 or y >= height:
                continue
            for q in range(kw):
                xx = j * sw - pad_left + q * dw
                if 0 <= xx < width:
                    total += x[n, y, xx, c] * kernel[p, q, o]
        z[row, o] = total


def depthwise_forward(x, kernel, kh, kw, sh, sw, dh, dw, pad_top, pad_left, out_h, out_w, z):
    """z[(n*out_h + i)*out_w + j, c*M + m] = the depthwise convolution (no bias); one
    thread per output value."""
    size = z.shape[0] * z.shape[1]
    if size == 0:
        return
    blocks, threads = launch_1d(size)
    _depthwise_forward_kernel[blocks, threads](x, kernel, kh, kw, sh, sw, dh, dw, pad_top, pad_left, out_h, out_w,
                                               as_scalar(0.0, x.dtype), z)


@cuda.jit
def _depthwise_dkernel_partials_kernel(x, dz, kh, kw, sh, sw, dh, dw, pad_top, pad_left, out_h, out_w, zero, partial):
    """partial[chunk, (p*kw + q)*outs + o] = the chunk's rows' sum of tap (p, q)'s input
    value times dz[:, o]."""
    batch, height, width, channels = x.shape
    rows, outs = dz.shape
    mult = outs // channels
    chunks, cells = partial.shape
    for idx in range(cuda.grid(1), chunks * cells, cuda.gridsize(1)):
        chunk = idx // cells
        cell = idx - chunk * cells
        tap = cell // outs
        o = cell - tap * outs
        c = o // mult
        q = tap % kw
        p = tap // kw
        acc = zero
        for row in range(chunk * rows // chunks, (chunk + 1) * rows // chunks):
            j = row % out_w
            i = (row // out_w) % out_h
            n = row // (out_w * out_h)
            y = i * sh - pad_top + p * dh
            xx = j * sw - pad_left + q * dw
            if 0 <= y < height and 0 <= xx < width:
                acc += x[n, y, xx, c] * dz[row, o]
        partial[chunk, cell] = acc


@cuda.jit
def _depthwise_dx_kernel(dz, kernel, kh, kw, sh, sw, dh, dw, pad_top, pad_left, out_h, out_w, zero, dx):
    batch, height, width, channels = dx.shape
    mult = dz.shape[1] // channels
    for idx in range(cuda.grid(1), batch * height * width * channels, cuda.gridsize(1)):
        n, y, xx, c = nhwc_index(idx, height, width, channels)
        acc = zero
        # Output positions in increasing (i, j) order, as the CPU kernel adds them.
        for p in range(kh - 1, -1, -1):
            t = y + pad_top - p * dh
            if t < 0 or t % sh != 0:
                continue
            i = t // sh
            if i >= out_h:
                continue
            for q in range(kw - 1, -1, -1):
                u = xx + pad_left - q * dw
                if u < 0 or u % sw != 0:
                    continue
                j = u // sw
                if j >= out_w:
                    continue
                row = (n * out_h + i) * out_w + j
                total = zero
                for m in range(mult):
                    total += dz[row, c * mult + m] * kernel[p, q, c * mult + m]
                acc += total
        dx[n, y, xx, c] = acc


def depthwise_backward(x, kernel, dz, kh, kw, sh, sw, dh, dw, pad_top, pad_left, out_h, out_w, dkernel, need_dx, dx):
    """dkernel (kh, kw, C*M) += the kernel gradient (two-pass: chunk partials, then added
    in order); with ``need_dx``, dx (overwritten) = the input gradient, gathered per pixel."""
    rows, cells = dz.shape[0], dkernel.size
    if rows and cells:
        chunks = chunking(rows)
        partial = workspace("depthwise.partial", (chunks, cells), dz.dtype)
        blocks, threads = launch_1d(chunks * cells)
        _depthwise_dkernel_partials_kernel[blocks, threads](x, dz, kh, kw, sh, sw, dh, dw, pad_top, pad_left, out_h,
                                                            out_w, as_scalar(0.0, dz.dtype), partial)
        add_partials(partial, dkernel.reshape(cells))
    if need_dx and dx is not None and dx.size:
        blocks, threads = launch_1d(dx.size)
        _depthwise_dx_kernel[blocks, threads](dz, kernel, kh, kw, sh, sw, dh, dw, pad_top, pad_left, out_h, out_w,
                                              as_scalar(0.0, dx.dtype), dx)


@cuda.jit
def _grouped_im2col_kernel(x, kh, kw, sh, sw, dh, dw, pad_top, pad_left, out_h, out_w, zero, cols):
    batch, height, width, channels = x.shape
    groups, rows, depth = cols.shape
    per_group = channels // groups
    for idx in range(cuda.grid(1), groups * rows * depth, cuda.gridsize(1)):
        col = idx % depth
        row = (idx // depth) % rows
        g = idx // (depth * rows)
        j = row % out_w
        i = (row // out_w) % out_h
        n = row // (out_w * out_h)
        c = col % per_group
        q = (col // per_group) % kw
        p = col // (per_group * kw)
        y = i * sh - pad_top + p * dh
        xx = j * sw - pad_left + q * dw
        if 0 <= y < height and 0 <= xx < width:
            cols[g, row, col] = x[n, y, xx, g * per_group + c]
        else:
            cols[g, row, col] = zero


def grouped_im2col(x, kh, kw, sh, sw, dh, dw, pad_top, pad_left, out_h, out_w, cols):
    """cols[g, (n*out_h + i)*out_w + j, (p*kw + q)*Cg + c] = x[n, i*sh - pad_top + p*dh,
    j*sw - pad_left + q*dw, g*Cg + c], zero where the tap is outside; one thread per entry."""
    if cols.size == 0:
        return
    blocks, threads = launch_1d(cols.size)
    _grouped_im2col_kernel[blocks, threads](x, kh, kw, sh, sw, dh, dw, pad_top, pad_left, out_h, out_w,
                                            as_scalar(0.0, x.dtype), cols)


@cuda.jit
def _grouped_col2im_kernel(dcols, kh, kw, sh, sw, dh, dw, pad_top, pad_left, out_h, out_w, zero, dx):
    batch, height, width, channels = dx.shape
    per_group = channels // dcols.shape[0]
    for idx in range(cuda.grid(1), batch * height * width * channels, cuda.gridsize(1)):
        n, y, xx, channel = nhwc_index(idx, height, width, channels)
        g = channel // per_group
        c = channel - g * per_group
        total = zero
        for p in range(kh - 1, -1, -1):
            t = y + pad_top - p * dh
            if t < 0 or t % sh != 0:
                continue
            i = t // sh
            if i >= out_h:
                continue
            for q in range(kw - 1, -1, -1):
                u = xx + pad_left - q * dw
                if u < 0 or u % sw != 0:
                    continue
                j = u // sw
                if j >= out_w:
                    continue
                total += dcols[g, (n * out_h + i) * out_w + j, (p * kw + q) * per_group + c]
        dx[n, y, xx, channel] = total


def grouped_col2im(dcols, kh, kw, sh, sw, dh, dw, pad_top, pad_left, out_h, out_w, dx):
    """The adjoint of grouped_im2col: dx (overwritten), one thread per pixel, gathering."""
    if dx.size == 0:
        return
    blocks, threads = launch_1d(dx.size)
    _grouped_col2im_kernel[blocks, threads](dcols, kh, kw, sh, sw, dh, dw, pad_top, pad_left, out_h, out_w,
                                            as_scalar(0.0, dx.dtype), dx)


def grouped_conv_forward(x, kernel2d, geometry, cols, z):
    """z (rows, filters) = the grouped convolution (no bias), one tiled GEMM per group."""
    grouped_im2col(x, *geometry, cols)
    groups, per = cols.shape[0], kernel2d.shape[1] // cols.shape[0]
    for g in range(groups):
        matmul(cols[g], kernel2d[:, g * per:(g + 1) * per], z[:, g * per:(g + 1) * per])


def grouped_conv_backward(cols, kernel2d, dz, geometry, dkernel2d, scratch, need_dx, dx):
    """As the CPU's: the kernel gradient accumulates in place (``scratch`` is unused); with
    ``need_dx`` each group's column gradient overwrites its columns, then col2im."""
    groups, per = cols.shape[0], kernel2d.shape[1] // cols.shape[0]
    for g in range(groups):
        part = slice(g * per, (g + 1) * per)
        matmul(cols[g], dz[:, part], dkernel2d[:, part], trans_a=True, accumulate=True)
        if need_dx:
            matmul(dz[:, part], kernel2d[:, part], cols[g], trans_b=True)
    if need_dx:
        grouped_col2im(cols, *geometry, dx)
