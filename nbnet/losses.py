"""Losses with Keras's names. Each knows how to compute its mean loss and gradient on a
batch; cross-entropy after a softmax (or sigmoid) output layer is fused by the model into
one log-sum-exp kernel on the logits, which is both faster and numerically stable."""

import numpy as np

from .devices import cpu
from .errors import NbnetError
from .tensor import as_tensor
# Keras's backend epsilon: probabilities are clipped to [EPSILON, 1 - EPSILON].
EPSILON = 1e-7


class Loss:
    name = None
    # Which output activation the model may fuse into this loss on logits.
    fusable_activation = None
    sparse_targets = False

    def __init__(self, from_logits=False):
        self.from_logits = bool(from_logits)

    def prepare_targets(self, y, output_width):
        """Targets as the kernels take them: int64 class ids (sparse) or float32 rows of
        the model's output width."""
        y = np.asarray(y)
        if y.dtype.kind not in "fiub":
            raise NbnetError(f"y: expected numeric targets for {self.name}, received dtype {y.dtype}.")
        if self.sparse_targets:
            if y.ndim > 1 and y.shape[1:] != (1,):
                raise NbnetError(f"y: {self.name} expects integer class ids of shape (N,), but received shape "
                                 f"{y.shape}; for one-hot targets use loss='categorical_crossentropy'.")
            labels = y.reshape(-1)
            if labels.dtype.kind == "f" and not np.array_equal(labels, np.round(labels)):
                raise NbnetError(f"y: {self.name} expects integer class ids, but received non-integer values.")
            return labels.astype(np.int64)
        rows = y.reshape(len(y), -1).astype(np.float32)
        if rows.shape[1] != output_width:
            raise NbnetError(f"y: {self.name} needs targets of width {output_width} (the model's output), but "
                             f"received shape {y.shape}" + ("; for class ids use loss='sparse_categorical_crossentropy'."
                                                             if rows.shape[1] == 1 and output_width > 1 else "."))
        if not np.isfinite(rows).all():
            raise NbnetError(f"y: contains NaN or Inf values; {self.name} needs finite targets.")
        return rows

    def compute(self, outputs, targets, grad, on_logits, ops=cpu, total_out=None, weights=None):
        """Summed loss over the batch; writes d(mean loss)/d(outputs) into ``grad``.
        ``on_logits``: the outputs are logits (from_logits, or the fused path). ``weights``:
        one per sample (Keras's sample_weight), or None. The arrays live on the device
        ``ops``; given ``total_out`` the sum is written there instead (on the GPU it then
        stays on the device)."""
        raise NotImplementedError

    def __call__(self, y_true, y_pred):
        """The mean loss of a batch, as Keras's ``loss(y_true, y_pred)`` (a float32 scalar
        that also answers ``.numpy()``)."""
        y_pred = np.asarray(y_pred, np.float32)
        y_pred = y_pred.reshape(len(y_pred), -1)
        grad = np.empty_like(y_pred)
        total = self.compute(y_pred, self.prepare_targets(y_true, y_pred.shape[1]), grad, self.from_logits)
        return as_tensor(np.float32(total / len(y_pred)))

    def get_config(self):
        return {"name": self.name, "from_logits": self.from_logits}


class CategoricalCrossentropy(Loss):
    name = "categorical_crossentropy"
    fusable_activation = "softmax"

    def compute(self, outputs, targets, grad, on_logits, ops=cpu, total_out=None, weights=None):
        labels, rows = split_targets(targets, self.sparse_targets, ops)
        weights = _weights_or_none(weights, ops)
        if on_logits:
            return ops.softmax_crossentropy_from_logits(outputs, rows, labels, weights, grad, total_out=total_out)
        return ops.crossentropy_from_probabilities(outputs, rows, labels, weights, EPSILON, grad, total_out=total_out)


class SparseCategoricalCrossentropy(CategoricalCrossentropy):
    name = "sparse_categorical_crossentropy"
    sparse_targets = True

    def prepare_targets(self, y, output_width):
        labels = super().prepare_targets(y, output_width)
        if labels.size and (labels.min() < 0 or labels.max() >= output_width):
            raise NbnetError(
                f"{self.name}: labels must be class ids in [0, {output_width - 1}] for a model with "
                f"{output_width} outputs, but received labels in [{labels.min()}, {labels.max()}]."
            )
        return labels


class BinaryCrossentropy(Loss):
    name = "binary_crossentropy"
    fusable_activation = "sigmoid"

    def compute(self, outputs, targets, grad, on_logits, ops=cpu, total_out=None, weights=None):
        weights = _weights_or_none(weights, ops)
        if on_logits:
            return ops.sigmoid_crossentropy_from_logits(outputs, targets, weights, grad, total_out=total_out)
        return ops.binary_crossentropy_from_probabilities(outputs, targets, weights, EPSILON, grad, total_out=total_out)


class MeanSquaredError(Loss):
    name = "mean_squared_error"

    def compute(self, outputs, targets, grad, on_logits, ops=cpu, total_out=None, weights=None):
        return ops.mean_squared_error(outputs, targets, _weights_or_none(weights, ops), grad, total_out=total_out)


class MeanAbsoluteError(Loss):
    name = "mean_absolute_error"

    def compute(self, outputs, targets, grad, on_logits, ops=cpu, total_out=None, weights=None):
        return ops.mean_absolute_error(outputs, targets, _weights_or_none(weights, ops), grad, total_out=total_out)


class Huber(Loss):
    """Keras's Huber loss: quadratic for differences up to ``delta``, linear beyond."""

    name = "huber"

    def __init__(self, delta=1.0, from_logits=False):
        super().__init__(from_logits)
        self.delta = float(delta)
        if not self.delta > 0:
            raise NbnetError(f"Huber: delta must be positive, received {delta!r}.")

    def compute(self, outputs, targets, grad, on_logits, ops=cpu, total_out=None, weights=None):
        return ops.huber(outputs, targets, _weights_or_none(weights, ops), self.delta, grad, total_out=total_out)

    def get_config(self):
        return {**super().get_config(), "delta": self.delta}


class MeanSquaredLogarithmicError(Loss):
    name = "mean_squared_logarithmic_error"

    def compute(self, outputs, targets, grad, on_logits, ops=cpu, total_out=None, weights=None):
        return ops.mean_squared_logarithmic_error(outputs, targets, _weights_or_none(weights, ops), EPSILON, grad,
                                                  total_out=total_out)


class MeanAbsolutePercentageError(Loss):
    name = "mean_absolute_percentage_error"

    def compute(self, outputs, targets, grad, on_logits, ops=cpu, total_out=None, weights=None):
        return ops.mean_absolute_percentage_error(outputs, targets, _weights_or_none(weights, ops), EPSILON, grad,
                                                  total_out=total_out)


def _weights_or_none(weights, ops):
    """Per-sample weights as the kernels take them: an empty array for none."""
    return ops.nothing(np.float32) if weights is None else weights


def split_targets(targets, sparse, ops=cpu):
    """(class ids, one-hot rows) as the kernels take them: the unused one is empty."""
    if sparse:
        return targets, ops.nothing(np.float32, 2)
    return ops.nothing(np.int64), targets


def per_sample(loss, y_true, y_pred):
    """Keras's loss functions: one loss per sample (the batch axis kept), as a float32 array."""
    y_pred = np.asarray(y_pred, np.float32)
    rows = y_pred.reshape(len(y_pred), -1)
    targets = loss.prepare_targets(y_true, rows.shape[1])
    grad = np.empty_like(rows[:1])
    values = np.array([loss.compute(rows[i:i + 1], targets[i:i + 1], grad, loss.from_logits)
                       for i in range(len(rows))], np.float32)
    return as_tensor(values)


def categorical_crossentropy(y_true, y_pred, from_logits=False):
    return per_sample(CategoricalCrossentropy(from_logits=from_logits), y_true, y_pred)


def sparse_categorical_crossentropy(y_true, y_pred, from_logits=False):
    return per_sample(SparseCategoricalCrossentropy(from_logits=from_logits), y_true, y_pred)


def binary_crossentropy(y_true, y_pred, from_logits=False):
    return per_sample(BinaryCrossentropy(from_logits=from_logits), y_true, y_pred)


def mean_squared_error(y_true, y_pred):
    return per_sample(MeanSquaredError(), y_true, y_pred)


def mean_absolute_error(y_true, y_pred):
    return per_sample(MeanAbsoluteError(), y_true, y_pred)


def huber(y_true, y_pred, delta=1.0):
    return per_sample(Huber(delta), y_true, y_pred)


def mean_squared_logarithmic_error(y_true, y_pred):
    return per_sample(MeanSquaredLogarithmicError(), y_true, y_pred)


def mean_absolute_percentage_error(y_true, y_pred):
    return per_sample(MeanAbsolutePercentageError(), y_true, y_pred)


mse = MSE = mean_squared_error
mae = MAE = mean_absolute_error
msle = MSLE = mean_squared_logarithmic_error
mape = MAPE = mean_absolute_percentage_error

_BY_NAME = {
    "categorical_crossentropy": CategoricalCrossentropy,
    "sparse_categorical_crossentropy": SparseCategoricalCrossentropy,
    "binary_crossentropy": BinaryCrossentropy,
    "mean_squared_error": MeanSquaredError,
    "mse": MeanSquaredError,
    "mean_absolute_error": MeanAbsoluteError,
    "mae": MeanAbsoluteError,
    "huber": Huber,
    "huber_loss": Huber,  # the name Keras gives a Huber object
    "mean_squared_logarithmic_error": MeanSquaredLogarithmicError,
    "msle": MeanSquaredLogarithmicError,
    "mean_absolute_percentage_error": MeanAbsolutePercentageError,
    "mape": MeanAbsolutePercentageError,
}
# compile(loss=keras.losses.categorical_crossentropy): the function stands for its class.
_BY_FUNCTION = {categorical_crossentropy: CategoricalCrossentropy,
                sparse_categorical_crossentropy: SparseCategoricalCrossentropy,
                binary_crossentropy: BinaryCrossentropy, mean_squared_error: MeanSquaredError,
                mean_absolute_error: MeanAbsoluteError, huber: Huber,
                mean_squared_logarithmic_error: MeanSquaredLogarithmicError,
                mean_absolute_percentage_error: MeanAbsolutePercentageError}


def get(identifier):
    """A Loss from an instance, a Keras name, one of Keras's loss functions, or a config dict."""
    if isinstance(identifier, Loss):
        return identifier
    if isinstance(identifier, dict):
        config = dict(identifier)
        return _BY_NAME[config.pop("name")](**config)
    if isinstance(identifier, str) and identifier.lower() in _BY_NAME:
        return _BY_NAME[identifier.lower()]()
    by_class = {cls.__name__: cls for cls in _BY_NAME.values()}
    if isinstance(identifier, str) and identifier in by_class:  # Keras also takes a class's name
        return by_class[identifier]()
    if callable(identifier) and identifier in _BY_FUNCTION:
        return _BY_FUNCTION[identifier]()
    raise NbnetError(f"Unknown loss {identifier!r}; nbnet supports {', '.join(_BY_NAME)}, their classes "
                     "(nbnet.losses.CategoricalCrossentropy(...)) or functions (nbnet.losses.categorical_crossentropy).")

