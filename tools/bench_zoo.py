"""Speed across many small networks: nbnet beside PyTorch eager (CPU) and onnxruntime (on
nbnet's own ONNX export), in one run. Prints one JSON object.

    python tools/bench_zoo.py --torch-python /work/bench-venv/bin/python     # all architectures
    python tools/bench_zoo.py --only lenet5,mlp --steps 10                   # a few, quickly
    python tools/bench_zoo.py --set holdout --torch-python ...               # the untuned second set
    python tools/bench_zoo.py --set scan --torch-python ...                  # session 26's other scanned nets

Each architecture is written once as a list of layer specs (``ARCHITECTURES``) that both
builders read: ``nbnet_model`` (a Keras-style functional model) and ``torch_model`` (an
nn.Module in NCHW, run in the interpreter given by --torch-python, a virtualenv with
``pip install torch==2.13.0``; PyTorch is never a dependency of nbnet). Per architecture:
training ms/step (median over --steps steps, Adam, after warm-up) at batch 32 and 128,
inference images/s at batch 1000 and ms for one image, the ratios nbnet/PyTorch (training:
below 1 is faster) and nbnet/onnxruntime (inference throughput: above 1 is faster),
effective GFLOP/s (3x the forward FLOPs per trained image) and the compute floor (the
step's FLOPs at the sgemm rate measured in this run), and what that floor bounds: the
ratio to PyTorch a step at the floor would reach (``floor_b128_vs_torch``), and to
onnxruntime a predict at the floor (``floor_b1000_vs_ort``). Geometric means close the report.
The nbnet and PyTorch workers run --repeats times (3), taking turns, and every figure is
the median over the runs: on a shared 2-core machine one run's figures moved 10-40%.
"""

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench_infer import median_seconds  # (a warm-up call, then the median of the timed ones)

HERE = Path(__file__).resolve()
# Untimed training steps before the timed ones, for both frameworks.
WARMUP_STEPS = 8

# Layer specs: ("conv", filters, kernel, stride, padding, activation), ("bn",), ("act", name),
# ("maxpool", size), ("avgpool", size), ("gap",), ("flatten",), ("dense", units, activation),
# ("dropout", rate), ("residual", [specs...]) (x + f(x), then relu).
ARCHITECTURES = {
    "seed_cnn": ((28, 28, 1), [("conv", 32, 3, 1, "valid", "relu"), ("maxpool", 2), ("conv", 64, 3, 1, "valid", "relu"),
                               ("maxpool", 2), ("flatten",), ("dropout", 0.25), ("dense", 64, "relu"),
                               ("dense", 10, None)]),
    "lenet5": ((28, 28, 1), [("conv", 6, 5, 1, "same", "tanh"), ("avgpool", 2), ("conv", 16, 5, 1, "valid", "tanh"),
                             ("avgpool", 2), ("flatten",), ("dense", 120, "tanh"), ("dense", 84, "tanh"),
                             ("dense", 10, None)]),
    "kaggle_bn": ((28, 28, 1), [("conv", 32, 3, 1, "same", None), ("bn",), ("act", "relu"),
                                ("conv", 32, 3, 1, "same", None), ("bn",), ("act", "relu"), ("maxpool", 2),
                                ("dropout", 0.25), ("conv", 64, 3, 1, "same", None), ("bn",), ("act", "relu"),
                                ("conv", 64, 3, 1, "same", None), ("bn",), ("act", "relu"), ("maxpool", 2),
                                ("dropout", 0.25), ("flatten",), ("dense", 256, None), ("bn",), ("act", "relu"),
                                ("dropout", 0.25), ("dense", 10, None)]),
    "strided": ((28, 28, 1), [("conv", 32, 3, 2, "same", "relu"), ("conv", 64, 3, 2, "same", "relu"), ("flatten",),
                              ("dense", 10, None)]),
    "mlp": ((28, 28, 1), [("flatten",), ("dense", 512, "relu"), ("dropout", 0.2), ("dense", 512, "relu"),
                          ("dropout", 0.2), ("dense", 10, None)]),
    "deep_mlp": ((28, 28, 1), [("flatten",)] + [("dense", 128, "tanh")] * 6 + [("dense", 10, None)]),
    "wide_mlp": ((28, 28, 1), [("flatten",), ("dense", 2048, "relu"), ("dense", 10, None)]),
    "cifar": ((32, 32, 3), [("conv", 32, 3, 1, "same", "relu"), ("conv", 32, 3, 1, "valid", "relu"), ("maxpool", 2),
                            ("conv", 64, 3, 1, "same", "relu"), ("conv", 64, 3, 1, "valid", "relu"), ("maxpool", 2),
                            ("flatten",), ("dense", 512, "relu"), ("dense", 10, None)]),
    "pointwise_gap": ((28, 28, 1), [("conv", 32, 1, 1, "valid", "relu"), ("conv", 64, 3, 1, "valid", "relu"),
                                    ("maxpool", 2), ("conv", 16, 1, 1, "valid", "relu"), ("gap",),
                                    ("dense", 10, None)]),
    "big_kernels": ((28, 28, 1), [("conv", 16, 7, 1, "same", "leaky_relu"), ("maxpool", 2),
                                  ("conv", 32, 5, 1, "same", "sigmoid"), ("gap",), ("dense", 10, None)]),
    "resnet_small": ((28, 28, 1), [("conv", 16, 3, 1, "same", "relu"), ("maxpool", 2),
                                   ("residual", [("conv", 16, 3, 1, "same", None), ("bn",), ("act", "relu"),
                                                 ("conv", 16, 3, 1, "same", None), ("bn",)]),
                                   ("residual", [("conv", 16, 3, 1, "same", None), ("bn",), ("act", "relu"),
                                                 ("conv", 16, 3, 1, "same", None), ("bn",)]),
                                   ("gap",), ("dense", 10, None)]),
    # TensorFlow's classic "deep MNIST": 5x5 convs of 32 and 64 filters, a wide dense layer.
    "tf_mnist_5x5": ((28, 28, 1), [("conv", 32, 5, 1, "same", "relu"), ("maxpool", 2),
                                   ("conv", 64, 5, 1, "same", "relu"), ("maxpool", 2), ("flatten",),
                                   ("dense", 1024, "relu"), ("dropout", 0.4), ("dense", 10, None)]),
    # A VGG-style CIFAR block stack with BatchNormalization before each ReLU.
    "cifar_bn": ((32, 32, 3), [("conv", 32, 3, 1, "same", None), ("bn",), ("act", "relu"),
                               ("conv", 32, 3, 1, "same", None), ("bn",), ("act", "relu"), ("maxpool", 2),
                               ("conv", 64, 3, 1, "same", None), ("bn",), ("act", "relu"), ("maxpool", 2),
                               ("gap",), ("dense", 10, None)]),
    # A VGG-style block stack on 3-channel images, wider than the CIFAR CNN's.
    "vgg_cifar": ((32, 32, 3), [("conv", 64, 3, 1, "same", "relu"), ("conv", 64, 3, 1, "same", "relu"), ("maxpool", 2),
                                ("conv", 128, 3, 1, "same", "relu"), ("conv", 128, 3, 1, "same", "relu"),
                                ("maxpool", 2), ("gap",), ("dense", 10, None)]),
    # Many kinds in one net: a 5x5 conv with BatchNormalization, a residual block, a 1x1
    # sigmoid conv, a tanh dense layer with dropout.
    "mixed": ((28, 28, 1), [("conv", 32, 5, 1, "same", "relu"), ("bn",), ("maxpool", 2),
                            ("conv", 64, 3, 1, "same", None), ("bn",), ("act", "relu"),
                            ("residual", [("conv", 64, 3, 1, "same", None), ("bn",), ("act", "relu"),
                                          ("conv", 64, 3, 1, "same", None), ("bn",)]),
                            ("maxpool", 2), ("conv", 32, 1, 1, "valid", "sigmoid"), ("flatten",),
                            ("dense", 128, "tanh"), ("dropout", 0.3), ("dense", 10, None)]),
}

# A second set, timed with --set holdout and never tuned against: networks of the same
# kinds as the zoo's, as public scripts write them, to show whether the zoo's speed is
# general (even kernels, depthwise convs, ELU/SELU, BatchNormalization in an MLP, LeNet on
# colour images, a residual CIFAR net with a strided conv).
HOLDOUT = {
    # Caffe's LeNet: 5x5 valid convs of 20 and 50 filters, a dense layer of 500.
    "caffe_lenet": ((28, 28, 1), [("conv", 20, 5, 1, "valid", "relu"), ("maxpool", 2),
                                  ("conv", 50, 5, 1, "valid", "relu"), ("maxpool", 2), ("flatten",),
                                  ("dense", 500, "relu"), ("dense", 10, None)]),
    # The TensorFlow blog's Fashion-MNIST CNN: 2x2 kernels.
    "fashion_2x2": ((28, 28, 1), [("conv", 64, 2, 1, "same", "relu"), ("maxpool", 2), ("dropout", 0.3),
                                  ("conv", 32, 2, 1, "same", "relu"), ("maxpool", 2), ("dropout", 0.3),
                                  ("flatten",), ("dense", 256, "relu"), ("dropout", 0.5), ("dense", 10, None)]),
    # A DCGAN-style discriminator: 4x4 kernels of stride 2, leaky relu, BatchNormalization.
    "dcgan_disc": ((28, 28, 1), [("conv", 64, 4, 2, "same", "leaky_relu"), ("conv", 128, 4, 2, "same", None),
                                 ("bn",), ("act", "leaky_relu"), ("flatten",), ("dense", 10, None)]),
    # MobileNet-style depthwise separable blocks on colour images.
    "mobilenet_tiny": ((32, 32, 3), [("conv", 32, 3, 2, "same", None), ("bn",), ("act", "relu"),
                                     ("dwconv", 3, 1, "same"), ("bn",), ("act", "relu"),
                                     ("conv", 64, 1, 1, "valid", None), ("bn",), ("act", "relu"),
                                     ("dwconv", 3, 2, "same"), ("bn",), ("act", "relu"),
                                     ("conv", 128, 1, 1, "valid", None), ("bn",), ("act", "relu"),
                                     ("gap",), ("dense", 10, None)]),
    # LeCun's 784-300-100-10 with sigmoids.
    "sigmoid_mlp": ((28, 28, 1), [("flatten",), ("dense", 300, "sigmoid"), ("dense", 100, "sigmoid"),
                                  ("dense", 10, None)]),
    "bn_mlp": ((28, 28, 1), [("flatten",), ("dense", 256, None), ("bn",), ("act", "relu"), ("dense", 256, None),
                             ("bn",), ("act", "relu"), ("dense", 10, None)]),
    # PyTorch's CIFAR tutorial net.
    "cifar_lenet": ((32, 32, 3), [("conv", 6, 5, 1, "valid", "relu"), ("maxpool", 2),
                                  ("conv", 16, 5, 1, "valid", "relu"), ("maxpool", 2), ("flatten",),
                                  ("dense", 120, "relu"), ("dense", 84, "relu"), ("dense", 10, None)]),
    "resnet_cifar": ((32, 32, 3), [("conv", 32, 3, 1, "same", None), ("bn",), ("act", "relu"),
                                   ("residual", [("conv", 32, 3, 1, "same", None), ("bn",), ("act", "relu"),
                                                 ("conv", 32, 3, 1, "same", None), ("bn",)]),
                                   ("conv", 64, 3, 2, "same", "relu"),
                                   ("residual", [("conv", 64, 3, 1, "same", None), ("bn",), ("act", "relu"),
                                                 ("conv", 64, 3, 1, "same", None), ("bn",)]),
                                   ("gap",), ("dense", 10, None)]),
    "elu_cnn": ((28, 28, 1), [("conv", 32, 3, 1, "same", "elu"), ("conv", 32, 3, 1, "same", "elu"), ("maxpool", 2),
                              ("conv", 64, 3, 1, "valid", "selu"), ("maxpool", 2), ("flatten",),
                              ("dense", 128, "elu"), ("dense", 10, None)]),
    # One wide first conv on a one-channel image, then global pooling.
    "wide_first": ((28, 28, 1), [("conv", 128, 3, 1, "same", "relu"), ("maxpool", 2),
                                 ("conv", 64, 3, 1, "same", "relu"), ("gap",), ("dense", 10, None)]),
    # Added in session 26 from a scan of eight more untuned nets, the two furthest behind:
    # a deep stack of thin 3x3 convs (8 and 16 filters: half the implicit GEMM's lanes
    # idle), and sigmoid / tanh convs with average pools and a leaky relu dense layer.
    "thin_deep": ((28, 28, 1), [("conv", 8, 3, 1, "same", "relu")] * 4 + [("maxpool", 2)]
                  + [("conv", 16, 3, 1, "same", "relu")] * 2 + [("gap",), ("dense", 10, None)]),
    "avg_sigmoid": ((28, 28, 1), [("conv", 16, 3, 1, "same", "sigmoid"), ("avgpool", 2),
                                  ("conv", 32, 3, 1, "valid", "tanh"), ("avgpool", 2), ("flatten",),
                                  ("dense", 64, "leaky_relu"), ("dense", 10, None)]),
}
# The rest of session 26's scan of untuned nets (`--set scan`; thin_deep and avg_sigmoid
# went into the holdout): a 7x7 stride-2 stem, 5x5 stride-2 convs, a strided
# BatchNormalization CNN on colour images, wider MLPs, ELU/SELU dense layers.
SCAN = {
    "stem7": ((32, 32, 3), [("conv", 32, 7, 2, "same", "relu"), ("maxpool", 2), ("conv", 64, 3, 1, "same", "relu"),
                            ("gap",), ("dense", 10, None)]),
    "strided5": ((28, 28, 1), [("conv", 32, 5, 2, "same", "relu"), ("conv", 64, 5, 2, "same", "relu"), ("flatten",),
                               ("dense", 10, None)]),
    "strided_bn": ((32, 32, 3), [("conv", 32, 3, 1, "same", None), ("bn",), ("act", "relu"),
                                 ("conv", 64, 3, 2, "same", None), ("bn",), ("act", "relu"),
                                 ("conv", 128, 3, 2, "same", None), ("bn",), ("act", "relu"), ("gap",),
                                 ("dense", 10, None)]),
    "mlp_1024": ((28, 28, 1), [("flatten",), ("dense", 1024, "relu"), ("dropout", 0.5), ("dense", 256, "tanh"),
                               ("dense", 10, None)]),
    "cnn_dense_bn": ((28, 28, 1), [("conv", 24, 5, 1, "same", "relu"), ("maxpool", 2),
                                   ("conv", 48, 5, 1, "same", "relu"), ("maxpool", 2), ("flatten",),
                                   ("dense", 256, None), ("bn",), ("act", "relu"), ("dropout", 0.4),
                                   ("dense", 10, None)]),
    "elu_mlp": ((28, 28, 1), [("flatten",), ("dense", 400, "elu"), ("dense", 200, "selu"), ("dense", 10, None)]),
}
ZOO = list(ARCHITECTURES)
ARCHITECTURES.update(HOLDOUT)
ALL = list(ARCHITECTURES)  # --set all: the zoo and the holdout (the figures' sets)
ARCHITECTURES.update(SCAN)


# -- FLOPs ------------------------------------------------------------------------------------
def forward_flops(input_shape, specs):
    """Multiply-adds x2 of the convolutions and dense layers, per image."""
    h, w, c = input_shape
    flops = 0
    for spec in specs:
        kind = spec[0]
        if kind == "conv":
            _, filters, k, stride, padding, _ = spec
            out_h, out_w = _conv_size(h, k, stride, padding), _conv_size(w, k, stride, padding)
            flops += 2 * out_h * out_w * k * k * c * filters
            h, w, c = out_h, out_w, filters
        elif kind == "dwconv":
            _, k, stride, padding = spec
            h, w = _conv_size(h, k, stride, padding), _conv_size(w, k, stride, padding)
            flops += 2 * h * w * k * k * c
        elif kind in ("maxpool", "avgpool"):
            h, w = h // spec[1], w // spec[1]
        elif kind == "gap":
            h, w = 1, 1
        elif kind == "flatten":
            h, w, c = 1, 1, h * w * c
        elif kind == "dense":
            flops += 2 * h * w * c * spec[1]
            h, w, c = 1, 1, spec[1]
        elif kind == "residual":
            flops += forward_flops((h, w, c), spec[1])
    return flops


def _conv_size(size, k, stride, padding):
    return math.ceil(size / stride) if padding == "same" else (size - k) // stride + 1


# -- nbnet --------------------------------------------------------------------------------------
def nbnet_model(name):
    import nbnet as keras
    from nbnet import layers

    input_shape, specs = ARCHITECTURES[name]

    def apply(x, spec_list):
        for spec in spec_list:
            kind = spec[0]
            if kind == "conv":
                _, filters, k, stride, padding, activation = spec
                x = layers.Conv2D(filters, k, strides=stride, padding=padding, activation=activation,
                                  use_bias=activation is not None or not _followed_by_bn(spec_list, spec))(x)
            elif kind == "dwconv":
                _, k, stride, padding = spec
                x = layers.DepthwiseConv2D(k, strides=stride, padding=padding,
                                           use_bias=not _followed_by_bn(spec_list, spec))(x)
            elif kind == "bn":
                x = layers.BatchNormalization()(x)
            elif kind == "act":
                x = layers.Activation(spec[1])(x)
            elif kind == "maxpool":
                x = layers.MaxPooling2D(spec[1])(x)
            elif kind == "avgpool":
                x = layers.AveragePooling2D(spec[1])(x)
            elif kind == "gap":
                x = layers.GlobalAveragePooling2D()(x)
            elif kind == "flatten":
                x = layers.Flatten()(x)
            elif kind == "dense":
                x = layers.Dense(spec[1], activation=spec[2] or ("softmax" if spec is spec_list[-1] else None))(x)
            elif kind == "dropout":
                x = layers.Dropout(spec[1])(x)
            elif kind == "residual":
                x = layers.Activation("relu")(layers.add([x, apply(x, spec[1])]))
        return x

    keras.utils.set_random_seed(0)
    inputs = keras.Input(input_shape)
    model = keras.Model(inputs, apply(inputs, specs), name=name, seed=0)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    return model


def _followed_by_bn(spec_list, spec):
    index = next(i for i, s in enumerate(spec_list) if s is spec)
    return index + 1 < len(spec_list) and spec_list[index + 1][0] == "bn"


def data(name, count, seed=0):
    input_shape, _ = ARCHITECTURES[name]
    rng = np.random.default_rng(seed)
    return rng.random((count,) + input_shape, dtype=np.float32), rng.integers(0, 10, count)


def nbnet_worker(args):
    from nbnet import onnx as nbnet_onnx

    results = {}
    for name in args.only.split(","):
        model = nbnet_model(name)
        entry = {}
        for batch in (32, 128):
            x, y = data(name, batch * args.steps)
            # Compile, then warm buffers: the first steps after allocating a large model's
            # buffers ran up to 1.7x slower (first page touches), on both sides.
            model.fit(x[:batch * WARMUP_STEPS], y[:batch * WARMUP_STEPS], batch_size=batch, verbose=0)
            times = []
            for start in range(0, len(x), batch):
                began = time.perf_counter()
                model.train_on_batch(x[start:start + batch], y[start:start + batch])
                times.append(time.perf_counter() - began)
            entry[f"train_ms_b{batch}"] = statistics.median(times) * 1e3
        x, _ = data(name, 1000, seed=1)
        model.predict(x[:200], batch_size=1000)
        entry["infer_images_per_s_b1000"] = 1000 / median_seconds(lambda: model.predict(x, batch_size=1000), 3)
        times = []
        for i in range(50):
            began = time.perf_counter()
            model.predict(x[i:i + 1], batch_size=1)
            times.append(time.perf_counter() - began)
        entry["infer_ms_b1"] = statistics.median(times) * 1e3
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / f"{name}.onnx"
            nbnet_onnx.export(model, path, verify=False)
            entry.update(onnxruntime_timings(path, x, args.threads))
        results[name] = entry
    print(json.dumps(results))


def onnxruntime_timings(path, x, threads):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    session.run(None, {name: x[:200]})
    rate = len(x) / median_seconds(lambda: session.run(None, {name: x}), 3)
    times = []
    for i in range(50):
        began = time.perf_counter()
        session.run(None, {name: x[i:i + 1]})
        times.append(time.perf_counter() - began)
    return {"ort_images_per_s_b1000": rate, "ort_ms_b1": statistics.median(times) * 1e3}


# -- PyTorch ------------------------------------------------------------------------------------
def torch_model(name):
    import torch
    from torch import nn

    input_shape, specs = ARCHITECTURES[name]
    activations = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "leaky_relu": lambda: nn.LeakyReLU(0.2),
                   "elu": nn.ELU, "selu": nn.SELU}

    def same_padding(modules, size, k, stride):
        """Keras's 'same' padding for a conv over ``size`` pixels: symmetric where it can
        be (returned, for the conv), else a ZeroPad2d (more below and right) appended."""
        total = max((_conv_size(size, k, stride, "same") - 1) * stride + k - size, 0)
        if total % 2 == 0:
            return total // 2
        modules.append(nn.ZeroPad2d((total // 2, total - total // 2, total // 2, total - total // 2)))
        return 0

    class Residual(nn.Module):
        def __init__(self, body):
            super().__init__()
            self.body = body

        def forward(self, x):
            return torch.relu(x + self.body(x))

    def build(shape, spec_list):
        h, w, c = shape
        modules = []
        for spec in spec_list:
            kind = spec[0]
            if kind == "conv":
                _, filters, k, stride, padding, activation = spec
                pad = same_padding(modules, h, k, stride) if padding == "same" else 0  # square inputs
                modules.append(nn.Conv2d(c, filters, k, stride, pad,
                                         bias=activation is not None or not _followed_by_bn(spec_list, spec)))
                h, w, c = _conv_size(h, k, stride, padding), _conv_size(w, k, stride, padding), filters
                if activation:
                    modules.append(activations[activation]())
            elif kind == "dwconv":
                _, k, stride, padding = spec
                pad = same_padding(modules, h, k, stride) if padding == "same" else 0
                modules.append(nn.Conv2d(c, c, k, stride, pad, groups=c, bias=not _followed_by_bn(spec_list, spec)))
                h, w = _conv_size(h, k, stride, padding), _conv_size(w, k, stride, padding)
            elif kind == "bn":
                modules.append(nn.BatchNorm2d(c) if h * w > 1 else nn.BatchNorm1d(c))
            elif kind == "act":
                modules.append(activations[spec[1]]())
            elif kind in ("maxpool", "avgpool"):
                modules.append((nn.MaxPool2d if kind == "maxpool" else nn.AvgPool2d)(spec[1]))
                h, w = h // spec[1], w // spec[1]
            elif kind == "gap":
                modules += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
                h, w = 1, 1
            elif kind == "flatten":
                modules.append(nn.Flatten())
                h, w, c = 1, 1, h * w * c
            elif kind == "dense":
                modules.append(nn.Linear(c, spec[1]))
                c = spec[1]
                if spec[2]:
                    modules.append(activations[spec[2]]())
            elif kind == "dropout":
                modules.append(nn.Dropout(spec[1]))
            elif kind == "residual":
                modules.append(Residual(build((h, w, c), spec[1])))
        return nn.Sequential(*modules)

    return build(input_shape, specs)


def torch_worker(args):
    import torch
    from torch import nn

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    results = {}
    for name in args.only.split(","):
        model = torch_model(name)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        loss_fn = nn.CrossEntropyLoss()
        entry = {}
        for batch in (32, 128):
            x, y = data(name, batch * args.steps)
            images, labels = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(y)
            times = []
            for step, start in enumerate([0] * WARMUP_STEPS + list(range(0, len(x), batch))):
                began = time.perf_counter()
                optimizer.zero_grad(set_to_none=True)
                loss_fn(model(images[start:start + batch]), labels[start:start + batch]).backward()
                optimizer.step()
                if step >= WARMUP_STEPS:
                    times.append(time.perf_counter() - began)
            entry[f"train_ms_b{batch}"] = statistics.median(times) * 1e3
        model.eval()
        x, _ = data(name, 1000, seed=1)
        images = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
        with torch.inference_mode():
            model(images[:200])
            entry["infer_images_per_s_b1000"] = 1000 / median_seconds(lambda: model(images), 3)
            times = []
            for i in range(50):
                began = time.perf_counter()
                model(images[i:i + 1])
                times.append(time.perf_counter() - began)
        entry["infer_ms_b1"] = statistics.median(times) * 1e3
        results[name] = entry
    results["version"] = torch.__version__
    print(json.dumps(results))


# -- the run ------------------------------------------------------------------------------------
def child(flag, args, python):
    command = [python, str(HERE), flag, "--steps", str(args.steps), "--threads", str(args.threads), "--only",
               args.only]
    out = subprocess.run(command, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{flag} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def medians(runs):
    """Per architecture and figure, the median over the workers' runs."""
    return {name: {key: statistics.median(run[name][key] for run in runs) for key in runs[0][name]}
            for name in runs[0] if name != "version"}


def geometric_mean(values):
    values = [v for v in values if v and v > 0]
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else None


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20, help="timed training steps per batch size")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--set", choices=("zoo", "holdout", "all", "scan"), default="zoo",
                        help="the architectures timed when --only is not given: the zoo, the holdout set, both, "
                             "or the scan's other nets")
    parser.add_argument("--only", help="comma-separated architecture names")
    parser.add_argument("--torch-python", help="python of a virtualenv with torch installed")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each worker, taking turns; medians reported")
    parser.add_argument("--nbnet-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--torch-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.only is None:
        args.only = ",".join({"zoo": ZOO, "holdout": list(HOLDOUT), "all": ALL, "scan": list(SCAN)}[args.set])
    unknown = [name for name in args.only.split(",") if name not in ARCHITECTURES]
    if unknown:
        raise SystemExit(f"unknown architectures {unknown}; known: {', '.join(ARCHITECTURES)}")
    if args.nbnet_worker:
        return nbnet_worker(args)
    if args.torch_worker:
        return torch_worker(args)
    sys.path.insert(0, str(HERE.parent))
    from bench_train import sgemm_gflops

    sgemm = sgemm_gflops(args.threads)
    # The workers take turns, so a slow spell of the machine falls on both sides; each
    # figure is the median over the repeats.
    nbnet_runs, torch_runs = [], []
    for _ in range(args.repeats):
        nbnet_runs.append(child("--nbnet-worker", args, sys.executable))
        if args.torch_python:
            torch_runs.append(child("--torch-worker", args, args.torch_python))
    nbnet = medians(nbnet_runs)
    torch = medians(torch_runs) if torch_runs else None
    report = {"benchmark": "bench_zoo", "threads": args.threads, "steps": args.steps, "repeats": args.repeats,
              "sgemm_gflops": round(sgemm, 1), "torch_version": torch_runs[0]["version"] if torch else None,
              "architectures": {}}
    ratios = {"train_b32": [], "train_b128": [], "infer_b1000_vs_ort": [], "infer_b1_vs_ort": []}
    for name in args.only.split(","):
        ours, entry = nbnet[name], {"nbnet": {k: round(v, 3) for k, v in nbnet[name].items()}}
        flops = 3 * forward_flops(*ARCHITECTURES[name])
        entry["train_mflop_per_image"] = round(flops / 1e6, 2)
        entry["nbnet_gflops_b128"] = round(flops * 128 / (ours["train_ms_b128"] / 1e3) / 1e9, 1)
        floor_ms = flops * 128 / (sgemm * 1e9) * 1e3
        entry["floor_ratio_b128"] = round(ours["train_ms_b128"] / floor_ms, 2)
        # What bounds the targets: the ratio a step at the compute floor would reach against
        # PyTorch, and a predict at the floor against onnxruntime (forward FLOPs at the
        # sgemm rate). Past 0.5 (or under 1.2) only fewer multiplies (Winograd) reach them.
        floor_images_per_s = sgemm * 1e9 / forward_flops(*ARCHITECTURES[name])
        entry["floor_b1000_vs_ort"] = round(floor_images_per_s / ours["ort_images_per_s_b1000"], 2)
        entry["infer_b1000_vs_ort"] = round(ours["infer_images_per_s_b1000"] / ours["ort_images_per_s_b1000"], 2)
        entry["infer_b1_vs_ort"] = round(ours["ort_ms_b1"] / ours["infer_ms_b1"], 2)
        ratios["infer_b1000_vs_ort"].append(entry["infer_b1000_vs_ort"])
        ratios["infer_b1_vs_ort"].append(entry["infer_b1_vs_ort"])
        if torch:
            entry["torch"] = {k: round(v, 3) for k, v in torch[name].items()}
            for batch in (32, 128):
                ratio = ours[f"train_ms_b{batch}"] / torch[name][f"train_ms_b{batch}"]
                entry[f"train_b{batch}_vs_torch"] = round(ratio, 2)
                ratios[f"train_b{batch}"].append(ratio)
            entry["floor_b128_vs_torch"] = round(floor_ms / torch[name]["train_ms_b128"], 2)
        report["architectures"][name] = entry
    report["geometric_means"] = {
        "train_b32_vs_torch (below 1: nbnet faster)": geometric_mean(ratios["train_b32"]),
        "train_b128_vs_torch (below 1: nbnet faster)": geometric_mean(ratios["train_b128"]),
        "infer_b1000_vs_ort (above 1: nbnet faster)": geometric_mean(ratios["infer_b1000_vs_ort"]),
        "infer_b1_vs_ort (above 1: nbnet faster)": geometric_mean(ratios["infer_b1_vs_ort"]),
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
