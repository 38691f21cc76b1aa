"""Elementwise operators: Identity, Dropout, activations, Clip, the four arithmetic
operators with broadcasting, Softmax and LogSoftmax."""

import numpy as np

from .common import checked_axis, plain
from .registry import converter
from .values import Const, Value, identity


@converter("Identity", since=1)
def identity_op(ctx, node, inputs):
    return inputs[0]


@converter("Dropout", since=1)
def dropout(ctx, node, inputs):
    attrs = ctx.attributes(node)
    if ctx.opset < 7 and not int(attrs.get("is_test", 0)):
        raise ctx.error("is_test=0 (training mode)", "Dropout at inference (is_test=1 before opset 7)")
    return _dropout(ctx, node, inputs[0], float(attrs.get("ratio", 0.5)))


@converter("Dropout", since=12)
def dropout_12(ctx, node, inputs):
    ratio = 0.5 if len(inputs) < 2 or inputs[1] is None else float(ctx.constant(inputs[1], "ratio"))
    if len(inputs) > 2 and inputs[2] is not None and bool(ctx.constant(inputs[2], "training_mode")):
        raise ctx.error("training_mode=True", "Dropout at inference (training_mode false)")
    return _dropout(ctx, node, inputs[0], ratio)


def _dropout(ctx, node, x, ratio):
    from ...layers import Dropout

    if len(node.output) > 1 and node.output[1] and ctx.consumers.get(node.output[1]):
        raise ctx.error("its mask output is used", "Dropout's first output")
    if isinstance(x, Const) or ratio <= 0.0:
        return x
    x = plain(ctx, x)
    return Value(ctx.call(ctx.named(Dropout, ratio), x.tensor), x.perm)


def _unary(layer_factory, fold):
    def convert(ctx, node, inputs):
        x = inputs[0]
        if isinstance(x, Const):
            return ctx.fold(fold, [x])
        x = plain(ctx, x)
        layer = layer_factory(ctx, node)
        return Value(ctx.call(layer, x.tensor), x.perm)

    return convert


def _relu_layer(ctx, node):
    from ...layers import ReLU

    return ctx.named(ReLU)


def _activation_layer(name):
    def make(ctx, node):
        from ...layers import Activation

        return ctx.named(Activation, name)

    return make


def _leaky_layer(ctx, node):
    from ...layers import LeakyReLU

    alpha = float(ctx.attributes(node).get("alpha", 0.01))
    if alpha < 0:
        raise ctx.error(f"alpha={alpha}", "alpha >= 0")
    return ctx.named(LeakyReLU, negative_slope=alpha)


converter("Relu", since=1)(_unary(_relu_layer, lambda a: np.maximum(a, 0)))
converter("Sigmoid", since=1)(_unary(_activation_layer("sigmoid"), lambda a: 1 / (1 + np.exp(-a))))
converter("Tanh", since=1)(_unary(_activation_layer("tanh"), np.tanh))
converter("LeakyRelu", since=1)(_unary(_leaky_layer, None))


def _elu_layer(ctx, node):
    from ...layers import ELU

    alpha = float(ctx.attributes(node).get("alpha", 1.0))
    if alpha < 0:
        raise ctx.error(f"alpha={alpha}", "alpha >= 0")
    return ctx.named(ELU, alpha=alpha)


def _selu_layer(ctx, node):
    """SELU with Keras's constants (ONNX's defaults are their float32 roundings)."""
    from ...kernels.activations import SELU_ALPHA, SELU_SCALE
    from ...layers import Activation

    attributes = ctx.attributes(node)
    alpha, gamma = float(attributes.get("alpha", SELU_ALPHA)), float(attributes.get("gamma", SELU_SCALE))
    if not (np.isclose(alpha, SELU_ALPHA, rtol=1e-6) and np.isclose(gamma, SELU_SCALE, rtol=1e-6)):
        raise ctx.error(f"alpha={alpha}, gamma={gamma}", f"SELU's own alpha={SELU_ALPHA:.7f}, gamma={SELU_SCALE:.7f}")
    return ctx.named(Activation, "selu")


converter("Elu", since=1)(_unary(_elu_layer, None))
converter("Selu", since=1)(_unary(_selu_layer, None))
converter("Softplus", since=1)(_unary(_activation_layer("softplus"), lambda a: np.logaddexp(a, 0)))


def _clip(ctx, node, x, low, high):
    from ...layers import Clip, ReLU

    if isinstance(x, Const):
        return ctx.fold(lambda a: np.clip(a, -np.inf if low is None else low, np.inf if high is None else high), [x])
    x = plain(ctx, x)
    layer = ctx.named(ReLU) if low == 0.0 and high is None else ctx.named(Clip, low, high)
    return Value(ctx.call(layer, x.tensor), x.perm)


@converter("Clip", since=1)
def clip_6(ctx, node, inputs):
    attrs = ctx.attributes(node)
    big = float(np.finfo(np.float32).max)
    low, high = attrs.get("min", -big), attrs.get("max", big)
    return _clip(ctx, node, inputs[0], None if low <= -big else float(low), None if high >= big else float(high))


@converter("Clip", since=11)
def clip_11(ctx, node, inputs):
    bounds = list(inputs[1:]) + [None] * (3 - len(inputs))
    low = None if bounds[0] is None else float(ctx.constant(bounds[0], "min"))
    high = None if bounds[1] is None else float(ctx.constant(bounds[1], "max"))
    return _clip(ctx, node, inputs[0], low, high)


_NUMPY_BINARY = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply}
_OPERATION = {"Add": "add", "Sub": "sub", "Mul": "mul", "Div": "div"}
_REVERSED = {"add": "add", "sub": "rsub", "mul": "mul", "div": "rdiv"}


def _divide(a, b):
    if a.dtype.kind in "iu" and b.dtype.kind in "iu":
        return (np.trunc(a / b)).astype(np.result_type(a, b))
    return np.divide(a, b).astype(np.result_type(a, b))


def _binary(op):
    def convert(ctx, node, inputs):
        a, b = inputs
        if ctx.opset < 7:
            b = _legacy_broadcast(ctx, node, a, b)
        if isinstance(a, Const) and isinstance(b, Const):
            return ctx.fold(_NUMPY_BINARY.get(op, _divide), [a, b])
        operation = _OPERATION[op]
        if isinstance(a, Const):
            a, b, operation = b, a, _REVERSED[operation]
        if isinstance(b, Const):
            return _with_constant(ctx, a, b, operation)
        return _two_tensors(ctx, a, b, operation)

    return convert


for _op in ("Add", "Sub", "Mul", "Div"):
    converter(_op, since=1)(_binary(_op))


def _legacy_broadcast(ctx, node, a, b):
    """Before opset 7, B broadcasts into A only with broadcast=1, and ``axis`` aligns B's
    first axis with A's axis ``axis`` rather than B's last with A's last: B's shape gets
    trailing 1s, after which NumPy's broadcasting (opset 7's) means the same."""
    attrs = ctx.attributes(node)
    if not attrs.get("broadcast", 0) or "axis" not in attrs:
        return b
    if not isinstance(b, Const):
        raise ctx.error("broadcast=1 with axis on a computed B", "a constant B")
    rank = len(a.a.shape) if isinstance(a, Const) else a.rank
    axis = checked_axis(ctx, attrs["axis"], rank)
    trailing = rank - axis - b.a.ndim
    if trailing < 0:
        raise ctx.error(f"B of shape {b.a.shape} at axis {axis} overruns A of rank {rank}")
    return ctx.fold(lambda v: v.reshape(v.shape + (1,) * trailing), [b])


def _with_constant(ctx, x, const, operation):
    from ...layers import ConstantOperation, Rescaling

    x = plain(ctx, x)
    array = ctx.static(const, "the constant operand")
    if array.dtype.kind not in "fiu":
        raise ctx.error(f"an operand of type {array.dtype}", "float operands")
    full = np.broadcast_shapes(np.shape(array), tuple(1 if d is None else d for d in x.onnx_shape))
    if len(full) != x.rank:
        raise ctx.error(f"the constant of shape {np.shape(array)} would broadcast the input of rank {x.rank} "
                        "to a higher rank")
    operand = ctx.operand(x, array)
    if operand is None:
        raise ctx.error(f"the constant of shape {np.shape(array)} varies along the batch axis")
    if operand.size == 1 and operation in ("add", "sub", "mul", "div"):
        c = float(operand.reshape(()))
        if operation == "div" and c == 0.0:
            raise ctx.error("division by a constant zero")
        scale, offset = {"add": (1.0, c), "sub": (1.0, -c), "mul": (c, 0.0), "div": (1.0 / c, 0.0)}[operation]
        if operation == "div" or not const.initializer:
            layer = ctx.named(Rescaling, scale, offset)
            return Value(ctx.call(layer, x.tensor), x.perm)
    layer = ctx.named(ConstantOperation, operation, operand.shape, trainable_operand=const.initializer)
    return Value(ctx.call(layer, x.tensor, [operand]), x.perm)


def _two_tensors(ctx, a, b, operation):
    from ...layers import Add, BroadcastOperation, Multiply, Subtract

    if a.rank != b.rank:
        raise ctx.error(f"operands of ranks {a.rank} and {b.rank} (broadcasting would mix the batch axis into "
                        "another)", "two computed tensors of one rank")
    if a.rows is not None or b.rows is not None:
        a, b = ctx.relayout(a, identity(a.rank)), ctx.relayout(b, identity(b.rank))
    tb = ctx.in_layout(b, a.perm)
    ta = a.tensor
    if ta.shape == tb.shape and operation in ("add", "sub", "mul"):
        layer = ctx.named({"add": Add, "sub": Subtract, "mul": Multiply}[operation])
    else:
        layer = ctx.named(BroadcastOperation, operation)
    return Value(ctx.call(layer, [ta, tb]), a.perm)


def _softmax_last(ctx, log, tensor):
    from ...layers import LogSoftmax, Softmax

    return ctx.call(ctx.named(LogSoftmax) if log else ctx.named(Softmax), tensor)


def _softmax_axis(ctx, x, axis, log):
    """softmax over the single ONNX axis ``axis`` of ``x``."""
    x = plain(ctx, x)
    if x.perm[-1] == axis:
        return Value(_softmax_last(ctx, log, x.tensor), x.perm)
    perm = tuple(p for p in x.perm if p != axis) + (axis,)
    return Value(_softmax_last(ctx, log, ctx.in_layout(x, perm)), perm)


def _softmax_old(log):
    def convert(ctx, node, inputs):
        from ...layers import Reshape

        x = ctx.dynamic(inputs[0])
        axis = checked_axis(ctx, ctx.attributes(node).get("axis", 1), x.rank)
        if axis == 0:
            raise ctx.error("axis=0 mixes samples of the batch", "axis >= 1")
        if axis == x.rank - 1:
            return _softmax_axis(ctx, x, axis, log)
        shape = x.onnx_shape
        # coerced to 2-D: softmax over all axes from ``axis`` on, as one
        tensor = ctx.in_layout(x, identity(x.rank))
        inner = int(np.prod(shape[axis:], dtype=np.int64))
        outer = tuple(shape[1:axis])
        flat = ctx.call(ctx.named(Reshape, outer + (inner,)), tensor)
        result = _softmax_last(ctx, log, flat)
        return Value(ctx.call(ctx.named(Reshape, tuple(shape[1:])), result), identity(x.rank))

    return convert


def _softmax_13(log):
    def convert(ctx, node, inputs):
        x = ctx.dynamic(inputs[0])
        axis = checked_axis(ctx, ctx.attributes(node).get("axis", -1), x.rank)
        if axis == 0:
            raise ctx.error("axis=0 mixes samples of the batch", "axis >= 1")
        return _softmax_axis(ctx, x, axis, log)

    return convert


converter("Softmax", since=1)(_softmax_old(False))
converter("Softmax", since=13)(_softmax_13(False))
converter("LogSoftmax", since=1)(_softmax_old(True))
converter("LogSoftmax", since=13)(_softmax_13(True))
