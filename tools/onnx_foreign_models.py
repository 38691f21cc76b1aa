"""Write the foreign ONNX fixtures of tests/test_onnx_import.py: small PyTorch CNNs
(BatchNormalization, residual adds, average pooling; depthwise, grouped and dilated
convolutions with pads Keras cannot express), trained for a few hundred steps on
MNIST so that fine-tuning has something to improve, exported with PyTorch's TorchScript
exporter at opsets 9, 13, 17 and the newest it supports, and with the dynamo exporter; and a
Keras 3 CNN exported by Keras itself (channels-last, its own Transposes and Casts).

Run it in the benchmark virtualenv (PyTorch is never a dependency of nbnet or its CI):

    /work/bench-venv/bin/python tools/onnx_foreign_models.py [--out tests/fixtures/onnx_foreign]

The images are float32 in [0, 1]: NCHW (batch, 1, 28, 28) with logits out for PyTorch's,
NHWC (batch, 28, 28, 1) with probabilities out for Keras's.
"""

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


class BnCnn(nn.Module):
    """conv-bn-relu-maxpool, conv-bn-relu-avgpool, flatten, linear."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 12, 3, padding=1), nn.BatchNorm2d(12)
        self.fc = nn.Linear(12 * 7 * 7, 10)

    def forward(self, x):
        x = nn.functional.max_pool2d(torch.relu(self.bn1(self.conv1(x))), 2)
        x = nn.functional.avg_pool2d(torch.relu(self.bn2(self.conv2(x))), 2)
        return self.fc(x.view(x.size(0), -1))  # Shape/Gather/Concat arithmetic in the TorchScript export


class ResCnn(nn.Module):
    """A stem, one residual block (add), average pooling, a strided conv, global average
    pooling and a linear head."""

    def __init__(self):
        super().__init__()
        self.stem, self.bn0 = nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.a, self.bna = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.b, self.bnb = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.down = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = torch.relu(self.bn0(self.stem(x)))
        y = self.bnb(self.b(torch.relu(self.bna(self.a(x)))))
        x = torch.relu(x + y)
        x = nn.functional.avg_pool2d(x, 2)
        x = torch.relu(self.down(x))
        x = torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)
        return self.fc(x)


class MobileCnn(nn.Module):
    """Depthwise-separable blocks (a depthwise 3x3 with ReLU6, a pointwise 1x1), a grouped
    conv, a dilated conv, a 3x3 stride-2 max pool with padding 1 (pads Keras's 'same'
    cannot express), an average pool with ceil_mode and count_include_pad=False, LeakyReLU,
    Hardtanh, dropout and a linear head."""

    def __init__(self):
        super().__init__()
        self.stem, self.bn0 = nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.depthwise, self.bn1 = nn.Conv2d(16, 32, 3, padding=1, groups=16, bias=False), nn.BatchNorm2d(32)
        self.pointwise = nn.Conv2d(32, 24, 1)
        self.grouped = nn.Conv2d(24, 24, 3, padding=1, groups=4)
        self.dilated = nn.Conv2d(24, 16, 3, padding=2, dilation=2)
        self.dropout = nn.Dropout(0.2)
        self.fc = nn.Linear(16 * 8 * 8, 10)

    def forward(self, x):
        x = torch.relu(self.bn0(self.stem(x)))
        x = nn.functional.relu6(self.bn1(self.depthwise(x)))
        x = nn.functional.max_pool2d(nn.functional.leaky_relu(self.pointwise(x), 0.1), 3, stride=2, padding=1)
        x = nn.functional.hardtanh(self.grouped(x), -2.0, 2.0)
        x = nn.functional.avg_pool2d(torch.relu(self.dilated(x)), 3, stride=2, padding=1, ceil_mode=True,
                                     count_include_pad=False)
        return self.fc(self.dropout(torch.flatten(x, 1)))


def train(model, steps, seed):
    from nbnet.datasets import mnist

    (x_train, y_train), _ = mnist.load_data(verbose=False)
    rng = np.random.default_rng(seed)
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    model.train()
    for _ in range(steps):
        index = rng.integers(0, len(x_train), 64)
        x = torch.from_numpy(x_train[index, None].astype(np.float32) / 255.0)
        loss = nn.functional.cross_entropy(model(x), torch.from_numpy(y_train[index].astype(np.int64)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    return model


def export(model, path, opset, dynamo, dynamic_batch=True):
    example = torch.zeros(2, 1, 28, 28)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            torch.onnx.export(model, (example,), str(path), dynamo=True, opset_version=opset, input_names=["image"],
                              output_names=["logits"], dynamic_shapes=({0: torch.export.Dim("batch")},),
                              external_data=False, optimize=False)
        else:
            # constant folding off: BatchNormalization stays a node instead of being fused into the conv
            torch.onnx.export(model, (example,), str(path), dynamo=False, opset_version=opset,
                              input_names=["image"], output_names=["logits"], do_constant_folding=opset == 13,
                              dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}} if dynamic_batch else None)


def keras_export(path, steps, seed):
    """A Keras 3 functional CNN (channels-last input, BatchNormalization, a depthwise conv in
    a residual add, pooling, dropout, a softmax head) trained a little on MNIST, exported
    by Keras's own ``model.export(format="onnx")`` (on the torch backend)."""
    import os

    os.environ.setdefault("KERAS_BACKEND", "torch")
    import keras
    from keras import layers

    from nbnet.datasets import mnist

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((28, 28, 1))
    x = layers.Activation("relu")(layers.BatchNormalization()(layers.Conv2D(8, 3, padding="same",
                                                                           use_bias=False)(inputs)))
    x = layers.MaxPooling2D(2)(x)
    x = layers.Add()([x, layers.DepthwiseConv2D(3, padding="same")(x)])
    x = layers.Flatten()(layers.AveragePooling2D(2)(x))
    model = keras.Model(inputs, layers.Dense(10, activation="softmax")(layers.Dropout(0.2)(x)))
    model.compile("adam", "sparse_categorical_crossentropy")
    (x_train, y_train), _ = mnist.load_data(verbose=False)
    count = steps * 64
    model.fit(x_train[:count, ..., None].astype(np.float32) / 255.0, y_train[:count], batch_size=64, epochs=1,
              verbose=0)
    model.export(str(path), format="onnx")


def newest_torchscript_opset():
    from torch.onnx import _constants

    return getattr(_constants, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", getattr(_constants, "ONNX_MAX_OPSET", 17))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "tests" / "fixtures" / "onnx_foreign"))
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--only", help="comma-separated networks to write (bncnn, rescnn, mobilecnn, keras) "
                                       "[default: all]")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    makers = {"bncnn": (BnCnn, 0), "rescnn": (ResCnn, 1), "mobilecnn": (MobileCnn, 2)}
    chosen = args.only.split(",") if args.only else list(makers) + ["keras"]
    nets, written = {}, []
    if "keras" in chosen:
        chosen.remove("keras")
        keras_export(out / "keras3_cnn.onnx", args.steps, 3)
        written.append(out / "keras3_cnn.onnx")
    for name in chosen:
        make, seed = makers[name]
        torch.manual_seed(seed)  # each network on its own seed, so one can be written again alone
        nets[name] = train(make(), args.steps, seed)
    newest = newest_torchscript_opset()
    for name, model in nets.items():
        for opset in sorted({9, 13, 17, newest}):
            path = out / f"{name}_ts_opset{opset}.onnx"
            export(model, path, opset, dynamo=False, dynamic_batch=opset != 13)  # opset 13: batch fixed at 2
            written.append(path)
        try:
            path = out / f"{name}_dynamo.onnx"
            export(model, path, None, dynamo=True)
            written.append(path)
        except Exception as error:  # noqa: BLE001 (the dynamo exporter is optional here)
            print(f"dynamo export of {name} failed: {type(error).__name__}: {error}", file=sys.stderr)
    for path in written:
        print(f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}: {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()
