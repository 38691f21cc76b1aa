"""``model.save_weights`` / ``model.load_weights`` in Keras 3's ``.weights.h5`` layout, so
weights move between nbnet and Keras models of the same architecture; and Keras 2's
``.h5`` weights layout, read.

Keras keys each layer by its class's snake-case name, numbered within its model in the
order of ``model.layers`` (Keras's: by depth, see graph.keras_layer_order), as
``layers/dense``, ``layers/dense_1``, ..., never by the layer's own name, and stores its
weights as ``vars/0``, ``vars/1``, ... in ``get_weights`` order (HDF5, through h5py). A
model used as a layer keeps its own layers under its key (``layers/functional/layers/
dense/vars/0``); a functional model's InputLayers and merge layers have keys (and empty
``vars``) too. Writes are atomic; a file whose layers or shapes do not match the model is
refused before any weight changes.
"""

import os
from pathlib import Path

import h5py
import numpy as np

from .errors import ModelFileError, NbnetError
from .layers.base import snake_case
from .paths import atomic_write

SUFFIX = ".weights.h5"


def _is_model(layer):
    from .models import Model

    return isinstance(layer, Model)


def _keras_class(layer):
    """The class name Keras keys a layer by: a functional model is Keras's Functional."""
    from .models import Sequential

    return "Functional" if _is_model(layer) and not isinstance(layer, Sequential) else type(layer).__name__


def layer_keys(model):
    """(key, layer) for ``model.layers`` (Keras's order): Keras's per-class numbering."""
    used, keys = {}, []
    for layer in model.layers:
        base = snake_case(_keras_class(layer))
        count = used.get(base, 0)
        used[base] = count + 1
        keys.append((base if count == 0 else f"{base}_{count}", layer))
    return keys


def weight_layers(model):
    """The layers holding weights, in Keras's weights order (``model.weights``): a nested
    model's in its place, a layer shared by several models once."""
    found = []
    for layer in model.layers:
        found.extend(weight_layers(layer) if _is_model(layer) else [layer])
    return [layer for layer in {id(layer): layer for layer in found}.values() if layer.weight_order]


def legacy_weights(layer):
    """(layer, weight key) in the order Keras's ``.h5`` files keep a layer's weights: its
    trainable weights, then the others (``_legacy_weights``). For a plain layer that is
    ``get_weights`` order; for a model used as a layer, every trainable weight of its
    layers comes before its frozen layers' weights and the moving statistics."""
    owners = weight_layers(layer) if _is_model(layer) else [layer]
    pairs = [(owner, key) for owner in owners for key in owner.weight_order]
    trainable = [(owner, key) for owner, key in pairs if owner.trainable and key in owner.params]
    return trainable + [pair for pair in pairs if pair not in trainable]


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
            save_model_weights_to(model, h5)


def save_model_weights_to(model, h5):
    """What Keras's ``save_weights`` writes (and a .keras file's ``model.weights.h5`` holds):
    the layers' weights and, once compiled, the optimizer's state."""
    from . import keras_optimizer_state

    save_weights_to(model, h5)
    if model.optimizer is not None:
        keras_optimizer_state.write(model, h5)


def save_weights_to(model, h5, written=None):
    """Keras's layout into an open HDF5 file or group (a .weights.h5, a .keras file's
    weights, or a nested model's group). A layer met a second time (shared by a nested
    model and its outer one) is written once, where Keras writes it."""
    written = set() if written is None else written
    layers_group = h5.create_group("layers")
    for key, layer in layer_keys(model):
        if id(layer) in written:
            continue
        written.add(id(layer))
        group = layers_group.create_group(key)
        if _is_model(layer):
            save_weights_to(layer, group, written)
            continue
        variables = group.create_group("vars")
        variables.attrs["name"] = layer.name
        for index, value in enumerate(layer.get_weights()):
            variables.create_dataset(str(index), data=np.asarray(value, np.float32))
    h5.create_group("vars").attrs["name"] = model.name


def load_weights(model, filepath):
    """Set the model's weights from a Keras 3 ``.weights.h5`` file (Keras's or nbnet's), or
    from a Keras 2 / tf.keras ``.h5`` weights file (matched by order, as Keras 2 does). An
    optimizer state in the file is left out: the model's optimizer carries on as it is."""
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


# ------------------------------------------------------------------------------ Keras 2's layout
def _text(value):
    return value.decode() if isinstance(value, bytes) else str(value)


def legacy_group_values(group):
    """The arrays a Keras 2 layer group lists in its ``weight_names``, in that order."""
    return [np.asarray(group[_text(name)]) for name in group.attrs.get("weight_names", [])]


def legacy_updates(layer, values, where):
    """``layer``'s weights from ``values`` in Keras's legacy order, shapes checked: a list of
    (layer, arrays) to set, nothing set yet."""
    pairs = legacy_weights(layer)
    expected = [tuple(owner._weight(key).shape) for owner, key in pairs]
    if [tuple(v.shape) for v in values] != expected:
        raise ModelFileError(f"{where}: layer '{layer.name}' needs weights of shapes {expected}, but the file holds "
                             f"{[tuple(v.shape) for v in values]}.")
    by_owner = {}
    for (owner, key), value in zip(pairs, values):
        by_owner.setdefault(id(owner), (owner, {}))[1][key] = value
    return [(owner, [found[key] for key in owner.weight_order]) for owner, found in by_owner.values()]


def set_updates(updates):
    for owner, values in updates:
        owner.set_weights(values)


def load_legacy_weights_from(model, group, path):
    """Keras 2's layout: ``layer_names`` in order, each group's ``weight_names``; the layers
    holding weights are matched in order (Keras 2's default, by_name=False), a nested
    model as one layer."""
    stored = []
    for name in group.attrs["layer_names"]:
        values = legacy_group_values(group[_text(name)])
        if values:
            stored.append((_text(name), values))
    ours = [layer for layer in model.layers if legacy_weights(layer)]
    if len(stored) != len(ours):
        raise ModelFileError(f"{path} holds weights for {len(stored)} layers ({[n for n, _ in stored]}), but model "
                             f"'{model.name}' has {len(ours)} layers with weights ({[layer.name for layer in ours]}).")
    updates = []
    for layer, (name, values) in zip(ours, stored):
        updates.extend(legacy_updates(layer, values, f"{path} ('{name}')"))
    set_updates(updates)


# ------------------------------------------------------------------------------ Keras 3's layout
def load_weights_from(model, h5, path):
    """Keras's layout from an open HDF5 file; every shape is checked before any weight changes."""
    if h5.get("layers") is None:
        raise ModelFileError(f"{path} has no 'layers' group: not a Keras 3 weights file.")
    set_updates(_updates(model, h5, path, "", set()))


def _updates(model, h5, path, prefix, seen):
    """(layer, arrays) for every layer of ``model`` from the ``layers`` group of ``h5``;
    ``prefix`` names a nested model's place in the file, for the errors."""
    stored = h5["layers"]
    keys = [(key, layer) for key, layer in layer_keys(model) if id(layer) not in seen]
    extra = sorted(set(stored) - {key for key, _ in keys})
    if extra:
        raise ModelFileError(f"{path} holds weights for layers {[prefix + key for key in extra]} that model "
                             f"'{model.name}' does not have (its layers, as Keras keys them: "
                             f"{[key for key, _ in keys]}).")
    updates = []
    for key, layer in keys:
        seen.add(id(layer))
        if _is_model(layer):
            if key not in stored or "layers" not in stored[key]:
                raise ModelFileError(f"{path} has no weights for the model '{layer.name}' ({prefix}{key}).")
            updates.extend(_updates(layer, stored[key], path, f"{prefix}{key}/layers/", seen))
            continue
        variables = stored[key]["vars"] if key in stored and "vars" in stored[key] else {}
        values = [np.asarray(variables[str(i)]) for i in range(len(variables))]
        expected = [tuple(w.shape) for w in layer.get_weights()]
        if [tuple(v.shape) for v in values] != expected:
            raise ModelFileError(
                f"{path}: layer '{layer.name}' ({prefix}{key}) needs weights of shapes {expected}, but the file "
                f"holds {[tuple(v.shape) for v in values]}.")
        if values:
            updates.append((layer, values))
    return updates
