"""nbnet against what real Keras 3 computed on the same inputs.

The Keras values live in tests/fixtures/keras_parity.json, written by
``tools/keras_parity.py`` (Keras 3 on PyTorch, in the benchmark virtualenv); this file
needs neither. Each test names what it compares and the tolerance float32 leaves.
"""

import json
import re
from pathlib import Path

import numpy as np
import pytest

from nbnet import callbacks, initializers, layers, losses, metrics, models, optimizers, regularizers, schedules

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "keras_parity.json").read_text())


def f32(values):
    return np.asarray(values, np.float32)


def case_id(case, *keys):
    return "-".join(str(case[k]) for k in keys)


# ---------------------------------------------------------------------------- losses
@pytest.mark.parametrize("case", FIXTURE["losses"], ids=lambda c: f"{c['loss']}-{c['from_logits']}-{c['what']}")
def test_loss_value_and_gradient_equal_keras(case):
    loss = losses.get({"name": case["loss"], "from_logits": case["from_logits"], **case.get("kwargs", {})})
    y_pred = f32(case["y_pred"])
    targets = loss.prepare_targets(np.asarray(case["y_true"]), y_pred.shape[1])
    grad = np.empty_like(y_pred)
    value = loss.compute(y_pred, targets, grad, case["from_logits"]) / len(y_pred)
    assert value == pytest.approx(case["value"], rel=2e-6, abs=1e-6)
    np.testing.assert_allclose(grad, case["grad"], rtol=2e-5, atol=1e-7)
    # The callable form (Keras's loss(y_true, y_pred)) gives the same mean.
    assert loss(np.asarray(case["y_true"]), y_pred) == pytest.approx(case["value"], rel=2e-6, abs=1e-6)


# ---------------------------------------------------------------------------- metrics
@pytest.mark.parametrize("case", FIXTURE["metrics"], ids=lambda c: f"{c['metric']}-{c['kwargs']}")
def test_metric_result_after_two_batches_equals_keras(case):
    metric = getattr(metrics, case["metric"])(**case["kwargs"])
    # Keras numbers unnamed Precision/Recall/AUC objects (auc, auc_1, ...) by how many came before.
    assert re.sub(r"_\d+$", "", metric.name) == re.sub(r"_\d+$", "", case["name"])
    for index, batch in enumerate(case["batches"]):
        weight = case["sample_weight"] if case["weighted"] and index == 1 else None
        metric.update_state(*[np.asarray(values) for values in batch], sample_weight=weight)
    assert float(metric.result()) == pytest.approx(case["result"], rel=1e-5, abs=1e-6)
    metric.reset_state()
    metric.update_state(*[np.asarray(values) for values in case["batches"][0]])
    single = float(metric.result())
    metric.reset_state()  # the state starts afresh: the same batch gives the same result
    metric.update_state(*[np.asarray(values) for values in case["batches"][0]])
    assert float(metric.result()) == single


# ---------------------------------------------------------------------------- optimizers
def make_optimizer(name, kwargs):
    kwargs = dict(kwargs)
    rate = kwargs.get("learning_rate")
    if isinstance(rate, dict):
        kwargs["learning_rate"] = getattr(schedules, rate["class_name"])(**rate["config"])
    return optimizers.get(name.lower()).__class__(**kwargs)


@pytest.mark.parametrize("case", FIXTURE["optimizers"], ids=lambda c: f"{c['optimizer']}-{c['kwargs']}-{c['gradients']}")
def test_optimizer_weights_after_each_step_equal_keras(case):
    optimizer = make_optimizer(case["optimizer"], case["kwargs"])
    start = f32(case["params"])
    params = start.copy()
    for step, (g, expected) in enumerate(zip(f32(case["grads"]), case["after_each_step"]), 1):
        optimizer.apply(params, g.copy())
        expected = np.asarray(expected)
        # Compared as displacements from the start: a wrong epsilon placement with tiny
        # gradients changes the step by 2x or more; float32 rounding of the weights
        # themselves (about 1e-7 at |w| ~ 1, a few steps) is the floor.
        moved = np.abs(expected - start).max()
        worst = np.abs(params - expected).max()
        assert worst <= 1e-3 * moved + 4e-7 * step, (
            f"step {step}: worst difference {worst:.3g} against Keras (Keras moved the weights by up to {moved:.3g})")


@pytest.mark.parametrize("case", FIXTURE["clipping"], ids=lambda c: f"{c['optimizer']}-{c['kwargs']}")
def test_clipping_and_weight_decay_equal_keras(case):
    """clipnorm clips each weight array (two here), global_clipnorm all of them together."""
    optimizer = make_optimizer(case["optimizer"], case["kwargs"])
    params = np.concatenate([f32(p).ravel() for p in case["params"]])
    segments = np.cumsum([0] + [f32(p).size for p in case["params"]])
    for step in case["grads"]:
        optimizer.apply(params, np.concatenate([f32(g).ravel() for g in step]), segments=segments)
    expected = np.concatenate([f32(p).ravel() for p in case["after"]])
    np.testing.assert_allclose(params, expected, rtol=1e-5, atol=2e-6)


# ---------------------------------------------------------------------------- initializers
@pytest.mark.parametrize("case", FIXTURE["initializers"],
                         ids=lambda c: f"{c['initializer']}-{c.get('kwargs', {})}-{c['layer']}")
def test_initializer_statistics_equal_keras(case):
    shape = tuple(case["shape"])
    kwargs = case.get("kwargs", {})
    initializer = getattr(initializers, case["initializer"])(**kwargs) if kwargs else initializers.get(case["initializer"])
    values = initializer.draw(shape, np.random.default_rng(7)).astype(np.float64)
    assert values.shape == shape
    if case["std"] == 0.0:  # zeros, ones, Constant
        np.testing.assert_array_equal(values, np.full(shape, case["max"]))
        return
    n = values.size
    # Sample statistics of n draws: the standard deviation is known to about 1/sqrt(2n).
    assert values.std() == pytest.approx(case["std"], rel=6 / np.sqrt(2 * n) + 0.01)
    assert abs(values.mean() - case["mean"]) < 6 * case["std"] / np.sqrt(n)
    # Uniform: the extremes sit at the limits; truncated normal: at 2 standard deviations.
    uniform = "uniform" in case["initializer"].lower() or kwargs.get("distribution") == "uniform"
    bounded = uniform or "truncated" in case["initializer"].lower() or case["initializer"] in (
        "glorot_normal", "he_normal", "lecun_normal")
    if bounded:
        tolerance = 0.01 if uniform else 0.08
        assert values.max() == pytest.approx(case["max"], rel=tolerance, abs=tolerance * case["std"])
        assert values.min() == pytest.approx(case["min"], rel=tolerance, abs=tolerance * case["std"])


# ---------------------------------------------------------------------------- schedules
@pytest.mark.parametrize("case", FIXTURE["schedules"], ids=lambda c: f"{c['schedule']}-{c['kwargs']}")
def test_schedule_values_equal_keras(case):
    schedule = getattr(schedules, case["schedule"])(**case["kwargs"])
    # Keras computes in float32: about 1e-8 absolute where the cosine nears zero.
    np.testing.assert_allclose([schedule(step) for step in case["steps"]], case["values"], rtol=1e-6, atol=1e-8)


# ---------------------------------------------------------------------------- regularizers
@pytest.mark.parametrize("case", FIXTURE["regularizers"], ids=lambda c: f"{c['regularizer']}-{c['kwargs']}")
def test_regularizer_penalty_and_gradient_equal_keras(case):
    regularizer = getattr(regularizers, case["regularizer"])(**case["kwargs"])
    assert regularizer.get_config() == pytest.approx({"l1": 0.0, "l2": 0.0, **case["config"]}, rel=1e-6)
    weights = f32(case["weights"])
    grads = np.zeros_like(weights)
    penalty = regularizer.apply(weights, grads)
    assert penalty == pytest.approx(case["penalty"], rel=1e-6, abs=1e-9)
    np.testing.assert_allclose(grads, case["grad"], rtol=1e-6, atol=1e-9)


# ---------------------------------------------------------------------------- BatchNormalization
@pytest.mark.parametrize("case", FIXTURE["batchnorm"], ids=lambda c: f"{c['kwargs']}-{len(c['shape'])}d")
def test_batchnorm_outputs_gradients_and_moving_statistics_equal_keras(case):
    layer = layers.BatchNormalization(**case["kwargs"])
    layer.build(case["shape"][1:], np.random.default_rng(0))
    channels = case["shape"][-1]
    assert list(layer.weight_order) == case["weight_names"]
    # Keras's get_weights order: a layer that read them in another order would normalise wrongly below.
    layer.set_weights([f32(case["gamma"]), f32(case["beta"]), np.zeros(channels, np.float32),
                       np.ones(channels, np.float32)])
    for batch, output, grads, moving in zip(case["batches"], case["outputs"], case["grads"], case["moving_after_each"]):
        for key in layer.grads:
            layer.grads[key][...] = 0.0
        y = layer.forward(f32(batch["x"]), training=True)
        np.testing.assert_allclose(y, output, rtol=1e-5, atol=2e-5)
        dx = layer.backward(f32(batch["upstream"]))
        np.testing.assert_allclose(dx, grads["x"], rtol=1e-4, atol=2e-5)
        np.testing.assert_allclose(layer.grads["gamma"], grads["gamma"], rtol=1e-4, atol=2e-5)
        np.testing.assert_allclose(layer.grads["beta"], grads["beta"], rtol=1e-5, atol=2e-5)
        np.testing.assert_allclose(layer.state["moving_mean"], moving[0], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(layer.state["moving_variance"], moving[1], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(layer.get_weights()[2:], moving, rtol=1e-5, atol=1e-6)
    y = layer.forward(f32(case["inference_x"]), training=False)
    np.testing.assert_allclose(y, case["inference_y"], rtol=1e-5, atol=2e-5)


# ---------------------------------------------------------------------------- callbacks
def tiny_model():
    model = models.Sequential([layers.Dense(1, input_shape=(2,))], seed=0)
    model.compile(optimizers.SGD(learning_rate=0.1), "mse", metrics=["accuracy"])
    return model


def mark(model, epoch):
    model.set_weights([np.full(w.shape, float(epoch), np.float32) for w in model.get_weights()])


def drive(callback, model, sequence, key):
    """The epoch hooks as fit calls them, with ``key`` taking the scripted values; returns
    the epoch after which the callback stopped training (None if it never did)."""
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


@pytest.mark.parametrize("case", FIXTURE["callbacks"]["early_stopping"], ids=lambda c: str(c["kwargs"]))
def test_early_stopping_stops_and_restores_as_keras(case):
    model = tiny_model()
    stopped_at = drive(callbacks.EarlyStopping(**case["kwargs"]), model, case["sequence"], case["kwargs"]["monitor"])
    assert stopped_at == case["stopped_at"]
    assert model.get_weights()[0].ravel()[0] == case["weights_epoch"]


@pytest.mark.parametrize("case", FIXTURE["callbacks"]["model_checkpoint"], ids=lambda c: str(c["kwargs"]))
def test_model_checkpoint_saves_the_epochs_keras_saves_with_their_weights(case, tmp_path):
    model = tiny_model()
    callback = callbacks.ModelCheckpoint(str(tmp_path / "ckpt-{epoch:02d}.nbnet"), **case["kwargs"])
    drive(callback, model, case["sequence"], case["kwargs"]["monitor"])
    saved = sorted(int(path.stem.split("-")[1]) for path in tmp_path.glob("ckpt-*.nbnet"))
    assert saved == case["saved_epochs"]
    for epoch in saved:  # each file holds the weights of the epoch it is named after
        restored = models.load_model(tmp_path / f"ckpt-{epoch:02d}.nbnet")
        assert all((w == epoch - 1).all() for w in restored.get_weights())


@pytest.mark.parametrize("case", FIXTURE["callbacks"]["reduce_lr_on_plateau"], ids=lambda c: str(c["kwargs"]))
def test_reduce_lr_on_plateau_sets_the_rates_keras_sets(case):
    model = tiny_model()
    model.optimizer.learning_rate = 0.1
    callback = callbacks.ReduceLROnPlateau(**case["kwargs"])
    callback.set_model(model)
    callback.on_train_begin()
    rates, logged = [], []
    key = case["kwargs"].get("monitor", "val_loss")
    for epoch, value in enumerate(case["sequence"]):
        logs = {key: value, "loss": 1.0}
        callback.on_epoch_end(epoch, logs)
        logged.append(logs["learning_rate"])
        rates.append(model.optimizer.current_learning_rate())
    np.testing.assert_allclose(rates, case["rates"], rtol=1e-6)
    np.testing.assert_allclose(logged, case["logged"], rtol=1e-6)


def test_learning_rate_scheduler_sets_the_rates_keras_sets():
    (case,) = FIXTURE["callbacks"]["learning_rate_scheduler"]
    model = tiny_model()
    model.optimizer.learning_rate = case["initial"]
    callback = callbacks.LearningRateScheduler(lambda epoch, lr: lr if epoch < 2 else lr * 0.5)
    callback.set_model(model)
    rates = []
    for epoch in range(len(case["rates"])):
        callback.on_epoch_begin(epoch)
        rates.append(model.optimizer.current_learning_rate())
    np.testing.assert_allclose(rates, case["rates"], rtol=1e-6)


def test_terminate_on_nan_ends_fit_like_keras_and_keeps_the_last_good_weights():
    """Keras stops at the batch whose loss is not finite, still ends that epoch (History
    has it, with a NaN loss) and returns. nbnet computes the loss in float64, so it
    overflows a few steps later than Keras's float32 loss: the batch counts differ, the
    behaviour must not."""
    (case,) = FIXTURE["callbacks"]["terminate_on_nan"]
    assert case["epochs_in_history"] == -(-case["batches_run"] // case["steps_per_epoch"])
    model = models.Sequential([layers.Dense(1, kernel_initializer="ones", input_shape=(2,))], seed=0)
    model.compile(optimizers.SGD(learning_rate=0.1), "mse")
    seen = []

    class Recorder(callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.append(logs["loss"])

    x = np.full((64, 2), 10.0, np.float32)
    with pytest.warns(RuntimeWarning, match="diverged"):
        history = model.fit(x, np.zeros((64, 1), np.float32), batch_size=8, epochs=10, verbose=0, shuffle=False,
                            callbacks=[callbacks.TerminateOnNaN(), Recorder()])
    assert len(history.history["loss"]) == -(-len(seen) // case["steps_per_epoch"]) < 10
    assert bool(np.isfinite(history.history["loss"][-1])) == case["last_loss_finite"]
    assert not np.isfinite(seen[-1]) and np.isfinite(seen[:-1]).all()
    assert model.diverged is not None and model.optimizer.iterations == len(seen) - 1
    # The gradient overflowed before the weights did: those of the last good step are kept.
    assert all(np.isfinite(w).all() for w in model.get_weights())


# ---------------------------------------------------------------------------- weights files
def weights_file_cnn(seed):
    return models.Sequential([
        layers.Input((10, 10, 2)), layers.Conv2D(4, 3, activation="relu"), layers.BatchNormalization(),
        layers.MaxPooling2D(), layers.Conv2D(3, 2, padding="same"), layers.Flatten(),
        layers.Dropout(0.3), layers.Dense(5, activation="relu"), layers.Dense(3, activation="softmax")], seed=seed)


def test_keras_weights_file_loads_and_predicts_as_keras(tmp_path):
    """A .weights.h5 file written by Keras's save_weights: the same architecture in nbnet
    loads it and predicts what Keras predicted; nbnet's own file of it holds the same arrays."""
    case = FIXTURE["weights_file"]
    model = weights_file_cnn(seed=0)
    model.load_weights(Path(__file__).parent / "fixtures" / case["file"])
    np.testing.assert_allclose(model.predict(f32(case["x"])), case["predictions"], rtol=1e-5, atol=1e-6)
    model.save_weights(tmp_path / "again.weights.h5")
    other = weights_file_cnn(seed=1)
    other.load_weights(tmp_path / "again.weights.h5")
    for ours, theirs in zip(other.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(ours, theirs)


# ---------------------------------------------------------------------------- weighted training
@pytest.mark.parametrize("kind", ["sample_weight", "class_weight"])
def test_weighted_fit_and_evaluate_equal_keras(kind):
    """Keras scales each sample's loss by its weight and still divides by the batch size;
    compile(metrics=...) ignore the weights, as Keras; validation takes (x, y, sample_weight)."""
    data = FIXTURE["weighted_fit"]
    (case,) = [c for c in data["cases"] if c["kind"] == kind]
    x, labels, weights = f32(data["x"]), np.asarray(data["labels"]), f32(data["sample_weight"])
    model = models.Sequential([layers.Input((4,)), layers.Dense(3, activation="softmax")], seed=0)
    model.compile(optimizers.SGD(0.1), "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.set_weights([f32(data["kernel"]), f32(data["bias"])])
    extra = ({"sample_weight": weights} if kind == "sample_weight"
             else {"class_weight": {int(k): v for k, v in case["class_weight"].items()}})
    history = model.fit(x, labels, batch_size=8, epochs=2, shuffle=False, verbose=0,
                        validation_data=(x[:8] * 2, labels[:8], weights[:8]), **extra)
    assert sorted(history.history) == sorted(case["history"])
    for key, values in case["history"].items():
        np.testing.assert_allclose(history.history[key], values, rtol=2e-5, atol=1e-6, err_msg=key)
    evaluated = model.evaluate(x[:8] * 2, labels[:8], sample_weight=weights[:8], verbose=0, return_dict=True)
    assert evaluated == pytest.approx(case["evaluate"], rel=2e-5, abs=1e-6)
    for got, expected in zip(model.get_weights(), case["weights"]):
        np.testing.assert_allclose(got, expected, rtol=2e-5, atol=1e-6)


def test_auto_mode_refuses_to_guess_as_keras_does():
    """Keras's 'auto' mode knows losses, errors, accuracies, AUC, precision and recall, and
    raises for any other name rather than guess a direction."""
    assert callbacks.EarlyStopping("val_auc_2").mode == "max" and callbacks.ModelCheckpoint("m.nbnet", "mae").mode == "min"
    with pytest.raises(Exception, match=r"'val_f1'.*mode='max' or mode='min'"):
        callbacks.EarlyStopping("val_f1")
