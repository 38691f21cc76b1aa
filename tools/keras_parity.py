"""Record what real Keras 3 computes, for tests/test_keras_parity.py to check nbnet against.

Runs in the benchmark virtualenv, never in CI:

    python -m venv /work/bench-venv
    /work/bench-venv/bin/pip install torch==2.13.0 keras h5py
    KERAS_BACKEND=torch /work/bench-venv/bin/python tools/keras_parity.py

and writes tests/fixtures/keras_parity.json (inputs and Keras's outputs, float64 values of
float32 numbers, so the test needs neither Keras nor this script). Every input is drawn
here from seeded generators, so rerunning gives the same file unless Keras changes.

What it records: loss values and gradients (probabilities, unnormalised rows, values at
0 and 1, logits far apart); optimizer weights after several steps (default and other
hyperparameters, tiny gradients where epsilon decides, a schedule as the learning rate);
initializer statistics (Dense and Conv2D shapes); schedules at many steps; regularizer
penalties and gradients; BatchNormalization's outputs, gradients and moving statistics;
EarlyStopping, ModelCheckpoint, LearningRateScheduler and TerminateOnNaN on scripted logs.
"""

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "torch")

import numpy as np  # noqa: E402

try:
    import keras  # noqa: E402
    import torch  # noqa: E402
except ImportError as exc:  # pragma: no cover - a tool, run by hand
    sys.exit(f"keras_parity.py needs Keras 3 on PyTorch (pip install torch==2.13.0 keras h5py): {exc}")

OUTPUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "keras_parity.json"


def as_list(value):
    return np.asarray(value, np.float64).tolist()


def f32(value):
    return np.asarray(value, np.float32)


# ---------------------------------------------------------------------------- losses
def loss_value_and_grad(loss, y_true, y_pred):
    pred = torch.tensor(f32(y_pred), requires_grad=True)
    value = loss(torch.tensor(y_true), pred)
    value.backward()
    return float(value.detach()), pred.grad.numpy()


def loss_cases():
    rng = np.random.default_rng(22)
    classes = 5
    labels = rng.integers(0, classes, 8)
    one_hot = np.eye(classes, dtype=np.float32)[labels]
    soft = rng.dirichlet(np.ones(classes), 8).astype(np.float32)
    probs = rng.dirichlet(np.ones(classes), 8).astype(np.float32)
    unnormalised = (probs * rng.uniform(0.3, 3.0, (8, 1))).astype(np.float32)
    saturated = probs.copy()
    saturated[0] = [1.0, 0.0, 0.0, 0.0, 0.0]
    saturated[1] = [0.0, 0.0, 1.0, 0.0, 0.0]
    saturated[2, :] = [1e-9, 0.5, 0.5 - 1e-9, 0.0, 0.0]
    logits = (rng.standard_normal((8, classes)) * 3).astype(np.float32)
    far_logits = logits * 400  # exp overflows even in float64 without the max shift
    binary_targets = rng.integers(0, 2, (8, 3)).astype(np.float32)
    binary_probs = rng.uniform(0.02, 0.98, (8, 3)).astype(np.float32)
    binary_probs[0] = [0.0, 1.0, 1e-9]
    binary_logits = (rng.standard_normal((8, 3)) * 4).astype(np.float32)
    binary_logits[1] = [120.0, -120.0, 0.0]
    regression_true = rng.standard_normal((8, 3)).astype(np.float32)
    regression_pred = rng.standard_normal((8, 3)).astype(np.float32)
    tied = regression_pred.copy()
    tied[:2] = regression_true[:2]  # |x|'s gradient at 0: Keras (on torch) takes 0

    cases = [
        ("categorical_crossentropy", False, one_hot, probs, "one-hot, rows summing to 1"),
        ("categorical_crossentropy", False, soft, unnormalised, "soft labels, rows not summing to 1"),
        ("categorical_crossentropy", False, one_hot, saturated, "probabilities at 0 and 1 (clipped)"),
        ("categorical_crossentropy", True, soft, logits, "logits"),
        ("categorical_crossentropy", True, one_hot, far_logits, "logits far apart"),
        ("sparse_categorical_crossentropy", False, labels, probs, "rows summing to 1"),
        ("sparse_categorical_crossentropy", False, labels, unnormalised, "rows not summing to 1"),
        ("sparse_categorical_crossentropy", False, labels, saturated, "probabilities at 0 and 1 (clipped)"),
        ("sparse_categorical_crossentropy", True, labels, logits, "logits"),
        ("sparse_categorical_crossentropy", True, labels, far_logits, "logits far apart"),
        ("binary_crossentropy", False, binary_targets, binary_probs, "probabilities, some at 0 and 1"),
        ("binary_crossentropy", True, binary_targets, binary_logits, "logits, some at +-120"),
        ("mean_squared_error", False, regression_true, regression_pred, "three outputs"),
        ("mean_absolute_error", False, regression_true, tied, "three outputs, some differences 0"),
        ("huber", False, regression_true, regression_pred * 2, "three outputs, both sides of delta"),
        ("huber", False, regression_true, tied, "delta 0.5, some differences 0", {"delta": 0.5}),
        ("mean_squared_logarithmic_error", False, np.abs(regression_true), np.abs(regression_pred) * 2,
         "non-negative values"),
        ("mean_squared_logarithmic_error", False, regression_true, regression_pred, "negative values clipped"),
        ("mean_absolute_percentage_error", False, regression_true, tied, "some differences 0"),
    ]
    constructors = {
        "categorical_crossentropy": keras.losses.CategoricalCrossentropy,
        "sparse_categorical_crossentropy": keras.losses.SparseCategoricalCrossentropy,
        "binary_crossentropy": keras.losses.BinaryCrossentropy,
        "mean_squared_error": keras.losses.MeanSquaredError,
        "mean_absolute_error": keras.losses.MeanAbsoluteError,
        "huber": keras.losses.Huber,
        "mean_squared_logarithmic_error": keras.losses.MeanSquaredLogarithmicError,
        "mean_absolute_percentage_error": keras.losses.MeanAbsolutePercentageError,
    }
    out = []
    for name, from_logits, y_true, y_pred, what, *settings in cases:
        kwargs = settings[0] if settings else {}
        loss = constructors[name](from_logits=from_logits, **kwargs) if "crossentropy" in name else \
            constructors[name](**kwargs)
        value, grad = loss_value_and_grad(loss, y_true, y_pred)
        out.append({"loss": name, "from_logits": from_logits, "what": what, "kwargs": kwargs,
                    "y_true": as_list(y_true), "y_pred": as_list(y_pred), "value": value, "grad": as_list(grad)})
    return out


# ---------------------------------------------------------------------------- optimizers
OPTIMIZER_CASES = [
    ("SGD", {}),
    ("SGD", {"learning_rate": 0.1, "momentum": 0.9}),
    ("SGD", {"learning_rate": 0.1, "momentum": 0.9, "nesterov": True}),
    ("Adam", {}),
    ("Adam", {"learning_rate": 0.01, "beta_1": 0.8, "beta_2": 0.99, "epsilon": 1e-5}),
    ("AdamW", {}),
    ("AdamW", {"learning_rate": 0.01, "weight_decay": 0.1}),
    ("RMSprop", {}),
    ("RMSprop", {"learning_rate": 0.01, "momentum": 0.9}),
    ("RMSprop", {"centered": True}),
    ("RMSprop", {"learning_rate": 0.01, "rho": 0.8, "momentum": 0.5, "epsilon": 1e-5, "centered": True}),
    ("Adagrad", {}),
    ("Adagrad", {"learning_rate": 0.05, "initial_accumulator_value": 0.01, "epsilon": 1e-5}),
    ("Adagrad", {"initial_accumulator_value": 0.0}),  # with tiny gradients, epsilon's placement decides
    ("Adadelta", {}),
    ("Adadelta", {"learning_rate": 1.0, "rho": 0.9, "epsilon": 1e-6}),
    ("Adamax", {}),
    ("Adamax", {"learning_rate": 0.01, "beta_1": 0.8, "beta_2": 0.99, "epsilon": 1e-5}),
    ("Nadam", {}),
    ("Nadam", {"learning_rate": 0.01, "beta_1": 0.8, "beta_2": 0.99, "epsilon": 1e-5}),
]
SCHEDULED = ("Adam", {"learning_rate": {"class_name": "ExponentialDecay",
                                        "config": {"initial_learning_rate": 0.01, "decay_steps": 2, "decay_rate": 0.5}}})


CLIPPING_CASES = [
    ("SGD", {"learning_rate": 0.1, "clipnorm": 1.0}),
    ("Adam", {"learning_rate": 0.01, "clipvalue": 0.5}),
    ("RMSprop", {"learning_rate": 0.01, "global_clipnorm": 2.0}),
    ("SGD", {"learning_rate": 0.1, "momentum": 0.9, "weight_decay": 0.01}),
    ("Adam", {"learning_rate": 0.01, "weight_decay": 0.1}),
    ("Nadam", {"clipnorm": 0.5, "weight_decay": 0.05}),
]


def clipping_cases():
    """Two weight arrays (clipnorm clips each, global_clipnorm both), gradients large
    enough for the clips to act."""
    rng = np.random.default_rng(28)
    shapes = [(4, 5), (20,)]
    params = [f32(rng.standard_normal(shape)) for shape in shapes]
    grads = [[f32(rng.standard_normal(shape) * 3) for shape in shapes] for _ in range(4)]
    out = []
    for name, kwargs in CLIPPING_CASES:
        optimizer = getattr(keras.optimizers, name)(**kwargs)
        variables = [keras.Variable(p.copy(), dtype="float32") for p in params]
        for step in grads:
            optimizer.apply_gradients([(torch.tensor(g), v) for g, v in zip(step, variables)])
        out.append({"optimizer": name, "kwargs": kwargs, "params": [as_list(p) for p in params],
                    "grads": [[as_list(g) for g in step] for step in grads],
                    "after": [as_list(keras.ops.convert_to_numpy(v)) for v in variables]})
    return out


def make_schedule(config):
    return getattr(keras.optimizers.schedules, config["class_name"])(**config["config"])


def optimizer_cases():
    rng = np.random.default_rng(23)
    steps = 6
    params = f32(rng.standard_normal(40))
    gradient_sets = {
        "normal": f32(rng.standard_normal((steps, 40))),
        # |g| <= 1e-6: epsilon's placement decides the step.
        "tiny": f32(rng.uniform(-1e-6, 1e-6, (steps, 40))),
    }
    out = []
    for name, kwargs in OPTIMIZER_CASES + [SCHEDULED]:
        for scale, grads in gradient_sets.items():
            built = dict(kwargs)
            if isinstance(built.get("learning_rate"), dict):
                built["learning_rate"] = make_schedule(built["learning_rate"])
            optimizer = getattr(keras.optimizers, name)(**built)
            variable = keras.Variable(params.copy(), dtype="float32")
            history = []
            for g in grads:
                optimizer.apply_gradients([(torch.tensor(g), variable)])
                history.append(as_list(keras.ops.convert_to_numpy(variable)))
            out.append({"optimizer": name, "kwargs": kwargs, "gradients": scale, "params": as_list(params),
                        "grads": as_list(grads), "after_each_step": history})
    return out


# ---------------------------------------------------------------------------- metrics
def metric_cases():
    """Each metric updated with two batches (the second weighted, where given), then read."""
    rng = np.random.default_rng(26)
    labels = [rng.integers(0, 5, 12) for _ in range(2)]
    probs = [f32(rng.dirichlet(np.ones(5), 12)) for _ in range(2)]
    one_hot = [np.eye(5, dtype=np.float32)[y] for y in labels]
    binary_true = [f32(rng.integers(0, 2, (12, 3))) for _ in range(2)]
    binary_pred = [f32(rng.uniform(0, 1, (12, 3))) for _ in range(2)]
    regression = [(f32(rng.standard_normal((12, 3))), f32(rng.standard_normal((12, 3)))) for _ in range(2)]
    exact = [(f32(rng.integers(0, 3, (12, 1))), f32(rng.integers(0, 3, (12, 1)))) for _ in range(2)]
    weights = f32(rng.uniform(0, 2, 12))
    cases = [
        ("Accuracy", {}, exact, False),
        ("BinaryAccuracy", {}, list(zip(binary_true, binary_pred)), True),
        ("BinaryAccuracy", {"threshold": 0.7}, list(zip(binary_true, binary_pred)), False),
        ("CategoricalAccuracy", {}, list(zip(one_hot, probs)), True),
        ("SparseCategoricalAccuracy", {}, list(zip(labels, probs)), True),
        ("TopKCategoricalAccuracy", {"k": 2}, list(zip(one_hot, probs)), False),
        ("SparseTopKCategoricalAccuracy", {"k": 2}, list(zip(labels, probs)), True),
        ("MeanSquaredError", {}, regression, True),
        ("MeanAbsoluteError", {}, regression, False),
        ("RootMeanSquaredError", {}, regression, True),
        ("Precision", {}, list(zip(binary_true, binary_pred)), False),
        ("Precision", {"thresholds": 0.3}, list(zip(binary_true, binary_pred)), True),
        ("Recall", {}, list(zip(binary_true, binary_pred)), False),
        ("Recall", {"class_id": 1}, list(zip(one_hot, probs)), False),
        ("AUC", {}, list(zip(binary_true, binary_pred)), False),
        ("AUC", {"num_thresholds": 50}, list(zip(binary_true, binary_pred)), True),
        ("AUC", {"curve": "PR"}, list(zip(binary_true, binary_pred)), False),
        ("AUC", {"curve": "PR", "summation_method": "minoring"}, list(zip(binary_true, binary_pred)), False),
    ]
    out = []
    for name, kwargs, batches, weighted in cases:
        metric = getattr(keras.metrics, name)(**kwargs)
        for index, (y_true, y_pred) in enumerate(batches):
            metric.update_state(y_true, y_pred, sample_weight=weights if weighted and index == 1 else None)
        out.append({"metric": name, "kwargs": kwargs, "name": metric.name, "weighted": weighted,
                    "batches": [[as_list(y_true), as_list(y_pred)] for y_true, y_pred in batches],
                    "sample_weight": as_list(weights), "result": float(keras.ops.convert_to_numpy(metric.result()))})
    mean = keras.metrics.Mean()
    mean.update_state(f32([1.0, 2.0, 3.0]))
    mean.update_state(f32([4.0, 8.0]), sample_weight=f32([0.5, 2.0]))
    out.append({"metric": "Mean", "kwargs": {}, "name": mean.name, "weighted": True,
                "batches": [[[1.0, 2.0, 3.0]], [[4.0, 8.0]]], "sample_weight": [0.5, 2.0],
                "result": float(keras.ops.convert_to_numpy(mean.result()))})
    return out


# ---------------------------------------------------------------------------- initializers
def initializer_cases():
    shapes = {"dense": (300, 200), "conv2d": (3, 3, 32, 64), "conv2d_5x5_one_channel": (5, 5, 1, 40)}
    out = []
    named = [(name, {}) for name in ("glorot_uniform", "glorot_normal", "he_uniform", "he_normal", "lecun_uniform",
                                     "lecun_normal", "zeros", "ones")]
    objects = [("RandomNormal", {"mean": 0.1, "stddev": 0.2}), ("TruncatedNormal", {"stddev": 0.3}),
               ("RandomUniform", {"minval": -0.2, "maxval": 0.3}), ("Constant", {"value": 0.7}),
               ("VarianceScaling", {"scale": 2.0, "mode": "fan_out", "distribution": "uniform"}),
               ("VarianceScaling", {"scale": 0.5, "mode": "fan_avg", "distribution": "untruncated_normal"})]
    for name, kwargs in named + objects:
        for kind, shape in shapes.items():
            initializer = getattr(keras.initializers, name)(**kwargs) if kwargs else keras.initializers.get(name)
            values = np.asarray(keras.ops.convert_to_numpy(initializer(shape)), np.float64)
            out.append({"initializer": name, "kwargs": kwargs, "layer": kind, "shape": list(shape),
                        "keras_config": initializer.get_config(), "mean": values.mean(), "std": values.std(),
                        "max_abs": np.abs(values).max(), "min": values.min(), "max": values.max()})
    return out


# ---------------------------------------------------------------------------- schedules
def schedule_cases():
    steps = list(range(0, 61))
    configs = [
        ("ExponentialDecay", {"initial_learning_rate": 0.1, "decay_steps": 7, "decay_rate": 0.5}),
        ("ExponentialDecay", {"initial_learning_rate": 0.1, "decay_steps": 7, "decay_rate": 0.5, "staircase": True}),
        ("CosineDecay", {"initial_learning_rate": 0.1, "decay_steps": 40}),
        ("CosineDecay", {"initial_learning_rate": 0.1, "decay_steps": 40, "alpha": 0.2}),
        ("PiecewiseConstantDecay", {"boundaries": [5, 12], "values": [0.1, 0.05, 0.01]}),
        ("CosineDecay", {"initial_learning_rate": 0.01, "decay_steps": 30, "alpha": 0.1, "warmup_target": 0.1,
                         "warmup_steps": 10}),
        ("InverseTimeDecay", {"initial_learning_rate": 0.1, "decay_steps": 7, "decay_rate": 0.5}),
        ("InverseTimeDecay", {"initial_learning_rate": 0.1, "decay_steps": 7, "decay_rate": 0.5, "staircase": True}),
        ("PolynomialDecay", {"initial_learning_rate": 0.1, "decay_steps": 25}),
        ("PolynomialDecay", {"initial_learning_rate": 0.1, "decay_steps": 25, "end_learning_rate": 0.01, "power": 2.0,
                             "cycle": True}),
        ("CosineDecayRestarts", {"initial_learning_rate": 0.1, "first_decay_steps": 8}),
        ("CosineDecayRestarts", {"initial_learning_rate": 0.1, "first_decay_steps": 10, "t_mul": 1.0, "m_mul": 0.5,
                                 "alpha": 0.1}),
        ("CosineDecayRestarts", {"initial_learning_rate": 0.1, "first_decay_steps": 5, "t_mul": 1.5, "m_mul": 0.8}),
    ]
    out = []
    for name, kwargs in configs:
        schedule = getattr(keras.optimizers.schedules, name)(**kwargs)
        values = [float(keras.ops.convert_to_numpy(schedule(step))) for step in steps]
        out.append({"schedule": name, "kwargs": kwargs, "steps": steps, "values": values})
    return out


# ---------------------------------------------------------------------------- regularizers
def regularizer_cases():
    rng = np.random.default_rng(24)
    weights = f32(rng.standard_normal((6, 5)))
    weights[0, :2] = 0.0  # |w| has no derivative at 0: Keras (and nbnet) use 0 there
    # Keras 3's l1_l2 (an alias of L1L2) defaults to l1=l2=0, unlike Keras 2's function (0.01 each).
    cases = [("l1", {}), ("l2", {}), ("l1_l2", {}), ("l1_l2", {"l1": 0.01, "l2": 0.01}),
             ("L1L2", {"l1": 0.003, "l2": 0.02}), ("L2", {"l2": 0.5})]
    out = []
    for name, kwargs in cases:
        regularizer = getattr(keras.regularizers, name)(**kwargs)
        w = torch.tensor(weights, requires_grad=True)
        penalty = regularizer(w)
        if penalty.requires_grad:
            penalty.backward()
        grad = w.grad.numpy() if w.grad is not None else np.zeros_like(weights)
        out.append({"regularizer": name, "kwargs": kwargs, "config": regularizer.get_config(),
                    "weights": as_list(weights), "penalty": float(penalty.detach()), "grad": as_list(grad)})
    return out


# ---------------------------------------------------------------------------- BatchNormalization
def batchnorm_cases():
    rng = np.random.default_rng(25)
    out = []
    for kwargs, shape in (({}, (16, 4)), ({"momentum": 0.9, "epsilon": 1e-5}, (4, 3, 3, 5))):
        channels = shape[-1]
        layer = keras.layers.BatchNormalization(**kwargs)
        layer.build(shape)
        gamma, beta = f32(rng.uniform(0.5, 1.5, channels)), f32(rng.standard_normal(channels))
        layer.set_weights([gamma, beta, np.zeros(channels, np.float32), np.ones(channels, np.float32)])
        batches, outputs, grads, moving = [], [], [], []
        for _ in range(3):
            x = f32(rng.standard_normal(shape) * 2 + 1)
            upstream = f32(rng.standard_normal(shape))
            xt = torch.tensor(x, requires_grad=True)
            y = layer(xt, training=True)
            (y * torch.tensor(upstream)).sum().backward()
            batches.append({"x": as_list(x), "upstream": as_list(upstream)})
            outputs.append(as_list(y.detach().numpy()))
            grads.append({"x": as_list(xt.grad.numpy()),
                          "gamma": as_list(layer.gamma.value.grad.numpy()),
                          "beta": as_list(layer.beta.value.grad.numpy())})
            layer.gamma.value.grad = None
            layer.beta.value.grad = None
            moving.append([as_list(keras.ops.convert_to_numpy(w)) for w in (layer.moving_mean, layer.moving_variance)])
        x = f32(rng.standard_normal(shape))
        inference = keras.ops.convert_to_numpy(layer(torch.tensor(x), training=False))
        out.append({"kwargs": kwargs, "shape": list(shape), "gamma": as_list(gamma), "beta": as_list(beta),
                    "batches": batches, "outputs": outputs, "grads": grads, "moving_after_each": moving,
                    "inference_x": as_list(x), "inference_y": as_list(inference),
                    "weight_names": [w.path.split("/")[-1] for w in layer.weights]})
    return out


# ---------------------------------------------------------------------------- callbacks
def tiny_model():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse", metrics=["accuracy"])
    model.evaluate(np.zeros((2, 2)), np.zeros((2, 1)), verbose=0)  # builds the metrics 'auto' mode reads
    return model


def mark(model, epoch):
    """Weights that say which epoch they are from."""
    model.set_weights([np.full(w.shape, float(epoch), np.float32) for w in model.get_weights()])


def drive(callback, model, sequence, key):
    """Call the callback's epoch hooks with ``key`` taking the scripted values; return the
    epochs after which it asked training to stop (fit would stop at the first)."""
    callback.set_model(model)
    model.stop_training = False
    callback.on_train_begin()
    stopped_at = None
    for epoch, value in enumerate(sequence):
        callback.on_epoch_begin(epoch)
        mark(model, epoch)
        callback.on_epoch_end(epoch, {key: value, "loss": 1.0})
        if model.stop_training:
            stopped_at = epoch
            break
    callback.on_train_end()
    return stopped_at


def callback_cases():
    out = {"early_stopping": [], "model_checkpoint": [], "learning_rate_scheduler": [], "terminate_on_nan": []}
    losses = [1.0, 0.8, 0.81, 0.79, 0.795, 0.8, 0.85, 0.7, 0.9, 0.95, 0.99, 1.0]
    accuracies = [0.5, 0.6, 0.6, 0.61, 0.605, 0.7, 0.69, 0.69, 0.7, 0.68, 0.6, 0.6]
    configs = [
        ({"monitor": "val_loss", "patience": 0}, losses),
        ({"monitor": "val_loss", "patience": 2}, losses),
        ({"monitor": "val_loss", "patience": 2, "min_delta": 0.015}, losses),
        ({"monitor": "val_loss", "patience": 1, "restore_best_weights": True}, losses),
        ({"monitor": "val_loss", "patience": 20, "restore_best_weights": True}, losses),
        ({"monitor": "val_accuracy", "patience": 1}, accuracies),
        ({"monitor": "val_accuracy", "patience": 2, "mode": "max", "min_delta": 0.02}, accuracies),
        ({"monitor": "val_loss", "patience": 2, "baseline": 0.75}, losses),
        ({"monitor": "val_loss", "patience": 1, "start_from_epoch": 3, "restore_best_weights": True}, losses),
    ]
    for kwargs, sequence in configs:
        model = tiny_model()
        callback = keras.callbacks.EarlyStopping(**kwargs)
        stopped_at = drive(callback, model, sequence, kwargs["monitor"])
        out["early_stopping"].append({"kwargs": kwargs, "sequence": sequence, "stopped_at": stopped_at,
                                      "weights_epoch": float(model.get_weights()[0].ravel()[0])})
    with tempfile.TemporaryDirectory() as folder:
        for index, (kwargs, sequence, key) in enumerate([
                ({"monitor": "val_loss", "save_best_only": True}, losses, "val_loss"),
                ({"monitor": "val_accuracy", "save_best_only": True}, accuracies, "val_accuracy"),
                ({"monitor": "val_loss", "save_best_only": True, "mode": "max"}, losses, "val_loss"),
                ({"monitor": "val_loss", "save_best_only": False}, losses[:4], "val_loss")]):
            model = tiny_model()
            pattern = os.path.join(folder, f"case{index}-{{epoch:02d}}.weights.h5")
            callback = keras.callbacks.ModelCheckpoint(pattern, save_weights_only=True, **kwargs)
            drive(callback, model, sequence, key)
            saved = sorted(int(name.split("-")[1].split(".")[0]) for name in os.listdir(folder)
                           if name.startswith(f"case{index}-"))
            out["model_checkpoint"].append({"kwargs": kwargs, "sequence": sequence, "saved_epochs": saved})
    out["reduce_lr_on_plateau"] = []
    for kwargs in ({"factor": 0.5, "patience": 1}, {"factor": 0.2, "patience": 2, "cooldown": 2, "min_lr": 0.003},
                   {"factor": 0.5, "patience": 0, "min_delta": 0.02}, {"monitor": "val_accuracy", "patience": 1}):
        key = kwargs.get("monitor", "val_loss")
        sequence = accuracies if key == "val_accuracy" else losses
        model = tiny_model()
        model.optimizer.learning_rate = 0.1
        callback = keras.callbacks.ReduceLROnPlateau(**kwargs)
        callback.set_model(model)
        callback.on_train_begin()
        rates, logged = [], []
        for epoch, value in enumerate(sequence):
            logs = {key: value, "loss": 1.0}
            callback.on_epoch_end(epoch, logs)
            logged.append(float(logs["learning_rate"]))
            rates.append(float(keras.ops.convert_to_numpy(model.optimizer.learning_rate)))
        out["reduce_lr_on_plateau"].append({"kwargs": kwargs, "sequence": sequence, "rates": rates,
                                            "logged": logged})
    model = tiny_model()
    model.optimizer.learning_rate = 0.1
    rates = []
    callback = keras.callbacks.LearningRateScheduler(lambda epoch, lr: lr if epoch < 2 else lr * 0.5)
    callback.set_model(model)
    for epoch in range(6):
        callback.on_epoch_begin(epoch)
        rates.append(float(keras.ops.convert_to_numpy(model.optimizer.learning_rate)))
    out["learning_rate_scheduler"].append({"schedule": "lr if epoch < 2 else lr * 0.5", "initial": 0.1,
                                           "rates": rates})
    # TerminateOnNaN in a real fit: MSE whose weights grow 39-fold a step until the loss overflows.
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, kernel_initializer="ones")])
    model.compile(keras.optimizers.SGD(learning_rate=0.1), "mse")
    x = np.full((64, 2), 10.0, np.float32)
    y = np.zeros((64, 1), np.float32)
    seen = []
    history = model.fit(x, y, batch_size=8, epochs=10, verbose=0, shuffle=False,
                        callbacks=[keras.callbacks.TerminateOnNaN(),
                                   keras.callbacks.LambdaCallback(on_train_batch_end=lambda b, logs: seen.append(b))])
    out["terminate_on_nan"].append({"steps_per_epoch": 8, "batches_run": len(seen),
                                    "epochs_in_history": len(history.history["loss"]),
                                    "last_loss_finite": bool(np.isfinite(history.history["loss"][-1]))})
    return out


# ---------------------------------------------------------------------------- weighted training
def weighted_fit_cases():
    """A Dense softmax model trained a few steps with sample_weight, then with class_weight,
    from the same weights: Keras's loss per epoch, weighted accuracy and final weights."""
    rng = np.random.default_rng(29)
    x = f32(rng.standard_normal((24, 4)))
    labels = rng.integers(0, 3, 24)
    kernel, bias = f32(rng.standard_normal((4, 3)) * 0.5), f32(rng.standard_normal(3) * 0.1)
    sample_weight = f32(rng.uniform(0, 3, 24))
    x_val, y_val, w_val = x[:8] * 2, labels[:8], sample_weight[:8]
    out = []
    for kind, extra in (("sample_weight", {"sample_weight": sample_weight}),
                        ("class_weight", {"class_weight": {0: 0.5, 1: 2.0}})):
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
        model.compile(keras.optimizers.SGD(0.1), "sparse_categorical_crossentropy", metrics=["accuracy"])
        model.set_weights([kernel, bias])
        history = model.fit(x, labels, batch_size=8, epochs=2, shuffle=False, verbose=0,
                            validation_data=(x_val, y_val, w_val), **extra)
        evaluated = model.evaluate(x_val, y_val, sample_weight=w_val, verbose=0, return_dict=True)
        out.append({"kind": kind, "class_weight": {str(k): v for k, v in extra.get("class_weight", {}).items()},
                    "history": {k: list(map(float, v)) for k, v in history.history.items()},
                    "evaluate": {k: float(v) for k, v in evaluated.items()},
                    "weights": [as_list(w) for w in model.get_weights()]})
    return {"x": as_list(x), "labels": labels.tolist(), "kernel": as_list(kernel), "bias": as_list(bias),
            "sample_weight": as_list(sample_weight), "cases": out}


# ---------------------------------------------------------------------------- weights files
WEIGHTS_FILE = OUTPUT.parent / "keras_cnn.weights.h5"


def weights_file_case():
    """A small CNN with seeded random weights saved by Keras's save_weights, and its
    predictions: nbnet must load the file into the same architecture and predict the same."""
    rng = np.random.default_rng(27)
    model = keras.Sequential([
        keras.Input((10, 10, 2)), keras.layers.Conv2D(4, 3, activation="relu"), keras.layers.BatchNormalization(),
        keras.layers.MaxPooling2D(), keras.layers.Conv2D(3, 2, padding="same"), keras.layers.Flatten(),
        keras.layers.Dropout(0.3), keras.layers.Dense(5, activation="relu"), keras.layers.Dense(3, activation="softmax")])
    model.set_weights([f32(rng.uniform(0.5, 1.5, w.shape)) if "variance" in path else f32(rng.standard_normal(w.shape) * 0.5)
                       for w, path in zip(model.get_weights(), [v.path for v in model.weights])])
    model.save_weights(WEIGHTS_FILE)
    x = f32(rng.standard_normal((4, 10, 10, 2)))
    return {"file": WEIGHTS_FILE.name, "x": as_list(x), "predictions": as_list(model.predict(x, verbose=0))}


# ---------------------------------------------------------------------------- .keras files
KERAS_FILES = OUTPUT.parent / "keras_files"


def _architectures():
    """Sequential models covering every layer nbnet reads from .keras files."""
    layers = keras.layers
    return {
        "mlp": ([keras.Input((12,)), layers.Dense(16, activation="relu", kernel_regularizer=keras.regularizers.l2(1e-3)),
                 layers.Dropout(0.2), layers.Dense(8, activation="tanh"), layers.Dense(4, activation="softmax")],
                "sparse_categorical_crossentropy", "adam"),
        "cnn_batchnorm": ([keras.Input((12, 12, 1)), layers.Rescaling(1 / 255.0), layers.Conv2D(4, 3, activation="relu"),
                           layers.BatchNormalization(), layers.MaxPooling2D(), layers.Flatten(), layers.Dropout(0.25),
                           layers.Dense(3, activation="softmax")], "categorical_crossentropy", "rmsprop"),
        "cnn_same_strides": ([keras.Input((11, 9, 2)), layers.Conv2D(5, (3, 2), strides=2, padding="same",
                                                                     activation="sigmoid"),
                              layers.AveragePooling2D(2, padding="same"), layers.Conv2D(3, 2, padding="same"),
                              layers.LeakyReLU(negative_slope=0.1), layers.Flatten(), layers.Dense(2)], "mse", "sgd"),
        "global_pooling": ([keras.Input((10, 10, 3)), layers.ZeroPadding2D(((1, 0), (2, 1))),
                            layers.Conv2D(6, 3, activation="relu", use_bias=False), layers.MaxPooling2D(3, strides=1),
                            layers.GlobalAveragePooling2D(), layers.Dense(4), layers.Softmax()],
                           "sparse_categorical_crossentropy", "nadam"),
        "reshape_activations": ([keras.Input((6, 6, 2)), layers.Reshape((12, 6)), layers.Reshape((6, 6, 2)),
                                 layers.Conv2D(4, 2), layers.ReLU(), layers.GlobalMaxPooling2D(keepdims=True),
                                 layers.Flatten(), layers.Dense(3), layers.Activation("softmax")],
                                "categorical_crossentropy", "adagrad"),
        "binary": ([keras.Input((7,)), layers.Dense(5, activation="leaky_relu"), layers.BatchNormalization(),
                    layers.Dense(1, activation="sigmoid")], "binary_crossentropy", "adamax"),
        "cnn_valid_rect_pools": ([keras.Input((13, 11, 2)), layers.Conv2D(3, 5, strides=(2, 1), activation="tanh"),
                                  layers.AveragePooling2D((2, 3), strides=(1, 2)), layers.Flatten(),
                                  layers.Dense(2, activation="sigmoid")], "binary_crossentropy", "sgd"),
        "mlp_no_bias_softmax_layer": ([keras.Input((9,)), layers.Dense(8, use_bias=False), layers.Activation("tanh"),
                                       layers.Dense(4), layers.Softmax()], "categorical_crossentropy", "adadelta"),
        "mnist_like_two_pools": ([keras.Input((14, 14, 1)), layers.Conv2D(4, 3, activation="relu"), layers.MaxPooling2D(),
                                  layers.Conv2D(6, 3, activation="relu"), layers.MaxPooling2D(), layers.Flatten(),
                                  layers.Dense(5, activation="softmax")], "sparse_categorical_crossentropy", "adam"),
        "batchnorm_settings": ([keras.Input((8, 8, 3)), layers.Conv2D(4, 3, padding="same"),
                                layers.BatchNormalization(momentum=0.9, epsilon=1e-5), layers.ReLU(),
                                layers.GlobalAveragePooling2D(), layers.Dense(3, activation="softmax")],
                               "sparse_categorical_crossentropy", "rmsprop"),
        "leaky_relu_dropout": ([keras.Input((6,)), layers.Dense(10), layers.LeakyReLU(negative_slope=0.3),
                                layers.Dropout(0.4), layers.Dense(2)], "mse", "adamw"),
        "rescaling_offset": ([keras.Input((5, 5, 1)), layers.Rescaling(1 / 127.5, offset=-1.0), layers.Conv2D(2, 1),
                              layers.GlobalMaxPooling2D(), layers.Dense(2, activation="softmax")],
                             "sparse_categorical_crossentropy", "sgd"),
        "exponential_units": ([keras.Input((6,)), layers.Dense(8, activation="elu"), layers.Activation("selu"),
                               layers.ELU(alpha=0.5), layers.Dense(3, activation="softplus")], "mse", "adam"),
        "random_flip": ([keras.Input((6, 5, 2)), layers.RandomFlip("horizontal", seed=3), layers.Conv2D(3, 3),
                         layers.Flatten(), layers.Dense(2)], "mse", "sgd"),
        "upsampling_autoencoder": ([keras.Input((6, 6, 1)), layers.Conv2D(3, 3, padding="same", activation="relu"),
                                    layers.MaxPooling2D(), layers.UpSampling2D((2, 3)), layers.Conv2D(1, 3),
                                    layers.Flatten(), layers.Dense(2)], "mse", "adam"),
    }


def keras_file_cases():
    """Each architecture with seeded random weights (positive moving variances), saved by
    Keras as .keras, with Keras's predictions on seeded inputs."""
    rng = np.random.default_rng(30)
    KERAS_FILES.mkdir(parents=True, exist_ok=True)
    out = []
    for name, (stack, loss, optimizer) in _architectures().items():
        model = keras.Sequential(stack, name=name)
        model.compile(optimizer, loss, metrics=["accuracy"])
        model.set_weights([f32(rng.uniform(0.5, 1.5, w.shape)) if "variance" in v.path
                           else f32(rng.standard_normal(w.shape) * 0.4) for w, v in zip(model.get_weights(), model.weights)])
        path = KERAS_FILES / f"{name}.keras"
        model.save(path)
        model.save(path.with_suffix(".h5"))  # Keras's legacy HDF5 writer
        import h5py
        from keras.src.legacy.saving import legacy_h5_format

        with h5py.File(KERAS_FILES / f"{name}_weights.h5", "w") as h5:  # Keras 2's save_weights layout
            legacy_h5_format.save_weights_to_hdf5_group(h5, model)
        x = f32(rng.uniform(0, 1, (4,) + tuple(model.input_shape[1:])))
        out.append({"name": name, "file": path.name, "legacy_file": path.with_suffix(".h5").name,
                    "legacy_weights": f"{name}_weights.h5", "x": as_list(x), "predictions": as_list(model.predict(x, verbose=0)),
                    "loss": loss, "optimizer": optimizer})
    return out


CONTINUED = [("SGD", {"learning_rate": 0.1, "momentum": 0.9}), ("Adam", {"learning_rate": 0.01}), ("AdamW", {}),
             ("RMSprop", {"momentum": 0.5, "centered": True}), ("Adagrad", {"learning_rate": 0.05}),
             ("Adadelta", {"learning_rate": 1.0}), ("Adamax", {}), ("Nadam", {"learning_rate": 0.01})]


def continued_training_cases():
    """A model trained two steps in Keras and saved (optimizer state included), then two
    more steps in Keras: nbnet, continuing from the file, must reach the same weights."""
    rng = np.random.default_rng(31)
    x = f32(rng.standard_normal((16, 5)))
    y = rng.integers(0, 3, 16)
    out = []
    for name, kwargs in CONTINUED:
        model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(6, activation="relu"),
                                  keras.layers.BatchNormalization(), keras.layers.Dense(3, activation="softmax")])
        model.compile(getattr(keras.optimizers, name)(**kwargs), "sparse_categorical_crossentropy")
        model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
        path = KERAS_FILES / f"continue_{name.lower()}.keras"
        model.save(path)
        model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
        out.append({"optimizer": name, "kwargs": kwargs, "file": path.name,
                    "weights_after": [as_list(w) for w in model.get_weights()]})
    return {"x": as_list(x), "y": y.tolist(), "cases": out}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args()
    keras.utils.set_random_seed(0)
    fixture = {"keras_version": keras.__version__, "backend": keras.backend.backend(), "torch_version": torch.__version__,
               "epsilon": keras.backend.epsilon(),
               "losses": loss_cases(), "metrics": metric_cases(), "optimizers": optimizer_cases(), "clipping": clipping_cases(), "initializers": initializer_cases(),
               "schedules": schedule_cases(), "regularizers": regularizer_cases(), "batchnorm": batchnorm_cases(),
               "callbacks": callback_cases(), "weights_file": weights_file_case(),
               "weighted_fit": weighted_fit_cases(),
               "keras_files": keras_file_cases(),
               "continued_training": continued_training_cases()}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    temporary = args.output.with_suffix(".tmp")
    temporary.write_text(json.dumps(fixture, indent=None, separators=(",", ":")) + "\n")
    os.replace(temporary, args.output)
    print(json.dumps({"written": str(args.output), "bytes": args.output.stat().st_size,
                      "keras": keras.__version__, "torch": torch.__version__}))


if __name__ == "__main__":
    main()
