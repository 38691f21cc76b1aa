"""Metrics computed per batch as counts, so an epoch's value is exact whatever the batch size."""

import numpy as np

from .devices import cpu
from .errors import NbnetError
from .losses import split_targets

SUPPORTED = ("accuracy",)


# Keras's names for accuracy: the logs use the name as the script spelled it ('acc' -> 'acc',
# 'val_acc'), as Keras does.
ACCURACY_NAMES = ("accuracy", "acc", "sparse_categorical_accuracy", "categorical_accuracy", "binary_accuracy")


def resolve(metrics):
    """The log names of the compiled metrics (each one of Keras's accuracy names)."""
    names = []
    for metric in metrics or []:
        if metric not in ACCURACY_NAMES:
            raise NbnetError(f"Unknown metric {metric!r}; nbnet supports {', '.join(ACCURACY_NAMES)}.")
        if names:
            raise NbnetError(f"compile(metrics=...): nbnet computes one accuracy per model, received {metrics!r}.")
        names.append(metric)
    return names


def correct_count(outputs, targets, sparse, threshold=0.5, ops=cpu, out=None):
    """How many predictions are right: argmax against class ids or one-hot rows, or, for
    a single output unit, the output against ``threshold``. Returns the count, or, given
    ``out`` (a (1,) float64 array on the device ``ops``), writes it there."""
    outputs = outputs.reshape(outputs.shape[0], outputs.size // max(outputs.shape[0], 1))
    labels, rows = split_targets(targets, sparse, ops)
    target = out if out is not None else np.zeros(1)
    ops.count_correct(outputs, labels, rows, float(threshold), target)
    return out if out is not None else float(target[0])
