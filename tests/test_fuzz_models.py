"""Random small models, valid and invalid: valid ones train a step and export to ONNX;
invalid ones fail with nbnet's own error type, never a raw Numba or NumPy traceback.

Whether a drawn model is valid is decided here, independently of nbnet (``judge``): from
the drawn layer specs, each invalid choice (0 filters or units, padding 'full', dropout
rate 1.5, activation 'swish'), and from a walk over the shapes with Keras's output-size
formulas, an input smaller than a 'valid' kernel or pool window, or an output with classes
at several positions (a Dense on a spatial input without Flatten, which Keras builds but
nbnet's cross-entropy cannot train). A model with no reason must build with those shapes,
train a step and export to ONNX that onnxruntime runs to the same outputs; one with any
reason must be refused with an NbnetError, while it is made, built or compiled, that names
one of its reasons.
"""

import math
import re

import numpy as np
import onnxruntime
import pytest
from hypothesis import HealthCheck, find, given, settings
from hypothesis import strategies as st

from nbnet import layers, models
from nbnet.errors import NbnetError
from nbnet.onnx import export

ACTIVATIONS = [None, "relu", "sigmoid", "tanh", "leaky_relu", "softmax", "linear"]
# Each invalid choice is one among many valid ones, so most drawn models are valid and some are not.
ACTIVATION_CHOICES = ACTIVATIONS * 3 + ["swish"]
# What a refusal's message must mention for each reason (any one of the case's reasons; case-sensitive).
REASON_PATTERNS = {
    "filters": r"filters",
    "units": r"units",
    "padding": r"padding",
    "rate": r"rate",
    "activation": r"swish",
    "no_flatten": r"Flatten",
    "window": r"kernel|\bpool\b|pool_size|window",  # not "pool" alone: a layer's name, max_pooling2d_3, has it
}


@st.composite
def spatial_spec(draw):
    kind = draw(st.sampled_from(["conv", "conv", "maxpool", "avgpool", "bn", "dropout", "activation"]))
    if kind == "conv":
        return {"kind": "conv", "filters": draw(st.sampled_from([1, 2, 3] * 4 + [0])),
                "kernel": draw(st.integers(1, 4)),
                "strides": draw(st.integers(1, 2)), "padding": draw(st.sampled_from(["valid", "same"] * 6 + ["full"])),
                "activation": draw(st.sampled_from(ACTIVATION_CHOICES))}
    if kind in ("maxpool", "avgpool"):
        return {"kind": kind, "pool": draw(st.integers(1, 3)), "strides": draw(st.sampled_from([None, 1, 2])),
                "padding": draw(st.sampled_from(["valid", "same"]))}
    if kind == "dropout":
        return {"kind": "dropout", "rate": draw(st.sampled_from([0.0, 0.3] * 6 + [1.5]))}
    if kind == "bn":
        return {"kind": "bn"}
    return {"kind": "activation", "activation": draw(st.sampled_from(ACTIVATION_CHOICES))}


@st.composite
def flat_spec(draw):
    kind = draw(st.sampled_from(["dense", "dense", "dropout", "activation", "bn"]))
    if kind == "dense":
        return {"kind": "dense", "units": draw(st.sampled_from([1, 2, 4] * 4 + [0])),
                "activation": draw(st.sampled_from(ACTIVATION_CHOICES))}
    if kind == "dropout":
        return {"kind": "dropout", "rate": 0.2}
    if kind == "bn":
        return {"kind": "bn"}
    return {"kind": "activation", "activation": draw(st.sampled_from(ACTIVATION_CHOICES))}


@st.composite
def model_case(draw):
    """(input shape, layer specs, x): conv-like layers, usually a Flatten (its absence is a
    stacking error), dense-like layers, a softmax head; the input is sometimes smaller than
    a kernel or pool."""
    shape = (draw(st.integers(1, 7)), draw(st.integers(1, 7)), draw(st.integers(1, 3)))
    specs = [draw(spatial_spec()) for _ in range(draw(st.integers(0, 3)))]
    if draw(st.integers(0, 9)):
        specs.append({"kind": "flatten"})
    specs += [draw(flat_spec()) for _ in range(draw(st.integers(0, 2)))]
    specs.append({"kind": "dense", "units": 3, "activation": "softmax"})
    x = np.random.default_rng(draw(st.integers(0, 100))).random((draw(st.integers(1, 5)),) + shape)
    return shape, specs, x.astype(np.float32)


def config_reasons(spec):
    """The invalid choices in one layer's own configuration (refused when it is made)."""
    reasons = set()
    if spec.get("filters") == 0:
        reasons.add("filters")
    if spec.get("units") == 0:
        reasons.add("units")
    if spec.get("padding") == "full":
        reasons.add("padding")
    if spec.get("rate") == 1.5:
        reasons.add("rate")
    if spec.get("activation") == "swish":
        reasons.add("activation")
    return reasons


def _window_output(size, window, stride, padding):
    """Keras's output length: ceil(size / stride) with 'same', floor((size - window) / stride) + 1 with 'valid'."""
    return math.ceil(size / stride) if padding == "same" else (size - window) // stride + 1


def judge(shape, specs):
    """(reasons, output shapes): every invalid choice in the layers' own configurations,
    plus what a walk over the shapes finds ('window': a 'valid' kernel or pool larger than
    its input; 'no_flatten': an output with classes at several positions, as a Dense on a
    spatial input without Flatten makes, which compile refuses). The walk stops at the first
    layer that is invalid, as building does. No reasons: a valid model, whose layers'
    output shapes are the second item."""
    reasons = set().union(*(config_reasons(spec) for spec in specs))
    shapes = []
    for spec in specs:
        kind = spec["kind"]
        if config_reasons(spec):
            break  # refused when made: later shapes cannot be known
        if kind in ("conv", "maxpool", "avgpool"):
            height, width, channels = shape
            window = spec["kernel"] if kind == "conv" else spec["pool"]
            stride = spec["strides"] or window
            if spec["padding"] == "valid" and window > min(height, width):
                reasons.add("window")
                break
            shape = (_window_output(height, window, stride, spec["padding"]),
                     _window_output(width, window, stride, spec["padding"]),
                     spec["filters"] if kind == "conv" else channels)
        elif kind == "flatten":
            shape = (math.prod(shape),)
        elif kind == "dense":
            shape = shape[:-1] + (spec["units"],)  # Keras: on the last axis of each position
        shapes.append(shape)
    else:
        if len(shape) > 1 and math.prod(shape[:-1]) > 1:
            reasons.add("no_flatten")  # classes at several positions: the cross-entropy needs one row a sample
    return reasons, shapes


def make_layer(spec):
    kind = spec["kind"]
    if kind == "conv":
        return layers.Conv2D(spec["filters"], spec["kernel"], strides=spec["strides"], padding=spec["padding"],
                             activation=spec["activation"])
    if kind in ("maxpool", "avgpool"):
        cls = layers.MaxPooling2D if kind == "maxpool" else layers.AveragePooling2D
        return cls(spec["pool"], strides=spec["strides"], padding=spec["padding"])
    if kind == "dense":
        return layers.Dense(spec["units"], activation=spec["activation"])
    if kind == "dropout":
        return layers.Dropout(spec["rate"])
    if kind == "bn":
        return layers.BatchNormalization()
    if kind == "flatten":
        return layers.Flatten()
    return layers.Activation(spec["activation"])


def check_case(shape, specs, x, tmp_dir):
    """Judge the case here, then hold nbnet to it; returns the reasons (empty: valid)."""
    reasons, shapes = judge(shape, specs)
    if reasons:
        # Refused while the layers are made, the model is built or compiled, before any kernel runs;
        # an exception of any other type propagates and fails the test.
        with pytest.raises(NbnetError) as info:
            model = models.Sequential([make_layer(spec) for spec in specs], seed=0)
            model.build(shape)
            model.compile("adam", "sparse_categorical_crossentropy", ["accuracy"])
        message = str(info.value)
        assert any(re.search(REASON_PATTERNS[r], message) for r in reasons), \
            f"refused for another reason than {sorted(reasons)}: {message}"
        return reasons
    model = models.Sequential([make_layer(spec) for spec in specs], seed=0)
    model.build(shape)
    assert [tuple(s) for s in model.output_shapes] == shapes
    model.compile("adam", "sparse_categorical_crossentropy", ["accuracy"])
    loss, _ = model.train_on_batch(x, np.arange(len(x)) % 3)
    assert np.isfinite(loss)
    path = tmp_dir / "m.onnx"
    export(model, path, x=x, print_fn=None)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    onnx_out = session.run(None, {session.get_inputs()[0].name: x})[0]
    expected = model.predict(x)
    assert expected.shape == (len(x),) + shapes[-1] and expected.shape[-1] == 3
    np.testing.assert_allclose(onnx_out, expected, atol=1e-4)
    return reasons


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)
@given(model_case())
def test_random_models_train_and_export_or_fail_with_nbnet_errors(tmp_path_factory, case):
    shape, specs, x = case
    check_case(shape, specs, x, tmp_path_factory.mktemp("onnx"))


def _conv(**overrides):
    return {"kind": "conv", "filters": 2, "kernel": 3, "strides": 1, "padding": "valid", "activation": "relu",
            **overrides}


def _pool(kind="maxpool", pool=2, strides=None, padding="valid"):
    return {"kind": kind, "pool": pool, "strides": strides, "padding": padding}


HEAD = [{"kind": "flatten"}, {"kind": "dense", "units": 3, "activation": "softmax"}]

# One hand-made case per kind of refusal (its expected reasons) and valid look-alikes (no
# reasons), so each is exercised on every run, whatever the fuzzer draws.
EXPLICIT_CASES = {
    "0 filters": ((5, 5, 1), [_conv(filters=0)] + HEAD, {"filters"}),
    "padding full": ((5, 5, 1), [_conv(padding="full")] + HEAD, {"padding"}),
    "swish": ((5, 5, 1), [{"kind": "activation", "activation": "swish"}] + HEAD, {"activation"}),
    "dropout 1.5": ((5, 5, 1), [{"kind": "dropout", "rate": 1.5}] + HEAD, {"rate"}),
    "0 units": ((5, 5, 1), [{"kind": "flatten"}, {"kind": "dense", "units": 0, "activation": None}] + HEAD[1:],
                {"units"}),
    "no Flatten": ((5, 5, 1), [_conv()] + HEAD[1:], {"no_flatten"}),
    "kernel larger than input": ((2, 5, 1), [_conv(kernel=3)] + HEAD, {"window"}),
    "pool larger than input": ((5, 5, 1), [_conv(), _pool(pool=3, strides=2), _pool("avgpool", pool=3)] + HEAD,
                               {"window"}),
    "valid: 'same' kernel larger than input": ((2, 2, 1), [_conv(kernel=4, padding="same", strides=2)] + HEAD, set()),
    "valid: window equal to input": ((3, 3, 2), [_conv(kernel=3), {"kind": "bn"}] + HEAD, set()),
    "valid: conv, fused pool, dropout": ((7, 6, 1), [_conv(), _pool(), {"kind": "dropout", "rate": 0.3}] + HEAD,
                                         set()),
    "valid: 'same' pools": ((3, 5, 2), [_pool(pool=3, strides=2, padding="same"),
                                        _pool("avgpool", pool=2, strides=1, padding="same")] + HEAD, set()),
}


@pytest.mark.parametrize("name", list(EXPLICIT_CASES))
def test_each_kind_of_model_is_judged_and_handled(name, tmp_path):
    shape, specs, expected_reasons = EXPLICIT_CASES[name]
    x = np.random.default_rng(7).random((4,) + shape, dtype=np.float32)
    assert check_case(shape, specs, x, tmp_path) == expected_reasons


@pytest.mark.parametrize("reason", [None] + sorted(REASON_PATTERNS))
def test_strategy_draws_valid_models_and_every_kind_of_invalid_one(reason):
    """The fuzz test's strategy reaches valid models and each invalid choice (a search over
    the strategy alone: no model is built)."""
    def wanted(case):
        reasons = judge(case[0], case[1])[0]
        return not reasons if reason is None else reason in reasons

    find(model_case(), wanted, settings=settings(max_examples=2000, database=None, derandomize=True,
                                                 suppress_health_check=list(HealthCheck)))
