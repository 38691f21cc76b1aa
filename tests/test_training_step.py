"""The training step and what surrounds it, against independent NumPy references: the
optimizer updates (SGD with momentum and Nesterov, AdamW's decoupled decay), two steps of a
whole model (gradients zeroed between steps), the epoch order, validation_split, the
accuracy count, and saving and loading in the middle of a run.

Small models on seeded random data, so each test runs in well under a second once the
kernels are compiled; each has its own generator."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from nbnet import layers, metrics, models, optimizers
from nbnet.devices import cpu


def _keras_sgd(params, grads, lr, momentum, nesterov):
    """Keras 3's SGD, float64: m = momentum*m - lr*g; p += momentum*m - lr*g (Nesterov) or m."""
    p, m = params.astype(np.float64), np.zeros(params.shape)
    for g in grads:
        m = momentum * m - lr * g
        p = p + (momentum * m - lr * g if nesterov else m)
    return p, m


@pytest.mark.parametrize("nesterov", [False, True], ids=["momentum", "nesterov"])
def test_sgd_momentum_and_nesterov_follow_keras(nesterov):
    rng = np.random.default_rng(101)
    params = rng.standard_normal(40).astype(np.float32)
    grads = rng.standard_normal((4, 40)).astype(np.float32)
    optimizer = optimizers.SGD(learning_rate=0.1, momentum=0.9, nesterov=nesterov)
    flat = params.copy()
    for g in grads:
        optimizer.apply(flat, g.copy())
    expected, velocity = _keras_sgd(params, grads.astype(np.float64), 0.1, 0.9, nesterov)
    np.testing.assert_allclose(flat, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(optimizer.slots["velocity"], velocity, rtol=1e-5, atol=1e-6)


def test_adamw_decays_by_lr_times_weight_decay():
    """Keras 3's AdamW: p -= lr * weight_decay * p, then the Adam step (epsilon on sqrt(v),
    bias correction folded into the step size)."""
    rng = np.random.default_rng(102)
    params = rng.standard_normal(30).astype(np.float32)
    grads = rng.standard_normal((3, 30)).astype(np.float32)
    lr, decay = 0.01, 0.1
    optimizer = optimizers.AdamW(learning_rate=lr, weight_decay=decay)
    flat = params.copy()
    for g in grads:
        optimizer.apply(flat, g.copy())
    p, m, v = params.astype(np.float64), np.zeros(30), np.zeros(30)
    for t, g in enumerate(grads.astype(np.float64), start=1):
        p = p - lr * decay * p
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        p = p - lr * np.sqrt(1 - 0.999 ** t) / (1 - 0.9 ** t) * m / (np.sqrt(v) + 1e-7)
    np.testing.assert_allclose(flat, p, rtol=1e-5, atol=1e-6)


def test_two_steps_of_sgd_match_numpy():
    """Two train_on_batch steps of a linear Dense layer under MSE equal plain gradient
    descent computed in NumPy: each step's gradient is that batch's alone."""
    rng = np.random.default_rng(103)
    x = rng.standard_normal((5, 4)).astype(np.float32)
    y = rng.standard_normal((5, 3)).astype(np.float32)
    model = models.Sequential([layers.Dense(3, input_shape=(4,))], seed=1)
    model.compile(optimizer=optimizers.SGD(learning_rate=0.1), loss="mse")
    kernel, bias = (w.astype(np.float64) for w in model.get_weights())
    for _ in range(2):
        model.train_on_batch(x, y)
        dout = 2.0 * (x @ kernel + bias - y) / y.size  # d mean((out - y)^2) / d out
        kernel, bias = kernel - 0.1 * x.T.astype(np.float64) @ dout, bias - 0.1 * dout.sum(axis=0)
    got_kernel, got_bias = model.get_weights()
    np.testing.assert_allclose(got_kernel, kernel, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got_bias, bias, rtol=1e-5, atol=1e-6)


def _classifier(seed):
    model = models.Sequential([layers.Dense(8, activation="relu", input_shape=(6,)), layers.Dropout(0.25),
                               layers.Dense(3, activation="softmax")], seed=seed)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def _data(rng, count):
    return rng.standard_normal((count, 6)).astype(np.float32), rng.integers(0, 3, count)


def test_each_epoch_draws_a_new_order():
    """No Dropout here: its masks would advance the generator and hide an order drawn
    from the same state every epoch."""
    x, y = _data(np.random.default_rng(104), 32)
    model = models.Sequential([layers.Dense(3, activation="softmax", input_shape=(6,))], seed=5)
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    orders = []
    draw = model._epoch_order
    model._epoch_order = lambda *args: orders.append(draw(*args)) or orders[-1]
    model.fit(x, y, epochs=3, batch_size=8, verbose=0)
    assert len(orders) == 3
    for order in orders:
        assert sorted(order) == list(range(32))
    # Two equal permutations of 32 samples by chance: probability 1/32!.
    assert not np.array_equal(orders[0], orders[1]) and not np.array_equal(orders[1], orders[2])
    orders.clear()
    model.fit(x, y, epochs=1, batch_size=8, verbose=0, shuffle=False)
    np.testing.assert_array_equal(orders[0], np.arange(32))


def test_validation_split_holds_out_the_last_samples(monkeypatch):
    """Keras: the last fraction of the samples (before shuffling) validates, the rest trains."""
    x, y = _data(np.random.default_rng(105), 10)
    model = _classifier(seed=6)
    sources = []
    gather = cpu.gather_rows

    def recording(source, order, start, out):
        sources.append(np.array(source))
        return gather(source, order, start, out)

    monkeypatch.setattr(cpu, "gather_rows", recording)
    history = model.fit(x, y, epochs=1, batch_size=4, verbose=0, validation_split=0.3)
    monkeypatch.undo()
    np.testing.assert_array_equal(sources[0], x[:7])  # the first gather of a fit is the inputs
    val_loss, val_accuracy = model.evaluate(x[7:], y[7:], verbose=0)
    assert history.history["val_loss"][0] == pytest.approx(val_loss, rel=1e-6)
    assert history.history["val_accuracy"][0] == pytest.approx(val_accuracy)


@pytest.mark.parametrize("sparse", [True, False], ids=["sparse", "one_hot"])
def test_accuracy_counts_argmax_hits(sparse):
    rng = np.random.default_rng(106)
    outputs = rng.random((40, 5)).astype(np.float32)
    labels = rng.integers(0, 5, 40)
    outputs[:10, 4] += 1.0  # every class wins somewhere, the last one included
    labels[:6] = 4
    targets = labels if sparse else np.eye(5, dtype=np.float32)[labels]
    expected = np.count_nonzero(outputs.argmax(axis=1) == labels)
    assert metrics.correct_count(outputs, targets, sparse) == expected
    single = rng.random((25, 1)).astype(np.float32)
    binary = (rng.random((25, 1)) > 0.5).astype(np.float32)
    assert metrics.correct_count(single, binary, False) == np.count_nonzero((single > 0.5) == (binary > 0.5))


def test_saved_model_continues_training_exactly(tmp_path):
    """Saved after one epoch and loaded, a model's second epoch (Adam's slots and step count,
    the shuffling and dropout generator) is bit-identical to an uninterrupted run's."""
    x, y = _data(np.random.default_rng(107), 48)
    uninterrupted = _classifier(seed=8)
    uninterrupted.fit(x, y, epochs=2, batch_size=8, verbose=0)
    interrupted = _classifier(seed=8)
    interrupted.fit(x, y, epochs=1, batch_size=8, verbose=0)
    path = tmp_path / "half.nbnet"
    interrupted.save(path)
    restored = models.load_model(path)
    assert restored.optimizer.iterations == 6
    restored.fit(x, y, epochs=2, batch_size=8, verbose=0, initial_epoch=1)
    for resumed, reference in zip(restored.get_weights(), uninterrupted.get_weights()):
        np.testing.assert_array_equal(resumed, reference)


_CUDA_ADAM = textwrap.dedent("""
    import json
    import numpy as np
    from numba import cuda
    from nbnet.kernels.cuda import optim
    rng = np.random.default_rng(108)
    params = rng.standard_normal(64).astype(np.float32)
    grads = (rng.standard_normal((3, 64)) * 1e-6).astype(np.float32)
    p, m, v = (cuda.to_device(a) for a in (params, np.zeros(64, np.float32), np.zeros(64, np.float32)))
    for t, g in enumerate(grads, start=1):
        optim.adam_update(p, cuda.to_device(g), m, v, 0.01 * np.sqrt(1 - 0.999 ** t) / (1 - 0.9 ** t), 0.9, 0.999,
                          1e-7, 0.0)
    print(json.dumps({"params": params.tolist(), "grads": grads.tolist(), "after": p.copy_to_host().tolist()}))
""")


def test_cuda_adam_epsilon_decides_tiny_gradients_under_simulator():
    """The CUDA Adam kernel (under Numba's CUDA simulator, in a subprocess: the simulator
    must be on before numba.cuda is imported) with gradients near 1e-6, where epsilon's
    placement decides the step: Keras's lr * m_hat / (sqrt(v_hat) + eps_hat), eps on sqrt(v)."""
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    proc = subprocess.run([sys.executable, "-c", _CUDA_ADAM], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    params, grads = np.array(result["params"]), np.array(result["grads"])
    p, m, v = params.copy(), np.zeros(64), np.zeros(64)
    for t, g in enumerate(grads, start=1):
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        p = p - 0.01 * np.sqrt(1 - 0.999 ** t) / (1 - 0.9 ** t) * m / (np.sqrt(v) + 1e-7)
    np.testing.assert_allclose(np.array(result["after"]) - params, p - params, rtol=1e-3, atol=1e-7)


def test_fit_epoch_equals_minibatch_sgd_in_numpy():
    """One shuffled epoch of fit (batch 4 over 10 samples: a last batch of 2) equals
    mini-batch gradient descent in NumPy over the same order: every sample trains once,
    each batch's gradient is its own mean."""
    rng = np.random.default_rng(109)
    x = rng.standard_normal((10, 3)).astype(np.float32)
    y = rng.standard_normal((10, 2)).astype(np.float32)
    model = models.Sequential([layers.Dense(2, input_shape=(3,))], seed=2)
    model.compile(optimizer=optimizers.SGD(learning_rate=0.05), loss="mse")
    kernel, bias = (w.astype(np.float64) for w in model.get_weights())
    orders = []
    draw = model._epoch_order
    model._epoch_order = lambda *args: orders.append(draw(*args)) or orders[-1]
    model.fit(x, y, epochs=1, batch_size=4, verbose=0)
    assert sorted(orders[0]) == list(range(10))
    for start in range(0, 10, 4):
        batch = orders[0][start:start + 4]
        xb, yb = x[batch].astype(np.float64), y[batch]
        dout = 2.0 * (xb @ kernel + bias - yb) / yb.size
        kernel, bias = kernel - 0.05 * xb.T @ dout, bias - 0.05 * dout.sum(axis=0)
    got_kernel, got_bias = model.get_weights()
    np.testing.assert_allclose(got_kernel, kernel, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got_bias, bias, rtol=1e-5, atol=1e-6)


def test_regularized_step_matches_numpy():
    """A training step adds each regularizer's gradient (L2: 2*l2*w, L1: l1*sign(w)) to the
    loss gradient before the update, and reports the loss plus the penalties."""
    from nbnet import regularizers

    rng = np.random.default_rng(110)
    x = rng.standard_normal((6, 4)).astype(np.float32)
    y = rng.standard_normal((6, 3)).astype(np.float32)
    model = models.Sequential([layers.Dense(3, input_shape=(4,), kernel_regularizer=regularizers.L1L2(l2=0.1),
                                            bias_regularizer=regularizers.L1L2(l1=0.05))], seed=4)
    model.compile(optimizer=optimizers.SGD(learning_rate=0.1), loss="mse")
    kernel, bias = model.get_weights()
    bias = rng.uniform(-0.5, 0.5, 3).astype(np.float32)  # away from 0, where sign() jumps
    model.set_weights([kernel, bias])
    kernel, bias = kernel.astype(np.float64), bias.astype(np.float64)
    loss = model.train_on_batch(x, y)
    error = x @ kernel + bias - y
    penalty = 0.1 * np.sum(kernel ** 2) + 0.05 * np.sum(np.abs(bias))
    assert loss == pytest.approx(np.mean(error ** 2) + penalty, rel=1e-5)
    dout = 2.0 * error / y.size
    expected_kernel = kernel - 0.1 * (x.T @ dout + 2 * 0.1 * kernel)
    expected_bias = bias - 0.1 * (dout.sum(axis=0) + 0.05 * np.sign(bias))
    got_kernel, got_bias = model.get_weights()
    np.testing.assert_allclose(got_kernel, expected_kernel, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got_bias, expected_bias, rtol=1e-5, atol=1e-6)
