"""Constants and the shape arithmetic exporters emit (Shape -> Gather -> Unsqueeze -> Concat
-> Reshape): a node whose inputs are all Const yields a Const (NumPy), so Reshape receives a
fixed target shape."""

import numpy as np

from .common import all_const, checked_axis, ONNX_DTYPES, plain
from .registry import converter
from .values import BATCH_A, BATCH_B, Const, Value


@converter("Constant", since=1)
def constant(ctx, node, inputs):
    from onnx import numpy_helper

    attrs = ctx.attributes(node)
    if "value" in attrs:
        return Const(_as_supported(ctx, numpy_helper.to_array(attrs["value"])))
    for key, dtype in (("value_float", np.float32), ("value_floats", np.float32), ("value_int", np.int64),
                       ("value_ints", np.int64)):
        if key in attrs:
            return Const(np.array(attrs[key], dtype))
    raise ctx.error(f"attribute(s) {sorted(attrs)}", "value, value_float(s) and value_int(s)")


def _as_supported(ctx, array):
    if array.dtype.kind == "f":
        return array.astype(np.float32)
    if array.dtype.kind not in "iub":
        raise ctx.error(f"data type {array.dtype}", "float, integer and bool tensors")
    return array


@converter("Shape", since=1)
def shape(ctx, node, inputs):
    (item,) = inputs[:1]
    attrs = ctx.attributes(node)
    start, end = attrs.get("start", 0), attrs.get("end")

    def cut(dims):
        return np.array(dims[start:end] if end is not None else dims[start:], np.int64)

    if isinstance(item, Const):
        return ctx.fold(lambda a: cut(list(np.shape(a))), [item])
    return Const(cut(item.shape_with_batch(BATCH_A)), cut(item.shape_with_batch(BATCH_B)))


@converter("Cast", since=1)
def cast(ctx, node, inputs):
    to = ctx.attributes(node)["to"]
    if to not in ONNX_DTYPES:
        raise ctx.error(f"cast to data type {to}", "casts to float, integer and bool types")
    if isinstance(inputs[0], Const):
        return ctx.fold(lambda a: a.astype(ONNX_DTYPES[to]), inputs[:1])
    if to != 1:
        raise ctx.error("a cast of a computed tensor to a type other than float32", "float32 tensors")
    return inputs[0]


@converter("ConstantOfShape", since=9)
def constant_of_shape(ctx, node, inputs):
    from onnx import numpy_helper

    attrs = ctx.attributes(node)
    fill = numpy_helper.to_array(attrs["value"]).reshape(-1) if "value" in attrs else np.zeros(1, np.float32)
    fill = _as_supported(ctx, fill)
    shape_const = inputs[0]
    if not isinstance(shape_const, Const):
        raise ctx.error("its shape input is computed from the model's input")
    return ctx.fold(lambda s: np.full(tuple(int(d) for d in s), fill[0], fill.dtype), [shape_const])


@converter("Gather", since=1)
def gather(ctx, node, inputs):
    data, indices = inputs
    axis = ctx.attributes(node).get("axis", 0)
    if not isinstance(indices, Const):
        raise ctx.error("indices computed from the model's input")
    if isinstance(data, Const):
        return ctx.fold(lambda d, i: np.take(d, np.where(i < 0, i + d.shape[axis], i), axis=axis), [data, indices])
    x = ctx.dynamic(data)
    axis = checked_axis(ctx, axis, x.rank)
    supported = "Gather with constant integer indices along a sample axis (axis >= 1) of a computed tensor"
    if axis == 0:
        raise ctx.error("Gather along the batch axis (axis 0)", supported)
    index = np.asarray(ctx.static(indices, "indices"))
    if index.dtype.kind not in "iu" or index.size == 0:
        raise ctx.error(f"indices of shape {index.shape} and type {index.dtype}", supported)
    size = x.onnx_shape[axis]
    if index.min() < -size or index.max() >= size:
        raise ctx.error(f"indices {index.tolist()} outside [-{size}, {size}) along axis {axis}")
    x = _take(ctx, x, axis, np.where(index < 0, index + size, index).reshape(-1))
    return x if index.ndim == 1 else _split_axis(ctx, x, axis, index.shape)


def _take(ctx, x, axis, indices):
    """``x`` (a Value) at ``indices`` along its ONNX ``axis`` (a sample axis), in its layout."""
    from ...layers import Take

    x = plain(ctx, x)
    return Value(ctx.call(ctx.named(Take, x.perm.index(axis), indices), x.tensor), x.perm)


def _split_axis(ctx, x, axis, dims):
    """``x`` with its ONNX ``axis`` replaced by axes of sizes ``dims`` (Gather's indices
    shape: () drops the axis), in its layout: the new axes stay together where it was."""
    from ...layers import Reshape

    if x.rank + len(dims) <= 2:
        raise ctx.error("a scalar index leaving only the batch axis", "results that keep a sample axis")
    position = x.perm.index(axis)
    sample = list(x.tensor.shape[1:])
    shape = tuple(sample[:position - 1] + [int(d) for d in dims] + sample[position:])
    perm = []
    for q in x.perm:
        perm.extend(range(axis, axis + len(dims)) if q == axis else [q if q < axis else q + len(dims) - 1])
    return Value(ctx.call(ctx.named(Reshape, shape), x.tensor), perm)


def _slice_value(ctx, x, starts, ends, axes, steps):
    """Slice of a computed tensor: a Take per sliced sample axis; the batch axis only whole."""
    x = ctx.dynamic(x)
    axes = range(len(starts)) if axes is None else axes
    steps = [1] * len(starts) if steps is None else steps
    for start, end, axis, step in zip(starts, ends, axes, steps):
        axis, start, end, step = checked_axis(ctx, axis, x.rank), int(start), int(end), int(step)
        if step == 0:
            raise ctx.error("a step of 0")
        # Python's slice clamps starts and ends as ONNX does (negative steps included)
        if axis == 0:
            if any(len(range(n)[start:end:step]) != n or step != 1 for n in (BATCH_A, BATCH_B)):
                raise ctx.error(f"a Slice of the batch axis ({start}:{end}:{step})", "Slice along sample axes, "
                                "the batch axis only whole")
            continue
        size = x.onnx_shape[axis]
        index = np.arange(size)[start:end:step]
        if index.size == 0:
            raise ctx.error(f"an empty Slice {start}:{end}:{step} of an axis of size {size}",
                            "Slices that keep at least one element")
        if index.size != size or step != 1:
            x = _take(ctx, x, axis, index)
    return x


def _slice(data, starts, ends, axes, steps):
    index = [slice(None)] * data.ndim
    axes = range(len(starts)) if axes is None else axes
    steps = [1] * len(starts) if steps is None else steps
    for start, end, axis, step in zip(starts, ends, axes, steps):
        index[int(axis)] = slice(int(start), None if abs(int(end)) >= 2 ** 62 and step > 0 else int(end), int(step))
    return data[tuple(index)]


@converter("Slice", since=1)
def slice_1(ctx, node, inputs):
    attrs = ctx.attributes(node)
    if not isinstance(inputs[0], Const):
        return _slice_value(ctx, inputs[0], attrs["starts"], attrs["ends"], attrs.get("axes"), None)
    return ctx.fold(lambda d: _slice(d, attrs["starts"], attrs["ends"], attrs.get("axes"), None), inputs[:1])


@converter("Slice", since=10)
def slice_10(ctx, node, inputs):
    padded = list(inputs) + [None] * (5 - len(inputs))
    if not all_const(inputs):
        parts = [None if item is None else np.asarray(ctx.constant(item, what)).reshape(-1)
                 for item, what in zip(padded[1:], ("starts", "ends", "axes", "steps"))]
        return _slice_value(ctx, inputs[0], *parts)
    return ctx.fold(lambda d, s, e, a=None, st=None: _slice(d, s, e, a, st), padded)


# folds only: operators shape arithmetic uses, on constants
_FOLDS = {
    "Neg": np.negative, "Sqrt": np.sqrt, "Floor": np.floor, "Ceil": np.ceil, "Abs": np.abs, "Exp": np.exp,
    "Log": np.log, "Not": np.logical_not, "Reciprocal": lambda a: 1 / a,
    "Equal": np.equal, "Less": np.less, "Greater": np.greater, "And": np.logical_and, "Or": np.logical_or,
    "Where": np.where, "Pow": lambda a, b: np.power(a, b).astype(a.dtype),
    "Range": lambda s, l, d: np.arange(s, l, d, dtype=np.result_type(s, l, d)),
    "Expand": lambda a, s: a * np.ones(tuple(int(d) for d in s), a.dtype),
    "Min": lambda *a: np.minimum.reduce(np.broadcast_arrays(*a)),
    "Max": lambda *a: np.maximum.reduce(np.broadcast_arrays(*a)),
}


def _fold_only(op):
    def fold(ctx, node, inputs):
        if not all_const(inputs):
            raise ctx.error(f"{op} of a tensor computed from the model's input", f"{op} on constants only")
        return ctx.fold(_FOLDS[op], inputs)

    return fold


for _op in _FOLDS:
    converter(_op, since=1)(_fold_only(_op))


@converter("CastLike", since=15)
def cast_like(ctx, node, inputs):
    x, like = inputs
    dtype = (like.a.dtype if isinstance(like, Const) else np.dtype(np.float32))
    if isinstance(x, Const):
        return ctx.fold(lambda a: a.astype(dtype), [x])
    if dtype != np.float32:
        raise ctx.error(f"a cast of a computed tensor to {dtype}", "float32 tensors")
    return x
