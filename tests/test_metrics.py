"""Metrics in compile and fit: log names as Keras writes them, and values equal to the
same metric objects run standalone on the model's predictions."""

import numpy as np
import pytest

from nbnet import layers, metrics, models
from nbnet.errors import NbnetError


def binary_data(seed=0, count=96):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((count, 6)).astype(np.float32)
    y = (x[:, :2].sum(axis=1, keepdims=True) + 0.3 * rng.standard_normal((count, 1)) > 0).astype(np.float32)
    return x, y


def test_metric_objects_in_fit_log_under_their_names_and_evaluate_as_standalone():
    x, y = binary_data()
    model = models.Sequential([layers.Dense(8, activation="relu", input_shape=(6,)),
                               layers.Dense(1, activation="sigmoid")], seed=1)
    model.compile("adam", "binary_crossentropy",
                  metrics=["accuracy", metrics.Precision(name="precision"), metrics.AUC(name="auc"), "mae"])
    history = model.fit(x[:64], y[:64], epochs=2, batch_size=16, verbose=0, validation_data=(x[64:], y[64:]))
    assert sorted(history.history) == ["accuracy", "auc", "loss", "mae", "precision", "val_accuracy", "val_auc",
                                       "val_loss", "val_mae", "val_precision"]
    assert model.metrics_names == ["loss", "accuracy", "precision", "auc", "mae"]
    results = model.evaluate(x[64:], y[64:], verbose=0, return_dict=True)
    assert results["loss"] == pytest.approx(history.history["val_loss"][-1], rel=1e-6)
    predictions = model.predict(x[64:])
    for name, metric in (("accuracy", metrics.BinaryAccuracy()), ("precision", metrics.Precision()),
                         ("auc", metrics.AUC()), ("mae", metrics.MeanAbsoluteError())):
        assert results[name] == pytest.approx(float(metric(y[64:], predictions)), rel=1e-5, abs=1e-7), name
        assert history.history[f"val_{name}"][-1] == pytest.approx(results[name], rel=1e-5, abs=1e-7)
    listed = model.evaluate(x[64:], y[64:], verbose=0)
    assert listed == pytest.approx([results[name] for name in model.metrics_names])


def test_root_mean_squared_error_is_the_root_of_the_mean_squared_error(tmp_path):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((48, 4)).astype(np.float32)
    y = (x @ rng.standard_normal((4, 2))).astype(np.float32)
    model = models.Sequential([layers.Dense(2, input_shape=(4,))], seed=0)
    model.compile("adam", "mse", metrics=["root_mean_squared_error", metrics.MeanSquaredError(name="mse_metric")])
    history = model.fit(x, y, batch_size=16, epochs=2, verbose=0)
    assert history.history["root_mean_squared_error"][-1] == pytest.approx(
        np.sqrt(history.history["mse_metric"][-1]), rel=1e-5)
    results = model.evaluate(x, y, verbose=0, return_dict=True)
    assert results["root_mean_squared_error"] == pytest.approx(np.sqrt(results["loss"]), rel=1e-5)
    model.save(tmp_path / "model.keras")
    loaded = models.load_model(tmp_path / "model.keras")
    assert [type(m) for m in loaded.metrics] == [metrics.RootMeanSquaredError, metrics.MeanSquaredError]


def test_accuracy_counted_on_the_device_equals_the_standalone_metric():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((50, 5)).astype(np.float32)
    labels = rng.integers(0, 4, 50)
    model = models.Sequential([layers.Dense(4, activation="softmax", input_shape=(5,))], seed=0)
    model.compile("sgd", "sparse_categorical_crossentropy",
                  metrics=[metrics.SparseCategoricalAccuracy(name="acc"), metrics.SparseTopKCategoricalAccuracy(k=2)])
    loss, acc, top2 = model.evaluate(x, labels, verbose=0)
    predictions = model.predict(x)
    assert acc == pytest.approx(float(metrics.SparseCategoricalAccuracy()(labels, predictions)))
    assert top2 == pytest.approx(float(metrics.SparseTopKCategoricalAccuracy(k=2)(labels, predictions)))
    assert top2 >= acc


def test_metric_errors_name_what_was_received():
    model = models.Sequential([layers.Dense(2, activation="softmax", input_shape=(3,))])
    with pytest.raises(NbnetError, match=r"Unknown metric 'f1'.*accuracy.*precision"):
        model.compile("adam", "sparse_categorical_crossentropy", metrics=["f1"])
    with pytest.raises(NbnetError, match="share a name"):
        model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy", metrics.Accuracy()])
