"""nbnet model (Sequential or functional) -> ONNX graph, with standard operators only.

Each layer call of the model's graph becomes a few nodes, in the model's topological
order; a layer called twice writes its weights once. Layout: the graph takes exactly what ``model.predict`` takes, channels-last (NHWC for
images) float32 with a symbolic batch axis, and returns what it returns. ONNX's Conv,
MaxPool, AveragePool and BatchNormalization want channels first, so the converter tracks
each tensor's layout and inserts a Transpose only where the next operator needs the other
one: before the first Conv/pool/BatchNormalization of a channels-last tensor, and back to
channels-last before Flatten and Reshape (Keras orders values H, W, C) and before the output.
Softmax is taken over the channel axis, wherever the layout has put it. Merge layers bring
their inputs to one layout first (the first input's), and Concatenate's axis follows it.
"""

import json
from dataclasses import dataclass

import numpy as np

from .. import __version__
from ..errors import ExportError
from ..kernels.activations import SELU_ALPHA, SELU_SCALE
from ..kernels.conv import same_padding
from ..layers import (ELU, Activation, Add, Average, AveragePooling2D, BatchNormalization, BroadcastOperation, Clip,
                      Concatenate, ConstantOperation, Conv2D, Dense, DepthwiseConv2D, LogSoftmax, Permute, Take,
                      Dropout, Flatten, GlobalAveragePooling2D, GlobalMaxPooling2D, InputLayer, LeakyReLU, Maximum,
                      MaxPooling2D, Minimum, Multiply, RandomFlip, ReLU, Rescaling, Reshape, Softmax, Subtract,
                      UpSampling2D, ZeroPadding2D)
from .opsets import ir_version_for, resolve_opset

INPUT_NAME, OUTPUT_NAME, BATCH_DIM = "input", "output", "batch"
PRODUCER = "nbnet"
# metadata_props keys
META_VERSION, META_ARCHITECTURE, META_WEIGHTS, META_LAYOUT = ("nbnet.version", "nbnet.architecture", "nbnet.weights",
                                                              "nbnet.layout")


@dataclass
class _Tensor:
    name: str
    rank: int  # with the batch axis
    channels_first: bool = False


class _GraphBuilder:
    def __init__(self):
        self.nodes, self.initializers, self.weights = [], [], []
        self._names = set()
        self._written = {}  # (layer index, key, perm) -> initializer name: a shared layer's weights once

    def unique(self, name):
        candidate, index = name, 1
        while candidate in self._names:
            candidate, index = f"{name}_{index}", index + 1
        self._names.add(candidate)
        return candidate

    def initializer(self, name, array, layer_index, key, perm=None):
        from onnx import numpy_helper

        written = (layer_index, key, None if perm is None else tuple(perm))
        if written in self._written:
            return self._written[written]
        name = self._written[written] = self.unique(name)
        value = np.asarray(array, np.float32)
        if perm is not None:
            value = value.transpose(perm)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        self.weights.append([layer_index, key, name, None if perm is None else list(perm)])
        return name

    def constant(self, name, value):
        """A float32 scalar initializer that is not a layer weight (the loader skips it)."""
        from onnx import numpy_helper

        name = self.unique(name)
        self.initializers.append(numpy_helper.from_array(np.array(value, np.float32), name))
        return name

    def node(self, op, inputs, name, **attributes):
        from onnx import helper

        name = self.unique(name)
        self.nodes.append(helper.make_node(op, list(inputs), [name], name=name, **attributes))
        return name

    def transpose(self, tensor, prefix, channels_first):
        """The tensor moved to the requested layout (a no-op when it already is, or is 2-D)."""
        if tensor.rank < 3 or tensor.channels_first == channels_first:
            return tensor
        rank = tensor.rank
        perm = [0, rank - 1, *range(1, rank - 1)] if channels_first else [0, *range(2, rank), 1]
        suffix = "to_channels_first" if channels_first else "to_channels_last"
        return _Tensor(self.node("Transpose", [tensor.name], f"{prefix}/{suffix}", perm=perm), rank, channels_first)


# -- per-layer converters: (layer, index, prefix, graph, tensor) -> tensor -----------------
def _activation(graph, prefix, tensor, activation, slope):
    if activation == "linear":
        return tensor
    if activation == "softmax":
        # The channel axis: last when channels-last, 1 when channels-first (opset >= 13 semantics).
        axis = 1 if tensor.channels_first else -1
        return _Tensor(graph.node("Softmax", [tensor.name], f"{prefix}/softmax", axis=axis), tensor.rank,
                       tensor.channels_first)
    if activation == "leaky_relu":
        return _Tensor(graph.node("LeakyRelu", [tensor.name], f"{prefix}/leaky_relu", alpha=float(slope)), tensor.rank,
                       tensor.channels_first)
    if activation == "elu":
        return _Tensor(graph.node("Elu", [tensor.name], f"{prefix}/elu", alpha=float(slope)), tensor.rank,
                       tensor.channels_first)
    if activation == "selu":  # ONNX's defaults are float32 roundings of these
        return _Tensor(graph.node("Selu", [tensor.name], f"{prefix}/selu", alpha=SELU_ALPHA, gamma=SELU_SCALE),
                       tensor.rank, tensor.channels_first)
    ops = {"relu": "Relu", "sigmoid": "Sigmoid", "tanh": "Tanh", "softplus": "Softplus"}
    if activation not in ops:
        raise ExportError(f"Layer '{prefix}': activation {activation!r} has no ONNX mapping.")
    return _Tensor(graph.node(ops[activation], [tensor.name], f"{prefix}/{activation}"), tensor.rank,
                   tensor.channels_first)


def _window_pads(layer, input_shape, window):
    """ONNX pads [top, left, bottom, right]: Keras 'same' puts the odd pixel at the end."""
    if layer.padding != "same":
        return [0, 0, 0, 0]
    _, top, bottom = same_padding(input_shape[0], window[0], layer.strides[0])
    _, left, right = same_padding(input_shape[1], window[1], layer.strides[1])
    return [top, left, bottom, right]


def _dense(layer, index, prefix, graph, tensor, input_shape):
    inputs = [tensor.name, graph.initializer(f"{prefix}.kernel", layer.get_weights()[0], index, "kernel")]
    bias = graph.initializer(f"{prefix}.bias", layer.get_weights()[1], index, "bias") if layer.use_bias else None
    if tensor.rank == 2:
        out = _Tensor(graph.node("Gemm", inputs + ([bias] if bias else []), prefix), 2)
    else:  # Keras's Dense on (batch, ..., features): the last axis of nbnet's layout
        tensor = graph.transpose(tensor, prefix, channels_first=False)
        inputs[0] = tensor.name
        out = _Tensor(graph.node("MatMul", inputs, prefix if bias is None else f"{prefix}/matmul"), tensor.rank)
        if bias:
            out = _Tensor(graph.node("Add", [out.name, bias], prefix), tensor.rank)
    return _activation(graph, prefix, out, layer.activation, layer._slope)


def _conv2d(layer, index, prefix, graph, tensor, input_shape):
    tensor = graph.transpose(tensor, prefix, channels_first=True)
    weights = layer.get_weights()
    kernel, group = weights[0], getattr(layer, "groups", 1)
    if isinstance(layer, DepthwiseConv2D):
        # (kh, kw, C, M) as (kh, kw, 1, C*M): ONNX's group c makes outputs c*M..c*M+M-1 from
        # input c, Keras's channel order; the loader reshapes it back.
        kh, kw, group, mult = kernel.shape
        kernel = kernel.reshape(kh, kw, 1, group * mult)
    # Keras (kh, kw, in/groups, out) -> ONNX OIHW (out, in/groups, kh, kw)
    inputs = [tensor.name, graph.initializer(f"{prefix}.kernel", kernel, index, "kernel", perm=(3, 2, 0, 1))]
    if layer.use_bias:
        inputs.append(graph.initializer(f"{prefix}.bias", weights[1], index, "bias"))
    dilations = list(layer.dilation_rate)
    span = [(k - 1) * d + 1 for k, d in zip(layer.kernel_size, dilations)]  # 'same' pads cover the dilated span
    out = _Tensor(graph.node("Conv", inputs, prefix, kernel_shape=list(layer.kernel_size), strides=list(layer.strides),
                             pads=_window_pads(layer, input_shape, span), dilations=dilations, group=int(group)),
                  4, True)
    return _activation(graph, prefix, out, layer.activation, layer._slope)


def _pooling(op, **extra):
    def convert(layer, index, prefix, graph, tensor, input_shape):
        tensor = graph.transpose(tensor, prefix, channels_first=True)
        # strides written always: ONNX's default is 1, Keras's the pool size
        if isinstance(layer.padding, str):
            pads = _window_pads(layer, input_shape, layer.pool_size)
        else:  # explicit pads: left out of the max and of the average's count, as ONNX's pads are
            (top, bottom), (left, right) = layer.padding
            pads = [top, left, bottom, right]
        name = graph.node(op, [tensor.name], prefix, kernel_shape=list(layer.pool_size), strides=list(layer.strides),
                          pads=pads, ceil_mode=0, **extra)
        return _Tensor(name, 4, True)

    return convert


def _batch_normalization(layer, index, prefix, graph, tensor, input_shape):
    # ONNX normalises axis 1; nbnet the last axis. Rank 2: the same axis.
    tensor = graph.transpose(tensor, prefix, channels_first=True)
    inputs = [tensor.name] + [graph.initializer(f"{prefix}.{key}", value, index, key)
                              for key, value in zip(layer.weight_order, layer.get_weights())]
    return _Tensor(graph.node("BatchNormalization", inputs, prefix, epsilon=float(layer.epsilon)), tensor.rank,
                   tensor.channels_first)


def _flatten(layer, index, prefix, graph, tensor, input_shape):
    tensor = graph.transpose(tensor, prefix, channels_first=False)  # Keras order: H, W, C
    return _Tensor(graph.node("Flatten", [tensor.name], prefix, axis=1), 2)


def _activation_layer(layer, index, prefix, graph, tensor, input_shape):
    return _activation(graph, prefix, tensor, layer.activation, layer._slope)


def _rescaling(layer, index, prefix, graph, tensor, input_shape):
    out = _Tensor(graph.node("Mul", [tensor.name, graph.constant(f"{prefix}.scale", layer.scale)], f"{prefix}/scale"),
                  tensor.rank, tensor.channels_first)
    if layer.offset == 0.0:
        return out
    return _Tensor(graph.node("Add", [out.name, graph.constant(f"{prefix}.offset", layer.offset)], f"{prefix}/offset"),
                   tensor.rank, tensor.channels_first)


def _dropout(layer, index, prefix, graph, tensor, input_shape):
    return tensor  # the identity at inference (Dropout, RandomFlip)


def _global_pooling(op):
    def convert(layer, index, prefix, graph, tensor, input_shape):
        tensor = graph.transpose(tensor, prefix, channels_first=True)
        pooled = _Tensor(graph.node(op, [tensor.name], prefix), 4, True)  # (batch, C, 1, 1)
        if layer.keepdims:
            return pooled
        return _Tensor(graph.node("Flatten", [pooled.name], f"{prefix}/flatten", axis=1), 2)

    return convert


def _reshape(layer, index, prefix, graph, tensor, input_shape):
    from onnx import numpy_helper

    tensor = graph.transpose(tensor, prefix, channels_first=False)  # Keras reshapes in channels-last order
    target = layer.compute_output_shape(tuple(input_shape))
    shape = graph.unique(f"{prefix}.shape")
    # 0 keeps the (symbolic) batch axis: ONNX Reshape's default allowzero=0.
    graph.initializers.append(numpy_helper.from_array(np.array([0, *target], np.int64), shape))
    return _Tensor(graph.node("Reshape", [tensor.name, shape], prefix), len(target) + 1)


def _zero_padding(layer, index, prefix, graph, tensor, input_shape):
    from onnx import numpy_helper

    tensor = graph.transpose(tensor, prefix, channels_first=True)
    (top, bottom), (left, right) = layer.padding
    pads = graph.unique(f"{prefix}.pads")
    graph.initializers.append(numpy_helper.from_array(np.array([0, 0, top, left, 0, 0, bottom, right], np.int64),
                                                      pads))
    return _Tensor(graph.node("Pad", [tensor.name, pads], prefix, mode="constant"), 4, True)


def _upsampling(layer, index, prefix, graph, tensor, input_shape):
    """Resize, nearest neighbour: output pixel i reads input pixel floor(i / size)."""
    from onnx import numpy_helper

    tensor = graph.transpose(tensor, prefix, channels_first=True)
    scales = graph.unique(f"{prefix}.scales")
    graph.initializers.append(numpy_helper.from_array(np.array([1, 1, *layer.size], np.float32), scales))
    return _Tensor(graph.node("Resize", [tensor.name, "", scales], prefix, mode="nearest",
                              coordinate_transformation_mode="asymmetric", nearest_mode="floor"), 4, True)


def _same_layout(graph, prefix, tensors):
    """The tensors in the first one's layout."""
    first = tensors[0].channels_first
    return [graph.transpose(t, prefix, channels_first=first) for t in tensors]


def _elementwise(op, variadic):
    def convert(layer, index, prefix, graph, tensors, input_shapes):
        tensors = _same_layout(graph, prefix, tensors)
        names = [t.name for t in tensors]
        if variadic:
            name = graph.node(op, names, prefix)
        else:  # binary operators, folded left as Keras's merge layers are
            name = names[0]
            for position, other in enumerate(names[1:]):
                name = graph.node(op, [name, other], prefix if position == len(names) - 2 else f"{prefix}/{position}")
        return _Tensor(name, tensors[0].rank, tensors[0].channels_first)

    return convert


def _concatenate(layer, index, prefix, graph, tensors, input_shapes):
    tensors = _same_layout(graph, prefix, tensors)
    rank = tensors[0].rank
    axis = layer.axis % rank
    if tensors[0].channels_first and rank >= 3:
        axis = 1 if axis == rank - 1 else axis + 1
    return _Tensor(graph.node("Concat", [t.name for t in tensors], prefix, axis=axis), rank, tensors[0].channels_first)


# -- the layers ONNX import adds (nbnet/layers/onnx_ops.py); each works in nbnet's own layout
def _permute(layer, index, prefix, graph, tensor, input_shape):
    tensor = graph.transpose(tensor, prefix, channels_first=False)
    return _Tensor(graph.node("Transpose", [tensor.name], prefix, perm=[0, *layer.dims]), tensor.rank)


_ONNX_ARITHMETIC = {"add": ("Add", False), "sub": ("Sub", False), "rsub": ("Sub", True), "mul": ("Mul", False),
                    "div": ("Div", False), "rdiv": ("Div", True)}


def _constant_operation(layer, index, prefix, graph, tensor, input_shape):
    tensor = graph.transpose(tensor, prefix, channels_first=False)
    op, swapped = _ONNX_ARITHMETIC[layer.operation]
    operand = graph.initializer(f"{prefix}.operand", layer.get_weights()[0], index, "operand")
    names = [operand, tensor.name] if swapped else [tensor.name, operand]
    return _Tensor(graph.node(op, names, prefix), tensor.rank)


def _broadcast_operation(layer, index, prefix, graph, tensors, input_shapes):
    from onnx import numpy_helper

    tensors = [graph.transpose(t, prefix, channels_first=False) for t in tensors]
    rank = max(t.rank for t in tensors)
    names = []
    for position, (tensor, shape) in enumerate(zip(tensors, input_shapes)):
        name = tensor.name
        if tensor.rank < rank:  # align the batch axes: pad the sample shape after it
            target = graph.unique(f"{prefix}.shape{position}")
            graph.initializers.append(numpy_helper.from_array(
                np.array([0] + [1] * (rank - tensor.rank) + list(shape), np.int64), target))
            name = graph.node("Reshape", [name, target], f"{prefix}/align{position}")
        names.append(name)
    op, swapped = _ONNX_ARITHMETIC[layer.operation]
    return _Tensor(graph.node(op, names[::-1] if swapped else names, prefix), rank)


def _clip(layer, index, prefix, graph, tensor, input_shape):
    inputs = [tensor.name,
              "" if layer.min_value is None else graph.constant(f"{prefix}.min", layer.min_value),
              "" if layer.max_value is None else graph.constant(f"{prefix}.max", layer.max_value)]
    while inputs[-1] == "":
        inputs.pop()
    return _Tensor(graph.node("Clip", inputs, prefix), tensor.rank, tensor.channels_first)


def _log_softmax(layer, index, prefix, graph, tensor, input_shape):
    tensor = graph.transpose(tensor, prefix, channels_first=False)
    return _Tensor(graph.node("LogSoftmax", [tensor.name], prefix, axis=layer.axis), tensor.rank)


def _take(layer, index, prefix, graph, tensor, input_shape):
    from onnx import numpy_helper

    tensor = graph.transpose(tensor, prefix, channels_first=False)
    indices = graph.unique(f"{prefix}.indices")
    graph.initializers.append(numpy_helper.from_array(np.array(layer.indices, np.int64), indices))
    return _Tensor(graph.node("Gather", [tensor.name, indices], prefix, axis=layer.axis % tensor.rank), tensor.rank)


# Exact types only: a subclass may compute something else in forward().
CONVERTERS = {
    Dense: _dense, Conv2D: _conv2d, DepthwiseConv2D: _conv2d, MaxPooling2D: _pooling("MaxPool", dilations=[1, 1]),
    AveragePooling2D: _pooling("AveragePool", count_include_pad=0), BatchNormalization: _batch_normalization,
    Flatten: _flatten, Dropout: _dropout, RandomFlip: _dropout, Activation: _activation_layer, ReLU: _activation_layer,
    Softmax: _activation_layer, LeakyReLU: _activation_layer, ELU: _activation_layer, Rescaling: _rescaling,
    GlobalAveragePooling2D: _global_pooling("GlobalAveragePool"), GlobalMaxPooling2D: _global_pooling("GlobalMaxPool"),
    Reshape: _reshape, ZeroPadding2D: _zero_padding, UpSampling2D: _upsampling,
    Add: _elementwise("Add", False), Subtract: _elementwise("Sub", False), Multiply: _elementwise("Mul", False),
    Average: _elementwise("Mean", True), Maximum: _elementwise("Max", True), Minimum: _elementwise("Min", True),
    Concatenate: _concatenate,
    Permute: _permute, ConstantOperation: _constant_operation, BroadcastOperation: _broadcast_operation,
    Clip: _clip, LogSoftmax: _log_softmax, Take: _take,
}


def _check_exportable(model):
    if not getattr(model, "built", False):
        raise ExportError(f"Model '{getattr(model, 'name', model)}' is not built, so its shapes and weights are unknown: "
                          "give the first layer input_shape=(...) or call model.build(input_shape) before exporting.")
    for layer in model._weight_layers():
        if isinstance(layer, InputLayer):
            continue
        if type(layer) not in CONVERTERS:
            supported = ", ".join(sorted(cls.__name__ for cls in CONVERTERS))
            base = next((cls.__name__ for cls in CONVERTERS if isinstance(layer, cls)), None)
            why = (f"it subclasses {base}, but its forward() may compute something else, so nbnet will not guess"
                   if base else "nbnet only knows how to write its built-in layers as ONNX operators")
            raise ExportError(f"Cannot export layer '{layer.name}' ({type(layer).__name__}) to ONNX: {why}. "
                              f"Supported layers: {supported}. Rebuild the model with those layers (copying the "
                              "weights over with get_weights/set_weights) and export that.")


def to_onnx(model, opset=None):
    """The ONNX ModelProto for ``model`` (not verified, not written)."""
    from onnx import TensorProto, helper

    opset = resolve_opset(opset)
    _check_exportable(model)
    from ..executor import Plan

    graph = _GraphBuilder()
    plan = Plan(model, fuse=False)
    input_names = [INPUT_NAME] if len(plan.input_slots) == 1 else model.input_names
    output_names = [OUTPUT_NAME] if len(plan.output_slots) == 1 else model.output_names
    for name in input_names + output_names:
        graph.unique(name)
    input_shapes = model._input_shapes()
    tensors = {slot: _Tensor(name, len(shape) + 1) for slot, name, shape in zip(plan.input_slots, input_names,
                                                                                  input_shapes)}
    shapes = dict(zip(plan.input_slots, input_shapes))
    weight_index = {id(layer): index for index, layer in enumerate(model._weight_layers())}
    for step in plan.steps:
        layer = step.source
        prefix = graph.unique(layer.name)
        graph._names.discard(prefix)  # the layer's main node or initializers take the name itself
        if step.multiple:
            received, received_shape = [tensors[s] for s in step.inputs], [shapes[s] for s in step.inputs]
        else:
            received, received_shape = tensors[step.inputs[0]], shapes[step.inputs[0]]
        tensors[step.output] = CONVERTERS[type(layer)](layer, weight_index[id(layer)], prefix, graph, received,
                                                       received_shape)
        shapes[step.output] = step.shape
    consumed = {name for node in graph.nodes for name in node.input}
    for slot, name in zip(plan.output_slots, output_names):
        tensor = graph.transpose(tensors[slot], name, channels_first=False)
        producer = next((node for node in graph.nodes if tensor.name in node.output), None)
        if producer is None or tensor.name in consumed or tensor.name in output_names:
            graph.nodes.append(helper.make_node("Identity", [tensor.name], [name], name=graph.unique(f"{name}/identity")))
        else:
            producer.output[0] = name  # only the graph output reads this node's result

    onnx_graph = helper.make_graph(
        graph.nodes, model.name,
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, [BATCH_DIM, *shape])
         for name, shape in zip(input_names, input_shapes)],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, [BATCH_DIM, *tensor.sample_shape])
         for name, tensor in zip(output_names, model._output_tensors)],
        graph.initializers,
        doc_string=f"nbnet {type(model).__name__} '{model.name}': inputs {input_names} are channels-last float32 "
                   f"with a symbolic batch axis '{BATCH_DIM}', exactly what model.predict takes.")
    opsets = [helper.make_opsetid("", opset)]
    proto = helper.make_model(onnx_graph, opset_imports=opsets, ir_version=ir_version_for(opset),
                              producer_name=PRODUCER, producer_version=__version__,
                              doc_string=f"Exported by nbnet {__version__} from {type(model).__name__} '{model.name}'.")
    try:
        architecture = json.dumps(model.get_config())
    except TypeError as error:
        raise ExportError(f"Model '{model.name}': its configuration is not JSON-serialisable ({error}).") from None
    helper.set_model_props(proto, {
        META_VERSION: __version__,
        META_ARCHITECTURE: architecture,
        META_WEIGHTS: json.dumps(graph.weights),
        META_LAYOUT: "channels-last (NHWC) input and output, as model.predict; batch axis symbolic",
    })
    return proto
