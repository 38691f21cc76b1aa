"""Keras-written files of functional models, for tests/test_keras_functional_files.py.

Runs in the benchmark virtualenv, never in CI:

    KERAS_BACKEND=torch /work/bench-venv/bin/python tools/keras_functional_files.py

For each architecture (the five of tests/functional_architectures.py, which the parity
test also builds, and ``shared_encoder`` below: a functional model holding
BatchNormalization and a frozen layer, called as a layer on two inputs) it sets seeded
weights, compiles, trains two steps (so the files hold optimizer state and moved
BatchNormalization statistics) and writes, into tests/fixtures/keras_files/:

    functional_NAME.keras        keras.saving.save_model
    functional_NAME.h5           the legacy HDF5 model file
    functional_NAME.weights.h5   model.save_weights

and functional_cases.json: per architecture the inputs, Keras's predictions from the
saved model, the training data, and the weights (by layer name) after Keras trained the
saved model one more epoch on them. Also ``functional_two_outputs.keras`` and
``functional_lambda.keras``, which nbnet must refuse. Numbers are written as the shortest
decimals that read back as the same float32, so the file is small and exact.
"""

import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "tests" / "fixtures" / "keras_files"
sys.path.insert(0, str(ROOT / "tests"))
import functional_architectures  # noqa: E402  (plain Python: takes the library as an argument)

SAMPLES, BATCH = 8, 4
# name -> (optimizer class, its arguments); losses: functional_architectures.LOSSES.
OPTIMIZERS = {"residual_mlp": ("Adam", {"learning_rate": 0.01}),
              "residual_cnn": ("SGD", {"learning_rate": 0.05, "momentum": 0.9}),
              "inception": ("RMSprop", {"learning_rate": 0.005, "momentum": 0.5}),
              "siamese": ("Nadam", {"learning_rate": 0.01}),
              "nested": ("AdamW", {"learning_rate": 0.01}),
              "shared_encoder": ("Adam", {"learning_rate": 0.01})}
LOSSES = {**functional_architectures.LOSSES, "shared_encoder": "mean_squared_error"}


def shared_encoder(keras):
    """One functional encoder (a frozen Dense, a Dense, BatchNormalization, relu, a Dense)
    called on two inputs, its outputs added. Keras keeps the encoder's weights under its
    own key and, in .h5 files, lists every trainable weight of it before the frozen
    layer's and the moving statistics. Layer names are Keras's own (dense, dense_1, ...)."""
    layers = keras.layers
    encoder_input = keras.Input(shape=(4,))
    frozen = layers.Dense(5, activation="tanh")
    frozen.trainable = False
    x = layers.Dense(6, use_bias=False)(frozen(encoder_input))  # a bias before BatchNormalization has no gradient
    x = layers.BatchNormalization()(x)
    x = layers.Activation("relu")(x)
    encoder = keras.Model(encoder_input, layers.Dense(3)(x), name="encoder")
    left, right = keras.Input(shape=(4,), name="left"), keras.Input(shape=(4,), name="right")
    x = layers.Add()([encoder(left), encoder(right)])
    return keras.Model([left, right], layers.Dense(2)(x), name="shared_encoder")


NAMES = functional_architectures.NAMES + ("shared_encoder",)


def build(keras, name):
    """Architecture ``name`` built with the library module ``keras``."""
    return shared_encoder(keras) if name == "shared_encoder" else functional_architectures.build(keras, name)


def short(values):
    """A float32 array as nested lists of the shortest decimals that read back exactly."""
    import numpy as np

    array = np.asarray(values, np.float32)
    flat = [float(str(v)) for v in array.ravel()]
    if not np.array_equal(np.asarray(flat, np.float32), array.ravel()):
        raise AssertionError("a float32 value does not survive its short decimal")
    return np.asarray(flat, np.float64).reshape(array.shape).tolist()


def main():
    os.environ.setdefault("KERAS_BACKEND", "torch")
    import numpy as np

    try:
        import keras
    except ImportError as exc:  # pragma: no cover - a tool, run by hand
        sys.exit(f"keras_functional_files.py needs Keras 3 (pip install torch==2.13.0 keras h5py): {exc}")

    def weights_by_layer(model):
        """{layer name: its weights} for every layer holding weights, nested models walked into."""
        out = {}
        for layer in model.layers:
            if isinstance(layer, keras.Model):
                out.update(weights_by_layer(layer))
            elif layer.weights:
                out[layer.name] = [short(w) for w in layer.get_weights()]
        return out

    def targets(model, name, rng):
        width = model.output_shape[-1]
        loss = LOSSES[name]
        if loss == "sparse_categorical_crossentropy":
            return rng.integers(0, width, SAMPLES)
        if loss == "categorical_crossentropy":
            return np.eye(width, dtype=np.float32)[rng.integers(0, width, SAMPLES)]
        if loss == "binary_crossentropy":
            return rng.integers(0, 2, (SAMPLES, width)).astype(np.float32)
        return rng.standard_normal((SAMPLES, width)).astype(np.float32)

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(40)
    cases = []
    for name in NAMES:
        model = build(keras, name)
        model.set_weights([np.asarray(rng.uniform(0.6, 1.4, w.shape), np.float32) if "variance" in v.path
                           else np.asarray(rng.standard_normal(w.shape) * 0.5, np.float32)
                           for w, v in zip(model.get_weights(), model.weights)])
        optimizer, settings = OPTIMIZERS[name]
        model.compile(getattr(keras.optimizers, optimizer)(**settings), LOSSES[name], metrics=["accuracy"])
        inputs = [np.asarray(rng.uniform(-1, 1, (SAMPLES,) + tuple(t.shape[1:])), np.float32) for t in model.inputs]
        x = inputs[0] if len(inputs) == 1 else inputs
        y = targets(model, name, rng)
        model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)  # two steps: optimizer state
        stem = OUTPUT / f"functional_{name}"
        model.save(f"{stem}.keras")
        model.save(f"{stem}.h5")
        model.save_weights(f"{stem}.weights.h5")
        saved = keras.saving.load_model(f"{stem}.keras")
        predictions = saved.predict(x, verbose=0)
        if float(np.abs(predictions - model.predict(x, verbose=0)).max()) > 1e-6:
            raise AssertionError(f"{name}: Keras's own file predicts differently")
        saved.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
        cases.append({"name": name, "keras": f"{stem.name}.keras", "h5": f"{stem.name}.h5",
                      "weights": f"{stem.name}.weights.h5", "loss": LOSSES[name], "optimizer": optimizer,
                      "iterations": int(model.optimizer.iterations), "batch_size": BATCH,
                      "layers": [layer.name for layer in model.layers],
                      "x": [short(v) for v in inputs], "y": np.asarray(y).tolist(), "predictions": short(predictions),
                      "weights_after": weights_by_layer(saved)})
    refusals(keras)
    record = {"keras_version": keras.__version__, "backend": keras.backend.backend(), "cases": cases}
    path = OUTPUT / "functional_cases.json"
    path.write_text(json.dumps(record, separators=(",", ":")) + "\n")
    print(json.dumps({"written": [case["name"] for case in cases], "bytes": path.stat().st_size,
                      "keras": keras.__version__}))


def refusals(keras):
    """Two files Keras loads and nbnet must refuse: a model with two outputs, and one with a
    Lambda layer (its code, which nbnet never runs)."""
    layers = keras.layers
    inputs = keras.Input(shape=(3,), name="features")
    hidden = layers.Dense(4, activation="relu", name="hidden")(inputs)
    two = keras.Model(inputs, [layers.Dense(2, name="first")(hidden), layers.Dense(1, name="second")(hidden)],
                      name="two_outputs")
    two.save(OUTPUT / "functional_two_outputs.keras")
    inputs = keras.Input(shape=(3,), name="features")
    doubled = layers.Lambda(lambda t: t * 2.0, name="doubler")(layers.Dense(4, name="hidden")(inputs))
    with_lambda = keras.Model(inputs, layers.Dense(2, name="out")(doubled), name="with_lambda")
    with_lambda.save(OUTPUT / "functional_lambda.keras")


if __name__ == "__main__":
    main()
