"""nbnet -> Keras: .keras files that nbnet writes, loaded by real Keras 3, must predict what
nbnet predicts. Two steps, in two environments (Keras is never a dependency of nbnet):

    .venv/bin/python tools/keras_files_roundtrip.py write DIR
    KERAS_BACKEND=torch /work/bench-venv/bin/python tools/keras_files_roundtrip.py check DIR

``write`` takes every Keras-written fixture (tests/fixtures/keras_files), trains it two
steps in nbnet (so the weights are nbnet's own), adds the reference MNIST CNN, and saves
each as DIR/NAME.keras and DIR/NAME_legacy.h5 with DIR/NAME.npz (inputs and nbnet's predictions). ``check`` loads
each file with keras.saving.load_model and prints JSON: the worst difference per model.
"""

import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


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
    for path in sorted(set(folder.glob("*.keras")) - set(folder.glob("state_*.keras"))) + sorted(
            folder.glob("*_legacy.h5")):
        model = keras.saving.load_model(path)
        data = np.load(folder / (path.stem.removesuffix("_legacy") + ".npz"))
        report[path.name] = float(np.abs(model.predict(data["x"], verbose=0) - data["predictions"]).max())
    print(json.dumps({"keras": keras.__version__, "max_abs_difference": report}, indent=1))


if __name__ == "__main__":
    command, folder = sys.argv[1], Path(sys.argv[2])
    folder.mkdir(parents=True, exist_ok=True)
    {"write": write, "check": check}[command](folder)
