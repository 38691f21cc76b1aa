"""Record what real Keras 3 computes for dilated and grouped Conv2D and DepthwiseConv2D,
for tests/test_grouped_conv.py to check nbnet against.

Runs in the benchmark virtualenv, never in CI:

    KERAS_BACKEND=torch /work/bench-venv/bin/python tools/keras_grouped_conv_parity.py

and writes tests/fixtures/keras_grouped_conv.json: per case the layer's config, the input,
the weights, and Keras's output and gradients of sum(output * R) for a fixed random R
(with respect to the input and each weight), as float64 values of float32 numbers, so the
test needs neither Keras nor this script. Inputs and weights are drawn here from seeded
generators, so rerunning gives the same file unless Keras changes. Also writes
tests/fixtures/keras_grouped_conv.keras, a small model with these layers saved by Keras,
with its predictions in the JSON.
"""

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
    sys.exit(f"keras_grouped_conv_parity.py needs Keras 3 on PyTorch (pip install torch keras): {exc}")

OUTPUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "keras_grouped_conv.json"
MODEL_FILE = OUTPUT.with_suffix(".keras")

# (class name, config, input shape without the batch): odd sizes, 'same' with even spans
# (the extra pad at the end), strides with depth_multiplier, dilation on one axis only.
CASES = [
    ("Conv2D", {"filters": 4, "kernel_size": [3, 3], "padding": "same", "dilation_rate": [2, 2],
                "activation": "tanh"}, (9, 8, 3)),
    ("Conv2D", {"filters": 3, "kernel_size": [2, 3], "padding": "valid", "dilation_rate": [3, 1]}, (9, 7, 2)),
    ("Conv2D", {"filters": 6, "kernel_size": [3, 3], "strides": [2, 2], "padding": "same", "groups": 2,
                "activation": "relu"}, (8, 7, 4)),
    ("Conv2D", {"filters": 4, "kernel_size": [2, 2], "padding": "same", "groups": 2, "dilation_rate": [1, 2],
                "use_bias": False}, (6, 7, 6)),
    ("Conv2D", {"filters": 8, "kernel_size": [3, 3], "padding": "valid", "groups": 4}, (7, 6, 4)),
    ("DepthwiseConv2D", {"kernel_size": [3, 3], "padding": "same", "strides": [2, 2]}, (9, 8, 3)),
    ("DepthwiseConv2D", {"kernel_size": [3, 2], "padding": "valid", "strides": [1, 2], "depth_multiplier": 2,
                         "activation": "sigmoid"}, (7, 8, 3)),
    ("DepthwiseConv2D", {"kernel_size": [3, 3], "padding": "same", "dilation_rate": [2, 2], "depth_multiplier": 2,
                         "use_bias": False}, (8, 9, 2)),
]
BATCH = 2


def as_list(value):
    return np.asarray(value, np.float64).tolist()


def record(index, class_name, config, shape):
    rng = np.random.default_rng(100 + index)
    layer = getattr(keras.layers, class_name)(**config)
    x = rng.standard_normal((BATCH, *shape)).astype(np.float32)
    layer.build((None, *shape))
    # Weights drawn here (not Keras's initializers), the bias away from 0 so it matters.
    weights = [rng.uniform(-0.5, 0.5, tuple(w.shape)).astype(np.float32) for w in layer.weights]
    layer.set_weights(weights)
    inputs = torch.tensor(x, requires_grad=True)
    out = layer(inputs)
    r = rng.standard_normal(tuple(out.shape)).astype(np.float32)
    (out * torch.tensor(r)).sum().backward()
    return {"class_name": class_name, "config": config, "input": as_list(x), "weights": [as_list(w) for w in weights],
            "weight_names": [w.path.split("/")[-1] for w in layer.weights],
            "output": as_list(out.detach().numpy()), "r": as_list(r), "dx": as_list(inputs.grad.numpy()),
            "dweights": [as_list(w.value.grad.numpy()) for w in layer.weights]}


def model_file():
    """A Keras-written .keras file with every new setting, and its predictions: nbnet must
    read Keras's own configs (DepthwiseConv2D's depthwise_initializer, groups, ...)."""
    rng = np.random.default_rng(7)
    model = keras.Sequential([
        keras.Input((9, 8, 4)),
        keras.layers.Conv2D(8, 3, padding="same", groups=2, dilation_rate=2, activation="relu"),
        keras.layers.DepthwiseConv2D(3, strides=2, depth_multiplier=2, padding="same", activation="relu"),
        keras.layers.Conv2D(16, 1, groups=16),
        keras.layers.Flatten(), keras.layers.Dense(3)])
    model.set_weights([rng.uniform(-0.5, 0.5, w.shape).astype(np.float32) for w in model.get_weights()])
    model.save(MODEL_FILE)
    x = rng.standard_normal((4, 9, 8, 4)).astype(np.float32)
    return {"file": MODEL_FILE.name, "input": as_list(x), "output": as_list(model.predict(x, verbose=0))}


def main():
    cases = [record(i, *case) for i, case in enumerate(CASES)]
    OUTPUT.write_text(json.dumps({"keras_version": keras.__version__, "backend": keras.backend.backend(),
                                  "cases": cases, "model_file": model_file()}) + "\n")
    print(f"wrote {len(cases)} cases to {OUTPUT}, and {MODEL_FILE}")


if __name__ == "__main__":
    main()
