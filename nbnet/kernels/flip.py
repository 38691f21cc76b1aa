"""RandomFlip's kernel: chosen images mirrored left-right and/or top-bottom."""

from numba import njit

from .parallel import parallel_ranges, range_body


@range_body
def _flip_images_range(begin, end, x, flips, horizontal, vertical, y):
    height, width, channels = x.shape[1], x.shape[2], x.shape[3]
    for n in range(begin, end):
        flip = flips[n] != 0
        for i in range(height):
            source_i = height - 1 - i if flip and vertical else i
            for j in range(width):
                source_j = width - 1 - j if flip and horizontal else j
                # Value by value: an array assigned to an array slice compiles Numba's
                # general broadcasting copy, seconds of compile time.
                for c in range(channels):
                    y[n, i, j, c] = x[n, source_i, source_j, c]


@njit(cache=True)
def flip_images(x, flips, horizontal, vertical, y):
    """y[n] = x[n] mirrored along its width (``horizontal``) and/or height (``vertical``)
    where flips[n] is nonzero, else a copy; (N, H, W, C) arrays, ``y`` apart from ``x``.
    Mirroring is its own inverse, so the backward pass is the same call on the gradient."""
    parallel_ranges(_flip_images_range, x.shape[0], (x, flips, horizontal, vertical, y))
