"""What calling a model or a loss returns: a NumPy array that also answers ``.numpy()``,
as the tensors of Keras's backends do, so ``model(x).numpy()`` and
``loss_fn(y, logits).numpy()`` run unchanged."""

import numpy as np


class Tensor(np.ndarray):
    def numpy(self):
        return np.asarray(self).copy()


def as_tensor(values):
    return np.asarray(values).view(Tensor)
