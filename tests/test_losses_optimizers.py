"""Losses and optimizers against their formulas, written here in plain NumPy."""

import numpy as np
import pytest

from nbnet import losses, optimizers, schedules
from nbnet.errors import NbnetError


def softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def numeric_grad(f, x, h=1e-3):
    grad = np.zeros_like(x, dtype=np.float64)
    for index in np.ndindex(x.shape):
        up, down = x.astype(np.float64), x.astype(np.float64)
        up[index] += h
        down[index] -= h
        grad[index] = (f(up) - f(down)) / (2 * h)
    return grad


def run(loss, outputs, targets, on_logits):
    grad = np.empty_like(outputs)
    total = loss.compute(outputs, loss.prepare_targets(targets, outputs.shape[1]), grad, on_logits)
    return total / len(outputs), grad


@pytest.mark.parametrize("sparse", [True, False])
def test_fused_softmax_crossentropy_matches_formula_and_is_stable(sparse):
    rng = np.random.default_rng(1)
    logits = rng.standard_normal((6, 5)).astype(np.float32) * 3
    labels = rng.integers(0, 5, 6)
    targets = labels if sparse else np.eye(5, dtype=np.float32)[labels]
    loss = losses.get("sparse_categorical_crossentropy" if sparse else "categorical_crossentropy")
    value, grad = run(loss, logits, targets, on_logits=True)
    p = softmax(logits.astype(np.float64))
    assert value == pytest.approx(-np.log(p[np.arange(6), labels]).mean(), rel=1e-6)
    np.testing.assert_allclose(grad, (p - np.eye(5)[labels]) / 6, atol=1e-7)
    # Logits far apart: exp overflows even float64 (past 709) without the max shift; the
    # fused loss stays finite and exact.
    extreme = np.array([[0.0, 2000.0, -2000.0], [800.0, 900.0, 1000.0]], np.float32)
    value, grad = run(losses.SparseCategoricalCrossentropy(), extreme, np.array([0, 2]), on_logits=True)
    assert value == pytest.approx(1000.0) and np.isfinite(grad).all()
    np.testing.assert_allclose(grad, [[-0.5, 0.5, 0.0], [0.0, 0.0, 0.0]], atol=1e-12)


def test_crossentropy_on_probabilities_clips_like_keras():
    probs = np.array([[0.2, 0.8], [1.0, 0.0]], np.float32)
    value, _ = run(losses.SparseCategoricalCrossentropy(), probs, np.array([1, 1]), on_logits=False)
    assert value == pytest.approx((-np.log(0.8) - np.log(1e-7)) / 2, rel=1e-5)


def test_crossentropy_on_probabilities_divides_rows_by_their_sum_like_keras():
    """Keras rescales each row to sum to 1 before the log: doubling a row changes nothing."""
    rng = np.random.default_rng(2)
    probs = rng.dirichlet(np.ones(4), 5).astype(np.float32)
    labels = rng.integers(0, 4, 5)
    loss = losses.SparseCategoricalCrossentropy()
    value, grad = run(loss, probs, labels, on_logits=False)
    scaled_value, scaled_grad = run(loss, probs * np.float32(2.0), labels, on_logits=False)
    assert scaled_value == pytest.approx(value, rel=1e-6)
    np.testing.assert_allclose(scaled_grad, grad / 2, rtol=1e-5)
    # Along a row the gradient is orthogonal to the row itself: scaling a row is free.
    np.testing.assert_allclose((grad * probs).sum(axis=1), 0.0, atol=1e-6)


@pytest.mark.parametrize("name,on_logits", [("binary_crossentropy", True), ("binary_crossentropy", False),
                                            ("mse", False), ("categorical_crossentropy", False)])
def test_loss_gradients_match_finite_differences(name, on_logits):
    rng = np.random.default_rng(3)
    loss = losses.get(name)
    outputs = rng.uniform(0.1, 0.9, (4, 3)).astype(np.float32)
    targets = rng.uniform(0, 1, (4, 3)).astype(np.float32)
    _, grad = run(loss, outputs, targets, on_logits)
    numeric = numeric_grad(lambda o: run(loss, o.astype(np.float64), targets.astype(np.float64), on_logits)[0],
                           outputs)
    np.testing.assert_allclose(grad, numeric, rtol=2e-3, atol=1e-5)


def test_binary_crossentropy_from_logits_matches_formula():
    rng = np.random.default_rng(4)
    z = rng.standard_normal((5, 2)) * 4
    t = rng.integers(0, 2, (5, 2)).astype(np.float64)
    value, _ = run(losses.BinaryCrossentropy(from_logits=True), z, t, on_logits=True)
    p = 1 / (1 + np.exp(-z))
    assert value == pytest.approx(-(t * np.log(p) + (1 - t) * np.log(1 - p)).mean(), rel=1e-9)


def test_mean_squared_error_averages_over_outputs_and_batch():
    rng = np.random.default_rng(5)
    preds = rng.standard_normal((4, 3)).astype(np.float32)
    targets = rng.standard_normal((4, 3)).astype(np.float32)
    value, grad = run(losses.MeanSquaredError(), preds, targets, on_logits=False)
    diff = preds.astype(np.float64) - targets
    assert value == pytest.approx((diff ** 2).mean(), rel=1e-6)
    np.testing.assert_allclose(grad, 2 * diff / diff.size, rtol=1e-5)


@pytest.mark.parametrize("loss", ["mae", "huber", losses.Huber(delta=0.25), "msle", "mape"])
def test_regression_losses_train_weighted_and_survive_both_files(loss, tmp_path):
    """mean absolute error, Huber (its delta kept), MSLE and MAPE in a real fit with sample weights: the
    loss falls, evaluate agrees with the loss function on the predictions, and .nbnet and
    .keras files bring the loss back."""
    import nbnet as keras

    rng = np.random.default_rng(2)
    x = rng.standard_normal((256, 4)).astype(np.float32)
    y = x @ rng.standard_normal((4, 2)).astype(np.float32) + 3.0
    weights = rng.uniform(0.5, 1.5, 256).astype(np.float32)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(2)],
                             seed=0)
    model.compile(keras.optimizers.Adam(0.05), loss)
    history = model.fit(x, y, sample_weight=weights, batch_size=32, epochs=8, verbose=0)
    assert history.history["loss"][-1] < 0.5 * history.history["loss"][0]
    expected = losses.get(loss)(y, model.predict(x))
    assert model.evaluate(x, y, batch_size=256, verbose=0) == pytest.approx(float(expected), rel=1e-5)
    for name in ("model.nbnet", "model.keras"):
        model.save(tmp_path / name)
        loaded = keras.models.load_model(tmp_path / name)
        assert loaded.loss.get_config() == losses.get(loss).get_config(), name
        assert loaded.evaluate(x, y, verbose=0) == pytest.approx(model.evaluate(x, y, verbose=0), rel=1e-6)


def test_huber_refuses_a_delta_that_is_not_positive():
    with pytest.raises(NbnetError, match="delta must be positive, received 0"):
        losses.Huber(delta=0)


def reference_steps(name, params, grads, steps, **hp):
    """Keras 3's update rules, written out in float64."""
    p = params.astype(np.float64)
    m = np.zeros_like(p)
    v = np.zeros_like(p)
    mg = np.zeros_like(p)
    for t in range(1, steps + 1):
        g = grads[t - 1]
        if name == "adam" or name == "adamw":
            p = p - hp["lr"] * hp.get("weight_decay", 0.0) * p
            m = 0.9 * m + 0.1 * g
            v = 0.999 * v + 0.001 * g * g
            alpha = hp["lr"] * np.sqrt(1 - 0.999 ** t) / (1 - 0.9 ** t)
            p = p - alpha * m / (np.sqrt(v) + 1e-7)
        elif name == "sgd":
            m = hp["momentum"] * m - hp["lr"] * g
            p = p + (hp["momentum"] * m - hp["lr"] * g if hp["nesterov"] else m)
        elif name == "rmsprop":
            rho, eps = hp.get("rho", 0.9), hp.get("epsilon", 1e-7)
            v = rho * v + (1 - rho) * g * g
            denominator = v + eps
            if hp.get("centered"):
                mg = rho * mg + (1 - rho) * g
                denominator = denominator - mg * mg
            step = hp["lr"] * g / np.sqrt(denominator)
            if hp.get("momentum"):
                m = hp["momentum"] * m + step
                step = m
            p = p - step
    return p


@pytest.mark.parametrize("optimizer,name,hp", [
    (optimizers.Adam(learning_rate=0.01), "adam", {"lr": 0.01}),
    (optimizers.AdamW(learning_rate=0.01, weight_decay=0.1), "adamw", {"lr": 0.01, "weight_decay": 0.1}),
    (optimizers.SGD(learning_rate=0.1, momentum=0.9), "sgd", {"lr": 0.1, "momentum": 0.9, "nesterov": False}),
    (optimizers.SGD(learning_rate=0.1, momentum=0.9, nesterov=True), "sgd",
     {"lr": 0.1, "momentum": 0.9, "nesterov": True}),
    (optimizers.SGD(learning_rate=0.1), "sgd", {"lr": 0.1, "momentum": 0.0, "nesterov": False}),
    (optimizers.RMSprop(learning_rate=0.01), "rmsprop", {"lr": 0.01}),
    (optimizers.RMSprop(learning_rate=0.01, momentum=0.9), "rmsprop", {"lr": 0.01, "momentum": 0.9}),
    (optimizers.RMSprop(learning_rate=0.01, rho=0.8, centered=True, epsilon=1e-5), "rmsprop",
     {"lr": 0.01, "rho": 0.8, "centered": True, "epsilon": 1e-5}),
])
@pytest.mark.parametrize("scale", [1.0, 1e-6])
def test_optimizer_kernels_follow_keras_formulas(optimizer, name, hp, scale):
    """Gradients of 1 and of 1e-6 (where epsilon's placement decides the step)."""
    optimizer = optimizer.__class__(**{k: v for k, v in optimizer.get_config().items() if k != "name"})
    rng = np.random.default_rng(6)
    params = rng.standard_normal(50).astype(np.float32)
    grads = (rng.standard_normal((5, 50)) * scale).astype(np.float32)
    flat = params.copy()
    for g in grads:
        optimizer.apply(flat, g.copy())
    np.testing.assert_allclose(flat, reference_steps(name, params, grads.astype(np.float64), 5, **hp),
                               rtol=1e-5, atol=1e-6)
    assert optimizer.iterations == 5


def test_schedules_step_and_cosine():
    step = schedules.StepDecay(0.1, step_size=10, factor=0.5)
    assert [step(s) for s in (0, 9, 10, 25)] == pytest.approx([0.1, 0.1, 0.05, 0.025])
    cosine = schedules.CosineDecay(1.0, decay_steps=100, alpha=0.1)
    assert cosine(0) == pytest.approx(1.0) and cosine(50) == pytest.approx(0.55) and cosine(200) == pytest.approx(0.1)
    optimizer = optimizers.SGD(learning_rate=step)
    flat = np.zeros(3, np.float32)
    for _ in range(10):
        optimizer.apply(flat, np.ones(3, np.float32))
    assert optimizer.current_learning_rate() == pytest.approx(0.05)
    np.testing.assert_allclose(flat, -1.0, rtol=1e-6)  # ten steps at 0.1
    restored = optimizers.get(optimizer.get_config())
    assert restored.current_learning_rate() == pytest.approx(0.1)  # a fresh optimizer starts at step 0


@pytest.mark.parametrize("schedule", [
    schedules.CosineDecay(0.01, 30, alpha=0.1, name="warm", warmup_target=0.1, warmup_steps=5),
    schedules.CosineDecayRestarts(0.1, 8, t_mul=1.5, m_mul=0.8, name="sgdr"),
    schedules.PolynomialDecay(0.1, 20, end_learning_rate=0.01, power=2.0, cycle=True),
    schedules.InverseTimeDecay(0.1, 5, 0.5, staircase=True),
], ids=lambda schedule: type(schedule).__name__)
def test_schedules_drive_a_fit_and_survive_both_files(schedule, tmp_path):
    """Each schedule as Adam's learning rate (Keras's name= taken): the optimizer's rate
    follows it step by step, and .nbnet and .keras files bring it back (Keras writes
    warmup_target and warmup_steps into every CosineDecay's config)."""
    import nbnet as keras

    rng = np.random.default_rng(5)
    x, y = rng.standard_normal((40, 3)).astype(np.float32), rng.standard_normal((40, 1)).astype(np.float32)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)], seed=0)
    model.compile(keras.optimizers.Adam(schedule), "mse")
    rates = []
    model.fit(x, y, batch_size=10, epochs=3, verbose=0, callbacks=[keras.callbacks.LambdaCallback(
        on_train_batch_begin=lambda batch, logs: rates.append(float(model.optimizer.learning_rate)))])
    assert rates == pytest.approx([schedule(step) for step in range(12)], rel=1e-6)
    assert len(set(np.round(rates, 8))) > 2  # (it really changes)
    for name in ("model.nbnet", "model.keras"):
        model.save(tmp_path / name)
        restored = keras.models.load_model(tmp_path / name).optimizer._learning_rate
        assert type(restored) is type(schedule) and restored.get_config() == schedule.get_config(), name
