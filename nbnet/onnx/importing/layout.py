"""Transpose, Reshape, Flatten, Squeeze, Unsqueeze and Concat: layout bookkeeping (values.py)
rather than data movement wherever it can be."""

import numpy as np

from .common import all_const, checked_axis
from .registry import converter
from .values import BATCH_A, BATCH_B, Const, Value, flatten_rows, identity


@converter("Transpose", since=1)
def transpose(ctx, node, inputs):
    x = inputs[0]
    perm = ctx.attributes(node).get("perm")
    if isinstance(x, Const):
        return ctx.fold(lambda a: np.transpose(a, perm), [x])
    perm = list(range(x.rank))[::-1] if perm is None else [int(p) for p in perm]
    if perm[0] != 0:
        raise ctx.error(f"perm={perm} moves the batch axis", "transposes that keep axis 0 first")
    if x.rows is not None:
        x = ctx.relayout(x, identity(2))
    new_perm = tuple(int(p) for p in np.argsort(perm)[list(x.perm)])
    return Value(x.tensor, new_perm)


def _reshape_value(ctx, x, target_a, target_b, what):
    """Reshape ``x`` to ONNX shape ``target`` (batch-sentinel versions resolved)."""
    from ...layers import Flatten, Reshape

    sample = int(np.prod(x.onnx_shape[1:], dtype=np.int64))
    if not (target_a[0] == BATCH_A and target_b[0] == BATCH_B) or list(target_a[1:]) != list(target_b[1:]):
        raise ctx.error(f"{what} {list(target_a)} does not keep the batch axis first "
                        "(nbnet keeps the batch symbolic)")
    target = tuple(int(d) for d in target_a[1:])
    if int(np.prod(target, dtype=np.int64)) != sample:
        raise ctx.error(f"{what} {list(target_a)} does not hold the input's {sample} values per sample")
    if target == tuple(x.onnx_shape[1:]) and x.rows is None:
        return x
    if len(target) == 1:
        if x.rank == 2:
            return x
        rows = flatten_rows(x.onnx_shape[1:], x.perm)
        layer = ctx.named(Flatten)
        return Value(ctx.call(layer, x.tensor), identity(2), rows, x)
    tensor = ctx.in_layout(x, identity(x.rank))
    return Value(ctx.call(ctx.named(Reshape, target), tensor), identity(len(target) + 1))


def _resolve_target(ctx, x, target, batch, allowzero):
    shape = list(x.shape_with_batch(batch))
    out = [int(d) for d in target]
    for i, d in enumerate(out):
        if d == 0 and not allowzero:
            if i >= len(shape):
                raise ctx.error(f"a 0 at position {i} of the target shape beyond the input's rank")
            out[i] = shape[i]
    if out.count(-1) > 1:
        raise ctx.error("more than one -1 in the target shape")
    if -1 in out:
        known = int(np.prod([d for d in out if d != -1], dtype=np.int64))
        total = int(np.prod(shape, dtype=np.int64))
        if known == 0 or total % known:
            raise ctx.error(f"target shape {list(target)} does not fit input shape {shape}")
        out[out.index(-1)] = total // known
    return out


@converter("Reshape", since=5)
def reshape(ctx, node, inputs):
    x, target = inputs
    allowzero = int(ctx.attributes(node).get("allowzero", 0))
    if not isinstance(target, Const):
        raise ctx.error("its shape input is computed from the model's input")
    if isinstance(x, Const):
        def fold(a, t):
            t = [int(d) for d in t]
            return a.reshape([a.shape[i] if d == 0 and not allowzero else d for i, d in enumerate(t)])
        return ctx.fold(fold, [x, target])
    versions = [np.asarray(t).reshape(-1) for t in target.versions()]
    if not target.batch_dependent and len(versions[0]) and versions[0][0] == ctx.declared_batch:
        # a fixed target written for the graph's fixed batch size (mnist-8's [1, 256]) keeps the batch axis
        versions = [np.concatenate([[batch], v[1:]]) for v, batch in zip(versions, (BATCH_A, BATCH_B))]
    ta, tb = (_resolve_target(ctx, x, t, batch, allowzero) for t, batch in zip(versions, (BATCH_A, BATCH_B)))
    return _reshape_value(ctx, x, ta, tb, "target shape")


@converter("Flatten", since=1)
def flatten(ctx, node, inputs):
    x = inputs[0]
    rank = len(np.shape(x.a)) if isinstance(x, Const) else x.rank
    axis = int(ctx.attributes(node).get("axis", 1))
    axis = axis + rank if axis < 0 else axis
    if isinstance(x, Const):
        return ctx.fold(lambda a: a.reshape(int(np.prod(a.shape[:axis], dtype=np.int64)), -1), [x])
    if axis == 0 or any(d != 1 for d in x.onnx_shape[1:axis]):
        raise ctx.error(f"axis={axis} merges the batch axis with others", "Flatten that keeps the batch axis")
    sample = int(np.prod(x.onnx_shape[1:], dtype=np.int64))
    return _reshape_value(ctx, x, [BATCH_A, sample], [BATCH_B, sample], "the flattened shape")


def _squeeze(ctx, node, x, axes):
    from ...layers import Reshape

    if isinstance(x, Const):
        return ctx.fold(lambda a: np.squeeze(a, axis=None if axes is None else tuple(int(v) for v in axes)), [x])
    if x.rows is not None:
        x = ctx.relayout(x, identity(2))
    shape = x.onnx_shape
    axes = [i for i in range(1, x.rank) if shape[i] == 1] if axes is None else \
        sorted({checked_axis(ctx, a, x.rank) for a in axes})
    if 0 in axes:
        raise ctx.error("it squeezes the batch axis")
    if any(shape[a] != 1 for a in axes):
        raise ctx.error(f"squeezing axes {axes} of shape {list(shape)} whose size is not 1")
    perm = [p - sum(a < p for a in axes) for p in x.perm if p not in axes]
    sample = tuple(d for d, p in zip(x.tensor.shape[1:], x.perm[1:]) if p not in axes)
    if not sample:
        raise ctx.error("the result would have the batch axis only", "results of rank 2 or more")
    return Value(ctx.call(ctx.named(Reshape, sample), x.tensor), perm)


def _unsqueeze(ctx, node, x, axes):
    from ...layers import Reshape

    if isinstance(x, Const):
        def fold(a):
            out_rank = a.ndim + len(axes)
            return np.expand_dims(a, tuple(sorted(int(v) % out_rank for v in axes)))
        return ctx.fold(fold, [x])
    if x.rows is not None:
        x = ctx.relayout(x, identity(2))
    rank = x.rank + len(axes)
    axes = sorted({checked_axis(ctx, a, rank) for a in axes})
    if 0 in axes:
        raise ctx.error("it inserts an axis before the batch axis")
    old = [i for i in range(rank) if i not in axes]  # old axis j -> new axis old[j]
    perm = [old[p] for p in x.perm] + axes
    sample = tuple(x.tensor.shape[1:]) + (1,) * len(axes)
    return Value(ctx.call(ctx.named(Reshape, sample), x.tensor), perm)


@converter("Squeeze", since=1)
def squeeze_1(ctx, node, inputs):
    return _squeeze(ctx, node, inputs[0], ctx.attributes(node).get("axes"))


@converter("Squeeze", since=13)
def squeeze_13(ctx, node, inputs):
    axes = None if len(inputs) < 2 or inputs[1] is None else ctx.constant(inputs[1], "axes")
    return _squeeze(ctx, node, inputs[0], None if axes is None else list(axes))


@converter("Unsqueeze", since=1)
def unsqueeze_1(ctx, node, inputs):
    return _unsqueeze(ctx, node, inputs[0], list(ctx.attributes(node)["axes"]))


@converter("Unsqueeze", since=13)
def unsqueeze_13(ctx, node, inputs):
    return _unsqueeze(ctx, node, inputs[0], list(ctx.constant(inputs[1], "axes")))


@converter("Concat", since=1)
def concat(ctx, node, inputs):
    from ...layers import Concatenate

    axis = int(ctx.attributes(node).get("axis", 1 if ctx.opset < 4 else 0))
    if all_const(inputs):
        return ctx.fold(lambda *arrays: np.concatenate(arrays, axis=axis), inputs)
    values = [ctx.dynamic(item, "every input of a Concat with a computed input") for item in inputs]
    rank = values[0].rank
    axis = checked_axis(ctx, axis, rank)
    if axis == 0:
        raise ctx.error("concatenation along the batch axis")
    first = values[0] if values[0].rows is None else ctx.relayout(values[0], identity(rank))
    tensors = [ctx.in_layout(v, first.perm) for v in values]
    if len(tensors) == 1:
        return first
    layer = ctx.named(Concatenate, axis=first.perm.index(axis))
    return Value(ctx.call(layer, tensors), first.perm)
