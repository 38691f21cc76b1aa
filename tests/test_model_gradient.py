"""The gradient of a whole model, as one training step computes it, against central finite
differences of what that step minimises: the mean batch loss plus every regularization
penalty, in training mode (BatchNormalization on the batch's own statistics, the same
Dropout mask at every evaluation).

The analytic gradient is the model's flat gradient (``flat_grads``) as ``train_on_batch``
hands it to the optimizer; the optimizer here only keeps a host copy and changes no
weight. The numerical gradient differentiates an independent float64 NumPy forward of the
same layers (``reference.py``: conv, pool, batch normalisation, dense, activations), with
the loss and the penalties written from their definitions, so it shares no kernel with
what it checks: a wrong gradient, a missing term, or a loss or layer that is not the one
it claims all show. In float64 the central differences are good to about 1e-9, and the
float32 step is off by its rounding only (about 1e-6 of the largest gradient here).

The model has two Conv2D 3x3 + MaxPooling2D 2x2 pairs that it fuses (the second on the
CPU's direct, im2col or Winograd pass; on the GPU's direct or im2col), BatchNormalization,
Dropout, l1 and l2 regularizers on kernels and biases, and a softmax output with
categorical cross-entropy (run as the fused softmax + loss kernel on the logits), a
sigmoid with binary cross-entropy (fused too), or a linear output with MSE. Under the
CUDA simulator the same check runs the step with ``device='cuda'`` on smaller shapes.

Bugs planted in a scratch copy of nbnet, each caught (worst error / allowed in brackets;
a correct step stays under 0.02): the l2 gradient without its factor 2 (700-1600), the
training step skipping the regularizers (loss off by 50%; gradient 1800-4400), the
BatchNormalization backward without its x_hat term (600-2900), the max pool's backward
with a transposed window index (6000-17000), Dropout's backward unscaled (1000-1200), the
sigmoid cross-entropy gradient not divided by the width (8000), the softmax one summed
over the batch instead of averaged (17000-21000), the Winograd backward with its 2x2
window transposed (7000-12500), MSE summed over the features (loss off by 100%), and on
the GPU path the l2 gradient without its 2 (440-1500) and the BatchNormalization
backward without its x_hat term (1700-3600).
"""

import os
import sys

import numpy as np
import pytest

from nbnet import layers, models, optimizers, regularizers
from nbnet.devices import cpu

try:
    from . import reference as ref
    from .simulator import ON_CUDA, plain_only, run_under_simulator, sim_only, small_launches
except ImportError:  # tests/ is not a package
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import reference as ref
    from simulator import ON_CUDA, plain_only, run_under_simulator, sim_only, small_launches

FD_STEP = 1e-6   # central-difference step, float64
COORDS = 60      # flat parameters checked per model: two from every weight array, the rest at random
# Coordinate by coordinate: |analytic - numeric| <= GRAD_ATOL * max|numeric| + GRAD_RTOL * |numeric|.
# The float32 step is observed within 1e-6 of max|numeric| (CPU and simulator); the planted
# bugs below (a factor, a dropped term, a wrong index) were off by 5e-2 to 5 of it.
GRAD_RTOL, GRAD_ATOL = 3e-4, 3e-5
LOSS_RTOL = 1e-5  # the step's reported loss (mean loss + penalties) against the float64 value

# Regularizers on every Conv2D and Dense weight: both kinds, on kernels and biases.
REGULARIZERS = {
    "conv1": dict(kernel_regularizer=regularizers.l1_l2(l1=0.02, l2=0.05), bias_regularizer=regularizers.l2(0.05)),
    "conv2": dict(kernel_regularizer=regularizers.l2(0.05), bias_regularizer=regularizers.l1(0.02)),
    "hidden": dict(kernel_regularizer=regularizers.l1(0.02), bias_regularizer=regularizers.l1_l2(l1=0.02, l2=0.05)),
    "output": dict(kernel_regularizer=regularizers.l1_l2(l1=0.02, l2=0.05), bias_regularizer=regularizers.l2(0.05)),
}
HEADS = {  # output activation, loss
    "softmax": ("softmax", "categorical_crossentropy"),
    "sigmoid": ("sigmoid", "binary_crossentropy"),
    "mse": ("linear", "mse"),
}


class GradientCapture(optimizers.Optimizer):
    """Keeps a float64 host copy of the flat gradient of each step; changes no weight."""

    def _update(self, params, grads, lr, ops, halt):
        self.gradient = np.array(ops.to_host(grads), dtype=np.float64)


def build(head, size, conv1_filters, conv2_padding="valid", seed=0):
    """conv 3x3 + pool 2x2 (fused; direct: a 3x3x1 field), BatchNormalization, conv 3x3 +
    pool 2x2 (fused; direct when conv1_filters == 1, else im2col or Winograd; it needs its
    input gradient), Flatten, Dropout, Dense tanh, Dense output. The normalisation feeds
    the second conv inputs of both signs, so none of its ReLU channels is dead."""
    activation, loss = HEADS[head]
    model = models.Sequential([
        layers.Conv2D(conv1_filters, 3, activation="relu", input_shape=(size, size, 1), **REGULARIZERS["conv1"]),
        layers.MaxPooling2D(2),
        layers.BatchNormalization(),
        layers.Conv2D(4, 3, padding=conv2_padding, activation="relu", **REGULARIZERS["conv2"]),
        layers.MaxPooling2D(2),
        layers.Flatten(),
        layers.Dropout(0.3),
        layers.Dense(5, activation="tanh", **REGULARIZERS["hidden"]),
        layers.Dense(3, activation=activation, **REGULARIZERS["output"]),
    ], seed=seed)
    model.compile(optimizer=GradientCapture(1.0), loss=loss)
    model.build()
    return model


def randomise(model, rng):
    """Non-zero biases and beta, gamma away from 1 (zeros sit on l1's kink; ones hide a
    gamma that is used where it should not be)."""
    for layer, key in model._flat_entries:
        value = layer.params[key]
        if key in ("bias", "beta"):
            value[...] = rng.normal(0.0, 0.2, value.shape)
        elif key == "gamma":
            value[...] = rng.uniform(0.5, 1.5, value.shape)


def batch(head, count, size, classes, rng):
    x = rng.standard_normal((count, size, size, 1)).astype(np.float32)
    if head == "softmax":
        y = np.eye(classes, dtype=np.float32)[rng.integers(0, classes, count)]
    elif head == "sigmoid":
        y = (rng.random((count, classes)) < 0.5).astype(np.float32)
    else:
        y = rng.standard_normal((count, classes)).astype(np.float32)
    return x, y


def dropout_keep(layer, generator_state, shape):
    """Which units ``layer`` keeps in a training forward that starts from the generator
    state ``generator_state`` (a Dropout draws its mask from its generator alone)."""
    probe = layers.Dropout(layer.rate)
    probe.rng.bit_generator.state = generator_state
    return probe.forward(np.ones(shape, np.float32), training=True) != 0


class Objective:
    """What the training step minimises, in float64 NumPy from the definitions: the model's
    layers in training mode (the Dropout mask fixed), the mean batch loss, the penalties.
    A function of ``weights``, the float64 copies of the model's trainable weights in its
    flat order."""

    def __init__(self, model, head, x, targets, keep):
        self.model, self.head, self.keep = model, head, keep
        self.x, self.targets = np.asarray(x, np.float64), np.asarray(targets, np.float64)
        self.entries = list(model._flat_entries)
        self.weights = [np.array(layer.params[key], np.float64) for layer, key in self.entries]

    def weight(self, layer, key):
        return self.weights[self.entries.index((layer, key))]

    def forward(self):
        """The output layer's pre-activation, and each MaxPooling2D's output."""
        x, pooled = self.x, []
        for layer in self.model.layers:
            if isinstance(layer, layers.Conv2D):
                x = ref.conv2d(x, self.weight(layer, "kernel"), self.weight(layer, "bias"), layer.strides,
                               layer.padding, layer.activation)
            elif isinstance(layer, layers.MaxPooling2D):
                x = ref.max_pool2d(x, layer.pool_size, layer.strides, layer.padding)
                pooled.append(x)
            elif isinstance(layer, layers.BatchNormalization):
                x, _, _ = ref.batchnorm_train(x, self.weight(layer, "gamma"), self.weight(layer, "beta"),
                                              layer.epsilon)
            elif isinstance(layer, layers.Flatten):
                x = x.reshape(len(x), -1)
            elif isinstance(layer, layers.Dropout):
                x = np.where(self.keep, x / (1.0 - layer.rate), 0.0)
            elif isinstance(layer, layers.Dense):
                last = layer is self.model.layers[-1]
                x = ref.dense(x, self.weight(layer, "kernel"), self.weight(layer, "bias"),
                              None if last else layer.activation)
            else:
                raise AssertionError(f"no reference for {layer}")
        return x, pooled

    def __call__(self):
        logits, _ = self.forward()
        return self.loss(logits) + self.penalty()

    def loss(self, z):
        """The mean batch loss (each loss averages over the output's last axis, as Keras's)."""
        t = self.targets
        if self.head == "softmax":
            p = ref.activation("softmax", z)
            return float(np.mean(-np.sum(t * np.log(p), axis=1)))
        if self.head == "sigmoid":
            p = ref.activation("sigmoid", z)
            return float(np.mean(-(t * np.log(p) + (1.0 - t) * np.log1p(-p))))
        return float(np.mean((z - t) ** 2))

    def penalty(self):
        return sum(ref.l1_l2_penalty(self.weight(layer, key), reg.l1, reg.l2)[0]
                   for layer in self.model.layers for key, reg in layer.active_regularizers())

    def gradient(self, coords, step=FD_STEP):
        """Central differences at the flat indices ``coords``."""
        flat_views = [w.reshape(-1) for w in self.weights]
        offsets = np.cumsum([0] + [w.size for w in self.weights])
        numeric = np.empty(len(coords))
        for n, index in enumerate(coords):
            array = int(np.searchsorted(offsets, index, side="right")) - 1
            flat, i = flat_views[array], int(index - offsets[array])
            saved = flat[i]
            flat[i] = saved + step
            up = self()
            flat[i] = saved - step
            down = self()
            flat[i] = saved
            numeric[n] = (up - down) / (2 * step)
        return numeric


def coordinates(model, rng, count=COORDS):
    """``count`` flat indices: two from every weight array, the rest drawn from all."""
    picked, offset = [], 0
    for layer, key in model._flat_entries:
        size = layer.params[key].size
        picked.extend(offset + rng.choice(size, min(2, size), replace=False))
        offset += size
    rest = np.setdiff1d(np.arange(offset), picked)
    picked.extend(rng.choice(rest, count - len(picked), replace=False))
    return np.sort(np.array(picked))


def check_model_gradient(head, size, conv1_filters, count, device="cpu", conv2_padding="valid", seed=0):
    """One training step of the model on ``device``: its flat gradient against central
    differences of the objective, its reported loss against the objective's value.
    Returns the model."""
    rng = np.random.default_rng(seed)
    model = build(head, size, conv1_filters, conv2_padding, seed=seed)
    randomise(model, rng)
    x, y = batch(head, count, size, model.output_shape[-1], rng)
    # Both conv + pool pairs run as one pass each.
    assert [layer.absorbed for layer in model.layers] == [False, True, False, False, True] + [False] * 4
    assert model.layers[0].pool is model.layers[1] and model.layers[3].pool is model.layers[4]
    dropout = model.layers[6]
    keep = dropout_keep(dropout, dropout.rng.bit_generator.state, (count,) + model.output_shapes[5])
    assert 0 < keep.mean() < 1
    objective = Objective(model, head, x, y, keep)
    params_before = model.flat_params.copy()
    if device != "cpu":
        model.to(device)
    reported = model.train_on_batch(x, y)
    analytic = model.optimizer.gradient
    np.testing.assert_array_equal(model.flat_params, params_before)  # the capture changed nothing
    assert model._fused() == [head != "mse"]
    # No conv channel is dead (its weights would have no loss gradient to check).
    for pooled in objective.forward()[1]:
        active = (pooled > 0).reshape(-1, pooled.shape[-1]).sum(axis=0)
        assert (active >= 2).all(), f"conv channels active in only {active} of the pooled outputs"
    # The step computed the objective's value: same mask, batch statistics, loss, penalties.
    expected = objective()
    assert abs(reported - expected) <= LOSS_RTOL * abs(expected), (reported, expected)
    coords = coordinates(model, rng)
    compare(model, coords, analytic[coords], objective.gradient(coords))
    return model


def compare(model, coords, analytic, numeric):
    error = np.abs(analytic - numeric)
    allowed = GRAD_ATOL * np.abs(numeric).max() + GRAD_RTOL * np.abs(numeric)
    bad = np.flatnonzero(error > allowed)
    if bad.size:
        names = [f"{layer.name}.{key}[{i}]" for layer, key in model._flat_entries
                 for i in range(layer.params[key].size)]
        rows = "\n".join(f"  {names[coords[k]]}: analytic {analytic[k]:+.6e}, numeric {numeric[k]:+.6e}, "
                         f"error {error[k]:.2e} > {allowed[k]:.2e}" for k in bad[:20])
        pytest.fail(f"{bad.size} of {len(coords)} gradient coordinates off (worst error/allowed "
                    f"{(error / allowed).max():.3g}):\n{rows}")


@plain_only
@pytest.mark.parametrize("conv2_path", ["implicit", "winograd", "im2col", "direct", "planar"])
def test_softmax_model_gradient_on_cpu(conv2_path, monkeypatch):
    """The second conv + pool pass on each CPU path: the implicit GEMM (float32's own for
    this 3x3x3 kernel), and with it switched off Winograd (where it applies, as here: a
    3x3 kernel, stride 1, 2x2 pool), im2col (Winograd switched off too, as in
    test_fusion.py), direct (a 3x3x1 field), planar (3x3 on 5 channels, 'same', Winograd
    off: with it on, a 3x3 conv with its pool runs Winograd)."""
    from nbnet.layers import convolutional

    if conv2_path != "implicit":
        monkeypatch.setattr(convolutional, "implicit_applies", lambda *args: False)
    if conv2_path in ("im2col", "planar"):
        monkeypatch.setattr(cpu, "conv3x3_maxpool_forward", None)
    conv1_filters = {"direct": 1, "planar": 5}.get(conv2_path, 3)
    model = check_model_gradient("softmax", 14, conv1_filters, count=6,
                                 conv2_padding="same" if conv2_path == "planar" else "valid")
    conv1, conv2 = model.layers[0], model.layers[3]  # the passes the training step took
    assert ((conv2._implicit, conv2._direct, conv2._winograd, conv2._planar)
            == (conv2_path == "implicit", conv2_path == "direct", conv2_path == "winograd", conv2_path == "planar"))
    assert conv1._direct and not conv1._winograd  # its max pool fused


@plain_only
@pytest.mark.parametrize("head", ["sigmoid", "mse"])
def test_sigmoid_and_mse_model_gradient_on_cpu(head):
    model = check_model_gradient(head, 14, 3, count=6, seed=1)
    assert model.layers[3]._implicit


@plain_only
def test_model_gradient_under_simulator(request):
    run_under_simulator(request)


if ON_CUDA:
    @pytest.fixture(autouse=True, scope="module")
    def tiny_launches():
        with small_launches():
            yield


@sim_only
@pytest.mark.parametrize("head, conv1_filters", [("softmax", 2), ("sigmoid", 1), ("mse", 2)])
def test_model_gradient_on_cuda(head, conv1_filters):
    """The GPU's passes: direct (3x3x1; a 9x9 output of which the pool uses 8x8) for the
    first conv + pool; im2col (3x3x2, 'same') or direct (3x3x1) for the second."""
    model = check_model_gradient(head, 11, conv1_filters, count=4, device="cuda", conv2_padding="same", seed=2)
    assert model.device == "cuda" and model.layers[3]._direct == (conv1_filters == 1)
