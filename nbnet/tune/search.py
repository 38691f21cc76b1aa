"""The search: an Optuna study (TPE sampler, median or Hyperband pruner) whose trials train
nbnet models in worker processes on this machine or on a Dask cluster.

The coordinating process owns the study and is the only one that touches its storage: it
asks the sampler for each trial's hyperparameters, sends the trial to a worker, answers
the worker's report after every epoch with the pruner's verdict, and tells the study the
outcome. Workers only train, so they need neither Optuna nor access to the storage (a
sqlite file stays single-writer), and a Dask worker needs only nbnet and the data.

The study lives in its storage (default: ``sqlite:///OUTPUT_DIR/study.db``) and ``trials``
counts the study's finished (complete or pruned) trials, so running the same search again
continues it: finished trials are kept, only the remainder runs, and trials that were
running when a previous run died are marked failed and queued again with their
hyperparameters.
"""

import csv
import io
import json
import math
import os
import time
import uuid
from pathlib import Path

from ..errors import NbnetError
from . import worker
from .space import FIT_PARAMETERS, SearchSpace, load_space

INSTALL_HINT = "pip install nbnet[tune]"
DASK_INSTALL_HINT = "pip install nbnet[dask]"
BEST_MODEL_NAME = "best_model.nbnet"


class TuneError(NbnetError):
    """A search cannot start or cannot go on."""


def require_optuna():
    try:
        import optuna
    except ImportError:
        raise TuneError(f"nbnet tune needs Optuna, an optional dependency: {INSTALL_HINT}") from None
    return optuna


def available_cores():
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def default_jobs(cores=None):
    """Parallel local trials: one per core, at most 4 (TPE learns less from many concurrent trials)."""
    return max(1, min(cores or available_cores(), 4))


class SearchResult:
    """What a search leaves: the study, its best trial, and where the outputs are."""

    def __init__(self, **fields):
        self.__dict__.update(fields)

    def __repr__(self):
        return (f"SearchResult(best_value={self.best_value!r}, best_params={self.best_params!r}, "
                f"finished={self.finished}, pruned={self.pruned}, seconds={self.seconds:.1f})")


def run_search(model="tunable_cnn", space=None, trials=20, epochs=3, *, seed=None, storage=None, study_name=None,
               scheduler="local", jobs=None, train_samples=50000, val_samples=10000, data_dir=None,
               output_dir=None, pruner="median", startup_trials=5, monitor="val_accuracy", batch_size=None,
               top=5, max_failures=3, echo=print):
    """Run (or continue) a search until the study holds ``trials`` finished trials.

    ``model``: 'tunable_cnn', 'tunable_mlp', a definition name or a .py path (optionally
    ':FUNCTION'); ``space``: a SearchSpace, dict, JSON text, or .json/.py file (default: the
    family's DEFAULT_SPACES entry). ``scheduler``: 'local', 'dask://HOST:PORT' or a
    ``distributed.Client``. ``jobs``: trials at once (local default: one per core, at most 4;
    each worker gets cores // jobs Numba threads; Dask default: one per Dask worker).
    ``pruner``: 'median', 'hyperband', 'none' or an Optuna pruner. Returns a SearchResult.
    """
    optuna = require_optuna()
    plan = _plan(model, space, trials, epochs, seed, train_samples, val_samples, data_dir, batch_size, monitor,
                 startup_trials)
    output_dir = Path(output_dir or f"tune-{study_name or _default_study_name(model)}")
    output_dir.mkdir(parents=True, exist_ok=True)
    study_name = study_name or _default_study_name(model)
    storage = storage or f"sqlite:///{(output_dir / 'study.db').resolve()}"
    direction = "minimize" if "loss" in monitor else "maximize"

    study = optuna.create_study(storage=storage, study_name=study_name, direction=direction, load_if_exists=True)
    if study.direction.name.lower() != direction:
        raise TuneError(f"study {study_name!r} in {storage} was created to {study.direction.name.lower()}, "
                        f"but {monitor} is to {direction}: choose another --study-name.")
    _recover_interrupted(study, optuna, echo)
    _check_config(study, plan, echo)
    # Seeded from the seed and the study's length: a resumed study draws new points, not the first run's again.
    sampler_seed = None if seed is None else (int(seed) * 1_000_003 + len(study.trials)) % 2**32
    study.sampler = optuna.samplers.TPESampler(seed=sampler_seed, n_startup_trials=startup_trials, constant_liar=True)
    study.pruner = _make_pruner(optuna, pruner, startup_trials, epochs)

    finished_states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    finished = len(study.get_trials(deepcopy=False, states=finished_states))
    remaining = max(0, trials - finished)
    started = time.perf_counter()
    executor = None
    coordinator = _Coordinator(study, optuna, plan, output_dir, echo, max_failures)
    try:
        if remaining:
            executor = _make_executor(scheduler, jobs, remaining)
            echo(f"Study {study_name!r} in {storage}: {finished} of {trials} trials finished; running {remaining} "
                 f"({executor.description}).")
            coordinator.run(executor, finished, trials)
        else:
            echo(f"Study {study_name!r} in {storage} already has {finished} finished trials (asked for {trials}).")
    except KeyboardInterrupt:
        coordinator.abandon("interrupted")
        done = len(study.get_trials(deepcopy=False, states=finished_states))
        echo(f"Interrupted: {done} of {trials} trials finished and saved in {storage}; "
             "run the same command again to continue.")
        raise
    except BaseException:
        coordinator.abandon("search stopped")
        raise
    finally:
        if executor is not None:
            executor.close()
        if coordinator.dirty or not (output_dir / "history.json").exists():
            write_history(study, output_dir, monitor)
    return _summarize(study, optuna, output_dir, monitor, top, time.perf_counter() - started, echo)


def _default_study_name(model):
    name, _ = worker.split_model_spec(model)
    return f"nbnet-{Path(name).stem}"


def _plan(model, space, trials, epochs, seed, train_samples, val_samples, data_dir, batch_size, monitor,
          startup_trials):
    """Check everything that can be checked before a trial starts; the fixed part of every job."""
    from . import families

    if int(trials) < 1 or int(epochs) < 1:
        raise TuneError(f"trials and epochs must be at least 1, received trials={trials!r}, epochs={epochs!r}.")
    if int(startup_trials) < 0:
        raise TuneError(f"startup_trials must be at least 0, received {startup_trials!r}.")
    if not monitor.startswith("val_"):
        raise TuneError(f"monitor must be a validation metric such as 'val_accuracy' or 'val_loss', "
                        f"received {monitor!r}.")
    val_samples, train_samples = int(val_samples), int(train_samples)
    if val_samples < 1 or train_samples < 1 or train_samples + val_samples > worker.MNIST_TRAIN_IMAGES:
        raise TuneError(f"train_samples ({train_samples}) and val_samples ({val_samples}) must be at least 1 and sum "
                        f"to at most {worker.MNIST_TRAIN_IMAGES}: validation images are the last val_samples of "
                        "MNIST's training set, kept apart from the training images (the test set is never used).")
    builder, definition = worker.resolve_builder(model)
    name, _ = worker.split_model_spec(model)
    if space is None:
        if name not in families.DEFAULT_SPACES:
            raise TuneError(f"give a search space for model {model!r} (--space SPACE.json); only "
                            f"{', '.join(families.DEFAULT_SPACES)} have a default one.")
        space = families.DEFAULT_SPACES[name]
    space = load_space(space)
    accepted = worker.accepted_parameters(builder)
    if accepted is not None:
        unknown = [p for p in space.names() if p not in accepted and p not in FIT_PARAMETERS]
        if unknown:
            takes = ", ".join(sorted(accepted)) or "nothing"
            raise TuneError(f"the search space names {', '.join(unknown)}, but {builder.__name__}() of {model!r} "
                            f"takes only {takes} (and the search itself takes {', '.join(FIT_PARAMETERS)}). "
                            "Use --model tunable_cnn / tunable_mlp, or a definition with "
                            "build_tunable(**hyperparameters).")
    return {"model": str(model), "space": space, "epochs": int(epochs), "seed": seed, "monitor": monitor,
            "batch_size": int(batch_size or getattr(definition, "BATCH_SIZE", worker.DEFAULT_BATCH_SIZE)),
            "data": {"data_dir": None if data_dir is None else str(data_dir), "train_samples": train_samples,
                     "val_samples": val_samples}}


def _make_pruner(optuna, pruner, startup_trials, epochs):
    if not isinstance(pruner, str):
        return pruner
    kind = pruner.lower()
    if kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=startup_trials, n_warmup_steps=0)
    if kind in ("hyperband", "asha"):
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(int(epochs), 1), reduction_factor=3)
    if kind == "none":
        return optuna.pruners.NopPruner()
    raise TuneError(f"unknown pruner {pruner!r}: use 'median', 'hyperband' or 'none'.")


def _recover_interrupted(study, optuna, echo):
    """Trials left RUNNING by a run that died: mark them failed and queue their hyperparameters again.
    (One coordinator per study at a time: a second live ``nbnet tune`` on the same study would lose its trials.)"""
    stale = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    requeued = []
    for trial in stale:
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
        if trial.params:  # empty when the run died before sampling them
            study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
            requeued.append(trial.number)
    if stale:
        echo(f"Recovered {len(stale)} trial(s) a previous run left unfinished "
             f"({', '.join(str(t.number) for t in stale)}): marked failed"
             + (f"; queued the hyperparameters of {', '.join(map(str, requeued))} again." if requeued else "."))


def _check_config(study, plan, echo):
    config = {"model": plan["model"], "space": plan["space"].to_dict(), "epochs": plan["epochs"],
              "monitor": plan["monitor"], "train_samples": plan["data"]["train_samples"],
              "val_samples": plan["data"]["val_samples"]}
    previous = study.user_attrs.get("nbnet_config")
    if previous is None:
        study.set_user_attr("nbnet_config", config)
    elif previous != config:
        changed = sorted(k for k in config if previous.get(k) != config[k])
        echo(f"Warning: study {study.study_name!r} was started with a different {', '.join(changed)}; "
             "its earlier trials are kept and compared as they are.")


# -- the coordinator ---------------------------------------------------------------------------------
class _Coordinator:
    def __init__(self, study, optuna, plan, output_dir, echo, max_failures):
        self.study, self.optuna, self.plan, self.output_dir, self.echo = study, optuna, plan, output_dir, echo
        self.max_failures = max_failures
        self.maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
        self.in_flight = {}  # trial number -> {"trial", "params", "reported"}
        self.dirty = False

    def run(self, executor, finished, target):
        failures_in_a_row = 0
        while True:
            while len(self.in_flight) < executor.capacity and finished + len(self.in_flight) < target:
                self._launch(executor)
            if not self.in_flight:
                return
            for event in executor.poll(timeout=1.0):
                kind, number = event[0], event[1]
                entry = self.in_flight.get(number)
                if entry is None:
                    continue
                if kind == "report":
                    _, _, step, value = event[:4]
                    self._report(entry, step, value)
                    executor.decide(number, entry["trial"].should_prune())
                elif kind == "done":
                    state = self._finish(entry, event[2])
                    del self.in_flight[number]
                    finished += 1
                    failures_in_a_row = 0
                    self._progress(number, state, entry["params"], event[2], finished, target)
                else:
                    del self.in_flight[number]
                    failures_in_a_row += 1
                    self._fail(entry, event[2])
                    if failures_in_a_row >= self.max_failures:
                        raise TuneError(f"{failures_in_a_row} trials in a row failed; the last one (trial {number}) "
                                        f"with:\n{event[2].rstrip()}")

    def _launch(self, executor):
        trial = self.study.ask()
        entry = self.in_flight[trial.number] = {"trial": trial, "params": None, "reported": set()}
        entry["params"] = params = self.plan["space"].sample(trial)
        seed = self.plan["seed"]
        job = {"number": trial.number, "model": self.plan["model"], "params": params, "epochs": self.plan["epochs"],
               "batch_size": self.plan["batch_size"], "monitor": self.plan["monitor"], "data": self.plan["data"],
               "seed": None if seed is None else (int(seed) * 100_003 + trial.number) % 2**31}
        executor.submit(job)

    def _report(self, entry, step, value):
        if step not in entry["reported"] and value is not None and math.isfinite(value):
            entry["trial"].report(float(value), int(step))
            entry["reported"].add(step)

    def _best_value(self):
        complete = self.study.get_trials(deepcopy=False, states=(self.optuna.trial.TrialState.COMPLETE,))
        values = [t.value for t in complete if t.value is not None]
        return (max(values) if self.maximize else min(values)) if values else None

    def _finish(self, entry, result):
        State = self.optuna.trial.TrialState
        trial = entry["trial"]
        for step, value in enumerate(result["values"], start=1):  # the last epoch is reported only here
            self._report(entry, step, value)
        for key in ("epochs", "seconds", "numba_threads", "batch_size", "history"):
            trial.set_user_attr(key, result[key])
        if result.get("reason"):
            trial.set_user_attr("reason", result["reason"])
        self.dirty = True
        if result["state"] != "complete" or result["value"] is None or not math.isfinite(result["value"]):
            self.study.tell(trial, state=State.PRUNED)
            return "PRUNED"
        value = float(result["value"])
        best = self._best_value()
        if best is None or (value > best if self.maximize else value < best):
            path = self.output_dir / BEST_MODEL_NAME
            from ..paths import atomic_write

            with atomic_write(path) as handle:
                handle.write(result["model"])
            trial.set_user_attr("model_path", str(path.resolve()))
        self.study.tell(trial, value)
        return "COMPLETE"

    def _fail(self, entry, message):
        trial = entry["trial"]
        last = message.strip().splitlines()[-1] if message.strip() else "unknown error"
        trial.set_user_attr("error", last)
        self.study.tell(trial, state=self.optuna.trial.TrialState.FAIL)
        self.dirty = True
        self.echo(f"trial {trial.number:>3} FAILED   {last}")
        write_history(self.study, self.output_dir, self.plan["monitor"])

    def _progress(self, number, state, params, result, finished, target):
        monitor = self.plan["monitor"]
        value = "n/a" if result["value"] is None else f"{result['value']:.4f}"
        best = self._best_trial()
        best_text = "none yet" if best is None else f"{best.value:.4f} (trial {best.number})"
        params = " ".join(f"{k}={_fmt(v)}" for k, v in params.items())
        reason = " (diverged)" if (result.get("reason") or "").startswith("diverged") else ""
        self.echo(f"trial {number:>3} {state:<8} {monitor} {value} after {result['epochs']}/{self.plan['epochs']} "
                  f"epochs{reason} in {result['seconds']:.1f}s | {finished}/{target} finished | best {best_text} | "
                  f"{params}")
        write_history(self.study, self.output_dir, monitor)

    def _best_trial(self):
        try:
            return self.study.best_trial
        except ValueError:
            return None

    def abandon(self, why):
        """Fail the trials still running and queue their hyperparameters again for the next run."""
        for number, entry in list(self.in_flight.items()):
            try:
                entry["trial"].set_user_attr("error", why)
            except Exception:  # noqa: BLE001 - already finished
                pass
            try:
                frozen = self.study.tell(entry["trial"], state=self.optuna.trial.TrialState.FAIL, skip_if_finished=True)
                if frozen.state != self.optuna.trial.TrialState.FAIL:
                    continue  # told finished just before the stop: nothing to redo
                params = entry["params"] or entry["trial"].params
                if params:
                    self.study.enqueue_trial(params, user_attrs={"retry_of": number})
            except Exception:  # noqa: BLE001 - best effort; the next run recovers RUNNING trials anyway
                pass
            self.dirty = True
        self.in_flight.clear()


def _fmt(value):
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


# -- executors -------------------------------------------------------------------------------------
def _make_executor(scheduler, jobs, remaining):
    if scheduler is None or scheduler == "local":
        jobs = int(jobs or default_jobs())
        if jobs < 1:
            raise TuneError(f"jobs must be at least 1, received {jobs}.")
        jobs = min(jobs, remaining)
        return LocalExecutor(jobs, max(1, available_cores() // jobs))
    return DaskExecutor(scheduler, jobs)


class LocalExecutor:
    """``jobs`` spawned worker processes, each with ``threads`` Numba threads set before Numba loads."""

    def __init__(self, jobs, threads):
        import multiprocessing

        self.context = multiprocessing.get_context("spawn")
        self.threads = threads
        self.workers = []
        for _ in range(jobs):
            self._start_worker()
        self.capacity = jobs
        self.description = f"{jobs} local worker process{'es' if jobs > 1 else ''} x {threads} Numba thread" + \
                           ("s" if threads > 1 else "")

    def _start_worker(self):
        parent, child = self.context.Pipe()
        process = self.context.Process(target=worker.local_worker, args=(child, self.threads), daemon=True,
                                       name="nbnet-tune-worker")
        process.start()
        child.close()
        self.workers.append({"process": process, "conn": parent, "number": None})

    def submit(self, job):
        idle = next(w for w in self.workers if w["number"] is None)
        idle["number"] = job["number"]
        idle["conn"].send(job)

    def decide(self, number, prune):
        for w in self.workers:
            if w["number"] == number:
                w["conn"].send(bool(prune))

    def poll(self, timeout):
        from multiprocessing.connection import wait

        ready = wait([w["conn"] for w in self.workers] + [w["process"].sentinel for w in self.workers], timeout)
        events = []
        for w in list(self.workers):
            if w["conn"] not in ready and w["process"].sentinel not in ready:
                continue
            try:
                while w["conn"].poll():
                    message = w["conn"].recv()
                    if message[0] == "ready":
                        continue
                    if message[0] in ("done", "error"):
                        w["number"] = None
                    events.append(message)
            except (EOFError, OSError):
                pass
            if not w["process"].is_alive() and not w["conn"].poll():
                w["process"].join(1)
                if w["number"] is not None:
                    events.append(("error", w["number"], f"the worker process (pid {w['process'].pid}) died with exit "
                                                         f"code {w['process'].exitcode}"))
                self.workers.remove(w)
                w["conn"].close()
                self._start_worker()
        return events

    def close(self):
        for w in self.workers:
            if w["number"] is None:  # idle: ask it to exit; a busy one is terminated below
                try:
                    w["conn"].send(None)
                except (OSError, ValueError):
                    pass
        deadline = time.monotonic() + 5
        for w in self.workers:
            if w["number"] is None:
                w["process"].join(max(0.0, deadline - time.monotonic()))
            if w["process"].is_alive():
                w["process"].terminate()
                w["process"].join(5)
            w["conn"].close()
        self.workers = []


class DaskExecutor:
    """Trials as tasks on a Dask cluster; per-epoch reports come back through distributed Queues."""

    def __init__(self, scheduler, jobs):
        try:
            from distributed import Client, Queue
        except ImportError:
            raise TuneError(f"--scheduler dask://... needs Dask distributed: {DASK_INSTALL_HINT}") from None
        self.Queue = Queue
        if isinstance(scheduler, Client):
            self.client, self.owns_client = scheduler, False
        else:
            address = str(scheduler)
            if address.startswith("dask://"):
                address = "tcp://" + address[len("dask://"):]
            elif "://" not in address:
                raise TuneError(f"unknown scheduler {scheduler!r}: use 'local' or dask://HOST:PORT.")
            try:
                self.client, self.owns_client = Client(address, timeout="20s"), True
            except (OSError, TimeoutError) as exc:
                raise TuneError(f"cannot reach the Dask scheduler at {address}: {exc}") from None
        workers = self.client.scheduler_info().get("workers", {})
        if not workers:
            try:
                self.client.wait_for_workers(1, timeout=60)
            except (TimeoutError, OSError):
                raise TuneError(f"the Dask scheduler at {self.client.scheduler.address} has no workers.") from None
            workers = self.client.scheduler_info().get("workers", {})
        # One trial per worker process: trials in one process take turns (see worker._PROCESS_LOCK).
        self.capacity = int(jobs or len(workers))
        self.channel = f"nbnet-tune-{uuid.uuid4().hex}"
        self.reports = Queue(self.channel, client=self.client)
        self.futures, self.decisions = {}, {}
        self.description = f"Dask scheduler {self.client.scheduler.address}: {len(workers)} worker(s), " \
                           f"{self.capacity} trial(s) at once"

    def submit(self, job):
        number = job["number"]
        self.decisions[number] = self.Queue(f"{self.channel}-{number}", client=self.client)
        self.futures[number] = self.client.submit(worker.dask_trial, job, self.channel, pure=False,
                                                  key=f"nbnet-tune-trial-{number}-{self.channel[-8:]}")

    def decide(self, number, prune):
        self.decisions[number].put(bool(prune))

    def poll(self, timeout):
        deadline = time.monotonic() + timeout
        while True:
            events = [("report", *item) for item in self.reports.get(batch=True)]
            for number, future in list(self.futures.items()):
                if future.status == "finished":
                    events.append(("done", number, future.result()))
                elif future.status in ("error", "cancelled", "lost"):
                    events.append(("error", number, _future_error(future)))
                else:
                    continue
                del self.futures[number]
                self.decisions.pop(number, None)
            if events or time.monotonic() >= deadline:
                return events
            time.sleep(0.05)

    def close(self):
        for future in self.futures.values():
            future.cancel()
        self.futures.clear()
        if self.owns_client:
            self.client.close()


def _future_error(future):
    import traceback

    if future.status != "error":
        return f"the Dask task was {future.status}"
    exception = future.exception()
    return "".join(traceback.format_exception(type(exception), exception, future.traceback()))


# -- outputs -----------------------------------------------------------------------------------------
def trial_records(study, monitor):
    records = []
    for t in study.trials:
        attrs = t.user_attrs
        records.append({
            "number": t.number, "state": t.state.name, "value": t.value,
            "params": t.params, "epochs": attrs.get("epochs"), "seconds": attrs.get("seconds"),
            "intermediate_values": {str(step): v for step, v in sorted(t.intermediate_values.items())},
            "reason": attrs.get("reason") or attrs.get("error"), "retry_of": attrs.get("retry_of"),
            "datetime_start": t.datetime_start.isoformat() if t.datetime_start else None,
            "datetime_complete": t.datetime_complete.isoformat() if t.datetime_complete else None,
        })
    return records


def write_history(study, output_dir, monitor):
    """``history.json`` and ``history.csv``: every trial of the study with its state, value,
    hyperparameters and per-epoch ``monitor``."""
    from ..paths import atomic_write

    records = trial_records(study, monitor)
    document = {"study_name": study.study_name, "direction": study.direction.name.lower(), "monitor": monitor,
                "trials": records}
    with atomic_write(Path(output_dir) / "history.json", mode="w") as handle:
        json.dump(document, handle, indent=1)
    param_names = sorted({name for r in records for name in r["params"]})
    steps = sorted({int(step) for r in records for step in r["intermediate_values"]})
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["number", "state", "value", "epochs", "seconds"] + param_names
                    + [f"{monitor}_epoch_{s}" for s in steps] + ["reason"])
    for r in records:
        writer.writerow([r["number"], r["state"], r["value"], r["epochs"], r["seconds"]]
                        + [r["params"].get(name) for name in param_names]
                        + [r["intermediate_values"].get(str(s)) for s in steps] + [r["reason"]])
    with atomic_write(Path(output_dir) / "history.csv", mode="w") as handle:
        handle.write(buffer.getvalue())


def best_table(study, monitor, top=5):
    """A text table of the ``top`` best complete trials."""
    import optuna

    complete = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
                if t.value is not None]
    complete.sort(key=lambda t: t.value, reverse=study.direction == optuna.study.StudyDirection.MAXIMIZE)
    complete = complete[:top]
    if not complete:
        return "(no complete trials)"
    names = sorted({name for t in complete for name in t.params})
    header = ["rank", "trial", monitor, "epochs", "seconds"] + names
    rows = [[str(i + 1), str(t.number), f"{t.value:.4f}", str(t.user_attrs.get("epochs", "")),
             f"{t.user_attrs.get('seconds', 0.0):.1f}"] + [_fmt(t.params.get(n, "")) for n in names]
            for i, t in enumerate(complete)]
    widths = [max(len(row[i]) for row in [header] + rows) for i in range(len(header))]
    lines = ["  ".join(cell.rjust(w) for cell, w in zip(row, widths)) for row in [header] + rows]
    return "\n".join(lines)


def _summarize(study, optuna, output_dir, monitor, top, seconds, echo):
    State = optuna.trial.TrialState
    trials = study.get_trials(deepcopy=False)
    counts = {state: sum(t.state == state for t in trials) for state in State}
    best = next(iter(sorted((t for t in trials if t.state == State.COMPLETE and t.value is not None),
                            key=lambda t: t.value,
                            reverse=study.direction == optuna.study.StudyDirection.MAXIMIZE)), None)
    table = best_table(study, monitor, top)
    echo(f"\nBest trials of {study.study_name!r} ({counts[State.COMPLETE]} complete, {counts[State.PRUNED]} pruned, "
         f"{counts[State.FAIL]} failed):\n{table}")
    model_path = None
    if best is not None:
        model_path = best.user_attrs.get("model_path")
        if model_path and Path(model_path).is_file():
            echo(f"Best model (trial {best.number}, {monitor} {best.value:.4f}): {model_path}")
        else:
            echo(f"Best trial {best.number}'s model was saved by an earlier run to {model_path or 'another place'}, "
                 "which is not there now.")
            model_path = None
    echo(f"History: {output_dir / 'history.json'} and {output_dir / 'history.csv'}")
    echo(f"Search time: {seconds:.1f}s")
    return SearchResult(study=study, best_trial=best, best_value=None if best is None else best.value,
                        best_params=None if best is None else dict(best.params),
                        complete=counts[State.COMPLETE], pruned=counts[State.PRUNED], failed=counts[State.FAIL],
                        finished=counts[State.COMPLETE] + counts[State.PRUNED], seconds=seconds,
                        output_dir=Path(output_dir), model_path=model_path, table=table,
                        history_json=Path(output_dir) / "history.json", history_csv=Path(output_dir) / "history.csv")


__all__ = ["run_search", "SearchResult", "TuneError", "write_history", "best_table", "SearchSpace"]
