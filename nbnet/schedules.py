"""Learning-rate schedules: callables of the optimizer's step count, with Keras's names."""

import math

from .errors import NbnetError


class LearningRateSchedule:
    def __call__(self, step):
        raise NotImplementedError

    def get_config(self):
        return {"name": type(self).__name__, **vars(self)}


class ExponentialDecay(LearningRateSchedule):
    """lr * decay_rate ** (step / decay_steps); ``staircase=True`` makes it a step decay."""

    def __init__(self, initial_learning_rate, decay_steps, decay_rate, staircase=False):
        if decay_steps <= 0:
            raise NbnetError(f"ExponentialDecay: decay_steps must be positive, received {decay_steps!r}.")
        self.initial_learning_rate, self.decay_steps = float(initial_learning_rate), int(decay_steps)
        self.decay_rate, self.staircase = float(decay_rate), bool(staircase)

    def __call__(self, step):
        power = step / self.decay_steps
        return self.initial_learning_rate * self.decay_rate ** (math.floor(power) if self.staircase else power)


class StepDecay(ExponentialDecay):
    """Multiply the rate by ``factor`` every ``step_size`` steps."""

    def __init__(self, initial_learning_rate, step_size, factor=0.1):
        super().__init__(initial_learning_rate, step_size, factor, staircase=True)

    def get_config(self):
        return {"name": "StepDecay", "initial_learning_rate": self.initial_learning_rate,
                "step_size": self.decay_steps, "factor": self.decay_rate}


class CosineDecay(LearningRateSchedule):
    """Keras's cosine decay: from the initial rate down to alpha * initial over decay_steps."""

    def __init__(self, initial_learning_rate, decay_steps, alpha=0.0):
        if decay_steps <= 0:
            raise NbnetError(f"CosineDecay: decay_steps must be positive, received {decay_steps!r}.")
        self.initial_learning_rate, self.decay_steps, self.alpha = float(initial_learning_rate), int(decay_steps), float(alpha)

    def __call__(self, step):
        progress = min(step, self.decay_steps) / self.decay_steps
        cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.initial_learning_rate * ((1.0 - self.alpha) * cosine + self.alpha)


class PiecewiseConstantDecay(LearningRateSchedule):
    def __init__(self, boundaries, values):
        if len(values) != len(boundaries) + 1:
            raise NbnetError("PiecewiseConstantDecay: values must have one more entry than boundaries.")
        self.boundaries, self.values = [int(b) for b in boundaries], [float(v) for v in values]

    def __call__(self, step):
        for boundary, value in zip(self.boundaries, self.values):
            if step <= boundary:
                return value
        return self.values[-1]


_BY_NAME = {cls.__name__: cls for cls in (ExponentialDecay, StepDecay, CosineDecay, PiecewiseConstantDecay)}


def deserialize(config):
    config = dict(config)
    return _BY_NAME[config.pop("name")](**config)
