"""Compile (or load from Numba's disk cache) every kernel a model uses, before the real work.

The first ``nbnet train`` on a fresh install spends seconds compiling; doing it up front
on a throwaway copy of the model lets the CLI say so, and ``nbnet warmup`` can do it at
install time. Numba compiles per dtype and rank, not per shape, but the layers choose their
kernels by batch size (a conv takes Winograd from WINOGRAD_MIN_IMAGES images, a Dense of a
few rows kernels/few_rows.py), so the warm-up trains on a batch of the size training will
use and predicts on two samples (`nbnet warmup`; `nbnet train`, which never predicts a few
samples, leaves that out: the MNIST CNN's cold "Kernels ready" 13.2 -> 8.4 s, its first
`nbnet train --epochs 1` 19.4 -> 14.3 s).

Numba compiles on one core. When the warm-up, or any model's first training step, is
still compiling after half a second (a cold cache; at once where the cache holds no
nbnet loss kernel at all: a fresh install, where fit starts it as it begins, before it
checks and gathers the data), a second process warms up the
model's segments from the back (see _segment_jobs), into the same disk cache, while this
one works from the front: whatever it finished, this one loads instead of compiling, and
whatever it is compiling, this one waits for (compile_locks.py). Cold starts (cache
cleared, 2 cores, first fit of 256 images at batch 128, tools/cold_start.py): the MNIST CNN
11.5 s in one process (NBNET_WARMUP_HELPER=0), 7.0 s with the helper; LeNet-5 7.4 s; the
MLP 3.1 s; tf_mnist_5x5 6.6-7.3 s; the small ResNet 9.4-10.0 s, the Kaggle-style
BatchNormalization CNN 9.4-10.0 s, the BatchNormalization CIFAR CNN 10.5-10.8 s (the
ranges: this VM from hour to hour, 15-20 %). In
the slowest this process still waits 1-2 s at the end for the helper's last backward
kernels (the implicit GEMM's, 2.7 s to compile): the two halves are not yet even.
"""

import json
import os
import subprocess
import sys
import threading
import time
from contextlib import contextmanager

import numpy as np

from . import compile_locks

# Seconds of warm-up after which the cache counts as cold and the helper process starts;
# at once where Numba's cache holds no nbnet loss kernel at all (see _cache_empty).
HELPER_AFTER = 0.5
# The training batch a warm-up steps on: Keras's fit default. A larger one is held to
# WARMUP_BATCH_MAX samples of zeros (the kernels chosen do not change past that).
WARMUP_BATCH = 32
WARMUP_BATCH_MAX = 256
# The helper process steps its segments on this many samples: the few-image kernels (the
# implicit GEMM, below Conv2D's WINOGRAD_MIN_IMAGES) that first layers and small predicts
# take at any batch size, while this process compiles the large-batch ones (Winograd). At
# the step's own batch size both went for the same kernels and waited on each other's
# compile locks: cifar_bn's cold first fit 17.2-17.7 -> 19.4 s. Past few_rows' 8 rows, so
# its Dense layers take the matmuls a training batch takes, not the few-row kernel (2.1 s
# to compile, for nothing): cold first fits, 2 -> 9 samples, two rounds alternating, s:
# tf_mnist_5x5 8.3 / 8.2 -> 6.6 / 6.7, the zoo's net of many kinds 10.9 / 10.6 -> 9.4 /
# 8.7, kaggle_bn, resnet_small, cifar_bn 0.1-0.3 s less, the MLP, seed_cnn even.
HELPER_BATCH = 9


def warmup(model, progress=None, batch_size=WARMUP_BATCH, few_samples=True):
    """Run one training step (of ``batch_size`` samples, the batch training will use), an
    evaluate and (with ``few_samples``) a predict of two samples of a copy of ``model`` on
    zeros; returns the seconds taken. ``progress(text)`` is told what is happening.
    ``nbnet train``, which never predicts a few samples, leaves their kernels out (see the
    module's docstring)."""
    from .saving import model_from_config

    started = time.perf_counter()
    on_gpu = model.device != "cpu"
    if progress:
        progress("Compiling GPU kernels (on every run: CUDA kernels are not cached)..." if on_gpu
                 else "Compiling kernels (first run only; cached on disk afterwards)...")
    copy = model_from_config(model.get_config())
    with compile_helper(model, inference=few_samples):
        _warm(model, copy, batch=batch_size, few_samples=few_samples)
    seconds = time.perf_counter() - started
    if progress:
        progress(f"Kernels ready in {seconds:.1f}s.")
    return seconds


@contextmanager
def compile_helper(model, inference=False, cold_only=False):
    """While the block runs, a helper process compiles the kernels of ``model``'s later
    layers into the disk cache, if the block is still running (compiling) after
    HELPER_AFTER seconds: the first training step of every model and ``warmup`` run in
    it; on an empty cache (a fresh install) at once. Nothing starts on a warm cache, on
    the GPU, in the helper itself, or where NBNET_WARMUP_HELPER=0; with ``cold_only``
    nothing but on an empty cache. The helper compiles the training step's kernels (on
    HELPER_BATCH samples), then (with ``inference``) evaluate's and predict's. Yields the
    helper (its ``stop()`` ends it early), or None."""
    helper = None
    if model.device == "cpu" and os.environ.get("NBNET_WARMUP_HELPER", "1") != "0":
        try:
            jobs = _segment_jobs(model)
            cold = bool(jobs) and _cache_empty()
            if cold or (jobs and not cold_only):
                helper = _Helper({"segments": jobs, "inference": inference}, 0.0 if cold else HELPER_AFTER)
        except Exception:  # noqa: BLE001 - a layer without a config: this process compiles it all
            helper = None
    try:
        yield helper
    finally:
        if helper is not None:
            helper.stop()


def _cache_empty():
    """Whether Numba's disk cache has never held a loss kernel (kernels/losses.py: every
    training step computes its loss in one): nothing of nbnet's was trained or evaluated
    with this cache, and the first step will compile for seconds. The helper then starts
    with the step, not HELPER_AFTER into it: a fresh install's first fit (cache cleared,
    helper on, cifar_bn) had the helper compiling from 2.2 s into the run, the parent
    from 0.6 s."""
    from numba.core.registry import CPUDispatcher

    from .kernels import losses

    indexes = [getattr(getattr(value._cache, "_cache_file", None), "_index_path", None)
               for value in vars(losses).values() if isinstance(value, CPUDispatcher)]
    indexes = [path for path in indexes if path]  # (uncached inline helpers have none)
    # No index found at all: another Numba's cache layout; wait HELPER_AFTER, as on a warm cache.
    return bool(indexes) and not any(os.path.exists(path) for path in indexes)


def _warm(model, copy, inference=True, batch=WARMUP_BATCH, few_samples=True):
    """One training step of ``copy`` (compiled as ``model``) on ``batch`` samples of zeros,
    then (with ``inference``) an evaluate and (with ``few_samples``) a predict of two."""
    from . import metrics

    if copy.built and model.loss is not None:
        heads = model._heads
        loss = [head.loss for head in heads]
        metric_lists = [[metrics.serialize(m) for m in head.metrics] for head in heads]
        copy.compile(optimizer=type(model.optimizer)(), loss=loss if len(heads) > 1 else loss[0],
                     metrics=metric_lists if len(heads) > 1 else metric_lists[0], device=model.device)
        x, y = _zero_batch(copy, batch)
        copy._first_step_pending = False  # the helper, if any, is warmup's
        # fit, not train_on_batch: its batches are gathered by a kernel of their own.
        copy.fit(x, y, batch_size=len(y[0]), verbose=0)
        if inference:
            _infer(copy, batch, few_samples)


def _zero_batch(model, count):
    count = max(2, min(int(count or WARMUP_BATCH), WARMUP_BATCH_MAX))  # None: a streamed source's own batches
    x = [np.zeros((count,) + tuple(shape), np.float32) for shape in model._input_shapes()]
    y = [np.zeros(count, np.int64) if head.loss.sparse_targets else np.zeros((count, head.width), np.float32)
         for head in model._heads]
    return x, y


def _infer(model, batch, few_samples=True):
    """An evaluate of ``batch`` samples and (with ``few_samples``) a predict of two: a few
    images take kernels of their own (see the module's docstring)."""
    x, y = _zero_batch(model, batch)
    model.evaluate(x, y, verbose=0, batch_size=len(y[0]))
    if few_samples:
        model.predict([a[:2] for a in x] if len(x) > 1 else x[0][:2])


def _segment_jobs(model):
    """What the helper process warms up, in order: the model cut into segments, each a
    weighted layer and the single-input layers that follow it in a chain up to the next
    weighted one (so a conv and the pool it absorbs, or a BatchNormalization and its
    activation, stay together), the last segment first. The helper works from the back
    while this process compiles from the front (forward kernels, then the backward ones
    from the back), and they meet in the middle instead of compiling the same kernels
    side by side; the first weighted layer's segment goes second (below). Layers with
    several inputs (merges) and nested models stay with this process. Each job: the
    segment's input shape, its layers' configs, and the loss to train it with (the
    model's where the segment ends at its only output; inner segments the model's from
    logits, or mean squared error for a model of several outputs); None
    where the model is not built and compiled or has fewer than two weighted layers."""
    from . import metrics
    from .models import Model

    if not model.built or model.loss is None or not getattr(model, "_nodes", None):
        return None
    readers = {}
    for node in model._nodes:
        for tensor in node.inputs:
            readers.setdefault(id(tensor), []).append(node)
    outputs = {id(tensor) for tensor in model._output_tensors}
    head = model._heads[0] if len(model._heads) == 1 else None

    def is_chain(node):
        return len(node.inputs) == 1 and len(node.outputs) == 1 and not isinstance(node.layer, Model)

    def weighted(node):
        return bool(getattr(node.layer, "weight_order", ()))  # (a nested model has none)

    starts = [node for node in model._nodes if weighted(node) and is_chain(node)]
    # The first segment's backward kernels are the last this process needs; the helper
    # takes them second, once this process has compiled (or is compiling: see
    # compile_locks) their forward ones. Left to this process they were compiled at the
    # end with the other core idle (first fits, cache cleared: the small ResNet 14.4 ->
    # 12.6 s, tf_mnist_5x5 13.6 -> 10.3 s, the Kaggle-style CNN 16-17 -> 15 s; taken
    # first, the helper waited on the forward ones: 17 s).
    if len(starts) < 2:
        return None
    # Inner segments train on the model's own loss where it has one output (their flat
    # output as its logits, or as its predictions for a loss without logits; zero
    # targets): the loss kernel is then the one this process compiles (a cross-entropy
    # takes the same kernel from logits as fused with its softmax or sigmoid), where mean
    # squared error compiled one (0.4 s) it never needs.
    inner_loss = "mean_squared_error"
    if head is not None:
        inner_loss = head.loss.get_config()
        if "from_logits" in inner_loss:
            inner_loss = {**inner_loss, "from_logits": True}
    order = list(reversed(starts[1:]))
    order[1:1] = starts[:1]
    jobs = []
    for first in order:
        segment = [first]
        while id(segment[-1].outputs[0]) not in outputs:
            following = readers.get(id(segment[-1].outputs[0]), [])
            if len(following) != 1 or not is_chain(following[0]) or weighted(following[0]):
                break
            segment.append(following[0])
        at_output = id(segment[-1].outputs[0]) in outputs and head is not None
        jobs.append({"input_shape": [int(d) for d in first.inputs[0].sample_shape],
                     "layers": [{"class_name": type(node.layer).__name__, "config": node.layer.get_config()}
                                for node in segment],
                     "loss": head.loss.get_config() if at_output else inner_loss,
                     "metrics": [metrics.serialize(m) for m in head.metrics] if at_output else [],
                     "optimizer": type(model.optimizer).__name__})
    return jobs or None


class _Helper:
    """The helper process, started ``delay`` seconds into a warm-up that is still
    running, and stopped (killed if still compiling) when the warm-up ends."""

    def __init__(self, job, delay):
        """``job``: {"segments": _segment_jobs(...), "inference": bool}, or None (nothing to do)."""
        self.process, self._lock, self._stopped = None, threading.Lock(), False
        self._timer = None
        if job and delay <= 0:
            self._start(job)
        elif job:
            self._timer = threading.Timer(delay, self._start, [job])
            self._timer.daemon = True
            self._timer.start()

    def _start(self, job):
        with self._lock:
            if self._stopped:
                return
            # The helper's own steps start no helper of their own.
            self.process = subprocess.Popen([sys.executable, "-m", "nbnet.warmup", "--helper"], stdin=subprocess.PIPE,
                                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                            env={**os.environ, "NBNET_WARMUP_HELPER": "0"})
            self.process.stdin.write(json.dumps(job).encode())
            self.process.stdin.close()
            compile_locks.enable()

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
            compile_locks.disable()


def _helper_main():
    """The helper process: a training step of each segment the parent described on stdin,
    then, if asked, an evaluate and a predict of each (the parent's first training step
    needs none of those: it stops the helper when the step ends), saying on stdout what it
    warmed. A segment that fails (a layer only the user's code defines) is skipped, with
    the reason on stderr (the parent discards both)."""
    from . import layers as layers_module, losses, optimizers
    from .models import Sequential

    request = json.loads(sys.stdin.read())
    compile_locks.enable()
    trained = []
    for job in request["segments"]:
        names = [entry["class_name"] for entry in job["layers"]]
        try:
            built = [getattr(layers_module, name)(**entry["config"]) for name, entry in zip(names, job["layers"])]
            segment = Sequential([layers_module.Input(tuple(job["input_shape"]))] + built)
            if len(segment.output_shape) > 2:  # mean squared error on a flat output
                segment.add(layers_module.Flatten())
            segment.compile(optimizer=getattr(optimizers, job["optimizer"])(), loss=losses.get(job["loss"]),
                            metrics=job["metrics"])
            _warm(segment, segment, inference=False, batch=HELPER_BATCH)
        except Exception as error:  # noqa: BLE001 - the parent compiles whatever the helper did not
            print(f"skipped {names}: {error!r}", file=sys.stderr, flush=True)
            continue
        print(f"warmed {names}", flush=True)
        trained.append((names, segment))
    for names, segment in trained if request["inference"] else []:
        try:
            _infer(segment, HELPER_BATCH)
        except Exception as error:  # noqa: BLE001 - as above
            print(f"skipped inference of {names}: {error!r}", file=sys.stderr, flush=True)
            continue
        print(f"inferred {names}", flush=True)


if __name__ == "__main__" and sys.argv[1:] == ["--helper"]:
    _helper_main()
