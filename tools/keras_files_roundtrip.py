"""nbnet -> Keras: .keras files that nbnet writes, loaded by real Keras 3, must predict what
nbnet predicts. Two steps, in two environments (Keras is never a dependency of nbnet):

    .venv/bin/python tools/keras_files_roundtrip.py write DIR
    KERAS_BACKEND=torch /work/bench-venv/bin/python tools/keras_files_roundtrip.py check DIR

``write`` takes every Keras-written fixture (tests/fixtures/keras_files), trains it two
steps in nbnet (so the weights are nbnet's own), adds the reference MNIST CNN, and saves
each as DIR/NAME.keras and DIR/NAME_legacy.h5 with DIR/NAME.npz (inputs and nbnet's predictions). ``check`` loads
each file with keras.saving.load_model and prints JSON: the worst difference per model.

Functional models (the architectures of tools/keras_functional_files.py), both ways:
Keras -> nbnet, ``write`` loads Keras's functional_*.keras / .h5 fixtures and their
.weights.h5 (into the architecture built in nbnet), and continues training from the
.keras as Keras did (DIR/functional_keras_to_nbnet.json). nbnet -> Keras, ``write``
builds each architecture in nbnet, trains it an epoch and saves DIR/functional_NAME.keras,
_legacy.h5 and .weights.h5, then trains one more epoch; ``check`` loads the files in Keras
(the weights into the architecture built in Keras), predicts, and continues training from
the .keras. ``check`` prints the table of worst differences: architecture x file x direction.
Models with several outputs (two_heads, two_in_two_out, keyed_heads) are compared output by
output (by name) and compiled with their per-output losses, loss weights and metrics
(keras_functional_files.compile_arguments). Keras -> nbnet also continues training from
Keras's legacy .h5 (its optimizer_weights restored); nbnet -> Keras cannot (nbnet's .h5
files carry no optimizer state: see keras_file.save_legacy_h5), so that cell reads n/a.
"""

import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
FUNCTIONAL = ROOT / "tests" / "fixtures" / "keras_files" / "functional_cases.json"


def _functional_cases():
    sys.path.insert(0, str(ROOT / "tools"))
    import keras_functional_files

    cases = json.loads(FUNCTIONAL.read_text())["cases"]
    for case in cases:
        xs = [np.asarray(v, np.float32) for v in case["x"]]
        case["inputs"] = xs[0] if len(xs) == 1 else xs
        case["y"] = ({key: np.asarray(value) for key, value in case["y"].items()} if isinstance(case["y"], dict)
                     else np.asarray(case["y"]))
    return keras_functional_files, cases


def _named(predictions, names):
    """Predictions as {output name: array}: a dict as it is, a list by ``names``, one array
    under None."""
    if isinstance(predictions, dict):
        return {key: np.asarray(value) for key, value in predictions.items()}
    if isinstance(predictions, (list, tuple)):
        return {name: np.asarray(value) for name, value in zip(names, predictions)}
    return {None: np.asarray(predictions)}


def _worst(got, want):
    """The worst difference between two arrays, or two {output name: array} alike."""
    if isinstance(want, dict):
        assert sorted(got, key=str) == sorted(want, key=str), (list(got), list(want))
        return max(_worst(got[key], value) for key, value in want.items())
    return float(np.abs(np.asarray(got, np.float64) - np.asarray(want, np.float64)).max())


def _expected(case):
    return case["predictions"] if isinstance(case["predictions"], dict) else {None: case["predictions"]}


def _worst_weights(by_name, expected):
    """The worst difference between ``by_name`` and ``expected`` ({layer name: arrays})."""
    return max(_worst(got, want) for name, arrays in expected.items() for got, want in zip(by_name[name], arrays))


def write_functional(folder):
    """Keras -> nbnet differences into functional_keras_to_nbnet.json; nbnet's own files
    (and what nbnet computes from them) for ``check_functional``."""
    import nbnet
    from nbnet import models, optimizers

    tool, cases = _functional_cases()
    fixtures = FUNCTIONAL.parent
    report = {}

    def predicted(model, x):
        return _named(model.predict(x), model.output_names)

    for case in cases:
        name, x, y = case["name"], case["inputs"], case["y"]
        row = {".keras": _worst(predicted(models.load_model(fixtures / case["keras"]), x), _expected(case)),
               ".h5": _worst(predicted(models.load_model(fixtures / case["h5"]), x), _expected(case))}
        built = tool.build(nbnet, name)
        built.load_weights(fixtures / case["weights"])
        row[".weights.h5"] = _worst(predicted(built, x), _expected(case))
        for kind in ("keras", "h5"):
            model = models.load_model(fixtures / case[kind])
            model.fit(x, y, batch_size=case["batch_size"], epochs=1, shuffle=False, verbose=0)
            row[f".{kind}, training continued"] = _worst_weights(_weights_by_layer(model), case["weights_after"])
        report[name] = row

        nbnet.utils.set_random_seed(7)
        model = tool.build(nbnet, name)
        optimizer, settings = tool.OPTIMIZERS[name]
        model.compile(getattr(optimizers, optimizer)(**settings), **tool.compile_arguments(nbnet, name))
        model.fit(x, y, batch_size=case["batch_size"], epochs=1, shuffle=False, verbose=0)
        stem = folder / f"functional_{name}"
        model.save(f"{stem}.keras")
        model.save(f"{stem}_legacy.h5")
        model.save_weights(f"{stem}.weights.h5")
        predictions = predicted(model, x)
        model.fit(x, y, batch_size=case["batch_size"], epochs=1, shuffle=False, verbose=0)
        (folder / f"functional_{name}.json").write_text(json.dumps({
            "predictions": [[key, value.tolist()] for key, value in predictions.items()],
            "batch_size": case["batch_size"],
            "weights_after": {layer: [w.tolist() for w in arrays]
                              for layer, arrays in _weights_by_layer(model).items()}}))
    (folder / "functional_keras_to_nbnet.json").write_text(json.dumps(report))


def _weights_by_layer(model):
    return {layer.name: layer.get_weights() for layer in model._weight_layers() if layer.weight_order}


def check_functional(folder):
    """nbnet -> Keras differences; with write_functional's, the table."""
    import keras

    def weights_by_layer(model):
        out = {}
        for layer in model.layers:
            if isinstance(layer, keras.Model):
                out.update(weights_by_layer(layer))
            elif layer.weights:
                out[layer.name] = layer.get_weights()
        return out

    def output_keys(model):
        structure = model._outputs_struct
        return sorted(structure) if isinstance(structure, dict) else list(model.output_names)

    def predicted(model, x):
        return _named(model.predict(x, verbose=0), output_keys(model))

    tool, cases = _functional_cases()
    table = {"Keras -> nbnet": json.loads((folder / "functional_keras_to_nbnet.json").read_text()),
             "nbnet -> Keras": {}}
    for case in cases:
        name, x, y = case["name"], case["inputs"], case["y"]
        stem = folder / f"functional_{name}"
        expected = json.loads((folder / f"functional_{name}.json").read_text())
        wanted = {key: np.asarray(value) for key, value in expected["predictions"]}
        row = {kind: _worst(predicted(keras.saving.load_model(f"{stem}{suffix}"), x), wanted)
               for kind, suffix in ((".keras", ".keras"), (".h5", "_legacy.h5"))}
        built = tool.build(keras, name)
        built.load_weights(f"{stem}.weights.h5")
        row[".weights.h5"] = _worst(predicted(built, x), wanted)
        model = keras.saving.load_model(f"{stem}.keras")
        model.fit(x, y, batch_size=expected["batch_size"], epochs=1, shuffle=False, verbose=0)
        row[".keras, training continued"] = _worst_weights(weights_by_layer(model), expected["weights_after"])
        row[".h5, training continued"] = None  # nbnet's .h5 files carry no optimizer state
        table["nbnet -> Keras"][name] = row
    kinds = [".keras", ".h5", ".weights.h5", ".keras, training continued", ".h5, training continued"]
    lines = ["| architecture | direction | " + " | ".join(kinds) + " |", "|---|---|" + "---|" * len(kinds)]
    for case in cases:
        for direction, rows in table.items():
            cells = [rows[case["name"]].get(k) for k in kinds]
            lines.append(f"| {case['name']} | {direction} | " + " | ".join(
                "n/a" if cell is None else f"{cell:.1e}" for cell in cells) + " |")
    return table, "\n".join(lines)


def write(folder):
    sys.path.insert(0, str(ROOT))
    from nbnet import models
    from nbnet.zoo import REFERENCE_MODEL

    rng = np.random.default_rng(0)
    cases = json.loads((ROOT / "tests" / "fixtures" / "keras_parity.json").read_text())["keras_files"]
    for case in cases:
        model = models.load_model(ROOT / "tests" / "fixtures" / "keras_files" / case["file"])
        x = np.asarray(case["x"], np.float32)
        width = model.output_shape[-1]
        y = (np.eye(width, dtype=np.float32)[np.arange(len(x)) % width] if case["loss"] == "categorical_crossentropy"
             else np.arange(len(x)) % width if "sparse" in case["loss"]
             else rng.random((len(x), width)).astype(np.float32))
        model.fit(x, y, batch_size=2, epochs=1, verbose=0)
        model.save(folder / f"{case['name']}.keras")
        model.save(folder / f"{case['name']}_legacy.h5")
        np.savez(folder / f"{case['name']}.npz", x=x, predictions=model.predict(x))
    # Optimizer state: continue Keras's two steps here for two more, save, two more again;
    # `check` has Keras continue from nbnet's file and compares.
    continued = json.loads((ROOT / "tests" / "fixtures" / "keras_parity.json").read_text())["continued_training"]
    x, y = np.asarray(continued["x"], np.float32), np.asarray(continued["y"])
    for case in continued["cases"]:
        model = models.load_model(ROOT / "tests" / "fixtures" / "keras_files" / case["file"])
        model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
        stem = f"state_{case['optimizer'].lower()}"
        model.save(folder / f"{stem}.keras")
        model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
        np.savez(folder / f"{stem}.npz", x=x, y=y, *model.get_weights())
    reference = models.load_model(REFERENCE_MODEL)
    x = rng.integers(0, 256, (16, 28, 28, 1)).astype(np.float32)
    reference.save(folder / "reference_mnist_cnn.keras")
    reference.save(folder / "reference_mnist_cnn_legacy.h5")
    np.savez(folder / "reference_mnist_cnn.npz", x=x, predictions=reference.predict(x))
    write_functional(folder)


def check(folder):
    import keras

    report = {}
    for path in sorted(folder.glob("state_*.keras")):
        model = keras.saving.load_model(path)
        data = np.load(path.with_suffix(".npz"))
        model.fit(data["x"], data["y"], batch_size=8, epochs=1, shuffle=False, verbose=0)
        expected = [data[f"arr_{i}"] for i in range(len(model.get_weights()))]
        report[f"{path.name} (continued in Keras)"] = float(max(
            np.abs(got - want).max() for got, want in zip(model.get_weights(), expected)))
    functional = set(folder.glob("functional_*"))
    for path in sorted(set(folder.glob("*.keras")) - set(folder.glob("state_*.keras")) - functional) + sorted(
            set(folder.glob("*_legacy.h5")) - functional):
        model = keras.saving.load_model(path)
        data = np.load(folder / (path.stem.removesuffix("_legacy") + ".npz"))
        report[path.name] = float(np.abs(model.predict(data["x"], verbose=0) - data["predictions"]).max())
    table, text = check_functional(folder)
    print(json.dumps({"keras": keras.__version__, "max_abs_difference": report, "functional": table}, indent=1))
    print(text)


if __name__ == "__main__":
    command, folder = sys.argv[1], Path(sys.argv[2])
    folder.mkdir(parents=True, exist_ok=True)
    {"write": write, "check": check}[command](folder)
