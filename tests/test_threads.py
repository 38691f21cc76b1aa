"""BLAS is held to one thread while nbnet computes, and the user's setting comes back."""

import numpy as np
import pytest
from threadpoolctl import ThreadpoolController

from nbnet import callbacks, layers, models


def blas_threads(controller):
    return [library.num_threads for library in controller.select(user_api="blas").lib_controllers]


def test_blas_runs_one_thread_inside_predict_and_fit_and_the_setting_is_restored():
    controller = ThreadpoolController()
    if not blas_threads(controller):
        pytest.skip("no BLAS library that threadpoolctl can see")
    model = models.Sequential([layers.Input((4,)), layers.Dense(3)], seed=0)
    model.compile("sgd", "mse")
    x, y = np.ones((8, 4), np.float32), np.zeros((8, 3), np.float32)
    with controller.limit(limits=2, user_api="blas"):
        seen = []
        probe = callbacks.LambdaCallback(on_predict_batch_begin=lambda batch, logs: seen.append(blas_threads(controller)),
                                         on_train_batch_begin=lambda batch, logs: seen.append(blas_threads(controller)))
        model.predict(x, batch_size=4, callbacks=[probe])
        model.fit(x, y, batch_size=4, epochs=1, verbose=0, callbacks=[probe])
        assert len(seen) == 4 and all(set(counts) == {1} for counts in seen)
        assert set(blas_threads(controller)) == {2}
