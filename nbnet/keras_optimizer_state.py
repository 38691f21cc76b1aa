"""Optimizer state in Keras 3's files (``optimizer/vars`` in ``model.weights.h5``), read and
written, so a model trained in Keras continues in nbnet (and back) from the same moments.

Keras stores ``iteration``, ``learning_rate``, then each optimizer's slots for every
trainable weight array, in Keras's order of the model's weights (see
weights_file.weight_layers). Within one ``add_optimizer_variables`` call the slots of one
array are interleaved (Adam: kernel momentum, kernel velocity, bias momentum, ...);
separate calls follow one another (RMSprop: every velocity, then every momentum). nbnet
keeps each slot as one flat vector over the same arrays, so the mapping is a matter of
order, written out per optimizer below (Keras 3.15's layouts). Keras 3's legacy ``.h5``
files keep the same list in ``optimizer_weights``.

Keras 2 / tf.keras ``.h5`` files (OptimizerV2, TF 2.0 to 2.10 and
``tf.keras.optimizers.legacy``) list ``iter``, then each slot variable in the order it was
made, named ``<optimizer>/<weight name>/<slot>``: read by name (``read_keras2``), so the
order does not matter, and only when every name maps to exactly one weight of the model.
"""

import numpy as np

from .errors import ModelFileError


def _layout(optimizer):
    """nbnet slot names in Keras's order: a list of groups, each interleaved per array;
    and the number of trailing scalars (Nadam's momentum product)."""
    kind = type(optimizer).__name__
    if kind == "SGD":
        return ([["velocity"]] if optimizer.momentum else []), 0
    if kind in ("Adam", "AdamW"):
        return [["m", "v"]], 0
    if kind == "Nadam":
        return [["m", "v"]], 1
    if kind == "Adamax":
        return [["m", "u"]], 0
    if kind == "Adagrad":
        return [["accumulator"]], 0
    if kind == "Adadelta":
        return [["accumulated_grad", "accumulated_delta"]], 0
    if kind == "RMSprop":
        groups = [["mean_square"]]
        if optimizer.momentum:
            groups.append(["velocity"])
        if optimizer.centered:
            groups.append(["average_gradient"])
        return groups, 0
    return None, 0


def flat_offsets(model):
    """{(id(layer), weight key): (offset, shape)} of each trainable weight array in the
    model's flat vectors."""
    offsets, offset = {}, 0
    for layer, key in model._flat_entries:
        shape = tuple(layer.params[key].shape)
        offsets[(id(layer), key)] = (offset, shape)
        offset += int(np.prod(shape))
    return offsets


def _entries(model):
    """(offset, shape) of each trainable weight array in the flat vectors, in Keras's
    order of the model's trainable variables (its layers in Keras's order, nested models
    walked into), which need not be the order of the flat vectors."""
    from .weights_file import weight_layers

    offsets = flat_offsets(model)
    return [offsets[(id(layer), key)] for layer in weight_layers(model) for key in layer.weight_order
            if (id(layer), key) in offsets]


def read(model, group, path):
    """Restore the optimizer's step count and slots from Keras's ``optimizer/vars`` group."""
    read_values(model, [np.asarray(group[str(i)]) for i in range(len(group))], path)


def read_values(model, values, path):
    """Restore the optimizer from Keras 3's list of its variables (``optimizer.variables``:
    a .keras file's ``optimizer/vars``, a legacy .h5 file's ``optimizer_weights``)."""
    optimizer = model.optimizer
    groups, scalars = _layout(optimizer)
    if groups is None or len(values) <= 2:
        return  # an optimizer nbnet does not map, or one Keras never stepped: it starts afresh
    entries = _entries(model)
    expected = 2 + sum(len(names) for names in groups) * len(entries) + scalars
    if len(values) != expected:
        raise ModelFileError(f"{path}: the {type(optimizer).__name__} state holds {len(values)} variables, but this "
                             f"model's {len(entries)} weight arrays need {expected}.")
    size = model.flat_params.shape[0]
    slots = {name: np.zeros(size, np.float32) for names in groups for name in names}
    position = 2
    for names in groups:
        for offset, shape in entries:
            for name in names:
                value = values[position]
                if tuple(value.shape) != shape:
                    raise ModelFileError(f"{path}: optimizer variable {position} has shape {value.shape}, expected "
                                         f"{shape}.")
                slots[name][offset:offset + value.size] = value.reshape(-1)
                position += 1
    optimizer.slots.update(slots)
    optimizer.iterations = int(values[0])
    if scalars:  # Nadam: the product of its momentum schedule so far
        optimizer._mu_product = (optimizer.iterations, float(values[-1]))


# OptimizerV2's slot names -> nbnet's, per optimizer; and its scalar weights besides ``iter``.
_KERAS2_SLOTS = {"SGD": {"momentum": "velocity"}, "Adam": {"m": "m", "v": "v"}, "Nadam": {"m": "m", "v": "v"},
                 "Adamax": {"m": "m", "v": "u"}, "Adagrad": {"accumulator": "accumulator"},
                 "Adadelta": {"accum_grad": "accumulated_grad", "accum_var": "accumulated_delta"},
                 "RMSprop": {"rms": "mean_square", "momentum": "velocity", "mg": "average_gradient"}}
_KERAS2_SCALARS = {"Nadam": ("momentum_cache",)}


def is_keras3_layout(names):
    """Whether a legacy .h5 file's ``optimizer_weights`` names are Keras 3's
    (``adam/iteration``, ``adam/learning_rate``, then the slots in ``optimizer/vars`` order)."""
    return len(names) >= 2 and names[0].endswith("iteration") and names[1].endswith("learning_rate")


def read_keras2(model, names, values, weights_by_name):
    """Restore the optimizer from a Keras 2 / tf.keras legacy .h5 file's ``optimizer_weights``
    (OptimizerV2: ``iter`` and ``<optimizer>/<weight>/<slot>:0``), each slot matched by the
    weight's name (``weights_by_name``: {stored weight name: (layer, weight key)}, from the
    file's ``model_weights``). Returns None when restored, else why not (nothing changed)."""
    optimizer = model.optimizer
    kind = type(optimizer).__name__
    groups, _ = _layout(optimizer)
    if groups is None or kind not in _KERAS2_SLOTS:
        return f"nbnet does not map the state of a Keras 2 {kind}"
    needed = {name for names_ in groups for name in names_}
    slot_names = {k: v for k, v in _KERAS2_SLOTS[kind].items() if v in needed}
    offsets = flat_offsets(model)
    trainable = {name: offsets[(id(layer), key)] for name, (layer, key) in weights_by_name.items()
                 if (id(layer), key) in offsets}
    size = model.flat_params.shape[0]
    slots = {name: np.zeros(size, np.float32) for name in needed}
    filled, iterations, scalars = set(), None, {}
    for stored, value in zip(names, values):
        stem = stored.split(":")[0]
        last = stem.rsplit("/", 1)[-1]
        if last == "iter":
            iterations = int(np.asarray(value))
            continue
        if last in _KERAS2_SCALARS.get(kind, ()):
            scalars[last] = float(np.asarray(value))
            continue
        weight, _, slot = stem.rpartition("/")
        candidates = {weight, weight.split("/", 1)[-1]} & set(trainable)  # with or without the optimizer's scope
        if slot not in slot_names or len(candidates) != 1:
            return f"its variable {stored!r} names no single trainable weight and {kind} slot of this model"
        (weight,) = candidates
        offset, shape = trainable[weight]
        if tuple(np.shape(value)) != shape or (weight, slot) in filled:
            return f"its variable {stored!r} does not fit the weight {weight!r} of shape {shape}"
        filled.add((weight, slot))
        slots[slot_names[slot]][offset:offset + int(np.prod(shape))] = np.asarray(value, np.float32).reshape(-1)
    missing = [(weight, slot) for weight in trainable for slot in slot_names if (weight, slot) not in filled]
    if iterations is None or missing or (kind == "Nadam" and "momentum_cache" not in scalars):
        return (f"it lacks {'the step count' if iterations is None else missing[:3] if missing else 'momentum_cache'}"
                " (or names the weights otherwise)")
    optimizer.slots.update(slots)
    optimizer.iterations = iterations
    if kind == "Nadam":
        optimizer._mu_product = (iterations, scalars["momentum_cache"])
    return None


def write(model, h5):
    """Keras's ``optimizer/vars`` group for the model's optimizer (after at least one step)."""
    optimizer = model.optimizer
    groups, scalars = _layout(optimizer)
    variables = h5.create_group("optimizer").create_group("vars")
    variables.attrs["name"] = type(optimizer).__name__.lower()
    values = [np.array(optimizer.iterations, np.int64), np.array(optimizer.current_learning_rate(), np.float32)]
    stepped = groups is not None and optimizer.iterations > 0 and all(
        name in optimizer.slots for names in groups for name in names)
    if stepped:
        for names in groups:
            for offset, shape in _entries(model):
                for name in names:
                    values.append(np.asarray(optimizer.slots[name][offset:offset + int(np.prod(shape))]).reshape(shape))
        if scalars:
            values.append(np.array(getattr(optimizer, "_mu_product", (0, 1.0))[1], np.float32))
    for index, value in enumerate(values):
        variables.create_dataset(str(index), data=value)
