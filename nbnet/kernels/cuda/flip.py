"""CUDA twin of ``nbnet.kernels.flip``."""

from numba import cuda

from . import launch_1d


@cuda.jit
def _flip_kernel(x, flips, horizontal, vertical, y):
    batch, height, width, channels = x.shape
    for idx in range(cuda.grid(1), batch * height * width * channels, cuda.gridsize(1)):
        c = idx % channels
        j = (idx // channels) % width
        i = (idx // (channels * width)) % height
        n = idx // (channels * width * height)
        flip = flips[n] != 0
        source_i = height - 1 - i if flip and vertical else i
        source_j = width - 1 - j if flip and horizontal else j
        y[n, i, j, c] = x[n, source_i, source_j, c]


def flip_images(x, flips, horizontal, vertical, y):
    """y[n] = x[n] mirrored where flips[n] is nonzero (see the CPU kernel)."""
    if x.size:
        blocks, threads = launch_1d(x.size)
        _flip_kernel[blocks, threads](x, flips, bool(horizontal), bool(vertical), y)
