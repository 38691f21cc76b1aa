"""Kernels of the layers ONNX import needs (Permute, constant and broadcasting arithmetic,
Clip, LogSoftmax); see nbnet/layers/onnx_ops.py for the layers that launch them. The CUDA
twins are in ``cuda/onnx_ops.py``.

Every array argument is a 1-D view of a C-contiguous array (LogSoftmax's: 3-D views), so
each kernel compiles once per dtype whatever the rank. The index arithmetic comes as an
int64 ``geometry`` array, computed once per shape by the plain-Python helpers at the end of
this file (``permute_geometry``, ``broadcast_geometry``, ``reduction_geometry``):

* ``permute_forward`` and ``binary_forward`` gather: row k of ``geometry`` (k >= 1) holds
  operand k's stride, in elements, along each output axis (0 on a broadcast axis), row 0
  the output's dims. Axes that stay adjacent in every operand are merged, and size-1 axes
  dropped, so a (N, C, H, W) (op) (1, C, 1, 1) runs over (N, C, H*W).
* ``binary_backward`` writes one operand's gradient, summed over the axes it was broadcast
  along. Each gradient element is owned by one loop iteration (parallel over the operand's
  elements, not the output's), which loops over the output elements it was broadcast to:
  no two iterations write one element, so there is no race. Its ``geometry`` lists the
  operand's own axes first (``n_kept`` of them, along which the operand is contiguous, in
  order) and then the broadcast (summed) axes; rows: dims, dy's strides, the other
  operand's strides.
* ``log_softmax_*`` take (outer, axis, inner) views: one loop iteration per (outer, inner)
  pair, over the axis.
* ``take_*`` (Slice and Gather along one axis) take (outer, axis, inner) views and an
  int64 index per output position along the axis.

The arithmetic operation is an integer code (``CODES``), the layers keep its name.
"""

import math

import numpy as np
from numba import njit

from .parallel import parallel_ranges, range_body

# Elements of the output's last (merged) axis per parallel iteration of the gathers, so a
# tensor (op) scalar, whose geometry is one long axis, still runs on every core.
PIECE = 8192

# operation codes of the arithmetic kernels (the layers keep the names)
ADD, SUB, RSUB, MUL, DIV, RDIV = "add", "sub", "rsub", "mul", "div", "rdiv"
OPERATIONS = (ADD, SUB, RSUB, MUL, DIV, RDIV)
CODES = {name: code for code, name in enumerate(OPERATIONS)}
ADD_CODE, SUB_CODE, RSUB_CODE, MUL_CODE, DIV_CODE, RDIV_CODE = range(6)


@njit(inline="always")
def _apply(code, x, y):
    """x (op) y; rsub and rdiv swap the operands."""
    if code == 0:
        return x + y
    if code == 1:
        return x - y
    if code == 2:
        return y - x
    if code == 3:
        return x * y
    if code == 4:
        return x / y
    return y / x


@njit(inline="always")
def _gradient(code, which, av, bv, g):
    """d(a (op) b)/d(a) * g (which == 0) or d/d(b) * g (which == 1), in the order of
    operations NumPy's reference used."""
    if code == 0:
        return g
    if code == 1:
        return g if which == 0 else -g
    if code == 2:
        return -g if which == 0 else g
    if code == 3:
        return g * bv if which == 0 else g * av
    if code == 4:  # a / b
        return g / bv if which == 0 else -g * av / (bv * bv)
    return -g * bv / (av * av) if which == 0 else g / av  # b / a


@njit(cache=True)
def _offsets(geometry, index, start, stop):
    """Strides rows 1 and 2 (row 2: 0 where the geometry has two rows) dotted with the
    multi-index of ``index`` over the dims geometry[0, start:stop] (the last fastest)."""
    two = geometry.shape[0] > 2
    rest = np.int64(index)
    first = 0
    second = 0
    for k in range(stop - 1, start - 1, -1):
        d = geometry[0, k]
        q = rest // d
        i = rest - q * d
        first += i * geometry[1, k]
        if two:
            second += i * geometry[2, k]
        rest = q
    return first, second


@njit(inline="always")
def _piece_count(n, geometry):
    """How many pieces of at most PIECE values of the last axis make n output values."""
    last = geometry[0, geometry.shape[1] - 1]
    if n == 0 or last == 0:
        return 0
    return (n // last) * ((last + PIECE - 1) // PIECE)


@range_body
def _permute_forward_range(begin, end, x, geometry, out):
    n = out.shape[0]
    rank = geometry.shape[1]
    last = geometry[0, rank - 1]
    if n == 0 or last == 0:
        return
    step = geometry[1, rank - 1]
    pieces = (last + PIECE - 1) // PIECE
    for t in range(begin, end):
        r = np.int64(t) // pieces
        start = (np.int64(t) - r * pieces) * PIECE
        stop = min(start + PIECE, last)
        offset, _ = _offsets(geometry, r, 0, rank - 1)
        base = r * last
        for m in range(start, stop):
            out[base + m] = x[offset + m * step]


@njit(cache=True)
def permute_forward(x, geometry, out):
    """out = x transposed: out's flat element of multi-index (i_0, ..) over the dims
    ``geometry[0]`` reads x at sum(i_k * geometry[1, k]) (see ``permute_geometry``)."""
    parallel_ranges(_permute_forward_range, _piece_count(out.shape[0], geometry), (x, geometry, out))


@range_body
def _binary_forward_range(begin, end, code, a, b, geometry, out):
    n = out.shape[0]
    rank = geometry.shape[1]
    last = geometry[0, rank - 1]
    if n == 0 or last == 0:
        return
    step_a = geometry[1, rank - 1]
    step_b = geometry[2, rank - 1]
    pieces = (last + PIECE - 1) // PIECE
    for t in range(begin, end):
        r = np.int64(t) // pieces
        start = (np.int64(t) - r * pieces) * PIECE
        stop = min(start + PIECE, last)
        offset_a, offset_b = _offsets(geometry, r, 0, rank - 1)
        base = r * last
        for m in range(start, stop):
            out[base + m] = _apply(code, a[offset_a + m * step_a], b[offset_b + m * step_b])


@njit(cache=True)
def binary_forward(code, a, b, geometry, out):
    """out = a (op) b, broadcast as ``geometry`` says (see ``broadcast_geometry``);
    ``code`` is one of ``CODES``' values."""
    parallel_ranges(_binary_forward_range, _piece_count(out.shape[0], geometry), (code, a, b, geometry, out))


@range_body
def _binary_backward_range(begin, end, code, which, a, b, dy, geometry, n_kept, grad):
    n = grad.shape[0]
    rank = geometry.shape[1]
    if n == 0:
        return
    reduced = 1
    for k in range(n_kept, rank):
        reduced *= geometry[0, k]
    last = 1
    step_dy = 0
    step_other = 0
    if n_kept < rank:
        last = geometry[0, rank - 1]
        step_dy = geometry[1, rank - 1]
        step_other = geometry[2, rank - 1]
    if last == 0:
        reduced = 0
        last = 1
    outer = reduced // last
    target = a if which == 0 else b
    other = b if which == 0 else a
    zero = grad.dtype.type(0.0)
    for j in range(begin, end):
        base_dy, base_other = _offsets(geometry, j, 0, n_kept)
        tv = target[j]
        total = zero
        for r in range(outer):
            offset_dy, offset_other = _offsets(geometry, r, n_kept, rank - 1)
            offset_dy += base_dy
            offset_other += base_other
            for m in range(last):
                g = dy[offset_dy + m * step_dy]
                ov = other[offset_other + m * step_other]
                if which == 0:
                    total += _gradient(code, 0, tv, ov, g)
                else:
                    total += _gradient(code, 1, ov, tv, g)
        grad[j] = total


@njit(cache=True)
def binary_backward(code, which, a, b, dy, geometry, n_kept, grad):
    """grad = the gradient of sum(dy * (a (op) b)) with respect to a (``which`` 0) or b
    (1), summed over the axes that operand was broadcast along; ``geometry`` and
    ``n_kept`` from ``reduction_geometry``. Parallel over grad's elements, each summing
    its own share of dy in order."""
    parallel_ranges(_binary_backward_range, grad.shape[0], (code, which, a, b, dy, geometry, n_kept, grad))


@range_body
def _binary_backward_same_range(begin, end, code, which, a, b, dy, geometry, grad):
    n = grad.shape[0]
    rank = geometry.shape[1]
    last = geometry[0, rank - 1]
    if n == 0 or last == 0:
        return
    step_a = geometry[1, rank - 1]
    step_b = geometry[2, rank - 1]
    pieces = (last + PIECE - 1) // PIECE
    for t in range(begin, end):
        r = np.int64(t) // pieces
        start = (np.int64(t) - r * pieces) * PIECE
        stop = min(start + PIECE, last)
        offset_a, offset_b = _offsets(geometry, r, 0, rank - 1)
        base = r * last
        if which == 0:
            for m in range(start, stop):
                grad[base + m] = _gradient(code, 0, a[offset_a + m * step_a], b[offset_b + m * step_b], dy[base + m])
        else:
            for m in range(start, stop):
                grad[base + m] = _gradient(code, 1, a[offset_a + m * step_a], b[offset_b + m * step_b], dy[base + m])


@njit(cache=True)
def binary_backward_same(code, which, a, b, dy, geometry, grad):
    """``binary_backward`` for an operand that is not broadcast (its shape is the
    output's): no sum, one gradient element per output element, read with the forward
    pass's gather ``geometry`` (``broadcast_geometry``). The reduction kernel's outer loop
    of offsets per element is what made the input gradient of x (op) c slow (41 ms at
    32x64x32x32); this runs as the forward does."""
    parallel_ranges(_binary_backward_same_range, _piece_count(grad.shape[0], geometry), (code, which, a, b, dy,
                    geometry, grad))


@range_body
def _clip_forward_range(begin, end, x, low, high, out):
    for i in range(np.uint64(begin), np.uint64(end)):
        v = x[i]
        if v < low:
            v = low
        if v > high:
            v = high
        out[i] = v


@njit(cache=True)
def clip_forward(x, low, high, out):
    """out = min(max(x, low), high), as np.clip (NaN stays NaN; low > high gives high)."""
    parallel_ranges(_clip_forward_range, out.shape[0], (x, low, high, out))


@range_body
def _clip_backward_range(begin, end, x, low, high, dy, dx):
    one = dx.dtype.type(1.0)
    zero = dx.dtype.type(0.0)
    for i in range(np.uint64(begin), np.uint64(end)):
        v = x[i]
        dx[i] = dy[i] * (one if (v >= low) & (v <= high) else zero)


@njit(cache=True)
def clip_backward(x, low, high, dy, dx):
    """dx = dy * (low <= x <= high) (PyTorch's clamp gradient; NaN x gets 0 * dy)."""
    parallel_ranges(_clip_backward_range, dx.shape[0], (x, low, high, dy, dx))


@range_body
def _log_softmax_forward_range(begin, end, x, out):
    outer, n, inner = x.shape
    if n == 0:
        return
    for r in range(begin, end):
        o = r // inner
        c = r - o * inner
        top = x[o, 0, c]
        for i in range(1, n):
            v = x[o, i, c]
            if v > top or v != v:  # NaN propagates, as np.max
                top = v
        total = out.dtype.type(0.0)
        for i in range(n):
            total += math.exp(x[o, i, c] - top)
        log_total = math.log(total)
        for i in range(n):
            out[o, i, c] = (x[o, i, c] - top) - log_total


@njit(cache=True)
def log_softmax_forward(x, out):
    """out = x - max - log(sum(exp(x - max))) along axis 1 of (outer, axis, inner) views."""
    parallel_ranges(_log_softmax_forward_range, x.shape[0] * x.shape[2], (x, out))


@range_body
def _log_softmax_backward_range(begin, end, y, dy, dx):
    outer, n, inner = y.shape
    for r in range(begin, end):
        o = r // inner
        c = r - o * inner
        total = dx.dtype.type(0.0)
        for i in range(n):
            total += dy[o, i, c]
        for i in range(n):
            dx[o, i, c] = dy[o, i, c] - math.exp(y[o, i, c]) * total


@njit(cache=True)
def log_softmax_backward(y, dy, dx):
    """y = log_softmax(x) along axis 1 of (outer, axis, inner) views:
    dx = dy - exp(y) * sum(dy) (``dx`` may be ``dy``)."""
    parallel_ranges(_log_softmax_backward_range, y.shape[0] * y.shape[2], (y, dy, dx))


@range_body
def _take_forward_range(begin, end, x, indices, out):
    outer, n_out, inner = out.shape
    for r in range(begin, end):
        o = r // n_out
        k = r - o * n_out
        j = indices[k]
        for i in range(inner):
            out[o, k, i] = x[o, j, i]


@njit(cache=True)
def take_forward(x, indices, out):
    """out[o, k, i] = x[o, indices[k], i] over (outer, axis, inner) views: ONNX's Slice
    (any step) and Gather with constant indices along one axis."""
    parallel_ranges(_take_forward_range, out.shape[0] * out.shape[1], (x, indices, out))


@range_body
def _take_backward_range(begin, end, dy, indices, dx):
    outer, n_in, inner = dx.shape
    n_out = dy.shape[1]
    zero = dx.dtype.type(0.0)
    for o in range(begin, end):
        for j in range(n_in):
            for i in range(inner):
                dx[o, j, i] = zero
        for k in range(n_out):
            j = indices[k]
            for i in range(inner):
                dx[o, j, i] += dy[o, k, i]


@njit(cache=True)
def take_backward(dy, indices, dx):
    """dx[o, j, i] = the sum of dy[o, k, i] over the k with indices[k] == j (zero where
    none). Parallel over ``outer`` only: each iteration owns its rows of dx, so indices
    that repeat (Gather's may) add into one element from one iteration, in order."""
    parallel_ranges(_take_backward_range, dx.shape[0], (dy, indices, dx))


# -- geometry (plain Python, once per shape) ----------------------------------------------
def _contiguous_strides(shape):
    strides, step = [], 1
    for d in reversed(shape):
        strides.append(step)
        step *= int(d)
    return strides[::-1]


def _merged(dims, rows):
    """Drop size-1 axes and merge each axis into the next where every row of strides
    stays linear across the two; at least one axis (a scalar is dims (1,))."""
    keep = [k for k, d in enumerate(dims) if d != 1]
    dims = [dims[k] for k in keep]
    rows = [[row[k] for k in keep] for row in rows]
    k = len(dims) - 2
    while k >= 0:
        if all(row[k] == row[k + 1] * dims[k + 1] for row in rows):
            dims[k] *= dims[k + 1]
            for row in rows:
                row[k] = row[k + 1]
            del dims[k + 1]
            for row in rows:
                del row[k + 1]
        k -= 1
    if not dims:
        return [1], [[0] for _ in rows]
    return dims, rows


def permute_geometry(shape, axes):
    """``permute_forward``'s geometry for x of ``shape`` transposed by ``axes``: int64
    (2, rank') rows out dims, x's strides along them."""
    x_strides = _contiguous_strides(shape)
    dims = [int(shape[a]) for a in axes]
    dims, rows = _merged(dims, [_contiguous_strides(dims), [x_strides[a] for a in axes]])
    return np.array([dims, rows[1]], np.int64)


def _operand_strides(shape, out_shape):
    shape = (1,) * (len(out_shape) - len(shape)) + tuple(shape)
    strides = _contiguous_strides(shape)
    return [0 if d == 1 else s for d, s in zip(shape, strides)]


def broadcast_geometry(out_shape, a_shape, b_shape):
    """``binary_forward``'s geometry for a of ``a_shape`` (op) b of ``b_shape`` into
    ``out_shape`` (NumPy broadcasting; leading axes of size 1 may be left out): int64
    (3, rank') rows out dims, a's strides, b's strides (0 where broadcast)."""
    out_shape = tuple(int(d) for d in out_shape)
    dims, rows = _merged(list(out_shape), [_contiguous_strides(out_shape), _operand_strides(a_shape, out_shape),
                                           _operand_strides(b_shape, out_shape)])
    return np.array([dims, rows[1], rows[2]], np.int64)


def reduction_geometry(which, out_shape, a_shape, b_shape):
    """(geometry, n_kept) of ``binary_backward`` for the gradient of a (``which`` 0) or
    b (1): the axes the operand spans first, then those it is broadcast along; rows dims,
    dy's strides, the other operand's strides."""
    out_shape = tuple(int(d) for d in out_shape)
    dims, (out_strides, a_strides, b_strides) = _merged(
        list(out_shape), [_contiguous_strides(out_shape), _operand_strides(a_shape, out_shape),
                          _operand_strides(b_shape, out_shape)])
    target, other = (a_strides, b_strides) if which == 0 else (b_strides, a_strides)
    kept = [k for k in range(len(dims)) if target[k] != 0]
    summed = [k for k in range(len(dims)) if target[k] == 0]
    order = kept + summed
    geometry = np.array([[dims[k] for k in order], [out_strides[k] for k in order], [other[k] for k in order]],
                        np.int64)
    return geometry, len(kept)


def softmax_geometry(shape, axis):
    """(outer, axis length, inner) of ``shape`` around ``axis``."""
    axis = axis % len(shape)
    outer = int(np.prod(shape[:axis], dtype=np.int64))
    inner = int(np.prod(shape[axis + 1:], dtype=np.int64))
    return outer, int(shape[axis]), inner
