"""``model.save_weights`` / ``model.load_weights`` in Keras 3's ``.weights.h5`` layout, so
weights move between nbnet and Keras models of the same architecture.

Keras keys each layer by its class's snake-case name, numbered within the model in order
(``layers/dense``, ``layers/dense_1``, ...), never by the layer's own name, and stores its
weights as ``vars/0``, ``vars/1``, ... in ``get_weights`` order (HDF5, through h5py).
Writes are atomic; a file whose layers or shapes do not match the model is refused before
any weight changes.
"""

import os
from pathlib import Path

import h5py
import numpy as np

from .errors import ModelFileError, NbnetError
from .layers.base import snake_case
from .paths import atomic_write

SUFFIX = ".weights.h5"


def layer_keys(model):
    """(key, layer) in the model's order: Keras's per-class numbering within the model."""
    used, keys = {}, []
    for layer in model.layers:
        base = snake_case(type(layer).__name__)
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
    """Set the model's weights from a Keras 3 ``.weights.h5`` file (Keras's or nbnet's), or
    from a Keras 2 / tf.keras ``.h5`` weights file (matched by order, as Keras 2 does)."""
    path = Path(os.fspath(filepath))
    if not path.name.endswith(".h5"):
        raise NbnetError(f"load_weights: nbnet reads Keras's {SUFFIX} (and Keras 2's .h5) files, received "
                         f"{str(path)!r}; a whole .nbnet or .keras model loads with models.load_model.")
    if not path.exists():
        raise ModelFileError(f"load_weights: {path} does not exist.")
    model._require_built()
    try:
        with h5py.File(path, "r") as h5:
            if "layer_names" in h5.attrs or "model_weights" in h5:
                load_legacy_weights_from(model, h5["model_weights"] if "model_weights" in h5 else h5, path)
            else:
                load_weights_from(model, h5, path)
    except OSError as exc:
        raise ModelFileError(f"load_weights: {path} is not a readable HDF5 file: {exc}") from exc


def load_legacy_weights_from(model, group, path):
    """Keras 2's layout: ``layer_names`` in order, each group's ``weight_names``; the layers
    holding weights are matched in order (Keras 2's default, by_name=False)."""
    def text(value):
        return value.decode() if isinstance(value, bytes) else str(value)

    stored = []
    for name in group.attrs["layer_names"]:
        layer_group = group[text(name)]
        values = [np.asarray(layer_group[text(w)]) for w in layer_group.attrs.get("weight_names", [])]
        if values:
            stored.append((text(name), values))
    ours = [layer for layer in model.layers if layer.weight_order]
    if len(stored) != len(ours):
        raise ModelFileError(f"{path} holds weights for {len(stored)} layers ({[n for n, _ in stored]}), but model "
                             f"'{model.name}' has {len(ours)} layers with weights ({[layer.name for layer in ours]}).")
    for layer, (name, values) in zip(ours, stored):
        expected = [tuple(w.shape) for w in layer.get_weights()]
        if [tuple(v.shape) for v in values] != expected:
            raise ModelFileError(f"{path}: layer '{layer.name}' needs weights of shapes {expected}, but the file's "
                                 f"'{name}' holds {[tuple(v.shape) for v in values]}.")
    for layer, (_, values) in zip(ours, stored):
        layer.set_weights(values)


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
