"""UpSampling2D's kernels (nearest neighbour): each pixel repeated over a (rows, cols)
block, and the gradient summed back over each block. The CUDA twins are in
``cuda/upsampling.py``."""

from numba import njit, prange


@njit(parallel=True, cache=True)
def upsample_forward(x, rows, cols, y):
    """y[n, i, j] = x[n, i // rows, j // cols]."""
    batch, out_h, out_w, channels = y.shape
    for n in prange(batch):
        for i in range(out_h):
            for j in range(out_w):
                source = x[n, i // rows, j // cols]
                out = y[n, i, j]
                for c in range(channels):
                    out[c] = source[c]


@njit(parallel=True, cache=True)
def upsample_backward(dy, rows, cols, dx):
    """dx[n, i, j] = the sum of dy over the block that pixel (i, j) filled, in row order."""
    batch, height, width, channels = dx.shape
    for n in prange(batch):
        for i in range(height):
            for j in range(width):
                out = dx[n, i, j]
                out[:] = 0
                for p in range(rows):
                    for q in range(cols):
                        source = dy[n, i * rows + p, j * cols + q]
                        for c in range(channels):
                            out[c] += source[c]
