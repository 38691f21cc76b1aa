"""Compile (or load from Numba's disk cache) every kernel a model uses, before the real work.

The first ``nbnet train`` on a fresh install spends seconds compiling; doing it up front
on a throwaway copy of the model lets the CLI say so, and ``nbnet warmup`` can do it at
install time. Shapes do not matter to Numba, only dtypes and ranks: two samples suffice.

Numba compiles on one core. When the warm-up is still compiling after half a second (a
cold cache), a second process warms up a layer chain from the back (see _tail_jobs), into
the same disk cache, while this one works from the front: whatever it finished, this one
loads instead of compiling. The MNIST CNN's cold start (`nbnet warmup`, cache cleared, 2
cores): 20.7 s in one process (NBNET_WARMUP_HELPER=0), 13.7 s with the helper; most of
what is left is its first conv's forward (6.3 s) and backward (4.8 s) kernels, which
compile one after the other here.
"""

import json
import os
import subprocess
import sys
import threading
import time

import numpy as np

# Seconds of warm-up after which the cache counts as cold and the helper process starts.
HELPER_AFTER = 0.5


def warmup(model, progress=None):
    """Run one training step and one prediction of a copy of ``model`` on zeros; returns
    the seconds taken. ``progress(text)`` is told what is happening."""
    from .saving import model_from_config

    started = time.perf_counter()
    on_gpu = model.device != "cpu"
    if progress:
        progress("Compiling GPU kernels (on every run: CUDA kernels are not cached)..." if on_gpu
                 else "Compiling kernels (first run only; cached on disk afterwards)...")
    copy = model_from_config(model.get_config())
    helper = _Helper(_tail_jobs(model)) if not on_gpu and os.environ.get("NBNET_WARMUP_HELPER", "1") != "0" else None
    try:
        _warm(model, copy)
    finally:
        if helper is not None:
            helper.stop()
    seconds = time.perf_counter() - started
    if progress:
        progress(f"Kernels ready in {seconds:.1f}s.")
    return seconds


def _warm(model, copy):
    from . import metrics

    if copy.built and model.loss is not None:
        heads = model._heads
        loss = [head.loss for head in heads]
        metric_lists = [[metrics.serialize(m) for m in head.metrics] for head in heads]
        copy.compile(optimizer=type(model.optimizer)(), loss=loss if len(heads) > 1 else loss[0],
                     metrics=metric_lists if len(heads) > 1 else metric_lists[0], device=model.device)
        x = [np.zeros((2,) + tuple(shape), np.float32) for shape in copy._input_shapes()]
        y = [np.zeros(2, np.int64) if head.loss.sparse_targets else np.zeros((2, head.width), np.float32)
             for head in heads]
        copy.train_on_batch(x, y)
        copy.evaluate(x, y, verbose=0)
        copy.predict(x)


def _tail_jobs(model):
    """What the helper process warms up, in order: Sequentials of the layers from each
    weighted layer after the first on, the last one's first, so the helper works from the
    back while this process works from the front, and they meet in the middle instead of
    compiling the same kernels side by side (a first layer on few channels takes kernel
    paths of its own); as config and compile arguments. None where the model is not a
    built, compiled chain of two or more weighted layers."""
    from . import metrics
    from .models import Sequential

    if not isinstance(model, Sequential) or not model.built or model.loss is None or len(model._heads) != 1:
        return None
    weighted = [i for i, layer in enumerate(model.layers) if layer.weight_order]
    if len(weighted) < 2:
        return None
    head = model._heads[0]
    compile_args = {"loss": head.loss.get_config(), "metrics": [metrics.serialize(m) for m in head.metrics],
                    "optimizer": type(model.optimizer).__name__}
    return [{"input_shape": [int(d) for d in model.layers[start].built_input_shape],
             "layers": [{"class_name": type(layer).__name__, "config": layer.get_config()}
                        for layer in model.layers[start:]], **compile_args}
            for start in reversed(weighted[1:])]


class _Helper:
    """The helper process, started HELPER_AFTER seconds into a warm-up that is still
    running, and stopped (killed if still compiling) when the warm-up ends."""

    def __init__(self, job):
        self.process, self._lock, self._stopped = None, threading.Lock(), False
        self._timer = None
        if job and HELPER_AFTER <= 0:
            self._start(job)
        elif job:
            self._timer = threading.Timer(HELPER_AFTER, self._start, [job])
            self._timer.daemon = True
            self._timer.start()

    def _start(self, job):
        with self._lock:
            if self._stopped:
                return
            self.process = subprocess.Popen([sys.executable, "-m", "nbnet.warmup", "--helper"], stdin=subprocess.PIPE,
                                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            self.process.stdin.write(json.dumps(job).encode())
            self.process.stdin.close()

    def stop(self):
        with self._lock:
            self._stopped = True
            if self._timer:
                self._timer.cancel()
            if self.process is not None and self.process.poll() is None:
                # Numba writes a cache entry to a temporary file and renames it, so a
                # kill leaves no half-written entry behind.
                self.process.kill()
                self.process.wait()


def _helper_main():
    """The helper process: warm up the tail models the parent described on stdin."""
    from . import layers as layers_module, losses, optimizers
    from .models import Sequential

    for job in json.loads(sys.stdin.read()):
        built = [getattr(layers_module, entry["class_name"])(**entry["config"]) for entry in job["layers"]]
        tail = Sequential([layers_module.Input(tuple(job["input_shape"]))] + built)
        tail.compile(optimizer=getattr(optimizers, job["optimizer"])(), loss=losses.get(job["loss"]),
                     metrics=job["metrics"])
        _warm(tail, tail)


if __name__ == "__main__" and sys.argv[1:] == ["--helper"]:
    _helper_main()
