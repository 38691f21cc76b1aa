"""Layer checks: forward passes against the independent NumPy reference in ``reference.py``,
backward passes against central finite differences on the float64 reference path, the
float32 path against the float64 path, and build-time shape errors.

Gradient check (``check_gradients``): loss(x, params) = sum(forward(x) * R) for a fixed
random R, so dloss/doutput = R and ``backward(R)`` must return dloss/dx and add
dloss/dparam into ``grads``. Each analytic gradient is compared with the central
difference (loss(v + h) - loss(v - h)) / 2h = sum((out(v + h) - out(v - h)) * R) / 2h,
h = FD_STEP, at every coordinate of x and of each parameter (or a random subset of FD_COORDS
coordinates when there are more). The relative error over those coordinates,
max|analytic - numeric| / max(max|numeric|, max|analytic|, GRAD_FLOOR), must not exceed
GRAD_RTOL: gradients smaller than GRAD_FLOOR (a saturated softmax's bias, say) are held to
an absolute GRAD_RTOL * GRAD_FLOOR, above the ~1e-10 rounding noise of the differences.
Inputs are kept at least KINK_MARGIN away from ReLU/LeakyReLU kinks and from max-pool ties
by construction, so h never crosses a non-differentiable point.
"""

import os
import sys

import numba
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nbnet import layers, models, optimizers, regularizers
from nbnet.errors import NbnetError, ShapeError

try:
    from . import reference as ref
except ImportError:  # tests/ is not a package
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import reference as ref

FD_STEP = 1e-6          # central-difference step (float64)
GRAD_RTOL = 1e-6        # analytic vs finite-difference gradient, relative error (see grad_err)
GRAD_FLOOR = 1e-2       # gradient scale below which the bound becomes absolute (GRAD_RTOL * GRAD_FLOOR)
FD_COORDS = 40          # coordinates checked per tensor when it has more than this many
FORWARD_RTOL = 1e-10    # float64 layer forward vs NumPy reference: max|y - ref| / max|ref|
FLOAT32_RTOL = 1e-4     # float32 path vs float64 path (outputs and gradients), same metric
KINK_MARGIN = 1e-3      # min |pre-activation| at a ReLU kink / min gap between max-pool candidates

ACTIVATIONS = [None, "linear", "relu", "sigmoid", "tanh", "softmax", "leaky_relu", "elu", "selu", "softplus"]
KINKED = {"relu", "leaky_relu"}


@pytest.fixture(autouse=True, scope="module")
def single_numba_thread():
    """Finite differences call tiny kernels thousands of times; one thread keeps each call in
    microseconds even on a busy 2-core machine. ``test_results_do_not_depend_on_thread_count``
    runs the kernels with every thread."""
    previous = numba.get_num_threads()
    numba.set_num_threads(1)
    yield
    numba.set_num_threads(previous)


# ----------------------------------------------------------------------------- helpers
def rel_err(actual, expected):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    scale = max(np.max(np.abs(expected), initial=0.0), np.max(np.abs(actual), initial=0.0))
    return 0.0 if scale == 0.0 else float(np.max(np.abs(actual - expected)) / scale)


def grad_err(analytic, numeric):
    """max|a - n| / max(max|n|, max|a|, GRAD_FLOOR)."""
    analytic, numeric = np.asarray(analytic, np.float64), np.asarray(numeric, np.float64)
    scale = max(np.max(np.abs(numeric), initial=0.0), np.max(np.abs(analytic), initial=0.0), GRAD_FLOOR)
    return float(np.max(np.abs(analytic - numeric), initial=0.0) / scale)


def build(layer, input_shape, seed=0, dtype=np.float64):
    layer.build(input_shape, np.random.default_rng(seed))
    if dtype != np.float32:
        layer.astype(dtype)
    return layer


def randomize_bias(layer, rng, low=-0.5, high=0.5):
    if "bias" in layer.params:
        layer.params["bias"][...] = rng.uniform(low, high, layer.params["bias"].shape)


def kink_free_shift(z):
    """Per-channel shifts s such that z + s stays far from 0 on both sides: -s is the midpoint
    of the widest gap between consecutive values of the channel. Returns (s, margin)."""
    z2d = np.asarray(z, np.float64).reshape(-1, z.shape[-1])
    shifts, margins = [], []
    for column in z2d.T:
        values = np.sort(column)
        if values.size == 1:
            shifts.append(0.5 - values[0])
            margins.append(0.5)
            continue
        gaps = np.diff(values)
        k = int(np.argmax(gaps))
        shifts.append(-(values[k] + values[k + 1]) / 2)
        margins.append(gaps[k] / 2)
    return np.array(shifts), float(min(margins))


def distinct_values(rng, shape, spacing=0.01):
    """A random permutation of evenly spaced values: no two pixels within ``spacing``, so a max-pool
    window has a unique winner that an FD_STEP perturbation cannot change."""
    n = int(np.prod(shape))
    return ((rng.permutation(n) - n / 2) * spacing).reshape(shape)


def away_from_zero(rng, shape, margin=0.05):
    return rng.choice([-1.0, 1.0], size=shape) * (margin + np.abs(rng.standard_normal(shape)))


def _coords(size, rng, limit):
    return np.arange(size) if size <= limit else rng.choice(size, limit, replace=False)


def check_gradients(layer, x, *, training=False, prepare=None, from_logits=False, seed=0, limit=FD_COORDS):
    """Return {name: (relative error, max|numeric|)} for the input and every parameter."""
    rng = np.random.default_rng(seed + 1000)
    x = np.ascontiguousarray(x, dtype=np.float64)

    def run():
        if prepare is not None:
            prepare(layer)
        y = layer.forward(x, training)
        return np.array(layer.logits.reshape(y.shape) if from_logits else y, copy=True)

    out = run()
    r = rng.standard_normal(out.shape)

    for grad in layer.grads.values():
        grad[...] = 0.0
    run()
    dx = layer.backward(r.copy(), from_logits=True) if from_logits else layer.backward(r.copy())
    analytic = {"x": np.array(dx, copy=True)}
    analytic.update({key: grad.copy() for key, grad in layer.grads.items()})
    targets = {"x": x, **layer.params}

    report = {}
    for name, array in targets.items():
        flat = array.reshape(-1)
        assert np.shares_memory(flat, array)
        coords = _coords(flat.size, rng, limit)
        numeric = np.empty(coords.size)
        for n, i in enumerate(coords):
            saved = flat[i]
            flat[i] = saved + FD_STEP
            plus = run()
            flat[i] = saved - FD_STEP
            minus = run()
            flat[i] = saved
            # Differencing the outputs before weighting them by R keeps the rounding noise
            # of the large sum out of the small difference.
            numeric[n] = np.sum((plus - minus) * r) / (2 * FD_STEP)
        got = analytic[name].reshape(-1)[coords]
        report[name] = (grad_err(got, numeric), float(np.max(np.abs(numeric))))
    return report


def assert_gradients(layer, x, **kwargs):
    report = check_gradients(layer, x, **kwargs)
    assert set(report) == {"x", *layer.params}
    bad = {k: v for k, v in report.items() if not v[0] <= GRAD_RTOL}
    assert not bad, f"{layer}: gradient rel. error > {GRAD_RTOL} (error, scale): {bad}"
    # A check of an all-zero gradient proves nothing: every checked gradient must be non-trivial.
    vacuous = {k: v for k, v in report.items() if not v[1] > 1e-3}
    assert not vacuous, f"{layer}: vacuous gradient check {vacuous}"
    return report


# ----------------------------------------------------------------------------- configs
# (input_shape, filters, kernel_size, strides, padding, activation, use_bias); odd sizes,
# non-square kernels, strides 1 and 2, even kernels under 'same' (extra pad at the end).
CONV_CASES = [
    ((7, 6, 2), 3, (3, 3), 1, "valid", None, True),
    ((7, 6, 2), 3, (3, 3), 1, "same", "tanh", True),
    ((7, 5, 3), 2, (3, 2), 2, "same", "relu", True),
    ((7, 5, 3), 2, (2, 3), 2, "valid", "sigmoid", True),
    ((5, 8, 1), 4, (1, 3), (2, 1), "same", "leaky_relu", True),
    ((6, 6, 2), 2, (4, 4), 2, "same", None, True),
    ((5, 5, 2), 3, 5, 1, "valid", "softmax", True),
    ((6, 7, 2), 3, (2, 2), 1, "same", "tanh", False),
]
CONV_BATCH = 2


def conv_id(case):
    shape, filters, kernel, strides, padding, act, bias = case
    return f"{'x'.join(map(str, shape))}-f{filters}-k{kernel}-s{strides}-{padding}-{act}-{'b' if bias else 'nb'}"


def make_conv(case, seed=0, dtype=np.float64):
    """A Conv2D layer and an input for ``case``; a ReLU-type layer's bias is chosen so no
    pre-activation lies within KINK_MARGIN of 0."""
    shape, filters, kernel, strides, padding, act, use_bias = case
    rng = np.random.default_rng(seed)
    layer = build(layers.Conv2D(filters, kernel, strides=strides, padding=padding, activation=act,
                                use_bias=use_bias), shape, seed, np.float64)
    x = rng.standard_normal((CONV_BATCH, *shape))
    randomize_bias(layer, rng)
    if act in KINKED:
        assert use_bias
        z = ref.conv2d(x, layer.params["kernel"], None, layer.strides, padding)
        layer.params["bias"][...], margin = kink_free_shift(z)
        assert margin >= KINK_MARGIN
    if dtype != np.float64:
        layer.astype(dtype)
        x = x.astype(dtype)
    return layer, x


# (pool_size, strides, padding, input_shape): H or W not divisible by the pool in most.
POOL_CASES = [
    (2, None, "valid", (7, 5, 2)),
    (2, None, "same", (7, 5, 2)),
    (3, None, "valid", (8, 7, 2)),
    (3, None, "same", (8, 7, 2)),
    (3, 1, "same", (5, 7, 2)),
    (3, 2, "valid", (7, 8, 2)),
    (3, 2, "same", (7, 8, 2)),
    (2, 1, "valid", (5, 6, 2)),
    ((2, 3), (1, 2), "same", (6, 7, 3)),
    (2, None, "same", (6, 4, 3)),  # 2x2 windows tiling the image (the average pool's own loops)
]
POOL_CLASSES = {"max": layers.MaxPooling2D, "avg": layers.AveragePooling2D}


def pool_id(case):
    pool, strides, padding, shape = case
    return f"p{pool}-s{strides}-{padding}-{'x'.join(map(str, shape))}"


def make_pool(kind, case, seed=0):
    pool, strides, padding, shape = case
    layer = build(POOL_CLASSES[kind](pool, strides=strides, padding=padding), shape, seed)
    rng = np.random.default_rng(seed)
    x = distinct_values(rng, (CONV_BATCH, *shape)) if kind == "max" else rng.standard_normal((CONV_BATCH, *shape))
    return layer, x


def ref_pool(kind, x, layer):
    fn = ref.max_pool2d if kind == "max" else ref.average_pool2d
    return fn(x, layer.pool_size, layer.strides, layer.padding)


DENSE_IN, DENSE_UNITS, DENSE_BATCH = 7, 5, 3


def make_dense(act, use_bias=True, seed=0, **kwargs):
    """A Dense layer and input; for ReLU-type activations the bias (or, without a bias, a
    constant-1 input feature) keeps every pre-activation KINK_MARGIN away from 0."""
    rng = np.random.default_rng(seed)
    layer = build(layers.Dense(DENSE_UNITS, activation=act, use_bias=use_bias, **kwargs), (DENSE_IN,), seed)
    randomize_bias(layer, rng)
    x = rng.standard_normal((DENSE_BATCH, DENSE_IN))
    if act in KINKED:
        kernel = layer.params["kernel"]
        if use_bias:
            layer.params["bias"][...], margin = kink_free_shift(x @ kernel)
        else:
            x[:, 0] = 1.0
            kernel[0], margin = kink_free_shift(x[:, 1:] @ kernel[1:])
        assert margin >= KINK_MARGIN
    return layer, x


def dense_reference(layer, x):
    return ref.dense(x, layer.params["kernel"], layer.params.get("bias"), layer.activation, layer._slope)


# ----------------------------------------------------------------------------- reference sanity
def test_reference_same_padding_hand_computed():
    """Pins the Keras semantics the reference encodes, and the layers agree: under 'same' the
    odd extra pad pixel goes at the end; max pads with -inf; average counts only real pixels."""
    x = np.arange(1.0, 6.0).reshape(1, 1, 5, 1)  # [1 2 3 4 5] along W
    ones = np.ones((1, 2, 1, 1))
    expected = {
        "conv": [3, 5, 7, 9, 5],       # x[j] + x[j+1], zero pad after
        "max": [2, 4, 5],              # pool 2 stride 2 on 5: pad one -inf at the end
        "avg": [1.5, 3.5, 5.0],        # the last window holds only the real 5
        "avg3": [1.5, 2, 3, 4, 4.5],   # pool 3 stride 1: one pad each side, not counted
    }
    got_ref = {
        "conv": ref.conv2d(x, ones, padding="same"),
        "max": ref.max_pool2d(x, (1, 2), (1, 2), "same"),
        "avg": ref.average_pool2d(x, (1, 2), (1, 2), "same"),
        "avg3": ref.average_pool2d(x, (1, 3), (1, 1), "same"),
    }
    conv = build(layers.Conv2D(1, (1, 2), padding="same", use_bias=False), (1, 5, 1))
    conv.params["kernel"][...] = 1.0
    got_layer = {
        "conv": conv.forward(x),
        "max": build(layers.MaxPooling2D((1, 2), padding="same"), (1, 5, 1)).forward(x),
        "avg": build(layers.AveragePooling2D((1, 2), padding="same"), (1, 5, 1)).forward(x),
        "avg3": build(layers.AveragePooling2D((1, 3), strides=1, padding="same"), (1, 5, 1)).forward(x),
    }
    for key, values in expected.items():
        np.testing.assert_allclose(got_ref[key].reshape(-1), values, err_msg=f"reference {key}")
        np.testing.assert_allclose(got_layer[key].reshape(-1), values, err_msg=f"layer {key}")


# ----------------------------------------------------------------------------- Dense
@pytest.mark.parametrize("use_bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("act", ACTIVATIONS)
def test_dense_forward_matches_reference(act, use_bias):
    layer, x = make_dense(act, use_bias)
    y = layer.forward(x)
    assert y.shape == (DENSE_BATCH, *layer.compute_output_shape((DENSE_IN,)))
    assert rel_err(y, dense_reference(layer, x)) <= FORWARD_RTOL


@pytest.mark.parametrize("use_bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("act", ACTIVATIONS)
def test_dense_gradients(act, use_bias):
    layer, x = make_dense(act, use_bias)
    report = assert_gradients(layer, x)
    assert ("bias" in report) == use_bias


@pytest.mark.parametrize("rows", [37, 200])
def test_dense_backward_over_uneven_reduction_chunks(rows):
    """A batch that the fixed REDUCTION_CHUNKS (16) split unevenly: every row's gradient is
    written and summed. Checked against the closed form (tanh' = 1 - y^2): dz = dy * (1 - y^2),
    dkernel = x^T dz, dbias = sum of dz's rows, dx = dz kernel^T."""
    rng = np.random.default_rng(23)
    layer = build(layers.Dense(4, activation="tanh"), (6,), seed=3)
    randomize_bias(layer, rng)
    x = rng.standard_normal((rows, 6))
    dy = rng.standard_normal((rows, 4))
    y = np.tanh(x @ layer.params["kernel"] + layer.params["bias"])
    np.testing.assert_allclose(layer.forward(x), y, rtol=1e-12, atol=1e-12)
    for grad in layer.grads.values():
        grad[...] = 0.0
    dx = layer.backward(dy.copy())
    dz = dy * (1 - y * y)
    np.testing.assert_allclose(layer.grads["kernel"], x.T @ dz, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(layer.grads["bias"], dz.sum(axis=0), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dx, dz @ layer.params["kernel"].T, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("activation", ["tanh", "sigmoid"])
def test_float32_tanh_and_sigmoid_pass_nan_on_as_keras_does(activation):
    """The float32 squash (a rational fit clamped to +-9, not libm) gives NaN for NaN, and
    tanh (sigmoid) elsewhere within float32 rounding (sigmoid within 2e-8 of 0 far below
    zero, where the clamp leaves it)."""
    from nbnet.kernels.activations import SIGMOID, TANH, bias_activation_forward

    z = np.array([[np.nan, np.inf, -np.inf, 0.3, -2.0, 12.0, -40.0, 1e-20]], np.float32)
    y = np.empty_like(z)
    bias_activation_forward(z, np.zeros(0, np.float32), TANH if activation == "tanh" else SIGMOID, 0.0, y)
    with np.errstate(over="ignore"):
        wide = z.astype(np.float64)
        expected = np.tanh(wide) if activation == "tanh" else 1 / (1 + np.exp(-wide))
    assert np.isnan(y[0, 0])
    np.testing.assert_allclose(y[0, 1:], expected[0, 1:], rtol=2e-7, atol=2e-8)


@pytest.mark.parametrize("activation,ulps", [("tanh", 2.0), ("sigmoid", 3.5)])
def test_float32_tanh_and_sigmoid_are_within_a_few_ulps(activation, ulps):
    """The float32 tanh and sigmoid (float32 exp by a fitted series, tanh's small values by
    a fitted odd polynomial) are within a few units in the last place of the exact value
    on a dense sweep of both sides of zero, every scale and both sides of tanh's switch
    between its two formulas; float32 libm's tanhf is within about 2.7."""
    from nbnet.kernels.activations import SIGMOID, TANH, bias_activation_forward

    sweep = np.concatenate([np.linspace(-30, 30, 1_200_001), np.linspace(0.6, 0.65, 100_001),
                            np.logspace(-38, 1.5, 20_001)])
    z = np.concatenate([sweep, -sweep]).astype(np.float32).reshape(-1, 6)
    y = np.empty_like(z)
    bias_activation_forward(z, np.zeros(0, np.float32), TANH if activation == "tanh" else SIGMOID, 0.0, y)
    wide = z.astype(np.float64)
    exact = np.tanh(wide) if activation == "tanh" else 1 / (1 + np.exp(-wide))
    unit = np.spacing(np.abs(exact).astype(np.float32)).astype(np.float64)
    assert np.max(np.abs(y - exact) / unit) <= ulps


@pytest.mark.parametrize("activation", ["elu", "selu", "softplus"])
def test_float32_exponential_activations_round_as_libm_does(activation):
    """The float32 ELU, SELU and softplus (exp, expm1 and log1p by series the loop
    vectorises, not libm's calls) give the float32 rounding of the float64 libm formula on
    a sweep of every scale on both sides of zero, NaN for NaN; and their gradients from
    the output, computed with the code tested outside the loop, match the formula's."""
    from nbnet.kernels.activations import ELU, SELU, SELU_ALPHA, SELU_SCALE, SOFTPLUS, activation_backward, \
        bias_activation_forward

    code, alpha = {"elu": (ELU, 0.7), "selu": (SELU, 0.0), "softplus": (SOFTPLUS, 0.0)}[activation]
    unit_alpha, scale = (0.7, 1.0) if activation == "elu" else (SELU_ALPHA, SELU_SCALE)
    rng = np.random.default_rng(5)
    sweep = np.concatenate([-np.logspace(-40, 2.5, 4001), np.logspace(-40, 2.5, 4001), rng.standard_normal(4000) * 8,
                            [0.0, -0.0, -np.inf, np.inf, 1e-30, -1e-45, -87.0, -104.0, -1000.0, 1e30]])
    z = sweep.astype(np.float32).reshape(-1, 1)
    y = np.empty_like(z)
    bias_activation_forward(z, np.zeros(0, np.float32), code, alpha, y)
    wide = z.astype(np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        if activation == "softplus":
            expected = np.maximum(wide, 0) + np.log1p(np.exp(-np.abs(wide)))
            slope = 1 / (1 + np.exp(-wide))
        else:
            expected = np.where(wide > 0, scale * wide, scale * unit_alpha * np.expm1(np.minimum(wide, 0)))
            slope = np.where(y > 0, scale, y.astype(np.float64) + scale * unit_alpha)
    np.testing.assert_array_equal(y, expected.astype(np.float32))
    nan = np.full((1, 1), np.nan, np.float32)
    bias_activation_forward(nan, np.zeros(0, np.float32), code, alpha, nan)
    assert np.isnan(nan[0, 0])
    finite = np.isfinite(z[:, 0])
    y, slope = y[finite], slope[finite]
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dz, dbias = np.empty_like(dy), np.zeros(1, np.float32)
    activation_backward(y, dy, code, alpha, dz, dbias)
    np.testing.assert_allclose(dz, dy * slope, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("act", ["softmax", "sigmoid", "tanh", "relu"])
def test_dense_keep_logits(act):
    """keep_logits: forward keeps the pre-activation (x @ W + b) in ``logits`` and still returns
    act(logits); backward(d, from_logits=True) is the gradient w.r.t. the logits."""
    layer, x = make_dense(act, True, seed=3)
    layer.keep_logits = True
    y = layer.forward(x)
    z = ref.dense(x, layer.params["kernel"], layer.params["bias"])
    assert rel_err(layer.logits, z) <= FORWARD_RTOL
    assert rel_err(y, ref.activation(act, z)) <= FORWARD_RTOL
    assert_gradients(layer, x, from_logits=True, seed=3)
    assert_gradients(layer, x, from_logits=False, seed=4)  # keep_logits must not change the normal path


def test_dense_needs_no_input_grad():
    layer, x = make_dense("tanh")
    r = np.random.default_rng(1).standard_normal((DENSE_BATCH, DENSE_UNITS))
    layer.forward(x)
    layer.backward(r.copy())
    expected = {k: g.copy() for k, g in layer.grads.items()}
    for g in layer.grads.values():
        g[...] = 0
    layer.needs_input_grad = False
    layer.forward(x)
    assert layer.backward(r.copy()) is None
    for key, grad in layer.grads.items():
        np.testing.assert_array_equal(grad, expected[key])


ACCUMULATING = {
    "dense": lambda: (*make_dense("sigmoid"), False),
    "dense-nobias": lambda: (*make_dense("relu", use_bias=False), False),
    "conv": lambda: (*make_conv(CONV_CASES[2]), False),
    "batchnorm-train": lambda: (*make_bn((3, 4, 3)), True),
    "batchnorm-infer": lambda: (*make_bn((3, 4, 3)), False),
}


@pytest.mark.parametrize("name", list(ACCUMULATING))
def test_backward_adds_into_grads(name):
    """backward adds into ``grads`` (a model zeroes them once per step), never overwrites."""
    layer, x, training = ACCUMULATING[name]()
    r = np.random.default_rng(2).standard_normal(layer.forward(x, training).shape)
    for g in layer.grads.values():
        g[...] = 0
    layer.forward(x, training)
    layer.backward(r.copy())
    once = {k: g.copy() for k, g in layer.grads.items()}
    assert all(np.abs(g).max() > 1e-3 for g in once.values())
    layer.forward(x, training)
    layer.backward(r.copy())
    for key, grad in layer.grads.items():
        np.testing.assert_allclose(grad, 2 * once[key], rtol=1e-12, err_msg=key)


# ----------------------------------------------------------------------------- regularizers
def _weights_away_from_zero(layer, seed):
    """L1's gradient has a kink at w = 0; keep every weight 0.05 away from it."""
    rng = np.random.default_rng(seed)
    for key, value in layer.params.items():
        value[...] = away_from_zero(rng, value.shape)


@pytest.mark.parametrize("kind", ["l1", "l2", "l1_l2", "custom"])
def test_dense_kernel_regularization(kind):
    reg = regularizers.L1L2(l1=0.003, l2=0.02) if kind == "custom" else kind
    layer = build(layers.Dense(4, kernel_regularizer=reg, bias_regularizer="l2"), (6,))
    _weights_away_from_zero(layer, 5)
    l1, l2 = {"l1": (0.01, 0.0), "l2": (0.0, 0.01), "l1_l2": (0.01, 0.01), "custom": (0.003, 0.02)}[kind]
    kernel_penalty, kernel_grad = ref.l1_l2_penalty(layer.params["kernel"], l1, l2)
    bias_penalty, bias_grad = ref.l1_l2_penalty(layer.params["bias"], 0.0, 0.01)
    for g in layer.grads.values():
        g[...] = 1.0  # regularization() must add to the gradient already there
    penalty = layer.regularization()
    assert penalty == pytest.approx(kernel_penalty + bias_penalty, rel=1e-12)
    np.testing.assert_allclose(layer.grads["kernel"], 1.0 + kernel_grad, rtol=1e-12)
    np.testing.assert_allclose(layer.grads["bias"], 1.0 + bias_grad, rtol=1e-12)

    # The gradient it adds is the derivative of the penalty it returns.
    analytic = {k: g - 1.0 for k, g in layer.grads.items()}
    for key, array in layer.params.items():
        flat = array.reshape(-1)
        numeric = np.empty(flat.size)
        for i in range(flat.size):
            saved = flat[i]
            flat[i] = saved + FD_STEP
            plus = layer.regularization()
            flat[i] = saved - FD_STEP
            minus = layer.regularization()
            flat[i] = saved
            numeric[i] = (plus - minus) / (2 * FD_STEP)
        assert grad_err(analytic[key].reshape(-1), numeric) <= GRAD_RTOL, key


def test_regularization_without_regularizers_is_zero():
    layer = build(layers.Dense(3), (4,))
    for g in layer.grads.values():
        g[...] = 0.0
    assert layer.regularization() == 0
    assert all(not g.any() for g in layer.grads.values())


def test_bias_regularizer_ignored_without_bias():
    """As Keras: use_bias=False with a bias_regularizer just has no bias to penalise."""
    layer = build(layers.Dense(3, use_bias=False, kernel_regularizer="l2", bias_regularizer="l1"), (4,))
    expected, _ = ref.l1_l2_penalty(layer.params["kernel"], 0.0, 0.01)
    assert layer.regularization() == pytest.approx(expected, rel=1e-12)


def test_conv_kernel_regularization():
    layer = build(layers.Conv2D(2, (2, 3), kernel_regularizer=regularizers.l1_l2(0.002, 0.03)), (4, 4, 3))
    _weights_away_from_zero(layer, 6)
    for g in layer.grads.values():
        g[...] = 0.0
    expected, grad = ref.l1_l2_penalty(layer.params["kernel"], 0.002, 0.03)
    assert layer.regularization() == pytest.approx(expected, rel=1e-12)
    np.testing.assert_allclose(layer.grads["kernel"], grad, rtol=1e-12)
    assert not layer.grads["bias"].any()


# ----------------------------------------------------------------------------- Conv2D
@pytest.mark.parametrize("case", CONV_CASES, ids=conv_id)
def test_conv_forward_matches_reference(case):
    layer, x = make_conv(case)
    y = layer.forward(x)
    expected = ref.conv2d(x, layer.params["kernel"], layer.params.get("bias"), layer.strides, layer.padding,
                          layer.activation, layer._slope)
    assert y.shape == expected.shape == (CONV_BATCH, *layer.compute_output_shape(case[0]))
    assert rel_err(y, expected) <= FORWARD_RTOL


@pytest.mark.parametrize("case", CONV_CASES, ids=conv_id)
def test_conv_gradients(case):
    layer, x = make_conv(case)
    assert_gradients(layer, x)


@pytest.mark.parametrize("act", ["softmax", "sigmoid"])
def test_conv_keep_logits(act):
    case = ((6, 5, 2), 3, (3, 2), 2, "same", act, True)
    layer, x = make_conv(case, seed=7)
    layer.keep_logits = True
    y = layer.forward(x)
    z = ref.conv2d(x, layer.params["kernel"], layer.params["bias"], layer.strides, "same")
    assert rel_err(layer.logits.reshape(z.shape), z) <= FORWARD_RTOL
    assert rel_err(y, ref.activation(act, z)) <= FORWARD_RTOL
    assert_gradients(layer, x, from_logits=True, seed=7)
    assert_gradients(layer, x, from_logits=False, seed=8)


def test_conv_needs_no_input_grad():
    layer, x = make_conv(CONV_CASES[2])
    r = np.random.default_rng(1).standard_normal(layer.forward(x).shape)
    layer.backward(r.copy())
    expected = {k: g.copy() for k, g in layer.grads.items()}
    for g in layer.grads.values():
        g[...] = 0
    layer.needs_input_grad = False
    layer.forward(x)
    assert layer.backward(r.copy()) is None
    for key, grad in layer.grads.items():
        np.testing.assert_allclose(grad, expected[key], rtol=1e-12)


# ----------------------------------------------------------------------------- pooling
@pytest.mark.parametrize("case", POOL_CASES, ids=pool_id)
@pytest.mark.parametrize("kind", ["max", "avg"])
def test_pool_forward_matches_reference(kind, case):
    layer, x = make_pool(kind, case)
    y = layer.forward(x)
    expected = ref_pool(kind, x, layer)
    assert y.shape == expected.shape == (CONV_BATCH, *layer.compute_output_shape(case[3]))
    assert rel_err(y, expected) <= FORWARD_RTOL


@pytest.mark.parametrize("case", POOL_CASES, ids=pool_id)
@pytest.mark.parametrize("kind", ["max", "avg"])
def test_pool_gradients(kind, case):
    layer, x = make_pool(kind, case)
    # Every tensor is checked at every coordinate, so pixels outside any window (gradient 0)
    # and pixels shared by overlapping windows are both covered.
    assert_gradients(layer, x, limit=10**6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_average_pool_of_2x2_windows_takes_strided_views(dtype):
    """The 2x2 average pool's own loops read rows flat: a transposed input and a reversed
    gradient give what their contiguous copies give."""
    layer = build(layers.AveragePooling2D(2), (6, 4, 3), dtype=dtype)
    layer.needs_input_grad = True
    x = np.random.default_rng(1).standard_normal((2, 4, 6, 3)).astype(dtype).transpose(0, 2, 1, 3)
    expected = ref_pool("avg", np.ascontiguousarray(x), layer)
    np.testing.assert_allclose(layer.forward(x), expected, rtol=1e-6)
    dy = np.random.default_rng(2).standard_normal((2, 3, 2, 3)).astype(dtype)[:, ::-1]
    strided = layer.backward(dy).copy()
    np.testing.assert_array_equal(strided, layer.backward(np.ascontiguousarray(dy)))


def test_pool_defaults_strides_to_pool_size():
    layer = layers.MaxPooling2D(3)
    assert layer.strides == (3, 3)
    assert layers.AveragePooling2D((2, 3)).strides == (2, 3)


# ----------------------------------------------------------------------------- Flatten, Dropout
def test_flatten_forward_and_gradient():
    layer = build(layers.Flatten(), (3, 4, 2))
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 2))
    y = layer.forward(x)
    assert layer.compute_output_shape((3, 4, 2)) == (24,)
    np.testing.assert_array_equal(y, np.stack([img.reshape(-1) for img in x]))  # H, W, C order
    assert_gradients(layer, x)


@pytest.mark.parametrize("scale, offset", [(1 / 255, 0.0), (-2.0, 0.5)])
def test_rescaling_forward_and_gradient(scale, offset):
    layer = build(layers.Rescaling(scale, offset), (3, 4, 2))
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 2))
    np.testing.assert_allclose(layer.forward(x), x * scale + offset, rtol=1e-15)
    assert_gradients(layer, x)
    with pytest.raises(NbnetError, match="Rescaling 'r': scale and offset must be numbers"):
        layers.Rescaling([1, 2], name="r")


def test_dropout_training_gradient_with_frozen_mask():
    layer = build(layers.Dropout(0.4), (6, 5))
    x = np.random.default_rng(0).standard_normal((3, 6, 5))

    def freeze(lay):
        lay.rng = np.random.default_rng(11)

    assert_gradients(layer, x, training=True, prepare=freeze)


def test_dropout_training_mask_statistics_and_scaling():
    rate = 0.3
    layer = build(layers.Dropout(rate, seed=5), (100, 100))
    x = np.random.default_rng(0).uniform(0.5, 1.5, (2, 100, 100))
    y = layer.forward(x, training=True).copy()
    kept = y != 0
    np.testing.assert_allclose(y[kept], x[kept] / (1 - rate), rtol=1e-12)
    n = x.size
    dropped = n - kept.sum()
    assert abs(dropped - rate * n) <= 5 * np.sqrt(n * rate * (1 - rate))
    dy = np.ones_like(x)
    np.testing.assert_allclose(layer.backward(dy.copy()), np.where(kept, 1 / (1 - rate), 0.0), rtol=1e-12)
    # Same seed, same mask.
    again = build(layers.Dropout(rate, seed=5), (100, 100))
    np.testing.assert_array_equal(again.forward(x, training=True), y)


def test_dropout_inference_is_identity():
    layer = build(layers.Dropout(0.5), (4, 3))
    x = np.random.default_rng(0).standard_normal((2, 4, 3))
    np.testing.assert_array_equal(layer.forward(x, training=False), x)
    dy = np.random.default_rng(1).standard_normal(x.shape)
    np.testing.assert_array_equal(layer.backward(dy.copy()), dy)


# ----------------------------------------------------------------------------- BatchNormalization
BN_SHAPES = [(5, 3), (3, 4, 3)]


def make_bn(shape, seed=0, **kwargs):
    rng = np.random.default_rng(seed)
    layer = build(layers.BatchNormalization(**kwargs), shape, seed)
    layer.params["gamma"][...] = rng.uniform(0.5, 1.5, shape[-1])
    layer.params["beta"][...] = rng.uniform(-0.5, 0.5, shape[-1])
    x = 2.0 + 3.0 * rng.standard_normal((4, *shape))
    return layer, x


@pytest.mark.parametrize("shape", BN_SHAPES, ids=str)
def test_batchnorm_training_forward_and_gradients(shape):
    layer, x = make_bn(shape)
    y = layer.forward(x, training=True)
    expected, _, _ = ref.batchnorm_train(x, layer.params["gamma"], layer.params["beta"], layer.epsilon)
    assert rel_err(y, expected) <= FORWARD_RTOL
    assert_gradients(layer, x, training=True)


def test_batchnorm_inference_uses_moving_statistics():
    layer, x = make_bn((3, 4, 3), seed=1)
    rng = np.random.default_rng(9)
    layer.state["moving_mean"][...] = rng.standard_normal(3)
    layer.state["moving_variance"][...] = rng.uniform(0.5, 2.0, 3)
    before = {k: v.copy() for k, v in layer.state.items()}
    y = layer.forward(x, training=False)
    expected = ref.batchnorm_infer(x, layer.params["gamma"], layer.params["beta"], before["moving_mean"],
                                   before["moving_variance"], layer.epsilon)
    assert rel_err(y, expected) <= FORWARD_RTOL
    for key, value in layer.state.items():
        np.testing.assert_array_equal(value, before[key])  # inference does not move the statistics
    assert_gradients(layer, x, training=False)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_moving_scale_kernel_gives_numpys_bits(dtype):
    """The inference scale a replayed norm makes (moving_scale_into) and NumPy's
    (moving_scale, which the frozen norm's backward takes): the same bits, a zero variance
    with epsilon 0 inf in both, not an error."""
    from nbnet.kernels.normalization import moving_scale, moving_scale_into

    rng = np.random.default_rng(4)
    gamma = (rng.standard_normal(500) * 3).astype(dtype)
    variance = (rng.uniform(0, 5, 500) ** 3).astype(dtype)
    variance[:5], variance[5:10] = 0.0, 1e-30
    for epsilon in (1e-3, 0.0):
        scale = np.empty(500, dtype)
        moving_scale_into(gamma, variance, epsilon, scale)
        with np.errstate(divide="ignore"):
            np.testing.assert_array_equal(scale, moving_scale(gamma, variance, epsilon).astype(dtype))
    assert np.isinf(scale[:5]).all()


def test_frozen_batchnorm_runs_in_inference_mode_in_training_too():
    """As Keras 3 (checked with keras 3.15 on torch: a BatchNormalization(trainable=False)
    called with training=True gives its inference output, and fit leaves its moving mean
    at zero while a trainable one moves it)."""
    layer, x = make_bn((3, 4, 3), seed=3, trainable=False)
    layer.state["moving_mean"][...] = 0.5
    before = {k: v.copy() for k, v in layer.state.items()}
    trained = layer.forward(x, training=True).copy()
    np.testing.assert_array_equal(trained, layer.forward(x, training=False))
    for key, value in layer.state.items():
        np.testing.assert_array_equal(value, before[key])


def test_batchnorm_moving_statistics_update():
    """moving = momentum * moving + (1 - momentum) * batch statistic (biased variance), per step."""
    layer, x = make_bn((5, 3), seed=2, momentum=0.9)
    mean, variance = np.zeros(3), np.ones(3)
    for step in range(3):
        batch = x + step
        layer.forward(batch, training=True)
        _, batch_mean, batch_variance = ref.batchnorm_train(batch, 1.0, 0.0, layer.epsilon)
        mean = 0.9 * mean + 0.1 * batch_mean
        variance = 0.9 * variance + 0.1 * batch_variance
        np.testing.assert_allclose(layer.state["moving_mean"], mean, rtol=1e-12)
        np.testing.assert_allclose(layer.state["moving_variance"], variance, rtol=1e-10)


# ----------------------------------------------------------------------------- activation layers
ACTIVATION_LAYERS = [
    ("Activation-linear", lambda: layers.Activation("linear"), "linear", 0.0),
    ("Activation-relu", lambda: layers.Activation("relu"), "relu", 0.0),
    ("Activation-sigmoid", lambda: layers.Activation("sigmoid"), "sigmoid", 0.0),
    ("Activation-tanh", lambda: layers.Activation("tanh"), "tanh", 0.0),
    ("Activation-softmax", lambda: layers.Activation("softmax"), "softmax", 0.0),
    ("Activation-leaky_relu", lambda: layers.Activation("leaky_relu"), "leaky_relu", 0.2),
    ("ReLU", layers.ReLU, "relu", 0.0),
    ("Softmax", layers.Softmax, "softmax", 0.0),
    ("LeakyReLU", layers.LeakyReLU, "leaky_relu", 0.3),
    ("LeakyReLU-0.1", lambda: layers.LeakyReLU(negative_slope=0.1), "leaky_relu", 0.1),
    ("Activation-elu", lambda: layers.Activation("elu"), "elu", 1.0),
    ("ELU-0.5", lambda: layers.ELU(alpha=0.5), "elu", 0.5),
    ("Activation-selu", lambda: layers.Activation("selu"), "selu", 0.0),
    ("Activation-softplus", lambda: layers.Activation("softplus"), "softplus", 0.0),
]


@pytest.mark.parametrize("shape", [(6,), (3, 4, 5)], ids=["rank2", "rank4"])
@pytest.mark.parametrize("factory, name, slope", [c[1:] for c in ACTIVATION_LAYERS],
                         ids=[c[0] for c in ACTIVATION_LAYERS])
def test_activation_layer(factory, name, slope, shape):
    layer = build(factory(), shape)
    x = away_from_zero(np.random.default_rng(0), (2, *shape))  # >= 0.05 from the kink
    y = layer.forward(x)
    assert y.shape == x.shape
    assert rel_err(y, ref.activation(name, x, slope)) <= FORWARD_RTOL
    assert_gradients(layer, x)


def test_leaky_relu_rejects_negative_slope():
    """Its derivative is read off the output's sign, which a negative slope would flip."""
    with pytest.raises(NbnetError, match="negative_slope"):
        layers.LeakyReLU(negative_slope=-0.1)
    assert layers.LeakyReLU(negative_slope=0.0).negative_slope == 0.0
    with pytest.raises(NbnetError, match="ELU 'e': alpha must be >= 0, received -1"):
        layers.ELU(alpha=-1, name="e")


@pytest.mark.parametrize("name", ["softmax", "sigmoid"])
def test_activation_keep_logits(name):
    layer = build(layers.Activation(name), (3, 4, 5))
    layer.keep_logits = True
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 5))
    y = layer.forward(x)
    assert rel_err(layer.logits.reshape(x.shape), x) == 0.0
    assert rel_err(y, ref.activation(name, x)) <= FORWARD_RTOL
    assert_gradients(layer, x, from_logits=True)
    assert_gradients(layer, x, from_logits=False, seed=1)


# ----------------------------------------------------------------------------- float32 vs float64
def _run(layer, x, r, training=False, prepare=None):
    for g in layer.grads.values():
        g[...] = 0
    if prepare:
        prepare(layer)
    y = layer.forward(x, training).copy()
    dx = layer.backward(r.copy()).copy()
    return {"y": y, "dx": dx, **{k: g.copy() for k, g in layer.grads.items()}}


def _float32_cases():
    cases = {}
    for act in ["relu", "softmax", "tanh"]:
        cases[f"dense-{act}"] = lambda act=act: make_dense(act, seed=4)
    cases["conv-relu-same-s2"] = lambda: make_conv(CONV_CASES[2])
    cases["conv-sigmoid-valid"] = lambda: make_conv(CONV_CASES[3])
    cases["conv-even-same"] = lambda: make_conv(CONV_CASES[5])
    cases["maxpool-3-s2-same"] = lambda: make_pool("max", POOL_CASES[6])
    cases["avgpool-3-s1-same"] = lambda: make_pool("avg", POOL_CASES[4])
    cases["batchnorm"] = lambda: make_bn((3, 4, 3))
    cases["leaky_relu"] = lambda: (build(layers.LeakyReLU(), (3, 4, 5)),
                                   away_from_zero(np.random.default_rng(0), (2, 3, 4, 5)))
    cases["sigmoid"] = lambda: (build(layers.Activation("sigmoid"), (6,)),
                                np.random.default_rng(0).standard_normal((3, 6)))
    return cases


FLOAT32_CASES = _float32_cases()


@pytest.mark.parametrize("name", list(FLOAT32_CASES))
def test_float32_path_matches_float64(name):
    layer64, x = FLOAT32_CASES[name]()
    layer32, _ = FLOAT32_CASES[name]()
    layer32.astype(np.float32)
    x32 = x.astype(np.float32)
    x64 = x32.astype(np.float64)  # the same (float32-representable) input on both paths
    weights32 = {k: v.copy() for k, v in layer32.params.items()}
    for key, value in layer64.params.items():
        value[...] = weights32[key]
    training = isinstance(layer64, layers.BatchNormalization)
    r = np.random.default_rng(1).standard_normal(layer64.forward(x64, training).shape)
    expected = _run(layer64, x64, r, training)
    got = _run(layer32, x32, r.astype(np.float32), training)
    for key, value in got.items():
        assert value.dtype == np.float32, key
        assert rel_err(value, expected[key]) <= FLOAT32_RTOL, key
    for store in (layer32.params, layer32.grads, layer32.state):
        assert all(v.dtype == np.float32 for v in store.values())


def test_astype_float64_converts_everything():
    layer = build(layers.BatchNormalization(), (4,), dtype=np.float32)
    assert layer.params["gamma"].dtype == np.float32
    layer.astype(np.float64)
    for store in (layer.params, layer.grads, layer.state):
        assert all(v.dtype == np.float64 for v in store.values())
    assert layer.forward(np.ones((2, 4)), training=True).dtype == np.float64


# ----------------------------------------------------------------------------- threads
def test_results_do_not_depend_on_thread_count():
    """Parallel reductions use a fixed chunk count, so 1 thread and all threads agree bit for bit."""
    conv, x = make_conv(CONV_CASES[1])
    bn, xb = make_bn((3, 4, 3))
    r = np.random.default_rng(0).standard_normal(conv.forward(x).shape)
    rb = np.random.default_rng(1).standard_normal(xb.shape)
    results = []
    for threads in (1, numba.config.NUMBA_NUM_THREADS):
        numba.set_num_threads(threads)
        try:
            results.append((_run(conv, x, r), _run(bn, xb, rb, training=True)))
        finally:
            numba.set_num_threads(1)
    for one, many in zip(*results):
        for key in one:
            np.testing.assert_array_equal(one[key], many[key], err_msg=key)


# ----------------------------------------------------------------------------- shape errors
def test_dense_on_samples_without_a_features_axis_errors():
    layer = layers.Dense(4, name="head")  # (batch, ..., features) are taken, as Keras does
    with pytest.raises(ShapeError) as info:
        layer.build(())
    message = str(info.value)
    for part in ("'head'", "(None,)", "features"):
        assert part in message, (part, message)


def test_conv_kernel_larger_than_input_errors():
    layer = layers.Conv2D(2, (5, 4), name="stem")
    with pytest.raises(ShapeError) as info:
        layer.build((3, 6, 2))
    message = str(info.value)
    for part in ("'stem'", "(None, 3, 6, 2)", "5x4", "valid"):
        assert part in message, (part, message)
    # 'same' padding accepts it, and so does a kernel that just fits.
    assert layers.Conv2D(2, (5, 4), padding="same").build((3, 6, 2)) == (3, 6, 2)
    assert layers.Conv2D(2, (3, 6)).build((3, 6, 2)) == (1, 1, 2)


@pytest.mark.parametrize("cls", [layers.MaxPooling2D, layers.AveragePooling2D])
def test_pool_larger_than_input_errors(cls):
    with pytest.raises(ShapeError) as info:
        cls(3, name="pool_x").build((2, 5, 1))
    assert "'pool_x'" in str(info.value) and "(None, 2, 5, 1)" in str(info.value)
    assert cls(3, padding="same").build((2, 5, 1)) == (1, 2, 1)


@pytest.mark.parametrize("cls", [layers.Conv2D, layers.MaxPooling2D])
def test_spatial_layers_need_rank4_input(cls):
    layer = cls(2, 3) if cls is layers.Conv2D else cls()
    with pytest.raises(ShapeError, match=r"rank 4"):
        layer.build((8, 3))


# ----------------------------------------------------------------------------- property-based
# NBNET_HYPOTHESIS_EXAMPLES raises the example count for a deeper run.
HYPOTHESIS = settings(max_examples=int(os.environ.get("NBNET_HYPOTHESIS_EXAMPLES", 20)), deadline=None, database=None,
                      suppress_health_check=[HealthCheck.too_slow])
HYPO_COORDS = 12


@st.composite
def window_configs(draw, max_window):
    """(batch, H, W, C, window, strides, padding) with sizes <= 9, channels <= 4, batch <= 3;
    under 'valid' the window fits in the input."""
    padding = draw(st.sampled_from(["valid", "same"]))
    height, width = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    cap_h, cap_w = (min(max_window, height), min(max_window, width)) if padding == "valid" else (max_window,) * 2
    window = (draw(st.integers(1, cap_h)), draw(st.integers(1, cap_w)))
    strides = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    return draw(st.integers(1, 3)), height, width, draw(st.integers(1, 4)), window, strides, padding


@HYPOTHESIS
@given(config=window_configs(4), filters=st.integers(1, 4), act=st.sampled_from([None, "tanh", "sigmoid", "softmax"]),
       use_bias=st.booleans(), seed=st.integers(0, 2**16))
def test_conv_property(config, filters, act, use_bias, seed):
    batch, height, width, channels, kernel, strides, padding = config
    rng = np.random.default_rng(seed)
    layer = build(layers.Conv2D(filters, kernel, strides=strides, padding=padding, activation=act,
                                use_bias=use_bias), (height, width, channels), seed)
    randomize_bias(layer, rng)
    x = rng.standard_normal((batch, height, width, channels))
    y = layer.forward(x)
    expected = ref.conv2d(x, layer.params["kernel"], layer.params.get("bias"), strides, padding, act)
    assert y.shape == expected.shape == (batch, *layer.compute_output_shape((height, width, channels)))
    assert rel_err(y, expected) <= FORWARD_RTOL
    report = check_gradients(layer, x, seed=seed, limit=HYPO_COORDS)
    assert all(err <= GRAD_RTOL for err, _ in report.values()), report


@HYPOTHESIS
@given(config=window_configs(3), kind=st.sampled_from(["max", "avg"]), default_strides=st.booleans(),
       seed=st.integers(0, 2**16))
def test_pool_property(config, kind, default_strides, seed):
    batch, height, width, channels, pool, strides, padding = config
    strides = None if default_strides else strides
    layer = build(POOL_CLASSES[kind](pool, strides=strides, padding=padding), (height, width, channels), seed)
    rng = np.random.default_rng(seed)
    shape = (batch, height, width, channels)
    x = distinct_values(rng, shape) if kind == "max" else rng.standard_normal(shape)
    y = layer.forward(x)
    expected = ref_pool(kind, x, layer)
    assert y.shape == expected.shape == (batch, *layer.compute_output_shape((height, width, channels)))
    assert rel_err(y, expected) <= FORWARD_RTOL
    report = check_gradients(layer, x, seed=seed, limit=HYPO_COORDS)
    assert report["x"][0] <= GRAD_RTOL, report


@pytest.fixture(params=["sgemm jobs", "worker threads"])
def product_path(request, monkeypatch):
    """The two ways kernels/matmul.py runs a split product: sgemm called from a Numba
    kernel (kernels/blas.py) where NumPy's BLAS allows it, else worker threads."""
    from nbnet.kernels import blas

    if request.param == "worker threads":
        blas.address()
        monkeypatch.setattr(blas, "_address", 0)
    elif not blas.address():
        pytest.skip("NumPy's BLAS is not an ILP64 OpenBLAS here")
    return request.param


@pytest.mark.parametrize("rows, inner, columns", [(7, 5, 3), (64, 5, 3), (4, 9, 6), (3, 5, 8)])
def test_matmul_split_across_workers_matches_numpy(monkeypatch, product_path, rows, inner, columns):
    """The split matmul (by rows, or by columns where the rows are fewer) and the weight
    gradient split by rows (many rows) or by columns (fewer rows than the gradient has)
    (kernels/matmul.py), which large products take, against NumPy; forced on for small
    shapes."""
    from nbnet.kernels import matmul

    monkeypatch.setattr(matmul, "SPLIT_MIN_MACS", 0)
    monkeypatch.setattr(matmul, "PARALLEL_MIN_MACS", 0)
    rng = np.random.default_rng(4)
    a, b = rng.random((rows, inner), dtype=np.float32), rng.random((inner, columns), dtype=np.float32)
    dy = rng.random((rows, columns), dtype=np.float32)
    out = np.full((rows, columns), np.nan, np.float32)
    np.testing.assert_allclose(matmul.matmul(a, b, out), a @ b, rtol=1e-6)
    grad = np.ones((inner, columns), np.float32)
    matmul.add_transposed_product(a, dy, grad, np.empty((matmul.workers(), inner, columns), np.float32))
    np.testing.assert_allclose(grad, 1 + a.T @ dy, rtol=1e-6)


@pytest.mark.parametrize("paired", [False, True])
def test_weight_and_input_gradients_side_by_side_match_numpy(monkeypatch, product_path, paired):
    """A layer's two backward products (kernels/matmul.weight_and_input_gradients), one
    after the other or side by side: equal to NumPy's."""
    from nbnet.kernels import matmul

    for name in ("PAIR_MIN_MACS", "PAIR_JOBS_MIN_MACS"):
        monkeypatch.setattr(matmul, name, 0 if paired else 10 ** 12)
    for name in ("PARALLEL_MIN_MACS", "SPLIT_MIN_MACS"):
        monkeypatch.setattr(matmul, name, 10 ** 12)
    rng = np.random.default_rng(6)
    a, dz = rng.random((9, 5), dtype=np.float32), rng.random((9, 3), dtype=np.float32)
    kernel = rng.random((5, 3), dtype=np.float32)
    grad, dx = np.ones((5, 3), np.float32), np.full((9, 5), np.nan, np.float32)
    matmul.weight_and_input_gradients(a, dz, kernel, grad, np.empty((matmul.workers(), 5, 3), np.float32), dx)
    np.testing.assert_allclose(grad, 1 + np.matmul(a.T, dz), rtol=1e-6)
    np.testing.assert_array_equal(dx, np.matmul(dz, kernel.T))


def test_dense_on_positions_applies_to_the_last_axis_as_keras():
    """Dense on (batch, steps, features): the kernel on each position's features; an SGD
    step under MSE equals one on the positions as rows (Keras's mean over every position)."""
    from nbnet import layers, models, optimizers
    from nbnet.errors import NbnetError

    rng = np.random.default_rng(5)
    x = rng.standard_normal((6, 5, 4)).astype(np.float32)
    y = rng.standard_normal((6, 5, 3)).astype(np.float32)
    positions = models.Sequential([layers.Input((5, 4)), layers.Dense(3, activation="tanh")], seed=1)
    rows = models.Sequential([layers.Input((4,)), layers.Dense(3, activation="tanh")], seed=1)
    rows.set_weights(positions.get_weights())
    kernel, bias = positions.get_weights()
    assert tuple(positions.output_shape)[-2:] == (5, 3)
    np.testing.assert_allclose(positions.predict(x, verbose=0), np.tanh(x @ kernel + bias), atol=1e-6)
    for model in (positions, rows):
        model.compile(optimizers.SGD(0.1), "mse")
    positions.train_on_batch(x, y)
    rows.train_on_batch(x.reshape(-1, 4), y.reshape(-1, 3))
    for a, b in zip(positions.get_weights(), rows.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert not np.allclose(positions.get_weights()[0], kernel)
    with pytest.raises(NbnetError, match="one row of classes per sample"):
        positions.compile("adam", "categorical_crossentropy")


@pytest.mark.parametrize("shape,filters,kernel,pool", [((11, 9, 1), 16, 7, False), ((12, 10, 3), 32, 3, True),
                                                       ((9, 9, 1), 20, 5, True)])
def test_direct_conv_of_first_layers_matches_im2col(monkeypatch, shape, filters, kernel, pool):
    """The direct loop also runs first layers (1-3 channels, 16-32 filters, fields up to 49
    taps: several tap groups); forward, kernel, bias and input gradients equal im2col's."""
    from nbnet.layers import convolutional

    rng = np.random.default_rng(3)
    x = rng.standard_normal((4,) + shape).astype(np.float32)
    results = []
    monkeypatch.setattr(convolutional, "planar_applies", lambda *args: False)  # 5x5 and 7x7 would run planar
    monkeypatch.setattr(convolutional, "implicit_applies", lambda *args: False)  # 16 filters without a pool too
    for direct in (True, False):
        monkeypatch.setattr(convolutional, "direct_applies", lambda channels, field, count, direct=direct: direct)
        model = models.Sequential([layers.Input(shape), layers.Conv2D(filters, kernel, padding="same",
                                                                     activation="relu")]
                                  + ([layers.MaxPooling2D(2)] if pool else []) + [layers.Flatten(), layers.Dense(3)],
                                  seed=0)
        model.compile(optimizers.SGD(0.1), "mse")
        y = rng.standard_normal((4, 3)).astype(np.float32) if not results else results[0][2]
        before = model.predict(x, verbose=0)
        model.train_on_batch(x, y)
        results.append((before, model.get_weights(), y, model.layers[0]._direct))
    (a, wa, _, used_a), (b, wb, _, used_b) = results
    assert used_a and not used_b
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    for u, v in zip(wa, wb):
        np.testing.assert_allclose(u, v, rtol=1e-4, atol=1e-5)
