"""Matrix products on all cores with single-threaded BLAS.

BLAS is held to one thread while nbnet runs (see nbnet/threads.py), because OpenBLAS's
own threads spin after each call and starve Numba's. To still use every core, a large
product is split into parts (blocks of the result's rows or columns, or of the axis a
weight gradient sums over) run side by side: where BLAS's sgemm can be called from a
Numba kernel (kernels/blas.py), each part is one sgemm call on one of Numba's threads;
elsewhere each part runs on a plain worker thread (NumPy releases the GIL inside BLAS;
idle workers sleep on a queue), which costs 50-140 us a hand-off on this 2-core VM, so
only much larger products are split that way.
"""

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from . import blas, few_rows

# Below this many multiply-adds a product is faster on one thread than split. Through
# sgemm jobs (2 cores, ms, one thread against split in two): 32x128x128 (0.5M) 0.011 vs
# 0.017, 128x128x128 (2M) 0.046 vs 0.037, 1000x128x128 0.33 vs 0.20.
SPLIT_MIN_MACS = 1_500_000
# Through the worker threads the hand-off and each worker packing the whole right-hand
# matrix cost more than the halved work up to about 50M (Dense 1600->64 at batch 128,
# 13M: 0.17 ms on one thread, 0.25 ms split; its x.T @ dy: 0.18 vs 0.41 ms; 71M: 0.92 vs
# 0.59 ms split).
PARALLEL_MIN_MACS = 50_000_000

_pool = None
_workers = None


def _executor():
    global _pool, _workers
    if _pool is None:
        import numba

        _workers = max(1, min(numba.get_num_threads(), os.cpu_count() or 1))
        _pool = ThreadPoolExecutor(max_workers=_workers, thread_name_prefix="nbnet-matmul")
    return _pool, _workers


def workers():
    return _executor()[1]


def _too_small_to_split(macs):
    return macs < SPLIT_MIN_MACS or (macs < PARALLEL_MIN_MACS and not blas.address())


def _run(parts):
    """Runs the parts side by side, each (a, b, out, temp): out = a @ b where ``temp`` is
    None, else out += a @ b. As sgemm jobs on Numba's threads where it can, else on the
    worker threads, each product then made in ``temp`` (shaped as ``out``) and added. A
    single part runs in the calling thread, through NumPy (describing it as a job costs
    4-5 us more)."""
    if len(parts) > 1 and blas.address():
        jobs = [blas.job(a, b, out, temp is not None) for a, b, out, temp in parts]
        if None not in jobs:
            blas.run(np.array(jobs, np.int64))
            return
    if len(parts) == 1:
        _product(*parts[0])
        return
    pool, _ = _executor()
    futures = [pool.submit(_product, *part) for part in parts]
    for future in futures:
        future.result()


def _product(a, b, out, temp):
    if temp is None:
        np.matmul(a, b, out=out)
    else:
        np.matmul(a, b, out=temp)
        out += temp


def _blocks(count, parts):
    bounds = [count * i // parts for i in range(parts + 1)]
    return list(zip(bounds, bounds[1:]))


def matmul(a, b, out):
    """out = a @ b, split across the cores when it pays: by rows, or where the rows are
    fewer than the columns (a Dense layer at a small batch) by columns, each core then
    packing half of ``b`` instead of all of it (2 cores, sgemm jobs, ms, rows / columns /
    one thread: 32x3136x1024 2.33 / 1.72 / 3.24, 32x784x512 0.23 / 0.20 / 0.32); a few rows
    by large weights by columns on Numba's threads (see kernels/few_rows.py)."""
    if few_rows.applies(a, b, out):
        return few_rows.few_rows_matmul(a, b, out)
    if _unsplit(a, b):
        return np.matmul(a, b, out=out)
    rows, count, columns = a.shape[0], workers(), b.shape[1]
    if rows < columns:
        _run([(a, b[:, lo:hi], out[:, lo:hi], None) for lo, hi in _blocks(columns, count)])
    else:
        _run([(a[lo:hi], b, out[lo:hi], None) for lo, hi in _blocks(rows, count)])
    return out


def _unsplit(a, b):
    """Whether matmul makes a @ b in one call on this thread."""
    rows, inner = a.shape
    count = workers()
    return count == 1 or _too_small_to_split(rows * inner * b.shape[1]) or rows < 2 * count


def _matmul_replayed_as(a, b, out):
    """The call matmul(a, b, out) comes down to where it does not split (np.matmul's, or
    few_rows_matmul's, which splits on the threads of the call), for a recorded inference
    program to make directly (see inference_program); else None."""
    if few_rows.applies(a, b, out):
        return few_rows.few_rows_matmul, (a, b, out), {}
    return (np.matmul, (a, b), {"out": out}) if _unsplit(a, b) else None


matmul.replayed_as = _matmul_replayed_as


def add_transposed_product(a, b, grad, scratch):
    """grad += a.T @ b (a weight gradient: the sum over the batch rows of ``a`` and ``b``);
    ``scratch`` has shape (workers(), *grad.shape). Large products are split across the
    cores: by the rows summed over, each part writing its partial product into
    ``scratch[k]``, all then added in order; or, where the rows are fewer than ``grad``'s
    (a Dense layer's batch against its inputs), by the columns of ``b``, each part adding
    its own columns of ``grad``: partial products as large as ``grad`` would cost more
    memory traffic than the sum over the few rows saves. 2 cores, ms, alone, split by
    rows / by columns / on one thread: on the worker threads 784 -> 2048 at batch 32 4.6
    / 2.8 / 2.5, at batch 128 4.2 / 3.7 / 5.3, 3136 -> 1024 at batch 128 8.0 / 7.5 / 10.3;
    as sgemm jobs 784 -> 512 at batch 128 0.70 / 0.57 / 0.99, an im2col conv's 6272 rows
    into 288 x 64 1.38 / 1.46 / 2.90."""
    rows, inner = a.shape
    columns = b.shape[1]
    count = workers()
    if count == 1 or _too_small_to_split(rows * inner * columns) or rows < 2 * count:
        _run([(a.T, b, grad, scratch[0])])
    elif rows < inner and columns >= 2 * count:
        _run([(a.T, b[:, lo:hi], grad[:, lo:hi], scratch[0, :, lo:hi]) for lo, hi in _blocks(columns, count)])
    else:
        _run([(a[lo:hi].T, b[lo:hi], scratch[k], None) for k, (lo, hi) in enumerate(_blocks(rows, count))])
        for k in range(count):
            grad += scratch[k]


# A layer's two backward products (the weight gradient a.T @ dz and the input gradient
# dz @ kernel.T) have the same multiply-adds and need nothing from each other: from this
# size they run side by side, each whole on one core (no split, no partial sums, no
# second packing of the right-hand matrix). On the worker threads, training steps,
# alternating in one process, 2 cores, ms, one after the other (each split from
# PARALLEL_MIN_MACS) against side by side: tf_mnist_5x5 (Dense 3136 -> 1024) b128 59.5 ->
# 52.0, b32 23.7 -> 19.9; MLP 784-512-512-10 b128 5.5 -> 4.8; pairing from 4M instead of
# 10M measured slower (the MLP at b32: 2.30-2.37 ms against 2.18-2.22). The caller running
# one of the two measured faster alone and slower in training steps (tf_mnist_5x5 b128
# 50 -> 59), as the split did. An im2col conv's pair (with a column-gradient buffer of
# its own) measured slower than its split products (two strided 3x3 convs, b128 7.5 ->
# 8.0 ms, b32 3.5 -> 4.1).
PAIR_MIN_MACS = 10_000_000
PAIR_JOBS_MIN_MACS = 1_500_000


def weight_and_input_gradients(a, dz, kernel, grad, scratch, dx):
    """grad += a.T @ dz and dx = dz @ kernel.T (``dx`` must not share memory with ``a``),
    side by side when they are large enough (see PAIR_MIN_MACS); ``scratch`` as for
    add_transposed_product."""
    count = workers()
    macs = a.shape[0] * a.shape[1] * dz.shape[1]
    pair_min = PAIR_JOBS_MIN_MACS if blas.address() else PAIR_MIN_MACS
    # Past two cores a large product split over all of them keeps every core busy.
    if count == 1 or macs < pair_min or (count > 2 and not _too_small_to_split(macs)):
        add_transposed_product(a, dz, grad, scratch)
        matmul(dz, kernel.T, out=dx)
        return
    _run([(a.T, dz, grad, scratch[0]), (dz, kernel.T, dx, None)])


def for_each_worker(task, count):
    """Runs task(first, stop) on each worker thread over its contiguous part of
    range(count), waits for all and returns their results in order; in the calling
    thread when there is one part. (Running the first part in the calling thread instead
    measured slower: the Kaggle-style CNN's training step at batch 128 80 -> 96 ms.)"""
    pool, count_workers = _executor()
    parts = min(count_workers, count)
    if parts <= 1:
        return [task(0, count)]
    bounds = [count * i // parts for i in range(parts + 1)]
    futures = [pool.submit(task, lo, hi) for lo, hi in zip(bounds, bounds[1:])]
    return [future.result() for future in futures]
