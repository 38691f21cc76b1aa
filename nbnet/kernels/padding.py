"""ZeroPadding2D's kernels: copy an NHWC batch into the middle of a zeroed larger one, and
take the middle back out for the gradient. The CUDA twins are in ``cuda/padding.py``."""

from numba import njit, prange


@njit(parallel=True, cache=True)
def zero_pad_forward(x, top, left, y):
    batch, height, width, channels = x.shape
    for n in prange(batch):
        y[n] = 0
        for r in range(height):
            for s in range(width):
                for c in range(channels):
                    y[n, top + r, left + s, c] = x[n, r, s, c]


@njit(parallel=True, cache=True)
def zero_pad_backward(dy, top, left, dx):
    batch, height, width, channels = dx.shape
    for n in prange(batch):
        for r in range(height):
            for s in range(width):
                for c in range(channels):
                    dx[n, r, s, c] = dy[n, top + r, left + s, c]
