"""Rescaling, as Keras's: y = x * scale + offset."""

from ..errors import NbnetError
from .base import Layer


class Rescaling(Layer):
    """``Rescaling(1 / 255)`` first in a model turns uint8 pixels into [0, 1] inside it, so
    fit, evaluate and predict can take the uint8 images as they are: nbnet then keeps them
    as uint8 (a quarter of float32's memory: 141 MB less for MNIST's training set) and
    converts each batch as it gathers it."""

    def __init__(self, scale, offset=0.0, **kwargs):
        super().__init__(**kwargs)
        try:
            self.scale, self.offset = float(scale), float(offset)
        except (TypeError, ValueError):
            raise NbnetError(f"Rescaling '{self.name}': scale and offset must be numbers (one per layer, as "
                             f"nbnet supports), received scale={scale!r}, offset={offset!r}.") from None

    def forward(self, x, training=False):
        y = self._buffer("y", x.shape, x.dtype)
        self.ops.scale_shift(x.reshape(x.size), self.scale, self.offset, y.reshape(y.size))
        return y

    def backward(self, dy):
        if not self.needs_input_grad:
            return None
        dx = self._buffer("dx", dy.shape, dy.dtype)
        self.ops.scale_shift(dy.reshape(dy.size), self.scale, 0.0, dx.reshape(dx.size))
        return dx

    def get_config(self):
        return {**super().get_config(), "scale": self.scale, "offset": self.offset}
