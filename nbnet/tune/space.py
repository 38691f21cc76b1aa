"""Search spaces: which hyperparameters a search varies, and over what.

In Python::

    from nbnet.tune import SearchSpace, LogUniform, Uniform, Int, Choice

    space = SearchSpace(learning_rate=LogUniform(1e-4, 1e-2), optimizer=Choice(["adam", "rmsprop"]),
                        batch_size=Choice([64, 128]), filters=Int(16, 48, step=16),
                        dropout=Uniform(0.0, 0.5), units=64)      # a plain value stays fixed

In JSON (``nbnet tune --space space.json``), the same space::

    {"learning_rate": {"type": "loguniform", "low": 1e-4, "high": 1e-2},
     "optimizer": {"type": "choice", "values": ["adam", "rmsprop"]},
     "batch_size": [64, 128],
     "filters": {"type": "int", "low": 16, "high": 48, "step": 16},
     "dropout": {"type": "uniform", "low": 0.0, "high": 0.5},
     "units": 64}

A JSON list is a choice and a plain value is fixed. ``batch_size`` goes to ``fit``; every
other name goes to the model definition's builder as a keyword argument.

Nothing here imports Optuna: a distribution only calls the ``suggest_*`` methods of the
trial it is given.
"""

import json
import math
from pathlib import Path

from ..errors import NbnetError

# Names the search itself consumes instead of passing them to the builder.
FIT_PARAMETERS = ("batch_size",)


class Distribution:
    type = None

    def suggest(self, trial, name):
        raise NotImplementedError

    def to_dict(self):
        raise NotImplementedError

    def __eq__(self, other):
        return type(self) is type(other) and self.to_dict() == other.to_dict()

    def __repr__(self):
        fields = ", ".join(f"{k}={v!r}" for k, v in self.to_dict().items() if k != "type")
        return f"{type(self).__name__}({fields})"


def _number(value, what):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise NbnetError(f"{what} must be a finite number, received {value!r}.")
    return value


class Uniform(Distribution):
    """A float drawn uniformly from [low, high] (on a grid of ``step`` if given)."""

    type = "uniform"

    def __init__(self, low, high, step=None):
        self.low, self.high = float(_number(low, "uniform: low")), float(_number(high, "uniform: high"))
        if self.low > self.high:
            raise NbnetError(f"uniform: low ({low}) must not exceed high ({high}).")
        self.step = None if step is None else float(_number(step, "uniform: step"))
        if self.step is not None and self.step <= 0:
            raise NbnetError(f"uniform: step must be positive, received {step!r}.")

    def suggest(self, trial, name):
        return trial.suggest_float(name, self.low, self.high, step=self.step)

    def to_dict(self):
        out = {"type": self.type, "low": self.low, "high": self.high}
        if self.step is not None:
            out["step"] = self.step
        return out


class LogUniform(Distribution):
    """A positive float whose logarithm is uniform on [log low, log high] (learning rates, l2)."""

    type = "loguniform"

    def __init__(self, low, high):
        self.low, self.high = float(_number(low, "loguniform: low")), float(_number(high, "loguniform: high"))
        if not 0 < self.low <= self.high:
            raise NbnetError(f"loguniform: needs 0 < low <= high, received low={low!r}, high={high!r} "
                             "(to include 0, use a choice such as [0.0, 1e-5, 1e-4]).")

    def suggest(self, trial, name):
        return trial.suggest_float(name, self.low, self.high, log=True)

    def to_dict(self):
        return {"type": self.type, "low": self.low, "high": self.high}


class Int(Distribution):
    """An integer from [low, high] in steps of ``step`` (``log=True``: uniform in log space)."""

    type = "int"

    def __init__(self, low, high, step=1, log=False):
        for what, value in (("low", low), ("high", high), ("step", step)):
            if isinstance(value, bool) or not isinstance(value, int):
                if not (isinstance(value, float) and value.is_integer()):
                    raise NbnetError(f"int: {what} must be an integer, received {value!r}.")
        self.low, self.high, self.step, self.log = int(low), int(high), int(step), bool(log)
        if self.low > self.high or self.step < 1:
            raise NbnetError(f"int: needs low <= high and step >= 1, received low={low!r}, high={high!r}, "
                             f"step={step!r}.")
        if self.log and (self.low < 1 or self.step != 1):
            raise NbnetError("int: log=True needs low >= 1 and step 1.")

    def suggest(self, trial, name):
        return trial.suggest_int(name, self.low, self.high, step=self.step, log=self.log)

    def to_dict(self):
        out = {"type": self.type, "low": self.low, "high": self.high}
        if self.step != 1:
            out["step"] = self.step
        if self.log:
            out["log"] = True
        return out


class Choice(Distribution):
    """One of ``values`` (strings, numbers, booleans or null)."""

    type = "choice"

    def __init__(self, values):
        values = list(values) if isinstance(values, (list, tuple)) else values
        if not isinstance(values, list) or not values:
            raise NbnetError(f"choice: values must be a non-empty list, received {values!r}.")
        for value in values:
            if value is not None and not isinstance(value, (str, int, float, bool)):
                raise NbnetError(f"choice: values must be strings, numbers, booleans or null; received {value!r}.")
        self.values = values

    def suggest(self, trial, name):
        return trial.suggest_categorical(name, self.values)

    def to_dict(self):
        return {"type": self.type, "values": list(self.values)}


class Fixed(Distribution):
    """A value that every trial uses (recorded with the trial's parameters)."""

    type = "fixed"

    def __init__(self, value):
        if value is not None and not isinstance(value, (str, int, float, bool)):
            raise NbnetError(f"fixed: the value must be a string, number, boolean or null; received {value!r}.")
        self.value = value

    def suggest(self, trial, name):
        return self.value

    def to_dict(self):
        return {"type": self.type, "value": self.value}


_TYPES = {"uniform": Uniform, "float": Uniform, "loguniform": LogUniform, "log_uniform": LogUniform,
          "int": Int, "integer": Int, "choice": Choice, "categorical": Choice, "fixed": Fixed, "const": Fixed}


def distribution(spec, name="?"):
    """A Distribution from a Distribution, a JSON-style dict, a list (choice) or a plain value (fixed)."""
    if isinstance(spec, Distribution):
        return spec
    if isinstance(spec, (list, tuple)):
        return Choice(spec)
    if isinstance(spec, dict):
        spec = dict(spec)
        kind = str(spec.pop("type", "")).lower()
        if kind not in _TYPES:
            raise NbnetError(f"search space: {name!r} has type {kind or None!r}; use one of "
                             "'loguniform', 'uniform', 'int', 'choice' or 'fixed'.")
        try:
            return _TYPES[kind](**spec)
        except TypeError as exc:
            raise NbnetError(f"search space: {name!r} ({kind}): {exc}") from None
        except NbnetError as exc:
            raise NbnetError(f"search space: {name!r}: {exc}") from None
    return Fixed(spec)


class SearchSpace:
    """An ordered mapping of hyperparameter name to Distribution."""

    def __init__(self, space=None, **parameters):
        merged = dict(space or {})
        merged.update(parameters)
        if not merged:
            raise NbnetError("search space: it names no hyperparameters.")
        self.parameters = {}
        for name, spec in merged.items():
            if not isinstance(name, str) or not name.isidentifier():
                raise NbnetError(f"search space: {name!r} is not a valid keyword-argument name.")
            self.parameters[name] = distribution(spec, name)
        if "batch_size" in self.parameters:
            _check_batch_sizes(self.parameters["batch_size"])

    def sample(self, trial):
        """Every hyperparameter's value for ``trial`` (an Optuna trial), fixed ones included."""
        return {name: dist.suggest(trial, name) for name, dist in self.parameters.items()}

    def names(self):
        return list(self.parameters)

    def to_dict(self):
        return {name: dist.to_dict() for name, dist in self.parameters.items()}

    def to_json(self, **kwargs):
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_dict(cls, data):
        if isinstance(data, SearchSpace):
            return data
        if not isinstance(data, dict):
            raise NbnetError("search space: expected a JSON object of name -> distribution, "
                             f"received {type(data).__name__}.")
        return cls(data)

    def __eq__(self, other):
        return isinstance(other, SearchSpace) and self.to_dict() == other.to_dict()

    def __repr__(self):
        return f"SearchSpace({self.parameters!r})"


def _check_batch_sizes(dist):
    values = {Choice: lambda d: d.values, Fixed: lambda d: [d.value], Int: lambda d: [d.low]}.get(type(dist))
    if values is None:
        raise NbnetError("search space: batch_size must be an int range, a choice or a fixed value.")
    for value in values(dist):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise NbnetError(f"search space: batch_size values must be positive integers, received {value!r}.")


def load_space(source):
    """A SearchSpace from a SearchSpace or dict, a JSON string (starting with ``{``), a .json
    file, or a .py file defining ``SPACE``."""
    if isinstance(source, (SearchSpace, dict)):
        return SearchSpace.from_dict(source)
    text = str(source).strip()
    if text.startswith("{"):
        try:
            return SearchSpace.from_dict(json.loads(text))
        except json.JSONDecodeError as exc:
            raise NbnetError(f"search space: the inline JSON is malformed: {exc}") from None
    path = Path(text)
    if not path.is_file():
        raise NbnetError(f"search space: {text} is not a file (give a .json or .py file, or inline JSON).")
    if path.suffix == ".py":
        import importlib.util

        spec = importlib.util.spec_from_file_location(f"nbnet_tune_space_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        if not hasattr(module, "SPACE"):
            raise NbnetError(f"search space: {path} defines no SPACE (a dict or nbnet.tune.SearchSpace).")
        return SearchSpace.from_dict(module.SPACE)
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise NbnetError(f"search space: cannot read {path}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise NbnetError(f"search space: {path} is not valid JSON: {exc}") from None
    return SearchSpace.from_dict(data)
