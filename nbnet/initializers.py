"""Weight initializers with Keras's names, classes and formulas, drawn from one numpy
Generator (the model's, so a seeded model is repeatable; an initializer given its own
``seed`` draws from that instead).

Layers take a name (``'he_normal'``), an object (``HeNormal(seed=1)``,
``RandomNormal(stddev=0.01)``) or its config; ``get`` turns each into an Initializer,
whose ``draw(shape, rng)`` returns float32 values and ``__call__(shape)`` does as Keras's.
"""

import numpy as np

from .errors import NbnetError

# The standard deviation of a unit normal truncated at two standard deviations: Keras
# divides it out so a truncated draw keeps the variance asked for.
_TRUNCATED_STD = 0.87962566103423978


def _fans(shape):
    """Keras's fan-in/fan-out: a conv kernel (kh, kw, in, out) counts its receptive field."""
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return shape[0], shape[0]
    receptive = int(np.prod(shape[:-2])) if len(shape) > 2 else 1
    return shape[-2] * receptive, shape[-1] * receptive


def _truncated_normal(rng, shape, mean, stddev):
    """Normal values redrawn until within two standard deviations (Keras's truncated normal)."""
    values = rng.standard_normal(shape)
    outside = np.abs(values) > 2.0
    while outside.any():
        values[outside] = rng.standard_normal(int(outside.sum()))
        outside = np.abs(values) > 2.0
    return mean + values * stddev


class Initializer:
    def __init__(self, seed=None):
        self.seed = seed

    def draw(self, shape, rng):
        """float32 values of ``shape`` from ``rng`` (or from the initializer's own seed)."""
        if self.seed is not None:
            rng = np.random.default_rng(self.seed)
        return np.asarray(self._values(tuple(int(d) for d in shape), rng), np.float32)

    def __call__(self, shape, dtype=None):
        return self.draw(shape, np.random.default_rng(self.seed))

    def _values(self, shape, rng):
        raise NotImplementedError

    def get_config(self):
        return {"seed": self.seed} if self.seed is not None else {}


class Zeros(Initializer):
    def _values(self, shape, rng):
        return np.zeros(shape)


class Ones(Initializer):
    def _values(self, shape, rng):
        return np.ones(shape)


class Constant(Initializer):
    def __init__(self, value=0.0):
        super().__init__()
        self.value = float(value)

    def _values(self, shape, rng):
        return np.full(shape, self.value)

    def get_config(self):
        return {"value": self.value}


class RandomNormal(Initializer):
    def __init__(self, mean=0.0, stddev=0.05, seed=None):
        super().__init__(seed)
        self.mean, self.stddev = float(mean), float(stddev)

    def _values(self, shape, rng):
        return self.mean + self.stddev * rng.standard_normal(shape)

    def get_config(self):
        return {"mean": self.mean, "stddev": self.stddev, **super().get_config()}


class TruncatedNormal(RandomNormal):
    def _values(self, shape, rng):
        return _truncated_normal(rng, shape, self.mean, self.stddev)


class RandomUniform(Initializer):
    def __init__(self, minval=-0.05, maxval=0.05, seed=None):
        super().__init__(seed)
        self.minval, self.maxval = float(minval), float(maxval)

    def _values(self, shape, rng):
        return rng.uniform(self.minval, self.maxval, shape)

    def get_config(self):
        return {"minval": self.minval, "maxval": self.maxval, **super().get_config()}


class VarianceScaling(Initializer):
    """Keras's VarianceScaling: variance ``scale / n`` with n the fan-in, fan-out or their
    mean, drawn from a truncated normal, a normal or a uniform distribution."""

    def __init__(self, scale=1.0, mode="fan_in", distribution="truncated_normal", seed=None):
        super().__init__(seed)
        if mode not in ("fan_in", "fan_out", "fan_avg"):
            raise NbnetError(f"VarianceScaling: mode must be 'fan_in', 'fan_out' or 'fan_avg', received {mode!r}.")
        if distribution not in ("truncated_normal", "untruncated_normal", "normal", "uniform"):
            raise NbnetError("VarianceScaling: distribution must be 'truncated_normal', 'untruncated_normal' or "
                             f"'uniform', received {distribution!r}.")
        if not float(scale) > 0:
            raise NbnetError(f"VarianceScaling: scale must be positive, received {scale!r}.")
        self.scale, self.mode, self.distribution = float(scale), mode, distribution

    def _values(self, shape, rng):
        fan_in, fan_out = _fans(shape)
        fan = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2.0}[self.mode]
        variance = self.scale / max(1.0, fan)
        if self.distribution == "uniform":
            limit = np.sqrt(3.0 * variance)
            return rng.uniform(-limit, limit, shape)
        if self.distribution in ("untruncated_normal", "normal"):
            return np.sqrt(variance) * rng.standard_normal(shape)
        return _truncated_normal(rng, shape, 0.0, np.sqrt(variance) / _TRUNCATED_STD)

    def get_config(self):
        return {"scale": self.scale, "mode": self.mode, "distribution": self.distribution, **super().get_config()}


def _scaling(name, scale, mode, distribution):
    def __init__(self, seed=None):
        VarianceScaling.__init__(self, scale, mode, distribution, seed)

    def get_config(self):
        return Initializer.get_config(self)

    return type(name, (VarianceScaling,), {"__init__": __init__, "get_config": get_config})


GlorotUniform = _scaling("GlorotUniform", 1.0, "fan_avg", "uniform")
GlorotNormal = _scaling("GlorotNormal", 1.0, "fan_avg", "truncated_normal")
HeUniform = _scaling("HeUniform", 2.0, "fan_in", "uniform")
HeNormal = _scaling("HeNormal", 2.0, "fan_in", "truncated_normal")
LecunUniform = _scaling("LecunUniform", 1.0, "fan_in", "uniform")
LecunNormal = _scaling("LecunNormal", 1.0, "fan_in", "truncated_normal")

_CLASSES = {cls.__name__: cls for cls in (Zeros, Ones, Constant, RandomNormal, TruncatedNormal, RandomUniform,
                                          VarianceScaling, GlorotUniform, GlorotNormal, HeUniform, HeNormal,
                                          LecunUniform, LecunNormal)}
# Keras's snake-case names for the same classes.
_NAMES = {"zeros": Zeros, "ones": Ones, "constant": Constant, "random_normal": RandomNormal,
          "truncated_normal": TruncatedNormal, "random_uniform": RandomUniform, "variance_scaling": VarianceScaling,
          "glorot_uniform": GlorotUniform, "glorot_normal": GlorotNormal, "he_uniform": HeUniform,
          "he_normal": HeNormal, "lecun_uniform": LecunUniform, "lecun_normal": LecunNormal}


def serialize(initializer):
    """What a layer's config holds: the name it was given, or a class and its config."""
    if isinstance(initializer, Initializer):
        return {"class_name": type(initializer).__name__, "config": initializer.get_config()}
    return initializer


def get(identifier, owner="layer"):
    """An Initializer from a Keras name, a class name, an instance or ``serialize``'s dict."""
    if isinstance(identifier, Initializer):
        return identifier
    if isinstance(identifier, dict) and identifier.get("class_name") in _CLASSES:
        return _CLASSES[identifier["class_name"]](**identifier.get("config", {}))
    if isinstance(identifier, type) and issubclass(identifier, Initializer):
        return identifier()
    if isinstance(identifier, str):
        cls = _NAMES.get(identifier) or _CLASSES.get(identifier)
        if cls is not None:
            return cls()
    raise NbnetError(f"{owner}: unknown initializer {identifier!r}; nbnet knows {', '.join(sorted(_NAMES))}, their "
                     "classes (nbnet.initializers.HeNormal(seed=...)), or such an object.")
