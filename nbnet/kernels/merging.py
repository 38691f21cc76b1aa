"""The merge layers' kernels (Add, Subtract, Multiply, Average, Maximum, Minimum,
Concatenate). The CUDA twins are in ``cuda/merging.py``.

The elementwise kernels take two inputs over 1-D views (any rank, flattened), so a merge of
n inputs is n - 1 launches folding into the output, one compiled signature per dtype. Each
``out`` may be one of its inputs (the fold runs in place). Concatenate copies column blocks
of 2-D views: the output viewed as (outer, total * inner), each input as
(outer, size_i * inner), where outer is the product of the axes before the concatenation
axis (the batch axis included) and inner of those after it.
"""

from numba import njit, prange

# Values per parallel block of the fused passes (activations.py's): a block's sum is
# activated while in cache.
from .activations import _BLOCK_VALUES, activate_fusable, gradient_from_slope, slope_terms


@njit(parallel=True, cache=True)
def merge_add(a, b, divisor, out):
    """out = (a + b) / divisor (1 folds a sum; the input count ends Average's)."""
    d = out.dtype.type(divisor)
    for i in prange(out.shape[0]):
        out[i] = (a[i] + b[i]) / d


@njit(parallel=True, cache=True)
def merge_subtract(a, b, out):
    """out = a - b."""
    for i in prange(out.shape[0]):
        out[i] = a[i] - b[i]


@njit(parallel=True, cache=True)
def merge_multiply(a, b, out):
    """out = a * b."""
    for i in prange(out.shape[0]):
        out[i] = a[i] * b[i]


@njit(parallel=True, cache=True)
def merge_divide(values, divisor, out):
    """out = values / divisor: Average's gradient (divisor n), Subtract's (-1, exact)."""
    d = out.dtype.type(divisor)
    for i in prange(out.shape[0]):
        out[i] = values[i] / d


@njit(parallel=True, cache=True)
def merge_maximum(a, b, k, out, index):
    """out = max(a, b), where ``b`` is input ``k`` and ``a`` the running maximum of inputs
    0..k-1, whose winners ``index`` holds (for k == 1, ``a`` is input 0 and ``index`` is
    set here). ``index`` becomes k only where b > a strictly, so a tie keeps the earlier
    input: the gradient goes to the first input holding the maximum. A NaN in ``b`` wins,
    one in ``a`` stays, so NaN propagates as in NumPy."""
    _select(a, b, k, False, out, index)


@njit(parallel=True, cache=True)
def merge_minimum(a, b, k, out, index):
    """out = min(a, b), with ``index`` as in ``merge_maximum`` (ties: the first input)."""
    _select(a, b, k, True, out, index)


@njit(inline="always")
def _select(a, b, k, minimum, out, index):
    # Branch-free selects (``|``, not a short-circuit ``or``) and the k == 1 case as a
    # loop of its own: 1.3 ms against 9.6 ms for two folds of 2**21 floats on one thread
    # (random winners mispredict a branch half the time).
    n = out.shape[0]
    if k == 1:
        for i in prange(n):
            ai = a[i]
            bi = b[i]
            take = ((bi < ai) if minimum else (bi > ai)) | (bi != bi)
            out[i] = bi if take else ai
            index[i] = 1 if take else 0
    else:
        for i in prange(n):
            ai = a[i]
            bi = b[i]
            take = ((bi < ai) if minimum else (bi > ai)) | (bi != bi)
            out[i] = bi if take else ai
            index[i] = k if take else index[i]


@njit(parallel=True, cache=True)
def merge_route(dy, index, k, dx):
    """dx = dy where index == k, else 0: Maximum's and Minimum's gradient for input k
    (``dx`` may be ``dy``)."""
    zero = dx.dtype.type(0.0)
    for i in prange(dx.shape[0]):
        dx[i] = dy[i] if index[i] == k else zero


@njit(parallel=True, cache=True)
def concat_forward(x, offset, out):
    """out[:, offset:offset + cols] = x, over 2-D views (x: (outer, cols))."""
    rows, cols = x.shape
    # Through 1-D row views: 4-5x faster than indexing out[r, offset + c] (0.21 ms against
    # 0.94 ms to fill 32x32x32x64 from two halves on one thread; NumPy's concatenate: 0.20 ms).
    for r in prange(rows):
        source = x[r]
        target = out[r, offset:offset + cols]
        for c in range(cols):
            target[c] = source[c]


@njit(parallel=True, cache=True)
def concat_backward(dy, offset, dx):
    """dx = dy[:, offset:offset + cols], over 2-D views (dx: (outer, cols))."""
    rows, cols = dx.shape
    for r in prange(rows):
        source = dy[r, offset:offset + cols]
        target = dx[r]
        for c in range(cols):
            target[c] = source[c]


# An Add whose output only an elementwise activation reads runs it in its own passes (a
# residual block's add, then relu: executor.Plan._fuse_merge_activation), with the same
# results as the two layers apart. 392k values, relu, ms: forward 0.106 -> 0.086, backward
# (with the second input's copy) 0.33 -> 0.09. tools/bench_zoo.py's resnet_small, three
# rounds alternating in one process, ms: step b32 6.3 / 6.9 / 7.0 -> 6.3 / 6.0 / 6.0, b128
# 22.3 / 24.3 / 22.7 -> 21.8 / 21.2 / 21.0, predict of 1000 50.7 / 54.7 / 47.4 -> 44.4 /
# 46.3 / 45.8; its cold first fit unchanged (18.0-18.3 s).
@njit(parallel=True, cache=True, error_model="numpy", fastmath={"contract"})
def merge_add_activation(a, b, code, alpha, out):
    """out = activation(a + b), ``code`` one of activations.activate_fusable's."""
    size = out.shape[0]
    for index in prange((size + _BLOCK_VALUES - 1) // _BLOCK_VALUES):
        first, stop = index * _BLOCK_VALUES, min(size, (index + 1) * _BLOCK_VALUES)
        # Views of the block: indexing the whole arrays, the two loops ran 2x slower.
        block, a_block, b_block = out[first:stop], a[first:stop], b[first:stop]
        for i in range(stop - first):
            block[i] = a_block[i] + b_block[i]
        activate_fusable(code, alpha, block)


@njit(parallel=True, cache=True)
def activation_gradient_copies(y, dy, code, alpha, copy):
    """dy = dy * activation'(.) from the output ``y``, in place, and ``copy`` = the same:
    the gradients of both inputs of a fused merge_add_activation."""
    zero = dy.dtype.type(0.0)
    above, below, linear, square = slope_terms(code, alpha, dy.dtype.type)
    for i in prange(dy.shape[0]):
        grad = gradient_from_slope(y[i], dy[i], above, below, linear, square, zero)
        dy[i] = grad
        copy[i] = grad
