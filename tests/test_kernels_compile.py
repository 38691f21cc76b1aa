"""Kernels compile once per dtype and rank, never per batch size, and a second process start
reuses the on-disk cache instead of compiling again."""

import json
import os
import subprocess
import sys
import textwrap

import numba
import numpy as np
import pytest

from nbnet import layers
from nbnet.kernels.activations import RELU, _bias_activation_blocks, bias_activation_forward
from nbnet.kernels.conv import im2col, output_geometry
from nbnet.kernels.pool import maxpool_forward

# bias_activation_forward is a Python dispatcher; _bias_activation_blocks is its compiled kernel.
KERNELS = {"im2col": im2col, "bias_activation_forward": _bias_activation_blocks,
           "maxpool_forward": maxpool_forward}


def _signatures(dispatcher, dtype):
    """The compiled signatures whose first (data) argument holds ``dtype``."""
    return [sig for sig in dispatcher.signatures if sig[0].dtype == dtype]


def _run_kernels(batch, dtype):
    rng = np.random.default_rng(batch)
    x = rng.standard_normal((batch, 7, 6, 3)).astype(dtype)
    # A 3x2 kernel, strides 2, 'same' padding.
    out_h, out_w, top, left = output_geometry(7, 6, (3, 2), (2, 2), "same")
    cols = np.empty((batch * out_h * out_w, 3 * 2 * 3), dtype)
    im2col(x, 3, 2, 2, 2, top, left, out_h, out_w, cols)
    z = cols[:, :4].copy()
    bias_activation_forward(z, np.zeros(4, dtype), RELU, 0.0, z)
    out_h, out_w, top, left = output_geometry(7, 6, (2, 2), (2, 2), "valid")
    y = np.empty((batch, out_h, out_w, 3), dtype)
    maxpool_forward(x, 2, 2, 2, 2, top, left, y, np.empty(y.shape, np.int32))
    return cols, z, y


def test_one_float32_signature_across_batch_sizes():
    _run_kernels(3, np.float32)
    after_first = {name: list(d.signatures) for name, d in KERNELS.items()}
    cols, z, y = _run_kernels(5, np.float32)
    assert cols.shape[0] == 5 * 4 * 3 and y.shape[0] == 5  # the second call really had batch 5
    for name, dispatcher in KERNELS.items():
        assert list(dispatcher.signatures) == after_first[name], f"{name} recompiled for batch 5"
        float32 = _signatures(dispatcher, numba.float32)
        assert len(float32) == 1, f"{name}: {float32}"
        assert float32[0][0].ndim == (4 if name != "bias_activation_forward" else 2)


def test_layers_do_not_recompile_for_a_new_batch_size():
    conv = layers.Conv2D(4, (3, 2), strides=2, padding="same", activation="relu")
    conv.build((7, 6, 3), np.random.default_rng(0))
    pool = layers.MaxPooling2D(2)
    pool.build((4, 3, 4))
    counts = None
    for batch in (3, 5, 2):
        x = np.random.default_rng(batch).standard_normal((batch, 7, 6, 3)).astype(np.float32)
        y = pool.forward(conv.forward(x))
        assert y.shape == (batch, 2, 1, 4)
        now = {name: len(d.signatures) for name, d in KERNELS.items()}
        assert counts is None or now == counts, (batch, counts, now)
        counts = now
    for name, dispatcher in KERNELS.items():
        assert len(_signatures(dispatcher, numba.float32)) == 1, name


_CHILD = textwrap.dedent("""
    import json
    import numpy as np
    from nbnet import layers
    from nbnet.kernels.activations import _other_bias_activation_blocks
    from nbnet.kernels.implicit_gemm import _forward as implicit_forward
    from nbnet.kernels.pool import maxpool_forward

    # In float32 both convs run the implicit GEMM (see Conv2D.forward); ELU in a pass of
    # its own, relu inside the GEMM's stores.
    first = layers.Conv2D(2, 3, padding="same", activation="elu")
    first.build((5, 5, 1), np.random.default_rng(0))
    second = layers.Conv2D(2, 3, padding="same", activation="relu")
    second.build((5, 5, 2), np.random.default_rng(0))
    pool = layers.MaxPooling2D(2)
    pool.build((5, 5, 2))
    for batch in (3, 5):
        pool.forward(second.forward(first.forward(np.ones((batch, 5, 5, 1), np.float32))))
    report = {}
    for name, d in [("implicit_forward", implicit_forward), ("bias_activation_forward", _other_bias_activation_blocks),
                    ("maxpool_forward", maxpool_forward)]:
        report[name] = {"signatures": len(d.signatures),
                        "hits": sum(d.stats.cache_hits.values()),
                        "misses": sum(d.stats.cache_misses.values()),
                        "cache_path": d.stats.cache_path}
    print("REPORT " + json.dumps(report))
""")


def _child(cache_dir):
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache_dir), "NUMBA_NUM_THREADS": "1"}
    env.pop("NUMBA_DISABLE_JIT", None)
    done = subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    line = [ln for ln in done.stdout.splitlines() if ln.startswith("REPORT ")][-1]
    return json.loads(line[len("REPORT "):])


def test_second_process_reuses_disk_cache(tmp_path):
    cache_dir = tmp_path / "numba-cache"
    first = _child(cache_dir)
    second = _child(cache_dir)
    for name in first:
        assert first[name]["signatures"] == second[name]["signatures"] == 1, (name, first, second)
        assert first[name]["cache_path"].startswith(str(cache_dir)), first[name]
        # A fresh cache directory: the first process had to compile (and so wrote the cache) ...
        assert first[name]["misses"] >= 1 and first[name]["hits"] == 0, (name, first[name])
        # ... and the second loaded every kernel from it.
        assert second[name]["hits"] >= 1 and second[name]["misses"] == 0, (name, second[name])
    assert any(cache_dir.rglob("*.nbi")) and any(cache_dir.rglob("*.nbc"))


def test_warmup_helper_process_warms_the_segments_of_a_chain(monkeypatch):
    """On a cold cache a second process warms up the segments from each weighted layer on
    to the next, the last first and the first second (a conv and the pool after it stay
    together); it runs on its own and is stopped when the warm-up ends."""
    import json
    import subprocess

    from nbnet import layers, models, warmup as warmup_module

    model = models.Sequential([layers.Input((8, 8, 1)), layers.Conv2D(4, 3, activation="relu"),
                               layers.Conv2D(4, 3, activation="relu"), layers.MaxPooling2D(2), layers.Flatten(),
                               layers.Dense(10, activation="softmax")], seed=0)
    model.compile("adam", "sparse_categorical_crossentropy", ["accuracy"])
    jobs = warmup_module._segment_jobs(model)
    assert [[entry["class_name"] for entry in job["layers"]] for job in jobs] == [
        ["Dense"], ["Conv2D"], ["Conv2D", "MaxPooling2D", "Flatten"]]  # from the back, the first second
    assert [job["input_shape"] for job in jobs] == [[16], [8, 8, 1], [6, 6, 4]]
    # Inner segments train on the model's loss from logits: the kernel of its fused softmax.
    own = model._heads[0].loss.get_config()
    assert not own["from_logits"] and [job["loss"] for job in jobs] == [own] + [{**own, "from_logits": True}] * 2
    request = {"segments": jobs, "inference": True}
    done = subprocess.run([sys.executable, "-m", "nbnet.warmup", "--helper"], input=json.dumps(request).encode(),
                          capture_output=True, timeout=600)
    assert done.returncode == 0 and "skipped" not in done.stderr.decode(), done.stderr.decode()[-2000:]
    segments = ["['Dense']", "['Conv2D']", "['Conv2D', 'MaxPooling2D', 'Flatten']"]
    assert done.stdout.decode().splitlines() == ([f"warmed {names}" for names in segments]
                                                 + [f"inferred {names}" for names in segments])

    started = []
    real_popen = subprocess.Popen
    monkeypatch.setattr(warmup_module, "HELPER_AFTER", 0.0)
    monkeypatch.setattr(warmup_module.subprocess, "Popen", lambda *a, **k: started.append(a) or real_popen(*a, **k))
    warmup_module.warmup(model)
    assert started and started[0][0][1:] == ["-m", "nbnet.warmup", "--helper"]
    assert warmup_module._segment_jobs(models.Sequential([layers.Input((4,)), layers.Dense(2)])) is None  # uncompiled


def _residual_model():
    from nbnet import models

    inputs = layers.Input((8, 8, 1))
    x = layers.Conv2D(4, 3, padding="same", activation="relu")(inputs)
    y = layers.Conv2D(4, 3, padding="same")(x)
    y = layers.BatchNormalization()(y)
    y = layers.Activation("relu")(y)
    x = layers.GlobalAveragePooling2D()(layers.Add()([x, y]))
    model = models.Model(inputs, layers.Dense(3, activation="softmax")(x))
    model.compile("adam", "sparse_categorical_crossentropy")
    return model


def test_helper_segments_of_a_graph_model_stop_at_merges():
    """A graph model's segments follow single-input chains; the merge and what follows it
    up to the next weighted layer stay with the main process. An unknown layer's segment
    is skipped by the helper, which still warms the others."""
    import json
    import subprocess

    from nbnet import warmup as warmup_module

    jobs = warmup_module._segment_jobs(_residual_model())
    assert [[entry["class_name"] for entry in job["layers"]] for job in jobs] == [
        ["Dense"], ["Conv2D"], ["BatchNormalization", "Activation"], ["Conv2D"]]
    assert [job["input_shape"] for job in jobs] == [[4], [8, 8, 1], [8, 8, 4], [8, 8, 4]]
    assert [job["loss"]["from_logits"] for job in jobs] == [False, True, True, True]
    broken = dict(jobs[0], layers=[{"class_name": "NoSuchLayer", "config": {}}])
    request = {"segments": [broken] + jobs, "inference": False}  # as for a first training step
    done = subprocess.run([sys.executable, "-m", "nbnet.warmup", "--helper"],
                          input=json.dumps(request).encode(), capture_output=True, timeout=600)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    skipped = [line for line in done.stderr.decode().splitlines() if line.startswith("skipped")]
    assert len(skipped) == 1 and "NoSuchLayer" in skipped[0], done.stderr.decode()[-2000:]
    assert done.stdout.decode().splitlines() == [
        "warmed ['Dense']", "warmed ['Conv2D']", "warmed ['BatchNormalization', 'Activation']", "warmed ['Conv2D']"]


def _unstarted_helpers(started, requests):
    """A stand-in for subprocess.Popen that starts no helper process: it records each
    one's NBNET_WARMUP_HELPER in ``started`` and the request written to it in ``requests``."""
    class Unstarted:
        def __init__(self, *args, **kwargs):
            started.append(kwargs["env"]["NBNET_WARMUP_HELPER"])
            self.stdin = self

        def write(self, data):
            requests.append(json.loads(data))

        def close(self):
            pass

        def poll(self):
            return 0

    return Unstarted


def test_first_training_step_starts_the_helper_once(monkeypatch):
    """A Keras script's first fit compiles with the helper too (here: as if compiling took
    longer than HELPER_AFTER); later steps and fits start none, nor does
    NBNET_WARMUP_HELPER=0."""
    from nbnet import warmup as warmup_module

    started, requests = [], []
    monkeypatch.setattr(warmup_module, "HELPER_AFTER", 0.0)
    monkeypatch.setattr(warmup_module.subprocess, "Popen", _unstarted_helpers(started, requests))
    x = np.zeros((8, 8, 8, 1), np.float32)
    y = np.zeros(8, np.int64)
    model = _residual_model()
    model.fit(x, y, batch_size=4, epochs=2, verbose=0)
    model.fit(x, y, batch_size=4, verbose=0)
    assert started == ["0"]  # one helper, told to start none of its own
    assert requests[0]["inference"] is False and len(requests[0]["segments"]) == 4  # the step's kernels only
    monkeypatch.setenv("NBNET_WARMUP_HELPER", "0")
    _residual_model().fit(x, y, batch_size=4, verbose=0)
    assert started == ["0"]


def test_on_an_empty_cache_the_helper_starts_with_fit(monkeypatch):
    """On an empty kernel cache (a fresh install) fit starts the helper before it checks the
    data, not at its first step, and only that once; on a warm cache it waits for the step."""
    from nbnet import warmup as warmup_module

    events, requests = [], []
    unstarted = _unstarted_helpers(events, requests)
    monkeypatch.setattr(warmup_module.subprocess, "Popen", lambda *a, **k: unstarted(*a, **k))
    monkeypatch.setattr(warmup_module, "_cache_empty", lambda: True)
    x = np.zeros((8, 8, 8, 1), np.float32)
    y = np.zeros(8, np.int64)
    model = _residual_model()
    prepare = model._prepare_xy
    monkeypatch.setattr(model, "_prepare_xy", lambda *a, **k: events.append("data") or prepare(*a, **k))
    model.fit(x, y, batch_size=4, epochs=2, verbose=0)
    model.fit(x, y, batch_size=4, verbose=0)
    assert events == ["0", "data", "data"] and len(requests) == 1  # one helper, started before the data's check

    events.clear()
    monkeypatch.setattr(warmup_module, "_cache_empty", lambda: False)
    monkeypatch.setattr(warmup_module, "HELPER_AFTER", 0.0)
    warm = _residual_model()
    prepare = warm._prepare_xy
    monkeypatch.setattr(warm, "_prepare_xy", lambda *a, **k: events.append("data") or prepare(*a, **k))
    warm.fit(x, y, batch_size=4, verbose=0)
    assert events[0] == "data" and events.count("0") == 1  # a warm cache: the first step starts it


def test_warmup_runs_the_kernels_a_fit_of_its_batch_size_runs(monkeypatch):
    """Layers choose kernels by batch size (a 3x3 conv of 32 channels takes Winograd from 16
    images, the implicit GEMM below): the warm-up steps on the batch training will use, so
    the first fit finds every kernel it calls compiled."""
    from nbnet import models
    from nbnet import warmup as warmup_module
    from nbnet.devices import cpu

    monkeypatch.setenv("NBNET_WARMUP_HELPER", "0")
    called = set()
    for name in dir(cpu):
        function = getattr(cpu, name)
        if not name.startswith("_") and callable(function) and not isinstance(function, type):
            monkeypatch.setattr(cpu, name, lambda *a, __f=function, __n=name, **k: called.add(__n) or __f(*a, **k))
    model = models.Sequential([layers.Input((14, 14, 32)), layers.Conv2D(32, 3, padding="same", activation="relu"),
                               layers.Flatten(), layers.Dense(3, activation="softmax")], seed=0)
    model.compile("adam", "sparse_categorical_crossentropy")
    warmup_module.warmup(model, batch_size=32)
    warmed = set(called)
    called.clear()
    model.fit(np.ones((64, 14, 14, 32), np.float32), np.zeros(64, np.int64), batch_size=32, verbose=0)
    assert "conv3x3_forward" in called and "conv3x3_backward" in called  # Winograd at 32 images
    assert called - {"available_memory"} <= warmed, called - warmed  # (a query, not a kernel)
    assert "implicit_conv_forward" in warmed  # and a predict of a few images' kernels
    # nbnet train's warm-up (few_samples=False) leaves the few images' kernels out.
    called.clear()
    warmup_module.warmup(model, batch_size=32, few_samples=False)
    assert "conv3x3_forward" in called and "conv3x3_backward" in called and "implicit_conv_forward" not in called


def test_nbnet_train_warms_up_without_a_few_samples_predict(monkeypatch, tmp_path):
    """`nbnet train` never predicts a few samples: its warm-up leaves their kernels out."""
    from click.testing import CliRunner

    from nbnet import warmup as warmup_module
    from nbnet.cli import main

    calls = []
    monkeypatch.setattr(warmup_module, "warmup", lambda model, **kwargs: calls.append(kwargs) or 0.0)
    data = tmp_path / "data.npz"
    rng = np.random.default_rng(0)
    np.savez(data, x_train=rng.random((64, 8, 8, 1)).astype(np.float32), y_train=np.arange(64) % 2)
    result = CliRunner().invoke(main, ["train", "--data", str(data), "--epochs", "1", "--output",
                                       str(tmp_path / "m.nbnet")])
    assert result.exit_code == 0, result.output
    assert len(calls) == 1 and calls[0]["few_samples"] is False


@pytest.mark.skipif(sys.platform == "win32", reason="compile locks use flock")
def test_compile_locks_hold_a_compile_until_the_other_holder_is_done():
    """While a helper runs, compiling a cached nbnet kernel takes its file lock first
    (nbnet/compile_locks.py): a compile waits while another holds the lock, then runs."""
    import fcntl
    import threading

    from nbnet import compile_locks
    from nbnet.kernels import activations

    function = activations.add_chunk_sums
    partial = np.arange(24.0).reshape(3, 8)[:, ::2]  # a layout nothing else compiles it for
    out = np.zeros(4)
    done = threading.Event()
    compile_locks.enable()
    try:
        with open(compile_locks._lock_path(f"{function.py_func.__module__}.{function.py_func.__qualname__}"),
                  "a+b") as holder:
            fcntl.flock(holder, fcntl.LOCK_EX)
            worker = threading.Thread(target=lambda: (function(partial, out), done.set()))
            worker.start()
            assert not done.wait(0.5)  # waiting for the lock
            fcntl.flock(holder, fcntl.LOCK_UN)
        assert done.wait(120)
        worker.join()
    finally:
        compile_locks.disable()
    np.testing.assert_array_equal(out, partial.sum(axis=0))


@pytest.mark.skipif(sys.platform == "win32", reason="compile locks use flock")
def test_compile_locks_give_up_on_a_holder_that_never_lets_go(monkeypatch):
    """A stuck holder (a hung helper) delays a compile by MAX_WAIT, then it compiles anyway."""
    import fcntl

    from nbnet import compile_locks
    from nbnet.kernels import activations

    import threading

    monkeypatch.setattr(compile_locks, "MAX_WAIT", 0.2)
    function = activations.add_chunk_sums
    partial = np.arange(12, dtype=np.float32).reshape(3, 4)[::2]  # another new layout
    out = np.zeros(4, np.float32)
    done = threading.Event()
    compile_locks.enable()
    try:
        with open(compile_locks._lock_path(f"{function.py_func.__module__}.{function.py_func.__qualname__}"),
                  "a+b") as holder:
            fcntl.flock(holder, fcntl.LOCK_EX)
            worker = threading.Thread(target=lambda: (function(partial, out), done.set()), daemon=True)
            worker.start()
            assert done.wait(120)  # finished while the lock is still held
    finally:
        compile_locks.disable()
    np.testing.assert_array_equal(out, partial.sum(axis=0))


def test_an_empty_cache_starts_the_helper_with_the_first_step(tmp_path, monkeypatch):
    """Numba's cache without a loss kernel, which every training step runs (a fresh
    install), counts as empty: the first step's helper starts at once, not HELPER_AFTER
    into the step; once a loss has run, the cache no longer counts as empty."""
    from nbnet import warmup as warmup_module

    probe = textwrap.dedent("""
        import numpy as np
        from nbnet import warmup
        from nbnet.kernels import losses
        print(warmup._cache_empty())
        losses.mean_squared_error(np.ones((2, 3), np.float32), np.zeros((2, 3), np.float32),
                                  np.ones(0, np.float32), np.empty((2, 3), np.float32))
        print(warmup._cache_empty())
    """)
    done = subprocess.run([sys.executable, "-c", probe], env={**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)},
                          capture_output=True, text=True, timeout=300)
    assert done.stdout.split() == ["True", "False"], done.stderr[-2000:]
    assert not warmup_module._cache_empty()  # this suite's cache: steps have run

    requests = []
    monkeypatch.setattr(warmup_module, "HELPER_AFTER", 600.0)
    monkeypatch.setattr(warmup_module.subprocess, "Popen", _unstarted_helpers([], requests))
    x, y = np.zeros((8, 8, 8, 1), np.float32), np.zeros(8, np.int64)
    _residual_model().fit(x, y, batch_size=4, verbose=0)
    assert requests == []  # a warm cache: the step ended long before HELPER_AFTER
    monkeypatch.setattr(warmup_module, "_cache_empty", lambda: True)
    _residual_model().fit(x, y, batch_size=4, verbose=0)
    assert len(requests) == 1 and len(requests[0]["segments"]) == 4
