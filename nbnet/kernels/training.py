"""The training loop's own kernels, beyond the layers': gathering a shuffled batch, the
divergence check and the accuracy count. Their CUDA twins (``kernels/cuda/training.py``)
let a whole step stay on the GPU; on the CPU they also spare the per-step temporaries
that the NumPy spellings (``np.take``, ``np.isfinite(...).all()``, ``argmax``) allocate."""

import numpy as np
from numba import njit

from ..threads import numba_thread_count
from .parallel import parallel_ranges, range_body


@njit(cache=True)
def gather_rows(source, order, start, out):
    """out[i] = source[order[start + i]] for every row of ``out`` (2-D views, a sample a row)."""
    # Spelled as loops: a casting slice assignment (uint8 pixels into float32) costs ~1 s
    # of compile time, the loops ~0.2 s.
    for i in range(out.shape[0]):
        row = source[order[start + i]]
        for j in range(out.shape[1]):
            out[i, j] = row[j]


# From this many values the finite check and the gradients' zero fill run on every thread:
# one core read 670k gradients (the MLP 784-512-512-10's) in 0.14 ms and zeroed them in
# 0.18 (NumPy's fill). Training steps at batch 32, ms, in one process, five rounds
# (medians): mlp 2.38 -> 2.29, wide_mlp 3.62 -> 3.38, tf_mnist_5x5 19.5 -> 18.8; deep_mlp
# (120k weights) and seed_cnn even. Below, a parallel region's start (some 2 us) costs more.
PARALLEL_MIN_VALUES = 1 << 16


def check_finite(values, total, step, halt):
    """Sets halt[0] = step when ``total[0]`` (the step's loss) or any of ``values`` (the
    gradients) is NaN or Inf, unless an earlier step already halted. The optimizer kernels
    skip their update while halt[0] != 0, so the weights stay those of the last good step."""
    if values.shape[0] < PARALLEL_MIN_VALUES:
        _check_finite(values, total, step, halt)
    elif halt[0] == 0 and not (np.isfinite(total[0]) and _all_finite_parallel(values)):
        halt[0] = step


@njit(cache=True)
def _check_finite(values, total, step, halt):
    if halt[0] != 0:
        return
    if not (np.isfinite(total[0]) and all_finite(values)):
        halt[0] = step


def values_finite(values):
    """all_finite, on every thread from PARALLEL_MIN_VALUES values. (A parallel kernel
    called from a compiled one cannot be cached: the choice is made here.)"""
    return all_finite(values) if values.shape[0] < PARALLEL_MIN_VALUES else _all_finite_parallel(values)


# 'reassoc' lets LLVM keep several partial sums (a vectorised reduction: 1.7M gradients in
# 0.15 ms instead of 1.4); NaN and Inf still reach the probe in any order.
@njit(cache=True, fastmath={"reassoc"})
def all_finite(values):
    """Whether every value of the 1-D ``values`` is finite. Inf * 0 and NaN * 0 are NaN, so
    one NaN-propagating sum (which vectorises, unlike an early-exit loop) tells; in the
    values' own type (16 float32 lanes a vector)."""
    zero = values.dtype.type(0.0)
    probe = zero
    for i in range(values.shape[0]):
        probe += values[i] * zero
    return probe == zero


def _all_finite_parallel(values):
    """all_finite, a part of ``values`` a thread (the parts' probes, NaN or not, then summed)."""
    probes = np.empty(numba_thread_count(), np.float64)
    _probe_parts(values, probes)
    return probes.sum() == 0.0


# The probes come in as an argument: a parallel kernel that allocates an array of
# numba.get_num_threads() values was refused by Numba's disk cache ("uses dynamic globals").
@range_body(fastmath={"reassoc"})
def _probe_parts_range(begin, end, values, probes):
    parts = probes.shape[0]
    count = values.shape[0]
    zero = values.dtype.type(0.0)
    for part in range(begin, end):
        probe = zero
        # Unsigned bounds: see parallel.py (a signed start kept the loop scalar).
        for i in range(np.uint64(part * count // parts), np.uint64((part + 1) * count // parts)):
            probe += values[i] * zero
        probes[part] = probe


@njit(cache=True)
def _probe_parts(values, probes):
    parallel_ranges(_probe_parts_range, probes.shape[0], (values, probes))


def fill_zero(values):
    """values[:] = 0 (1-D), on every thread from PARALLEL_MIN_VALUES values."""
    if values.shape[0] < PARALLEL_MIN_VALUES:
        values.fill(0)
    else:
        _fill_zero_parallel(values)


@range_body
def _fill_zero_range(begin, end, values):
    zero = values.dtype.type(0.0)
    for i in range(np.uint64(begin), np.uint64(end)):
        values[i] = zero


@njit(cache=True)
def _fill_zero_parallel(values):
    parallel_ranges(_fill_zero_range, values.shape[0], (values,))


@njit(cache=True)
def count_correct(outputs, labels, rows, threshold, out):
    """out[0] = how many predictions are right: the argmax of each row of ``outputs``
    against ``labels`` (class ids, when non-empty) or against the argmax of ``rows``
    (one-hot targets); for a single output unit, output > threshold against row > 0.5."""
    count, width = outputs.shape
    correct = 0.0
    for i in range(count):
        if width == 1 and labels.shape[0] == 0:
            correct += 1.0 if (outputs[i, 0] > threshold) == (rows[i, 0] > 0.5) else 0.0
            continue
        best = 0
        for k in range(1, width):
            if outputs[i, k] > outputs[i, best]:
                best = k
        if labels.shape[0] > 0:
            expected = labels[i]
        else:
            expected = 0
            for k in range(1, width):
                if rows[i, k] > rows[i, expected]:
                    expected = k
        correct += 1.0 if best == expected else 0.0
    out[0] = correct


@njit(cache=True)
def add_into(total, values):
    """total += values (1-D views of one size): the gradient of a tensor that feeds
    several layers, summed as each layer's backward hands its share back."""
    for i in range(total.shape[0]):
        total[i] += values[i]
