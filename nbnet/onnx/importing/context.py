"""The import pass: read the graph, sort it, run each node's converter, build the Model."""

import re
from pathlib import Path

import numpy as np

from ...errors import ModelFileError
from .registry import MIN_IMPORT_OPSET, OnnxImportError, lookup, newest_opset, supported_operators
from .values import Const, Value, identity

FLOAT_TYPES = {1: np.float32, 10: np.float16, 11: np.float64}


def _attribute_value(attribute):
    from onnx import helper

    value = helper.get_attribute_value(attribute)
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, list) and value and isinstance(value[0], bytes):
        return [v.decode() for v in value]
    return value


def topological_order(nodes, known):
    """The nodes in an order where each comes after the producers of its inputs (ONNX
    requires sorted graphs; some writers do not sort)."""
    produced_by = {name: index for index, node in enumerate(nodes) for name in node.output if name}
    order, state = [], {}

    def visit(index):
        if state.get(index) == 2:
            return
        if state.get(index) == 1:
            raise OnnxImportError(f"The ONNX graph has a cycle through node '{nodes[index].name}' "
                                  f"({nodes[index].op_type}).")
        state[index] = 1
        for name in nodes[index].input:
            if name and name not in known and name in produced_by:
                visit(produced_by[name])
        state[index] = 2
        order.append(nodes[index])

    for index in range(len(nodes)):
        visit(index)
    return order


class ImportContext:
    def __init__(self, proto, source):
        self.proto, self.source = proto, source
        self.opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
        if self.opset is None:
            raise OnnxImportError(f"{source}: the model imports no version of the default ONNX operator set.")
        if self.opset < MIN_IMPORT_OPSET or self.opset > newest_opset():
            raise OnnxImportError(f"{source}: opset {self.opset} is outside the opsets nbnet imports "
                                  f"({MIN_IMPORT_OPSET} to {newest_opset()}, the newest the installed onnx knows).")
        self.values = {}
        self.consumers = {}
        self.skipped = set()  # ids of nodes folded into an earlier one (a bias Add)
        self.aliases = {}  # node output -> the name whose value it is (folded nodes)
        self._names = set()
        self.node = None
        self.graph_outputs = {o.name for o in proto.graph.output}

    # -- naming and errors -------------------------------------------------------------
    def layer_name(self, hint):
        base = re.sub(r"[^0-9A-Za-z_.-]", "_", hint or "layer").strip("_") or "layer"
        name, index = base, 1
        while name in self._names:
            name, index = f"{base}_{index}", index + 1
        self._names.add(name)
        return name

    def node_label(self, node=None):
        node = node or self.node
        return f"node '{node.name or node.output[0]}' ({node.op_type}, opset {self.opset})"

    def error(self, what, supported=None):
        message = f"{self.source}: cannot import {self.node_label()}: {what}"
        if supported:
            message += f"; nbnet supports {supported}"
        return OnnxImportError(message + ".")

    def attributes(self, node):
        return {a.name: _attribute_value(a) for a in node.attribute}

    # -- building ------------------------------------------------------------------------
    def call(self, layer, inputs, weights=None):
        """Call an nbnet layer on KerasTensors, then give it ``weights``."""
        tensor = layer(inputs)
        if weights is not None:
            layer.set_weights([np.asarray(w, np.float32) for w in weights])
        return tensor

    def named(self, cls, *args, **kwargs):
        label = self.node.name or self.node.output[0] if self.node is not None else cls.__name__
        return cls(*args, name=self.layer_name(label), **kwargs)

    def in_layout(self, value, perm):
        """``value``'s tensor held in ``perm``, with a Permute where the layout differs."""
        from ...layers import Flatten, Permute

        perm = tuple(perm)
        if value.rows is not None:
            source = self.in_layout(value.flattened_from, identity(value.flattened_from.rank))
            if perm not in value.layouts:
                value.layouts[perm] = Flatten(name=self.layer_name(f"{value.tensor.name}_ordered"))(source)
            return value.layouts[perm]
        if perm == value.perm:
            return value.tensor
        if perm[0] != 0:
            raise self.error("it would move the batch axis")
        if perm not in value.layouts:
            current = np.argsort(value.perm)[list(perm)]
            layer = Permute([int(d) for d in current[1:]], name=self.layer_name(f"{value.tensor.name}_transposed"))
            value.layouts[perm] = layer(value.tensor)
        return value.layouts[perm]

    def relayout(self, value, perm):
        """A Value for ``value`` held in ``perm``."""
        return Value(self.in_layout(value, perm), perm)

    def operand(self, value, array):
        """A constant that broadcasts against ``value`` in ONNX terms, as an operand that
        broadcasts against one nbnet sample (batch axis dropped), or None when it varies
        along the batch axis."""
        array = np.asarray(array, np.float32)
        if array.ndim > value.rank:
            return None
        full = array.reshape((1,) * (value.rank - array.ndim) + array.shape).transpose(value.perm)
        if full.shape[0] != 1:
            return None
        operand = full[0]
        if value.rows is not None and operand.shape and operand.shape[-1] > 1:
            operand = operand[..., value.rows]
        while operand.ndim and operand.shape[0] == 1 and operand.ndim > 0:
            operand = operand[0]
        return operand

    def fold(self, function, inputs):
        """Const from ``function`` over the inputs' arrays, once per batch sentinel."""
        first = function(*[None if c is None else c.versions()[0] for c in inputs])
        if not any(c is not None and c.batch_dependent for c in inputs):
            return Const(first)
        return Const(first, function(*[None if c is None else c.versions()[1] for c in inputs]))

    def static(self, const, what):
        """The array of a Const that must not depend on the batch size."""
        if const.batch_dependent:
            raise self.error(f"{what} depends on the batch size, which nbnet keeps symbolic")
        return const.a

    def constant(self, item, what):
        if not isinstance(item, Const):
            raise self.error(f"{what} must be a constant (an initializer, a Constant or shape arithmetic on the "
                             "input's shape), not a tensor computed from the input")
        return self.static(item, what)

    def dynamic(self, item, what="the input"):
        if not isinstance(item, Value):
            raise self.error(f"{what} must be a tensor computed from the model's input")
        return item

    def absorb_bias(self, output_name, channel_axis, rank, channels):
        """When ``output_name``'s only reader is an Add of a per-channel constant (a
        framework's separate bias), fold it: (bias vector, the Add's output name); else
        (None, output_name)."""
        readers = self.consumers.get(output_name, [])
        if output_name in self.graph_outputs or len(readers) != 1 or readers[0].op_type != "Add":
            return None, output_name
        add = readers[0]
        other = [name for name in add.input if name != output_name]
        if len(other) != 1 or not isinstance(self.values.get(other[0]), Const):
            return None, output_name
        const = self.values[other[0]]
        if const.batch_dependent:
            return None, output_name
        array = np.asarray(const.a, np.float32)
        if array.ndim > rank:
            return None, output_name
        full = array.reshape((1,) * (rank - array.ndim) + array.shape)
        if any(d != 1 for axis, d in enumerate(full.shape) if axis != channel_axis) or \
                full.shape[channel_axis] not in (1, channels):
            return None, output_name
        self.skipped.add(id(add))
        return np.broadcast_to(full.reshape(-1), (channels,)).astype(np.float32), add.output[0]

    def bind(self, name, item):
        self.values[name] = item

    # -- the pass ------------------------------------------------------------------------
    def run(self):
        from onnx import numpy_helper

        from ...layers import Activation, Input
        from ...models import Model

        graph = self.proto.graph
        for tensor in graph.initializer:
            self.values[tensor.name] = Const(_to_array(numpy_helper, tensor, self.source), initializer=True)
        for tensor in getattr(graph, "sparse_initializer", []):
            raise OnnxImportError(f"{self.source}: sparse initializer '{tensor.values.name}' is not supported.")
        inputs = []
        for info in graph.input:
            if info.name in self.values:  # a weight listed as an input too (older exporters)
                continue
            tensor = _input_tensor(info, self.source, Input, self.layer_name(info.name))
            inputs.append(tensor)
            self.values[info.name] = Value(tensor)
        if not inputs:
            raise OnnxImportError(f"{self.source}: the graph has no input that is not an initializer.")
        for node in graph.node:
            for name in node.input:
                if name:
                    self.consumers.setdefault(name, []).append(node)
        for node in topological_order(list(graph.node), set(self.values)):
            if id(node) in self.skipped:
                continue
            self.node = node
            if node.domain not in ("", "ai.onnx"):
                raise self.error(f"operator domain '{node.domain}' is not the default ONNX domain")
            function = lookup(node.op_type, self.opset)
            if function is None:
                raise self.error("this operator is not supported",
                                 f"{', '.join(supported_operators())} at opsets {MIN_IMPORT_OPSET} to "
                                 f"{newest_opset()}")
            received = []
            for name in node.input:
                if not name:
                    received.append(None)
                    continue
                if name not in self.values:
                    raise self.error(f"its input '{name}' is neither a graph input, an initializer nor the "
                                     "output of another node")
                received.append(self.values[name])
            results = function(self, node, received)
            if not isinstance(results, (list, tuple)):
                results = [results]
            for name, result in zip(node.output, results):
                if name and result is not None:
                    self.values[name] = result
        self.node = None
        outputs = []
        for info in graph.output:
            item = self.values.get(info.name)
            if not isinstance(item, Value):
                raise OnnxImportError(f"{self.source}: graph output '{info.name}' "
                                      + ("is a constant; nbnet models compute their outputs from their inputs."
                                         if item is not None else "is not computed by any node."))
            tensor = self.in_layout(item, identity(item.rank))
            if tensor.node.is_input or any(tensor is t for t in outputs):
                tensor = Activation("linear", name=self.layer_name(info.name))(tensor)
            elif tensor.node.layer.name != info.name and info.name not in self._names - {tensor.node.layer.name}:
                self._names.discard(tensor.node.layer.name)
                tensor.node.layer.name = self.layer_name(info.name)
            _check_output_shape(info, tensor, self.source)
            outputs.append(tensor)
        name = self.layer_name(graph.name or Path(self.source).stem)
        return Model(inputs[0] if len(inputs) == 1 else inputs, outputs[0] if len(outputs) == 1 else outputs,
                     name=name)


def _to_array(numpy_helper, tensor, source):
    try:
        array = numpy_helper.to_array(tensor)
    except Exception as error:
        raise OnnxImportError(f"{source}: cannot read initializer '{tensor.name}' ({type(error).__name__}: "
                              f"{error}).") from None
    if array.dtype.kind == "f":
        array = array.astype(np.float32)
    elif array.dtype.kind not in "iub":
        raise OnnxImportError(f"{source}: initializer '{tensor.name}' has data type {array.dtype}; nbnet "
                              "imports float, integer and bool tensors.")
    return array


def _dims(info):
    dims = []
    for dim in info.type.tensor_type.shape.dim:
        dims.append(dim.dim_value if dim.HasField("dim_value") else None)
    return dims


def _input_tensor(info, source, Input, name):
    if not info.type.HasField("tensor_type"):
        raise OnnxImportError(f"{source}: graph input '{info.name}' is not a tensor; nbnet imports tensor inputs.")
    elem = info.type.tensor_type.elem_type
    if elem != 1:
        from onnx import TensorProto

        raise OnnxImportError(f"{source}: graph input '{info.name}' has data type "
                              f"{TensorProto.DataType.Name(elem)}; nbnet imports float32 inputs.")
    if not info.type.tensor_type.HasField("shape"):
        raise OnnxImportError(f"{source}: graph input '{info.name}' has no shape; nbnet needs every axis but "
                              "the first (the batch) fixed.")
    dims = _dims(info)
    if len(dims) < 2 or any(d is None or d < 1 for d in dims[1:]):
        raise OnnxImportError(f"{source}: the shape of graph input '{info.name}' cannot be fixed: {dims} "
                              "(None: symbolic); nbnet needs a batch axis first and every other axis fixed.")
    return Input(shape=tuple(dims[1:]), name=name)


def _check_output_shape(info, tensor, source):
    dims = _dims(info) if info.type.tensor_type.HasField("shape") else None
    if not dims:
        return
    ours = tensor.shape
    if len(dims) != len(ours) or any(d is not None and o is not None and d != o for d, o in zip(dims[1:], ours[1:])):
        raise OnnxImportError(f"{source}: graph output '{info.name}' is declared with shape {dims}, but nbnet "
                              f"computes {list(ours)}.")


def load_proto(path):
    import onnx

    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"ONNX file {path} does not exist.")
    try:
        return onnx.load(str(path), load_external_data=True)
    except Exception as error:
        raise ModelFileError(f"{path} is not a readable ONNX file ({type(error).__name__}: {error}).") from None
