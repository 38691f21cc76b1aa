"""Record what real Keras 3 computes on five functional-API models, for
tests/test_functional_parity.py to check nbnet against.

Runs in the benchmark virtualenv, never in CI:

    KERAS_BACKEND=torch /work/bench-venv/bin/python tools/keras_functional_parity.py

and writes tests/fixtures/keras_functional_parity.json. The models are built by
tests/functional_architectures.py, the same code the test runs with ``import nbnet as
keras``. For each model: seeded weights (set with set_weights, so Keras's initializers
play no part), a seeded batch of inputs and targets, Keras's layer order, its
get_weights() order (each weight named by its layer's path and variable name), its
predictions and evaluate() loss, and, for SGD(0.1) and Adam(0.01) each on a fresh copy
with the same weights, the loss one train_on_batch returns and the weights after it.
And a two-output model (``two_heads``): Keras's logs for a loss, loss weight and metrics
per output, before and after one step of each optimizer.

Numbers are stored as the shortest decimal that reads back as the same float32 (checked
here), which keeps the file small and exact.
"""

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "torch")

import numpy as np  # noqa: E402

try:
    import keras  # noqa: E402
    import torch  # noqa: E402
except ImportError as exc:  # pragma: no cover - a tool, run by hand
    sys.exit(f"keras_functional_parity.py needs Keras 3 on PyTorch (pip install torch==2.13.0 keras h5py): {exc}")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
import functional_architectures  # noqa: E402

OUTPUT = ROOT / "tests" / "fixtures" / "keras_functional_parity.json"
BATCH = 8
OPTIMIZERS = [("SGD", {"learning_rate": 0.1}), ("Adam", {"learning_rate": 0.01})]


def short(values):
    """A float32 array as nested lists of the shortest decimals that read back as the same
    float32 (through float64, as json and numpy read them)."""
    array = np.asarray(values, np.float32)
    flat = [float(str(v)) for v in array.ravel()]
    back = np.asarray(flat, np.float64).astype(np.float32)
    if not np.array_equal(back, array.ravel(), equal_nan=True):
        raise AssertionError("a float32 value does not survive its short decimal")
    return np.asarray(flat, np.float64).reshape(array.shape).tolist()


def weight_entries(model, prefix=()):
    """(id of the variable, path of layer names from ``model`` down, variable name) for
    each weight of every layer, nested models walked into."""
    found = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            found.extend(weight_entries(layer, prefix + (layer.name,)))
        else:
            found.extend((id(v), list(prefix + (layer.name,)), v.name) for v in layer.weights)
    return found


def named_weights(model):
    """Each of model.weights (get_weights() order) as {"path": [...], "variable": name}."""
    by_id = {key: (path, name) for key, path, name in weight_entries(model)}
    out = []
    for variable in model.weights:
        path, name = by_id[id(variable)]
        out.append({"path": path, "variable": name})
    return out


def seeded_weights(model, names, rng):
    """Weights the test can reproduce exactly: He-scaled normal kernels (relus stay alive),
    small biases and BatchNormalization offsets, moving variances and scales near 1."""
    out = []
    for array, entry in zip(model.get_weights(), names):
        shape, kind = array.shape, entry["variable"]
        if kind == "kernel":
            value = rng.standard_normal(shape) * np.sqrt(2.0 / np.prod(shape[:-1]))
        elif kind in ("gamma", "moving_variance"):
            value = rng.uniform(0.6, 1.4, shape)
        elif kind in ("bias", "beta", "moving_mean"):
            value = rng.standard_normal(shape) * 0.1
        else:
            raise AssertionError(f"no seeded value for weight {entry}")
        out.append(np.asarray(value, np.float32))
    return out


def data(model, name, rng):
    """A seeded batch of inputs (one array per model input, in the model's input order) and
    targets for the model's loss."""
    x = [np.asarray(rng.standard_normal((BATCH,) + tuple(t.shape[1:])), np.float32) for t in model.inputs]
    loss = functional_architectures.LOSSES[name]
    classes = model.outputs[0].shape[-1]
    if loss == "binary_crossentropy":
        y = rng.integers(0, 2, (BATCH, classes)).astype(np.float32)
    elif loss == "categorical_crossentropy":
        y = np.eye(classes, dtype=np.float32)[rng.integers(0, classes, BATCH)]
    else:
        y = rng.integers(0, classes, BATCH)
    return x, y


def gradients(name, initial, x, y):
    """The gradient of the batch's mean loss with respect to each weight (None for the
    moving statistics), by PyTorch autograd on a fresh copy in training mode. The test
    bounds Adam's first step with them: lr * g / (|g| + eps / sqrt(1 - beta_2)) turns a
    float32 rounding difference in a gradient near 3e-6 into a visible one in the step."""
    model = functional_architectures.build(keras, name)
    model.set_weights(initial)
    predictions = model(feed([torch.tensor(a) for a in x]), training=True)
    loss = keras.losses.get(functional_architectures.LOSSES[name])(torch.tensor(y), predictions)
    torch.mean(loss).backward()
    return [variable.value.grad.numpy().copy() if variable.trainable else None for variable in model.weights]


def feed(x):
    return x[0] if len(x) == 1 else list(x)


def architecture_case(name, rng):
    loss = functional_architectures.LOSSES[name]
    model = functional_architectures.build(keras, name)
    names = named_weights(model)
    initial = seeded_weights(model, names, rng)
    model.set_weights(initial)
    x, y = data(model, name, rng)
    model.compile(keras.optimizers.SGD(learning_rate=0.1), loss)
    predictions = model.predict(feed(x), batch_size=BATCH, verbose=0)
    evaluated = float(model.evaluate(feed(x), y, batch_size=BATCH, verbose=0))
    grads = gradients(name, initial, x, y)
    tiny = sum(int(((g != 0) & (np.abs(g) < 1e-4)).sum()) for g in grads if g is not None)
    print(f"{name}: {tiny} nonzero gradient entries below 1e-4 (where Adam's first step is sensitive)",
          file=sys.stderr)
    steps = []
    for optimizer, kwargs in OPTIMIZERS:
        fresh = functional_architectures.build(keras, name)
        fresh.set_weights(initial)
        fresh.compile(getattr(keras.optimizers, optimizer)(**kwargs), loss)
        step_loss = float(fresh.train_on_batch(feed(x), y))
        after = fresh.get_weights()
        if optimizer == "SGD":  # the recorded gradients are the ones this step used
            for w0, w1, g, entry in zip(initial, after, grads, names):
                if g is not None and not np.allclose(w1, w0 - np.float32(kwargs["learning_rate"]) * g,
                                                     rtol=1e-6, atol=1e-7):
                    raise AssertionError(f"{name}: SGD moved {entry} other than by the recorded gradient")
        steps.append({"optimizer": optimizer, "kwargs": kwargs, "loss": step_loss,
                      "weights": [short(w) for w in after]})
    return {"name": name, "loss": loss, "layers": [layer.name for layer in model.layers], "weight_names": names,
            "weight_shapes": [list(w.shape) for w in initial], "initial_weights": [short(w) for w in initial],
            "x": [short(a) for a in x], "y": y.tolist() if y.dtype.kind == "i" else short(y),
            "predictions": short(predictions), "evaluate_loss": evaluated,
            "gradients": [None if g is None else short(g) for g in grads], "steps": steps}


def two_heads_case(rng):
    """The two-output model: evaluate's and one train_on_batch's logs (the weighted total
    loss, each output's loss and metrics) and the weights after it, for each optimizer."""
    model = functional_architectures.two_heads(keras)
    names = named_weights(model)
    initial = seeded_weights(model, names, rng)
    x = np.asarray(rng.standard_normal((BATCH, 7)), np.float32)
    y = {"classes": rng.integers(0, 3, BATCH), "value": np.asarray(rng.standard_normal((BATCH, 2)), np.float32)}
    steps = []
    for optimizer, kwargs in OPTIMIZERS:
        fresh = functional_architectures.two_heads(keras)
        fresh.set_weights(initial)
        fresh.compile(getattr(keras.optimizers, optimizer)(**kwargs), **functional_architectures.TWO_HEADS_COMPILE)
        evaluated = fresh.evaluate(x, y, batch_size=BATCH, verbose=0, return_dict=True)
        logs = fresh.train_on_batch(x, y, return_dict=True)
        steps.append({"optimizer": optimizer, "kwargs": kwargs, "evaluate": {k: float(v) for k, v in evaluated.items()},
                      "train_on_batch": {k: float(v) for k, v in logs.items()},
                      "weights": [short(w) for w in fresh.get_weights()]})
    history = fresh.fit(x, y, batch_size=4, epochs=1, verbose=0, validation_split=0.5).history
    return {"layers": [layer.name for layer in model.layers], "output_names": list(model.output_names),
            "weight_names": names, "initial_weights": [short(w) for w in initial], "x": short(x),
            "y": {"classes": y["classes"].tolist(), "value": short(y["value"])}, "steps": steps,
            "history_keys": sorted(history)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args()
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(41)
    fixture = {"keras_version": keras.__version__, "backend": keras.backend.backend(),
               "torch_version": torch.__version__, "batch_size": BATCH,
               "architectures": [architecture_case(name, rng) for name in functional_architectures.NAMES]}
    fixture["two_heads"] = two_heads_case(rng)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    temporary = args.output.with_suffix(".tmp")
    temporary.write_text(json.dumps(fixture, indent=None, separators=(",", ":")) + "\n")
    os.replace(temporary, args.output)
    print(json.dumps({"written": str(args.output), "bytes": args.output.stat().st_size,
                      "keras": keras.__version__, "torch": torch.__version__}))


if __name__ == "__main__":
    main()
