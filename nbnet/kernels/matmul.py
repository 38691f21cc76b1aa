"""Matrix products on all cores with single-threaded BLAS.

BLAS is held to one thread while nbnet runs (see nbnet/threads.py), because OpenBLAS's
own threads spin after each call and starve Numba's. To still use every core for the
large products, they are split into row blocks (or, for x.T @ dy, blocks of the summed
axis) and each block runs on a plain worker thread: NumPy releases the GIL inside BLAS,
and idle workers sleep on a queue instead of spinning.
"""

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

# Below this many multiply-adds a product is faster on one thread than handed out: on
# 2 cores the hand-off and each worker packing the whole right-hand matrix cost more than
# the halved work up to about 50M (Dense 1600->64 at batch 128, 13M: 0.17 ms on one
# thread, 0.25 ms split; its x.T @ dy: 0.18 vs 0.41 ms; 71M: 0.92 vs 0.59 ms split).
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


def matmul(a, b, out):
    """out = a @ b, rows of ``a`` split across the worker threads when it pays."""
    rows, inner = a.shape
    pool, workers = _executor()
    if workers == 1 or rows * inner * b.shape[1] < PARALLEL_MIN_MACS or rows < 2 * workers:
        return np.matmul(a, b, out=out)
    bounds = [rows * i // workers for i in range(workers + 1)]
    futures = [pool.submit(np.matmul, a[lo:hi], b, out=out[lo:hi]) for lo, hi in zip(bounds, bounds[1:])]
    for future in futures:
        future.result()
    return out


def add_transposed_product(a, b, grad, scratch):
    """grad += a.T @ b (a weight gradient: the sum over the batch rows of ``a`` and ``b``).
    Large products are split across the workers: by the rows summed over, each worker
    writing its partial product into ``scratch[k]`` (``scratch`` has shape (workers(),
    *grad.shape)), all then added; or, where the rows are fewer than ``grad``'s (a Dense
    layer's batch against its inputs), by the columns of ``b``, each worker making and
    adding its own columns of ``grad``: partial products as large as ``grad`` would cost
    more memory traffic than the sum over the few rows saves (2 cores, ms, alone: 784 ->
    2048 at batch 32 4.6 split by rows, 2.8 by columns, 2.5 on one thread; at batch 128
    4.2, 3.7 and 5.3; 3136 -> 1024 at batch 128 8.0, 7.5 and 10.3; an im2col conv's 6272
    rows into 288 x 64: 1.7, 2.2 and 2.7. Inside training steps the gap is smaller: the
    784-2048-10 MLP's dense backward at batch 32 2.1-2.3 -> 1.8-2.1 ms a step)."""
    rows, inner = a.shape
    columns = b.shape[1]
    pool, count = _executor()
    if count == 1 or rows * inner * columns < PARALLEL_MIN_MACS or rows < 2 * count:
        _add_product(a.T, b, grad, scratch[0])
        return
    if rows < inner and columns >= 2 * count:
        bounds = [columns * i // count for i in range(count + 1)]
        futures = [pool.submit(_add_product, a.T, b[:, lo:hi], grad[:, lo:hi], scratch[0, :, lo:hi])
                   for lo, hi in zip(bounds, bounds[1:])]
        for future in futures:
            future.result()
        return
    bounds = [rows * i // count for i in range(count + 1)]
    futures = [pool.submit(np.matmul, a[lo:hi].T, b[lo:hi], out=scratch[k])
               for k, (lo, hi) in enumerate(zip(bounds, bounds[1:]))]
    for future in futures:
        future.result()
    for k in range(count):
        grad += scratch[k]


# A layer's two backward products (the weight gradient a.T @ dz and the input gradient
# dz @ kernel.T) have the same multiply-adds and need nothing from each other: from this
# size they run side by side on the two workers, each whole on one core (no split, no
# partial sums, no second packing of the right-hand matrix). Training steps, alternating
# in one process, 2 cores, ms, one after the other (each split from PARALLEL_MIN_MACS)
# against side by side: tf_mnist_5x5 (Dense 3136 -> 1024) b128 59.5 -> 52.0, b32 23.7 ->
# 19.9; MLP 784-512-512-10 b128 5.5 -> 4.8. Below about 10M the hand-off eats the gain
# (the MLP at b32, 8M products: 2.30-2.37 ms paired, 2.18-2.22 not). The caller running
# one of the two measured faster alone and slower in training steps (tf_mnist_5x5 b128
# 50 -> 59), as the split did. An im2col conv's pair (with a column-gradient buffer of
# its own) measured slower than its split products (two strided 3x3 convs, b128 7.5 ->
# 8.0 ms, b32 3.5 -> 4.1).
PAIR_MIN_MACS = 10_000_000


def weight_and_input_gradients(a, dz, kernel, grad, scratch, dx):
    """grad += a.T @ dz and dx = dz @ kernel.T (``dx`` must not share memory with ``a``),
    side by side when they are large enough (see PAIR_MIN_MACS); ``scratch`` as for
    add_transposed_product."""
    pool, count = _executor()
    macs = a.shape[0] * a.shape[1] * dz.shape[1]
    # Past two cores a large product split over all of them keeps every core busy.
    if count == 1 or macs < PAIR_MIN_MACS or (count > 2 and macs >= PARALLEL_MIN_MACS):
        add_transposed_product(a, dz, grad, scratch)
        matmul(dz, kernel.T, out=dx)
        return
    pending = [pool.submit(_add_product, a.T, dz, grad, scratch[0]), pool.submit(np.matmul, dz, kernel.T, out=dx)]
    for future in pending:
        future.result()


def _add_product(a, b, grad, product):
    np.matmul(a, b, out=product)
    grad += product


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


def workers():
    return _executor()[1]
