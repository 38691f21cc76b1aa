"""Pictures: learning curves from `nbnet train --plots`, the confusion matrix and the
worst-misclassified grid from `nbnet evaluate --plots`, through matplotlib (an extra)."""

import sys

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("matplotlib")
from PIL import Image  # noqa: E402

from nbnet import plots  # noqa: E402
from nbnet.cli import main  # noqa: E402
from nbnet.datasets import mnist  # noqa: E402
from nbnet.errors import NbnetError  # noqa: E402


def png_size(path):
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.size


def test_learning_curves(tmp_path):
    history = {"loss": [2.0, 1.2, 0.9, 0.8], "accuracy": [0.4, 0.6, 0.7, 0.75],
               "val_loss": [1.5, 1.1, 1.0, 1.05], "val_accuracy": [0.5, 0.62, 0.66, 0.65]}
    path = plots.learning_curves(history, tmp_path / "curves" / "learning_curves.png", title="tiny")
    width, height = png_size(path)
    assert width > 2 * height > 600  # two panels side by side
    # validation every other epoch (validation_freq=2) and no accuracy: one panel
    path = plots.learning_curves({"loss": [3, 2, 1, 0.5], "val_loss": [2.5, 1.0]}, tmp_path / "loss.png")
    assert png_size(path)[0] < 700
    with pytest.raises(NbnetError, match="No training history"):
        plots.learning_curves({}, tmp_path / "none.png")


def test_confusion_matrix_and_worst_misclassified(tmp_path):
    rng = np.random.default_rng(0)
    true = rng.integers(0, 3, 60)
    predicted = np.where(rng.random(60) < 0.8, true, (true + 1) % 3)
    probabilities = np.full((60, 3), 0.1)
    probabilities[np.arange(60), predicted] = 0.8
    confusion = np.zeros((3, 3), np.int64)
    np.add.at(confusion, (true, predicted), 1)
    names = ["cat", "dog", "T-shirt/top"]
    assert png_size(plots.confusion_matrix(confusion, tmp_path / "cm.png", names, title="pets"))[0] > 400
    images = rng.integers(0, 255, (60, 12, 10, 3)).astype(np.uint8)
    wrong = int((true != predicted).sum())
    path = plots.worst_misclassified(images, true, predicted, probabilities, tmp_path / "worst.png", names, count=8)
    assert 0 < wrong and png_size(path)[0] > 500
    # nothing misclassified: the picture says so; images may be fetched lazily
    path = plots.worst_misclassified(lambda indices: images[indices], true, true, probabilities,
                                     tmp_path / "none.png")
    assert png_size(path)


def test_train_and_evaluate_write_their_pictures(tmp_path):
    (x, y), (x_test, y_test) = mnist.load_data(verbose=False)
    np.savez(tmp_path / "digits.npz", x_train=x[:400], y_train=y[:400], x_test=x_test[:200], y_test=y_test[:200])
    runner = CliRunner()
    result = runner.invoke(main, ["train", "--data", str(tmp_path / "digits.npz"), "--epochs", "3", "--seed", "0",
                                  "--validation-split", "0.25", "--verbose", "0", "--plots", str(tmp_path / "plots"),
                                  "--output", str(tmp_path / "digits.nbnet")])
    assert result.exit_code == 0, result.output
    curves = tmp_path / "plots" / "learning_curves.png"
    assert f"Saved learning curves to {curves}" in result.output and png_size(curves)
    result = runner.invoke(main, ["evaluate", str(tmp_path / "digits.nbnet"), "--data", str(tmp_path / "digits.npz"),
                                  "--plots", str(tmp_path / "plots")])
    assert result.exit_code == 0, result.output
    for name in ("confusion_matrix.png", "misclassified.png"):
        assert f"Saved {tmp_path / 'plots' / name}" in result.output and png_size(tmp_path / "plots" / name)


def test_without_matplotlib_the_error_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(NbnetError, match=r"pip install 'nbnet\[plots\]'"):
        plots.learning_curves({"loss": [1.0]}, tmp_path / "x.png")
    # refused before any training starts
    result = CliRunner().invoke(main, ["train", "--plots", str(tmp_path), "--epochs", "1"])
    assert result.exit_code == 1 and "nbnet[plots]" in result.output and "Epoch" not in result.output
