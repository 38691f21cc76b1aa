"""Preprocessing layers, as Keras's: Rescaling (y = x * scale + offset) and RandomFlip."""

import numpy as np

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


class RandomFlip(Layer):
    """Keras's RandomFlip: in training each image, with probability 1/2, is mirrored
    left-right ("horizontal"), top-bottom ("vertical") or both ("horizontal_and_vertical",
    one draw for both, as Keras 3 does); at inference it is the identity. The draws come
    from the host generator (the model's, unless ``seed`` is given), so the CPU and the
    GPU flip the same images."""

    MODES = {"horizontal": (True, False), "vertical": (False, True), "horizontal_and_vertical": (True, True)}
    draws_from_model = True

    def __init__(self, mode="horizontal_and_vertical", seed=None, data_format=None, **kwargs):
        super().__init__(**kwargs)
        if mode not in self.MODES:
            raise NbnetError(f"RandomFlip '{self.name}': mode must be one of {', '.join(self.MODES)}, received "
                             f"{mode!r}.")
        if data_format not in (None, "channels_last"):
            raise NbnetError(f"RandomFlip '{self.name}': nbnet's images are channels_last, received "
                             f"data_format={data_format!r}.")
        self.mode, self.seed = mode, seed
        self.rng = np.random.default_rng(seed)
        self._flips = None

    def validate_input_shape(self, input_shape):
        self._require_images(input_shape)

    def forward(self, x, training=False):
        if not training:
            self._flips = None
            return x
        draws = (self.rng.random(x.shape[0]) <= 0.5).astype(np.uint8)  # Keras: uniform(0, 1) <= 0.5
        self._flips = self._buffer("flips", draws.shape, np.uint8)
        self.ops.upload(draws, self._flips)
        y = self._buffer("y", x.shape, x.dtype)
        self.ops.flip_images(x, self._flips, *self.MODES[self.mode], y)
        return y

    def backward(self, dy):
        if not self.needs_input_grad:
            return None
        if self._flips is None:
            return dy
        dx = self._buffer("dx", dy.shape, dy.dtype)
        self.ops.flip_images(dy, self._flips, *self.MODES[self.mode], dx)
        return dx

    def get_config(self):
        return {**super().get_config(), "mode": self.mode, "seed": self.seed}
