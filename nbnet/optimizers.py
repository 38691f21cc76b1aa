"""Optimizers with Keras 3's names, defaults and formulas, updating all of a model's
parameters (one flat float32 vector) in a single kernel launch per step.

Adam follows Keras: epsilon (1e-7) is added to sqrt(v), and the bias correction is folded
into the step size, lr * sqrt(1 - beta_2^t) / (1 - beta_1^t). PyTorch instead adds its
epsilon (1e-8) to sqrt(v_hat); the two differ only when v is tiny.

Every optimizer takes Keras 3's common arguments: ``clipnorm`` (each weight array's
gradient scaled to at most that L2 norm), ``global_clipnorm`` (all of them together),
``clipvalue`` (each gradient clipped), and ``weight_decay`` (w -= lr * weight_decay * w
before the step). Keras 2's ``lr=`` is accepted with a warning.
"""

import warnings

import numpy as np

from . import schedules
from .devices import cpu
from .errors import NbnetError
from .variables import Variable


# Keras 3 arguments nbnet does not implement: refused unless left at their defaults.
_UNSUPPORTED = {"use_ema": False, "ema_momentum": 0.99, "ema_overwrite_frequency": None, "loss_scale_factor": None,
                "gradient_accumulation_steps": None, "amsgrad": False}


class Optimizer:
    slot_names = ()
    # Constructor arguments beyond learning_rate, saved by get_config.
    _hyperparameters = ()
    # Whether the update kernel applies weight_decay itself (AdamW's).
    _fused_decay = False

    def __init__(self, learning_rate=0.001, weight_decay=None, clipnorm=None, clipvalue=None, global_clipnorm=None,
                 name=None, **kwargs):
        owner = type(self).__name__
        if "lr" in kwargs:
            warnings.warn(f"{owner}: 'lr' is Keras 2's name; use learning_rate=.", DeprecationWarning, stacklevel=3)
            learning_rate = kwargs.pop("lr")
        for key in list(kwargs):
            if key in _UNSUPPORTED and kwargs[key] == _UNSUPPORTED[key]:
                kwargs.pop(key)
        if kwargs:
            raise NbnetError(f"{owner}: unsupported argument(s) {kwargs}; nbnet's {owner} takes learning_rate, "
                             f"{', '.join(self._hyperparameters) + ', ' if self._hyperparameters else ''}"
                             "weight_decay, clipnorm, clipvalue, global_clipnorm.")
        if sum(value is not None for value in (clipnorm, clipvalue, global_clipnorm)) > 1:
            raise NbnetError(f"{owner}: give at most one of clipnorm, clipvalue and global_clipnorm, as Keras.")
        for key, value in (("weight_decay", weight_decay), ("clipnorm", clipnorm), ("clipvalue", clipvalue),
                           ("global_clipnorm", global_clipnorm)):
            if value is not None and not float(value) >= 0:
                raise NbnetError(f"{owner}: {key} must be non-negative, received {value!r}.")
        self.weight_decay = None if weight_decay is None else float(weight_decay)
        self.clipnorm = None if clipnorm is None else float(clipnorm)
        self.clipvalue = None if clipvalue is None else float(clipvalue)
        self.global_clipnorm = None if global_clipnorm is None else float(global_clipnorm)
        self.name = name or owner.lower()
        self.iterations = 0
        self.slots = {}
        self.learning_rate = learning_rate

    @property
    def learning_rate(self):
        """A Variable (``.assign(x)``, ``backend.set_value``, reads as a float); with a
        schedule, as Keras, the schedule's rate at the current step (the schedule itself
        stays in ``_learning_rate`` and the config)."""
        if isinstance(self._learning_rate, schedules.LearningRateSchedule):
            return self.current_learning_rate()
        return self._learning_rate

    @learning_rate.setter
    def learning_rate(self, value):
        if isinstance(value, dict):
            value = schedules.deserialize(value)
        if isinstance(value, schedules.LearningRateSchedule):
            self._learning_rate = value
            return
        value = float(value)
        if not value > 0:
            raise NbnetError(f"{type(self).__name__}: learning_rate must be positive, received {value!r}.")
        if isinstance(getattr(self, "_learning_rate", None), Variable):
            self._learning_rate.assign(value)
        else:
            self._learning_rate = Variable(value, name="learning_rate")

    # Keras 2's name.
    lr = learning_rate

    def current_learning_rate(self):
        if isinstance(self._learning_rate, schedules.LearningRateSchedule):
            return float(self._learning_rate(self.iterations))
        return float(self._learning_rate)

    def build(self, size, ops=cpu):
        """Create zeroed slots for ``size`` parameters (kept if already that size)."""
        for name in self.slot_names:
            if name not in self.slots or tuple(self.slots[name].shape) != (size,):
                self.slots[name] = ops.zeros(size, np.float32)

    def apply(self, params, grads, ops=cpu, halt=None, segments=None):
        """One update step of the flat ``params`` with the flat ``grads``, on the device
        ``ops`` (where the slots must be too). ``segments``: the offsets of the weight
        arrays in the flat vectors (clipnorm clips each); None counts it as one array.
        The kernels skip the update while ``halt[0]`` is set (see nbnet.devices)."""
        self.build(params.shape[0], ops)
        if self.clipvalue is not None:
            ops.clip_by_value(grads, self.clipvalue, halt=halt)
        elif self.clipnorm is not None or self.global_clipnorm is not None:
            offsets = (np.array([0, params.shape[0]], np.int64) if segments is None or self.clipnorm is None
                       else np.asarray(segments, np.int64))
            ops.clip_segments_by_norm(grads, offsets, self.clipnorm if self.clipnorm is not None
                                      else self.global_clipnorm, halt=halt)
        lr = self.current_learning_rate()
        if self.weight_decay and not self._fused_decay:
            ops.decay_weights(params, lr * self.weight_decay, halt=halt)
        self._update(params, grads, lr, ops, halt)
        self.iterations += 1

    def _update(self, params, grads, lr, ops, halt):
        raise NotImplementedError

    def get_config(self):
        lr = self._learning_rate
        config = {"name": type(self).__name__,
                  "learning_rate": lr.get_config() if isinstance(lr, schedules.LearningRateSchedule) else float(lr)}
        config.update({key: getattr(self, key) for key in self._hyperparameters})
        config.update({key: getattr(self, key) for key in ("weight_decay", "clipnorm", "clipvalue", "global_clipnorm")
                       if getattr(self, key) is not None and key not in config})
        return config


class SGD(Optimizer):
    slot_names = ("velocity",)
    _hyperparameters = ("momentum", "nesterov")

    def __init__(self, learning_rate=0.01, momentum=0.0, nesterov=False, **kwargs):
        super().__init__(learning_rate, **kwargs)
        if not 0.0 <= momentum < 1.0:
            raise NbnetError(f"SGD: momentum must be in [0, 1), received {momentum!r}.")
        self.momentum, self.nesterov = float(momentum), bool(nesterov)

    def _update(self, params, grads, lr, ops, halt):
        ops.sgd_update(params, grads, self.slots["velocity"], lr, self.momentum, self.nesterov, halt=halt)


class Adam(Optimizer):
    slot_names = ("m", "v")
    _hyperparameters = ("beta_1", "beta_2", "epsilon")

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7, **kwargs):
        super().__init__(learning_rate, **kwargs)
        self.beta_1, self.beta_2, self.epsilon = float(beta_1), float(beta_2), float(epsilon)

    def _decay(self, lr):
        return 0.0

    def _update(self, params, grads, lr, ops, halt):
        t = self.iterations + 1
        step_size = lr * np.sqrt(1.0 - self.beta_2 ** t) / (1.0 - self.beta_1 ** t)
        ops.adam_update(params, grads, self.slots["m"], self.slots["v"], step_size, self.beta_1, self.beta_2,
                        self.epsilon, self._decay(lr), halt=halt)


class AdamW(Adam):
    """Adam with decoupled weight decay (Keras: params -= lr * weight_decay * params first)."""

    _hyperparameters = Adam._hyperparameters + ("weight_decay",)
    _fused_decay = True

    def __init__(self, learning_rate=0.001, weight_decay=0.004, beta_1=0.9, beta_2=0.999, epsilon=1e-7, **kwargs):
        super().__init__(learning_rate, beta_1, beta_2, epsilon, weight_decay=weight_decay, **kwargs)

    def _decay(self, lr):
        return lr * (self.weight_decay or 0.0)


class RMSprop(Optimizer):
    """Keras 3's RMSprop: ms = rho*ms + (1-rho)*g^2, step lr*g/sqrt(ms + epsilon) (epsilon
    inside the root, unlike PyTorch's sqrt(ms) + eps); ``centered`` divides by the
    estimated variance, ms - mean(g)^2, instead; ``momentum`` accumulates the steps."""

    slot_names = ("mean_square", "average_gradient", "velocity")
    _hyperparameters = ("rho", "momentum", "epsilon", "centered")

    def __init__(self, learning_rate=0.001, rho=0.9, momentum=0.0, epsilon=1e-7, centered=False, **kwargs):
        super().__init__(learning_rate, **kwargs)
        if not 0.0 <= rho < 1.0:
            raise NbnetError(f"RMSprop: rho must be in [0, 1), received {rho!r}.")
        if not 0.0 <= momentum < 1.0:
            raise NbnetError(f"RMSprop: momentum must be in [0, 1), received {momentum!r}.")
        self.rho, self.momentum, self.epsilon = float(rho), float(momentum), float(epsilon)
        self.centered = bool(centered)

    def _update(self, params, grads, lr, ops, halt):
        ops.rmsprop_update(params, grads, self.slots["mean_square"], self.slots["average_gradient"],
                           self.slots["velocity"], lr, self.rho, self.momentum, self.epsilon, self.centered, halt=halt)


class Adagrad(Optimizer):
    """Keras 3's Adagrad: acc starts at ``initial_accumulator_value``, acc += g^2,
    step lr * g / sqrt(acc + epsilon)."""

    slot_names = ("accumulator",)
    _hyperparameters = ("initial_accumulator_value", "epsilon")

    def __init__(self, learning_rate=0.001, initial_accumulator_value=0.1, epsilon=1e-7, **kwargs):
        super().__init__(learning_rate, **kwargs)
        self.initial_accumulator_value, self.epsilon = float(initial_accumulator_value), float(epsilon)

    def build(self, size, ops=cpu):
        fresh = "accumulator" not in self.slots or tuple(self.slots["accumulator"].shape) != (size,)
        if fresh:
            self.slots["accumulator"] = ops.to_device(np.full(size, self.initial_accumulator_value, np.float32))

    def _update(self, params, grads, lr, ops, halt):
        ops.adagrad_update(params, grads, self.slots["accumulator"], lr, self.epsilon, halt=halt)


class Adadelta(Optimizer):
    """Keras 3's Adadelta (default learning rate 0.001, where Keras 2 had 1.0)."""

    slot_names = ("accumulated_grad", "accumulated_delta")
    _hyperparameters = ("rho", "epsilon")

    def __init__(self, learning_rate=0.001, rho=0.95, epsilon=1e-7, **kwargs):
        super().__init__(learning_rate, **kwargs)
        self.rho, self.epsilon = float(rho), float(epsilon)

    def _update(self, params, grads, lr, ops, halt):
        ops.adadelta_update(params, grads, self.slots["accumulated_grad"], self.slots["accumulated_delta"], lr,
                            self.rho, self.epsilon, halt=halt)


class Adamax(Optimizer):
    """Keras 3's Adamax: the infinity-norm Adam, u = max(beta_2 * u, |g|)."""

    slot_names = ("m", "u")
    _hyperparameters = ("beta_1", "beta_2", "epsilon")

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7, **kwargs):
        super().__init__(learning_rate, **kwargs)
        self.beta_1, self.beta_2, self.epsilon = float(beta_1), float(beta_2), float(epsilon)

    def _update(self, params, grads, lr, ops, halt):
        step_size = lr / (1.0 - self.beta_1 ** (self.iterations + 1))
        ops.adamax_update(params, grads, self.slots["m"], self.slots["u"], step_size, self.beta_1, self.beta_2,
                          self.epsilon, halt=halt)


class Nadam(Optimizer):
    """Keras 3's Nadam: Adam with Nesterov momentum and the momentum schedule
    mu_t = beta_1 * (1 - 0.5 * 0.96^t)."""

    slot_names = ("m", "v")
    _hyperparameters = ("beta_1", "beta_2", "epsilon")

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7, **kwargs):
        super().__init__(learning_rate, **kwargs)
        self.beta_1, self.beta_2, self.epsilon = float(beta_1), float(beta_2), float(epsilon)
        self._mu_product = (0, 1.0)  # (steps, product of mu_1..mu_steps), carried along

    def _mu(self, t):
        return self.beta_1 * (1.0 - 0.5 * 0.96 ** t)

    def _update(self, params, grads, lr, ops, halt):
        t = self.iterations + 1
        steps, product = self._mu_product
        if steps > t - 1:  # the optimizer was rewound (a resumed run): recount from the start
            steps, product = 0, 1.0
        for k in range(steps + 1, t + 1):
            product *= self._mu(k)
        self._mu_product = (t, product)
        mu_t, mu_next = self._mu(t), self._mu(t + 1)
        ops.nadam_update(params, grads, self.slots["m"], self.slots["v"], lr, self.beta_1, self.beta_2,
                         mu_next / (1.0 - product * mu_next), (1.0 - mu_t) / (1.0 - product),
                         1.0 / (1.0 - self.beta_2 ** t), self.epsilon, halt=halt)


_BY_NAME = {"sgd": SGD, "adam": Adam, "adamw": AdamW, "rmsprop": RMSprop, "adagrad": Adagrad, "adadelta": Adadelta,
            "adamax": Adamax, "nadam": Nadam}


def get(identifier, learning_rate=None):
    """An Optimizer from an instance, a Keras name ('adam', 'sgd', ...) with an optional
    learning rate, or a config dict."""
    if isinstance(identifier, Optimizer):
        return identifier
    if isinstance(identifier, dict):
        config = dict(identifier)
        return _BY_NAME[config.pop("name").lower()](**config)
    if isinstance(identifier, str) and identifier.lower() in _BY_NAME:
        cls = _BY_NAME[identifier.lower()]
        return cls() if learning_rate is None else cls(learning_rate=learning_rate)
    raise NbnetError(f"Unknown optimizer {identifier!r}; nbnet supports {', '.join(_BY_NAME)} or a nbnet.optimizers.Optimizer.")
