"""Random small models, valid and invalid: valid ones train a step and export to ONNX;
invalid ones fail with nbnet's own error type, never a raw Numba or NumPy traceback."""

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nbnet import layers, models
from nbnet.errors import NbnetError
from nbnet.onnx import export

# One invalid choice among many valid ones, so most drawn models are valid and some are not.
ACTIVATIONS = st.sampled_from([None, "relu", "sigmoid", "tanh", "leaky_relu", "softmax", "linear"] * 3 + ["swish"])
OUTCOMES = {"trained_and_exported": 0, "refused": 0}


@st.composite
def spatial_layer(draw):
    kind = draw(st.sampled_from(["conv", "conv", "maxpool", "avgpool", "bn", "dropout", "activation"]))
    if kind == "conv":
        return layers.Conv2D(draw(st.sampled_from([1, 2, 3] * 4 + [0])), draw(st.integers(1, 4)),
                             strides=draw(st.integers(1, 2)),
                             padding=draw(st.sampled_from(["valid", "same"] * 6 + ["full"])), activation=draw(ACTIVATIONS))
    if kind in ("maxpool", "avgpool"):
        cls = layers.MaxPooling2D if kind == "maxpool" else layers.AveragePooling2D
        return cls(draw(st.integers(1, 3)), strides=draw(st.sampled_from([None, 1, 2])),
                   padding=draw(st.sampled_from(["valid", "same"])))
    if kind == "bn":
        return layers.BatchNormalization()
    if kind == "dropout":
        return layers.Dropout(draw(st.sampled_from([0.0, 0.3] * 6 + [1.5])))
    return layers.Activation(draw(ACTIVATIONS))


@st.composite
def flat_layer(draw):
    kind = draw(st.sampled_from(["dense", "dense", "dropout", "activation", "bn"]))
    if kind == "dense":
        return layers.Dense(draw(st.sampled_from([1, 2, 4] * 4 + [0])), activation=draw(ACTIVATIONS))
    if kind == "dropout":
        return layers.Dropout(0.2)
    if kind == "bn":
        return layers.BatchNormalization()
    return layers.Activation(draw(ACTIVATIONS))


@st.composite
def model_case(draw):
    """Conv-like layers, usually a Flatten (its absence is a stacking error), dense-like
    layers, a softmax head; the input is sometimes smaller than a kernel or pool."""
    shape = (draw(st.integers(1, 7)), draw(st.integers(1, 7)), draw(st.integers(1, 3)))
    try:
        stack = [draw(spatial_layer()) for _ in range(draw(st.integers(0, 3)))]
        if draw(st.integers(0, 9)):
            stack.append(layers.Flatten())
        stack += [draw(flat_layer()) for _ in range(draw(st.integers(0, 2)))]
        stack.append(layers.Dense(3, activation="softmax"))
    except NbnetError:
        return None  # an invalid configuration refused by the layer itself: that is the point
    x = np.random.default_rng(draw(st.integers(0, 100))).random((draw(st.integers(1, 5)),) + shape)
    return shape, stack, x.astype(np.float32)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)
@given(model_case())
def test_random_models_train_and_export_or_fail_with_nbnet_errors(tmp_path_factory, case):
    if case is None:
        OUTCOMES["refused"] += 1
        return
    shape, stack, x = case
    y = np.arange(len(x)) % 3
    try:
        model = models.Sequential(stack, seed=0)
        model.build(shape)
        model.compile("adam", "sparse_categorical_crossentropy", ["accuracy"])
    except NbnetError:
        OUTCOMES["refused"] += 1
        return
    loss, _ = model.train_on_batch(x, y)
    assert np.isfinite(loss)
    path = tmp_path_factory.mktemp("onnx") / "m.onnx"
    export(model, path, x=x, print_fn=lambda *_: None)
    assert path.stat().st_size > 0
    OUTCOMES["trained_and_exported"] += 1


def test_fuzzing_saw_both_valid_and_invalid_models():
    """Runs after the fuzz test (file order): both kinds must have been drawn."""
    assert OUTCOMES["trained_and_exported"] >= 10 and OUTCOMES["refused"] >= 5, OUTCOMES
