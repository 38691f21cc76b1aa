"""The parts of Keras's ``backend`` module that scripts call: nbnet computes in float32,
channels last, with Keras's epsilon; ``get_value``/``set_value`` read and write plain
numbers and arrays (a learning rate, a weight)."""

import numpy as np

from .errors import NbnetError

_EPSILON = 1e-7


def image_data_format():
    return "channels_last"


def set_image_data_format(data_format):
    if data_format != "channels_last":
        raise NbnetError(f"nbnet computes channels last; set_image_data_format received {data_format!r}.")


def floatx():
    return "float32"


def set_floatx(value):
    if value != "float32":
        raise NbnetError(f"nbnet computes in float32; set_floatx received {value!r}.")


def epsilon():
    return _EPSILON


def backend():
    return "numba"


def clear_session(free_memory=True):
    """Keras resets its layer-name counters and graph; nbnet has only the counters."""
    from .layers.base import reset_names

    reset_names()


def get_value(x):
    """A plain number or array: learning rates, schedules' values, weights."""
    if hasattr(x, "numpy"):
        return x.numpy()
    return x if np.isscalar(x) else np.asarray(x)


def set_value(x, value):
    """Assign into a Variable (``optimizer.learning_rate``) or an array, in place."""
    if hasattr(x, "assign"):
        x.assign(value)
    elif isinstance(x, np.ndarray):
        x[...] = value
    else:
        raise NbnetError(f"backend.set_value: cannot assign into a {type(x).__name__}; set the attribute "
                         "itself, e.g. model.optimizer.learning_rate = 0.01.")
