"""Max and average pooling kernels over NHWC arrays, parallel over images.

Max pooling records the flat (h*W + w) index of each window's maximum, so the backward
pass is a scatter that needs no search. Average pooling with 'same' padding divides by
the number of real (unpadded) pixels in the window, as Keras and ONNX (count_include_pad=0) do.
"""

from numba import njit, prange


# Loops run channels innermost: NHWC keeps a pixel's channels contiguous, so each window
# position is one vectorised pass over the channels (4-6x faster than a window per channel).


@njit(parallel=True, cache=True)
def maxpool_forward(x, ph, pw, sh, sw, pad_top, pad_left, y, argmax):
    batch, height, width, channels = x.shape
    _, out_h, out_w, _ = y.shape
    for n in prange(batch):
        for i in range(out_h):
            for j in range(out_w):
                first = True
                for p in range(ph):
                    r = i * sh - pad_top + p
                    if r < 0 or r >= height:
                        continue
                    for q in range(pw):
                        s = j * sw - pad_left + q
                        if s < 0 or s >= width:
                            continue
                        where = r * width + s
                        if first:
                            for c in range(channels):
                                y[n, i, j, c] = x[n, r, s, c]
                                argmax[n, i, j, c] = where
                            first = False
                        else:
                            for c in range(channels):
                                value = x[n, r, s, c]
                                if value > y[n, i, j, c]:  # ties keep the first maximum
                                    y[n, i, j, c] = value
                                    argmax[n, i, j, c] = where


@njit(parallel=True, cache=True)
def maxpool_backward(dy, argmax, dx):
    batch, out_h, out_w, channels = dy.shape
    _, height, width, _ = dx.shape
    for n in prange(batch):
        pixels = dx[n].reshape(height * width, channels)
        pixels[:] = 0
        for i in range(out_h):
            for j in range(out_w):
                for c in range(channels):
                    pixels[argmax[n, i, j, c], c] += dy[n, i, j, c]


@njit(parallel=True, cache=True)
def avgpool_forward(x, ph, pw, sh, sw, pad_top, pad_left, y):
    batch, height, width, channels = x.shape
    _, out_h, out_w, _ = y.shape
    for n in prange(batch):
        for i in range(out_h):
            r0, r1 = max(i * sh - pad_top, 0), min(i * sh - pad_top + ph, height)
            for j in range(out_w):
                s0, s1 = max(j * sw - pad_left, 0), min(j * sw - pad_left + pw, width)
                inverse = x.dtype.type(1.0) / ((r1 - r0) * (s1 - s0))
                for c in range(channels):
                    y[n, i, j, c] = 0
                for r in range(r0, r1):
                    for s in range(s0, s1):
                        for c in range(channels):
                            y[n, i, j, c] += x[n, r, s, c]
                for c in range(channels):
                    y[n, i, j, c] *= inverse


@njit(parallel=True, cache=True)
def avgpool_backward(dy, ph, pw, sh, sw, pad_top, pad_left, dx):
    batch, height, width, channels = dx.shape
    _, out_h, out_w, _ = dy.shape
    for n in prange(batch):
        dx[n] = 0
        for i in range(out_h):
            r0, r1 = max(i * sh - pad_top, 0), min(i * sh - pad_top + ph, height)
            for j in range(out_w):
                s0, s1 = max(j * sw - pad_left, 0), min(j * sw - pad_left + pw, width)
                inverse = dx.dtype.type(1.0) / ((r1 - r0) * (s1 - s0))
                for r in range(r0, r1):
                    for s in range(s0, s1):
                        for c in range(channels):
                            dx[n, r, s, c] += dy[n, i, j, c] * inverse
