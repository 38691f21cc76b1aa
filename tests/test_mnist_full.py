"""Full-MNIST acceptance runs (minutes): `pytest -m slow`. Not in the default suite."""

import numpy as np
import pytest

from nbnet import layers, models
from nbnet.datasets import mnist


@pytest.mark.slow
def test_classic_keras_cnn_script_reaches_99_percent():
    (x_train, y_train), (x_test, y_test) = mnist.load_data()
    x_train, x_test = x_train / np.float32(255), x_test / np.float32(255)
    model = models.Sequential([layers.Conv2D(32, (3, 3), activation='relu', input_shape=(28, 28, 1)), layers.MaxPooling2D((2, 2)), layers.Conv2D(64, (3, 3), activation='relu'), layers.MaxPooling2D((2, 2)), layers.Flatten(), layers.Dense(64, activation='relu'), layers.Dense(10, activation='softmax')])  # noqa: E501
    model.compile(optimizer='adam', loss='sparse_categorical_crossentropy', metrics=['accuracy'])
    model.fit(x_train, y_train, epochs=10, batch_size=128, verbose=2)
    test_loss, test_acc = model.evaluate(x_test, y_test)
    assert test_acc >= 0.99, test_acc
