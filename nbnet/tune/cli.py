"""``nbnet tune``: hyperparameter search from the shell (register with
``main.add_command(tune)`` in nbnet/cli.py). Optuna, NumPy and Numba are imported only
when the command runs, so ``nbnet --help`` stays fast."""

import signal
import sys

import click

_MODEL_HELP = ("tunable_cnn or tunable_mlp (families whose architecture is tunable), a definition name "
               "(mnist_cnn, mnist_mlp: optimizer, learning_rate, batch_size only) or PATH.py[:FUNCTION] "
               "(default function: build_tunable if defined, else build).")


def _fail(error, code=1):
    click.echo(f"Error: {error}", err=True)
    sys.exit(code)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--model", "model_name", default="tunable_cnn", show_default=True, help=_MODEL_HELP)
@click.option("--space", help="Search space: a .json file, a .py file defining SPACE, or inline JSON "
                              "[default: the family's built-in space].")
@click.option("--trials", type=click.IntRange(min=1), default=20, show_default=True,
              help="Finished (complete or pruned) trials the study should hold; a rerun continues up to this.")
@click.option("--epochs", type=click.IntRange(min=1), default=3, show_default=True, help="Epochs per trial.")
@click.option("--seed", type=int, help="Seed for the sampler and each trial's weights (repeatable searches).")
@click.option("--storage", help="Optuna storage URL [default: sqlite:///OUTPUT_DIR/study.db].")
@click.option("--study-name", help="[default: nbnet-MODEL]")
@click.option("--scheduler", default="local", show_default=True,
              help="'local' (worker processes here) or dask://HOST:PORT (a Dask distributed scheduler).")
@click.option("--jobs", type=click.IntRange(min=1),
              help="Trials at once [local default: one per core, at most 4, each with cores/jobs Numba threads; "
                   "Dask default: one per Dask worker].")
@click.option("--train-samples", type=click.IntRange(min=1), default=50000, show_default=True,
              help="Training images: the first N of MNIST's training set.")
@click.option("--val-samples", type=click.IntRange(min=1), default=10000, show_default=True,
              help="Validation images: the last N of MNIST's training set (the test set stays unseen).")
@click.option("--batch-size", type=click.IntRange(min=1),
              help="Batch size when the space has none [default: the definition's, 128].")
@click.option("--pruner", type=click.Choice(["median", "hyperband", "none"], case_sensitive=False), default="median",
              show_default=True, help="Stops trials whose validation accuracy lags after an epoch.")
@click.option("--startup-trials", type=click.IntRange(min=0), default=5, show_default=True,
              help="Random trials before TPE models the space, and finished trials before the median pruner acts.")
@click.option("--metric", type=click.Choice(["val_accuracy", "val_loss"]), default="val_accuracy", show_default=True)
@click.option("--top", type=click.IntRange(min=1), default=5, show_default=True, help="Rows in the best-trials table.")
@click.option("--data-dir", type=click.Path(file_okay=False), envvar="NBNET_DATA_DIR",
              help="A directory holding the four MNIST IDX files (else cache, mirrors, PyPI wheel).")
@click.option("--output-dir", type=click.Path(file_okay=False),
              help="Where study.db, best_model.nbnet, history.json and history.csv go [default: tune-STUDY_NAME].")
def tune(model_name, space, trials, epochs, seed, storage, study_name, scheduler, jobs, train_samples, val_samples,
         batch_size, pruner, startup_trials, metric, top, data_dir, output_dir):
    """Search hyperparameters on MNIST with Optuna (TPE + pruning), in parallel or on Dask.

    Prints a line per finished trial and a table of the best, saves the best model and the
    study's history (JSON and CSV). The study is kept in --storage: run the same command
    again to continue an interrupted search; finished trials are never rerun."""
    try:
        import optuna
    except ImportError:
        _fail("nbnet tune needs Optuna, an optional dependency: pip install nbnet[tune]  "
              "(and pip install nbnet[dask] for --scheduler dask://...)")
    import warnings

    from ..errors import NbnetError
    from .search import run_search

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # a line per trial comes from nbnet instead
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    if scheduler != "local" and not scheduler.startswith(("dask://", "tcp://", "tls://")):
        _fail(f"--scheduler must be 'local' or dask://HOST:PORT, received {scheduler!r}.")
    try:  # SIGTERM stops the search as cleanly as Ctrl-C (signal handlers: main thread only)
        previous = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    except ValueError:
        previous = None
    try:
        run_search(model_name, space, trials, epochs, seed=seed, storage=storage, study_name=study_name,
                   scheduler=scheduler, jobs=jobs, train_samples=train_samples, val_samples=val_samples,
                   data_dir=data_dir, output_dir=output_dir, pruner=pruner.lower(), startup_trials=startup_trials,
                   monitor=metric, batch_size=batch_size, top=top, echo=lambda line: click.echo(line))
    except NbnetError as error:
        _fail(error)
    except KeyboardInterrupt:
        sys.exit(130)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt


if __name__ == "__main__":
    tune()
