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


def test_one_sample_predicts_on_one_numba_thread_and_the_count_is_restored():
    numba = pytest.importorskip("numba")
    if numba.get_num_threads() < 2:
        pytest.skip("one Numba thread only")
    model = models.Sequential([layers.Input((4,)), layers.Dense(3, activation="relu")], seed=0)
    x = np.random.default_rng(0).random((5, 4), dtype=np.float32)
    before = numba.get_num_threads()
    seen = []
    probe = callbacks.LambdaCallback(on_predict_batch_begin=lambda batch, logs: seen.append(numba.get_num_threads()))
    one = model.predict(x[:1], callbacks=[probe])
    several = model.predict(x, callbacks=[probe])
    assert seen == [1, before] and numba.get_num_threads() == before
    np.testing.assert_allclose(one, several[:1], rtol=1e-6)

    def interrupt(batch, logs):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        model.predict(x[:1], callbacks=[callbacks.LambdaCallback(on_predict_batch_begin=interrupt)])
    assert numba.get_num_threads() == before


def test_the_thread_count_read_directly_is_numbas():
    """threads.numba_thread_count reads Numba's thread-local count without its locks: the
    same answer as numba.get_num_threads() after every set_num_threads, and in a new thread."""
    import threading

    import numba

    from nbnet.threads import numba_thread_count

    before = numba.get_num_threads()
    try:
        for count in sorted({1, before}):
            numba.set_num_threads(count)
            assert numba_thread_count() == numba.get_num_threads() == count
            seen = []
            thread = threading.Thread(target=lambda: seen.append((numba_thread_count(), numba.get_num_threads())))
            thread.start()
            thread.join()
            assert seen[0][0] == seen[0][1]
    finally:
        numba.set_num_threads(before)
