"""Keras-written files of functional models, for tests/test_keras_functional_files.py.

Runs in the benchmark virtualenv, never in CI:

    KERAS_BACKEND=torch /work/bench-venv/bin/python tools/keras_functional_files.py

For each architecture (the five of tests/functional_architectures.py, which the parity
test also builds; ``shared_encoder`` below: a functional model holding BatchNormalization
and a frozen layer, called as a layer on two inputs; and three with several outputs:
``two_heads``, a classifier and a regressor on one trunk compiled with dicts by output name,
``two_in_two_out``, two inputs and two outputs compiled with lists (a serialized loss
and metric object among them), ``keyed_heads``, outputs given as a dict, whose keys Keras
orders) it sets seeded weights, compiles, trains two steps (so the files hold optimizer
state and moved BatchNormalization statistics) and writes, into tests/fixtures/keras_files/:

    functional_NAME.keras        keras.saving.save_model
    functional_NAME.h5           the legacy HDF5 model file
    functional_NAME.weights.h5   model.save_weights

and functional_cases.json: per architecture the inputs, Keras's predictions from the
saved model, the training data, and the weights (by layer name) and logs after Keras
trained the saved model one more epoch on them; with several outputs the targets and
predictions by output name, and the compile settings Keras restored (loss, loss weight,
metric names per output). Also ``functional_lambda.keras``, which nbnet must refuse.
Numbers are written as the shortest decimals that read back as the same float32, so
the file is small and exact.
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
# Several outputs: name -> {output name: the loss its targets are made for}.
OUTPUT_LOSSES = {
    "two_heads": {"classes": "sparse_categorical_crossentropy", "value": "mean_squared_error"},
    "two_in_two_out": {"match": "binary_crossentropy", "score": "mean_squared_error"},
    "keyed_heads": {"amount": "mean_squared_error", "label": "categorical_crossentropy"},
}
OPTIMIZERS.update({"two_heads": ("Adam", {"learning_rate": 0.01}),
                   "two_in_two_out": ("SGD", {"learning_rate": 0.05, "momentum": 0.9}),
                   "keyed_heads": ("Nadam", {"learning_rate": 0.01})})


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


def two_in_two_out(keras):
    """Two inputs, each through its own Dense, concatenated into a shared hidden layer; two
    outputs: a logit for binary_crossentropy(from_logits=True) and a linear score that also
    sees the second input. Compiled with lists (COMPILE)."""
    layers = keras.layers
    left, right = keras.Input(shape=(5,), name="left"), keras.Input(shape=(3,), name="right")
    a = layers.Dense(6, activation="relu", name="left_dense")(left)
    b = layers.Dense(4, activation="tanh", name="right_dense")(right)
    hidden = layers.Dense(6, activation="relu", name="hidden")(layers.Concatenate(name="joined")([a, b]))
    match = layers.Dense(1, name="match")(hidden)
    score = layers.Dense(2, name="score")(layers.Concatenate(name="with_right")([hidden, right]))
    return keras.Model([left, right], [match, score], name="two_in_two_out")


def keyed_heads(keras):
    """Outputs given as a dict, its keys not in sorted order: Keras names the outputs by the
    keys and orders them (and the layers after them) by sorted key."""
    layers = keras.layers
    inputs = keras.Input(shape=(4,), name="features")
    trunk = layers.Dense(5, activation="relu", name="trunk")(inputs)
    label = layers.Dense(2, activation="softmax", name="label_head")(trunk)
    amount = layers.Dense(1, name="amount_head")(trunk)
    return keras.Model(inputs, {"label": label, "amount": amount}, name="keyed_heads")


def compile_arguments(keras, name):
    """compile's loss, loss_weights and metrics for architecture ``name``, with the library
    module ``keras`` (the same in Keras and nbnet)."""
    if name == "two_heads":
        return dict(functional_architectures.TWO_HEADS_COMPILE)
    if name == "two_in_two_out":
        return {"loss": [keras.losses.BinaryCrossentropy(from_logits=True), "mse"], "loss_weights": [0.7, 0.3],
                "metrics": [["accuracy"], [keras.metrics.MeanAbsoluteError(), "mse"]]}
    if name == "keyed_heads":
        return {"loss": {"label": "categorical_crossentropy", "amount": "mean_squared_error"},
                "metrics": {"label": "accuracy"}}
    return {"loss": LOSSES[name], "metrics": ["accuracy"]}


NAMES = functional_architectures.NAMES + ("shared_encoder", "two_heads", "two_in_two_out", "keyed_heads")
_BUILDERS = {"shared_encoder": shared_encoder, "two_heads": functional_architectures.two_heads,
             "two_in_two_out": two_in_two_out, "keyed_heads": keyed_heads}


def build(keras, name):
    """Architecture ``name`` built with the library module ``keras``."""
    return _BUILDERS[name](keras) if name in _BUILDERS else functional_architectures.build(keras, name)


def make_targets(shape, loss, rng, samples):
    """Targets for an output of per-sample ``shape`` trained with ``loss``."""
    import numpy as np

    width = int(shape[-1])
    if loss == "sparse_categorical_crossentropy":
        return rng.integers(0, width, samples)
    if loss == "categorical_crossentropy":
        return np.eye(width, dtype=np.float32)[rng.integers(0, width, samples)]
    if loss == "binary_crossentropy":
        return rng.integers(0, 2, (samples, width)).astype(np.float32)
    return rng.standard_normal((samples, width)).astype(np.float32)


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
        if name in OUTPUT_LOSSES:  # by output name (Keras's flat order of them)
            shapes = dict(zip(output_keys(model), [t.shape[1:] for t in model.outputs]))
            return {key: make_targets(shapes[key], loss, rng, SAMPLES) for key, loss in OUTPUT_LOSSES[name].items()}
        return make_targets(model.output_shape[1:], LOSSES[name], rng, SAMPLES)

    def output_keys(model):
        """The names Keras logs and takes targets by: a dict's keys (sorted, as Keras
        flattens them), else the output layers' names."""
        structure = model._outputs_struct
        return sorted(structure) if isinstance(structure, dict) else list(model.output_names)

    def by_output(model, predictions):
        if isinstance(predictions, dict):
            return {key: short(value) for key, value in predictions.items()}
        return {key: short(value) for key, value in zip(output_keys(model), predictions)}

    def compiled_settings(model, name, history):
        """What Keras restored from the file, per output name: the loss, the loss weight,
        and the metrics by the names Keras logs them under (less the output's prefix)."""
        keys = output_keys(model)
        weights = model.get_compile_config()["loss_weights"]
        weights = dict(zip(keys, weights)) if isinstance(weights, list) else weights or {}
        metrics = {key: sorted(log[len(key) + 1:] for log in history
                               if log.startswith(key + "_") and log != f"{key}_loss") for key in keys}
        return {"outputs": keys, "loss": OUTPUT_LOSSES[name], "loss_weights": {key: float(weights.get(key, 1.0))
                                                                             for key in keys}, "metrics": metrics}

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(40)
    cases = []
    for name in NAMES:
        model = build(keras, name)
        model.set_weights([np.asarray(rng.uniform(0.6, 1.4, w.shape), np.float32) if "variance" in v.path
                           else np.asarray(rng.standard_normal(w.shape) * 0.5, np.float32)
                           for w, v in zip(model.get_weights(), model.weights)])
        optimizer, settings = OPTIMIZERS[name]
        model.compile(getattr(keras.optimizers, optimizer)(**settings), **compile_arguments(keras, name))
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
        mine = model.predict(x, verbose=0)
        pairs = zip(predictions.values(), mine.values()) if isinstance(mine, dict) else \
            zip(predictions, mine) if isinstance(mine, list) else [(predictions, mine)]
        if max(float(np.abs(a - b).max()) for a, b in pairs) > 1e-6:
            raise AssertionError(f"{name}: Keras's own file predicts differently")
        history = saved.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0).history
        case = {"name": name, "keras": f"{stem.name}.keras", "h5": f"{stem.name}.h5",
                "weights": f"{stem.name}.weights.h5", "loss": LOSSES.get(name), "optimizer": optimizer,
                "iterations": int(model.optimizer.iterations), "batch_size": BATCH,
                "layers": [layer.name for layer in model.layers], "x": [short(v) for v in inputs],
                "weights_after": weights_by_layer(saved),
                "logs_after": {key: float(values[-1]) for key, values in sorted(history.items())}}
        if name in OUTPUT_LOSSES:
            case.update({"y": {key: np.asarray(value).tolist() for key, value in y.items()},
                         "predictions": by_output(saved, predictions),
                         "compile": compiled_settings(saved, name, history)})
        else:
            case.update({"y": np.asarray(y).tolist(), "predictions": short(predictions)})
        cases.append(case)
    refusals(keras)
    record = {"keras_version": keras.__version__, "backend": keras.backend.backend(), "cases": cases}
    path = OUTPUT / "functional_cases.json"
    path.write_text(json.dumps(record, separators=(",", ":")) + "\n")
    print(json.dumps({"written": [case["name"] for case in cases], "bytes": path.stat().st_size,
                      "keras": keras.__version__}))


def refusals(keras):
    """A file Keras loads and nbnet must refuse: a model with a Lambda layer (its code,
    which nbnet never runs)."""
    layers = keras.layers
    inputs = keras.Input(shape=(3,), name="features")
    doubled = layers.Lambda(lambda t: t * 2.0, name="doubler")(layers.Dense(4, name="hidden")(inputs))
    with_lambda = keras.Model(inputs, layers.Dense(2, name="out")(doubled), name="with_lambda")
    with_lambda.save(OUTPUT / "functional_lambda.keras")


if __name__ == "__main__":
    main()
