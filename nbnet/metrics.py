"""Metrics computed per batch as counts, so an epoch's value is exact whatever the batch size."""

import numpy as np

from .errors import NbnetError

SUPPORTED = ("accuracy",)


def resolve(metrics):
    names = []
    for metric in metrics or []:
        name = {"acc": "accuracy", "sparse_categorical_accuracy": "accuracy",
                "categorical_accuracy": "accuracy", "binary_accuracy": "accuracy"}.get(metric, metric)
        if name not in SUPPORTED:
            raise NbnetError(f"Unknown metric {metric!r}; nbnet supports {', '.join(SUPPORTED)}.")
        names.append(name)
    return names


def correct_count(outputs, targets, sparse, threshold=0.5):
    """How many predictions are right: argmax against class ids or one-hot rows, or, for
    a single output unit, the output against ``threshold`` (a fraction per element)."""
    outputs = outputs.reshape(len(outputs), -1)
    if outputs.shape[1] == 1 and not sparse:
        return float(((outputs > threshold) == (targets.reshape(outputs.shape) > 0.5)).mean(axis=1).sum())
    predicted = outputs.argmax(axis=1)
    expected = targets if sparse else targets.argmax(axis=1)
    return float(np.count_nonzero(predicted == expected))
