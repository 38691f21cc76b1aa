"""The reference model shipped with nbnet (models/mnist_cnn.nbnet, installed as nbnet.zoo,
the default MODEL of `nbnet evaluate`) has, on the full 10k MNIST test set, the test
accuracy README.md states for it. The figure is read from the README, so the two cannot
drift apart silently: retraining the model means updating the README, and the reverse."""

import re
from pathlib import Path

import numpy as np
import pytest

from nbnet.datasets import mnist
from nbnet.models import load_model
from nbnet.zoo import REFERENCE_MODEL

README = Path(__file__).resolve().parents[1] / "README.md"
# The README states 4 decimals; the test accuracy is a count of 10000 images.
TOLERANCE = 0.0005


def stated_accuracy():
    if not README.is_file():
        pytest.skip(f"no README.md at {README} (tests run outside the source tree)")
    found = re.findall(r"mnist_cnn\.nbnet[^\n]*?\(test accuracy (\d\.\d+)", README.read_text(encoding="utf-8"))
    assert len(found) == 1, ("README.md should state the reference model's test accuracy once, as "
                             f"'... mnist_cnn.nbnet` (test accuracy 0.NNNN, ...'; found {found}")
    return float(found[0])


def test_reference_model_has_the_test_accuracy_the_readme_states():
    stated = stated_accuracy()
    model = load_model(REFERENCE_MODEL)
    _, (x_test, y_test) = mnist.load_data(verbose=False)
    assert x_test.shape == (10000, 28, 28)
    x = mnist.model_input(x_test, model)  # what `nbnet evaluate` feeds it (uint8 here: it starts with a Rescaling)
    _, accuracy = model.evaluate(x, y_test.astype(np.int64), batch_size=1000, verbose=0)
    assert abs(accuracy - stated) <= TOLERANCE, (
        f"{REFERENCE_MODEL.name} has test accuracy {accuracy:.4f}, README.md states {stated}")
