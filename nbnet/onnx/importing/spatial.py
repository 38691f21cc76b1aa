"""Convolution, pooling, BatchNormalization, Pad, spatial ReduceMean and nearest-neighbour
Resize/Upsample (channels-last
inside; the layout pass keeps the graph's NCHW at the boundary)."""

import numpy as np

from .common import checked_axis
from .registry import converter
from .values import Const, Value, channels_last, identity


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
    from ...layers import Conv2D, DepthwiseConv2D

    x, tensor = _spatial_input(ctx, inputs[0], "Conv")
    weight = ctx.constant(inputs[1], "the weight W").astype(np.float32)
    bias = None if len(inputs) < 3 or inputs[2] is None else ctx.constant(inputs[2], "the bias B").astype(np.float32)
    attrs = ctx.attributes(node)
    filters, per_group, kh, kw = weight.shape
    channels = x.onnx_shape[1]
    group = int(attrs.get("group", 1))
    if group < 1 or channels % group or filters % group:
        raise ctx.error(f"group={group} with {channels} input channels and {filters} outputs",
                        "a group count that divides both")
    if per_group * group != channels:
        raise ctx.error(f"a weight for {per_group} input channels per group on an input with {channels} channels "
                        f"in {group} group(s)")
    dilations = [int(d) for d in attrs.get("dilations", [1, 1])]
    strides = list(attrs.get("strides", [1, 1]))
    if len(dilations) != 2 or min(dilations) < 1:
        raise ctx.error(f"dilations={dilations}", "two positive dilations")
    if max(dilations) > 1 and max(strides) > 1:  # Keras's Conv2D refuses the pair, so nbnet's does
        raise ctx.error(f"dilations={dilations} with strides={strides}", "a dilation above 1 only with strides 1")
    kernel_shape = list(attrs.get("kernel_shape", [kh, kw]))
    if kernel_shape != [kh, kw]:
        raise ctx.error(f"kernel_shape {kernel_shape} differs from the weight's {[kh, kw]}")
    spatial = list(x.onnx_shape[2:])
    span = [(k - 1) * d + 1 for k, d in zip((kh, kw), dilations)]
    pads = _explicit_pads(ctx, attrs, spatial, [kh, kw], strides, dilations)
    padding, tensor = _pad_mode(ctx, tensor, pads, spatial, span, strides, True)
    extra, output_name = ctx.absorb_bias(node.output[0], 1, 4, filters)
    if extra is not None:
        bias = extra if bias is None else bias + extra
    if group == channels and group > 1:
        # ONNX's group c makes outputs c*M..c*M+M-1 from input c: Keras's depthwise order.
        mult = filters // channels
        layer = ctx.named(DepthwiseConv2D, (kh, kw), strides=strides, padding=padding, depth_multiplier=mult,
                          dilation_rate=dilations, use_bias=bias is not None)
        kernel = weight.reshape(channels, mult, kh, kw).transpose(2, 3, 0, 1)
    else:
        layer = ctx.named(Conv2D, filters, (kh, kw), strides=strides, padding=padding, dilation_rate=dilations,
                          groups=group, use_bias=bias is not None)
        kernel = weight.transpose(2, 3, 1, 0)
    weights = [kernel] + ([bias] if bias is not None else [])
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
        include_pad = kind == "AveragePool" and bool(attrs.get("count_include_pad", 0))
        base = _explicit_pads(ctx, attrs, spatial, kernel, strides)
        pads = _explicit_pads(ctx, attrs, spatial, kernel, strides, ceil_mode=ceil_mode)
        if min(pads) < 0:
            raise ctx.error(f"negative pads {pads}")
        if not include_pad and (base[0] >= kernel[0] or base[1] >= kernel[1]):
            raise ctx.error(f"pads {base}: the first window lies in the padding alone", "begin pads smaller than "
                            "the kernel")
        if include_pad and any(base):
            # the explicit pads count in the average: zeros of their own; ceil_mode's extra
            # end padding (pads - base) stays out of the count, as in ONNX's reference
            from ...layers import ZeroPadding2D

            top, left, bottom, right = base
            tensor = ctx.call(ctx.named(ZeroPadding2D, ((top, bottom), (left, right))), tensor)
            spatial = [spatial[0] + top + bottom, spatial[1] + left + right]
            pads = [0, 0] + [p - b for p, b in zip(pads[2:], base[2:])]
        # the end pads only as deep as the last window reaches (ceil_mode's can reach past
        # the kernel, which ONNX rejects on export); the same windows
        for i, (size, k, st) in enumerate(zip(spatial, kernel, strides)):
            windows = (size + pads[i] + pads[i + 2] - k) // st + 1
            pads[i + 2] = max(0, (windows - 1) * st + k - size - pads[i])
            if pads[i + 2] >= k:  # (old exporters emulate ceil_mode with end pads as deep as the kernel)
                raise ctx.error(f"pads {base}: the last window lies in the padding alone", "windows that cover "
                                "at least one input pixel")
        # the pool layers leave padded positions out of the max and of the average's count
        if not any(pads):
            padding = "valid"
        elif list(pads) == _same_pads(spatial, kernel, strides):
            padding = "same"
        else:
            top, left, bottom, right = pads
            padding = ((top, bottom), (left, right))
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
    if ctx.opset < 7 and not int(attrs.get("is_test", 0)):
        raise ctx.error("is_test=0 (training mode)", "inference BatchNormalization (is_test=1 before opset 7)")
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
    axes = None if axes is None else sorted(checked_axis(ctx, a, x.rank) for a in axes)
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


# Nearest-neighbour Resize (and Upsample) by whole factors is UpSampling2D: output pixel i
# reads input pixel floor(i / s). ONNX reaches that pixel with 'asymmetric' coordinates
# rounded down, and with half-pixel ones rounded to the nearest ((i + 0.5) / s - 0.5 lies
# within half a pixel of floor(i / s), never on the half), not with the others.
_NEAREST_WAYS = {("asymmetric", "floor"), ("half_pixel", "round_prefer_floor"), ("half_pixel", "round_prefer_ceil"),
                 ("pytorch_half_pixel", "round_prefer_floor"), ("pytorch_half_pixel", "round_prefer_ceil")}


def _upsample(ctx, x, scales, attrs, transform="asymmetric", nearest="floor"):
    from ...layers import UpSampling2D

    if isinstance(x, Const):
        raise ctx.error("Resize of a constant", "Resize of computed tensors")
    mode = attrs.get("mode", "nearest")
    if mode != "nearest":
        raise ctx.error(f"mode={mode!r}", "nearest-neighbour resizing (UpSampling2D)")
    if (transform, nearest) not in _NEAREST_WAYS:
        raise ctx.error(f"coordinate_transformation_mode={transform!r} with nearest_mode={nearest!r}",
                        f"the pairs that pick pixel floor(i / scale): {sorted(_NEAREST_WAYS)}")
    scales = [float(s) for s in scales]
    x, tensor = _spatial_input(ctx, x, "Resize")
    if len(scales) != 4 or scales[:2] != [1.0, 1.0] or any(s != int(s) or s < 1 for s in scales[2:]):
        raise ctx.error(f"scales {scales}", "whole-number upscaling of the spatial axes of (N, C, H, W)")
    if scales[2:] == [1.0, 1.0]:
        return x
    layer = ctx.named(UpSampling2D, (int(scales[2]), int(scales[3])))
    return Value(ctx.call(layer, tensor), channels_last(4))


@converter("Upsample", since=7)
def upsample_7(ctx, node, inputs):
    attrs = ctx.attributes(node)
    return _upsample(ctx, inputs[0], attrs.get("scales", []), attrs)


@converter("Upsample", since=9)
def upsample_9(ctx, node, inputs):
    return _upsample(ctx, inputs[0], ctx.constant(inputs[1], "scales"), ctx.attributes(node))


@converter("Resize", since=10)
def resize_10(ctx, node, inputs):
    return _upsample(ctx, inputs[0], ctx.constant(inputs[1], "scales"), ctx.attributes(node))


@converter("Resize", since=11)
def resize_11(ctx, node, inputs):
    attrs = ctx.attributes(node)
    scales = None if len(inputs) < 3 or inputs[2] is None else ctx.constant(inputs[2], "scales")
    if scales is None or np.size(scales) == 0:
        if len(inputs) < 4 or inputs[3] is None:
            raise ctx.error("neither scales nor sizes")
        sizes = [int(s) for s in ctx.constant(inputs[3], "sizes")]
        shape = ctx.dynamic(inputs[0]).onnx_shape
        axes = attrs.get("axes", list(range(len(shape))))
        full = list(shape)
        for axis, size in zip(axes, sizes):
            full[checked_axis(ctx, axis, len(shape))] = size
        scales = [1.0 if a is None or b is None else b / a for a, b in zip(shape, full)]
    elif "axes" in attrs:
        full = [1.0] * ctx.dynamic(inputs[0]).rank
        for axis, scale in zip(attrs["axes"], scales):
            full[checked_axis(ctx, axis, len(full))] = float(scale)
        scales = full
    transform = attrs.get("coordinate_transformation_mode", "half_pixel")
    nearest = attrs.get("nearest_mode", "round_prefer_floor")
    if attrs.get("antialias", 0):
        raise ctx.error("antialias=1", "antialias=0 (nearest-neighbour upscaling has nothing to smooth)")
    return _upsample(ctx, inputs[0], scales, attrs, transform, nearest)
