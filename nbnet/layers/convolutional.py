"""Conv2D over channels-last (NHWC) input with Keras's (kh, kw, in/groups, out) kernel, and
DepthwiseConv2D with Keras's (kh, kw, in, depth_multiplier) one."""

import numpy as np

from .. import initializers, regularizers
from ..errors import NbnetError
from ..kernels.activations import LEAKY_RELU, LINEAR, RELU, SIGMOID, TANH
from ..kernels.conv import direct_applies, output_geometry
from ..kernels.implicit_gemm import applies as implicit_applies, input_gradient_as_columns
from ..kernels.planar import applies as planar_applies
from ..kernels.planar_blocks import blocks_apply as planar_blocks_apply
from ..kernels.planar_blocks import kernel_gradient_blocks_apply as planar_kernel_gradient_blocks_apply
from ..kernels.winograd import applies as winograd_applies, plain_applies as winograd_plain_applies, plain_positions
from ..kernels.winograd import f4_over_implicit as winograd_f4_over_implicit, pool_apart as winograd_pool_apart
from ..kernels.winograd5x5 import applies as winograd5x5_applies
from ..tensor import as_tensor
from .base import Layer
from .core import ActivationMixin, KernelMixin, NormFoldingMixin, _reg_config


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


# Keras 3's order, which nbnet follows: an activation given as the fifth positional argument
# (nbnet's order before dilation_rate and groups) lands on data_format, and is refused here.
_CONV2D_ORDER = ("(filters, kernel_size, strides, padding, data_format, dilation_rate, groups, activation, use_bias, "
                 "...)")


def channels_last(data_format, owner, order):
    if data_format not in (None, "channels_last"):
        raise NbnetError(f"{owner}: nbnet computes channels-last (NHWC) only, received data_format={data_format!r}. "
                         f"Use data_format=None or 'channels_last' (with channels-first data, transpose it first). "
                         f"The arguments follow Keras 3's order {order}: pass activation and later ones by keyword.")


def dilation_pair(dilation_rate, strides, owner):
    """Keras's rule: a dilation above 1 with a stride above 1 is refused (TensorFlow never
    implemented the pair)."""
    dilation = pair(dilation_rate, "dilation_rate", owner)
    if max(dilation) > 1 and max(strides) > 1:
        raise NbnetError(f"{owner}: strides > 1 is not supported together with dilation_rate > 1 (as in Keras), "
                         f"received strides={strides} and dilation_rate={dilation}. Use strides=1 with the dilation, "
                         "or a pooling layer after it.")
    return dilation


def dilated_geometry(height, width, kernel_size, strides, dilation, padding):
    """(kh, kw, sh, sw, dh, dw, pad_top, pad_left, out_h, out_w), the geometry of the
    kernels in kernels/depthwise.py: a dilated kernel covers (k - 1)*d + 1 pixels, and
    'valid'/'same' are computed over that span, as TensorFlow and Keras do."""
    (kh, kw), (dh, dw) = kernel_size, dilation
    span = ((kh - 1) * dh + 1, (kw - 1) * dw + 1)
    out_h, out_w, top, left = output_geometry(height, width, span, strides, padding)
    return (kh, kw, *strides, dh, dw, top, left, out_h, out_w)


def _check_span(layer, input_shape):
    """A 'valid' window must fit in the input (a dilated one over its whole span)."""
    layer._require_images(input_shape)
    height, width, _ = input_shape
    (kh, kw), (dh, dw) = layer.kernel_size, layer.dilation_rate
    span_h, span_w = (kh - 1) * dh + 1, (kw - 1) * dw + 1
    if layer.padding == "valid" and (span_h > height or span_w > width):
        spanned = f"{kh}x{kw} kernel" + (f" (spanning {span_h}x{span_w} at dilation_rate={layer.dilation_rate})"
                                          if (dh, dw) != (1, 1) else "")
        raise layer._shape_error(f"an input at least as large as its {spanned} with padding='valid'", input_shape)


# Winograd 3x3's transforms cost as much as the products they save up to 16 channels,
# except F(4x4, 3x3) from 512 channel pairs (winograd.f4_over_implicit). The step of a
# model around one such conv, batch 128, ms, implicit GEMM against Winograd (F(2x2, 3x3)
# in Numba loops): 3x3 14x14x16 -> 32 4.7 vs 6.5, 28x28x16 -> 16 with a 2x2 max pool 10.5
# vs 16.0 (Winograd's own fused pool), 14x14x32 -> 32 8.9 vs 8.9, 16x16x32 -> 64 22.1 vs
# 17.4. With winograd_tiles.py's transforms, one layer's forward + backward at batch 128 /
# 32: 14x14x16 -> 16 (F(2x2)) 1.86 vs 2.22 / 0.50 vs 0.85. 5x5 convs take Winograd F(2x2,
# 5x5) wherever winograd5x5.applies (from 16 channels: 512 channel pairs on AMD's Zen 4,
# over 1024 elsewhere).
IMPLICIT_OVER_WINOGRAD_CHANNELS = 16
# Below this many images the implicit GEMM takes the convs Winograd would: Winograd's
# fixed costs per call (the kernel's transform; handing the images to the worker threads
# and back: on the Intel VM a 13x13x32 -> 64 pooled forward took 307-322 us for two
# images, 70-73 for one, which runs in the calling thread) outweigh its fewer multiplies.
# Forward + backward, BLAS on one thread, Winograd -> implicit, two rounds, ms: 8 images
# 14x14x64 -> 64 2.85 / 2.93 -> 2.02 / 2.06, 8x8x128 -> 128 5.42 / 5.34 -> 3.19 / 3.30,
# 14x14x32 -> 64 5x5 3.21 / 3.11 -> 2.85 / 2.57, pooled 13x13x32 -> 64 1.35 / 1.33 -> 0.77
# / 0.70; 16 images about even (16x16x64 -> 64 4.04 / 3.81 -> 4.96 / 4.90, 28x28x32 -> 32
# 3.92 / 4.17 -> 3.55 / 3.27). Predict's forward alone, us: one image 14x14x64 -> 64 224 /
# 230 -> 144 / 142, 8x8x128 -> 128 629 / 616 -> 182 / 183; four images 14x14x64 -> 64 918
# / 745 -> 274 / 356. One-image predicts of tools/bench_zoo.py's nets, us, three rounds in
# one process: kaggle_bn 1217 / 1229 / 1260 -> 973 / 1018 / 1012, cifar 1150-1173 ->
# 907-918, cifar_bn 710-717 -> 591-596, pointwise_gap 483-490 -> 421-429, seed_cnn 274-280
# -> 252-257.
WINOGRAD_MIN_IMAGES = 16
# Activations the implicit GEMM (see implicit_conv_forward) and the depthwise kernels
# (depthwise_forward) run as they make the output: no pass of their own over it.
FUSED_ACTIVATIONS = (LINEAR, RELU, LEAKY_RELU, SIGMOID, TANH)


class Conv2D(KernelMixin, Layer):
    weight_order = ("kernel", "bias")

    def __init__(self, filters, kernel_size, strides=(1, 1), padding="valid", data_format=None, dilation_rate=(1, 1),
                 groups=1, activation=None, use_bias=True, kernel_initializer="glorot_uniform",
                 bias_initializer="zeros", kernel_regularizer=None, bias_regularizer=None, **kwargs):
        super().__init__(**kwargs)
        owner = f"Conv2D '{self.name}'"
        if int(filters) < 1:
            raise NbnetError(f"{owner}: filters must be a positive integer, received {filters!r}.")
        self.filters = int(filters)
        self.kernel_size = pair(kernel_size, "kernel_size", owner)
        self.strides = pair(strides, "strides", owner)
        self.padding = padding_mode(padding, owner)
        channels_last(data_format, owner, _CONV2D_ORDER)
        self.dilation_rate = dilation_pair(dilation_rate, self.strides, owner)
        if not isinstance(groups, (int, np.integer)) or isinstance(groups, bool) or groups < 1:
            raise NbnetError(f"{owner}: groups must be a positive integer, received {groups!r}.")
        if self.filters % groups:
            raise NbnetError(f"{owner}: filters must be divisible by groups (each group makes filters/groups "
                             f"outputs), received filters={self.filters} and groups={groups}.")
        self.groups = int(groups)
        self._init_kernel(activation, use_bias, kernel_initializer, bias_initializer, kernel_regularizer,
                          bias_regularizer)
        # The MaxPooling2D after this layer when the model runs it inside this layer's pass
        # (Sequential decides, see can_absorb); forward then returns the pooled output.
        self.pool = None

    def validate_input_shape(self, input_shape):
        _check_span(self, input_shape)
        if input_shape[2] % self.groups:
            raise NbnetError(f"Conv2D '{self.name}': the input's channels must be divisible by groups, received "
                             f"groups={self.groups}, but the input has {input_shape[2]} channels (input shape "
                             f"{(None,) + tuple(input_shape)}). Use a groups that divides {input_shape[2]}.")

    def create_weights(self, input_shape, rng):
        self._create_kernel(self.kernel_size + (input_shape[2] // self.groups, self.filters), rng)

    def compute_output_shape(self, input_shape):
        out_h, out_w = dilated_geometry(input_shape[0], input_shape[1], self.kernel_size, self.strides,
                                        self.dilation_rate, self.padding)[-2:]
        return (out_h, out_w, self.filters)

    @property
    def _plain(self):
        """Whether this is an ordinary convolution: only then the fast paths below (direct,
        im2col, Winograd, the pool fusion) run; kernels/depthwise.py does the others."""
        return self.groups == 1 and self.dilation_rate == (1, 1)

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
        windows that tile the image, and a non-decreasing activation, which commutes with
        the max (see _pooled_code)."""
        monotonic = self._code in (LINEAR, RELU, SIGMOID, TANH) or (self._code == LEAKY_RELU and self._slope >= 0)
        return self._plain and pool.tiles_input() and monotonic

    def _pooled_code(self):
        """The activation the pooled kernels apply (they know the rectifier only): RELU or
        LINEAR. Sigmoid, tanh and leaky relu are non-decreasing too, so max(act(v)) =
        act(max(v)): the kernels pool the pre-activation and the activation runs on the
        pooled values afterwards, a quarter of the conv's (forward and backward); where
        rounding makes two activated values of a window equal, the gradient may go to the
        other one of them. tools/bench_zoo.py's big_kernels (a 7x7 leaky relu conv of 16
        filters, then a 2x2 pool), batch 128: 14.7 -> 13.8 ms a step, predict 22.7k ->
        25.3k images/s (two runs each, alternating; the predict figure with Layer._buffer's
        views of the full batch's buffers, without which the pooled layer's larger
        predict chunks halved it)."""
        return self._code if self._code in (LINEAR, RELU) else LINEAR

    def forward(self, x, training=False):
        if not self._plain:
            return self._grouped_forward(x)
        ops = self.ops
        batch, height, width, _ = x.shape
        geometry = self._geometry(height, width)
        out_h, out_w = geometry[-2:]
        kernel2d = self.params["kernel"].reshape(-1, self.filters)
        bias = self._param_or_nothing(self.params, "bias", x.dtype)
        rows = batch * out_h * out_w
        # Which pass: Winograd F(2x2, 5x5), else planar, else direct, else Winograd F(2x2,
        # 3x3), else im2col (see each applies()); all but Winograd from 32 channels and
        # 16 images and the direct kernels' fused max pool run as the implicit GEMM in
        # float32.
        can_implicit = ops.implicit_conv_forward is not None and implicit_applies(x.dtype)
        few_images = batch < WINOGRAD_MIN_IMAGES and can_implicit
        winograd5x5 = (not few_images and ops.conv5x5_forward is not None
                       and winograd5x5_applies(self.kernel_size, self.strides, x.shape[3], self.filters,
                                               out_h * out_w))
        plain_winograd = not few_images and winograd_plain_applies(self.kernel_size, self.strides, x.shape[3],
                                                                   out_h * out_w)
        pooled_winograd = (not few_images and self.pool is not None and ops.conv3x3_maxpool_forward is not None
                           and winograd_applies(self.kernel_size, self.strides, self.pool.pool_size)
                           and not (plain_winograd and winograd_pool_apart(x.dtype, out_h, out_w)))
        planar = (not winograd5x5 and ops.planar_conv_forward is not None
                  and planar_applies(self.kernel_size, self.strides, x.shape[3], self.filters, out_w, pooled_winograd))
        direct = not (planar or winograd5x5) and direct_applies(x.shape[3], kernel2d.shape[0], self.filters)
        if pooled_winograd:
            winograd = not (direct or planar)
        else:
            winograd = not (direct or planar) and ops.conv3x3_forward is not None and plain_winograd
        winograd_plain = winograd and not pooled_winograd
        im2col = not (planar or winograd5x5 or direct or winograd)
        # Winograd 3x3 stays ahead from 32 channels, 5x5 wherever it applies; the direct
        # kernels keep a fused max pool, where the implicit GEMM would write the whole conv
        # output first (the MNIST CNN's 26x26x32 per image: a step 9.5 -> 20.7 ms).
        thin_winograd = (winograd and x.shape[3] <= IMPLICIT_OVER_WINOGRAD_CHANNELS
                         and not (winograd_plain and winograd_f4_over_implicit(x.dtype, x.shape[3], self.filters,
                                                                               out_h, out_w)))
        implicit = (planar or im2col or thin_winograd or (direct and self.pool is None)) and can_implicit
        if implicit:
            planar = direct = winograd = winograd5x5 = im2col = False
        # Few filters: kernels/planar_blocks.py's turned block fills the vector lanes the implicit
        # GEMM's filters would leave idle; as it does for the input gradient of few channels
        # that the implicit GEMM would make by its phase correlations, vectors along the
        # channels (fewer still go as columns, see implicit_gemm.COLUMNS_BELOW_CHANNELS).
        blocks = implicit and ops.planar_block_forward is not None and planar_blocks_apply(
            self.kernel_size, self.strides, self.filters, out_w, x.dtype)
        conv_forward = ops.planar_block_forward if blocks else ops.implicit_conv_forward
        self._blocks_forward = blocks
        self._blocks_input_gradient = (
            implicit and ops.planar_block_input_gradient is not None
            and planar_blocks_apply(self.kernel_size, self.strides, x.shape[3], width, x.dtype)
            and not input_gradient_as_columns(self.params["kernel"].shape, *self.strides, height, width, out_h, out_w))
        # Its kernel gradient too, where the input gradient is not the implicit GEMM's (which
        # makes both in one pass over each image).
        self._blocks_kernel_gradient = (implicit and ops.planar_block_kernel_gradient is not None
                                        and planar_kernel_gradient_blocks_apply(self.params["kernel"].shape,
                                                                                self.filters, x.dtype))
        self._x_shape, self._geometry_used = x.shape, geometry
        self._direct, self._winograd, self._planar, self._winograd5x5 = direct, winograd, planar, winograd5x5
        self._fused_winograd = winograd and pooled_winograd
        self._implicit = implicit
        # Every pass but im2col reads the input again in backward; im2col keeps its columns.
        self._x = None if im2col else x
        self._cols = self._buffer("cols", (rows, kernel2d.shape[0]), x.dtype) if im2col else None
        if self.pool is not None:
            # Returns the pool's output: the conv's own activation is never stored.
            self._y = None
            self._pooled, self._argmax = self.pool.absorbed_outputs((batch, out_h, out_w, self.filters), x.dtype)
            pooled_code = self._pooled_code()
            self._implicit_pool = direct and can_implicit and ops.implicit_conv_maxpool_forward is not None
            if self._implicit_pool:
                # The direct kernels' outputs, its sums in vector registers (see implicit_gemm).
                ops.implicit_conv_maxpool_forward(x, self.params["kernel"], bias, pooled_code, *geometry[2:],
                                                  *self.pool.pool_size, self._pooled, self._argmax)
            elif direct:
                ops.direct_conv_maxpool_forward(x, kernel2d, bias, pooled_code, *geometry, *self.pool.pool_size,
                                                self._pooled, self._argmax)
            elif self._fused_winograd:
                ops.conv3x3_maxpool_forward(x, self.params["kernel"], bias, pooled_code, *geometry[4:6],
                                            self._kernel_transform(), self._pooled, self._argmax)
            else:
                z = self._buffer("y", (rows, self.filters), x.dtype)
                if implicit:
                    conv_forward(x, self.params["kernel"], *geometry[2:], z)
                elif winograd:
                    ops.conv3x3_forward(x, self.params["kernel"], *geometry[4:6],
                                        self._kernel_transform(plain_positions(x.dtype, out_h, out_w)),
                                        z.reshape(batch, out_h, out_w, self.filters))
                elif planar:
                    ops.planar_conv_forward(x, self.params["kernel"], *geometry[4:], z)
                elif winograd5x5:
                    ops.conv5x5_forward(x, self.params["kernel"], *geometry[4:6], self._kernel_transform(36),
                                        z.reshape(batch, out_h, out_w, self.filters))
                else:
                    ops.im2col(x, *geometry, self._cols)
                    ops.matmul(self._cols, kernel2d, out=z)
                ops.bias_activation_maxpool(z.reshape(batch, out_h, out_w, self.filters), bias, pooled_code,
                                            *self.pool.pool_size, self._pooled, self._argmax)
            if pooled_code != self._code:
                pooled2d = self._pooled.reshape(-1, self.filters)
                ops.bias_activation_forward(pooled2d, ops.nothing(x.dtype), self._code, self._slope, pooled2d)
            return self._pooled
        z = self._buffer("logits" if self.keep_logits else "y", (rows, self.filters), x.dtype)
        # The bias and rectifier go in with the implicit GEMM's or the float32 Winograd
        # pass's stores: no pass of their own; the implicit GEMM runs leaky relu, sigmoid
        # and tanh over each part of an image it makes, in cache (a 1000-image predict of
        # LeNet-5, two rounds alternating: 65.7k / 63.7k -> 68.8k / 70.4k images/s, its b128
        # step 5.37 / 5.50 -> 4.94 / 5.08 ms). Other activations take the bias there too
        # and run in place over z without one, where adding it row by row cost more than
        # the activation on few filters (bias_activation_forward, ms, with the bias ->
        # without: 100352 x 6 tanh 0.71 -> 0.35, leaky relu 0.43 -> 0.06; 25088 x 32 tanh
        # 0.66 -> 0.57). Conv + activation forward, ms, two rounds in one process: LeNet-5's
        # 5x5 1 -> 6 tanh at batch 128 1.54 / 1.62 -> 1.17 / 1.28, at 1000 12.5 / 12.0 -> 8.9 /
        # 9.0, its 6 -> 16 1.13 / 1.14 -> 0.83 / 0.96, 7x7 1 -> 16 leaky relu 2.36 / 2.34 ->
        # 1.34 / 1.32, 5x5 16 -> 32 sigmoid 3.90 / 4.00 -> 3.57 / 3.72.
        bias_in_stores = not self.keep_logits and (
            implicit or ((winograd or winograd5x5) and x.dtype == np.float32))
        activation_in_stores = bias_in_stores and self._code in (
            FUSED_ACTIVATIONS if implicit else (LINEAR, RELU))
        finish = (bias, self._code == RELU) if bias_in_stores else ()
        if implicit:
            conv_forward(x, self.params["kernel"], *geometry[2:], z, bias if bias_in_stores else None,
                         self._code if activation_in_stores else LINEAR, self._slope)
        elif planar:
            ops.planar_conv_forward(x, self.params["kernel"], *geometry[4:], z)
        elif direct:
            ops.direct_conv_forward(x, kernel2d, *geometry, z)
        elif winograd:
            ops.conv3x3_forward(x, self.params["kernel"], *geometry[4:6],
                                self._kernel_transform(plain_positions(x.dtype, out_h, out_w)),
                                z.reshape(batch, out_h, out_w, self.filters), *finish)
        elif winograd5x5:
            ops.conv5x5_forward(x, self.params["kernel"], *geometry[4:6], self._kernel_transform(36),
                                z.reshape(batch, out_h, out_w, self.filters), *finish)
        else:
            ops.im2col(x, *geometry, self._cols)
            ops.matmul(self._cols, kernel2d, out=z)
        if bias_in_stores:
            if not activation_in_stores:
                ops.bias_activation_forward(z, ops.nothing(x.dtype), self._code, self._slope, z)
            self._y = z
            return z.reshape(batch, out_h, out_w, self.filters)
        y = self._buffer("y", z.shape, x.dtype) if self.keep_logits else z
        self._activate(z, bias, y)
        self._y = y
        return y.reshape(batch, out_h, out_w, self.filters)

    def backward(self, dy, from_logits=False):
        if not self._plain:
            return self._grouped_backward(dy, from_logits)
        ops = self.ops
        kernel2d = self.params["kernel"].reshape(-1, self.filters)
        dtype = dy.dtype
        dbias = self._param_or_nothing(self.grads, "bias", dtype)
        dkernel = self.grads["kernel"].reshape(kernel2d.shape)
        dx = self._buffer("dx", self._x_shape, dtype) if self.needs_input_grad else None
        pool_size = self.pool.pool_size if self.pool is not None else None
        pooled_code = self._pooled_code() if pool_size else self._code
        if pooled_code != self._code:
            # dy, the pooled output's gradient, taken through the activation in place.
            dy2d = dy.reshape(-1, self.filters)
            self._activation_gradient(self._pooled.reshape(-1, self.filters), dy2d, False, ops.nothing(dtype))
            dy = dy2d.reshape(dy.shape)  # the same array, unless dy was not contiguous
        if pool_size and dx is None and self._implicit_pool:
            # A first layer's: its kernel gradient summed in vector registers (see implicit_gemm).
            ops.implicit_conv_maxpool_backward(self._x, self.params["kernel"], dy, self._argmax, self._pooled,
                                               pooled_code, *self._geometry_used[2:], *pool_size, self.grads["kernel"],
                                               dbias)
            return dx
        if self._direct and pool_size:
            # dy is the pool's gradient; each image's conv gradient is made, used and dropped in one pass.
            ops.direct_conv_maxpool_backward(self._x, kernel2d, dy, self._argmax, self._pooled, pooled_code,
                                             *self._geometry_used, *pool_size, dkernel, dbias, dx is not None,
                                             dx if dx is not None else self._x[:0])
            return dx
        if self._fused_winograd:
            ops.conv3x3_maxpool_backward(self._x, self.params["kernel"], dy, self._argmax, self._pooled, pooled_code,
                                         *self._geometry_used[4:6], self._kernel_transform(), self.grads["kernel"],
                                         dbias, dx is not None, dx if dx is not None else self._x[:0])
            return dx
        if pool_size:
            out_h, out_w = self._geometry_used[-2:]
            dz = self._buffer("dz", (self._x_shape[0] * out_h * out_w, self.filters), dtype)
            ops.maxpool_activation_backward(dy, self._argmax, self._pooled, pooled_code, *pool_size,
                                            dz.reshape(-1, out_h, out_w, self.filters), dbias)
        else:
            dz = dy.reshape(-1, self.filters)  # overwritten in place with the gradient before the activation
            self._activation_gradient(self._y, dz, from_logits, dbias)
        if self._implicit:
            blocks_dx = dx is not None and self._blocks_input_gradient
            if self._blocks_kernel_gradient and (dx is None or blocks_dx):
                ops.planar_block_kernel_gradient(self._x, self.params["kernel"], dz, *self._geometry_used[2:],
                                                 self.grads["kernel"])
            else:
                ops.implicit_conv_backward(self._x, self.params["kernel"], dz, *self._geometry_used[2:],
                                           self.grads["kernel"], dx is not None and not blocks_dx,
                                           dx if dx is not None else self._x[:0])
            if blocks_dx:
                ops.planar_block_input_gradient(dz, self.params["kernel"], *self._geometry_used[4:], dx)
            return dx
        if self._planar:
            ops.planar_conv_backward(self._x, self.params["kernel"], dz, *self._geometry_used[4:], self.grads["kernel"],
                                     dx is not None, dx if dx is not None else self._x[:0])
            return dx
        if self._direct:
            ops.direct_conv_backward(self._x, kernel2d, dz, *self._geometry_used, dkernel, dx is not None,
                                     dx if dx is not None else self._x[:0])
            return dx
        if self._winograd5x5:
            out_h, out_w = self._geometry_used[-2:]
            ops.conv5x5_backward(self._x, self.params["kernel"], dz.reshape(-1, out_h, out_w, self.filters),
                                 *self._geometry_used[4:6], self._kernel_transform(36), self.grads["kernel"],
                                 dx is not None, dx if dx is not None else self._x[:0])
            return dx
        if self._winograd:
            out_h, out_w = self._geometry_used[-2:]
            u = self._kernel_transform(plain_positions(self._x.dtype, out_h, out_w))
            ops.conv3x3_backward(self._x, self.params["kernel"], dz.reshape(-1, out_h, out_w, self.filters),
                                 *self._geometry_used[4:6], u, self.grads["kernel"], dx is not None,
                                 dx if dx is not None else self._x[:0])
            return dx
        # The column gradient overwrites the columns: conv2d_backward reads them (for the
        # kernel gradient) before it writes, and the next forward refills them. Saves a
        # buffer as large as the columns (18 MB for the MNIST CNN's second layer).
        ops.conv2d_backward(self._cols, kernel2d, dz, self._geometry_used, dkernel,
                            self._buffer("dkernel", (ops.workers(),) + kernel2d.shape, dtype),
                            self._cols if dx is not None else None, dx)
        return dx

    def can_fold_norm(self):
        """Whether a BatchNormalization right after this layer can be folded into it for
        inference (see NormFoldingMixin.forward_folded): an ungrouped conv without an activation
        of its own."""
        return self._plain and self._code == LINEAR

    def _kernel_transform(self, positions=16):
        """A Winograd pass's buffer for the transformed kernel (positions, in, out): 16 for
        F(2x2, 3x3), 36 for F(4x4, 3x3) and F(2x2, 5x5)."""
        kernel = self.params["kernel"]
        return self._buffer(f"kernel_transform{positions}", (positions,) + tuple(kernel.shape[2:]), kernel.dtype)

    def _depthwise(self, channels):
        """groups == in_channels is a depthwise convolution: the kernel (kh, kw, 1, F) is
        the depthwise kernel (kh, kw, C, F/C) of output channel c*F/C + m, which is also
        group c's output, so the direct depthwise loops run it (no im2col, no BLAS)."""
        return self.groups == channels

    def _grouped_forward(self, x):
        ops = self.ops
        batch, height, width, channels = x.shape
        geometry = dilated_geometry(height, width, self.kernel_size, self.strides, self.dilation_rate, self.padding)
        out_h, out_w = geometry[-2:]
        rows = batch * out_h * out_w
        kernel = self.params["kernel"]
        z = self._buffer("logits" if self.keep_logits else "y", (rows, self.filters), x.dtype)
        self._x_shape, self._geometry_used = x.shape, geometry
        bias = self._param_or_nothing(self.params, "bias", x.dtype)
        if self._depthwise(channels):
            self._x, self._cols = x, None
            if _depthwise_finishes(self, ops):
                ops.depthwise_activation_forward(x, kernel.reshape(*self.kernel_size, self.filters), *geometry, z, bias,
                                                 self._code, self._slope)
                self._y = z
                return z.reshape(batch, out_h, out_w, self.filters)
            ops.depthwise_forward(x, kernel.reshape(*self.kernel_size, self.filters), *geometry, z)
        else:
            self._x = None
            self._cols = self._buffer("cols", (self.groups, rows, kernel.size // self.filters), x.dtype)
            ops.grouped_conv_forward(x, kernel.reshape(-1, self.filters), geometry, self._cols, z)
        y = self._buffer("y", z.shape, x.dtype) if self.keep_logits else z
        self._activate(z, bias, y)
        self._y = y
        return y.reshape(batch, out_h, out_w, self.filters)

    def _grouped_backward(self, dy, from_logits):
        ops = self.ops
        dtype = dy.dtype
        dx = self._buffer("dx", self._x_shape, dtype) if self.needs_input_grad else None
        dz = dy.reshape(-1, self.filters)  # overwritten in place with the gradient before the activation
        self._activation_gradient(self._y, dz, from_logits, self._param_or_nothing(self.grads, "bias", dtype))
        kernel, dkernel = self.params["kernel"], self.grads["kernel"]
        if self._cols is None:
            window = (*self.kernel_size, self.filters)
            ops.depthwise_backward(self._x, kernel.reshape(window), dz, *self._geometry_used, dkernel.reshape(window),
                                   dx is not None, dx if dx is not None else self._x[:0])
            return dx
        kernel2d = kernel.reshape(-1, self.filters)
        scratch = self._buffer("dkernel", (ops.workers(), kernel2d.shape[0], self.filters // self.groups), dtype)
        ops.grouped_conv_backward(self._cols, kernel2d, dz, self._geometry_used, dkernel.reshape(kernel2d.shape),
                                  scratch, dx is not None, dx)
        return dx

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "kernel_size": list(self.kernel_size),
                "strides": list(self.strides), "padding": self.padding, "dilation_rate": list(self.dilation_rate),
                "groups": self.groups, **self._kernel_config()}


def _depthwise_finishes(layer, ops):
    """Whether the depthwise kernel adds ``layer``'s bias and runs its activation as it
    makes the output (on the CPU, for activate_fusable's codes, logits not kept)."""
    return (ops.depthwise_activation_forward is not None and not layer.keep_logits
            and layer._code in FUSED_ACTIVATIONS)


class DepthwiseConv2D(NormFoldingMixin, ActivationMixin, Layer):
    """Keras's DepthwiseConv2D: each input channel c convolved with its own
    ``depth_multiplier`` kernels, output channel c*depth_multiplier + m. The weight is
    Keras 3's ``kernel`` (kh, kw, in, depth_multiplier); Keras 2's name,
    ``depthwise_kernel``, reads it too."""

    weight_order = ("kernel", "bias")

    def __init__(self, kernel_size, strides=(1, 1), padding="valid", depth_multiplier=1, data_format=None,
                 dilation_rate=(1, 1), activation=None, use_bias=True, depthwise_initializer="glorot_uniform",
                 bias_initializer="zeros", depthwise_regularizer=None, bias_regularizer=None, **kwargs):
        super().__init__(**kwargs)
        owner = f"DepthwiseConv2D '{self.name}'"
        self.kernel_size = pair(kernel_size, "kernel_size", owner)
        self.strides = pair(strides, "strides", owner)
        self.padding = padding_mode(padding, owner)
        if not isinstance(depth_multiplier, (int, np.integer)) or isinstance(depth_multiplier, bool) \
                or depth_multiplier < 1:
            raise NbnetError(f"{owner}: depth_multiplier must be a positive integer, received {depth_multiplier!r}.")
        self.depth_multiplier = int(depth_multiplier)
        channels_last(data_format, owner, "(kernel_size, strides, padding, depth_multiplier, data_format, "
                                          "dilation_rate, activation, use_bias, ...)")
        self.dilation_rate = dilation_pair(dilation_rate, self.strides, owner)
        self.use_bias = use_bias
        self._kernel_init = initializers.get(depthwise_initializer, owner)
        self._bias_init = initializers.get(bias_initializer, owner)
        self.depthwise_initializer = initializers.serialize(depthwise_initializer)
        self.bias_initializer = initializers.serialize(bias_initializer)
        self.regularizers = {"kernel": regularizers.get(depthwise_regularizer, owner),
                             "bias": regularizers.get(bias_regularizer, owner)}
        if not use_bias:
            self.weight_order = ("kernel",)
        self._init_activation(activation)

    @property
    def depthwise_kernel(self):
        return as_tensor(self.params["kernel"])

    def validate_input_shape(self, input_shape):
        _check_span(self, input_shape)

    def create_weights(self, input_shape, rng):
        channels = input_shape[2]
        self.params["kernel"] = self._kernel_init.draw(
            self.kernel_size + (channels, self.depth_multiplier), rng)
        if self.use_bias:
            self.params["bias"] = self._bias_init.draw((channels * self.depth_multiplier,), rng)

    def compute_output_shape(self, input_shape):
        out_h, out_w = dilated_geometry(input_shape[0], input_shape[1], self.kernel_size, self.strides,
                                        self.dilation_rate, self.padding)[-2:]
        return (out_h, out_w, input_shape[2] * self.depth_multiplier)

    def forward(self, x, training=False):
        ops = self.ops
        batch, height, width, channels = x.shape
        outs = channels * self.depth_multiplier
        geometry = dilated_geometry(height, width, self.kernel_size, self.strides, self.dilation_rate, self.padding)
        out_h, out_w = geometry[-2:]
        z = self._buffer("logits" if self.keep_logits else "y", (batch * out_h * out_w, outs), x.dtype)
        # (kh, kw, C, M) viewed as (kh, kw, C*M): output channel c*M + m's taps, contiguous.
        kernel = self._fold_view(self.params["kernel"])
        bias = self._param_or_nothing(self.params, "bias", x.dtype)
        if _depthwise_finishes(self, ops):
            ops.depthwise_activation_forward(x, kernel, *geometry, z, bias, self._code, self._slope)
            y = z
        else:
            ops.depthwise_forward(x, kernel, *geometry, z)
            y = self._buffer("y", z.shape, x.dtype) if self.keep_logits else z
            self._activate(z, bias, y)
        self._x, self._y, self._geometry_used = x, y, geometry
        return y.reshape(batch, out_h, out_w, outs)

    def _fold_view(self, kernel):
        return kernel.reshape(*self.kernel_size, -1)

    def can_fold_norm(self):
        """Whether a BatchNormalization right after this layer can be folded into it for
        inference (see NormFoldingMixin.forward_folded): no activation of its own (the
        MobileNet block: DepthwiseConv2D, BatchNormalization, ReLU)."""
        return self._code == LINEAR

    def backward(self, dy, from_logits=False):
        ops = self.ops
        x = self._x
        dx = self._buffer("dx", x.shape, dy.dtype) if self.needs_input_grad else None
        outs = self._y.shape[1]
        dz = dy.reshape(-1, outs)  # overwritten in place with the gradient before the activation
        self._activation_gradient(self._y, dz, from_logits, self._param_or_nothing(self.grads, "bias", dy.dtype))
        window = (*self.kernel_size, outs)
        ops.depthwise_backward(x, self.params["kernel"].reshape(window), dz, *self._geometry_used,
                               self.grads["kernel"].reshape(window), dx is not None,
                               dx if dx is not None else x[:0])
        return dx

    def get_config(self):
        return {**super().get_config(), "kernel_size": list(self.kernel_size), "strides": list(self.strides),
                "padding": self.padding, "depth_multiplier": self.depth_multiplier,
                "dilation_rate": list(self.dilation_rate), "activation": self.activation, "use_bias": self.use_bias,
                "depthwise_initializer": self.depthwise_initializer, "bias_initializer": self.bias_initializer,
                "depthwise_regularizer": _reg_config(self.regularizers["kernel"]),
                "bias_regularizer": _reg_config(self.regularizers["bias"])}
