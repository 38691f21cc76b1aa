"""Conv2D over channels-last (NHWC) input with Keras's (kh, kw, in, out) kernel."""

import numpy as np

from ..errors import NbnetError
from ..kernels.activations import LINEAR, RELU
from ..kernels.conv import DIRECT_MAX_FIELD, output_geometry
from ..kernels.winograd import applies as winograd_applies
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
        # The MaxPooling2D after this layer when the model runs it inside this layer's pass
        # (Sequential decides, see can_absorb); forward then returns the pooled output.
        self.pool = None

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
        """The kernels' window arguments: (kh, kw, sh, sw, pad_top, pad_left, out_h, out_w).
        With an absorbed pool, out_h and out_w count only the pixels its windows cover: a
        tiling pool drops the last row and column of an odd-sized output, so computing
        them is wasted work (the MNIST CNN's second layer: 10x10 of 11x11, 17% less)."""
        out_h, out_w, top, left = output_geometry(height, width, self.kernel_size, self.strides, self.padding)
        if self.pool is not None:
            ph, pw = self.pool.pool_size
            out_h, out_w = out_h // ph * ph, out_w // pw * pw
        return (*self.kernel_size, *self.strides, top, left, out_h, out_w)

    def can_absorb(self, pool):
        """Whether ``pool``, a max pool right after this layer, can run inside its pass:
        windows that tile the image, and an activation that commutes with the max."""
        return pool.tiles_input() and self._code in (LINEAR, RELU)

    def forward(self, x, training=False):
        ops = self.ops
        batch, height, width, _ = x.shape
        geometry = self._geometry(height, width)
        out_h, out_w = geometry[-2:]
        kernel2d = self.params["kernel"].reshape(-1, self.filters)
        bias = self._param_or_nothing(self.params, "bias", x.dtype)
        rows = batch * out_h * out_w
        direct = kernel2d.shape[0] <= DIRECT_MAX_FIELD
        winograd = (not direct and self.pool is not None and ops.conv3x3_maxpool_forward is not None
                    and winograd_applies(self.kernel_size, self.strides, self.pool.pool_size))
        self._x_shape, self._geometry_used, self._direct, self._winograd = x.shape, geometry, direct, winograd
        # The direct and Winograd passes read the input again in backward; im2col keeps its columns.
        self._x = x if direct or winograd else None
        self._cols = None if direct or winograd else self._buffer("cols", (rows, kernel2d.shape[0]), x.dtype)
        if self.pool is not None:
            # Returns the pool's output: the conv's own activation is never stored.
            self._y = None
            self._pooled, self._argmax = self.pool.absorbed_outputs((batch, out_h, out_w, self.filters), x.dtype)
            if direct:
                ops.direct_conv_maxpool_forward(x, kernel2d, bias, self._code, *geometry, *self.pool.pool_size,
                                                self._pooled, self._argmax)
            elif winograd:
                ops.conv3x3_maxpool_forward(x, self.params["kernel"], bias, self._code, *geometry[4:6],
                                            self._kernel_transform(), self._pooled, self._argmax)
            else:
                z = self._buffer("y", (rows, self.filters), x.dtype)
                ops.im2col(x, *geometry, self._cols)
                ops.matmul(self._cols, kernel2d, out=z)
                ops.bias_activation_maxpool(z.reshape(batch, out_h, out_w, self.filters), bias, self._code,
                                            *self.pool.pool_size, self._pooled, self._argmax)
            return self._pooled
        z = self._buffer("logits" if self.keep_logits else "y", (rows, self.filters), x.dtype)
        if direct:
            ops.direct_conv_forward(x, kernel2d, *geometry, z)
        else:
            ops.im2col(x, *geometry, self._cols)
            ops.matmul(self._cols, kernel2d, out=z)
        y = self._buffer("y", z.shape, x.dtype) if self.keep_logits else z
        self._activate(z, bias, y)
        self._y = y
        return y.reshape(batch, out_h, out_w, self.filters)

    def backward(self, dy, from_logits=False):
        ops = self.ops
        kernel2d = self.params["kernel"].reshape(-1, self.filters)
        dtype = dy.dtype
        dbias = self._param_or_nothing(self.grads, "bias", dtype)
        dkernel = self.grads["kernel"].reshape(kernel2d.shape)
        dx = self._buffer("dx", self._x_shape, dtype) if self.needs_input_grad else None
        pool_size = self.pool.pool_size if self.pool is not None else None
        if self._direct and pool_size:
            # dy is the pool's gradient; each image's conv gradient is made, used and dropped in one pass.
            ops.direct_conv_maxpool_backward(self._x, kernel2d, dy, self._argmax, self._pooled, self._code,
                                             *self._geometry_used, *pool_size, dkernel, dbias, dx is not None,
                                             dx if dx is not None else self._x[:0])
            return dx
        if self._winograd:
            ops.conv3x3_maxpool_backward(self._x, self.params["kernel"], dy, self._argmax, self._pooled, self._code,
                                         *self._geometry_used[4:6], self._kernel_transform(), self.grads["kernel"],
                                         dbias, dx is not None, dx if dx is not None else self._x[:0])
            return dx
        if pool_size:
            out_h, out_w = self._geometry_used[-2:]
            dz = self._buffer("dz", (self._x_shape[0] * out_h * out_w, self.filters), dtype)
            ops.maxpool_activation_backward(dy, self._argmax, self._pooled, self._code, *pool_size,
                                            dz.reshape(-1, out_h, out_w, self.filters), dbias)
        else:
            dz = dy.reshape(-1, self.filters)  # overwritten in place with the gradient before the activation
            ops.activation_backward(self._y, dz, self._backward_code(from_logits), self._slope, dz, dbias)
        if self._direct:
            ops.direct_conv_backward(self._x, kernel2d, dz, *self._geometry_used, dkernel, dx is not None,
                                     dx if dx is not None else self._x[:0])
            return dx
        # The column gradient overwrites the columns: conv2d_backward reads them (for the
        # kernel gradient) before it writes, and the next forward refills them. Saves a
        # buffer as large as the columns (18 MB for the MNIST CNN's second layer).
        ops.conv2d_backward(self._cols, kernel2d, dz, self._geometry_used, dkernel,
                            self._buffer("dkernel", (ops.workers(),) + kernel2d.shape, dtype),
                            self._cols if dx is not None else None, dx)
        return dx

    def _kernel_transform(self):
        """The Winograd pass's buffer for the transformed kernel (16, in, out)."""
        kernel = self.params["kernel"]
        return self._buffer("kernel_transform", (16,) + tuple(kernel.shape[2:]), kernel.dtype)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "kernel_size": list(self.kernel_size),
                "strides": list(self.strides), "padding": self.padding, **self._kernel_config()}
