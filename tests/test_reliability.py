"""Bad input, corrupt files, interruption and divergence: clear errors, nothing lost."""

import numpy as np
import pytest

from nbnet import callbacks, layers, models, optimizers
from nbnet.errors import ModelFileError, NbnetError, ResourceError, TrainingDiverged, TrainingInterrupted


def mlp(seed=0, learning_rate=1e-3):
    model = models.Sequential([layers.Flatten(input_shape=(8, 8, 1)), layers.Dense(16, activation="relu"),
                               layers.Dropout(0.3), layers.Dense(4, activation="softmax")], seed=seed)
    model.compile(optimizers.Adam(learning_rate), "sparse_categorical_crossentropy", ["accuracy"])
    return model


def data(n=200, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random((n, 8, 8, 1), dtype=np.float32)
    return x, (x[:, :4].sum(axis=(1, 2, 3)) > x[:, 4:].sum(axis=(1, 2, 3))).astype(np.int64) * 2


class StopAt(callbacks.Callback):
    def __init__(self, epoch, step):
        self.epoch, self.step, self.current = epoch, step, None

    def on_epoch_begin(self, epoch, logs=None):
        self.current = epoch

    def on_train_batch_end(self, batch, logs=None):
        if (self.current, batch) == (self.epoch, self.step):
            self.model.stop_requested = 2


def test_interrupted_fit_resumes_bit_identically_mid_epoch(tmp_path):
    x, y = data()
    reference = mlp()
    reference.fit(x, y, epochs=3, batch_size=32, verbose=0)

    model = mlp()
    with pytest.raises(TrainingInterrupted, match=r"epoch 2, step 3/7") as stopped:
        model.fit(x, y, epochs=3, batch_size=32, verbose=0, callbacks=[StopAt(epoch=1, step=2)])
    assert stopped.value.signal_number == 2
    model.save(tmp_path / "ckpt.nbnet")
    restored = models.load_model(tmp_path / "ckpt.nbnet")
    assert restored.epochs_trained == 1 and restored.resume_point["step"] == 3
    restored.fit(x, y, epochs=3, batch_size=32, verbose=0, initial_epoch=restored.epochs_trained)
    for got, expected in zip(restored.get_weights(), reference.get_weights()):
        np.testing.assert_array_equal(got, expected)
    assert restored.history_log == reference.history_log


def test_divergence_stops_before_writing_nan_weights():
    x, y = data()
    x[5] = 3e38  # an outlier near float32's limit: the first matmul overflows to inf
    model = mlp(learning_rate=1e-3)
    before = model.get_weights()
    # As Keras with TerminateOnNaN, fit warns, ends the epoch and returns its History.
    with pytest.warns(RuntimeWarning, match=r"non-finite gradients in .*learning rate 0.001"):
        history = model.fit(x, y, epochs=3, batch_size=200, verbose=0, shuffle=False)
    assert len(history.history["loss"]) == 1 and np.isnan(history.history["loss"][0])
    assert isinstance(model.diverged, TrainingDiverged) and model.optimizer.iterations == 0
    for got, expected in zip(model.get_weights(), before):
        np.testing.assert_array_equal(got, expected)  # the bad step was never applied
    with pytest.raises(TrainingDiverged, match="non-finite gradients"):  # train_on_batch still raises
        model.train_on_batch(x[:200], y[:200])


def test_batch_too_large_for_memory_fails_before_the_first_step():
    model = models.Sequential([layers.Conv2D(512, 3, padding="same", input_shape=(64, 64, 3)), layers.Flatten(),
                               layers.Dense(2, activation="softmax")])
    model.compile("sgd", "sparse_categorical_crossentropy")
    x = np.zeros((2, 64, 64, 3), np.float32)
    with pytest.raises(ResourceError, match=r"batch_size=.* GiB .*use a batch size of at most"):
        model._check_memory(10**6)
    model.fit(x, np.zeros(2, np.int64), verbose=0)  # a small batch is fine


@pytest.mark.parametrize("x,y,message", [
    (np.array([["a"] * 64] * 4).reshape(4, 8, 8, 1), np.zeros(4), "numeric array"),
    (np.zeros((0, 8, 8, 1)), np.zeros(0), "empty"),
    (np.zeros((4, 8, 8, 1)), np.eye(4)[[0, 1, 2, 3]], r"class ids of shape \(N,\).*categorical_crossentropy"),
    (np.zeros((4, 8, 8, 1)), np.array([0.5, 1, 2, 3]), "non-integer"),
    (np.zeros((4, 9, 8, 1)), np.zeros(4), r"expects input shape \(None, 8, 8, 1\)"),
])
def test_bad_training_input_is_refused_with_the_argument_named(x, y, message):
    with pytest.raises(NbnetError, match=message):
        mlp().fit(x, y, verbose=0)


def test_integer_images_are_cast_like_keras():
    x, y = data(16)
    model = mlp()
    model.fit((x * 255).astype(np.uint8), y, verbose=0)
    assert model.predict((x * 255).astype(np.uint8)).dtype == np.float32


def test_truncated_or_flipped_model_files_give_clear_errors_and_never_half_written(tmp_path):
    path = tmp_path / "m.nbnet"
    model = mlp()
    model.save(path)
    good = path.read_bytes()
    for cut in (0, 10, len(good) // 3, len(good) // 2, len(good) - 5):
        path.write_bytes(good[:cut])
        with pytest.raises(ModelFileError, match="truncated or corrupt|not an nbnet"):
            models.load_model(path)
    rng = np.random.default_rng(0)
    for _ in range(20):
        data_bytes = bytearray(good)
        position = int(rng.integers(0, len(good)))
        data_bytes[position] ^= 0xFF
        path.write_bytes(bytes(data_bytes))
        try:
            loaded = models.load_model(path)
        except ModelFileError:
            continue
        # A flip the zip format cannot see (e.g. in a comment field) must still load a valid model.
        np.testing.assert_array_equal(loaded.predict(np.zeros((1, 8, 8, 1))), model.predict(np.zeros((1, 8, 8, 1))))

    class Boom(Exception):
        pass

    path.write_bytes(good)
    original = model.layers[1].get_weights

    def exploding():
        raise Boom()

    model.layers[1].get_weights = exploding
    model.layers[1]._weight = lambda key: exploding()
    with pytest.raises(Boom):
        model.save(path)
    assert path.read_bytes() == good and [p.name for p in tmp_path.iterdir()] == ["m.nbnet"]
    model.layers[1].get_weights = original


def test_newer_format_and_foreign_files_are_recognised(tmp_path):
    import json

    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, a=np.zeros(3))
    with pytest.raises(ModelFileError, match="not an nbnet model file"):
        models.load_model(foreign)
    newer = tmp_path / "newer.nbnet"
    meta = {"format": "nbnet-model", "format_version": 99, "nbnet_version": "9.0"}
    with open(newer, "wb") as handle:
        np.savez(handle, __nbnet__=np.frombuffer(json.dumps(meta).encode(), np.uint8))
    with pytest.raises(ModelFileError, match="format 99, written by nbnet 9.0.*Upgrade nbnet"):
        models.load_model(newer)
    with pytest.raises(ModelFileError, match="does not exist"):
        models.load_model(tmp_path / "missing.nbnet")
