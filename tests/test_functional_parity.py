"""nbnet's functional API against what real Keras 3 computed on five functional models.

tests/functional_architectures.py builds each model from the library module it is given;
``tools/keras_functional_parity.py`` ran it with ``import keras`` (Keras 3 on PyTorch, in
the benchmark virtualenv) and wrote tests/fixtures/keras_functional_parity.json; this file
runs it with ``import nbnet as keras`` and needs no Keras. Per model: the layer and
get_weights() order, the predictions and evaluate() loss from the same weights, and one
train_on_batch with SGD(0.1) and with Adam(0.01): its loss and the weights after it.

Weights go in and come out by name (the layer path and the variable, as Keras names
them), so the numeric comparisons do not depend on the get_weights() order; that order is
checked on its own.
"""

import json
from pathlib import Path

import numpy as np
import pytest

import functional_architectures
import nbnet as keras
from nbnet import optimizers

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "keras_functional_parity.json").read_text())
CASES = {case["name"]: case for case in FIXTURE["architectures"]}



def f32(values):
    return np.asarray(values, np.float32)


def build(name):
    return functional_architectures.build(keras, name)


def layer_at(model, path):
    layer = model
    for name in path:
        layer = layer.get_layer(name)
    return layer


def set_by_name(model, case, weights):
    """Each layer's weights from Keras's arrays, matched by layer path and variable name
    (each layer given its variables in Keras's order within the layer)."""
    per_layer = {}
    for entry, value in zip(case["weight_names"], weights):
        per_layer.setdefault(tuple(entry["path"]), []).append(f32(value))
    for path, values in per_layer.items():
        layer_at(model, path).set_weights(values)


def get_by_name(model, case):
    """nbnet's weights in Keras's get_weights() order, read by layer path and variable name."""
    return [np.array(getattr(layer_at(model, e["path"]), e["variable"])) for e in case["weight_names"]]


def inputs(case):
    x = [f32(a) for a in case["x"]]
    return x[0] if len(x) == 1 else x


def targets(case):
    return np.asarray(case["y"], np.int64 if case["loss"].startswith("sparse") else np.float32)


def ready(name, optimizer=None):
    case = CASES[name]
    model = build(name)
    set_by_name(model, case, case["initial_weights"])
    model.compile(optimizer or optimizers.SGD(learning_rate=0.1), case["loss"])
    return case, model


def test_the_fixture_covers_every_architecture():
    assert sorted(CASES) == sorted(functional_architectures.NAMES)
    assert FIXTURE["backend"] == "torch" and FIXTURE["keras_version"].startswith("3.")


@pytest.mark.parametrize("name", functional_architectures.NAMES)
def test_layer_and_weights_order_equal_keras(name):
    """model.layers, get_weights() shapes in order, and set_weights(Keras's list) putting
    each array in the layer variable Keras has it in: Keras orders a functional model's
    layers by depth, deepest first (graph.keras_layer_order), so a short branch written
    before a long one (a projection shortcut, a 1x1 Inception branch) comes after it."""
    case = CASES[name]
    model = build(name)
    assert [layer.name for layer in model.layers] == case["layers"]
    assert [list(w.shape) for w in model.get_weights()] == case["weight_shapes"]
    model.set_weights([f32(w) for w in case["initial_weights"]])
    for got, expected, entry in zip(get_by_name(model, case), case["initial_weights"], case["weight_names"]):
        np.testing.assert_array_equal(got, f32(expected), err_msg=str(entry))


@pytest.mark.parametrize("name", functional_architectures.NAMES)
def test_weights_by_name_have_keras_shapes(name):
    """Whatever the order, every Keras weight exists in nbnet under the same layer path and
    variable name with the same shape, and the counts agree."""
    case = CASES[name]
    model = build(name)
    assert [list(w.shape) for w in get_by_name(model, case)] == case["weight_shapes"]
    assert sorted(map(str, (w.shape for w in model.get_weights()))) == sorted(
        str(tuple(s)) for s in case["weight_shapes"])


@pytest.mark.parametrize("name", functional_architectures.NAMES)
def test_predictions_and_loss_equal_keras(name):
    """Inference (BatchNormalization on its moving statistics) on the same weights and
    inputs. Float32 forward passes of a few hundred products per output, summed in another
    order than PyTorch's, differ by some 1e-7 relative; 1e-5 (1e-6 absolute for
    probabilities near 0) leaves a margin of ten and still catches any wrong wiring."""
    case, model = ready(name)
    predictions = model.predict(inputs(case), batch_size=FIXTURE["batch_size"])
    np.testing.assert_allclose(predictions, case["predictions"], rtol=1e-5, atol=1e-6)
    loss = model.evaluate(inputs(case), targets(case), batch_size=FIXTURE["batch_size"], verbose=0)
    assert loss == pytest.approx(case["evaluate_loss"], rel=1e-5, abs=1e-6)


# Adam's first step is lr * g / (|g| + eps') with eps' = epsilon / sqrt(1 - beta_2) ~ 3.2e-6:
# a gradient near eps' sets the step's size, so its float32 rounding shows in the step,
# amplified by lr * eps' / (|g| + eps')^2 (up to lr / eps' ~ 3000 as g -> 0). Two float32
# implementations' gradients differ by a few 1e-8 (Keras's own float32 gradients of
# residual_cnn differ from its float64 ones by up to 2.2e-8); GRADIENT_NOISE bounds that.
# Only the entries with |g| below ~1e-4 get any real allowance from it (residual_cnn has
# one at 3.7e-6: Keras and nbnet's steps differ there by 3.3e-6).
GRADIENT_NOISE = 5e-8


def step_allowance(step, gradient):
    """The extra difference a gradient rounding difference of GRADIENT_NOISE can make in
    the weights after this step (nothing for SGD, whose step is linear in g, or for the
    moving statistics, which have no gradient)."""
    if step["optimizer"] != "Adam" or gradient is None:
        return 0.0
    kwargs = {"epsilon": 1e-7, "beta_2": 0.999, **step["kwargs"]}
    eps = kwargs["epsilon"] / np.sqrt(1 - kwargs["beta_2"])
    return kwargs["learning_rate"] * eps / (np.abs(np.asarray(gradient)) + eps) ** 2 * GRADIENT_NOISE


@pytest.mark.parametrize("optimizer", ["SGD", "Adam"])
@pytest.mark.parametrize("name", functional_architectures.NAMES)
def test_one_training_step_equals_keras(name, optimizer):
    """One train_on_batch from the same weights: the loss it returns (the forward pass
    before the update; BatchNormalization on the batch's statistics) and every weight after
    it, moving statistics included. The tolerances are the weighted-fit parity test's:
    float32 weights of magnitude ~1 moved by steps of ~1e-2 carry ~1e-7 of rounding (the
    largest difference measured is 2.5e-7), plus Adam's allowance for gradients near its
    epsilon (step_allowance)."""
    (step,) = [s for s in CASES[name]["steps"] if s["optimizer"] == optimizer]
    case, model = ready(name, getattr(optimizers, optimizer)(**step["kwargs"]))
    loss = model.train_on_batch(inputs(case), targets(case))
    assert float(loss) == pytest.approx(step["loss"], rel=2e-5, abs=1e-6)
    for got, expected, gradient, entry in zip(get_by_name(model, case), step["weights"], case["gradients"],
                                              case["weight_names"]):
        expected = np.asarray(expected)
        allowed = 1e-6 + 2e-5 * np.abs(expected) + step_allowance(step, gradient)
        excess = np.abs(got - expected) - allowed
        worst = np.unravel_index(np.argmax(excess), excess.shape)
        assert excess[worst] <= 0, (f"{entry} at {worst}: nbnet {got[worst]!r}, Keras {expected[worst]!r}, "
                                    f"allowed difference {np.broadcast_to(allowed, excess.shape)[worst]:.3g}")


@pytest.mark.parametrize("optimizer", ["SGD", "Adam"])
def test_two_outputs_log_and_step_as_keras(optimizer):
    """A model with two outputs compiled with a loss, a loss weight and metrics per output
    (dicts keyed by output name): evaluate's and train_on_batch's logs (the weighted total
    loss, each output's own loss and metrics, under Keras's names) and the weights after one
    step equal Keras's, to the single-output tests' tolerances (no gradient sits near Adam's
    epsilon here: the largest difference seen is under 3e-7)."""
    case = FIXTURE["two_heads"]
    (step,) = [s for s in case["steps"] if s["optimizer"] == optimizer]
    model = functional_architectures.two_heads(keras)
    assert [layer.name for layer in model.layers] == case["layers"]
    assert model.output_names == case["output_names"]
    set_by_name(model, case, case["initial_weights"])
    model.compile(getattr(optimizers, optimizer)(**step["kwargs"]), **functional_architectures.TWO_HEADS_COMPILE)
    x, y = f32(case["x"]), {"classes": np.asarray(case["y"]["classes"]), "value": f32(case["y"]["value"])}
    for got, expected in ((model.evaluate(x, y, batch_size=FIXTURE["batch_size"], verbose=0, return_dict=True),
                           step["evaluate"]), (model.train_on_batch(x, y, return_dict=True), step["train_on_batch"])):
        assert sorted(got) == sorted(expected)
        for key in expected:
            assert got[key] == pytest.approx(expected[key], rel=2e-5, abs=1e-6), key
    for got, expected in zip(get_by_name(model, case), step["weights"]):
        np.testing.assert_allclose(got, f32(expected), rtol=2e-5, atol=1e-6)
    history = model.fit(x, [y["classes"], y["value"]], batch_size=4, epochs=1, verbose=0, validation_split=0.5)
    assert sorted(history.history) == case["history_keys"]
