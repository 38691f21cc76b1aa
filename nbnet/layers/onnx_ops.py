"""Layers that ONNX import needs beyond Keras's core set, kept thin (the arithmetic is in
nbnet/kernels/onnx_ops.py, launched through ``self.ops`` on flattened views, with the index
geometry those kernels take computed once per shape and kept on the layer's device):

- ``Permute(dims)``: Keras's layer, the non-batch axes reordered (dims count from 1).
- ``ConstantOperation(operation, operand_shape)``: y = x (op) c for a constant ``c`` that
  broadcasts against one sample (add, sub, rsub = c - x, mul, div, rdiv = c / x). ``c`` is
  the layer's weight "operand": trainable when ``trainable_operand`` (an ONNX initializer),
  else a fixed constant (an ONNX Constant), kept with the non-trainable weights.
- ``BroadcastOperation(operation)``: a (op) b of two tensors with NumPy broadcasting over
  the sample axes (the merge layers need equal shapes).
- ``Clip(min_value, max_value)`` and ``LogSoftmax(axis)``.
- ``Take(axis, indices)``: np.take along one sample axis with constant indices (ONNX's
  Slice, any step, and Gather).
"""

import numpy as np

from ..errors import NbnetError, ShapeError
from ..kernels.onnx_ops import (CODES, OPERATIONS, broadcast_geometry, permute_geometry, reduction_geometry,
                                softmax_geometry)
from .base import Layer


class _OnnxOnly(Layer):
    """A layer only ONNX import makes: Keras has no class of that name."""

    def keras_incompatibility(self):
        return "an nbnet layer for ONNX import, with no Keras class"


def _flat(array):
    """A 1-D view (a copy where ``array`` is not contiguous: for what is only read)."""
    return array.reshape(int(np.prod(array.shape, dtype=np.int64)))


def _geometry(layer, role, shapes, make):
    """``make()`` (a kernel's geometry: an array, or (array, int)) for ``shapes``, on the
    layer's device: made again only when the shapes change (kept with the buffers)."""
    key = (layer.ops.name, "geometry", role)
    cached = layer._buffers.get(key)
    if cached is None or cached[0] != shapes:
        made = make()
        if isinstance(made, tuple):
            made = (layer.ops.to_device(made[0]),) + made[1:]
        else:
            made = layer.ops.to_device(made)
        cached = layer._buffers[key] = (shapes, made)
    return cached[1]


class Permute(Layer):
    """Keras's Permute: ``dims`` a permutation of 1..rank-1 (the batch axis stays first)."""

    def __init__(self, dims, **kwargs):
        super().__init__(**kwargs)
        self.dims = tuple(int(d) for d in dims)
        if sorted(self.dims) != list(range(1, len(self.dims) + 1)):
            raise NbnetError(f"Permute '{self.name}': dims must be a permutation of 1..{len(self.dims)}, "
                             f"received {dims!r}.")
        self._axes = (0,) + self.dims
        self._inverse = tuple(int(a) for a in np.argsort(self._axes))

    def validate_input_shape(self, input_shape):
        if len(input_shape) != len(self.dims):
            raise self._shape_error(f"input of rank {len(self.dims) + 1} for dims {self.dims}", input_shape)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[d - 1] for d in self.dims)

    def _permute(self, role, x, axes):
        shape = tuple(int(d) for d in x.shape)
        out = self._buffer(role, tuple(shape[a] for a in axes), x.dtype)
        geometry = _geometry(self, role, shape, lambda: permute_geometry(shape, axes))
        self.ops.permute_forward(_flat(x), geometry, _flat(out))
        return out

    def forward(self, x, training=False):
        return self._permute("y", x, self._axes)

    def backward(self, dy):
        if not self.needs_input_grad:
            return None
        return self._permute("dx", dy, self._inverse)

    def get_config(self):
        return {**super().get_config(), "dims": list(self.dims)}


def _operation(operation, owner):
    if operation not in OPERATIONS:
        raise NbnetError(f"{owner}: operation must be one of {', '.join(OPERATIONS)}, received {operation!r}.")
    return operation


def _broadcast(shapes, owner):
    try:
        return tuple(int(d) for d in np.broadcast_shapes(*[tuple(s) for s in shapes]))
    except ValueError:
        raise ShapeError(f"{owner}: shapes {[(None,) + tuple(s) for s in shapes]} do not broadcast "
                         "(batch axis first).") from None


class ConstantOperation(_OnnxOnly):
    """y = x (op) operand, the operand broadcasting against one sample (its shape has at
    most the sample's rank; leading axes of size 1 may be left out)."""

    weight_order = ("operand",)

    def __init__(self, operation, operand_shape=(), trainable_operand=False, **kwargs):
        super().__init__(**kwargs)
        self.operation = _operation(operation, f"ConstantOperation '{self.name}'")
        self.operand_shape = tuple(int(d) for d in operand_shape)
        self.trainable_operand = bool(trainable_operand)

    def compute_output_shape(self, input_shape):
        if len(self.operand_shape) > len(input_shape):
            raise self._shape_error(f"a rank of at least {len(self.operand_shape) + 1} for an operand of shape "
                                    f"{self.operand_shape}", input_shape)
        return _broadcast([input_shape, self.operand_shape], f"ConstantOperation '{self.name}'")

    def validate_input_shape(self, input_shape):
        self.compute_output_shape(input_shape)

    def create_weights(self, input_shape, rng):
        store = self.params if self.trainable_operand else self.state
        store["operand"] = np.zeros(self.operand_shape, np.float32)

    def forward(self, x, training=False):
        c = self._weight("operand")
        shapes = (tuple(int(d) for d in x.shape), self.operand_shape)
        out_shape = (shapes[0][0],) + self.compute_output_shape(shapes[0][1:])
        y = self._buffer("y", out_shape, x.dtype)
        geometry = _geometry(self, "forward", shapes, lambda: broadcast_geometry(out_shape, *shapes))
        self.ops.binary_forward(CODES[self.operation], _flat(x), _flat(c), geometry, _flat(y))
        self._x, self._shapes = x, (out_shape,) + shapes
        return y

    def backward(self, dy):
        wants_operand = "operand" in self.grads and self.trainable
        x, c, flat_dy = _flat(self._x), _flat(self._weight("operand")), _flat(dy)
        code, shapes = CODES[self.operation], self._shapes
        dx = None
        if self.needs_input_grad:
            dx = self._buffer("dx", self._x.shape, dy.dtype)
            if tuple(self._x.shape) == shapes[0]:  # x not broadcast: elementwise, the forward's geometry
                geometry = _geometry(self, "forward", shapes[1:], lambda: broadcast_geometry(*shapes))
                self.ops.binary_backward_same(code, 0, x, c, flat_dy, geometry, _flat(dx))
            else:
                geometry, kept = _geometry(self, "dx", shapes, lambda: reduction_geometry(0, *shapes))
                self.ops.binary_backward(code, 0, x, c, flat_dy, geometry, kept, _flat(dx))
        if wants_operand:
            dc = self._buffer("doperand", self.operand_shape, dy.dtype)
            geometry, kept = _geometry(self, "doperand", shapes, lambda: reduction_geometry(1, *shapes))
            self.ops.binary_backward(code, 1, x, c, flat_dy, geometry, kept, _flat(dc))
            self.ops.add_into(_flat(self.grads["operand"]), _flat(dc))
        return dx

    def get_config(self):
        return {**super().get_config(), "operation": self.operation, "operand_shape": list(self.operand_shape),
                "trainable_operand": self.trainable_operand}


class BroadcastOperation(_OnnxOnly):
    """a (op) b for two inputs of one batch size whose sample shapes broadcast."""

    multiple_inputs = True

    def __init__(self, operation, **kwargs):
        super().__init__(**kwargs)
        self.operation = _operation(operation, f"BroadcastOperation '{self.name}'")

    def build(self, input_shapes, rng=None):
        shapes = [tuple(int(d) for d in s) for s in input_shapes]
        output = self.compute_output_shape(shapes)
        self.built_input_shape, self.built = shapes, True
        return output

    def compute_output_shape(self, input_shapes):
        if len(input_shapes) != 2:
            raise ShapeError(f"BroadcastOperation '{self.name}' takes two inputs, received {len(input_shapes)}.")
        a, b = (tuple(s) for s in input_shapes)
        rank = max(len(a), len(b))  # align the batch axes: pad the sample shapes after it
        a, b = (1,) * (rank - len(a)) + a, (1,) * (rank - len(b)) + b
        return _broadcast([a, b], f"BroadcastOperation '{self.name}'")

    def forward(self, inputs, training=False):
        a, b = inputs
        shapes = tuple(tuple(int(d) for d in x.shape) for x in (a, b))
        if shapes[1][0] not in (1, shapes[0][0]):
            raise ShapeError(f"BroadcastOperation '{self.name}': batch sizes {shapes[0][0]} and {shapes[1][0]} "
                             "do not broadcast into the first input's.")
        rank = max(len(s) for s in shapes)  # align the batch axes: pad the sample shapes after it
        padded = tuple(s[:1] + (1,) * (rank - len(s)) + s[1:] for s in shapes)
        out_shape = (shapes[0][0],) + self.compute_output_shape([s[1:] for s in shapes])
        y = self._buffer("y", out_shape, a.dtype)
        geometry = _geometry(self, "forward", shapes, lambda: broadcast_geometry(out_shape, *padded))
        self.ops.binary_forward(CODES[self.operation], _flat(a), _flat(b), geometry, _flat(y))
        self._inputs, self._shapes, self._geometry_shapes = (a, b), shapes, (out_shape,) + padded
        return y

    def backward(self, dy):
        a, b = (_flat(x) for x in self._inputs)
        flat_dy, code, shapes = _flat(dy), CODES[self.operation], self._geometry_shapes
        grads = []
        for which, role in enumerate(("da", "db")):
            grad = self._buffer(role, self._shapes[which], dy.dtype)
            geometry, kept = _geometry(self, role, shapes, lambda: reduction_geometry(which, *shapes))
            self.ops.binary_backward(code, which, a, b, flat_dy, geometry, kept, _flat(grad))
            grads.append(grad)
        return grads

    def get_config(self):
        return {**super().get_config(), "operation": self.operation}


class Clip(_OnnxOnly):
    """y = min(max(x, min_value), max_value); None leaves that side open."""

    def __init__(self, min_value=None, max_value=None, **kwargs):
        super().__init__(**kwargs)
        self.min_value = None if min_value is None else float(min_value)
        self.max_value = None if max_value is None else float(max_value)

    def _bounds(self, dtype):
        low = -np.inf if self.min_value is None else self.min_value
        high = np.inf if self.max_value is None else self.max_value
        return dtype.type(low), dtype.type(high)

    def forward(self, x, training=False):
        y = self._buffer("y", x.shape, x.dtype)
        self.ops.clip_forward(_flat(x), *self._bounds(x.dtype), _flat(y))
        self._x = x
        return y

    def backward(self, dy):
        if not self.needs_input_grad:
            return None
        dx = self._buffer("dx", dy.shape, dy.dtype)
        self.ops.clip_backward(_flat(self._x), *self._bounds(dy.dtype), _flat(dy), _flat(dx))
        return dx

    def get_config(self):
        return {**super().get_config(), "min_value": self.min_value, "max_value": self.max_value}


class LogSoftmax(_OnnxOnly):
    """log(softmax(x)) over ``axis`` (a sample axis: -1, the last, by default)."""

    def __init__(self, axis=-1, **kwargs):
        super().__init__(**kwargs)
        self.axis = int(axis)
        if self.axis == 0:
            raise NbnetError(f"LogSoftmax '{self.name}': axis 0 is the batch axis.")

    def validate_input_shape(self, input_shape):
        if not -len(input_shape) <= self.axis <= len(input_shape):
            raise self._shape_error(f"an axis {self.axis} inside the sample axes", input_shape)

    def forward(self, x, training=False):
        y = self._buffer("y", x.shape, x.dtype)
        self._view = softmax_geometry(tuple(x.shape), self.axis)  # (outer, axis, inner)
        self.ops.log_softmax_forward(x.reshape(self._view), y.reshape(self._view))
        self._y = y
        return y

    def backward(self, dy):
        if not self.needs_input_grad:
            return None
        dx = self._buffer("dx", dy.shape, dy.dtype)
        self.ops.log_softmax_backward(self._y.reshape(self._view), dy.reshape(self._view), dx.reshape(self._view))
        return dx

    def get_config(self):
        return {**super().get_config(), "axis": self.axis}


class Take(_OnnxOnly):
    """y = np.take(x, indices, axis): the positions ``indices`` (ints, in any order,
    repeats allowed) along the sample axis ``axis`` (the batch axis is 0; negative counts
    from the last). ONNX import's Slice (a range with any step) and Gather (constant
    indices); the gradient adds each output position back into the input position it read."""

    def __init__(self, axis, indices, **kwargs):
        super().__init__(**kwargs)
        self.axis = int(axis)
        values = np.asarray(indices)
        if values.ndim != 1 or values.size == 0 or values.dtype.kind not in "iu":
            raise NbnetError(f"Take '{self.name}': indices must be a non-empty 1-D list of ints, received "
                             f"{indices!r}.")
        self.indices = tuple(int(i) for i in values)
        if self.axis == 0:
            raise NbnetError(f"Take '{self.name}': axis 0 is the batch axis.")

    def _position(self, rank):
        """The axis of the (batch-first) tensor of ``rank``."""
        return self.axis % rank

    def validate_input_shape(self, input_shape):
        rank = len(input_shape) + 1
        if not -rank < self.axis < rank or self._position(rank) == 0:
            raise self._shape_error(f"a sample axis {self.axis}", input_shape)
        size = input_shape[self._position(rank) - 1]
        if min(self.indices) < 0 or max(self.indices) >= size:
            raise self._shape_error(f"indices in [0, {size}) along axis {self.axis}, received "
                                    f"[{min(self.indices)}, {max(self.indices)}]", input_shape)

    def compute_output_shape(self, input_shape):
        position = self._position(len(input_shape) + 1) - 1
        return tuple(input_shape[:position]) + (len(self.indices),) + tuple(input_shape[position + 1:])

    def _views(self, shape):
        outer, size, inner = softmax_geometry(tuple(shape), self._position(len(shape)))
        return (outer, size, inner), (outer, len(self.indices), inner)

    def _indices(self):
        return _geometry(self, "indices", self.indices, lambda: np.array(self.indices, np.int64))

    def forward(self, x, training=False):
        view_in, view_out = self._views(x.shape)
        shape = list(x.shape)
        shape[self._position(x.ndim)] = len(self.indices)
        y = self._buffer("y", tuple(shape), x.dtype)
        self.ops.take_forward(x.reshape(view_in), self._indices(), y.reshape(view_out))
        self._x_shape = x.shape
        return y

    def backward(self, dy):
        if not self.needs_input_grad:
            return None
        view_in, view_out = self._views(self._x_shape)
        dx = self._buffer("dx", self._x_shape, dy.dtype)
        self.ops.take_backward(dy.reshape(view_out), self._indices(), dx.reshape(view_in))
        return dx

    def get_config(self):
        return {**super().get_config(), "axis": self.axis, "indices": list(self.indices)}
