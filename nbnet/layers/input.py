"""Keras's ``Input`` and ``InputLayer``: the input shape of a model, given first.

``keras.Input(shape=...)`` returns the symbolic tensor a functional model starts from;
``Sequential([keras.Input(shape=(28, 28, 1)), ...])`` builds the model at once, as Keras
does (there the InputLayer holds no weights and is not one of ``model.layers``)."""

from ..errors import NbnetError
from .base import Layer


class InputLayer(Layer):
    def __init__(self, shape=None, batch_size=None, dtype=None, name=None, batch_shape=None, input_shape=None,
                 **kwargs):
        # Keras 2 spelled it input_shape= (and batch_input_shape=); Keras 3 shape= or batch_shape=.
        batch_shape = batch_shape or kwargs.pop("batch_input_shape", None)
        shape = shape if shape is not None else input_shape
        if shape is None and batch_shape is not None:
            shape = tuple(batch_shape)[1:]
        if shape is None:
            raise NbnetError("Input needs shape=(...), the shape of one sample without the batch axis, "
                             "e.g. keras.Input(shape=(28, 28, 1)).")
        if isinstance(shape, int):
            shape = (shape,)
        if any(d is None for d in shape):
            raise NbnetError(f"Input: nbnet needs every axis of a sample's shape, received shape={tuple(shape)}.")
        super().__init__(name=name, input_shape=tuple(int(d) for d in shape), **kwargs)
        self.shape = self.input_shape
        self.batch_size, self.dtype = batch_size, dtype
        self.built, self.built_input_shape = True, self.shape

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {"name": self.name, "batch_shape": [None, *self.shape], "dtype": "float32"}


def Input(shape=None, batch_size=None, dtype=None, name=None, batch_shape=None, **kwargs):  # noqa: N802 (Keras's name)
    from ..graph import input_tensor

    layer = InputLayer(shape=shape, batch_size=batch_size, dtype=dtype, name=name, batch_shape=batch_shape, **kwargs)
    return input_tensor(layer)
