"""One converter per ONNX operator and opset range (see registry.py for the contract).

Constants fold here too: a node whose inputs are all Const yields a Const (NumPy), so the
shape arithmetic exporters emit (Shape -> Gather -> Unsqueeze -> Concat -> Reshape)
reaches Reshape as a fixed target shape."""

import numpy as np

from .registry import converter
from .values import BATCH_A, BATCH_B, Const, Value, channels_last, flatten_rows, identity

_ONNX_DTYPES = {1: np.float32, 2: np.uint8, 3: np.int8, 4: np.uint16, 5: np.int16, 6: np.int32, 7: np.int64,
                9: np.bool_, 10: np.float16, 11: np.float64, 12: np.uint32, 13: np.uint64}


def _plain(ctx, x):
    """``x`` without a pending Flatten order (only Gemm and MatMul fold ``rows``)."""
    return ctx.relayout(x, identity(x.rank)) if x.rows is not None else x


def _all_const(inputs):
    return all(item is None or isinstance(item, Const) for item in inputs)


def _axis(ctx, axis, rank, what="axis"):
    axis = int(axis)
    if not -rank <= axis < rank:
        raise ctx.error(f"{what} {axis} is outside a tensor of rank {rank}")
    return axis % rank


# -- constants and shape arithmetic ------------------------------------------------------
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
    if to not in _ONNX_DTYPES:
        raise ctx.error(f"cast to data type {to}", "casts to float, integer and bool types")
    if isinstance(inputs[0], Const):
        return ctx.fold(lambda a: a.astype(_ONNX_DTYPES[to]), inputs[:1])
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
    if not _all_const(inputs):
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
        if not _all_const(inputs):
            raise ctx.error(f"{op} of a tensor computed from the model's input", f"{op} on constants only")
        return ctx.fold(_FOLDS[op], inputs)

    return fold


for _op in _FOLDS:
    converter(_op, since=1)(_fold_only(_op))


@converter("Identity", since=1)
def identity_op(ctx, node, inputs):
    return inputs[0]


@converter("Dropout", since=1)
def dropout(ctx, node, inputs):
    ratio = float(ctx.attributes(node).get("ratio", 0.5))
    return _dropout(ctx, node, inputs[0], ratio)


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
    x = _plain(ctx, x)
    return Value(ctx.call(ctx.named(Dropout, ratio), x.tensor), x.perm)


# -- elementwise --------------------------------------------------------------------------
def _unary(layer_factory, fold):
    def convert(ctx, node, inputs):
        x = inputs[0]
        if isinstance(x, Const):
            return ctx.fold(fold, [x])
        x = _plain(ctx, x)
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


def _clip(ctx, node, x, low, high):
    from ...layers import Clip, ReLU

    if isinstance(x, Const):
        return ctx.fold(lambda a: np.clip(a, -np.inf if low is None else low, np.inf if high is None else high), [x])
    x = _plain(ctx, x)
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


def _with_constant(ctx, x, const, operation):
    from ...layers import ConstantOperation, Rescaling

    x = _plain(ctx, x)
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


# -- Gemm and MatMul ---------------------------------------------------------------------
def _dense(ctx, node, x, kernel, bias, output_name):
    """Dense over a 2-D value ``x`` with an ONNX (K, N) ``kernel``; binds the output."""
    from ...layers import Dense

    if x.rank != 2:
        raise ctx.error(f"an input of rank {x.rank}", "2-D inputs (batch, features) to Gemm and MatMul")
    kernel = np.asarray(kernel, np.float32)
    if x.rows is not None:
        kernel = kernel[x.rows]
    units = kernel.shape[1]
    extra, output_name = ctx.absorb_bias(output_name, 1, 2, units)
    if extra is not None:
        bias = extra if bias is None else bias + extra
    layer = ctx.named(Dense, units, use_bias=bias is not None)
    weights = [kernel] + ([bias] if bias is not None else [])
    ctx.bind(output_name, Value(ctx.call(layer, x.tensor, weights)))
    return output_name


def _gemm(ctx, node, inputs, broadcast_attr):
    a, b = inputs[0], inputs[1]
    c = inputs[2] if len(inputs) > 2 else None
    attrs = ctx.attributes(node)
    alpha, beta = float(attrs.get("alpha", 1.0)), float(attrs.get("beta", 1.0))
    trans_a, trans_b = int(attrs.get("transA", 0)), int(attrs.get("transB", 0))
    if _all_const(inputs):
        def gemm(a, b, c=None):
            a, b = (a.T if trans_a else a), (b.T if trans_b else b)
            y = alpha * (a @ b)
            return y if c is None else y + beta * c
        return ctx.fold(gemm, [a, b, c])
    ctx.dynamic(a, "input A")
    if trans_a:
        raise ctx.error("transA=1 on a computed input", "transA=0 for the computed input A")
    kernel = ctx.constant(b, "input B (the weights)").astype(np.float32)
    kernel = alpha * (kernel.T if trans_b else kernel)
    bias = None
    if c is not None:
        carray = beta * np.asarray(ctx.constant(c, "input C (the bias)"), np.float32)
        units = kernel.shape[1]
        if carray.ndim > 2 or (carray.ndim == 2 and carray.shape[0] != 1) or carray.size not in (1, units):
            raise ctx.error(f"C of shape {carray.shape}", "C of shape (), (N,), (1, N) or (1, 1)")
        bias = np.broadcast_to(carray.reshape(-1), (units,)).astype(np.float32)
    _dense(ctx, node, a, kernel, bias, node.output[0])
    return None


@converter("Gemm", since=1)
def gemm(ctx, node, inputs):
    return _gemm(ctx, node, inputs, True)


@converter("MatMul", since=1)
def matmul(ctx, node, inputs):
    a, b = inputs
    if _all_const(inputs):
        return ctx.fold(np.matmul, inputs)
    ctx.dynamic(a, "input A")
    kernel = ctx.constant(b, "input B (the weights)")
    if kernel.ndim != 2:
        raise ctx.error(f"a weight of rank {kernel.ndim}", "2-D weights")
    _dense(ctx, node, a, kernel, None, node.output[0])
    return None


# -- convolution and pooling -------------------------------------------------------------
def _explicit_pads(ctx, attrs, spatial, kernel, strides, dilations=(1, 1), ceil_mode=False):
    """(top, left, bottom, right) in ONNX's order [begin..., end...], auto_pad resolved;
    ceil_mode's extra end padding added."""
    auto = attrs.get("auto_pad", "NOTSET")
    effective = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        begin, end = [], []
        for size, k, s in zip(spatial, effective, strides):
            total = max((-(-size // s) - 1) * s + k - size, 0)
            small, large = total // 2, total - total // 2
            begin.append(small if auto == "SAME_UPPER" else large)
            end.append(large if auto == "SAME_UPPER" else small)
        pads = begin + end
    elif auto == "VALID":
        pads = [0] * (2 * len(spatial))
    elif auto == "NOTSET":
        pads = list(attrs.get("pads", [0] * (2 * len(spatial))))
    else:
        raise ctx.error(f"auto_pad={auto!r}", "NOTSET, SAME_UPPER, SAME_LOWER and VALID")
    if ceil_mode:
        n = len(spatial)
        for i, (size, k, s) in enumerate(zip(spatial, effective, strides)):
            padded = size + pads[i] + pads[n + i]
            floor_out = (padded - k) // s + 1
            ceil_out = -(-(padded - k) // s) + 1
            if (ceil_out - 1) * s >= size + pads[i]:  # ONNX drops a window starting in the end padding
                ceil_out -= 1
            pads[n + i] += (ceil_out - floor_out) * s
    return pads


def _same_pads(spatial, kernel, strides):
    begin, end = [], []
    for size, k, s in zip(spatial, kernel, strides):
        total = max((-(-size // s) - 1) * s + k - size, 0)
        begin.append(total // 2)
        end.append(total - total // 2)
    return begin + end


def _spatial_input(ctx, x, what):
    x = ctx.dynamic(x)
    if x.rank != 4 or x.rows is not None:
        raise ctx.error(f"an input of rank {x.rank}", f"{what} over 4-D (N, C, H, W) inputs")
    return x, ctx.in_layout(x, channels_last(4))


def _pad_mode(ctx, tensor, pads, spatial, kernel, strides, pad_value_ok):
    """('valid' | 'same', tensor): explicit padding becomes Keras's 'same' where it has the
    same geometry, else ZeroPadding2D (only where ``pad_value_ok``) and 'valid'."""
    from ...layers import ZeroPadding2D

    if not any(pads):
        return "valid", tensor
    if list(pads) == _same_pads(spatial, kernel, strides):
        return "same", tensor
    if min(pads) < 0:
        raise ctx.error(f"negative pads {pads}")
    if not pad_value_ok:
        return None, tensor
    top, left, bottom, right = pads
    layer = ctx.named(ZeroPadding2D, ((top, bottom), (left, right)))
    return "valid", ctx.call(layer, tensor)


@converter("Conv", since=1)
def conv(ctx, node, inputs):
    from ...layers import Conv2D

    x, tensor = _spatial_input(ctx, inputs[0], "Conv")
    weight = ctx.constant(inputs[1], "the weight W").astype(np.float32)
    bias = None if len(inputs) < 3 or inputs[2] is None else ctx.constant(inputs[2], "the bias B").astype(np.float32)
    attrs = ctx.attributes(node)
    filters, per_group, kh, kw = weight.shape
    channels = x.onnx_shape[1]
    group = int(attrs.get("group", 1))
    if group != 1:
        raise ctx.error(f"group={group}", "group=1 (grouped and depthwise convolutions are not implemented yet)")
    if per_group != channels:
        raise ctx.error(f"a weight for {per_group} input channels on an input with {channels}")
    dilations = list(attrs.get("dilations", [1, 1]))
    if dilations != [1, 1]:
        raise ctx.error(f"dilations={dilations}", "dilations [1, 1]")
    kernel_shape = list(attrs.get("kernel_shape", [kh, kw]))
    if kernel_shape != [kh, kw]:
        raise ctx.error(f"kernel_shape {kernel_shape} differs from the weight's {[kh, kw]}")
    strides = list(attrs.get("strides", [1, 1]))
    spatial = list(x.onnx_shape[2:])
    pads = _explicit_pads(ctx, attrs, spatial, [kh, kw], strides)
    padding, tensor = _pad_mode(ctx, tensor, pads, spatial, [kh, kw], strides, True)
    extra, output_name = ctx.absorb_bias(node.output[0], 1, 4, filters)
    if extra is not None:
        bias = extra if bias is None else bias + extra
    layer = ctx.named(Conv2D, filters, (kh, kw), strides=strides, padding=padding, use_bias=bias is not None)
    weights = [weight.transpose(2, 3, 1, 0)] + ([bias] if bias is not None else [])
    ctx.bind(output_name, Value(ctx.call(layer, tensor, weights), channels_last(4)))
    return None


def _pool(kind):
    def convert(ctx, node, inputs):
        from ...layers import AveragePooling2D, MaxPooling2D

        x, tensor = _spatial_input(ctx, inputs[0], kind)
        attrs = ctx.attributes(node)
        kernel = list(attrs["kernel_shape"])
        if len(kernel) != 2:
            raise ctx.error(f"kernel_shape {kernel}", "2-D pooling")
        strides = list(attrs.get("strides", [1, 1]))
        dilations = list(attrs.get("dilations", [1, 1]))
        if dilations != [1, 1]:
            raise ctx.error(f"dilations={dilations}", "dilations [1, 1]")
        if kind == "MaxPool" and len(node.output) > 1 and node.output[1] and ctx.consumers.get(node.output[1]):
            raise ctx.error("its Indices output is used", "MaxPool's first output")
        spatial = list(x.onnx_shape[2:])
        ceil_mode = bool(attrs.get("ceil_mode", 0))
        include_pad = bool(attrs.get("count_include_pad", 0))
        base = _explicit_pads(ctx, attrs, spatial, kernel, strides)
        pads = _explicit_pads(ctx, attrs, spatial, kernel, strides, ceil_mode=ceil_mode)
        if kind == "AveragePool" and include_pad and any(base):
            if pads != base:
                raise ctx.error("ceil_mode with count_include_pad and pads", "one of them at a time")
            padding, tensor = _pad_mode(ctx, tensor, pads, spatial, kernel, strides, True)
            if padding == "same":  # Keras's 'same' average leaves the padding out: pad explicitly
                from ...layers import ZeroPadding2D

                top, left, bottom, right = pads
                tensor = ctx.call(ctx.named(ZeroPadding2D, ((top, bottom), (left, right))), tensor)
                padding = "valid"
        else:
            padding, tensor = _pad_mode(ctx, tensor, pads, spatial, kernel, strides, False)
        if padding is None:
            raise ctx.error(f"pads {pads} (after auto_pad and ceil_mode) other than none or Keras's 'same' "
                            "geometry", "no padding, 'same' geometry, or AveragePool with count_include_pad=1")
        cls = MaxPooling2D if kind == "MaxPool" else AveragePooling2D
        layer = ctx.named(cls, pool_size=kernel, strides=strides, padding=padding)
        return Value(ctx.call(layer, tensor), channels_last(4))

    return convert


converter("MaxPool", since=1)(_pool("MaxPool"))
converter("AveragePool", since=1)(_pool("AveragePool"))


def _global_pool(kind):
    def convert(ctx, node, inputs):
        from ...layers import GlobalAveragePooling2D, GlobalMaxPooling2D

        x, tensor = _spatial_input(ctx, inputs[0], kind)
        cls = GlobalAveragePooling2D if kind == "GlobalAveragePool" else GlobalMaxPooling2D
        return Value(ctx.call(ctx.named(cls, keepdims=True), tensor), channels_last(4))

    return convert


converter("GlobalAveragePool", since=1)(_global_pool("GlobalAveragePool"))
converter("GlobalMaxPool", since=1)(_global_pool("GlobalMaxPool"))


@converter("BatchNormalization", since=1)
def batch_normalization(ctx, node, inputs):
    from ...layers import BatchNormalization

    attrs = ctx.attributes(node)
    if int(attrs.get("training_mode", 0)) or any(name and ctx.consumers.get(name) for name in node.output[1:]):
        raise ctx.error("training mode (its statistics outputs are used)", "inference BatchNormalization")
    if not int(attrs.get("spatial", 1)):
        raise ctx.error("spatial=0", "spatial=1")
    x = ctx.dynamic(inputs[0])
    if x.rows is not None:
        x = ctx.relayout(x, identity(2))
    perm = channels_last(x.rank) if x.rank > 2 else identity(2)
    tensor = ctx.in_layout(x, perm)
    scale, bias, mean, var = (ctx.constant(item, what).astype(np.float32)
                              for item, what in zip(inputs[1:5], ("scale", "B", "input_mean", "input_var")))
    layer = ctx.named(BatchNormalization, momentum=float(attrs.get("momentum", 0.9)),
                      epsilon=float(attrs.get("epsilon", 1e-5)))
    return Value(ctx.call(layer, tensor, [scale, bias, mean, var]), perm)


# -- layout and shape --------------------------------------------------------------------
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
        sorted({_axis(ctx, a, x.rank) for a in axes})
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
    axes = sorted({_axis(ctx, a, rank) for a in axes})
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
    if _all_const(inputs):
        return ctx.fold(lambda *arrays: np.concatenate(arrays, axis=axis), inputs)
    values = [ctx.dynamic(item, "every input of a Concat with a computed input") for item in inputs]
    rank = values[0].rank
    axis = _axis(ctx, axis, rank)
    if axis == 0:
        raise ctx.error("concatenation along the batch axis")
    first = values[0] if values[0].rows is None else ctx.relayout(values[0], identity(rank))
    tensors = [ctx.in_layout(v, first.perm) for v in values]
    if len(tensors) == 1:
        return first
    layer = ctx.named(Concatenate, axis=first.perm.index(axis))
    return Value(ctx.call(layer, tensors), first.perm)


# -- softmax ----------------------------------------------------------------------------
def _softmax_last(ctx, log, tensor):
    from ...layers import LogSoftmax, Softmax

    return ctx.call(ctx.named(LogSoftmax) if log else ctx.named(Softmax), tensor)


def _softmax_axis(ctx, x, axis, log):
    """softmax over the single ONNX axis ``axis`` of ``x``."""
    x = _plain(ctx, x)
    if x.perm[-1] == axis:
        return Value(_softmax_last(ctx, log, x.tensor), x.perm)
    perm = tuple(p for p in x.perm if p != axis) + (axis,)
    return Value(_softmax_last(ctx, log, ctx.in_layout(x, perm)), perm)


def _softmax_old(log):
    def convert(ctx, node, inputs):
        from ...layers import Reshape

        x = ctx.dynamic(inputs[0])
        axis = _axis(ctx, ctx.attributes(node).get("axis", 1), x.rank)
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
        axis = _axis(ctx, ctx.attributes(node).get("axis", -1), x.rank)
        if axis == 0:
            raise ctx.error("axis=0 mixes samples of the batch", "axis >= 1")
        return _softmax_axis(ctx, x, axis, log)

    return convert


converter("Softmax", since=1)(_softmax_old(False))
converter("Softmax", since=13)(_softmax_13(False))
converter("LogSoftmax", since=1)(_softmax_old(True))
converter("LogSoftmax", since=13)(_softmax_13(True))


# -- operators exporters emit around the ones above ------------------------------------
def _pad(ctx, node, x, pads, mode, value):
    from ...layers import ZeroPadding2D

    if isinstance(x, Const):
        raise ctx.error("Pad of a constant", "Pad of computed tensors")
    x = ctx.dynamic(x)
    pads = [int(p) for p in pads]
    rank = x.rank
    begin, end = pads[:rank], pads[rank:]
    if mode != "constant" or float(value) != 0.0:
        raise ctx.error(f"mode={mode!r}, value={value}", "constant zero padding")
    if not any(pads):
        return x
    if rank != 4 or begin[:2] != [0, 0] or end[:2] != [0, 0] or min(pads) < 0:
        raise ctx.error(f"pads {pads}", "non-negative padding of the two spatial axes of an (N, C, H, W) tensor")
    tensor = ctx.in_layout(x, channels_last(4))
    layer = ctx.named(ZeroPadding2D, ((begin[2], end[2]), (begin[3], end[3])))
    return Value(ctx.call(layer, tensor), channels_last(4))


@converter("Pad", since=1)
def pad_2(ctx, node, inputs):
    attrs = ctx.attributes(node)
    return _pad(ctx, node, inputs[0], attrs.get("pads", attrs.get("paddings")), attrs.get("mode", "constant"),
                attrs.get("value", 0.0))


@converter("Pad", since=11)
def pad_11(ctx, node, inputs):
    attrs = ctx.attributes(node)
    pads = ctx.constant(inputs[1], "pads")
    value = 0.0 if len(inputs) < 3 or inputs[2] is None else float(np.asarray(ctx.constant(inputs[2], "constant_value")))
    if len(inputs) > 3 and inputs[3] is not None:
        raise ctx.error("the axes input", "Pad over all axes")
    return _pad(ctx, node, inputs[0], pads, attrs.get("mode", "constant"), value)


def _reduce_mean(ctx, node, x, axes, keepdims):
    from ...layers import GlobalAveragePooling2D

    if isinstance(x, Const):
        return ctx.fold(lambda a: np.mean(a, axis=None if axes is None else tuple(int(v) for v in axes),
                                          keepdims=bool(keepdims)), [x])
    x = ctx.dynamic(x)
    axes = None if axes is None else sorted(_axis(ctx, a, x.rank) for a in axes)
    if x.rank != 4 or axes != [2, 3]:
        raise ctx.error(f"axes {axes} of a rank-{x.rank} tensor", "the mean over the spatial axes [2, 3] of "
                        "(N, C, H, W), as global average pooling")
    tensor = ctx.in_layout(x, channels_last(4))
    out = ctx.call(ctx.named(GlobalAveragePooling2D, keepdims=bool(keepdims)), tensor)
    return Value(out, channels_last(4) if keepdims else identity(2))


@converter("ReduceMean", since=1)
def reduce_mean_1(ctx, node, inputs):
    attrs = ctx.attributes(node)
    return _reduce_mean(ctx, node, inputs[0], attrs.get("axes"), attrs.get("keepdims", 1))


@converter("ReduceMean", since=18)
def reduce_mean_18(ctx, node, inputs):
    attrs = ctx.attributes(node)
    axes = None if len(inputs) < 2 or inputs[1] is None else list(ctx.constant(inputs[1], "axes"))
    if axes == [] or axes is None:
        if attrs.get("noop_with_empty_axes", 0):
            return inputs[0]
        axes = None
    return _reduce_mean(ctx, node, inputs[0], axes, attrs.get("keepdims", 1))


@converter("CastLike", since=15)
def cast_like(ctx, node, inputs):
    x, like = inputs
    dtype = (like.a.dtype if isinstance(like, Const) else np.dtype(np.float32))
    if isinstance(x, Const):
        return ctx.fold(lambda a: a.astype(dtype), [x])
    if dtype != np.float32:
        raise ctx.error(f"a cast of a computed tensor to {dtype}", "float32 tensors")
    return x
