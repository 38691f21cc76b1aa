"""MaxPooling2D and AveragePooling2D over channels-last input."""

import numpy as np

from ..errors import NbnetError
from ..kernels.conv import output_geometry
from .base import Layer
from .convolutional import pair, padding_mode


class _Pooling2D(Layer):
    def __init__(self, pool_size=(2, 2), strides=None, padding="valid", **kwargs):
        super().__init__(**kwargs)
        owner = f"{type(self).__name__} '{self.name}'"
        self.pool_size = pair(pool_size, "pool_size", owner)
        # Keras: strides default to the pool size.
        self.strides = pair(strides, "strides", owner) if strides is not None else self.pool_size
        self.padding = padding_mode(padding, owner)

    def validate_input_shape(self, input_shape):
        if len(input_shape) != 3:
            raise self._shape_error("input of rank 4 (batch, height, width, channels)", input_shape)
        ph, pw = self.pool_size
        if self.padding == "valid" and (ph > input_shape[0] or pw > input_shape[1]):
            raise self._shape_error(f"an input at least as large as its {ph}x{pw} pool with padding='valid'",
                                    input_shape)

    def compute_output_shape(self, input_shape):
        out_h, out_w, _, _ = output_geometry(input_shape[0], input_shape[1], self.pool_size, self.strides,
                                             self.padding)
        return (out_h, out_w, input_shape[2])

    def _window(self, x):
        out_h, out_w, top, left = output_geometry(x.shape[1], x.shape[2], self.pool_size, self.strides, self.padding)
        return (x.shape[0], out_h, out_w, x.shape[3]), (*self.pool_size, *self.strides, top, left)

    def get_config(self):
        return {**super().get_config(), "pool_size": list(self.pool_size), "strides": list(self.strides),
                "padding": self.padding}


class MaxPooling2D(_Pooling2D):
    def tiles_input(self):
        """Whether the windows tile the input (no overlap, no padding): the condition for
        running inside the Conv2D before it (see Conv2D.can_absorb)."""
        return self.padding == "valid" and self.strides == self.pool_size

    def absorbed_outputs(self, conv_shape, dtype):
        """The output and argmax buffers for the Conv2D that absorbed this layer (its
        output shape ``conv_shape``): it pools into them with the bias_activation_maxpool
        kernels, which take this layer's pool_size."""
        out_shape = (conv_shape[0],) + self.compute_output_shape(conv_shape[1:])
        return self._buffer("y", out_shape, dtype), self._buffer("argmax", out_shape, np.int32)

    def forward(self, x, training=False):
        out_shape, window = self._window(x)
        y = self._buffer("y", out_shape, x.dtype)
        argmax = self._buffer("argmax", out_shape, np.int32)
        self.ops.maxpool_forward(x, *window, y, argmax)
        self._x_shape, self._argmax, self._window_used = x.shape, argmax, window
        return y

    def backward(self, dy):
        if not self.needs_input_grad:
            return None
        dx = self._buffer("dx", self._x_shape, dy.dtype)
        self.ops.maxpool_backward(dy, self._argmax, *self._window_used, dx)
        return dx


class AveragePooling2D(_Pooling2D):
    def forward(self, x, training=False):
        out_shape, window = self._window(x)
        y = self._buffer("y", out_shape, x.dtype)
        self.ops.avgpool_forward(x, *window, y)
        self._x_shape, self._window_used = x.shape, window
        return y

    def backward(self, dy):
        if not self.needs_input_grad:
            return None
        dx = self._buffer("dx", self._x_shape, dy.dtype)
        self.ops.avgpool_backward(dy, *self._window_used, dx)
        return dx


class _GlobalPooling2D(Layer):
    """One window over the whole image: the pool kernels with pool_size = (height, width),
    then (batch, channels), or (batch, 1, 1, channels) with ``keepdims``."""

    def __init__(self, data_format=None, keepdims=False, **kwargs):
        super().__init__(**kwargs)
        if data_format not in (None, "channels_last"):
            raise NbnetError(f"{type(self).__name__} '{self.name}': nbnet computes channels last, received "
                             f"data_format={data_format!r}.")
        self.keepdims = bool(keepdims)

    def validate_input_shape(self, input_shape):
        if len(input_shape) != 3:
            raise self._shape_error("input of rank 4 (batch, height, width, channels)", input_shape)

    def compute_output_shape(self, input_shape):
        return (1, 1, input_shape[2]) if self.keepdims else (input_shape[2],)

    def _pooled(self, x):
        return self._buffer("y", (x.shape[0], 1, 1, x.shape[3]), x.dtype), (x.shape[1], x.shape[2], 1, 1, 0, 0)

    def _out(self, y):
        return y if self.keepdims else y.reshape(y.shape[0], y.shape[3])

    def get_config(self):
        return {**super().get_config(), "keepdims": self.keepdims}


class GlobalAveragePooling2D(_GlobalPooling2D):
    def forward(self, x, training=False):
        y, window = self._pooled(x)
        self.ops.avgpool_forward(x, *window, y)
        self._x_shape, self._window_used = x.shape, window
        return self._out(y)

    def backward(self, dy):
        if not self.needs_input_grad:
            return None
        dx = self._buffer("dx", self._x_shape, dy.dtype)
        self.ops.avgpool_backward(dy.reshape(dy.shape[0], 1, 1, self._x_shape[3]), *self._window_used, dx)
        return dx


class GlobalMaxPooling2D(_GlobalPooling2D):
    def forward(self, x, training=False):
        y, window = self._pooled(x)
        argmax = self._buffer("argmax", y.shape, np.int32)
        self.ops.maxpool_forward(x, *window, y, argmax)
        self._x_shape, self._argmax, self._window_used = x.shape, argmax, window
        return self._out(y)

    def backward(self, dy):
        if not self.needs_input_grad:
            return None
        dx = self._buffer("dx", self._x_shape, dy.dtype)
        self.ops.maxpool_backward(dy.reshape(dy.shape[0], 1, 1, self._x_shape[3]), self._argmax, *self._window_used, dx)
        return dx
