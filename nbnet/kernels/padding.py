"""ZeroPadding2D's kernels: copy an NHWC batch into the middle of a zeroed larger one, and
take the middle back out for the gradient. The CUDA twins are in ``cuda/padding.py``."""

from numba import njit

from .parallel import parallel_ranges, range_body


@range_body
def _zero_pad_forward_range(begin, end, x, top, left, y):
    batch, height, width, channels = x.shape
    for n in range(begin, end):
        y[n] = 0
        for r in range(height):
            for s in range(width):
                for c in range(channels):
                    y[n, top + r, left + s, c] = x[n, r, s, c]


@njit(cache=True)
def zero_pad_forward(x, top, left, y):
    parallel_ranges(_zero_pad_forward_range, x.shape[0], (x, top, left, y))


@range_body
def _zero_pad_backward_range(begin, end, dy, top, left, dx):
    batch, height, width, channels = dx.shape
    for n in range(begin, end):
        for r in range(height):
            for s in range(width):
                for c in range(channels):
                    dx[n, r, s, c] = dy[n, top + r, left + s, c]


@njit(cache=True)
def zero_pad_backward(dy, top, left, dx):
    parallel_ranges(_zero_pad_backward_range, dx.shape[0], (dy, top, left, dx))
