"""The Layer lifecycle, as in Keras: ``__init__`` stores config, ``build(input_shape)``
validates the shape and creates weights, ``forward``/``backward`` compute.

Shapes given to ``build`` and ``compute_output_shape`` exclude the batch axis.
Trainable weights live in ``params`` (gradients in ``grads``, same keys, added to by
``backward``); non-trainable weights (BatchNormalization's moving statistics) in ``state``.
A model may rebind these arrays to views of one flat buffer, or to arrays on the GPU, so
layer code always reads them through the dicts. Kernels are launched through ``self.ops``,
the device module the model runs on (``nbnet.devices.cpu`` unless the model moved it).
"""

import copy
import itertools
import re

import numpy as np

from ..devices import cpu
from ..errors import ShapeError
from ..tensor import as_tensor

_counters = {}


def reset_names():
    """Start every layer name's count afresh (``backend.clear_session``)."""
    _counters.clear()


def snake_case(cls_name):
    """Keras's to_snake_case: Conv2D -> conv2d, MaxPooling2D -> max_pooling2d."""
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", cls_name)).lower()


def _auto_name(cls_name):
    return unique_name(snake_case(cls_name))


def unique_name(snake):
    """``snake``, then ``snake_1``, ``snake_2``, ... (one count per name, as Keras's uids)."""
    count = _counters.setdefault(snake, itertools.count())
    index = next(count)
    return snake if index == 0 else f"{snake}_{index}"


class Layer:
    """Base class. Subclasses set ``weight_order`` (Keras's get_weights order)."""

    weight_order = ()

    def __init__(self, name=None, input_shape=None, trainable=True):
        self.name = name or _auto_name(type(self).__name__)
        self.input_shape = tuple(input_shape) if input_shape is not None else None
        self.trainable = trainable
        self.built = False
        self.params, self.grads, self.state = {}, {}, {}
        self.regularizers = {}
        # The first layer of a model needs no input gradient; the model clears this.
        self.needs_input_grad = True
        # Set by the model when the layer before runs this one inside its own pass
        # (Conv2D + MaxPooling2D): the model then calls neither forward nor backward.
        self.absorbed = False
        self.ops = cpu
        self._buffers = {}

    # -- lifecycle -----------------------------------------------------------------
    def build(self, input_shape, rng=None):
        input_shape = tuple(int(d) for d in input_shape)
        self.validate_input_shape(input_shape)
        self.built_input_shape = input_shape
        self.create_weights(input_shape, rng if rng is not None else np.random.default_rng())
        for key, value in self.params.items():
            self.grads[key] = np.zeros_like(value)
        self.built = True
        return self.compute_output_shape(input_shape)

    def validate_input_shape(self, input_shape):
        pass

    def create_weights(self, input_shape, rng):
        pass

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def keras_incompatibility(self):
        """Why Keras could not read this layer back from a Keras file, or None."""
        return None

    def get_config(self):
        config = {"name": self.name, "trainable": self.trainable}
        if self.input_shape is not None:
            config["input_shape"] = list(self.input_shape)
        return config

    # -- calling -------------------------------------------------------------------
    def __call__(self, inputs, training=False):
        """On symbolic tensors (Keras's functional API): record the call and return the
        output tensor; a layer called twice shares its weights. On arrays: the layer's
        output for them (built for their shape on first use), as an array with ``.numpy()``."""
        from .. import graph

        if graph.is_symbolic(inputs):
            return graph.call_layer(self, inputs, graph.layer_rng_source)
        if getattr(self, "multiple_inputs", False):
            values = [np.ascontiguousarray(v, dtype=np.float32) for v in inputs]
            shape = [tuple(v.shape[1:]) for v in values]
        else:
            values = np.ascontiguousarray(inputs, dtype=np.float32)
            shape = tuple(values.shape[1:])
        if not self.built:
            self.build(shape, graph.layer_rng_source())
        eager = self.call_copy()
        eager.ops, eager.needs_input_grad = cpu, False
        return as_tensor(np.array(eager.forward(values, training=bool(training))))

    @property
    def output(self):
        """Keras's ``layer.output``: the tensor its call in a graph made (to build a model
        that ends there, e.g. for features: ``Model(model.inputs, layer.output)``)."""
        return self._only_call("output").outputs[0]

    @property
    def input(self):
        """Keras's ``layer.input``: the tensor(s) its call in a graph read."""
        inputs = self._only_call("input").inputs
        return inputs[0] if len(inputs) == 1 else list(inputs)

    def _only_call(self, what):
        from ..errors import NbnetError

        nodes = self.__dict__.get("_inbound_nodes", [])
        if not nodes:
            raise NbnetError(f"{type(self).__name__} '{self.name}' has no {what} yet: it has not been called on a "
                             "symbolic tensor (keras.Input or a model built from one).")
        if len({id(node) for node in nodes}) > 1 and len({tuple(map(id, node.inputs)) for node in nodes}) > 1:
            raise NbnetError(f"{type(self).__name__} '{self.name}' was called {len(nodes)} times, so it has several "
                             f"{what}s; use the tensor each call returned.")
        return nodes[-1]

    def call_copy(self):
        """A second caller of this layer: the same weights, gradients and state (the dicts
        are shared, so rebinding a weight shows in both), its own buffers and saved inputs.
        A graph runs each extra call of a shared layer through one."""
        twin = copy.copy(self)
        twin._buffers = {}
        return twin

    # -- computation ---------------------------------------------------------------
    def forward(self, x, training=False):
        raise NotImplementedError

    def backward(self, dy):
        raise NotImplementedError

    def active_regularizers(self):
        """(weight key, regularizer) pairs in effect. A regularizer for a weight the layer
        does not have (bias_regularizer with use_bias=False) is ignored, as in Keras."""
        return [(key, reg) for key, reg in self.regularizers.items() if reg and key in self.params]

    def regularization(self, total_outs=None):
        """Add each regularizer's gradient into ``grads``; return the summed penalty, or,
        given ``total_outs`` (one (1,) float64 array per active regularizer, on the
        layer's device), write each penalty there and return None."""
        active = self.active_regularizers()
        if total_outs is None:
            return sum(reg.apply(self.params[key], self.grads[key], self.ops) for key, reg in active)
        for (key, reg), total_out in zip(active, total_outs):
            reg.apply(self.params[key], self.grads[key], self.ops, total_out)
        return None

    def set_device(self, ops):
        """Compute with the device module ``ops`` from now on; the model moves the weights."""
        self.ops = ops

    # -- weights -------------------------------------------------------------------
    def get_weights(self):
        return [np.array(self._weight(key)) for key in self.weight_order]

    def set_weights(self, weights):
        if len(weights) != len(self.weight_order):
            raise ShapeError(
                f"{type(self).__name__} '{self.name}' has {len(self.weight_order)} weights "
                f"({', '.join(self.weight_order) or 'none'}), but received {len(weights)} arrays."
            )
        for key, value in zip(self.weight_order, weights):
            target = self._weight(key)
            value = np.asarray(value)
            if value.shape != target.shape:
                raise ShapeError(
                    f"{type(self).__name__} '{self.name}': weight '{key}' has shape {target.shape}, "
                    f"but received shape {value.shape}."
                )
            target[...] = value

    def _weight(self, key):
        return self.params[key] if key in self.params else self.state[key]

    @property
    def weights(self):
        """The weights in Keras's order, as live arrays (``.numpy()`` gives a copy)."""
        return [as_tensor(self._weight(key)) for key in self.weight_order]

    @property
    def trainable_weights(self):
        return [as_tensor(self.params[key]) for key in self.weight_order if key in self.params and self.trainable]

    @property
    def non_trainable_weights(self):
        return [as_tensor(self._weight(key)) for key in self.weight_order
                if key not in self.params or not self.trainable]

    def __getattr__(self, name):
        """Keras's weight attributes (``dense.kernel``, ``conv.bias``, ``bn.moving_mean``)."""
        stores = self.__dict__.get("params", {}), self.__dict__.get("state", {})
        for store in stores:
            if name in store:
                return as_tensor(store[name])
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def count_params(self):
        return sum(int(self._weight(key).size) for key in self.weight_order)

    def astype(self, dtype):
        """Convert weights, gradients and state to ``dtype`` (float64 is the reference
        path of the gradient checks); forward/backward then run in that dtype."""
        for store in (self.params, self.grads, self.state):
            for key in store:
                store[key] = store[key].astype(dtype)
        self._buffers.clear()
        return self

    def _buffer(self, key, shape, dtype):
        """A scratch array reused across steps while its shape and dtype stay the same."""
        # Kept per device, so moving a model back and forth does not reallocate.
        key = (self.ops.name, key)
        buf = self._buffers.get(key)
        # Compared as given first: a layer asks for about three buffers a call, and turning
        # each shape into ints first cost 2 us apiece, a fifth of a one-image predict.
        if buf is not None and buf.shape == shape and buf.dtype == dtype:
            return buf
        shape = tuple(map(int, shape))
        if buf is not None and tuple(buf.shape) == shape and buf.dtype == dtype:
            return buf
        if buf is not None and buf.dtype == dtype and tuple(buf.shape[1:]) == shape[1:] and buf.shape[0] > shape[0]:
            # A smaller batch (an epoch's or a predict's last, uneven one) takes the leading
            # rows of the buffer it has, a view kept per shape, where a new buffer for it and
            # another for the next full batch cost their first page touches on every call:
            # big_kernels' 1000-image predict in chunks of 443 + 443 + 114, 45 -> 80-140 ms.
            owner, view = self._buffers.get((key, shape), (None, None))
            if owner is not buf:
                view = buf[:shape[0]]
                self._buffers[key, shape] = buf, view
            return view
        if buf is not None:  # the views of the buffer being replaced go with it
            for stale in [k for k in self._buffers if len(k) == 2 and k[0] == key]:
                del self._buffers[stale]
        buf = self.ops.empty(shape, dtype)
        self._buffers[key] = buf
        return buf

    def _require_images(self, input_shape):
        """validate_input_shape of the layers that take (batch, height, width, channels)."""
        if len(input_shape) != 3:
            raise self._shape_error("input of rank 4 (batch, height, width, channels)", input_shape)

    def _shape_error(self, expected, received):
        return ShapeError(
            f"{type(self).__name__} '{self.name}' expects {expected}, but received input shape "
            f"{(None,) + tuple(received)} (batch axis first)."
        )

    def __repr__(self):
        return f"<{type(self).__name__} '{self.name}'>"
