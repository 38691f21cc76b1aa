"""BatchNormalization over the last (channel) axis, as Keras's default axis=-1."""

import numpy as np

from ..kernels.normalization import (batchnorm_backward, batchnorm_infer, batchnorm_infer_backward,
                                     batchnorm_train_forward)
from .base import Layer


class BatchNormalization(Layer):
    """Training normalises with the batch's statistics and moves the moving averages
    (moving = momentum*moving + (1-momentum)*batch); inference uses the moving averages."""

    weight_order = ("gamma", "beta", "moving_mean", "moving_variance")

    def __init__(self, momentum=0.99, epsilon=1e-3, **kwargs):
        super().__init__(**kwargs)
        self.momentum, self.epsilon = float(momentum), float(epsilon)

    def create_weights(self, input_shape, rng):
        channels = input_shape[-1]
        self.params["gamma"] = np.ones(channels, np.float32)
        self.params["beta"] = np.zeros(channels, np.float32)
        self.state["moving_mean"] = np.zeros(channels, np.float32)
        self.state["moving_variance"] = np.ones(channels, np.float32)

    def forward(self, x, training=False):
        channels = x.shape[-1]
        x2d = x.reshape(-1, channels)
        y = self._buffer("y", x.shape, x.dtype)
        y2d = y.reshape(-1, channels)
        self._training = training
        if not training:
            self._x2d = x2d  # the inference backward needs the input itself
            batchnorm_infer(x2d, self.params["gamma"], self.params["beta"], self.state["moving_mean"],
                            self.state["moving_variance"], self.epsilon, y2d)
            return y
        x_hat = self._buffer("x_hat", x2d.shape, x.dtype)
        mean = np.empty(channels, x.dtype)
        variance = np.empty(channels, x.dtype)
        self._inv_std = batchnorm_train_forward(x2d, self.params["gamma"], self.params["beta"], self.epsilon, x_hat,
                                                y2d, mean, variance)
        self._x_hat = x_hat
        for key, batch_value in (("moving_mean", mean), ("moving_variance", variance)):
            moving = self.state[key]
            moving *= self.momentum
            moving += (1.0 - self.momentum) * batch_value
        return y

    def backward(self, dy):
        channels = dy.shape[-1]
        dy2d = dy.reshape(-1, channels)
        dx = self._buffer("dx", dy.shape, dy.dtype)
        if not self._training:
            batchnorm_infer_backward(dy2d, self._x2d, self.params["gamma"], self.state["moving_mean"],
                                     self.state["moving_variance"], self.epsilon, self.grads["gamma"],
                                     self.grads["beta"], dx.reshape(-1, channels))
            return dx if self.needs_input_grad else None
        batchnorm_backward(dy2d, self._x_hat, self.params["gamma"], self._inv_std, self.grads["gamma"],
                           self.grads["beta"], dx.reshape(-1, channels))
        return dx if self.needs_input_grad else None

    def get_config(self):
        return {**super().get_config(), "momentum": self.momentum, "epsilon": self.epsilon}
