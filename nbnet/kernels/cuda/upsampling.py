"""CUDA twins of ``nbnet.kernels.upsampling``: one thread per output element (forward)
or per input element (backward, summing its block in the CPU kernel's order)."""

from numba import cuda

from . import as_scalar, launch_1d


@cuda.jit
def _upsample_forward_kernel(x, rows, cols, y):
    batch, out_h, out_w, channels = y.shape
    for idx in range(cuda.grid(1), batch * out_h * out_w * channels, cuda.gridsize(1)):
        c = idx % channels
        j = (idx // channels) % out_w
        i = (idx // (channels * out_w)) % out_h
        n = idx // (channels * out_w * out_h)
        y[n, i, j, c] = x[n, i // rows, j // cols, c]


@cuda.jit
def _upsample_backward_kernel(dy, rows, cols, zero, dx):
    batch, height, width, channels = dx.shape
    for idx in range(cuda.grid(1), batch * height * width * channels, cuda.gridsize(1)):
        c = idx % channels
        j = (idx // channels) % width
        i = (idx // (channels * width)) % height
        n = idx // (channels * width * height)
        total = zero
        for p in range(rows):
            for q in range(cols):
                total += dy[n, i * rows + p, j * cols + q, c]
        dx[n, i, j, c] = total


def upsample_forward(x, rows, cols, y):
    if y.size:
        blocks, threads = launch_1d(y.size)
        _upsample_forward_kernel[blocks, threads](x, rows, cols, y)


def upsample_backward(dy, rows, cols, dx):
    if dx.size:
        blocks, threads = launch_1d(dx.size)
        _upsample_backward_kernel[blocks, threads](dy, rows, cols, as_scalar(0.0, dx.dtype), dx)
