"""The merge layers' kernels (Add, Subtract, Multiply, Average, Maximum, Minimum,
Concatenate). The CUDA twins are in ``cuda/merging.py``.

The elementwise kernels take two inputs over 1-D views (any rank, flattened), so a merge of
n inputs is n - 1 launches folding into the output, one compiled signature per dtype. Each
``out`` may be one of its inputs (the fold runs in place). Concatenate copies column blocks
of 2-D views: the output viewed as (outer, total * inner), each input as
(outer, size_i * inner), where outer is the product of the axes before the concatenation
axis (the batch axis included) and inner of those after it.
"""

import numpy as np
from numba import njit

# Values per parallel block of the fused passes (activations.py's): a block's sum is
# activated while in cache.
from .activations import _BLOCK_VALUES, activate_fusable, gradient_from_slope, slope_terms
from .parallel import parallel_ranges, range_body


@range_body
def _merge_add_range(begin, end, a, b, divisor, out):
    d = out.dtype.type(divisor)
    for i in range(np.uint64(begin), np.uint64(end)):
        out[i] = (a[i] + b[i]) / d


@njit(cache=True)
def merge_add(a, b, divisor, out):
    """out = (a + b) / divisor (1 folds a sum; the input count ends Average's)."""
    parallel_ranges(_merge_add_range, out.shape[0], (a, b, divisor, out))


@range_body
def _merge_subtract_range(begin, end, a, b, out):
    for i in range(np.uint64(begin), np.uint64(end)):
        out[i] = a[i] - b[i]


@njit(cache=True)
def merge_subtract(a, b, out):
    """out = a - b."""
    parallel_ranges(_merge_subtract_range, out.shape[0], (a, b, out))


@range_body
def _merge_multiply_range(begin, end, a, b, out):
    for i in range(np.uint64(begin), np.uint64(end)):
        out[i] = a[i] * b[i]


@njit(cache=True)
def merge_multiply(a, b, out):
    """out = a * b."""
    parallel_ranges(_merge_multiply_range, out.shape[0], (a, b, out))


@range_body
def _merge_divide_range(begin, end, values, divisor, out):
    d = out.dtype.type(divisor)
    for i in range(np.uint64(begin), np.uint64(end)):
        out[i] = values[i] / d


@njit(cache=True)
def merge_divide(values, divisor, out):
    """out = values / divisor: Average's gradient (divisor n), Subtract's (-1, exact)."""
    parallel_ranges(_merge_divide_range, out.shape[0], (values, divisor, out))


@range_body
def _maximum_range(begin, end, a, b, k, out, index):
    _select(begin, end, a, b, k, False, out, index)


@range_body
def _minimum_range(begin, end, a, b, k, out, index):
    _select(begin, end, a, b, k, True, out, index)


@njit(cache=True)
def merge_maximum(a, b, k, out, index):
    """out = max(a, b), where ``b`` is input ``k`` and ``a`` the running maximum of inputs
    0..k-1, whose winners ``index`` holds (for k == 1, ``a`` is input 0 and ``index`` is
    set here). ``index`` becomes k only where b > a strictly, so a tie keeps the earlier
    input: the gradient goes to the first input holding the maximum. A NaN in ``b`` wins,
    one in ``a`` stays, so NaN propagates as in NumPy."""
    parallel_ranges(_maximum_range, out.shape[0], (a, b, k, out, index))


@njit(cache=True)
def merge_minimum(a, b, k, out, index):
    """out = min(a, b), with ``index`` as in ``merge_maximum`` (ties: the first input)."""
    parallel_ranges(_minimum_range, out.shape[0], (a, b, k, out, index))


@njit(inline="always")
def _select(begin, end, a, b, k, minimum, out, index):
    # Branch-free selects (``|``, not a short-circuit ``or``) and the k == 1 case as a
    # loop of its own: 1.3 ms against 9.6 ms for two folds of 2**21 floats on one thread
    # (random winners mispredict a branch half the time).
    if k == 1:
        for i in range(np.uint64(begin), np.uint64(end)):
            ai = a[i]
            bi = b[i]
            take = ((bi < ai) if minimum else (bi > ai)) | (bi != bi)
            out[i] = bi if take else ai
            index[i] = 1 if take else 0
    else:
        for i in range(np.uint64(begin), np.uint64(end)):
            ai = a[i]
            bi = b[i]
            take = ((bi < ai) if minimum else (bi > ai)) | (bi != bi)
            out[i] = bi if take else ai
            index[i] = k if take else index[i]


@range_body
def _merge_route_range(begin, end, dy, index, k, dx):
    zero = dx.dtype.type(0.0)
    for i in range(np.uint64(begin), np.uint64(end)):
        dx[i] = dy[i] if index[i] == k else zero


@njit(cache=True)
def merge_route(dy, index, k, dx):
    """dx = dy where index == k, else 0: Maximum's and Minimum's gradient for input k
    (``dx`` may be ``dy``)."""
    parallel_ranges(_merge_route_range, dx.shape[0], (dy, index, k, dx))


@range_body
def _concat_forward_range(begin, end, x, offset, out):
    rows, cols = x.shape
    # Through 1-D row views: 4-5x faster than indexing out[r, offset + c] (0.21 ms against
    # 0.94 ms to fill 32x32x32x64 from two halves on one thread; NumPy's concatenate: 0.20 ms).
    for r in range(begin, end):
        source = x[r]
        target = out[r, offset:offset + cols]
        for c in range(cols):
            target[c] = source[c]


@njit(cache=True)
def concat_forward(x, offset, out):
    """out[:, offset:offset + cols] = x, over 2-D views (x: (outer, cols))."""
    parallel_ranges(_concat_forward_range, x.shape[0], (x, offset, out))


@range_body
def _concat_backward_range(begin, end, dy, offset, dx):
    rows, cols = dx.shape
    for r in range(begin, end):
        source = dy[r, offset:offset + cols]
        target = dx[r]
        for c in range(cols):
            target[c] = source[c]


@njit(cache=True)
def concat_backward(dy, offset, dx):
    """dx = dy[:, offset:offset + cols], over 2-D views (dx: (outer, cols))."""
    parallel_ranges(_concat_backward_range, dx.shape[0], (dy, offset, dx))


# An Add whose output only an elementwise activation reads runs it in its own passes (a
# residual block's add, then relu: executor.Plan._fuse_merge_activation), with the same
# results as the two layers apart. 392k values, relu, ms: forward 0.106 -> 0.086, backward
# (with the second input's copy) 0.33 -> 0.09. tools/bench_zoo.py's resnet_small, three
# rounds alternating in one process, ms: step b32 6.3 / 6.9 / 7.0 -> 6.3 / 6.0 / 6.0, b128
# 22.3 / 24.3 / 22.7 -> 21.8 / 21.2 / 21.0, predict of 1000 50.7 / 54.7 / 47.4 -> 44.4 /
# 46.3 / 45.8; its cold first fit unchanged (18.0-18.3 s).
@range_body(fastmath={"contract"})
def _merge_add_activation_range(begin, end, a, b, code, alpha, out):
    size = out.shape[0]
    for index in range(begin, end):
        first, stop = index * _BLOCK_VALUES, min(size, (index + 1) * _BLOCK_VALUES)
        # Views of the block: indexing the whole arrays, the two loops ran 2x slower.
        block, a_block, b_block = out[first:stop], a[first:stop], b[first:stop]
        for i in range(stop - first):
            block[i] = a_block[i] + b_block[i]
        activate_fusable(code, alpha, block)


@njit(cache=True)
def merge_add_activation(a, b, code, alpha, out):
    """out = activation(a + b), ``code`` one of activations.activate_fusable's."""
    parallel_ranges(_merge_add_activation_range, (out.shape[0] + _BLOCK_VALUES - 1) // _BLOCK_VALUES, (a, b, code,
                    alpha, out))


@range_body
def _activation_gradient_copies_range(begin, end, y, dy, code, alpha, copy):
    zero = dy.dtype.type(0.0)
    above, below, linear, square = slope_terms(code, alpha, dy.dtype.type)
    for i in range(np.uint64(begin), np.uint64(end)):
        grad = gradient_from_slope(y[i], dy[i], above, below, linear, square, zero)
        dy[i] = grad
        copy[i] = grad


@njit(cache=True)
def activation_gradient_copies(y, dy, code, alpha, copy):
    """dy = dy * activation'(.) from the output ``y``, in place, and ``copy`` = the same:
    the gradients of both inputs of a fused merge_add_activation."""
    parallel_ranges(_activation_gradient_copies_range, dy.shape[0], (y, dy, code, alpha, copy))
