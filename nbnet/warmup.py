"""Compile (or load from Numba's disk cache) every kernel a model uses, before the real work.

The first ``nbnet train`` on a fresh install spends seconds compiling; doing it up front
on a throwaway copy of the model lets the CLI say so, and ``nbnet warmup`` can do it at
install time. Shapes do not matter to Numba, only dtypes and ranks: two samples suffice.
"""

import time

import numpy as np


def warmup(model, progress=None):
    """Run one training step and one prediction of a copy of ``model`` on zeros; returns
    the seconds taken. ``progress(text)`` is told what is happening."""
    from . import metrics
    from .saving import model_from_config

    started = time.perf_counter()
    on_gpu = model.device != "cpu"
    if progress:
        progress("Compiling GPU kernels (on every run: CUDA kernels are not cached)..." if on_gpu
                 else "Compiling kernels (first run only; cached on disk afterwards)...")
    copy = model_from_config(model.get_config())
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
    seconds = time.perf_counter() - started
    if progress:
        progress(f"Kernels ready in {seconds:.1f}s.")
    return seconds
