"""Hyperparameter search for nbnet models: Optuna's TPE sampler with a pruner on per-epoch
validation accuracy, trials in parallel worker processes or on a Dask cluster, and a study
that resumes from its storage. ``pip install nbnet[tune]`` (``nbnet[dask]`` for Dask).

Importing this package needs neither Optuna nor Numba; ``run_search`` needs Optuna.

    from nbnet.tune import run_search, LogUniform, Choice

    result = run_search("tunable_cnn", {"learning_rate": LogUniform(1e-4, 1e-2),
                                        "batch_size": Choice([64, 128])}, trials=20, epochs=2)
    print(result.best_value, result.best_params, result.model_path)

From the shell: ``nbnet tune --model tunable_cnn --space space.json --trials 20 --epochs 2``.
"""

from .families import DEFAULT_SPACES, tunable_cnn, tunable_mlp
from .search import SearchResult, TuneError, best_table, run_search, write_history
from .space import Choice, Distribution, Fixed, Int, LogUniform, SearchSpace, Uniform, load_space


def __getattr__(name):  # these import nbnet.callbacks (NumPy): only on first use
    if name in ("PruningCallback", "TrialPruned"):
        from . import callbacks

        return getattr(callbacks, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["run_search", "SearchSpace", "Uniform", "LogUniform", "Int", "Choice", "Fixed", "Distribution",
           "load_space", "tunable_cnn", "tunable_mlp", "DEFAULT_SPACES", "PruningCallback", "TrialPruned",
           "SearchResult", "TuneError", "best_table", "write_history"]
