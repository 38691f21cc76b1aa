"""nbnet: a small deep-learning toolkit whose compute runs as Numba kernels.

``import nbnet as keras`` gives Keras's namespace: ``keras.layers``, ``keras.models``,
``keras.datasets``, ``keras.utils``, ``keras.backend``, ... and ``keras.Sequential``,
``keras.Input``. Submodules load on first use, so ``import nbnet`` (and ``nbnet --help``)
stays fast.
"""

import importlib
import os

__version__ = "0.1.0"

# Numba's OpenMP threads spin-wait ~300k iterations after each parallel kernel; between
# kernels nbnet runs its matmuls on other threads (nbnet/kernels/matmul.py), which the
# spinning starves on 2 cores. A short spin measured 24 -> 18 ms per MNIST-CNN step. It
# only takes effect when set before libgomp loads (numba's first parallel kernel); a
# value the user set wins.
os.environ.setdefault("GOMP_SPINCOUNT", "10000")

_SUBMODULES = ("activations", "backend", "callbacks", "datasets", "initializers", "layers", "losses", "metrics",
               "models", "onnx", "optimizers", "regularizers", "saving", "schedules", "utils")
# Top-level names Keras scripts use, and the submodule that holds each.
_NAMES = {"Sequential": "models", "Model": "models", "load_model": "models", "Input": "layers", "InputLayer": "layers"}

__all__ = list(_SUBMODULES) + list(_NAMES)


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    if name in _NAMES:
        return getattr(importlib.import_module(f".{_NAMES[name]}", __name__), name)
    raise AttributeError(f"module 'nbnet' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
