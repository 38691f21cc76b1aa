"""What compile attaches to each model output: its loss, loss weight and metrics (an
``OutputHead``), and the Keras rules that spread compile's arguments over the outputs and
name the logs: one output logs ``loss`` and ``accuracy``; several log the weighted total
``loss`` and, per output, ``<name>_loss`` and ``<name>_<metric>``."""

import numpy as np

from . import losses, metrics as metrics_module
from .errors import NbnetError, ShapeError


class OutputHead:
    """Output ``index`` of the model, named ``name``, of per-sample ``shape``."""

    def __init__(self, index, name, shape, loss, weight, metrics, several):
        self.index, self.name, self.shape = index, name, tuple(shape)
        self.width = int(np.prod(self.shape))
        self.loss, self.weight, self.metrics = loss, float(weight), metrics
        self.prefix = f"{name}_" if several else ""
        self.counted, self.host_metrics = None, list(metrics)

    def split_metrics(self):
        """Decide which metric the device counts (an accuracy the correct count gives
        exactly) and which update on the host; their states start afresh. As Keras's
        compile(metrics=...), they ignore sample weights."""
        self.counted = next((m for m in self.metrics
                             if metrics_module.counted_on_device(m, self.loss, self.width)), None)
        self.host_metrics = [m for m in self.metrics if m is not self.counted]
        for metric in self.host_metrics:
            metric.reset_state()


def _per_output(value, names, what, single_ok):
    """``value`` spread over the outputs: a dict by name, a list in order, or (when
    ``single_ok``) one value for every output."""
    if isinstance(value, dict):
        unknown = [key for key in value if key not in names]
        if unknown:
            raise NbnetError(f"compile({what}=...): {unknown} are not outputs of the model; its outputs are {names}.")
        return [value.get(name) for name in names]
    if isinstance(value, (list, tuple)) and (len(names) > 1 or (what == "loss" and len(value) == 1)):
        if len(value) != len(names):
            raise NbnetError(f"compile({what}=...): the model has {len(names)} outputs {names}, but received "
                             f"{len(value)} entries; give one per output, or a dict keyed by output name.")
        return list(value)
    if len(names) > 1 and not single_ok:
        raise NbnetError(f"compile({what}=...): the model has {len(names)} outputs {names}; give a list with one "
                         "entry per output, or a dict keyed by output name.")
    return [value] * len(names) if len(names) > 1 else [value]


def _check_class_axis(name, shape, loss):
    """Keras's cross-entropies take the last axis as the classes and average over the other
    positions; nbnet's take one row of classes per sample, so an output with several
    positions (a Dense on (batch, steps, features)) is refused rather than trained wrongly."""
    if isinstance(loss, losses.CategoricalCrossentropy) and len(shape) > 1 and int(np.prod(shape[:-1])) > 1:
        raise NbnetError(f"compile: output {name!r} has shape {(None,) + tuple(shape)}; nbnet's {loss.name} takes "
                         "one row of classes per sample, (batch, classes). Flatten the output (e.g. Flatten() or "
                         "GlobalAveragePooling before the last Dense), or use an element-wise loss such as "
                         "'binary_crossentropy' or 'mse'.")


def compile_heads(names, shapes, loss, loss_weights, metrics):
    """The OutputHeads compile makes, as Keras spreads ``loss``, ``loss_weights`` and
    ``metrics`` over the outputs named ``names``."""
    several = len(names) > 1
    if loss is None:
        raise NbnetError("compile needs a loss, e.g. loss='sparse_categorical_crossentropy'.")
    loss_list = _per_output(loss, names, "loss", single_ok=True)
    if any(item is None for item in loss_list):
        missing = [name for name, item in zip(names, loss_list) if item is None]
        raise NbnetError(f"compile(loss=...): no loss for the output(s) {missing}; nbnet trains every output.")
    weights = [1.0] * len(names) if loss_weights is None else _per_output(loss_weights, names, "loss_weights", False)
    weights = [1.0 if w is None else w for w in weights]
    for name, weight in zip(names, weights):
        if not (isinstance(weight, (int, float)) and np.isfinite(weight) and weight >= 0):
            raise NbnetError(f"compile(loss_weights=...): the weight of output {name!r} must be a finite number "
                             f">= 0, received {weight!r}.")
    if metrics is None:
        metric_lists = [[] for _ in names]
    elif several or isinstance(metrics, dict):
        metric_lists = _per_output(metrics, names, "metrics", single_ok=False)
    else:
        metric_lists = [metrics]
    heads = []
    for index, (name, shape, item, weight, chosen) in enumerate(zip(names, shapes, loss_list, weights, metric_lists)):
        resolved_loss = losses.get(item)
        _check_class_axis(name, shape, resolved_loss)
        chosen = [] if chosen is None else chosen if isinstance(chosen, (list, tuple)) else [chosen]
        heads.append(OutputHead(index, name, shape, resolved_loss, weight,
                                metrics_module.resolve(list(chosen), resolved_loss), several))
    return heads


def target_arrays(y, names, argument="y"):
    """``y`` as a list with one target array per output: an array (one output), a list or
    tuple in the outputs' order, or a dict keyed by output name."""
    if y is None:
        raise NbnetError(f"{argument}: training and evaluation need targets; received None.")
    if isinstance(y, dict):
        missing = [name for name in names if name not in y]
        if missing:
            raise NbnetError(f"{argument}: the model's outputs are {names}; the dict given has the keys {list(y)}.")
        return [np.asarray(y[name]) for name in names]
    if len(names) > 1:
        if not isinstance(y, (list, tuple)) or len(y) != len(names):
            raise NbnetError(f"{argument}: the model has {len(names)} outputs {names}; give a list of {len(names)} "
                             "target arrays or a dict keyed by output name.")
        return [np.asarray(item) for item in y]
    if isinstance(y, (list, tuple)) and len(y) == 1 and np.ndim(y[0]) >= 1:
        return [np.asarray(y[0])]
    return [np.asarray(y)]


def prepare_targets(heads, y, count, argument="y"):
    """The targets of each head as its loss wants them, checked against ``count`` samples."""
    arrays = target_arrays(y, [head.name for head in heads], argument)
    prepared = []
    for head, array in zip(heads, arrays):
        if len(array) != count:
            label = argument if len(heads) == 1 else f"{argument}[{head.name!r}]"
            raise ShapeError(f"x and {label} must have the same number of samples; received {count} and "
                             f"{len(array)}.")
        prepared.append(head.loss.prepare_targets(array, head.width))
    return prepared
