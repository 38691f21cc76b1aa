"""Keras's Reshape, ZeroPadding2D and UpSampling2D over channels-last tensors."""

import numpy as np

from ..errors import NbnetError
from .base import Layer


class Reshape(Layer):
    """(batch, ...) -> (batch, *target_shape) in C order, as Keras; one -1 is inferred."""

    def __init__(self, target_shape, **kwargs):
        super().__init__(**kwargs)
        target = tuple(int(d) for d in np.atleast_1d(target_shape))
        if sum(d == -1 for d in target) > 1 or any(d == 0 or d < -1 for d in target):
            raise NbnetError(f"Reshape '{self.name}': target_shape must hold positive sizes and at most one -1, "
                             f"received {target_shape!r}.")
        self.target_shape = target

    def compute_output_shape(self, input_shape):
        size = int(np.prod(input_shape))
        known = int(np.prod([d for d in self.target_shape if d != -1]))
        if -1 in self.target_shape:
            if size % known:
                raise self._shape_error(f"a size divisible by {known} to fill target_shape {self.target_shape}",
                                        input_shape)
            return tuple(size // known if d == -1 else d for d in self.target_shape)
        if known != size:
            raise self._shape_error(f"{known} values per sample, to fill target_shape {self.target_shape}",
                                    input_shape)
        return self.target_shape

    def validate_input_shape(self, input_shape):
        self.compute_output_shape(input_shape)

    def forward(self, x, training=False):
        self._shape = x.shape
        return x.reshape((x.shape[0],) + self.compute_output_shape(tuple(x.shape)[1:]))

    def backward(self, dy):
        return dy.reshape(self._shape) if self.needs_input_grad else None

    def get_config(self):
        return {**super().get_config(), "target_shape": list(self.target_shape)}


def _padding_pairs(padding, name):
    """Keras's forms: p, (p_h, p_w) or ((top, bottom), (left, right))."""
    try:
        if np.ndim(padding) == 0:
            pairs = ((int(padding),) * 2,) * 2
        elif all(np.ndim(p) == 0 for p in padding):
            pairs = tuple((int(p), int(p)) for p in padding)
        else:
            pairs = tuple(tuple(int(v) for v in p) for p in padding)
        ok = len(pairs) == 2 and all(len(p) == 2 and min(p) >= 0 for p in pairs)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise NbnetError(f"ZeroPadding2D '{name}': padding must be an int, (rows, cols) or ((top, bottom), "
                         f"(left, right)) of non-negative ints, received {padding!r}.")
    return pairs


class ZeroPadding2D(Layer):
    def __init__(self, padding=(1, 1), data_format=None, **kwargs):
        super().__init__(**kwargs)
        if data_format not in (None, "channels_last"):
            raise NbnetError(f"ZeroPadding2D '{self.name}': nbnet computes channels last, received "
                             f"data_format={data_format!r}.")
        self.padding = _padding_pairs(padding, self.name)

    def validate_input_shape(self, input_shape):
        self._require_images(input_shape)

    def compute_output_shape(self, input_shape):
        (top, bottom), (left, right) = self.padding
        return (input_shape[0] + top + bottom, input_shape[1] + left + right, input_shape[2])

    def forward(self, x, training=False):
        y = self._buffer("y", (x.shape[0],) + self.compute_output_shape(tuple(x.shape)[1:]), x.dtype)
        self.ops.zero_pad_forward(x, self.padding[0][0], self.padding[1][0], y)
        self._x_shape = x.shape
        return y

    def backward(self, dy):
        if not self.needs_input_grad:
            return None
        dx = self._buffer("dx", self._x_shape, dy.dtype)
        self.ops.zero_pad_backward(dy, self.padding[0][0], self.padding[1][0], dx)
        return dx

    def get_config(self):
        return {**super().get_config(), "padding": [list(p) for p in self.padding]}


class UpSampling2D(Layer):
    """Keras's UpSampling2D with its default "nearest" interpolation: each pixel repeated
    over a (rows, cols) block; the gradient is each block's sum."""

    def __init__(self, size=(2, 2), data_format=None, interpolation="nearest", **kwargs):
        super().__init__(**kwargs)
        if data_format not in (None, "channels_last"):
            raise NbnetError(f"UpSampling2D '{self.name}': nbnet computes channels last, received "
                             f"data_format={data_format!r}.")
        if interpolation != "nearest":
            raise NbnetError(f"UpSampling2D '{self.name}': nbnet has the 'nearest' interpolation only, received "
                             f"interpolation={interpolation!r}.")
        size = (size, size) if np.ndim(size) == 0 else tuple(size)
        if len(size) != 2 or not all(int(s) == s and s >= 1 for s in size):
            raise NbnetError(f"UpSampling2D '{self.name}': size must be a positive int or (rows, cols), received "
                             f"{size!r}.")
        self.size = tuple(int(s) for s in size)

    def validate_input_shape(self, input_shape):
        self._require_images(input_shape)

    def compute_output_shape(self, input_shape):
        return (input_shape[0] * self.size[0], input_shape[1] * self.size[1], input_shape[2])

    def forward(self, x, training=False):
        y = self._buffer("y", (x.shape[0],) + self.compute_output_shape(tuple(x.shape)[1:]), x.dtype)
        self.ops.upsample_forward(x, *self.size, y)
        self._x_shape = x.shape
        return y

    def backward(self, dy):
        if not self.needs_input_grad:
            return None
        dx = self._buffer("dx", self._x_shape, dy.dtype)
        self.ops.upsample_backward(dy, *self.size, dx)
        return dx

    def get_config(self):
        return {**super().get_config(), "size": list(self.size), "interpolation": "nearest"}
