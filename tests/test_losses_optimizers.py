"""Losses and optimizers against their formulas, written here in plain NumPy."""

import numpy as np
import pytest

from nbnet import losses, optimizers, schedules

RNG = np.random.default_rng(0)


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
    logits = RNG.standard_normal((6, 5)).astype(np.float32) * 3
    labels = RNG.integers(0, 5, 6)
    targets = labels if sparse else np.eye(5, dtype=np.float32)[labels]
    loss = losses.get("sparse_categorical_crossentropy" if sparse else "categorical_crossentropy")
    value, grad = run(loss, logits, targets, on_logits=True)
    p = softmax(logits.astype(np.float64))
    assert value == pytest.approx(-np.log(p[np.arange(6), labels]).mean(), rel=1e-6)
    np.testing.assert_allclose(grad, (p - np.eye(5)[labels]) / 6, atol=1e-7)
    # Logits far apart: probabilities underflow in float32, the fused loss stays finite and exact.
    extreme = np.array([[0.0, 200.0]], np.float32)
    value, grad = run(losses.SparseCategoricalCrossentropy(), extreme, np.array([0]), on_logits=True)
    assert value == pytest.approx(200.0) and np.isfinite(grad).all()


def test_crossentropy_on_probabilities_clips_like_keras():
    probs = np.array([[0.2, 0.8], [1.0, 0.0]], np.float32)
    value, _ = run(losses.SparseCategoricalCrossentropy(), probs, np.array([1, 1]), on_logits=False)
    assert value == pytest.approx((-np.log(0.8) - np.log(1e-7)) / 2, rel=1e-5)


@pytest.mark.parametrize("name,on_logits", [("binary_crossentropy", True), ("binary_crossentropy", False),
                                            ("mse", False), ("categorical_crossentropy", False)])
def test_loss_gradients_match_finite_differences(name, on_logits):
    loss = losses.get(name)
    outputs = RNG.uniform(0.1, 0.9, (4, 3)).astype(np.float32)
    targets = RNG.uniform(0, 1, (4, 3)).astype(np.float32)
    _, grad = run(loss, outputs, targets, on_logits)
    numeric = numeric_grad(lambda o: run(loss, o.astype(np.float64), targets.astype(np.float64), on_logits)[0],
                           outputs)
    np.testing.assert_allclose(grad, numeric, rtol=2e-3, atol=1e-5)


def test_binary_crossentropy_from_logits_matches_formula():
    z = RNG.standard_normal((5, 2)) * 4
    t = RNG.integers(0, 2, (5, 2)).astype(np.float64)
    value, _ = run(losses.BinaryCrossentropy(from_logits=True), z, t, on_logits=True)
    p = 1 / (1 + np.exp(-z))
    assert value == pytest.approx(-(t * np.log(p) + (1 - t) * np.log(1 - p)).mean(), rel=1e-9)


def reference_steps(name, params, grads, steps, **hp):
    p = params.astype(np.float64)
    m = np.zeros_like(p)
    v = np.zeros_like(p)
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
            v = 0.9 * v + 0.1 * g * g
            p = p - hp["lr"] * g / (np.sqrt(v) + 1e-7)
    return p


@pytest.mark.parametrize("optimizer,name,hp", [
    (optimizers.Adam(learning_rate=0.01), "adam", {"lr": 0.01}),
    (optimizers.AdamW(learning_rate=0.01, weight_decay=0.1), "adamw", {"lr": 0.01, "weight_decay": 0.1}),
    (optimizers.SGD(learning_rate=0.1, momentum=0.9), "sgd", {"lr": 0.1, "momentum": 0.9, "nesterov": False}),
    (optimizers.SGD(learning_rate=0.1, momentum=0.9, nesterov=True), "sgd",
     {"lr": 0.1, "momentum": 0.9, "nesterov": True}),
    (optimizers.SGD(learning_rate=0.1), "sgd", {"lr": 0.1, "momentum": 0.0, "nesterov": False}),
    (optimizers.RMSprop(learning_rate=0.01), "rmsprop", {"lr": 0.01}),
])
def test_optimizer_kernels_follow_keras_formulas(optimizer, name, hp):
    params = RNG.standard_normal(50).astype(np.float32)
    grads = RNG.standard_normal((5, 50)).astype(np.float32)
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
