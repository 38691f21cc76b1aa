"""Max and average pooling kernels over NHWC arrays, parallel over images.

Max pooling records the flat (h*W + w) index of each window's maximum, so the backward
pass is a scatter that needs no search. Average pooling with 'same' padding divides by
the number of real (unpadded) pixels in the window, as Keras and ONNX (count_include_pad=0) do.
"""

import numpy as np
from numba import njit, prange


@njit(parallel=True, cache=True)
def maxpool_forward(x, ph, pw, sh, sw, pad_top, pad_left, y, argmax):
    batch, height, width, channels = x.shape
    _, out_h, out_w, _ = y.shape
    for n in prange(batch):
        for i in range(out_h):
            for j in range(out_w):
                for c in range(channels):
                    best = -np.inf
                    where = -1
                    for p in range(ph):
                        r = i * sh - pad_top + p
                        if r < 0 or r >= height:
                            continue
                        for q in range(pw):
                            s = j * sw - pad_left + q
                            if s < 0 or s >= width:
                                continue
                            value = x[n, r, s, c]
                            if value > best or where < 0:
                                best = value
                                where = r * width + s
                    y[n, i, j, c] = best
                    argmax[n, i, j, c] = where


@njit(parallel=True, cache=True)
def maxpool_backward(dy, argmax, dx):
    batch, out_h, out_w, channels = dy.shape
    width = dx.shape[2]
    for n in prange(batch):
        dx[n] = 0
        for i in range(out_h):
            for j in range(out_w):
                for c in range(channels):
                    where = argmax[n, i, j, c]
                    dx[n, where // width, where % width, c] += dy[n, i, j, c]


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
                    total = x.dtype.type(0.0)
                    for r in range(r0, r1):
                        for s in range(s0, s1):
                            total += x[n, r, s, c]
                    y[n, i, j, c] = total * inverse


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
                for c in range(channels):
                    share = dy[n, i, j, c] * inverse
                    for r in range(r0, r1):
                        for s in range(s0, s1):
                            dx[n, r, s, c] += share
