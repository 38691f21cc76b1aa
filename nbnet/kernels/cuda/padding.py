"""CUDA twins of ``nbnet.kernels.padding``: one thread per element of the larger array
(forward: zero or the input pixel it holds) or of the gradient (backward)."""

from numba import cuda

from . import launch_1d


@cuda.jit
def _zero_pad_forward_kernel(x, top, left, y):
    batch, out_h, out_w, channels = y.shape
    height, width = x.shape[1], x.shape[2]
    for idx in range(cuda.grid(1), batch * out_h * out_w * channels, cuda.gridsize(1)):
        c = idx % channels
        s = (idx // channels) % out_w
        r = (idx // (channels * out_w)) % out_h
        n = idx // (channels * out_w * out_h)
        inside = top <= r < top + height and left <= s < left + width
        y[n, r, s, c] = x[n, r - top, s - left, c] if inside else 0


@cuda.jit
def _zero_pad_backward_kernel(dy, top, left, dx):
    batch, height, width, channels = dx.shape
    for idx in range(cuda.grid(1), batch * height * width * channels, cuda.gridsize(1)):
        c = idx % channels
        s = (idx // channels) % width
        r = (idx // (channels * width)) % height
        n = idx // (channels * width * height)
        dx[n, r, s, c] = dy[n, top + r, left + s, c]


def zero_pad_forward(x, top, left, y):
    if y.size:
        blocks, threads = launch_1d(y.size)
        _zero_pad_forward_kernel[blocks, threads](x, top, left, y)


def zero_pad_backward(dy, top, left, dx):
    if dx.size:
        blocks, threads = launch_1d(dx.size)
        _zero_pad_backward_kernel[blocks, threads](dy, top, left, dx)
