"""A product of a few rows by a matrix: a Dense layer's forward in a predict of one image
or a few, with its bias and activation in the same kernel.

There BLAS makes a matrix-vector product on one core (BLAS is held to one thread, see
threads.py; kernels/matmul.py splits a product only from 2 rows a core), and one core
streams the weights from memory at 13-25 GB/s on this VM: a one-image predict of an MLP
784-512-512-10 spent most of its time waiting on 2.6 MB of weights. Here each thread takes
a block of the columns and streams its own part of every row of the weights, eight rows
of them at a time, all the product's rows reading them from L1 (each row's sums in a
buffer of the thread's own: a shared output line would bounce between the cores).

Each output's sum runs over the inner axis in one order whatever the split and the
thread count (a chain of fused multiply-adds, eight a pass), so the bits do not depend
on the threads a predict ran on. One image through tools/bench_zoo.py's networks, us, two
rounds of tools/ab_zoo.sh (with inference_program._fastest's steadier choice of threads):
wide_mlp 436 / 394 -> 298 / 269, tf_mnist_5x5 936 / 1005 -> 798 / 693, cifar 796 / 1033 ->
717 / 583, kaggle_bn 728 / 917 -> 636 / 692, mlp 228 / 212 -> 223 / 165.

A Dense layer's forward of a few rows (few_rows_dense) adds the bias and applies the
activation as it stores each row: on one image the BLAS call and the activation's
kernel took longer to launch than to compute (784 -> 128 -> ... 128 -> 10: 14 calls of
1.5-7 us). Weights under FEW_ROWS_MIN_WEIGHTS, or one thread, take a serial kernel (a
parallel region costs 0.9 us to launch on one thread, 1.9 on two, a call of a serial one
0.3), which also takes a softmax output's rows whole.
"""

import numpy as np
from numba import njit, prange

from ..threads import numba_thread_count
from .activations import LINEAR, SLOPE_CODES, SOFTMAX, activate_fusable, bias_activation_forward, softmax_row

# The product takes this path up to this many rows...
FEW_ROWS_MAX = 8
# ... from this many weights (512 KB of float32). One row, 2 cores, a 4 MB sweep between
# calls (a predict's other layers), us, NumPy's matmul -> this: 784x256 48 -> 44,
# 512x512 58 -> 48, 784x512 89 -> 73, 1024x1024 150 -> 86; below it about even (784x128
# 31 -> 28, 1600x64 31 -> 32), and warm in the cache NumPy's is ahead (784x128 4.5 vs 6.4).
FEW_ROWS_MIN_WEIGHTS = 1 << 17


def _operands_apply(a, b, out):
    return (a.shape[0] <= FEW_ROWS_MAX and a.dtype == np.float32 and b.dtype == np.float32
            and out.dtype == np.float32 and a.flags.c_contiguous and b.flags.c_contiguous
            and out.flags.c_contiguous)


def applies(a, b, out):
    """Whether few_rows_matmul takes ``a @ b`` (C-contiguous float32 operands only: one
    compiled specialisation)."""
    return b.size >= FEW_ROWS_MIN_WEIGHTS and _operands_apply(a, b, out)


def dense_applies(a, b, code, out):
    """Whether few_rows_dense takes out = activation ``code`` of a @ b + bias."""
    return (code in SLOPE_CODES or code == SOFTMAX) and _operands_apply(a, b, out)


@njit(inline="always")
def _columns(a, b, out, lo, hi):
    """out[:, lo:hi] = a @ b[:, lo:hi]."""
    rows, inner = a.shape
    width = hi - lo
    sums = np.zeros((rows, width), np.float32)
    k = 0
    while k + 8 <= inner:
        b0, b1, b2, b3 = b[k, lo:hi], b[k + 1, lo:hi], b[k + 2, lo:hi], b[k + 3, lo:hi]
        b4, b5, b6, b7 = b[k + 4, lo:hi], b[k + 5, lo:hi], b[k + 6, lo:hi], b[k + 7, lo:hi]
        for r in range(rows):
            a0, a1, a2, a3 = a[r, k], a[r, k + 1], a[r, k + 2], a[r, k + 3]
            a4, a5, a6, a7 = a[r, k + 4], a[r, k + 5], a[r, k + 6], a[r, k + 7]
            row = sums[r]
            for j in range(width):
                row[j] = (((((((row[j] + a0 * b0[j]) + a1 * b1[j]) + a2 * b2[j]) + a3 * b3[j]) + a4 * b4[j])
                           + a5 * b5[j]) + a6 * b6[j]) + a7 * b7[j]
        k += 8
    while k < inner:
        b0 = b[k, lo:hi]
        for r in range(rows):
            a0 = a[r, k]
            row = sums[r]
            for j in range(width):
                row[j] = row[j] + a0 * b0[j]
        k += 1
    # A loop, not out[:, lo:hi] = sums: a slice assignment from an array compiled 2-3 s.
    for r in range(rows):
        for j in range(width):
            out[r, lo + j] = sums[r, j]


@njit(parallel=True, cache=True, fastmath={"contract"})
def _product(a, b, out, parts):
    """out = a @ b, the columns in ``parts`` blocks of whole 16-column vectors."""
    columns = b.shape[1]
    vectors = (columns + 15) // 16
    for part in prange(parts):
        _columns(a, b, out, min(columns, part * vectors // parts * 16),
                 min(columns, (part + 1) * vectors // parts * 16))


@njit(cache=True, fastmath={"contract"}, error_model="numpy")
def _serial_dense(a, b, bias, code, alpha, out):
    """out = activation(a @ b + bias) on the calling thread, as _product and then
    bias_activation_forward make it (the same bits)."""
    _columns(a, b, out, 0, b.shape[1])
    for r in range(a.shape[0]):
        if code == SOFTMAX:
            softmax_row(out, bias, out, r)
            continue
        row = out[r]
        if bias.shape[0] > 0:
            for j in range(row.shape[0]):
                row[j] = row[j] + bias[j]
        activate_fusable(code, alpha, row)


def few_rows_matmul(a, b, out):
    """out = a @ b on every Numba thread (see applies)."""
    _product(a, b, out, numba_thread_count())
    return out


def dense_call(a, b, bias, code, alpha, out):
    """The call few_rows_dense comes down to (a recorded inference program makes it
    directly): its serial kernel under FEW_ROWS_MIN_WEIGHTS weights, whatever the threads,
    else itself (it chooses by the threads of each run)."""
    args = (a, b, bias, code, alpha, out)
    return (_serial_dense if b.size < FEW_ROWS_MIN_WEIGHTS else few_rows_dense), args, {}


def few_rows_dense(a, b, bias, code, alpha, out):
    """out = activation ``code`` (slope ``alpha``) of a @ b + bias (see dense_applies): in
    one kernel on this thread below FEW_ROWS_MIN_WEIGHTS weights or on one thread, else
    the product on every thread, then bias_activation_forward."""
    threads = numba_thread_count()
    if threads == 1 or b.size < FEW_ROWS_MIN_WEIGHTS:
        _serial_dense(a, b, bias, code, alpha, out)
    else:
        _product(a, b, out, threads)
        if code != LINEAR or bias.shape[0]:
            bias_activation_forward(out, bias, code, alpha, out)
    return out
