"""``model.save_weights`` / ``model.load_weights`` in Keras 3's ``.weights.h5`` layout, so
weights move between nbnet and Keras models of the same architecture.

Keras keys each layer by its class's snake-case name, numbered within the model in order
(``layers/dense``, ``layers/dense_1``, ...), never by the layer's own name, and stores its
weights as ``vars/0``, ``vars/1``, ... in ``get_weights`` order. HDF5 needs h5py, an
optional extra (``pip install "nbnet[h5]"``). Writes are atomic; a file whose layers or
shapes do not match the model is refused before any weight changes.
"""

import os
import re
from pathlib import Path

import numpy as np

from .errors import ModelFileError, NbnetError
from .paths import atomic_write

SUFFIX = ".weights.h5"


def _h5py():
    try:
        import h5py
    except ImportError as exc:
        raise NbnetError("Saving and loading .weights.h5 files needs h5py: pip install \"nbnet[h5]\" "
                         "(or pip install h5py).") from exc
    return h5py


def _snake(name):
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)).lower()


def layer_keys(model):
    """(key, layer) in the model's order: Keras's per-class numbering within the model."""
    used, keys = {}, []
    for layer in model.layers:
        base = _snake(type(layer).__name__)
        count = used.get(base, 0)
        used[base] = count + 1
        keys.append((base if count == 0 else f"{base}_{count}", layer))
    return keys


def save_weights(model, filepath, overwrite=True):
    path = Path(os.fspath(filepath))
    if not path.name.endswith(SUFFIX):
        raise NbnetError(f"save_weights: the file name must end in {SUFFIX} (Keras's weights format), received "
                         f"{str(path)!r}; model.save(...) writes the whole model.")
    if path.exists() and not overwrite:
        raise NbnetError(f"save_weights: {path} exists and overwrite=False.")
    model._require_built()
    h5py = _h5py()
    with atomic_write(path, mode="w+b") as handle:  # h5py reads back what it writes
        with h5py.File(handle, "w") as h5:
            save_weights_to(model, h5)


def save_weights_to(model, h5):
    """Keras's layout into an open HDF5 file (a .weights.h5, or a .keras file's weights)."""
    layers_group = h5.create_group("layers")
    for key, layer in layer_keys(model):
        variables = layers_group.create_group(key).create_group("vars")
        variables.attrs["name"] = layer.name
        for index, value in enumerate(layer.get_weights()):
            variables.create_dataset(str(index), data=np.asarray(value, np.float32))
    h5.create_group("vars").attrs["name"] = model.name


def load_weights(model, filepath):
    """Set the model's weights from a ``.weights.h5`` file (Keras's or nbnet's)."""
    path = Path(os.fspath(filepath))
    if not path.name.endswith(SUFFIX):
        raise NbnetError(f"load_weights: nbnet reads Keras's {SUFFIX} files, received {str(path)!r}; "
                         "a whole .nbnet model loads with models.load_model.")
    if not path.exists():
        raise ModelFileError(f"load_weights: {path} does not exist.")
    model._require_built()
    h5py = _h5py()
    try:
        with h5py.File(path, "r") as h5:
            load_weights_from(model, h5, path)
    except OSError as exc:
        raise ModelFileError(f"load_weights: {path} is not a readable HDF5 file: {exc}") from exc


def load_weights_from(model, h5, path):
    """Keras's layout from an open HDF5 file; every shape is checked before any weight changes."""
    stored = h5.get("layers")
    if stored is None:
        raise ModelFileError(f"{path} has no 'layers' group: not a Keras 3 weights file.")
    keys = layer_keys(model)
    extra = sorted(set(stored) - {key for key, _ in keys})
    if extra:
        raise ModelFileError(f"{path} holds weights for layers {extra} that model '{model.name}' does not have "
                             f"(its layers, as Keras keys them: {[key for key, _ in keys]}).")
    updates = []
    for key, layer in keys:
        variables = stored[key]["vars"] if key in stored and "vars" in stored[key] else {}
        values = [np.asarray(variables[str(i)]) for i in range(len(variables))]
        expected = [tuple(w.shape) for w in layer.get_weights()]
        if [tuple(v.shape) for v in values] != expected:
            raise ModelFileError(
                f"{path}: layer '{layer.name}' ({key}) needs weights of shapes {expected}, but the file holds "
                f"{[tuple(v.shape) for v in values]}.")
        updates.append((layer, values))
    for layer, values in updates:
        if values:
            layer.set_weights(values)
