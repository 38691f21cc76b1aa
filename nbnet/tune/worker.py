"""What runs a trial: resolving the model definition, loading the data slice, training with
a per-epoch report to the process that owns the study, and the two kinds of worker
(a local spawned process; a Dask task).

This module imports neither NumPy, Numba nor Optuna at import time: a local worker sets
NUMBA_NUM_THREADS first, and only then imports nbnet's kernels.
"""

import inspect
import os
import signal
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

DEFAULT_BATCH_SIZE = 128
MNIST_TRAIN_IMAGES = 60000


# -- model definitions ----------------------------------------------------------------------
def split_model_spec(model):
    """'NAME|PATH[:FUNCTION]' -> (NAME|PATH, FUNCTION or None)."""
    head, sep, tail = str(model).rpartition(":")
    if sep and head and tail.isidentifier():
        return head, tail
    return str(model), None


def resolve_builder(model):
    """``(builder, definition)`` for a model spec: a tunable family ('tunable_cnn', 'tunable_mlp'),
    a definition in nbnet.zoo ('mnist_cnn') or a .py file, optionally ':FUNCTION'. Without a
    function name the definition's ``build_tunable`` is used if it has one, else ``build``."""
    from ..errors import NbnetError
    from . import families

    name, function = split_model_spec(model)
    if name in families.FAMILIES and function is None:
        return families.FAMILIES[name], families
    if name.endswith(".py"):
        definition = _load_file(name)
    else:
        from ..zoo import DEFINITIONS, get_definition

        if name not in DEFINITIONS:
            known = ", ".join(list(families.FAMILIES) + list(DEFINITIONS))
            raise NbnetError(f"Unknown model {name!r}: use one of {known}, or the path of a .py definition "
                             "(optionally PATH:FUNCTION).")
        definition = get_definition(name)
    attribute = function or ("build_tunable" if callable(getattr(definition, "build_tunable", None)) else "build")
    builder = getattr(definition, attribute, None)
    if not callable(builder):
        raise NbnetError(f"{name} defines no {attribute}(**hyperparameters) function returning a compiled model.")
    return builder, definition


def _load_file(path):
    import importlib.util

    from ..errors import NbnetError

    path = Path(path)
    if not path.is_file():
        raise NbnetError(f"Model definition {path} does not exist.")
    spec = importlib.util.spec_from_file_location(f"nbnet_user_model_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def accepted_parameters(builder):
    """The keyword names ``builder`` accepts, or None when it takes ``**kwargs``."""
    parameters = inspect.signature(builder).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return None
    keyword = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {p.name for p in parameters if p.kind in keyword}


# -- data -------------------------------------------------------------------------------------
_DATA = {}


def load_split(data_dir, train_samples, val_samples):
    """MNIST training images ``[:train_samples]`` for training and the last ``val_samples``
    training images for validation (never the test set), float32 in [0, 1]; cached per process."""
    key = (data_dir, int(train_samples), int(val_samples))
    if key not in _DATA:
        import numpy as np

        from ..datasets import mnist

        (x, y), _ = mnist.load_data(data_dir=data_dir, verbose=False)
        scale = np.float32(1.0 / 255.0)
        start = len(x) - int(val_samples)
        _DATA.clear()
        _DATA[key] = ((x[:train_samples, ..., None] * scale, y[:train_samples].astype(np.int64)),
                      (x[start:, ..., None] * scale, y[start:].astype(np.int64)))
    return _DATA[key]


# -- one trial --------------------------------------------------------------------------------
class _ChannelTrial:
    """The trial a worker sees: ``should_prune`` asks the study's owner through
    ``channel(step, value) -> prune?``; the last epoch is never pruned (its value comes with the result)."""

    def __init__(self, channel, epochs):
        self.channel, self.epochs = channel, epochs
        self.step = self.value = None

    def report(self, value, step):
        self.value, self.step = value, step

    def should_prune(self):
        if self.step >= self.epochs:  # pruning now would save nothing; the result carries this value
            return False
        return bool(self.channel(self.step, self.value))


def run_trial(job, channel):
    """Train one trial. ``job`` holds model, params, epochs, batch_size, seed, monitor, data;
    returns a dict: state ('complete' or 'pruned'), values (the monitored metric per epoch),
    value, seconds, numba_threads, history, reason, and the saved model's bytes when complete."""
    import numba

    from ..errors import TrainingDiverged
    from .callbacks import PruningCallback, TrialPruned, trial_pruned_class

    builder, _ = resolve_builder(job["model"])
    params = dict(job["params"])
    batch_size = int(params.pop("batch_size", None) or job["batch_size"])
    accepted = accepted_parameters(builder)
    if job.get("seed") is not None and "seed" not in params and (accepted is None or "seed" in accepted):
        params["seed"] = job["seed"]
    data = job["data"]
    (x, y), validation = load_split(data["data_dir"], data["train_samples"], data["val_samples"])
    started = time.perf_counter()
    callback = PruningCallback(_ChannelTrial(channel, job["epochs"]), monitor=job["monitor"])
    state, reason = "complete", None
    model = builder(**params)
    try:
        model.fit(x, y, batch_size=batch_size, epochs=job["epochs"], verbose=0, callbacks=[callback],
                  validation_data=validation)
        if model.diverged is not None:
            raise model.diverged
    except (TrialPruned, trial_pruned_class()) as exc:
        state, reason = "pruned", str(exc)
    except TrainingDiverged as exc:  # a learning rate too large to train: as bad as a pruned trial
        state, reason = "pruned", f"diverged: {exc}"
    result = {"number": job["number"], "state": state, "reason": reason, "values": callback.values,
              "value": callback.values[-1] if callback.values else None, "epochs": len(callback.values),
              "seconds": time.perf_counter() - started, "numba_threads": numba.get_num_threads(),
              "batch_size": batch_size, "history": {k: list(v) for k, v in model.history_log.items()}}
    if state == "complete":
        with tempfile.TemporaryDirectory(prefix="nbnet-tune-") as tmp:
            path = Path(tmp) / "model.nbnet"
            model.save(path)
            result["model"] = path.read_bytes()
    return result


# -- local worker processes ---------------------------------------------------------------------
def local_worker(conn, numba_threads):
    """A spawned worker process: set the thread counts, then run jobs from ``conn`` until None."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the coordinator's to handle
    threads = str(int(numba_threads))
    os.environ["NUMBA_NUM_THREADS"] = threads  # before Numba is imported, below
    for name in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(name, threads)
    preloaded = "numba" in sys.modules
    import numba

    if preloaded:  # the parent's __main__ imported Numba already: cap the threads it launches
        numba.set_num_threads(min(int(threads), numba.config.NUMBA_NUM_THREADS))
    conn.send(("ready", os.getpid(), numba.get_num_threads()))
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            return
        if job is None:
            return
        number = job["number"]

        def channel(step, value, number=number):
            conn.send(("report", number, step, value))
            return bool(conn.recv())

        try:
            message = ("done", number, run_trial(job, channel))
        except BaseException:  # noqa: BLE001 - reported to the coordinator, which decides
            message = ("error", number, traceback.format_exc())
        try:
            conn.send(message)
        except (OSError, ValueError):
            return


# -- Dask -----------------------------------------------------------------------------------------
# Numba's default (workqueue) threading layer aborts the process when two threads launch
# parallel kernels at once, so trials sharing one worker process take turns.
_PROCESS_LOCK = threading.Lock()
DECISION_TIMEOUT_S = 300


def dask_trial(job, channel_name):
    """A Dask task: one trial, reporting through distributed Queues named after ``channel_name``."""
    from distributed import Queue

    reports = Queue(channel_name)
    decisions = Queue(f"{channel_name}-{job['number']}")

    def channel(step, value):
        reports.put([job["number"], step, value])
        return bool(decisions.get(timeout=DECISION_TIMEOUT_S))

    with _PROCESS_LOCK:
        _use_worker_threads()
        return run_trial(job, channel)


def _use_worker_threads():
    """Give the trial as many Numba threads as the Dask worker has threads (its share of the
    cores): a default Numba pool per worker process would oversubscribe the machine."""
    import numba
    from distributed import get_worker

    try:
        threads = int(get_worker().state.nthreads)
    except (AttributeError, ValueError):
        return
    numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))  # per calling thread
