"""Optimizers with Keras 3's names, defaults and formulas, updating all of a model's
parameters (one flat float32 vector) in a single kernel launch per step.

Adam follows Keras: epsilon (1e-7) is added to sqrt(v), and the bias correction is folded
into the step size, lr * sqrt(1 - beta_2^t) / (1 - beta_1^t). PyTorch instead adds its
epsilon (1e-8) to sqrt(v_hat); the two differ only when v is tiny.
"""

import numpy as np

from . import schedules
from .devices import cpu
from .errors import NbnetError


class Optimizer:
    slot_names = ()
    # Constructor arguments beyond learning_rate, saved by get_config.
    _hyperparameters = ()

    def __init__(self, learning_rate=0.001):
        if isinstance(learning_rate, dict):
            learning_rate = schedules.deserialize(learning_rate)
        if not isinstance(learning_rate, schedules.LearningRateSchedule) and float(learning_rate) <= 0:
            raise NbnetError(f"{type(self).__name__}: learning_rate must be positive, received {learning_rate!r}.")
        self.learning_rate = learning_rate
        self.iterations = 0
        self.slots = {}

    def current_learning_rate(self):
        if isinstance(self.learning_rate, schedules.LearningRateSchedule):
            return float(self.learning_rate(self.iterations))
        return float(self.learning_rate)

    def build(self, size, ops=cpu):
        """Create zeroed slots for ``size`` parameters (kept if already that size)."""
        for name in self.slot_names:
            if name not in self.slots or tuple(self.slots[name].shape) != (size,):
                self.slots[name] = ops.zeros(size, np.float32)

    def apply(self, params, grads, ops=cpu, halt=None):
        """One update step of the flat ``params`` with the flat ``grads``, on the device
        ``ops`` (where the slots must be too). The kernels skip the update while
        ``halt[0]`` is set (see nbnet.devices)."""
        self.build(params.shape[0], ops)
        self._update(params, grads, self.current_learning_rate(), ops, halt)
        self.iterations += 1

    def _update(self, params, grads, lr, ops, halt):
        raise NotImplementedError

    def get_config(self):
        lr = self.learning_rate
        config = {"name": type(self).__name__,
                  "learning_rate": lr.get_config() if isinstance(lr, schedules.LearningRateSchedule) else float(lr)}
        config.update({key: getattr(self, key) for key in self._hyperparameters})
        return config


class SGD(Optimizer):
    slot_names = ("velocity",)
    _hyperparameters = ("momentum", "nesterov")

    def __init__(self, learning_rate=0.01, momentum=0.0, nesterov=False):
        super().__init__(learning_rate)
        if not 0.0 <= momentum < 1.0:
            raise NbnetError(f"SGD: momentum must be in [0, 1), received {momentum!r}.")
        self.momentum, self.nesterov = float(momentum), bool(nesterov)

    def _update(self, params, grads, lr, ops, halt):
        ops.sgd_update(params, grads, self.slots["velocity"], lr, self.momentum, self.nesterov, halt=halt)


class Adam(Optimizer):
    slot_names = ("m", "v")
    _hyperparameters = ("beta_1", "beta_2", "epsilon")

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7):
        super().__init__(learning_rate)
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

    def __init__(self, learning_rate=0.001, weight_decay=0.004, beta_1=0.9, beta_2=0.999, epsilon=1e-7):
        super().__init__(learning_rate, beta_1, beta_2, epsilon)
        self.weight_decay = float(weight_decay)

    def _decay(self, lr):
        return lr * self.weight_decay


class RMSprop(Optimizer):
    slot_names = ("mean_square", "velocity")
    _hyperparameters = ("rho", "momentum", "epsilon")

    def __init__(self, learning_rate=0.001, rho=0.9, momentum=0.0, epsilon=1e-7):
        super().__init__(learning_rate)
        self.rho, self.momentum, self.epsilon = float(rho), float(momentum), float(epsilon)

    def _update(self, params, grads, lr, ops, halt):
        ops.rmsprop_update(params, grads, self.slots["mean_square"], self.slots["velocity"], lr, self.rho,
                           self.momentum, self.epsilon, halt=halt)


_BY_NAME = {"sgd": SGD, "adam": Adam, "adamw": AdamW, "rmsprop": RMSprop}


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
