"""Learning-rate schedules: callables of the optimizer's step count, with Keras's names.
Each takes Keras's ``name=`` too, and leaves it: nbnet's configs name the class."""

import math

from .errors import NbnetError


class LearningRateSchedule:
    def __call__(self, step):
        raise NotImplementedError

    def get_config(self):
        return {"name": type(self).__name__, **vars(self)}


class ExponentialDecay(LearningRateSchedule):
    """lr * decay_rate ** (step / decay_steps); ``staircase=True`` makes it a step decay."""

    def __init__(self, initial_learning_rate, decay_steps, decay_rate, staircase=False, name="ExponentialDecay"):
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


class InverseTimeDecay(LearningRateSchedule):
    """lr / (1 + decay_rate * step / decay_steps) (the ratio floored with ``staircase``)."""

    def __init__(self, initial_learning_rate, decay_steps, decay_rate, staircase=False, name="InverseTimeDecay"):
        if decay_steps <= 0:
            raise NbnetError(f"InverseTimeDecay: decay_steps must be positive, received {decay_steps!r}.")
        self.initial_learning_rate, self.decay_steps = float(initial_learning_rate), int(decay_steps)
        self.decay_rate, self.staircase = float(decay_rate), bool(staircase)

    def __call__(self, step):
        ratio = step / self.decay_steps
        return self.initial_learning_rate / (1.0 + self.decay_rate * (math.floor(ratio) if self.staircase else ratio))


class PolynomialDecay(LearningRateSchedule):
    """From the initial rate to ``end_learning_rate`` along (1 - step / decay_steps) ** power,
    then constant; with ``cycle`` the decay starts again over the next multiple of
    decay_steps, from a rate that each cycle is lower."""

    def __init__(self, initial_learning_rate, decay_steps, end_learning_rate=0.0001, power=1.0, cycle=False,
                 name="PolynomialDecay"):
        if decay_steps <= 0:
            raise NbnetError(f"PolynomialDecay: decay_steps must be positive, received {decay_steps!r}.")
        self.initial_learning_rate, self.decay_steps = float(initial_learning_rate), int(decay_steps)
        self.end_learning_rate, self.power, self.cycle = float(end_learning_rate), float(power), bool(cycle)

    def __call__(self, step):
        decay_steps = self.decay_steps
        if self.cycle:  # Keras: the first multiple of decay_steps at or past the step (1 at step 0)
            decay_steps *= 1 if step == 0 else math.ceil(step / self.decay_steps)
        else:
            step = min(step, decay_steps)
        rest = (1.0 - step / decay_steps) ** self.power
        return (self.initial_learning_rate - self.end_learning_rate) * rest + self.end_learning_rate


class CosineDecay(LearningRateSchedule):
    """Keras's cosine decay: from the initial rate down to alpha * initial over decay_steps;
    with ``warmup_target``, first a linear rise from the initial rate to it over
    ``warmup_steps``, then the decay from it."""

    def __init__(self, initial_learning_rate, decay_steps, alpha=0.0, name="CosineDecay", warmup_target=None,
                 warmup_steps=0):
        if decay_steps <= 0:
            raise NbnetError(f"CosineDecay: decay_steps must be positive, received {decay_steps!r}.")
        self.initial_learning_rate, self.decay_steps, self.alpha = float(initial_learning_rate), int(decay_steps), float(alpha)
        self.warmup_steps = int(warmup_steps)
        self.warmup_target = None if warmup_target is None else float(warmup_target)

    def __call__(self, step):
        if self.warmup_target is None:
            return self._decay(min(step, self.decay_steps), self.initial_learning_rate)
        step = min(step, self.decay_steps + self.warmup_steps)
        if step < self.warmup_steps:
            rise = self.warmup_target - self.initial_learning_rate
            return rise * step / self.warmup_steps + self.initial_learning_rate
        return self._decay(step - self.warmup_steps, self.warmup_target)

    def _decay(self, step, start):
        cosine = 0.5 * (1.0 + math.cos(math.pi * step / self.decay_steps))
        return start * ((1.0 - self.alpha) * cosine + self.alpha)


class CosineDecayRestarts(LearningRateSchedule):
    """SGDR (Loshchilov & Hutter): cosine decays from the initial rate to alpha * it, the
    first over ``first_decay_steps``, each next one ``t_mul`` times longer and starting
    ``m_mul`` times lower."""

    def __init__(self, initial_learning_rate, first_decay_steps, t_mul=2.0, m_mul=1.0, alpha=0.0,
                 name="SGDRDecay"):
        if first_decay_steps <= 0:
            raise NbnetError(f"CosineDecayRestarts: first_decay_steps must be positive, received "
                             f"{first_decay_steps!r}.")
        self.initial_learning_rate, self.first_decay_steps = float(initial_learning_rate), int(first_decay_steps)
        self.t_mul, self.m_mul, self.alpha = float(t_mul), float(m_mul), float(alpha)

    def __call__(self, step):
        fraction = step / self.first_decay_steps
        if self.t_mul == 1.0:
            restart = math.floor(fraction)
            fraction -= restart
        else:  # the periods grow geometrically: which one holds the step, and how far into it
            restart = math.floor(math.log(1.0 - fraction * (1.0 - self.t_mul)) / math.log(self.t_mul))
            done = (1.0 - self.t_mul ** restart) / (1.0 - self.t_mul)
            fraction = (fraction - done) / self.t_mul ** restart
        cosine = 0.5 * self.m_mul ** restart * (1.0 + math.cos(math.pi * fraction))
        return self.initial_learning_rate * ((1.0 - self.alpha) * cosine + self.alpha)


class PiecewiseConstantDecay(LearningRateSchedule):
    def __init__(self, boundaries, values, name="PiecewiseConstant"):
        if len(values) != len(boundaries) + 1:
            raise NbnetError("PiecewiseConstantDecay: values must have one more entry than boundaries.")
        self.boundaries, self.values = [int(b) for b in boundaries], [float(v) for v in values]

    def __call__(self, step):
        for boundary, value in zip(self.boundaries, self.values):
            if step <= boundary:
                return value
        return self.values[-1]


_BY_NAME = {cls.__name__: cls for cls in (ExponentialDecay, StepDecay, InverseTimeDecay, PolynomialDecay, CosineDecay,
                                          CosineDecayRestarts, PiecewiseConstantDecay)}


def deserialize(config):
    config = dict(config)
    return _BY_NAME[config.pop("name")](**config)
