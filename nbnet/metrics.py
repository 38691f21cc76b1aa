"""Keras's metrics: objects with ``update_state`` / ``result`` / ``reset_state`` (and
``metric(y_true, y_pred)``), usable standalone and in ``compile(metrics=[...])``.

During fit, one accuracy (the first of Keras's accuracy metrics that the loss's targets
allow) is counted on the device with the step, exactly per sample whatever the batch size;
every other metric updates from each batch's outputs on the host, as Keras's running
means do. The log key is the metric's name: ``metrics=['acc']`` logs 'acc' and 'val_acc'.
"""

import numpy as np

from .devices import cpu
from .errors import NbnetError
from .losses import split_targets
from .tensor import as_tensor


class Metric:
    """A running value over the batches it is given; ``reset_state`` starts it afresh."""

    default_name = "metric"
    # Keras numbers unnamed Precision, Recall and AUC objects (precision, precision_1, ...).
    unique_names = False

    def __init__(self, name=None, dtype=None):
        if name is None and self.unique_names:
            from .layers.base import unique_name

            name = unique_name(self.default_name)
        self.name = name or self.default_name
        self.reset_state()

    def reset_state(self):
        raise NotImplementedError

    def reset_states(self):  # Keras 2's name
        self.reset_state()

    def update_state(self, y_true, y_pred, sample_weight=None):
        raise NotImplementedError

    def result(self):
        raise NotImplementedError

    def __call__(self, *args, **kwargs):
        """As Keras 3: update with this batch, return the running result."""
        self.update_state(*args, **kwargs)
        return self.result()

    def get_config(self):
        return {"name": self.name}

    def __repr__(self):
        return f"<{type(self).__name__} name={self.name}>"


class Mean(Metric):
    """The (weighted) mean of every value given."""

    default_name = "mean"

    def reset_state(self):
        self.total, self.count = 0.0, 0.0

    def update_state(self, values, sample_weight=None):
        values = np.asarray(values, np.float64)
        if sample_weight is None:
            self.total += float(values.sum())
            self.count += values.size
            return
        weights = np.broadcast_to(np.asarray(sample_weight, np.float64).reshape(
            np.shape(sample_weight) + (1,) * (values.ndim - np.ndim(sample_weight))), values.shape)
        self.total += float((values * weights).sum())
        self.count += float(weights.sum())

    def result(self):
        return as_tensor(np.float32(self.total / self.count if self.count else 0.0))


class MeanMetricWrapper(Mean):
    """The mean over samples of ``fn(y_true, y_pred)``, one value per sample."""

    def __init__(self, fn, name=None, dtype=None, **kwargs):
        self._fn, self._fn_kwargs = fn, kwargs
        super().__init__(name=name, dtype=dtype)

    def update_state(self, y_true, y_pred, sample_weight=None):
        super().update_state(self._fn(np.asarray(y_true), np.asarray(y_pred), **self._fn_kwargs), sample_weight)

    def get_config(self):
        return {"name": self.name, **self._fn_kwargs}


def _rows(y_pred):
    y_pred = np.asarray(y_pred)
    return y_pred.reshape(len(y_pred), -1) if y_pred.ndim > 1 else y_pred.reshape(-1, 1)


def _labels(y_true):
    y_true = np.asarray(y_true)
    return y_true.reshape(len(y_true), -1)[:, 0] if y_true.ndim > 1 else y_true


def accuracy(y_true, y_pred):
    """1 where prediction and target are equal (Keras's Accuracy: exact values)."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    equal = (y_true.reshape(y_pred.shape) == y_pred) if y_true.size == y_pred.size else (y_true == y_pred)
    return equal.reshape(len(equal), -1).mean(axis=1) if equal.ndim > 1 else equal.astype(np.float64)


def binary_accuracy(y_true, y_pred, threshold=0.5):
    y_pred = np.asarray(y_pred)
    hits = (np.asarray(y_true).reshape(y_pred.shape) == (y_pred > threshold))
    return hits.reshape(len(hits), -1).mean(axis=1)


def categorical_accuracy(y_true, y_pred):
    return (np.argmax(_rows(y_true), axis=1) == np.argmax(_rows(y_pred), axis=1)).astype(np.float64)


def sparse_categorical_accuracy(y_true, y_pred):
    return (_labels(y_true).astype(np.int64) == np.argmax(_rows(y_pred), axis=1)).astype(np.float64)


def _in_top_k(labels, y_pred, k):
    rows = _rows(y_pred)
    target_scores = rows[np.arange(len(rows)), labels]
    # In the top k when fewer than k classes score strictly higher.
    return ((rows > target_scores[:, None]).sum(axis=1) < k).astype(np.float64)


def top_k_categorical_accuracy(y_true, y_pred, k=5):
    return _in_top_k(np.argmax(_rows(y_true), axis=1), y_pred, k)


def sparse_top_k_categorical_accuracy(y_true, y_pred, k=5):
    return _in_top_k(_labels(y_true).astype(np.int64), y_pred, k)


def mean_squared_error(y_true, y_pred):
    y_pred = _rows(y_pred).astype(np.float64)
    return ((np.asarray(y_true, np.float64).reshape(y_pred.shape) - y_pred) ** 2).mean(axis=1)


def mean_absolute_error(y_true, y_pred):
    y_pred = _rows(y_pred).astype(np.float64)
    return np.abs(np.asarray(y_true, np.float64).reshape(y_pred.shape) - y_pred).mean(axis=1)


def _wrapper(fn, default_name, **defaults):
    class Wrapped(MeanMetricWrapper):
        def __init__(self, name=default_name, dtype=None, **kwargs):
            super().__init__(fn, name=name, dtype=dtype, **{**defaults, **kwargs})

    return Wrapped


class Accuracy(_wrapper(accuracy, "accuracy")):
    pass


class BinaryAccuracy(_wrapper(binary_accuracy, "binary_accuracy", threshold=0.5)):
    pass


class CategoricalAccuracy(_wrapper(categorical_accuracy, "categorical_accuracy")):
    pass


class SparseCategoricalAccuracy(_wrapper(sparse_categorical_accuracy, "sparse_categorical_accuracy")):
    pass


class TopKCategoricalAccuracy(_wrapper(top_k_categorical_accuracy, "top_k_categorical_accuracy", k=5)):
    pass


class SparseTopKCategoricalAccuracy(_wrapper(sparse_top_k_categorical_accuracy, "sparse_top_k_categorical_accuracy",
                                             k=5)):
    pass


class MeanSquaredError(_wrapper(mean_squared_error, "mean_squared_error")):
    pass


class MeanAbsoluteError(_wrapper(mean_absolute_error, "mean_absolute_error")):
    pass


class RootMeanSquaredError(MeanSquaredError):
    """The square root of MeanSquaredError's (weighted) mean, as Keras's."""

    def __init__(self, name="root_mean_squared_error", dtype=None):
        super().__init__(name=name, dtype=dtype)

    def result(self):
        return as_tensor(np.float32(np.sqrt(self.total / self.count) if self.count else 0.0))


class _Confusion(Metric):
    """True/false positive/negative counts at each threshold: a prediction is positive
    when it is strictly above the threshold, as Keras counts."""

    def __init__(self, thresholds=None, top_k=None, class_id=None, name=None, dtype=None):
        if top_k is not None:
            raise NbnetError(f"{type(self).__name__}: top_k is not supported; leave it out (threshold 0.5) "
                             "or give thresholds=.")
        self.thresholds = np.atleast_1d(np.asarray(0.5 if thresholds is None else thresholds, np.float64))
        self.class_id = class_id
        super().__init__(name=name, dtype=dtype)

    def get_config(self):
        return {"name": self.name, "thresholds": self.thresholds.tolist(), "class_id": self.class_id}

    def reset_state(self):
        n = len(self.thresholds)
        self.true_positives, self.false_positives = np.zeros(n), np.zeros(n)
        self.true_negatives, self.false_negatives = np.zeros(n), np.zeros(n)

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_pred, y_true = _rows(np.asarray(y_pred, np.float64)), _rows(y_true)
        if y_true.shape != y_pred.shape:
            raise NbnetError(f"{type(self).__name__}: y_true has shape {y_true.shape} and y_pred {y_pred.shape}; "
                             "they must match (one-hot targets for a softmax output).")
        if self.class_id is not None:
            y_pred, y_true = y_pred[:, [self.class_id]], y_true[:, [self.class_id]]
        weights = np.ones_like(y_pred) if sample_weight is None else np.broadcast_to(
            np.asarray(sample_weight, np.float64).reshape(len(y_pred), -1), y_pred.shape)
        positive = y_pred.reshape(-1)[None, :] > self.thresholds[:, None]
        truth, weights = y_true.reshape(-1).astype(bool), weights.reshape(-1)
        self.true_positives += (positive & truth) @ weights
        self.false_positives += (positive & ~truth) @ weights
        self.true_negatives += (~positive & ~truth) @ weights
        self.false_negatives += (~positive & truth) @ weights


def _ratio(numerator, denominator):
    """numerator / denominator, 0 where the denominator is 0 (Keras's divide_no_nan)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denominator > 0, numerator / np.where(denominator > 0, denominator, 1.0), 0.0)


class Precision(_Confusion):
    default_name = "precision"
    unique_names = True

    def result(self):
        value = _ratio(self.true_positives, self.true_positives + self.false_positives)
        return as_tensor(np.float32(value[0] if len(value) == 1 else value))


class Recall(_Confusion):
    default_name = "recall"
    unique_names = True

    def result(self):
        value = _ratio(self.true_positives, self.true_positives + self.false_negatives)
        return as_tensor(np.float32(value[0] if len(value) == 1 else value))


class AUC(_Confusion):
    """Keras's AUC: confusion counts at ``num_thresholds`` evenly spaced thresholds (plus
    one below 0 and one above 1), the ROC or PR curve summed by the trapezoid rule
    ('interpolation'; for PR, Davis & Goadrich's interpolation, as Keras)."""

    default_name = "auc"
    unique_names = True

    def __init__(self, num_thresholds=200, curve="ROC", summation_method="interpolation", name=None, dtype=None,
                 thresholds=None):
        if curve.upper() not in ("ROC", "PR"):
            raise NbnetError(f"AUC: curve must be 'ROC' or 'PR', received {curve!r}.")
        if summation_method not in ("interpolation", "minoring", "majoring"):
            raise NbnetError(f"AUC: summation_method must be 'interpolation', 'minoring' or 'majoring', received "
                             f"{summation_method!r}.")
        inner = (sorted(thresholds) if thresholds is not None
                 else [(i + 1) / (num_thresholds - 1) for i in range(num_thresholds - 2)])
        self.curve, self.summation_method = curve.upper(), summation_method
        self.num_thresholds = len(inner) + 2
        self._given_thresholds = None if thresholds is None else list(thresholds)
        super().__init__(thresholds=[-1e-7] + list(inner) + [1.0 + 1e-7], name=name, dtype=dtype)

    def get_config(self):
        return {"name": self.name, "num_thresholds": self.num_thresholds, "curve": self.curve,
                "summation_method": self.summation_method, "thresholds": self._given_thresholds}

    def result(self):
        tp, fp, tn, fn = self.true_positives, self.false_positives, self.true_negatives, self.false_negatives
        if self.curve == "PR" and self.summation_method == "interpolation":
            return as_tensor(np.float32(self._interpolated_pr_auc()))
        recall = _ratio(tp, tp + fn)
        x, y = (_ratio(fp, fp + tn), recall) if self.curve == "ROC" else (recall, _ratio(tp, tp + fp))
        if self.summation_method == "interpolation":
            heights = (y[:-1] + y[1:]) / 2
        elif self.summation_method == "minoring":
            heights = np.minimum(y[:-1], y[1:])
        else:
            heights = np.maximum(y[:-1], y[1:])
        return as_tensor(np.float32(((x[:-1] - x[1:]) * heights).sum()))

    def _interpolated_pr_auc(self):
        tp, fp, fn = self.true_positives, self.false_positives, self.false_negatives
        dtp = tp[:-1] - tp[1:]
        p = tp + fp
        dp = p[:-1] - p[1:]
        slope = _ratio(dtp, np.maximum(dp, 0))
        intercept = tp[1:] - slope * p[1:]
        both = (p[:-1] > 0) & (p[1:] > 0)
        p_ratio = np.where(both, _ratio(p[:-1], np.maximum(p[1:], 0)), 1.0)
        with np.errstate(divide="ignore"):
            log_ratio = np.log(np.where(p_ratio > 0, p_ratio, 1.0))
        return _ratio(slope * (dtp + intercept * log_ratio), np.maximum(tp[1:] + fn[1:], 0)).sum()


_CLASSES = {cls.__name__: cls for cls in (
    Mean, Accuracy, BinaryAccuracy, CategoricalAccuracy, SparseCategoricalAccuracy, TopKCategoricalAccuracy,
    SparseTopKCategoricalAccuracy, MeanSquaredError, MeanAbsoluteError, RootMeanSquaredError, Precision, Recall,
    AUC)}
_BY_NAME = {
    "binary_accuracy": BinaryAccuracy, "categorical_accuracy": CategoricalAccuracy,
    "sparse_categorical_accuracy": SparseCategoricalAccuracy, "top_k_categorical_accuracy": TopKCategoricalAccuracy,
    "sparse_top_k_categorical_accuracy": SparseTopKCategoricalAccuracy, "mean_squared_error": MeanSquaredError,
    "mse": MeanSquaredError, "mean_absolute_error": MeanAbsoluteError, "mae": MeanAbsoluteError,
    "root_mean_squared_error": RootMeanSquaredError,
    "precision": Precision, "recall": Recall, "auc": AUC,
}
# Keras's loss-dependent accuracy names.
ACCURACY_NAMES = ("accuracy", "acc")


def serialize(metric):
    return {"class_name": type(metric).__name__, "config": metric.get_config()}


def get(identifier, loss=None):
    """A Metric from an instance, a class, a Keras name or function, or ``serialize``'s
    dict. 'accuracy' and 'acc' become the accuracy that fits ``loss`` (sparse,
    categorical or binary), named as given."""
    if isinstance(identifier, Metric):
        return identifier
    if isinstance(identifier, dict) and identifier.get("class_name") in _CLASSES:
        return _CLASSES[identifier["class_name"]](**identifier.get("config", {}))
    if isinstance(identifier, type) and issubclass(identifier, Metric):
        return identifier()
    if callable(identifier) and getattr(identifier, "__name__", None) in _BY_NAME:
        identifier = identifier.__name__
    if isinstance(identifier, str):
        if identifier in ACCURACY_NAMES:
            return _accuracy_for(loss)(name=identifier)
        if identifier in _BY_NAME:
            return _BY_NAME[identifier](name=identifier)
        if identifier in _CLASSES:
            return _CLASSES[identifier]()
    known = sorted(set(ACCURACY_NAMES) | set(_BY_NAME) | set(_CLASSES))
    raise NbnetError(f"Unknown metric {identifier!r}; nbnet knows {', '.join(known)}, or a nbnet.metrics.Metric.")


def _accuracy_for(loss):
    name = getattr(loss, "name", None)
    if name == "sparse_categorical_crossentropy":
        return SparseCategoricalAccuracy
    if name == "categorical_crossentropy":
        return CategoricalAccuracy
    if name == "binary_crossentropy":
        return BinaryAccuracy
    return Accuracy


def resolve(metrics, loss=None):
    """The compiled metrics as Metric objects; their names must be distinct (they are log keys)."""
    if isinstance(metrics, dict):
        raise NbnetError("compile(metrics=...): a dict of metrics per output needs a model with several outputs; "
                         "give a list.")
    resolved = [get(metric, loss) for metric in (metrics or [])]
    names = [metric.name for metric in resolved]
    if len(set(names)) != len(names):
        raise NbnetError(f"compile(metrics=...): two metrics share a name in {names}; give each its own name=.")
    return resolved


def counted_on_device(metric, loss, output_width):
    """Whether the training step's correct count gives ``metric`` exactly: an argmax
    accuracy against the loss's targets, or a 0.5-threshold accuracy of one sigmoid unit."""
    sparse = getattr(loss, "sparse_targets", False)
    kind = type(metric)
    if kind is SparseCategoricalAccuracy:
        return sparse
    if kind is CategoricalAccuracy:
        return not sparse and output_width > 1
    if kind is BinaryAccuracy:
        return output_width == 1 and metric._fn_kwargs.get("threshold") == 0.5
    return False


def correct_count(outputs, targets, sparse, threshold=0.5, ops=cpu, out=None):
    """How many predictions are right: argmax against class ids or one-hot rows, or, for
    a single output unit, the output against ``threshold``. Returns the count, or, given
    ``out`` (a (1,) float64 array on the device ``ops``), writes it there."""
    outputs = outputs.reshape(outputs.shape[0], outputs.size // max(outputs.shape[0], 1))
    labels, rows = split_targets(targets, sparse, ops)
    target = out if out is not None else np.zeros(1)
    ops.count_correct(outputs, labels, rows, float(threshold), target)
    return out if out is not None else float(target[0])
