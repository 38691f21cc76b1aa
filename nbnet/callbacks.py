"""Training callbacks with Keras's names; subclass ``Callback`` to write your own.

Hooks receive ``logs``, a dict of plain floats ('loss', 'accuracy', 'val_loss', ...).
A callback reaches the model through ``self.model``; setting
``self.model.stop_training = True`` ends ``fit`` after the current epoch.
"""

import csv
import os
import re
import time
import warnings

import numpy as np

from .errors import NbnetError


class Callback:
    """Keras's hook set. As in Keras, the train batch hooks call the older
    ``on_batch_begin``/``on_batch_end`` by default, so a callback that overrides those
    still runs."""

    model = None
    params = None

    def set_model(self, model):
        self.model = model

    def set_params(self, params):
        self.params = params

    def on_train_begin(self, logs=None):
        pass

    def on_train_end(self, logs=None):
        pass

    def on_epoch_begin(self, epoch, logs=None):
        pass

    def on_epoch_end(self, epoch, logs=None):
        pass

    def on_batch_begin(self, batch, logs=None):
        pass

    def on_batch_end(self, batch, logs=None):
        pass

    def on_train_batch_begin(self, batch, logs=None):
        self.on_batch_begin(batch, logs=logs)

    def on_train_batch_end(self, batch, logs=None):
        self.on_batch_end(batch, logs=logs)

    def on_test_begin(self, logs=None):
        pass

    def on_test_end(self, logs=None):
        pass

    def on_test_batch_begin(self, batch, logs=None):
        pass

    def on_test_batch_end(self, batch, logs=None):
        pass

    def on_predict_begin(self, logs=None):
        pass

    def on_predict_end(self, logs=None):
        pass

    def on_predict_batch_begin(self, batch, logs=None):
        pass

    def on_predict_batch_end(self, batch, logs=None):
        pass


class LambdaCallback(Callback):
    """Keras's LambdaCallback: each hook given as a function of the hook's arguments."""

    _HOOKS = ("on_epoch_begin", "on_epoch_end", "on_train_begin", "on_train_end", "on_train_batch_begin",
              "on_train_batch_end")

    def __init__(self, on_epoch_begin=None, on_epoch_end=None, on_train_begin=None, on_train_end=None,
                 on_train_batch_begin=None, on_train_batch_end=None, **kwargs):
        given = dict(zip(self._HOOKS, (on_epoch_begin, on_epoch_end, on_train_begin, on_train_end,
                                       on_train_batch_begin, on_train_batch_end)))
        # Keras 2's names for the train batch hooks, and the test/predict hooks.
        given["on_train_batch_begin"] = given["on_train_batch_begin"] or kwargs.pop("on_batch_begin", None)
        given["on_train_batch_end"] = given["on_train_batch_end"] or kwargs.pop("on_batch_end", None)
        for name in list(kwargs):
            if not (name.startswith("on_") and hasattr(Callback, name)):
                raise NbnetError(f"LambdaCallback: unknown hook {name}=; Keras's hooks are on_epoch_begin, "
                                 "on_epoch_end, on_train_begin, on_train_end, on_train_batch_begin, on_train_batch_end, "
                                 "on_test_*, on_predict_*.")
        given.update(kwargs)
        for name, function in given.items():
            if function is not None:
                setattr(self, name, function)


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
    """Tracks the best value of a logged metric ('min' for losses, 'max' for accuracies),
    as Keras 3's MonitorCallback: the first value seen is the best so far."""

    def __init__(self, monitor, mode, min_delta=0.0):
        if mode not in ("auto", "min", "max"):
            raise NbnetError(f"{type(self).__name__}: mode must be 'auto', 'min' or 'max', received {mode!r}.")
        if mode == "auto":
            mode = _direction(monitor, type(self).__name__)
        self.monitor, self.mode, self.min_delta = monitor, mode, abs(min_delta)
        self.best = None
        self._warned = False

    def current(self, logs):
        """The monitored value, or None (with one warning, as Keras) when the logs lack it."""
        if self.monitor not in (logs or {}):
            if not self._warned:
                warnings.warn(f"{type(self).__name__}: cannot monitor {self.monitor!r}, the logs hold "
                              f"{sorted(logs or {})}; monitor 'val_...' only when fit gets validation data.",
                              stacklevel=3)
                self._warned = True
            return None
        return float(logs[self.monitor])

    def improved(self, value, reference=None):
        """Whether ``value`` beats ``reference`` (default: the best so far) by more than min_delta."""
        reference = self.best if reference is None else reference
        if reference is None:
            return True
        if self.mode == "min":
            return value + self.min_delta < reference
        return value - self.min_delta > reference


def _direction(monitor, owner):
    """Keras's 'auto' mode: 'min' for losses and errors, 'max' for accuracies, AUC,
    precision and recall (by the metric's name, numbered or not); anything else Keras
    refuses to guess, and so does nbnet."""
    name = re.sub(r"_\d+$", "", monitor.removeprefix("val_"))
    if name == "loss" or name.endswith("_loss") or name in _FALLING:
        return "min"
    if "acc" in name or name in _RISING:
        return "max"
    raise NbnetError(f"{owner}: cannot tell whether {monitor!r} should rise or fall; pass mode='max' or mode='min'.")


_FALLING = ("mse", "mae", "mean_squared_error", "mean_absolute_error")
_RISING = ("auc", "precision", "recall")


class EarlyStopping(Callback, _Monitor):
    """Keras 3's EarlyStopping: every epoch from ``start_from_epoch`` on counts towards
    ``patience`` unless it improves on the best (and on ``baseline``, when given); with
    ``restore_best_weights`` the best epoch's weights are put back when training ends."""

    def __init__(self, monitor="val_loss", min_delta=0.0, patience=0, verbose=0, mode="auto", baseline=None,
                 restore_best_weights=False, start_from_epoch=0):
        _Monitor.__init__(self, monitor, mode, min_delta)
        self.patience, self.restore_best_weights, self.verbose = int(patience), bool(restore_best_weights), verbose
        self.baseline, self.start_from_epoch = baseline, int(start_from_epoch)
        self.on_train_begin()

    def on_train_begin(self, logs=None):
        # Keras resets here, so one callback serves several fits.
        self.wait, self.stopped_epoch, self.best, self.best_weights, self.best_epoch = 0, 0, None, None, 0

    def on_epoch_end(self, epoch, logs=None):
        value = self.current(logs)
        if value is None or epoch < self.start_from_epoch:
            return
        if self.restore_best_weights and self.best_weights is None:
            self.best_weights, self.best_epoch = self.model.get_weights(), epoch
        self.wait += 1
        if self.improved(value):
            self.best, self.best_epoch = value, epoch
            if self.restore_best_weights:
                self.best_weights = self.model.get_weights()
            if self.baseline is None or self.improved(value, float(self.baseline)):
                self.wait = 0
            return
        if self.wait >= self.patience and epoch > 0:
            self.stopped_epoch = epoch
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        if self.stopped_epoch > 0 and self.verbose:
            print(f"Epoch {self.stopped_epoch + 1}: early stopping")
        if self.restore_best_weights and self.best_weights is not None:
            if self.verbose:
                print(f"Restoring model weights from the end of the best epoch: {self.best_epoch + 1}.")
            self.model.set_weights(self.best_weights)


class ModelCheckpoint(Callback, _Monitor):
    """Save the model (or, with ``save_weights_only``, a Keras ``.weights.h5`` file) after
    each epoch, or every ``save_freq`` batches, or only when ``monitor`` improves;
    ``filepath`` may hold ``{epoch}``, ``{batch}`` and log keys, e.g.
    ``'ckpt-{epoch:02d}-{val_loss:.3f}.nbnet'``."""

    def __init__(self, filepath, monitor="val_loss", verbose=0, save_best_only=False, save_weights_only=False,
                 mode="auto", save_freq="epoch", initial_value_threshold=None):
        _Monitor.__init__(self, monitor, mode)
        self.filepath, self.save_best_only, self.verbose = str(filepath), save_best_only, verbose
        self.save_weights_only = bool(save_weights_only)
        if self.save_weights_only and not self.filepath.endswith(".weights.h5"):
            raise NbnetError(f"ModelCheckpoint: with save_weights_only=True the file name must end in .weights.h5 "
                             f"(Keras's weights format), received filepath={self.filepath!r}.")
        if save_freq != "epoch" and not (isinstance(save_freq, int) and save_freq > 0):
            raise NbnetError(f"ModelCheckpoint: save_freq must be 'epoch' or a positive number of batches, received "
                             f"{save_freq!r}.")
        self.save_freq = save_freq
        self.best = initial_value_threshold
        self._epoch, self._batches_since_save, self._last_batch = 0, 0, None

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.save_freq == "epoch":
            return
        # Keras's count: a batch index that did not grow means a new epoch began.
        seen = batch + 1 if self._last_batch is None or batch <= self._last_batch else batch - self._last_batch
        self._batches_since_save += seen
        self._last_batch = batch
        if self._batches_since_save >= self.save_freq:
            self._batches_since_save = 0
            self._save(self._epoch, batch, logs)

    def on_epoch_end(self, epoch, logs=None):
        if self.save_freq == "epoch":
            self._save(epoch, None, logs)

    def _save(self, epoch, batch, logs):
        logs = dict(logs or {})
        fields = {"epoch": epoch + 1, **logs}
        if batch is not None and "batch" not in logs:
            fields["batch"] = batch + 1
        path = self.filepath.format(**fields)
        if self.save_best_only:
            value = self.current(logs)
            if value is not None:  # Keras saves every time when the monitored value is missing
                if not self.improved(value):
                    if self.verbose:
                        print(f"Epoch {epoch + 1}: {self.monitor} did not improve from {self.best:.5f}")
                    return
                if self.verbose:
                    best = "None" if self.best is None else f"{self.best:.5f}"
                    print(f"Epoch {epoch + 1}: {self.monitor} improved from {best} to {value:.5f}, saving model to {path}")
                self.best = value
        elif self.verbose:
            print(f"Epoch {epoch + 1}: saving model to {path}")
        if self.save_weights_only:
            self.model.save_weights(path)
        else:
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


class ReduceLROnPlateau(Callback, _Monitor):
    """Keras 3's ReduceLROnPlateau: after ``patience`` epochs without an improvement of
    more than ``min_delta``, multiply the learning rate by ``factor`` (not below
    ``min_lr``), then wait ``cooldown`` epochs. Adds 'learning_rate' to the epoch's logs."""

    def __init__(self, monitor="val_loss", factor=0.1, patience=10, verbose=0, mode="auto", min_delta=1e-4,
                 cooldown=0, min_lr=0.0, **kwargs):
        if "epsilon" in kwargs:  # Keras 1-2's name for min_delta
            min_delta = kwargs.pop("epsilon")
        if kwargs:
            raise NbnetError(f"ReduceLROnPlateau: unknown arguments {sorted(kwargs)}.")
        if factor >= 1.0:
            raise NbnetError(f"ReduceLROnPlateau: factor must be below 1, received factor={factor!r}.")
        _Monitor.__init__(self, monitor, mode, min_delta)
        self.factor, self.patience, self.verbose = float(factor), int(patience), verbose
        self.cooldown, self.min_lr = int(cooldown), float(min_lr)
        self.on_train_begin()

    def on_train_begin(self, logs=None):
        self.best, self.cooldown_counter, self.wait = None, 0, 0

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        optimizer = self.model.optimizer
        logs["learning_rate"] = optimizer.current_learning_rate()
        value = self.current(logs)
        if value is None:
            return
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.wait = 0
        if self.improved(value):
            self.best, self.wait = value, 0
        elif self.cooldown_counter <= 0:
            self.wait += 1
            if self.wait >= self.patience:
                old = optimizer.current_learning_rate()
                if old > np.float32(self.min_lr):
                    new = max(old * self.factor, self.min_lr)
                    optimizer.learning_rate = new
                    if self.verbose:
                        print(f"\nEpoch {epoch + 1}: ReduceLROnPlateau reducing learning rate to {new}.")
                    self.cooldown_counter, self.wait = self.cooldown, 0


class CSVLogger(Callback):
    """Keras's CSVLogger: one row per epoch ('epoch' and the sorted log keys), flushed as it goes."""

    def __init__(self, filename, separator=",", append=False):
        self.filename, self.separator, self.append = str(filename), separator, bool(append)
        self._file = self._writer = self._keys = None

    def on_train_begin(self, logs=None):
        header = True
        if self.append and os.path.exists(self.filename):
            with open(self.filename) as existing:
                header = not existing.readline()
        self._header = header
        self._file = open(self.filename, "a" if self.append else "w", newline="")
        self._writer = self._keys = None

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if self._keys is None:
            self._keys = sorted(logs)
            if not any(key.startswith("val_") for key in self._keys):
                self._keys += [f"val_{key}" for key in self._keys]  # as Keras: columns for later validation
        if self._writer is None:
            self._writer = csv.DictWriter(self._file, fieldnames=["epoch"] + self._keys, delimiter=self.separator)
            if self._header:
                self._writer.writeheader()
        self._writer.writerow({"epoch": epoch, **{key: logs.get(key, "NA") for key in self._keys}})
        self._file.flush()

    def on_train_end(self, logs=None):
        if self._file is not None and not self._file.closed:
            self._file.close()
        self._writer = None


class TensorBoard(Callback):
    """Keras's TensorBoard callback for scalars: each epoch's logs as ``epoch_<name>`` in
    ``log_dir/train`` (with the learning rate) and ``log_dir/validation`` (the ``val_``
    values), step = epoch, in event files TensorBoard reads (``tensorboard --logdir``).
    Histograms, graphs, images, profiling and embeddings are not written: asking for them
    is an error rather than a silent no-op."""

    def __init__(self, log_dir="logs", histogram_freq=0, write_graph=True, write_images=False,
                 write_steps_per_second=False, update_freq="epoch", profile_batch=0, embeddings_freq=0,
                 embeddings_metadata=None):
        unsupported = {name: value for name, value in (("histogram_freq", histogram_freq), ("write_images", write_images),
                                                       ("profile_batch", profile_batch),
                                                       ("embeddings_freq", embeddings_freq)) if value}
        if unsupported or update_freq != "epoch":
            raise NbnetError(f"TensorBoard: nbnet writes epoch scalars only; {unsupported or {'update_freq': update_freq}} "
                             "is not supported (leave it at its default).")
        self.log_dir = str(log_dir)
        self.write_steps_per_second = bool(write_steps_per_second)
        self._writers = {}

    def _writer(self, name):
        from .event_file import EventFileWriter

        if name not in self._writers:
            self._writers[name] = EventFileWriter(os.path.join(self.log_dir, name))
        return self._writers[name]

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        train = {f"epoch_{key}": value for key, value in logs.items() if not key.startswith("val_")}
        train.setdefault("epoch_learning_rate", self.model.optimizer.current_learning_rate())
        if self.write_steps_per_second and self.params:
            train["epoch_steps_per_second"] = self.params["steps"] / max(time.perf_counter() - self._epoch_started,
                                                                          1e-9)
        self._writer("train").scalars(epoch, train)
        validation = {f"epoch_{key[4:]}": value for key, value in logs.items() if key.startswith("val_")}
        if validation:
            self._writer("validation").scalars(epoch, validation)

    def on_train_end(self, logs=None):
        for writer in self._writers.values():
            writer.close()
        self._writers = {}


class BackupAndRestore(Callback):
    """Keras's BackupAndRestore: the model (weights, optimizer state, generator state) is
    saved to ``backup_dir`` after every epoch (or every ``save_freq`` batches); a fit that
    starts while a backup is there continues from it, at the epoch after the last one
    saved. A fit that completes deletes the backup (``delete_checkpoint``). nbnet keeps the
    backup as an .nbnet file, which holds the optimizer state a weights file would not."""

    def __init__(self, backup_dir, save_freq="epoch", double_checkpoint=False, delete_checkpoint=True):
        if not backup_dir:
            raise NbnetError("BackupAndRestore: backup_dir is empty; give the folder to keep the backup in.")
        if save_freq != "epoch" and not (isinstance(save_freq, int) and save_freq > 0):
            raise NbnetError(f"BackupAndRestore: save_freq must be 'epoch' or a positive number of batches, "
                             f"received {save_freq!r}.")
        self.backup_dir, self.save_freq = str(backup_dir), save_freq
        self.double_checkpoint, self.delete_checkpoint = bool(double_checkpoint), bool(delete_checkpoint)
        self._path = os.path.join(self.backup_dir, "latest.nbnet")
        self._epoch, self._batches_since_save = 0, 0

    def on_train_begin(self, logs=None):
        from .saving import load_model

        path = self._path if os.path.exists(self._path) else self._path + ".bkp"
        if not os.path.exists(path):
            return
        saved = load_model(path)
        model = self.model
        model.set_weights(saved.get_weights())
        if saved.optimizer is not None and model.optimizer is not None:
            model.optimizer.iterations = saved.optimizer.iterations
            model.optimizer.slots = dict(saved.optimizer.slots)
        model.rng.bit_generator.state = saved.rng.bit_generator.state
        model.epochs_trained = saved.epochs_trained
        model._initial_epoch = self._epoch = int(saved.backup_epoch or 0)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.save_freq != "epoch":
            self._batches_since_save += 1
            if self._batches_since_save >= self.save_freq:
                self._batches_since_save = 0
                self._save(self._epoch)  # mid-epoch: a restart repeats this epoch

    def on_epoch_end(self, epoch, logs=None):
        if self.save_freq == "epoch":
            self._save(epoch + 1)

    def _save(self, resume_epoch):
        if self.double_checkpoint and os.path.exists(self._path):
            os.replace(self._path, self._path + ".bkp")
        self.model.backup_epoch = resume_epoch
        try:
            self.model.save(self._path)
        finally:
            self.model.backup_epoch = None

    def on_train_end(self, logs=None):
        if self.delete_checkpoint:  # only a fit that ran to its end gets here
            for path in (self._path, self._path + ".bkp"):
                if os.path.exists(path):
                    os.remove(path)
