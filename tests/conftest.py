import numpy as np
import pytest


@pytest.fixture(scope="session")
def mnist_slice():
    """3000 training and 1000 test images of the real MNIST, scaled to [0, 1], (N, 28, 28, 1)."""
    from nbnet.datasets import mnist

    (x_train, y_train), (x_test, y_test) = mnist.load_data(verbose=False)
    scale = np.float32(1 / 255)
    return ((x_train[:3000, ..., None] * scale, y_train[:3000].astype(np.int64)),
            (x_test[:1000, ..., None] * scale, y_test[:1000].astype(np.int64)))
