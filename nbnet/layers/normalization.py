"""BatchNormalization over the last (channel) axis, as Keras's default axis=-1."""

import numpy as np

from ..kernels.activations import LINEAR
from .base import Layer


class BatchNormalization(Layer):
    """Training normalises with the batch's statistics and moves the moving averages
    (moving = momentum*moving + (1-momentum)*batch); inference, and a frozen layer
    (trainable=False), uses the moving averages."""

    weight_order = ("gamma", "beta", "moving_mean", "moving_variance")

    def __init__(self, momentum=0.99, epsilon=1e-3, **kwargs):
        super().__init__(**kwargs)
        self.momentum, self.epsilon = float(momentum), float(epsilon)
        # The Activation layer after this one whose work its kernels do, and the
        # MaxPooling2D after that (set by the model's plan, see executor.py), or None.
        self.activation_after = None
        self.pool_after = None
        self._pooled = False

    def _activation_code(self):
        after = self.activation_after
        return (LINEAR, 0.0) if after is None else (after._code, after._slope)

    def create_weights(self, input_shape, rng):
        channels = input_shape[-1]
        self.params["gamma"] = np.ones(channels, np.float32)
        self.params["beta"] = np.zeros(channels, np.float32)
        self.state["moving_mean"] = np.zeros(channels, np.float32)
        self.state["moving_variance"] = np.ones(channels, np.float32)

    def forward(self, x, training=False):
        pool = self.pool_after
        self._pooled = pool is not None and self.ops.batchnorm_pool_train_forward is not None
        if self._pooled:
            return self._pooled_forward(x, training, pool)
        y = self._forward(x, training)
        return y if pool is None else pool.forward(y)  # a device without the fused kernels

    def _pooled_forward(self, x, training, pool):
        """The norm, its activation and ``pool`` in one pass (kernels/normalization_pool.py)."""
        channels = x.shape[-1]
        y, argmax = pool.absorbed_outputs(x.shape, x.dtype)
        training = training and self.trainable
        self._training, self._x, self._argmax = training, x, argmax
        code, _ = self._activation_code()
        if not training:
            self.ops.batchnorm_pool_infer(x, self.params["gamma"], self.params["beta"], self.state["moving_mean"],
                                          self.state["moving_variance"], self.epsilon, code, y, argmax)
            return y
        mean = self._buffer("mean", (channels,), x.dtype)
        variance = self._buffer("variance", (channels,), x.dtype)
        self._inv_std = self.ops.batchnorm_pool_train_forward(x, self.params["gamma"], self.params["beta"],
                                                              self.epsilon, code, y, argmax, mean, variance)
        self._mean = mean
        self.ops.update_moving_averages(self.state["moving_mean"], self.state["moving_variance"], mean, variance,
                                        self.momentum)
        return y

    def _forward(self, x, training):
        channels = tuple(x.shape)[-1]  # tuple(): the CUDA simulator's shapes reject negative indices
        x2d = x.reshape(-1, channels)
        y = self._buffer("y", x.shape, x.dtype)
        y2d = y.reshape(-1, channels)
        # As Keras 3: a frozen layer (trainable=False) normalises with its moving
        # statistics, and leaves them alone, in training too (what fine-tuning expects).
        training = training and self.trainable
        self._training, self._y = training, y
        code, alpha = self._activation_code()
        if not training:
            self._x2d = x2d  # the inference backward needs the input itself
            self.ops.batchnorm_infer(x2d, self.params["gamma"], self.params["beta"], self.state["moving_mean"],
                                     self.state["moving_variance"], self.epsilon, code, alpha, y2d)
            return y
        mean = self._buffer("mean", (channels,), x.dtype)
        variance = self._buffer("variance", (channels,), x.dtype)
        self._inv_std = self.ops.batchnorm_train_forward(x2d, self.params["gamma"], self.params["beta"], self.epsilon,
                                                         code, alpha, y2d, mean, variance,
                                                         self._buffer("inv_std", (channels,), np.float64))
        # Backward takes x_hat again from the input and the batch statistics.
        self._x2d, self._mean = x2d, mean
        self.ops.update_moving_averages(self.state["moving_mean"], self.state["moving_variance"], mean, variance,
                                        self.momentum)
        return y

    def backward(self, dy):
        if self._pooled:
            return self._pooled_backward(dy)
        if self.pool_after is not None:
            dy = self.pool_after.backward(dy)
        channels = tuple(dy.shape)[-1]
        dy2d = dy.reshape(-1, channels)
        dx = self._buffer("dx", dy.shape, dy.dtype)
        y2d = self._y.reshape(-1, channels)
        code, alpha = self._activation_code()
        if not self._training:
            self.ops.batchnorm_infer_backward(dy2d, y2d, code, alpha, self._x2d, self.params["gamma"],
                                              self.params["beta"], self.state["moving_mean"],
                                              self.state["moving_variance"], self.epsilon, self.grads["gamma"],
                                              self.grads["beta"], dx.reshape(-1, channels))
            return dx if self.needs_input_grad else None
        self.ops.batchnorm_backward(dy2d, y2d, code, alpha, self._x2d, self._mean, self.params["gamma"],
                                    self.params["beta"], self._inv_std, self.grads["gamma"], self.grads["beta"],
                                    dx.reshape(-1, channels))
        return dx if self.needs_input_grad else None

    def _pooled_backward(self, dy):
        x = self._x
        dx = self._buffer("dx", x.shape, x.dtype)
        code, _ = self._activation_code()
        if not self._training:
            self.ops.batchnorm_pool_infer_backward(dy, self._argmax, code, x, self.params["gamma"],
                                                   self.params["beta"], self.state["moving_mean"],
                                                   self.state["moving_variance"], self.epsilon, self.grads["gamma"],
                                                   self.grads["beta"], dx)
        else:
            self.ops.batchnorm_pool_backward(dy, self._argmax, code, x, self._mean,
                                             self.params["gamma"], self.params["beta"], self._inv_std,
                                             self.grads["gamma"], self.grads["beta"], dx)
        return dx if self.needs_input_grad else None

    def get_config(self):
        return {**super().get_config(), "momentum": self.momentum, "epsilon": self.epsilon}
