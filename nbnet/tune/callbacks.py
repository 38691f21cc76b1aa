"""PruningCallback: report a metric to an Optuna trial after every epoch and stop the
trial when the study's pruner says so.

With your own Optuna objective::

    def objective(trial):
        model = build(learning_rate=trial.suggest_float("learning_rate", 1e-4, 1e-2, log=True))
        model.fit(x, y, epochs=5, validation_data=(x_val, y_val), callbacks=[PruningCallback(trial)])
        ...

Any object with ``report(value, step)`` and ``should_prune()`` works as the trial: the
workers of ``nbnet tune`` use one that forwards both to the process that owns the study.
"""

import math
import sys

from ..callbacks import Callback
from ..errors import NbnetError


class TrialPruned(Exception):
    """Raised to stop a pruned trial where Optuna is not loaded (a bare Dask worker)."""


def trial_pruned_class():
    """optuna.TrialPruned when Optuna is loaded (it is wherever a real Optuna trial exists), else TrialPruned."""
    optuna = sys.modules.get("optuna")
    return getattr(optuna, "TrialPruned", TrialPruned) if optuna is not None else TrialPruned


class PruningCallback(Callback):
    """After each epoch: ``trial.report(logs[monitor], epoch + 1)``, then raise
    ``optuna.TrialPruned`` if ``trial.should_prune()``. ``fit`` needs validation data when
    the monitored metric is a ``val_`` one."""

    def __init__(self, trial, monitor="val_accuracy"):
        self.trial, self.monitor = trial, monitor
        self.values = []

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if self.monitor not in logs:
            raise NbnetError(f"PruningCallback: cannot monitor {self.monitor!r}; the logs hold {sorted(logs)}. "
                             "Give fit validation_data (or validation_split) to monitor a 'val_' metric.")
        value = float(logs[self.monitor])
        self.values.append(value)
        if not math.isfinite(value):
            raise trial_pruned_class()(f"{self.monitor} is {value} after epoch {epoch + 1}")
        self.trial.report(value, epoch + 1)
        if self.trial.should_prune():
            raise trial_pruned_class()(f"pruned after epoch {epoch + 1} with {self.monitor} {value:.4f}")
