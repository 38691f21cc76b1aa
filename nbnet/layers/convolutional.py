"""Conv2D over channels-last (NHWC) input with Keras's (kh, kw, in, out) kernel."""

import numpy as np

from ..errors import NbnetError
from ..kernels.conv import DIRECT_MAX_FIELD, output_geometry
from .base import Layer
from .core import KernelMixin


def pair(value, what, owner):
    """Keras accepts an int or a pair for kernel_size, strides and pool_size."""
    values = (value, value) if isinstance(value, (int, np.integer)) else tuple(value)
    if len(values) != 2 or not all(isinstance(v, (int, np.integer)) and v >= 1 for v in values):
        raise NbnetError(f"{owner}: {what} must be a positive int or a pair of them, received {value!r}.")
    return int(values[0]), int(values[1])


def padding_mode(padding, owner):
    mode = str(padding).lower()
    if mode not in ("valid", "same"):
        raise NbnetError(f"{owner}: padding must be 'valid' or 'same', received {padding!r}.")
    return mode


class Conv2D(KernelMixin, Layer):
    weight_order = ("kernel", "bias")

    def __init__(self, filters, kernel_size, strides=1, padding="valid", activation=None, use_bias=True,
                 kernel_initializer="glorot_uniform", bias_initializer="zeros", kernel_regularizer=None,
                 bias_regularizer=None, **kwargs):
        super().__init__(**kwargs)
        owner = f"Conv2D '{self.name}'"
        if int(filters) < 1:
            raise NbnetError(f"{owner}: filters must be a positive integer, received {filters!r}.")
        self.filters = int(filters)
        self.kernel_size = pair(kernel_size, "kernel_size", owner)
        self.strides = pair(strides, "strides", owner)
        self.padding = padding_mode(padding, owner)
        self._init_kernel(activation, use_bias, kernel_initializer, bias_initializer, kernel_regularizer,
                          bias_regularizer)

    def validate_input_shape(self, input_shape):
        if len(input_shape) != 3:
            raise self._shape_error("input of rank 4 (batch, height, width, channels)", input_shape)
        height, width, _ = input_shape
        kh, kw = self.kernel_size
        if self.padding == "valid" and (kh > height or kw > width):
            raise self._shape_error(f"an input at least as large as its {kh}x{kw} kernel with padding='valid'",
                                    input_shape)

    def create_weights(self, input_shape, rng):
        self._create_kernel(self.kernel_size + (input_shape[2], self.filters), rng)

    def compute_output_shape(self, input_shape):
        out_h, out_w, _, _ = output_geometry(input_shape[0], input_shape[1], self.kernel_size, self.strides,
                                             self.padding)
        return (out_h, out_w, self.filters)

    def _geometry(self, height, width):
        out_h, out_w, top, left = output_geometry(height, width, self.kernel_size, self.strides, self.padding)
        return (*self.kernel_size, *self.strides, top, left, out_h, out_w)

    def forward(self, x, training=False):
        ops = self.ops
        batch, height, width, channels = x.shape
        geometry = self._geometry(height, width)
        out_h, out_w = geometry[-2:]
        kernel2d = self.params["kernel"].reshape(-1, self.filters)
        rows = batch * out_h * out_w
        z = self._buffer("logits" if self.keep_logits else "y", (rows, self.filters), x.dtype)
        if kernel2d.shape[0] <= DIRECT_MAX_FIELD:
            ops.direct_conv_forward(x, kernel2d, *geometry, z)
            self._x, self._cols = x, None
        else:
            cols = self._buffer("cols", (rows, kernel2d.shape[0]), x.dtype)
            ops.im2col(x, *geometry, cols)
            ops.matmul(cols, kernel2d, out=z)
            self._x, self._cols = None, cols
        y = self._buffer("y", z.shape, x.dtype) if self.keep_logits else z
        self._activate(z, self._param_or_nothing(self.params, "bias", x.dtype), y)
        self._x_shape, self._geometry_used, self._y = x.shape, geometry, y
        return y.reshape(batch, out_h, out_w, self.filters)

    def backward(self, dy, from_logits=False):
        kernel2d = self.params["kernel"].reshape(-1, self.filters)
        dtype = dy.dtype
        if self._cols is None:
            return self._direct_backward(kernel2d, dy, from_logits)
        # The column gradient overwrites the columns: conv2d_backward reads them (for the
        # kernel gradient) before it writes, and the next forward refills them. Saves a
        # buffer as large as the columns (18 MB for the MNIST CNN's second layer).
        dx = self._buffer("dx", self._x_shape, dtype) if self.needs_input_grad else None
        dcols = self._cols if self.needs_input_grad else None
        ops = self.ops
        ops.conv2d_backward(self._cols, kernel2d, self._y, dy, self._geometry_used, self._backward_code(from_logits),
                            self._slope, self.grads["kernel"].reshape(kernel2d.shape),
                            self._param_or_nothing(self.grads, "bias", dtype),
                            self._buffer("dkernel", (ops.workers(),) + kernel2d.shape, dtype), dcols, dx)
        return dx

    def _direct_backward(self, kernel2d, dy, from_logits):
        dz = dy.reshape(-1, self.filters)
        self.ops.activation_backward(self._y, dz, self._backward_code(from_logits), self._slope, dz,
                                     self._param_or_nothing(self.grads, "bias", dy.dtype))
        dx = self._buffer("dx", self._x_shape, dy.dtype) if self.needs_input_grad else None
        self.ops.direct_conv_backward(self._x, kernel2d, dz, *self._geometry_used,
                                      self.grads["kernel"].reshape(kernel2d.shape), dx is not None,
                                      dx if dx is not None else self._x[:0])
        return dx

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "kernel_size": list(self.kernel_size),
                "strides": list(self.strides), "padding": self.padding, **self._kernel_config()}
