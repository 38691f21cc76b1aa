"""Keras's functional API, symbolically: ``Input`` makes a KerasTensor; calling a layer
(or a model) on KerasTensors records a Node and returns new KerasTensors. A model later
walks the nodes back from its outputs (``trace``) and runs them through an execution plan
(see executor.py). Nothing here computes: shapes only, checked as each call is made, so
a wrong graph fails where it is written, with the layer and the shapes named.
"""

import numpy as np

from .errors import NbnetError, ShapeError


class KerasTensor:
    """A symbolic batch of samples of ``sample_shape`` (the batch axis left out), the
    ``index``-th output of ``node``."""

    dtype = "float32"

    def __init__(self, sample_shape, node=None, index=0, name=None):
        self.sample_shape = tuple(int(d) for d in sample_shape)
        self.node, self.index = node, index
        self.name = name or (node.layer.name if node is not None else "keras_tensor")

    @property
    def shape(self):
        return (None,) + self.sample_shape

    @property
    def ndim(self):
        return len(self.shape)

    def __repr__(self):
        return f"<KerasTensor shape={self.shape}, name={self.name}>"

    # Keras's ``x + y`` on symbolic tensors: the merge layers.
    def __add__(self, other):
        return _merge("Add", self, other)

    def __sub__(self, other):
        return _merge("Subtract", self, other)

    def __mul__(self, other):
        return _merge("Multiply", self, other)


def _merge(class_name, left, right):
    if not isinstance(right, KerasTensor):
        raise NbnetError(f"{left.name} {class_name.lower()} {type(right).__name__}: nbnet combines symbolic tensors "
                         "only with other symbolic tensors of the same shape (use a Rescaling layer for constants).")
    from .layers import merging

    return getattr(merging, class_name)()([left, right])


class Node:
    """One call of ``layer`` (a layer or a model) on ``inputs``, making ``outputs``."""

    def __init__(self, layer, inputs, output_shapes):
        self.layer, self.inputs = layer, list(inputs)
        single = len(output_shapes) == 1
        self.outputs = [KerasTensor(shape, self, index, layer.name if single else f"{layer.name}_{index}")
                        for index, shape in enumerate(output_shapes)]
        if not self.is_input:
            layer.__dict__.setdefault("_inbound_nodes", []).append(self)

    @property
    def is_input(self):
        return not self.inputs


def is_symbolic(value):
    """Whether ``value`` is a KerasTensor, or a non-empty list, tuple or dict of them."""
    if isinstance(value, KerasTensor):
        return True
    if isinstance(value, dict):
        value = list(value.values())
    return isinstance(value, (list, tuple)) and bool(value) and all(isinstance(v, KerasTensor) for v in value)


def flatten_tensors(value, what):
    """A KerasTensor, list, tuple or dict of them as a list (a dict in its key order)."""
    items = list(value.values()) if isinstance(value, dict) else list(value) if isinstance(value, (list, tuple)) \
        else [value]
    for item in items:
        if not isinstance(item, KerasTensor):
            raise NbnetError(f"{what}: expected symbolic tensors (from keras.Input or a layer called on one), "
                             f"received {type(item).__name__}.")
    return items


def call_layer(layer, inputs, rng_source):
    """Record ``layer(inputs)``: build the layer on first call, check the shapes on the next
    ones (a layer called twice shares its weights), and return its output tensor."""
    tensors = flatten_tensors(inputs, f"{type(layer).__name__} '{layer.name}'")
    if getattr(layer, "multiple_inputs", False):
        shapes = [t.sample_shape for t in tensors]
    else:
        if len(tensors) != 1:
            raise NbnetError(f"{type(layer).__name__} '{layer.name}' takes one input, but was called on "
                             f"{len(tensors)}: {[t.shape for t in tensors]}. Merge them first (layers.Concatenate, "
                             "layers.Add, ...).")
        shapes = tensors[0].sample_shape
    if not layer.built:
        output_shape = layer.build(shapes, rng_source())
    else:
        built = layer.built_input_shape
        same = ([tuple(s) for s in built] == shapes) if isinstance(shapes, list) else tuple(built) == shapes
        if not same:
            raise ShapeError(f"{type(layer).__name__} '{layer.name}' was built for input shape "
                             f"{_with_batch(built)}, but is now called on {_with_batch(shapes)}; a shared layer "
                             "needs inputs of the shape it was built for.")
        output_shape = layer.compute_output_shape(shapes)
    return Node(layer, tensors, [output_shape]).outputs[0]


def _with_batch(shapes):
    if isinstance(shapes, list):
        return [(None,) + tuple(s) for s in shapes]
    return (None,) + tuple(shapes)


def trace(inputs, outputs, model_name):
    """The nodes between ``inputs`` and ``outputs`` (lists of KerasTensors) in an order
    where every node comes after the nodes it reads from; input nodes left out. Raises
    when an output depends on a tensor that is not one of the inputs, or an input is
    never used."""
    input_ids = {id(t) for t in inputs}
    if len(input_ids) != len(inputs):
        raise NbnetError(f"Model '{model_name}': the same input tensor is given twice in inputs.")
    for tensor in inputs:
        if tensor.node is None or not tensor.node.is_input:
            raise NbnetError(f"Model '{model_name}': inputs must come from keras.Input(...); {tensor.name} "
                             f"(shape {tensor.shape}) is the output of layer '{tensor.node.layer.name}'.")
    order, done, reached = [], set(), set()

    def visit(tensor, output):
        if id(tensor) in input_ids:
            reached.add(id(tensor))
            return
        node = tensor.node
        if node.is_input:
            raise NbnetError(
                f"Model '{model_name}': output {output.name} depends on the input {tensor.name} (shape "
                f"{tensor.shape}), which is not one of the model's inputs "
                f"{[t.name for t in inputs]}; pass it in inputs=[...] or build that branch from a model input.")
        if id(node) in done:
            return
        done.add(id(node))  # calls only go forward: a graph has no cycles to guard against
        for parent in node.inputs:
            visit(parent, output)
        order.append(node)

    for tensor in outputs:
        visit(tensor, tensor)
    unused = [t.name for t in inputs if id(t) not in reached]
    if unused:
        raise NbnetError(f"Model '{model_name}': the input(s) {unused} are not used to compute any output "
                         f"({[t.name for t in outputs]}); remove them from inputs or connect them.")
    return order


def keras_layer_order(inputs, outputs):
    """The layers (and models used as layers) in Keras's ``model.layers`` order: by
    depth, the longest path to an output, deepest first; at one depth, in the order a
    depth-first walk from the outputs first meets them. (get_weights follows it, so
    weights copied from Keras land in the same layers.)"""
    first_met, finished, post_order = {}, set(), []

    def walk(node):
        if id(node) in finished:
            return
        first_met.setdefault(id(node.layer), len(first_met))
        for parent in node.inputs:
            walk(parent.node)
        finished.add(id(node))
        post_order.append(node)

    for tensor in outputs:
        walk(tensor.node)
    node_depth, layer_depth, layers = {}, {}, {}
    for node in reversed(post_order):  # outputs first: each node before the nodes it reads
        depth = max(node_depth.setdefault(id(node), 0), layer_depth.get(id(node.layer), 0))
        node_depth[id(node)] = layer_depth[id(node.layer)] = depth
        layers[id(node.layer)] = node.layer
        for parent in node.inputs:
            node_depth[id(parent.node)] = max(depth + 1, node_depth.get(id(parent.node), 0))
    for tensor in inputs:
        if id(tensor.node.layer) not in layer_depth:
            layer_depth[id(tensor.node.layer)], first_met[id(tensor.node.layer)] = 0, -1
            layers[id(tensor.node.layer)] = tensor.node.layer
    ordered = sorted(layers, key=lambda key: (-layer_depth[key], first_met[key]))
    return [layers[key] for key in ordered]


def input_tensor(layer):
    """The KerasTensor an InputLayer stands for (made once per layer)."""
    tensor = getattr(layer, "_tensor", None)
    if tensor is None:
        node = Node(layer, [], [layer.shape])
        tensor = layer._tensor = node.outputs[0]
    return tensor


def layer_rng_source():
    """A generator for a layer built at its functional call: drawn from
    ``utils.set_random_seed``'s sequence, so a seeded script builds the same weights."""
    from . import utils

    return np.random.default_rng(utils.next_model_seed())
