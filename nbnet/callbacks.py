"""Training callbacks with Keras's names; subclass ``Callback`` to write your own.

Hooks receive ``logs``, a dict of plain floats ('loss', 'accuracy', 'val_loss', ...).
A callback reaches the model through ``self.model``; setting
``self.model.stop_training = True`` ends ``fit`` after the current epoch.
"""

import math

import numpy as np

from .errors import NbnetError


class Callback:
    model = None

    def set_model(self, model):
        self.model = model

    def on_train_begin(self, logs=None):
        pass

    def on_train_end(self, logs=None):
        pass

    def on_epoch_begin(self, epoch, logs=None):
        pass

    def on_epoch_end(self, epoch, logs=None):
        pass

    def on_train_batch_end(self, batch, logs=None):
        pass


class History(Callback):
    """Collects each epoch's logs: ``history.history['loss']`` is a list of floats."""

    def __init__(self):
        self.history = {}
        self.epoch = []

    def on_epoch_end(self, epoch, logs=None):
        self.epoch.append(epoch)
        for key, value in (logs or {}).items():
            self.history.setdefault(key, []).append(float(value))


class _Monitor:
    """Tracks the best value of a logged metric ('min' for losses, 'max' for accuracies)."""

    def __init__(self, monitor, mode, min_delta=0.0):
        if mode not in ("auto", "min", "max"):
            raise NbnetError(f"{type(self).__name__}: mode must be 'auto', 'min' or 'max', received {mode!r}.")
        if mode == "auto":
            mode = "max" if ("acc" in monitor or monitor.endswith("auc")) else "min"
        self.monitor, self.mode, self.min_delta = monitor, mode, abs(min_delta)
        self.best = math.inf if mode == "min" else -math.inf

    def current(self, logs):
        if self.monitor not in (logs or {}):
            raise NbnetError(
                f"{type(self).__name__}: cannot monitor {self.monitor!r}; the logs hold {sorted(logs or {})}. "
                "Monitor 'val_…' only when fit gets validation data."
            )
        return float(logs[self.monitor])

    def improved(self, value):
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta


class EarlyStopping(Callback, _Monitor):
    def __init__(self, monitor="val_loss", min_delta=0.0, patience=0, mode="auto", restore_best_weights=False,
                 verbose=0):
        _Monitor.__init__(self, monitor, mode, min_delta)
        self.patience, self.restore_best_weights, self.verbose = int(patience), restore_best_weights, verbose
        self.wait, self.stopped_epoch, self.best_weights, self.best_epoch = 0, None, None, None

    def on_epoch_end(self, epoch, logs=None):
        value = self.current(logs)
        if self.improved(value):
            self.best, self.best_epoch, self.wait = value, epoch, 0
            if self.restore_best_weights:
                self.best_weights = self.model.get_weights()
            return
        self.wait += 1
        if self.wait > self.patience:
            self.stopped_epoch = epoch
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        if self.stopped_epoch is not None and self.verbose:
            print(f"Epoch {self.stopped_epoch + 1}: early stopping")
        if self.restore_best_weights and self.best_weights is not None and self.stopped_epoch is not None:
            if self.verbose:
                print(f"Restoring model weights from the end of the best epoch: {self.best_epoch + 1}.")
            self.model.set_weights(self.best_weights)


class ModelCheckpoint(Callback, _Monitor):
    """Save the model after each epoch (or only when ``monitor`` improves); ``filepath``
    may hold ``{epoch}`` and log keys, e.g. ``'ckpt-{epoch:02d}-{val_loss:.3f}.nbnet'``."""

    def __init__(self, filepath, monitor="val_loss", save_best_only=False, mode="auto", verbose=0):
        _Monitor.__init__(self, monitor, mode)
        self.filepath, self.save_best_only, self.verbose = str(filepath), save_best_only, verbose

    def on_epoch_end(self, epoch, logs=None):
        path = self.filepath.format(epoch=epoch + 1, **(logs or {}))
        if self.save_best_only:
            value = self.current(logs)
            if not self.improved(value):
                return
            if self.verbose:
                print(f"Epoch {epoch + 1}: {self.monitor} improved from {self.best:.5f} to {value:.5f}, saving model to {path}")
            self.best = value
        self.model.save(path)


class LearningRateScheduler(Callback):
    """Set the learning rate at each epoch's start from ``schedule(epoch, lr)``."""

    def __init__(self, schedule):
        self.schedule = schedule

    def on_epoch_begin(self, epoch, logs=None):
        optimizer = self.model.optimizer
        optimizer.learning_rate = float(self.schedule(epoch, optimizer.current_learning_rate()))


class TerminateOnNaN(Callback):
    def on_train_batch_end(self, batch, logs=None):
        if not np.isfinite(logs.get("loss", 0.0)):
            print(f"Batch {batch}: invalid loss, terminating training")
            self.model.stop_training = True
