"""Activation names (as Keras spells them) and the kernel codes they run as."""

import numpy as np

from .errors import NbnetError
from .kernels import activations as kernels

# name -> (kernel code, default negative slope)
_BY_NAME = {
    "linear": (kernels.LINEAR, 0.0),
    "relu": (kernels.RELU, 0.0),
    "sigmoid": (kernels.SIGMOID, 0.0),
    "tanh": (kernels.TANH, 0.0),
    "softmax": (kernels.SOFTMAX, 0.0),
    "leaky_relu": (kernels.LEAKY_RELU, 0.2),
    "elu": (kernels.ELU, 1.0),  # (its alpha travels as the slope)
    "selu": (kernels.SELU, 0.0),
    "softplus": (kernels.SOFTPLUS, 0.0),
}
SUPPORTED = tuple(_BY_NAME)


def resolve(activation, owner="layer"):
    """Return (name, code, negative_slope) for an activation name, one of this module's
    functions (Keras's ``activation=keras.activations.relu``) or None (linear)."""
    if callable(activation) and globals().get(getattr(activation, "__name__", None)) is activation:
        activation = activation.__name__
    name = "linear" if activation is None else activation
    if not isinstance(name, str) or name.lower() not in _BY_NAME:
        raise NbnetError(
            f"{owner}: unknown activation {activation!r}; nbnet supports {', '.join(SUPPORTED)} (or None)."
        )
    name = name.lower()
    code, slope = _BY_NAME[name]
    return name, code, slope


# Keras's activation functions, for use on arrays and as ``activation=`` arguments.
def linear(x):
    return np.asarray(x)


def relu(x):
    return np.maximum(np.asarray(x), 0)


def sigmoid(x):
    x = np.asarray(x)
    return np.where(x >= 0, 1 / (1 + np.exp(-np.abs(x))), np.exp(-np.abs(x)) / (1 + np.exp(-np.abs(x))))


def tanh(x):
    return np.tanh(x)


def softmax(x, axis=-1):
    x = np.asarray(x)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def leaky_relu(x, negative_slope=0.2):
    x = np.asarray(x)
    return np.where(x > 0, x, negative_slope * x)


def elu(x, alpha=1.0):
    x = np.asarray(x)
    return np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0)))


def selu(x):
    x = np.asarray(x)
    return kernels.SELU_SCALE * np.where(x > 0, x, kernels.SELU_ALPHA * np.expm1(np.minimum(x, 0)))


def softplus(x):
    x = np.asarray(x)
    return np.maximum(x, 0) + np.log1p(np.exp(-np.abs(x)))
