"""Weight initializers with Keras's names and formulas, drawn from one numpy Generator."""

import numpy as np

from .errors import NbnetError


def _fans(shape):
    """Keras's fan-in/fan-out: a conv kernel (kh, kw, in, out) counts its receptive field."""
    if len(shape) == 1:
        return shape[0], shape[0]
    receptive = int(np.prod(shape[:-2])) if len(shape) > 2 else 1
    return shape[-2] * receptive, shape[-1] * receptive


def _truncated_normal(rng, shape, stddev):
    """Normal values redrawn until within two standard deviations (Keras's truncated normal)."""
    values = rng.standard_normal(shape)
    outside = np.abs(values) > 2.0
    while outside.any():
        values[outside] = rng.standard_normal(int(outside.sum()))
        outside = np.abs(values) > 2.0
    return values * stddev


def glorot_uniform(shape, rng):
    fan_in, fan_out = _fans(shape)
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, shape)


def glorot_normal(shape, rng):
    fan_in, fan_out = _fans(shape)
    # 0.8796... is the stddev of a unit normal truncated at 2 sigma; Keras divides it out.
    return _truncated_normal(rng, shape, np.sqrt(2.0 / (fan_in + fan_out)) / 0.87962566103423978)


def he_normal(shape, rng):
    fan_in, _ = _fans(shape)
    return _truncated_normal(rng, shape, np.sqrt(2.0 / fan_in) / 0.87962566103423978)


def he_uniform(shape, rng):
    fan_in, _ = _fans(shape)
    limit = np.sqrt(6.0 / fan_in)
    return rng.uniform(-limit, limit, shape)


def zeros(shape, rng):
    return np.zeros(shape)


def ones(shape, rng):
    return np.ones(shape)


_BY_NAME = {f.__name__: f for f in (glorot_uniform, glorot_normal, he_normal, he_uniform, zeros, ones)}


def get(identifier, owner="layer"):
    """The initializer function for a Keras name; it returns float32 values."""
    if identifier not in _BY_NAME:
        raise NbnetError(f"{owner}: unknown initializer {identifier!r}; nbnet supports {', '.join(_BY_NAME)}.")
    draw = _BY_NAME[identifier]
    return lambda shape, rng: draw(tuple(shape), rng).astype(np.float32)
