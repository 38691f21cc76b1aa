"""nbnet.tune: search spaces, and tiny real searches (a small MLP on a slice of MNIST) run
locally in parallel processes, on a Dask LocalCluster, and resumed after being killed."""

import json
import os
import signal
import subprocess
import sys
import threading

import pytest

from nbnet.errors import NbnetError
from nbnet.tune import Choice, Int, LogUniform, SearchSpace, Uniform, load_space
from nbnet.tune.search import TuneError

# lr 1e-6 cannot learn anything in two epochs (val accuracy stays near 0.1): the pruner's target.
GOOD, BAD = 3e-3, 1e-6
SPACE = {"learning_rate": {"type": "choice", "values": [BAD, GOOD]}, "units": [16, 32], "units2": 0,
         "dropout": 0.0, "batch_size": 128}
# How long the kill-and-resume test waits for its first 3 trials before calling the run stuck.
RESUME_WAIT_S = 300
TINY = dict(model="tunable_mlp", space=SPACE, epochs=2, seed=0, train_samples=1000, val_samples=500)


def _optuna():
    return pytest.importorskip("optuna")


def _study(optuna, storage, name):
    return optuna.load_study(study_name=name, storage=storage)


def _finished(optuna, study):
    return study.get_trials(states=(optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED))


def _enqueue_good_then_bad(optuna, storage, name):
    """Make pruning certain: trial 0 learns, trial 1 cannot, and the median pruner (after one
    finished trial) stops trial 1 after its first epoch."""
    study = optuna.create_study(storage=storage, study_name=name, direction="maximize")
    study.enqueue_trial({"learning_rate": GOOD, "units": 32})
    study.enqueue_trial({"learning_rate": BAD, "units": 32})


def _silent(line):
    pass


# -- spaces ------------------------------------------------------------------------------------
def test_space_from_json_python_and_errors(tmp_path):
    text = {"learning_rate": {"type": "loguniform", "low": 1e-4, "high": 1e-2},
            "optimizer": {"type": "choice", "values": ["adam", "sgd"]}, "batch_size": [32, 64],
            "filters": {"type": "int", "low": 16, "high": 48, "step": 16},
            "dropout": {"type": "uniform", "low": 0.0, "high": 0.5}, "units": 64}
    path = tmp_path / "space.json"
    path.write_text(json.dumps(text))
    space = load_space(path)
    python = SearchSpace(learning_rate=LogUniform(1e-4, 1e-2), optimizer=Choice(["adam", "sgd"]),
                         batch_size=Choice([32, 64]), filters=Int(16, 48, step=16), dropout=Uniform(0.0, 0.5),
                         units=64)
    assert space == python == load_space(json.dumps(text)) == load_space(space.to_dict())
    assert space.parameters["units"].value == 64
    source = tmp_path / "space.py"
    source.write_text("from nbnet.tune import LogUniform\nSPACE = {'learning_rate': LogUniform(1e-3, 1e-1)}\n")
    assert load_space(source).names() == ["learning_rate"]
    for bad, message in [({"lr": {"type": "loguniform", "low": 0, "high": 1}}, "0 < low"),
                         ({"lr": {"type": "gaussian"}}, "use one of"),
                         ({"batch_size": [0, 32]}, "positive integers"),
                         ({"units": {"type": "int", "low": 1.5, "high": 4}}, "integer")]:
        with pytest.raises(NbnetError, match=message):
            load_space(bad)


def test_space_names_must_fit_the_builder(tmp_path):
    _optuna()
    from nbnet.tune import run_search

    with pytest.raises(TuneError, match="takes only learning_rate, optimizer, seed"):
        run_search("mnist_mlp", {"filters": [16, 32]}, trials=1, epochs=1, output_dir=tmp_path, echo=_silent)
    assert not (tmp_path / "study.db").exists()  # refused before any study is made


def test_import_and_cli_without_optuna():
    code = ("import sys; sys.modules['optuna'] = None\n"
            "import nbnet.tune, nbnet.tune.cli\n"
            "assert 'numba' not in sys.modules and 'numpy' not in sys.modules\n"
            "from click.testing import CliRunner\n"
            "result = CliRunner().invoke(nbnet.tune.cli.tune, ['--trials', '1'])\n"
            "print(result.exit_code); print(result.output)\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("1\n") and "pip install nbnet[tune]" in run.stdout


# -- searches ------------------------------------------------------------------------------------
def test_local_parallel_search_with_cli(tmp_path):
    optuna = _optuna()
    from click.testing import CliRunner

    from nbnet.models import load_model
    from nbnet.tune.cli import tune
    from nbnet.tune.search import available_cores

    out = tmp_path / "out"
    (tmp_path / "space.json").write_text(json.dumps(SPACE))
    result = CliRunner().invoke(tune, ["--model", "tunable_mlp", "--space", str(tmp_path / "space.json"),
                                       "--trials", "4", "--epochs", "2", "--seed", "0", "--jobs", "2",
                                       "--train-samples", "1000", "--val-samples", "500", "--startup-trials", "1",
                                       "--output-dir", str(out)])
    assert result.exit_code == 0, result.output
    assert "2 local worker processes" in result.output
    assert result.output.count("finished | best") == 4  # a progress line per finished trial
    assert "Best trials of" in result.output and "rank  trial  val_accuracy" in result.output
    study = _study(optuna, f"sqlite:///{out / 'study.db'}", "nbnet-tunable_mlp")
    finished = _finished(optuna, study)
    assert len(finished) == 4
    assert {t.user_attrs["numba_threads"] for t in finished} == {max(1, available_cores() // 2)}
    best = study.best_trial
    model = load_model(out / "best_model.nbnet")
    assert model.name == "tunable_mlp" and model.layers[1].units == best.params["units"]
    history = json.loads((out / "history.json").read_text())
    assert [t["number"] for t in history["trials"]] == [t.number for t in study.trials]
    csv_lines = (out / "history.csv").read_text().splitlines()
    assert csv_lines[0].startswith("number,state,value") and len(csv_lines) == 1 + len(study.trials)


def test_sequential_search_prunes_a_trial_that_cannot_learn(tmp_path):
    optuna = _optuna()
    from nbnet.tune import run_search

    storage = f"sqlite:///{tmp_path / 'study.db'}"
    _enqueue_good_then_bad(optuna, storage, "prune")
    result = run_search(**TINY, trials=3, jobs=1, storage=storage, study_name="prune", output_dir=tmp_path,
                        pruner=optuna.pruners.MedianPruner(n_startup_trials=1), startup_trials=10, echo=_silent)
    trials = _study(optuna, storage, "prune").trials
    assert trials[0].state.name == "COMPLETE" and trials[0].value > 0.5
    assert trials[1].state.name == "PRUNED" and trials[1].user_attrs["epochs"] == 1  # stopped after epoch 1 of 2
    assert result.finished == 3 and result.pruned >= 1 and result.best_value == max(
        t.value for t in trials if t.state.name == "COMPLETE")


def test_dask_local_cluster(tmp_path):
    optuna = _optuna()
    distributed = pytest.importorskip("distributed")
    from nbnet.tune import run_search

    storage = f"sqlite:///{tmp_path / 'study.db'}"
    _enqueue_good_then_bad(optuna, storage, "dask")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as cluster:
        address = cluster.scheduler_address.replace("tcp://", "dask://")
        lines = []
        result = run_search(**TINY, trials=3, scheduler=address, storage=storage, study_name="dask",
                            output_dir=tmp_path, pruner=optuna.pruners.MedianPruner(n_startup_trials=1),
                            startup_trials=10, echo=lines.append)
    assert "Dask scheduler" in lines[0]
    trials = _study(optuna, storage, "dask").trials
    assert result.finished == 3 and len(trials) == 3
    assert trials[0].state.name == "COMPLETE" and trials[1].state.name == "PRUNED"
    assert (tmp_path / "best_model.nbnet").is_file()


def test_resume_after_kill_loses_and_repeats_nothing(tmp_path):
    """Kill a running `nbnet tune` (SIGKILL: nothing cleaned up), then ask for 2 more trials than
    it finished: exactly that many are finished, the first ones unchanged."""
    optuna = _optuna()
    from nbnet.tune import run_search

    storage = f"sqlite:///{tmp_path / 'study.db'}"
    command = [sys.executable, "-m", "nbnet.tune.cli", "--model", "tunable_mlp", "--space", json.dumps(SPACE),
               "--trials", "500", "--epochs", "2", "--seed", "0", "--jobs", "1", "--train-samples", "1000",
               "--val-samples", "500", "--storage", storage, "--study-name", "resume", "--output-dir", str(tmp_path)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    lines = []
    three_finished_or_ended = threading.Event()

    def read():
        for line in process.stdout:
            lines.append(line)
            if sum("finished | best" in seen for seen in lines) >= 3:  # a line per finished trial
                three_finished_or_ended.set()
        three_finished_or_ended.set()  # the output ended: the process exited or closed it

    threading.Thread(target=read, daemon=True).start()
    try:
        # An event, not a polling deadline: the bound only ends a run that is stuck, with the
        # output so far (3 tiny trials take seconds; the bound allows for a busy 2-core runner).
        assert three_finished_or_ended.wait(RESUME_WAIT_S), (
            f"nbnet tune finished fewer than 3 trials in {RESUME_WAIT_S} s:\n{''.join(lines)}")
        assert sum("finished | best" in line for line in list(lines)) >= 3, (
            f"nbnet tune stopped before finishing 3 trials (exit status {process.poll()}):\n{''.join(lines)}")
        assert process.poll() is None, f"nbnet tune exited before it was killed:\n{''.join(lines)}"
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # the coordinator and its worker, at once
        process.wait(10)
    # The kill may have fallen between trials: leave one running for certain, as a kill mid-trial does.
    orphan = _study(optuna, storage, "resume").ask()
    orphan.suggest_categorical("learning_rate", [BAD, GOOD])
    orphan.suggest_categorical("units", [16, 32])
    before = _study(optuna, storage, "resume").trials
    done_before = [t for t in before if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(done_before) >= 3
    target = len(done_before) + 2

    result = run_search(**TINY, trials=target, jobs=1, storage=storage, study_name="resume", output_dir=tmp_path,
                        startup_trials=1, echo=_silent)
    after = _study(optuna, storage, "resume").trials
    assert result.finished == target == len(_finished(optuna, _study(optuna, storage, "resume")))
    key = lambda t: (t.number, t.state.name, t.value, t.params, t.intermediate_values)  # noqa: E731
    assert [key(after[t.number]) for t in done_before] == [key(t) for t in done_before]
    assert not [t for t in after if t.state.name == "RUNNING"]
    # Only the remainder ran: a trial the kill left running became FAIL, and its hyperparameters were retried.
    new = [t for t in after if t.number >= len(before)]
    assert len([t for t in new if t.state.name in ("COMPLETE", "PRUNED")]) == 2
    stale = [t for t in before if t.state.name == "RUNNING"]
    assert orphan.number in [t.number for t in stale]
    for t in stale:
        assert after[t.number].state.name == "FAIL"
        if t.params:  # a kill between ask and the first suggest leaves nothing to retry
            assert any(n.user_attrs.get("retry_of") == t.number and n.params == t.params for n in new)
