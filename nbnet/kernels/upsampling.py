"""UpSampling2D's kernels (nearest neighbour): each pixel repeated over a (rows, cols)
block, and the gradient summed back over each block. The CUDA twins are in
``cuda/upsampling.py``."""

from numba import njit

from .parallel import parallel_ranges, range_body


@range_body
def _upsample_forward_range(begin, end, x, rows, cols, y):
    batch, out_h, out_w, channels = y.shape
    for n in range(begin, end):
        for i in range(out_h):
            for j in range(out_w):
                source = x[n, i // rows, j // cols]
                out = y[n, i, j]
                for c in range(channels):
                    out[c] = source[c]


@njit(cache=True)
def upsample_forward(x, rows, cols, y):
    """y[n, i, j] = x[n, i // rows, j // cols]."""
    parallel_ranges(_upsample_forward_range, y.shape[0], (x, rows, cols, y))


@range_body
def _upsample_backward_range(begin, end, dy, rows, cols, dx):
    batch, height, width, channels = dx.shape
    for n in range(begin, end):
        for i in range(height):
            for j in range(width):
                out = dx[n, i, j]
                out[:] = 0
                for p in range(rows):
                    for q in range(cols):
                        source = dy[n, i * rows + p, j * cols + q]
                        for c in range(channels):
                            out[c] += source[c]


@njit(cache=True)
def upsample_backward(dy, rows, cols, dx):
    """dx[n, i, j] = the sum of dy over the block that pixel (i, j) filled, in row order."""
    parallel_ranges(_upsample_backward_range, dx.shape[0], (dy, rows, cols, dx))
