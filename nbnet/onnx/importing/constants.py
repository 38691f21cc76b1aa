"""Constants and the shape arithmetic exporters emit (Shape -> Gather -> Unsqueeze -> Concat
-> Reshape): a node whose inputs are all Const yields a Const (NumPy), so Reshape receives a
fixed target shape."""

import numpy as np

from .common import all_const, ONNX_DTYPES
from .registry import converter
from .values import BATCH_A, BATCH_B, Const


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
    raise ctx.error("Gather from a tensor computed from the model's input", "Gather on constants and shapes")


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
        raise ctx.error("Slice of a tensor computed from the model's input", "Slice on constants and shapes")
    return ctx.fold(lambda d: _slice(d, attrs["starts"], attrs["ends"], attrs.get("axes"), None), inputs[:1])


@converter("Slice", since=10)
def slice_10(ctx, node, inputs):
    if not all_const(inputs):
        raise ctx.error("Slice of a tensor computed from the model's input", "Slice on constants and shapes")
    padded = list(inputs) + [None] * (5 - len(inputs))
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
