"""Optimizer state in Keras 3's files (``optimizer/vars`` in ``model.weights.h5``), read and
written, so a model trained in Keras continues in nbnet (and back) from the same moments.

Keras stores ``iteration``, ``learning_rate``, then each optimizer's slots for every
trainable weight array, in Keras's order of the model's weights (see
weights_file.weight_layers). Within one ``add_optimizer_variables`` call the slots of one
array are interleaved (Adam: kernel momentum, kernel velocity, bias momentum, ...);
separate calls follow one another (RMSprop: every velocity, then every momentum). nbnet
keeps each slot as one flat vector over the same arrays, so the mapping is a matter of
order, written out per optimizer below (Keras 3.15's layouts).
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


def _entries(model):
    """(offset, shape) of each trainable weight array in the flat vectors, in Keras's
    order of the model's trainable variables (its layers in Keras's order, nested models
    walked into), which need not be the order of the flat vectors."""
    from .weights_file import weight_layers

    offsets, offset = {}, 0
    for layer, key in model._flat_entries:
        shape = tuple(layer.params[key].shape)
        offsets[(id(layer), key)] = (offset, shape)
        offset += int(np.prod(shape))
    return [offsets[(id(layer), key)] for layer in weight_layers(model) for key in layer.weight_order
            if (id(layer), key) in offsets]


def read(model, group, path):
    """Restore the optimizer's step count and slots from Keras's ``optimizer/vars`` group."""
    optimizer = model.optimizer
    groups, scalars = _layout(optimizer)
    values = [np.asarray(group[str(i)]) for i in range(len(group))]
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
