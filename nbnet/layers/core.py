"""Dense, Flatten, Dropout and the activation layers."""

import numpy as np

from .. import activations, initializers, regularizers
from ..errors import NbnetError
from ..kernels.activations import LINEAR
from .base import Layer


class ActivationMixin:
    """A fused output activation. When the model fuses a softmax/sigmoid output with its
    cross-entropy, it sets ``keep_logits``: forward then also keeps the pre-activation
    ``logits`` and ``backward(dlogits, from_logits=True)`` skips the activation."""

    def _init_activation(self, activation):
        self.activation, self._code, self._slope = activations.resolve(activation, f"{type(self).__name__} '{self.name}'")
        self.keep_logits = False
        self.logits = None

    def _activate(self, z2d, bias, y2d):
        """y2d = act(z2d + bias); z2d may be y2d. With keep_logits, z2d is kept as logits."""
        ops = self.ops
        if self.keep_logits:
            _bias_activation(ops, z2d, bias, LINEAR, 0.0, z2d)
            self.logits = z2d
            _bias_activation(ops, z2d, ops.nothing(z2d.dtype), self._code, self._slope, y2d)
        else:
            _bias_activation(ops, z2d, bias, self._code, self._slope, y2d)

    def _backward_code(self, from_logits):
        return LINEAR if from_logits else self._code

    def _activation_gradient(self, y2d, dz2d, from_logits, dbias):
        """dz2d = the gradient before the activation, in place, and the bias gradient (its
        column sums) added into ``dbias`` (length 0: none). Linear without a bias (a conv
        before BatchNormalization) has nothing to do, where the kernel would write every
        value onto itself: a read and write of the conv's output in each training step
        (tools/bench_zoo.py's kaggle_bn, four such convs, batch 128, two runs alternating:
        87.4 / 88.7 -> 84.8 / 82.5 ms a step)."""
        code = self._backward_code(from_logits)
        if code != LINEAR or dbias.shape[0]:
            self.ops.activation_backward(y2d, dz2d, code, self._slope, dz2d, dbias)

    def _param_or_nothing(self, store, key, dtype):
        """``store[key]``, or the kernels' zero-length 'none' array (no bias)."""
        return store[key] if key in store else self.ops.nothing(dtype)


def _bias_activation(ops, z2d, bias, code, slope, y2d):
    # No bias, no activation, in place (a conv or Dense before BatchNormalization): nothing
    # to do, where the kernel would copy every value onto itself (a one-image 16-channel
    # conv 31 -> 20 us; a pass over the layer's output in every training step).
    if code != LINEAR or bias.shape[0] or y2d is not z2d:
        ops.bias_activation_forward(z2d, bias, code, slope, y2d)


# Inputs fold a following BatchNormalization into the layer from this many rows (samples
# times pixels) per row of the kernel (see NormFoldingMixin.forward_folded).
FOLD_MIN_ROWS_PER_KERNEL_ROW = 1


class NormFoldingMixin:
    """A layer (Dense, Conv2D, DepthwiseConv2D) that a BatchNormalization right after it
    folds into for inference: its kernel scaled and its bias shifted per output channel."""

    def _fold_view(self, kernel):
        """``kernel`` viewed with the output channels along its last axis."""
        return kernel

    def forward_folded(self, x, norm):
        """The inference output of ``norm`` (a BatchNormalization, with its absorbed
        activation) applied to this layer's: one pass whose kernel and bias hold the norm's
        moving statistics, gamma and beta (scale = gamma / sqrt(moving_variance + epsilon);
        kernel * scale, (bias - moving_mean) * scale + beta), with no pass of the norm's
        own. Equal to running both up to float rounding. CPU only: elsewhere both run.
        1000-image predicts of tools/bench_zoo.py's networks, with the norm's relu in the
        conv's stores, ms (two runs each, processes alternating with the parent commit):
        resnet_small 33.9 -> 29.6, kaggle_bn 152 -> 134, cifar_bn 123 -> 111."""
        kernel = self.params["kernel"]
        outputs = self._fold_view(kernel)
        # Folding costs a pass over the kernel (one kernel call, fold_norm), the norm a pass
        # over the output: where the kernel has more rows than the input the norm is
        # cheaper (one image through the Kaggle-style CNN with all five norms folded, its
        # 3136 -> 256 Dense layer's among them: 0.69 -> 0.87 ms, when a fold was ten NumPy
        # calls). One image, us, from 16 rows per kernel row to 1 (fold_norm a kernel):
        # resnet_small 168 -> 141 (its 14x14x16 convs folded), kaggle_bn 550 -> 527.
        if not isinstance(kernel, np.ndarray) or (
                x.size // x.shape[-1] < FOLD_MIN_ROWS_PER_KERNEL_ROW * (kernel.size // outputs.shape[-1])):
            return norm.forward(self.forward(x), training=False)
        # Folded through the device module, into buffers: a recorded inference program
        # (inference_program.py) folds again on each replay, with the weights of then.
        folded_kernel = self._buffer("folded_kernel", kernel.shape, kernel.dtype)
        folded_bias = self._buffer("folded_bias", outputs.shape[-1:], kernel.dtype)
        self.ops.fold_norm(outputs, self._param_or_nothing(self.params, "bias", kernel.dtype), norm.params["gamma"],
                           norm.params["beta"], norm.state["moving_mean"], norm.state["moving_variance"],
                           norm.epsilon, self._fold_view(folded_kernel), folded_bias)
        params, code, slope = self.params, self._code, self._slope
        self.params = {"kernel": folded_kernel, "bias": folded_bias}
        self._code, self._slope = norm._activation_code()
        try:
            y = self.forward(x)
        finally:
            self.params, self._code, self._slope = params, code, slope
        # A pool the norm runs in its own pass (executor.Plan._fuse_norm_pool) runs here.
        return y if norm.pool_after is None else norm.pool_after.forward(y)


class KernelMixin(NormFoldingMixin, ActivationMixin):
    """What Dense and Conv2D share: a kernel, an optional bias, their initializers and
    regularizers, and a fused activation."""

    def _init_kernel(self, activation, use_bias, kernel_initializer, bias_initializer, kernel_regularizer,
                     bias_regularizer):
        owner = f"{type(self).__name__} '{self.name}'"
        self.use_bias = use_bias
        self._kernel_init = initializers.get(kernel_initializer, owner)
        self._bias_init = initializers.get(bias_initializer, owner)
        # As given (a name), or an object's class and config: what get_config saves.
        self.kernel_initializer = initializers.serialize(kernel_initializer)
        self.bias_initializer = initializers.serialize(bias_initializer)
        self.regularizers = {"kernel": regularizers.get(kernel_regularizer, owner),
                             "bias": regularizers.get(bias_regularizer, owner)}
        if not use_bias:
            self.weight_order = ("kernel",)
        self._init_activation(activation)

    def _create_kernel(self, kernel_shape, rng):
        self.params["kernel"] = self._kernel_init.draw(kernel_shape, rng)
        if self.use_bias:
            self.params["bias"] = self._bias_init.draw((kernel_shape[-1],), rng)

    def _kernel_config(self):
        return {"activation": self.activation, "use_bias": self.use_bias,
                "kernel_initializer": self.kernel_initializer, "bias_initializer": self.bias_initializer,
                "kernel_regularizer": _reg_config(self.regularizers["kernel"]),
                "bias_regularizer": _reg_config(self.regularizers["bias"])}


class Dense(KernelMixin, Layer):
    weight_order = ("kernel", "bias")

    def __init__(self, units, activation=None, use_bias=True, kernel_initializer="glorot_uniform",
                 bias_initializer="zeros", kernel_regularizer=None, bias_regularizer=None, **kwargs):
        super().__init__(**kwargs)
        if int(units) < 1:
            raise NbnetError(f"Dense '{self.name}': units must be a positive integer, received {units!r}.")
        self.units = int(units)
        self._init_kernel(activation, use_bias, kernel_initializer, bias_initializer, kernel_regularizer,
                          bias_regularizer)

    def validate_input_shape(self, input_shape):
        if len(input_shape) < 1:
            raise self._shape_error("an input with a features axis (batch, ..., features)", input_shape)

    def create_weights(self, input_shape, rng):
        self._create_kernel((input_shape[-1], self.units), rng)

    def compute_output_shape(self, input_shape):
        # As Keras: on (batch, ..., features) the kernel applies to the last axis of each position.
        return tuple(input_shape[:-1]) + (self.units,)

    def can_fold_norm(self):
        """Whether a BatchNormalization right after this layer can be folded into it for
        inference (see NormFoldingMixin.forward_folded): no activation of its own."""
        return self._code == LINEAR

    def forward(self, x, training=False):
        kernel = self.params["kernel"]
        self._x_shape = x.shape
        if x.ndim > 2:
            x = x.reshape(-1, x.shape[-1])
        z = self._buffer("logits" if self.keep_logits else "y", (x.shape[0], self.units), x.dtype)
        bias = self._param_or_nothing(self.params, "bias", x.dtype)
        if self.keep_logits or self.ops.dense_forward is None:
            self.ops.matmul(x, kernel, out=z)
            y = self._buffer("y", z.shape, x.dtype) if self.keep_logits else z
            self._activate(z, bias, y)
        else:
            y = self.ops.dense_forward(x, kernel, bias, self._code, self._slope, z)
        self._x, self._y = x, y
        return y if len(self._x_shape) == 2 else y.reshape(self._x_shape[:-1] + (self.units,))

    def backward(self, dy, from_logits=False):
        x = self._x
        dy = dy.reshape(-1, self.units)
        dx = self._buffer("dx", x.shape, x.dtype) if self.needs_input_grad else None
        ops = self.ops
        ops.dense_backward(x, self.params["kernel"], self._y, dy, self._backward_code(from_logits), self._slope,
                           self.grads["kernel"], self._param_or_nothing(self.grads, "bias", x.dtype),
                           self._buffer("dkernel", (ops.workers(),) + self.params["kernel"].shape, x.dtype), dx)
        return dx if dx is None or len(self._x_shape) == 2 else dx.reshape(self._x_shape)

    def get_config(self):
        return {**super().get_config(), "units": self.units, **self._kernel_config()}


def _reg_config(reg):
    return reg.get_config() if reg is not None else None


class Flatten(Layer):
    """(batch, h, w, c) -> (batch, h*w*c) in H, W, C order, as Keras flattens channels-last."""

    def compute_output_shape(self, input_shape):
        return (int(np.prod(input_shape)),)

    def forward(self, x, training=False):
        self._shape = x.shape
        return x.reshape(x.shape[0], x.size // max(x.shape[0], 1))

    def backward(self, dy):
        return dy.reshape(self._shape) if self.needs_input_grad else None


class Dropout(Layer):
    """Inverted dropout: in training each unit is kept with probability 1 - rate and scaled
    by 1/(1 - rate); at inference it is the identity. The mask comes from ``rng``, which
    the model seeds, so a seeded run drops the same units every time."""

    draws_from_model = True  # unseeded, it takes the model's generator (see Model._finish_build)

    def __init__(self, rate, seed=None, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= float(rate) < 1.0:
            raise NbnetError(f"Dropout '{self.name}': rate must be in [0, 1), received {rate!r}.")
        self.rate = float(rate)
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        # A unit is kept where its 32 random bits reach this (P = 1 - rate, to 2**-32).
        self._threshold = np.uint32(min(round(self.rate * 2.0 ** 32), 2 ** 32 - 1))

    def forward(self, x, training=False):
        if not training or self.rate == 0.0:
            self._key = None
            return x
        # One 64-bit key a step from the seeded generator; the kernels hash it with each
        # unit's index (see kernels/dropout.py), backward again.
        self._key = np.uint64(self.rng.bit_generator.random_raw())
        self._scale = x.dtype.type(1.0 / (1.0 - self.rate))
        y = self._buffer("y", x.shape, x.dtype)
        self.ops.apply_mask(x.reshape(x.size), self._key, self._threshold, self._scale, y.reshape(x.size))
        return y

    def backward(self, dy):
        if not self.needs_input_grad:
            return None
        if self._key is None:
            return dy
        # Into a buffer of its own, not in place: with the output apart from the input the
        # kernel vectorises (0.05 ms at 128x1600 against 0.10 ms in place).
        dx = self._buffer("dx", dy.shape, dy.dtype)
        self.ops.apply_mask(dy.reshape(dy.size), self._key, self._threshold, self._scale, dx.reshape(dx.size))
        return dx

    def get_config(self):
        return {**super().get_config(), "rate": self.rate, "seed": self.seed}


class Activation(ActivationMixin, Layer):
    """An activation applied over the last axis (softmax) or elementwise (the others)."""

    def __init__(self, activation, **kwargs):
        super().__init__(**kwargs)
        self._init_activation(activation)

    def forward(self, x, training=False):
        channels = tuple(x.shape)[-1]  # tuple(): the CUDA simulator's shapes reject negative indices
        y = self._buffer("y", x.shape, x.dtype)
        z2d = self._buffer("logits", x.shape, x.dtype).reshape(-1, channels) if self.keep_logits else x.reshape(-1, channels)
        if self.keep_logits:
            self.ops.copy(x.reshape(-1, channels), z2d)
        self._activate(z2d, self.ops.nothing(x.dtype), y.reshape(-1, channels))
        self._y = y
        return y

    def backward(self, dy, from_logits=False):
        if not self.needs_input_grad:
            return None
        channels = tuple(dy.shape)[-1]
        dy2d = dy.reshape(-1, channels)
        self.ops.activation_backward(self._y.reshape(-1, channels), dy2d, self._backward_code(from_logits),
                                     self._slope, dy2d, self.ops.nothing(dy.dtype))
        return dy

    def get_config(self):
        return {**super().get_config(), "activation": self.activation}


class _NamedActivation(Activation):
    """An activation layer whose class names its function (ReLU, Softmax, LeakyReLU)."""

    function = None

    def __init__(self, **kwargs):
        super().__init__(self.function, **kwargs)

    def get_config(self):
        config = super().get_config()
        del config["activation"]
        return config


class ReLU(_NamedActivation):
    function = "relu"


class Softmax(_NamedActivation):
    function = "softmax"


class LeakyReLU(_NamedActivation):
    """Keras 3's LeakyReLU layer: negative_slope defaults to 0.3 (the function's to 0.2)."""

    function = "leaky_relu"

    def __init__(self, negative_slope=0.3, **kwargs):
        super().__init__(**kwargs)
        # The derivative is read off the output's sign, which a negative slope would flip
        # (Keras rejects negative slopes too).
        if not float(negative_slope) >= 0.0:
            raise NbnetError(f"LeakyReLU '{self.name}': negative_slope must be >= 0, received {negative_slope!r}.")
        self._slope = self.negative_slope = float(negative_slope)

    def get_config(self):
        return {**super().get_config(), "negative_slope": self.negative_slope}


class ELU(_NamedActivation):
    """Keras 3's ELU layer: x above 0, else alpha * (exp(x) - 1)."""

    function = "elu"

    def __init__(self, alpha=1.0, **kwargs):
        super().__init__(**kwargs)
        # The derivative below 0 is read off the output (out + alpha), which must stay
        # below 0 there: a negative alpha would flip its sign.
        if not float(alpha) >= 0.0:
            raise NbnetError(f"ELU '{self.name}': alpha must be >= 0, received {alpha!r}.")
        self._slope = self.alpha = float(alpha)

    def get_config(self):
        return {**super().get_config(), "alpha": self.alpha}
