"""Keras-style scripts (tests/keras_scripts/) run unchanged but for their import lines,
on slices of the real data sets (3000 training and 1000 test images), and reach their end
with the results a Keras user would expect."""

import csv
import runpy
from pathlib import Path

import numpy as np
import pytest

from nbnet import utils
from nbnet.datasets import fashion_mnist, mnist

SCRIPTS = Path(__file__).parent / "keras_scripts"
FASHION_DIR = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "fashion-mnist"


def sliced(load):
    (x_train, y_train), (x_test, y_test) = load()
    return lambda *args, **kwargs: ((x_train[:3000], y_train[:3000]), (x_test[:1000], y_test[:1000]))


@pytest.fixture(scope="module")
def mnist_loader():
    return sliced(lambda: mnist.load_data(verbose=False))


@pytest.fixture(scope="module")
def fashion_loader():
    if not FASHION_DIR.is_dir():
        pytest.skip(f"Fashion-MNIST is not at {FASHION_DIR}")
    return sliced(lambda: fashion_mnist.load_data(data_dir=str(FASHION_DIR), verbose=False))


def run_script(name, monkeypatch, tmp_path, mnist_loader=None, fashion_loader=None):
    if mnist_loader is not None:
        monkeypatch.setattr(mnist, "load_data", mnist_loader)
    if fashion_loader is not None:
        monkeypatch.setattr(fashion_mnist, "load_data", fashion_loader)
    monkeypatch.chdir(tmp_path)
    # The scripts set no seed: seed them as set_seed(0) would (the thresholds below hold over
    # seeds 0-5), and leave the global seed as it was for the tests after these.
    monkeypatch.setattr(utils, "_seed_sequence", np.random.SeedSequence(0))
    return runpy.run_path(str(SCRIPTS / name), run_name="__main__")


def test_keras3_mlp_with_callbacks(monkeypatch, tmp_path, mnist_loader, capsys):
    namespace = run_script("mnist_mlp_keras3.py", monkeypatch, tmp_path, mnist_loader=mnist_loader)
    out = capsys.readouterr().out
    assert "Total params: 235,146" in out  # 784*256+256 + 256*128+128 + 128*10+10, as Keras counts them
    assert namespace["score"][1] > 0.8  # 0.86-0.89 over seeds 0-5 (chance: 0.1)
    assert namespace["model"].layers[2].activation == "relu"  # given as keras.activations.relu
    # ReduceLROnPlateau adds the learning rate to the logs, and History (last, as in Keras) records it.
    assert sorted(namespace["history"].history) == ["accuracy", "learning_rate", "loss", "val_accuracy", "val_loss"]


def test_tensorflow_quickstart_on_fashion_mnist(monkeypatch, tmp_path, fashion_loader, capsys):
    namespace = run_script("fashion_quickstart.py", monkeypatch, tmp_path, fashion_loader=fashion_loader)
    out = capsys.readouterr().out
    # An untrained 10-way classifier: the loss sits near log(10).
    (untrained,) = [line for line in out.splitlines() if line.startswith("untrained loss:")]
    assert 1.0 < float(untrained.split(":")[1]) < 5.0
    assert namespace["test_acc"] > 0.70
    # The model used as a layer: its logits through a softmax.
    predictions, logits = namespace["predictions"], namespace["model"].predict(namespace["test_images"])
    assert predictions.shape == (1000, 10)
    np.testing.assert_allclose(predictions.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(predictions.argmax(axis=1), logits.argmax(axis=1))
    assert (predictions.argmax(axis=1) == namespace["test_labels"]).mean() == pytest.approx(namespace["test_acc"])
    assert "Test accuracy:" in out


def test_keras2_cnn_with_backend_and_loss_function(monkeypatch, tmp_path, mnist_loader):
    namespace = run_script("mnist_cnn_keras2.py", monkeypatch, tmp_path, mnist_loader=mnist_loader)
    assert namespace["x_train"].shape == (3000, 28, 28, 1)
    assert namespace["model"].optimizer.__class__.__name__ == "Adadelta"
    assert namespace["score"][1] > 0.75  # 0.82-0.89 over seeds 0-5


def test_custom_callbacks_learning_rate_and_freezing(monkeypatch, tmp_path, mnist_loader, capsys):
    namespace = run_script("custom_callbacks.py", monkeypatch, tmp_path, mnist_loader=mnist_loader)
    out = capsys.readouterr().out
    steps_per_epoch = -(-2400 // 64)  # validation_split=0.2 of 3000
    # on_batch_end, the Keras 2 hook, runs once per training batch.
    assert len(namespace["losses"].losses) == 3 * steps_per_epoch
    assert sorted(namespace["history"].history) == ["acc", "loss", "val_acc", "val_loss"]
    # 0.1, halved at epoch 1 and 2 by the callback, times 0.9 at epochs 1 and 2 by the schedule.
    (final,) = [line for line in out.splitlines() if line.startswith("final learning rate:")]
    assert float(final.split(":")[1]) == pytest.approx(0.1 * 0.25 * 0.81, rel=1e-5)
    with open(tmp_path / "training.log", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["epoch"] for row in rows] == ["0", "1", "2"]
    np.testing.assert_allclose([float(row["acc"]) for row in rows], namespace["history"].history["acc"], rtol=1e-6)
    assert namespace["before"] is not None and len(namespace["model"].trainable_weights) == 2
    assert np.array_equal(namespace["before"], namespace["model"].get_layer("hidden").get_weights()[0])
    assert set(namespace["results"]) == {"loss", "acc"} and namespace["results"]["acc"] > 0.8  # 0.87-0.89


def test_functional_resnet_and_two_heads(monkeypatch, tmp_path, mnist_loader, capsys):
    namespace = run_script("functional_resnet.py", monkeypatch, tmp_path, mnist_loader=mnist_loader)
    out = capsys.readouterr().out
    assert "Connected to" in out and "add (Add)" in out
    assert namespace["score"][1] > 0.8
    results = namespace["results"]
    assert set(results) == {"loss", "digit_loss", "even_loss", "digit_accuracy", "even_accuracy"}
    assert results["loss"] == pytest.approx(results["digit_loss"] + 0.5 * results["even_loss"], rel=1e-5)
    assert results["digit_accuracy"] > 0.5 and results["even_accuracy"] > 0.6
    assert namespace["digit_probabilities"].shape == (1000, 10)
    assert namespace["even_probabilities"].shape == (1000, 1)
    assert (tmp_path / "small_resnet.keras").is_file()
    # The .keras file keeps the compile settings: a loss on logits comes back as one.
    reloaded = namespace["reloaded"]
    assert reloaded.loss.name == "sparse_categorical_crossentropy" and reloaded.loss.from_logits
