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
    from .models import Sequential
    from . import metrics
    from .saving import model_from_config

    started = time.perf_counter()
    on_gpu = model.device != "cpu"
    if progress:
        progress("Compiling GPU kernels (on every run: CUDA kernels are not cached)..." if on_gpu
                 else "Compiling kernels (first run only; cached on disk afterwards)...")
    copy = model_from_config(model.get_config())
    if isinstance(copy, Sequential) and model.loss is not None:
        copy.compile(optimizer=type(model.optimizer)(), loss=model.loss,
                     metrics=[metrics.serialize(m) for m in model.metrics], device=model.device)
        x = np.zeros((2,) + tuple(copy.input_shape), np.float32)
        width = int(np.prod(copy.output_shape))
        y = np.zeros(2, np.int64) if model.loss.sparse_targets else np.zeros((2, width), np.float32)
        copy.train_on_batch(x, y)
        copy.evaluate(x, y, verbose=0)
        copy.predict(x)
    seconds = time.perf_counter() - started
    if progress:
        progress(f"Kernels ready in {seconds:.1f}s.")
    return seconds
