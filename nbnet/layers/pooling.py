"""MaxPooling2D and AveragePooling2D over channels-last input."""

import numpy as np

from ..errors import NbnetError
from ..kernels.conv import output_geometry
from .base import Layer
from .convolutional import pair, padding_mode


def _pool_padding(padding, pool_size, owner):
    """'valid', 'same', or explicit ((top, bottom), (left, right)) pads (an nbnet
    extension ONNX import uses for pads Keras cannot express). The kernels leave padded
    positions out of both the max and the average's count, so explicit pads act as -inf
    for max pooling and as ONNX's count_include_pad=0 for averages."""
    if isinstance(padding, str):
        return padding_mode(padding, owner)
    try:
        (top, bottom), (left, right) = padding
        pads = tuple(int(p) for p in (top, bottom, left, right))
        exact = all(p == q for p, q in zip(pads, (top, bottom, left, right)))
    except (TypeError, ValueError):
        pads, exact = (), False
    if not exact or min(pads) < 0:
        raise NbnetError(f"{owner}: padding must be 'valid', 'same' or ((top, bottom), (left, right)) of "
                         f"non-negative ints, received {padding!r}.")
    if pads[0] >= pool_size[0] or pads[2] >= pool_size[1]:
        # a window wholly inside the padding would have nothing to pool (the end: see validate_input_shape)
        raise NbnetError(f"{owner}: top and left pads must be smaller than the pool size {pool_size}, received "
                         f"{padding!r}.")
    return ((pads[0], pads[1]), (pads[2], pads[3]))


class _Pooling2D(Layer):
    def __init__(self, pool_size=(2, 2), strides=None, padding="valid", **kwargs):
        super().__init__(**kwargs)
        owner = f"{type(self).__name__} '{self.name}'"
        self.pool_size = pair(pool_size, "pool_size", owner)
        # Keras: strides default to the pool size.
        self.strides = pair(strides, "strides", owner) if strides is not None else self.pool_size
        self.padding = _pool_padding(padding, self.pool_size, owner)

    def validate_input_shape(self, input_shape):
        self._require_images(input_shape)
        ph, pw = self.pool_size
        if self.padding == "same":
            return
        (top, bottom), (left, right) = ((0, 0), (0, 0)) if self.padding == "valid" else self.padding
        if ph > input_shape[0] + top + bottom or pw > input_shape[1] + left + right:
            raise self._shape_error(f"an input at least as large as its {ph}x{pw} pool with padding="
                                    f"{self.padding!r}", input_shape)
        out_h, out_w, _, _ = self._geometry(input_shape[0], input_shape[1])
        if (out_h - 1) * self.strides[0] >= input_shape[0] + top or (out_w - 1) * self.strides[1] >= \
                input_shape[1] + left:
            raise self._shape_error(f"no window starting in the end padding of {self.padding!r} (it would have "
                                    "nothing to pool)", input_shape)

    def _geometry(self, height, width):
        if isinstance(self.padding, str):
            return output_geometry(height, width, self.pool_size, self.strides, self.padding)
        (top, bottom), (left, right) = self.padding
        (ph, pw), (sh, sw) = self.pool_size, self.strides
        return (height + top + bottom - ph) // sh + 1, (width + left + right - pw) // sw + 1, top, left

    def compute_output_shape(self, input_shape):
        out_h, out_w, _, _ = self._geometry(input_shape[0], input_shape[1])
        return (out_h, out_w, input_shape[2])

    def _window(self, x):
        out_h, out_w, top, left = self._geometry(x.shape[1], x.shape[2])
        return (x.shape[0], out_h, out_w, x.shape[3]), (*self.pool_size, *self.strides, top, left)

    def keras_incompatibility(self):
        if not isinstance(self.padding, str):
            return f"explicit pads {self.padding} (Keras pools take 'valid' or 'same')"
        return None

    def get_config(self):
        padding = self.padding if isinstance(self.padding, str) else [list(p) for p in self.padding]
        return {**super().get_config(), "pool_size": list(self.pool_size), "strides": list(self.strides),
                "padding": padding}


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
        self._require_images(input_shape)

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
        if self.ops.global_avgpool_forward is not None:
            self.ops.global_avgpool_forward(x, y.reshape(x.shape[0], x.shape[3]))
        else:
            self.ops.avgpool_forward(x, *window, y)
        self._x_shape, self._window_used = x.shape, window
        return self._out(y)

    def backward(self, dy):
        if not self.needs_input_grad:
            return None
        dx = self._buffer("dx", self._x_shape, dy.dtype)
        if self.ops.global_avgpool_backward is not None:
            self.ops.global_avgpool_backward(dy.reshape(dy.shape[0], self._x_shape[3]), dx)
        else:
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
