"""A product of a few rows by a matrix: a Dense layer's forward in a predict of one image
or a few, with its bias and activation in the same kernel.

There BLAS makes a matrix-vector product on one core (BLAS is held to one thread, see
threads.py; kernels/matmul.py splits a product only from 2 rows a core), and one core
streams the weights from memory at 13-25 GB/s on this VM: a one-image predict of an MLP
784-512-512-10 spent most of its time waiting on 2.6 MB of weights. Here the weights are
cut in two along the inner axis, and each thread streams one contiguous half (with more
threads than halves, a block of its columns), eight rows of it at a time, all the
product's rows reading them from L1; the halves' sums are added after. Split by columns
instead (session 18), each core read part of every row, its prefetcher ran on into the
other core's part, and two layers' weights no longer stayed in the two cores' L2 caches
from one predict to the next: one row, 2 cores, us, 784x512 alone 20.5 -> 13.9, 784x512
then another 784x512 55 -> 31, 784x512 then 512x512 36-41 -> 25; the MLP's one-image
predict 69-81 -> 37-41 (onnxruntime's 35-42), cifar's 407-454 -> 366.

Each output is one chain of fused multiply-adds over each half (eight a pass), the halves
then added, the cut a function of the weights' shape alone: the bits do not depend on
the threads a predict ran on.

A Dense layer's forward of a few rows (few_rows_dense) adds the bias and applies the
activation as it stores each row: on one image the BLAS call and the activation's
kernel took longer to launch than to compute (784 -> 128 -> ... 128 -> 10: 14 calls of
1.5-7 us). Smaller weights (see _large), or one thread, take a serial kernel (a parallel
region costs 0.9 us to launch on one thread, 1.9 on two, a call of a serial one 0.3).
"""

import numpy as np
from numba import njit

from ..threads import numba_thread_count
from .activations import LINEAR, SLOPE_CODES, SOFTMAX, activate_fusable, softmax_row
from .parallel import parallel_ranges, range_body

# The product takes this path up to this many rows...
FEW_ROWS_MAX = 8
# ... from this many weights (512 KB of float32): the inner axis is then cut in two (see
# the module's docstring). One row, 2 cores, a 4 MB sweep between calls (a predict's
# other layers), us, NumPy's matmul -> this (columns split, session 18): 784x256 48 -> 44,
# 512x512 58 -> 48, 784x512 89 -> 73, 1024x1024 150 -> 86; below it about even (784x128
# 31 -> 28, 1600x64 31 -> 32), and warm in the cache NumPy's is ahead (784x128 4.5 vs 6.4).
FEW_ROWS_MIN_WEIGHTS = 1 << 17
# ... or from this long an inner axis, whatever the columns: each output is one chain of
# dependent multiply-adds, and a narrow product waits on it (one row, 2 cores, us, on one
# thread -> split: 3136x10 11.3 -> 8.2, 1600x64 8.7 -> 7.0; 512x128 4.5 -> 5.0).
FEW_ROWS_MIN_INNER = 1024
_NO_BIAS = np.zeros(0, np.float32)
# Sums a task keeps at once (16 KB of float32): more rows, narrower tiles of columns.
_TILE_SUMS = 4096
# Rows of the weights a task's pass streams (a multiple of 8: the chains' order is kept).
_PASS_ROWS = 64


def _operands_apply(a, b, out):
    return (a.shape[0] <= FEW_ROWS_MAX and a.dtype == np.float32 and b.dtype == np.float32
            and out.dtype == np.float32 and a.flags.c_contiguous and b.flags.c_contiguous
            and out.flags.c_contiguous)


def applies(a, b, out):
    """Whether few_rows_matmul takes ``a @ b`` (C-contiguous float32 operands only: one
    compiled specialisation)."""
    return _large(b.shape[0], b.size) and _operands_apply(a, b, out)


def dense_applies(a, b, code, out):
    """Whether few_rows_dense takes out = activation ``code`` of a @ b + bias."""
    return (code in SLOPE_CODES or code == SOFTMAX) and _operands_apply(a, b, out)


def _large(inner, weights):
    """Whether a product by weights of ``inner`` rows (``weights`` values) is split across
    the threads, its inner axis cut in two (see _inner_split)."""
    return weights >= FEW_ROWS_MIN_WEIGHTS or inner >= FEW_ROWS_MIN_INNER


_large_inline = njit(inline="always")(_large)


@njit(inline="always")
def _inner_split(b):
    """Where the inner axis is cut: for large weights (_large) in two halves of whole
    eight-row passes, else nowhere (its length). A function of the weights' shape only, so
    the bits are the same whatever the threads."""
    inner = b.shape[0]
    if not _large_inline(inner, b.size) or inner < 16:
        return inner
    return (inner // 2 + 7) // 8 * 8


@njit(inline="always")
def _partial(a, b, sums, first, stop, lo, hi):
    """sums[:, lo:hi] += a[:, first:stop] @ b[first:stop, lo:hi], each sum one chain of
    fused multiply-adds in the inner axis' order, eight rows of b at a time."""
    rows = a.shape[0]
    width = hi - lo
    k = first
    while k + 8 <= stop:
        b0, b1, b2, b3 = b[k, lo:hi], b[k + 1, lo:hi], b[k + 2, lo:hi], b[k + 3, lo:hi]
        b4, b5, b6, b7 = b[k + 4, lo:hi], b[k + 5, lo:hi], b[k + 6, lo:hi], b[k + 7, lo:hi]
        for r in range(rows):
            a0, a1, a2, a3 = a[r, k], a[r, k + 1], a[r, k + 2], a[r, k + 3]
            a4, a5, a6, a7 = a[r, k + 4], a[r, k + 5], a[r, k + 6], a[r, k + 7]
            row = sums[r, lo:hi]
            for j in range(width):
                row[j] = (((((((row[j] + a0 * b0[j]) + a1 * b1[j]) + a2 * b2[j]) + a3 * b3[j]) + a4 * b4[j])
                           + a5 * b5[j]) + a6 * b6[j]) + a7 * b7[j]
        k += 8
    while k < stop:
        b0 = b[k, lo:hi]
        for r in range(rows):
            a0 = a[r, k]
            row = sums[r, lo:hi]
            for j in range(width):
                row[j] = row[j] + a0 * b0[j]
        k += 1


@njit(inline="always")
def _task(a, b, out, second, split, task, blocks):
    """Task ``task`` of (halves of the inner axis) x ``blocks`` blocks of whole 16-column
    vectors: the first half's sums into ``out``, the second's into ``second``."""
    columns = b.shape[1]
    vectors = (columns + 15) // 16
    half, block = task // blocks, task % blocks
    lo = min(columns, block * vectors // blocks * 16)
    hi = min(columns, (block + 1) * vectors // blocks * 16)
    target = out if half == 0 else second
    first, stop = (0, split) if half == 0 else (split, b.shape[0])
    for r in range(a.shape[0]):
        for j in range(lo, hi):
            target[r, j] = 0.0
    # Rows of b a pass at a time, each pass across the block in tiles of columns whose sums
    # stay in L1: the weights stream in order, the sums (8 rows x 2048 columns: 64 KB)
    # from L2 at most once a pass.
    tile = max(16, _TILE_SUMS // a.shape[0] // 16 * 16)
    for pass_first in range(first, stop, _PASS_ROWS):
        pass_stop = min(stop, pass_first + _PASS_ROWS)
        for start in range(lo, hi, tile):
            _partial(a, b, target, pass_first, pass_stop, start, min(hi, start + tile))


@njit(inline="always")
def _finish(out, second, bias, code, alpha):
    """out = activation(out + second + bias), row by row (``second`` of no rows: no
    second half)."""
    for r in range(out.shape[0]):
        row = out[r]
        if second.shape[0] > 0:
            for j in range(row.shape[0]):
                row[j] = row[j] + second[r, j]
        if code == SOFTMAX:
            softmax_row(out, bias, out, r)
            continue
        if bias.shape[0] > 0:
            for j in range(row.shape[0]):
                row[j] = row[j] + bias[j]
        activate_fusable(code, alpha, row)


@njit(inline="always")
def _second_half(a, b, split):
    return np.empty((a.shape[0] if split < b.shape[0] else 0, b.shape[1]), np.float32)


@range_body(fastmath={"contract"})
def _tasks(begin, end, a, b, out, second, split, blocks):
    for task in range(begin, end):
        _task(a, b, out, second, split, task, blocks)


@njit(cache=True, fastmath={"contract"}, error_model="numpy")
def _split_dense(a, b, bias, code, alpha, out, threads):
    """out = activation(a @ b + bias) on ``threads`` threads: each half of the inner axis
    in blocks of columns (as many as the threads allow), then the halves' sums added on
    this one."""
    split = _inner_split(b)
    second = _second_half(a, b, split)
    halves = 2 if split < b.shape[0] else 1
    blocks = max(1, threads // halves)
    parallel_ranges(_tasks, halves * blocks, (a, b, out, second, split, blocks))
    _finish(out, second, bias, code, alpha)


@njit(cache=True, fastmath={"contract"}, error_model="numpy")
def _serial_dense(a, b, bias, code, alpha, out):
    """_split_dense on the calling thread (the same bits)."""
    split = _inner_split(b)
    second = _second_half(a, b, split)
    for task in range(2 if split < b.shape[0] else 1):
        _task(a, b, out, second, split, task, 1)
    _finish(out, second, bias, code, alpha)


def few_rows_matmul(a, b, out):
    """out = a @ b on every Numba thread (see applies)."""
    return few_rows_dense(a, b, _NO_BIAS, LINEAR, 0.0, out)


def dense_call(a, b, bias, code, alpha, out):
    """The call few_rows_dense comes down to (a recorded inference program makes it
    directly): its serial kernel for weights that are not _large, whatever the threads,
    else itself (it chooses by the threads of each run)."""
    args = (a, b, bias, code, alpha, out)
    return (few_rows_dense if _large(b.shape[0], b.size) else _serial_dense), args, {}


def few_rows_dense(a, b, bias, code, alpha, out):
    """out = activation ``code`` (slope ``alpha``) of a @ b + bias (see dense_applies): in
    one kernel, on this thread for weights that are not _large or on one thread, else on
    every thread."""
    threads = numba_thread_count()
    if threads == 1 or not _large(b.shape[0], b.size):
        _serial_dense(a, b, bias, code, alpha, out)
    else:
        _split_dense(a, b, bias, code, alpha, out, threads)
    return out
