"""A mutable float32 value with Keras's Variable surface (``assign``, ``numpy``, ``value``),
for the numbers scripts change while training: ``optimizer.learning_rate.assign(1e-4)`` and
``backend.set_value(optimizer.learning_rate, 1e-4)`` work as in Keras, and the object reads
as a plain number anywhere a float is expected (``float(lr)``, ``lr * 0.5``, ``f"{lr:.4f}"``)."""

import operator

import numpy as np


class Variable:
    def __init__(self, value, name=None, on_assign=None):
        self._value = np.array(value, np.float32)
        self.name = name
        self._on_assign = on_assign

    @property
    def value(self):
        return self.numpy()

    @property
    def shape(self):
        return self._value.shape

    @property
    def dtype(self):
        return "float32"

    def numpy(self):
        return self._value[()] if self._value.ndim == 0 else self._value.copy()

    def assign(self, value):
        new = np.asarray(getattr(value, "value", value), np.float32)
        if new.shape != self._value.shape:
            raise ValueError(f"Variable {self.name or ''}: cannot assign a value of shape {new.shape} to one of "
                             f"shape {self._value.shape}.")
        self._value[...] = new
        if self._on_assign is not None:
            self._on_assign(self.numpy())
        return self

    def assign_add(self, delta):
        return self.assign(self._value + np.asarray(delta, np.float32))

    def assign_sub(self, delta):
        return self.assign(self._value - np.asarray(delta, np.float32))

    def __float__(self):
        return float(self._value)

    def __int__(self):
        return int(self._value)

    def __array__(self, dtype=None, copy=None):
        return np.array(self._value, dtype=dtype)

    def __format__(self, spec):
        return format(float(self._value) if self._value.ndim == 0 else self._value, spec)

    def __repr__(self):
        return f"<Variable {self.name or ''} shape={self._value.shape} value={self.numpy()}>"

    def __bool__(self):
        return bool(self._value)

    def __neg__(self):
        return -self.numpy()

    def __abs__(self):
        return abs(self.numpy())

    __hash__ = object.__hash__


def _binary(op, reflected=False):
    if reflected:
        return lambda self, other: op(np.asarray(other), self.numpy())
    return lambda self, other: op(self.numpy(), np.asarray(getattr(other, "_value", other)))


for _name, _op in (("add", operator.add), ("sub", operator.sub), ("mul", operator.mul), ("truediv", operator.truediv),
                   ("floordiv", operator.floordiv), ("pow", operator.pow), ("mod", operator.mod)):
    setattr(Variable, f"__{_name}__", _binary(_op))
    setattr(Variable, f"__r{_name}__", _binary(_op, reflected=True))
for _name, _op in (("lt", operator.lt), ("le", operator.le), ("gt", operator.gt), ("ge", operator.ge),
                   ("eq", operator.eq), ("ne", operator.ne)):
    setattr(Variable, f"__{_name}__", _binary(_op))
