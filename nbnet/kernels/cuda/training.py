"""CUDA twins of ``nbnet.kernels.training`` (batch gathering, the divergence check, the
accuracy count) plus ``fill_zero``, which the CPU does with ``ndarray.fill``: the kernels
that keep a whole training step on the GPU, so only the per-step totals cross back, once
per log interval."""

import numpy as np
from numba import cuda

from . import launch_1d, workspace
from .losses import sum_float64


@cuda.jit
def _fill_zero_kernel(values, zero):
    for i in range(cuda.grid(1), values.shape[0], cuda.gridsize(1)):
        values[i] = zero


def fill_zero(values):
    """values[:] = 0 for a 1-D device array (the gradient vector before each step)."""
    n = values.shape[0]
    if n:
        blocks, threads = launch_1d(n)
        _fill_zero_kernel[blocks, threads](values, values.dtype.type(0))


@cuda.jit
def _gather_rows_kernel(source, order, start, out):
    rows, width = out.shape
    for idx in range(cuda.grid(1), rows * width, cuda.gridsize(1)):
        i = idx // width
        k = idx - i * width
        out[i, k] = source[order[start + i], k]


def gather_rows(source, order, start, out):
    """out[i] = source[order[start + i]] for every row of ``out`` (2-D views, a sample a row)."""
    size = out.shape[0] * out.shape[1]
    if size:
        blocks, threads = launch_1d(size)
        _gather_rows_kernel[blocks, threads](source, order, start, out)


@cuda.jit
def _check_finite_kernel(values, total, step, halt):
    # Every thread that sees a NaN or Inf writes the same step number, so the unordered
    # writes need no atomics; a halt from an earlier launch is never overwritten.
    if halt[0] != 0:
        return
    start = cuda.grid(1)
    if start == 0 and total[0] * 0.0 != 0.0:
        halt[0] = step
    for i in range(start, values.shape[0], cuda.gridsize(1)):
        if values[i] * 0.0 != 0.0:
            halt[0] = step


def check_finite(values, total, step, halt):
    """Sets halt[0] = step when ``total[0]`` or any of ``values`` is NaN or Inf, unless an
    earlier step already halted (the optimizer kernels then skip their updates)."""
    blocks, threads = launch_1d(values.shape[0])
    _check_finite_kernel[blocks, threads](values, total, step, halt)


@cuda.jit
def _correct_rows_kernel(outputs, labels, rows, threshold, hits):
    count, width = outputs.shape
    sparse = labels.shape[0] > 0
    for i in range(cuda.grid(1), count, cuda.gridsize(1)):
        if width == 1 and not sparse:
            hits[i] = 1.0 if (outputs[i, 0] > threshold) == (rows[i, 0] > 0.5) else 0.0
            continue
        best = 0
        for k in range(1, width):
            if outputs[i, k] > outputs[i, best]:
                best = k
        expected = 0
        if sparse:
            expected = labels[i]
        else:
            for k in range(1, width):
                if rows[i, k] > rows[i, expected]:
                    expected = k
        hits[i] = 1.0 if best == expected else 0.0


def count_correct(outputs, labels, rows, threshold, out):
    """out[0] = how many predictions are right (see the CPU kernel), summed on the device."""
    count = outputs.shape[0]
    hits = workspace("training.hits", count, np.float64)
    if count:
        blocks, threads = launch_1d(count)
        _correct_rows_kernel[blocks, threads](outputs, labels, rows, float(threshold), hits)
    sum_float64(hits, out)


@cuda.jit
def _add_into_kernel(total, values):
    for i in range(cuda.grid(1), total.shape[0], cuda.gridsize(1)):
        total[i] += values[i]


def add_into(total, values):
    """total += values (1-D device views of one size)."""
    n = total.shape[0]
    if n:
        blocks, threads = launch_1d(n)
        _add_into_kernel[blocks, threads](total, values)
