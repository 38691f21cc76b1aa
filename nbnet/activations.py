"""Activation names (as Keras spells them) and the kernel codes they run as."""

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
}
SUPPORTED = tuple(_BY_NAME)


def resolve(activation, owner="layer"):
    """Return (name, code, negative_slope) for an activation name or None (linear)."""
    name = "linear" if activation is None else activation
    if not isinstance(name, str) or name.lower() not in _BY_NAME:
        raise NbnetError(
            f"{owner}: unknown activation {activation!r}; nbnet supports {', '.join(SUPPORTED)} (or None)."
        )
    name = name.lower()
    code, slope = _BY_NAME[name]
    return name, code, slope
