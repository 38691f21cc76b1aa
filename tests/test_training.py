"""End-to-end training on real MNIST data, and the Keras-style model API around it."""

import numpy as np
import pytest

from nbnet import callbacks, layers, models, optimizers, utils
from nbnet.errors import NbnetError, ShapeError


def small_cnn(seed=0):
    model = models.Sequential([
        layers.Conv2D(8, (3, 3), activation="relu", input_shape=(28, 28, 1)),
        layers.MaxPooling2D((2, 2)),
        layers.Conv2D(16, (3, 3), activation="relu"),
        layers.MaxPooling2D((2, 2)),
        layers.Flatten(),
        layers.Dropout(0.25),
        layers.Dense(32, activation="relu"),
        layers.Dense(10, activation="softmax"),
    ], seed=seed)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def test_small_cnn_learns_mnist(mnist_slice):
    (x_train, y_train), (x_test, y_test) = mnist_slice
    model = small_cnn()
    history = model.fit(x_train, y_train, epochs=3, batch_size=64, verbose=0, validation_split=0.1)
    assert set(history.history) == {"accuracy", "loss", "val_accuracy", "val_loss"}
    assert all(isinstance(v, float) for v in history.history["loss"])
    assert history.history["loss"][-1] < history.history["loss"][0]
    loss, accuracy = model.evaluate(x_test, y_test, verbose=0)
    assert accuracy > 0.8, f"a small CNN on 2700 images should pass 80% test accuracy (chance: 10%), got {accuracy:.3f}"
    predictions = model.predict(x_test[:50])
    assert predictions.shape == (50, 10) and predictions.dtype == np.float32
    np.testing.assert_allclose(predictions.sum(axis=1), 1.0, rtol=1e-5)


def test_keras_script_ports_with_only_the_import_changed(mnist_slice):
    (x_train, y_train), (x_test, y_test) = mnist_slice
    x_train, x_test = x_train[..., 0], x_test[..., 0]  # (N, 28, 28), as Keras users pass them
    utils.set_seed(3)
    model = models.Sequential([layers.Conv2D(32, (3, 3), activation='relu', input_shape=(28, 28, 1)), layers.MaxPooling2D((2, 2)), layers.Conv2D(64, (3, 3), activation='relu'), layers.MaxPooling2D((2, 2)), layers.Flatten(), layers.Dense(64, activation='relu'), layers.Dense(10, activation='softmax')])  # noqa: E501
    model.compile(optimizer='adam', loss='sparse_categorical_crossentropy', metrics=['accuracy'])
    model.fit(x_train[:1000], y_train[:1000], epochs=1, batch_size=128, verbose=0)
    test_loss, test_acc = model.evaluate(x_test, y_test, verbose=0)
    assert 0.0 < test_loss < 2.3 and test_acc > 0.5


def test_save_load_predicts_identically_and_resumes_like_an_uninterrupted_run(mnist_slice, tmp_path):
    (x_train, y_train), (x_test, _) = mnist_slice
    x, y = x_train[:1024], y_train[:1024]
    uninterrupted = small_cnn(seed=7)
    uninterrupted.fit(x, y, epochs=2, batch_size=128, verbose=0)

    interrupted = small_cnn(seed=7)
    interrupted.fit(x, y, epochs=1, batch_size=128, verbose=0)
    path = tmp_path / "model.nbnet"
    interrupted.save(path)
    restored = models.load_model(path)
    np.testing.assert_array_equal(restored.predict(x_test[:100]), interrupted.predict(x_test[:100]))
    assert restored.epochs_trained == 1 and restored.optimizer.iterations == 8

    restored.fit(x, y, epochs=2, batch_size=128, verbose=0, initial_epoch=1)
    for resumed, reference in zip(restored.get_weights(), uninterrupted.get_weights()):
        np.testing.assert_array_equal(resumed, reference)
    assert restored.history_log["loss"] == uninterrupted.history_log["loss"]


def test_same_seed_gives_bit_identical_weights(mnist_slice):
    (x_train, y_train), _ = mnist_slice
    runs = []
    for _ in range(2):
        utils.set_seed(11)
        model = small_cnn(seed=None)
        model.fit(x_train[:512], y_train[:512], epochs=1, batch_size=64, verbose=0)
        runs.append(model.get_weights())
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)


def test_get_weights_uses_keras_layouts_and_set_weights_round_trips():
    model = models.Sequential([layers.Conv2D(4, (3, 2), input_shape=(6, 5, 3)), layers.BatchNormalization(),
                               layers.Flatten(), layers.Dense(2)])
    model.build()
    shapes = [w.shape for w in model.get_weights()]
    assert shapes == [(3, 2, 3, 4), (4,), (4,), (4,), (4,), (4,), (4 * 4 * 4, 2), (2,)]
    new = [np.full(s, i, np.float32) for i, s in enumerate(shapes)]
    model.set_weights(new)
    for got, expected in zip(model.get_weights(), new):
        np.testing.assert_array_equal(got, expected)
    with pytest.raises(ShapeError, match="dense"):
        model.set_weights(new[:-1] + [np.zeros(3)])


def test_summary_table_counts_parameters():
    model = models.Sequential([layers.Dense(5, input_shape=(3,)), layers.BatchNormalization(), layers.Dense(2)])
    model.build()
    text = model.summary(print_fn=lambda _: None)
    assert "(None, 5)" in text and "Dense" in text
    assert "Total params: 52" in text  # (3*5+5) + 4*5 (BN: gamma, beta, moving mean, variance) + (5*2+2)
    assert "Trainable params: 42" in text and "Non-trainable params: 10" in text


def test_train_on_batch_and_predict_on_batch():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.float32)
    model = models.Sequential([layers.Dense(8, activation="tanh", input_shape=(4,)),
                               layers.Dense(1, activation="sigmoid")], seed=0)
    model.compile(optimizer=optimizers.SGD(learning_rate=0.5), loss="binary_crossentropy", metrics=["accuracy"])
    first_loss, _ = model.train_on_batch(x, y)
    for _ in range(200):
        loss, accuracy = model.train_on_batch(x, y)
    assert loss < first_loss and accuracy >= 0.9
    np.testing.assert_array_equal(model.predict_on_batch(x), model.predict(x))


def test_early_stopping_restores_best_weights_and_checkpoint_saves(mnist_slice, tmp_path):
    (x_train, y_train), _ = mnist_slice

    class WorsenAfterFirstEpoch(callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            logs["val_loss"] = 1.0 + epoch  # only the first epoch is "best"

    model = small_cnn()
    seen = {}

    class Snapshot(callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.setdefault(epoch, self.model.get_weights())

    stopper = callbacks.EarlyStopping(monitor="val_loss", patience=1, restore_best_weights=True)
    checkpoint = callbacks.ModelCheckpoint(str(tmp_path / "ckpt-{epoch:02d}.nbnet"))
    history = model.fit(x_train[:256], y_train[:256], epochs=10, batch_size=64, verbose=0, validation_split=0.25,
                        callbacks=[Snapshot(), WorsenAfterFirstEpoch(), stopper, checkpoint])
    assert len(history.history["loss"]) == 2  # best at epoch 1, patience 1: stops after epoch 2, as Keras 3
    for got, best in zip(model.get_weights(), seen[0]):
        np.testing.assert_array_equal(got, best)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-01.nbnet", "ckpt-02.nbnet"]


def test_model_checkpoint_files_hold_the_weights_of_their_epoch(tmp_path):
    """Each checkpoint file holds the model's weights (BatchNormalization's moving statistics
    included) as they were at the end of the epoch it is named after, and its epoch count;
    with save_best_only, only improving epochs are written, and a fixed name ends up
    holding the last improving epoch's weights."""
    rng = np.random.default_rng(11)
    x = rng.random((96, 6, 6, 1), dtype=np.float32)
    y = (x[:, :3].sum(axis=(1, 2, 3)) > x[:, 3:].sum(axis=(1, 2, 3))).astype(np.int64)
    model = models.Sequential([layers.Conv2D(4, 3, activation="relu", input_shape=(6, 6, 1)),
                               layers.BatchNormalization(), layers.Flatten(), layers.Dropout(0.2),
                               layers.Dense(2, activation="softmax")], seed=3)
    model.compile(optimizers.Adam(0.01), "sparse_categorical_crossentropy", ["accuracy"])
    planted_val_loss = [3.0, 1.0, 2.0, 0.5]  # epochs 1, 2 and 4 improve; 3 does not

    class PlantValLoss(callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            logs["val_loss"] = planted_val_loss[epoch]

    at_epoch_end = {}

    class Record(callbacks.Callback):  # after the checkpoints: sees what they saved
        def on_epoch_end(self, epoch, logs=None):
            at_epoch_end[epoch + 1] = self.model.get_weights()

    every = callbacks.ModelCheckpoint(tmp_path / "every-{epoch:02d}.nbnet")
    best = callbacks.ModelCheckpoint(str(tmp_path / "best-{epoch:02d}-{val_loss:.1f}.nbnet"), save_best_only=True)
    latest_best = callbacks.ModelCheckpoint(str(tmp_path / "best.nbnet"), monitor="val_loss", save_best_only=True)
    model.fit(x, y, epochs=4, batch_size=32, verbose=0, callbacks=[PlantValLoss(), every, best, latest_best, Record()])

    assert sorted(at_epoch_end) == [1, 2, 3, 4]
    for epoch in (2, 3, 4):  # training moved every weight array between epochs, so a wrong epoch shows
        assert all(not np.array_equal(a, b) for a, b in zip(at_epoch_end[epoch - 1], at_epoch_end[epoch]))
    expected_files = {f"every-{e:02d}.nbnet": e for e in (1, 2, 3, 4)}
    expected_files.update({"best-01-3.0.nbnet": 1, "best-02-1.0.nbnet": 2, "best-04-0.5.nbnet": 4, "best.nbnet": 4})
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(expected_files)
    for name, epoch in expected_files.items():
        saved = models.load_model(tmp_path / name)
        assert saved.epochs_trained == epoch, name
        weights = saved.get_weights()
        assert len(weights) == len(at_epoch_end[epoch]), name
        for got, expected in zip(weights, at_epoch_end[epoch]):
            np.testing.assert_array_equal(got, expected, err_msg=name)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # inf * 0, on purpose
@pytest.mark.parametrize("bad_at", [None, 0, 65_535, 65_536, 99_999, 131_070])
def test_the_gradient_checks_and_zero_fill_of_many_values_run_on_every_thread(bad_at):
    """From PARALLEL_MIN_VALUES values the finite check and the zero fill split the values
    among the threads: a NaN or Inf anywhere, at a part's edge too, still halts the step."""
    from nbnet.kernels import training as training_kernels

    values = np.ones(131_071, np.float32)
    assert values.size >= training_kernels.PARALLEL_MIN_VALUES
    if bad_at is not None:
        values[bad_at] = np.nan if bad_at % 2 else -np.inf
    halt = np.zeros(1, np.int32)
    training_kernels.check_finite(values, np.array([2.5]), 7, halt)
    assert halt[0] == (0 if bad_at is None else 7)
    training_kernels.fill_zero(values)
    assert not values.any()


def test_clear_errors_for_bad_input():
    model = models.Sequential([layers.Dense(3, input_shape=(4,), activation="softmax")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    x = np.zeros((5, 4), np.float32)
    with pytest.raises(ShapeError, match=r"expects input shape \(None, 4\).*\(5, 3\)"):
        model.predict(np.zeros((5, 3)))
    with pytest.raises(ShapeError, match="same number of samples"):
        model.fit(x, np.zeros(4, int), verbose=0)
    with pytest.raises(NbnetError, match=r"labels must be class ids in \[0, 2\]"):
        model.fit(x, np.array([0, 1, 2, 3, 0]), verbose=0)
    with pytest.raises(NbnetError, match="NaN or Inf"):
        model.predict(np.full((2, 4), np.nan))
    with pytest.raises(NbnetError, match="sample 3 contains NaN or Inf"):
        model.predict(np.vstack([np.full((3, 4), 3e38, np.float32), [[0, np.inf, 0, 0]]]))
    # Finite values whose sum overflows float32 are not mistaken for Inf.
    assert model.predict(np.full((3, 4), 3e38, np.float32), verbose=0).shape == (3, 3)
    # Past 65536 values one vectorised pass checks the whole array (kernels/training.all_finite).
    large = np.full((20000, 4), 3e38, np.float32)
    assert model.predict(large, batch_size=5000, verbose=0).shape == (20000, 3)
    for bad in (np.nan, -np.inf):
        large[12345, 2] = bad
        with pytest.raises(NbnetError, match="sample 12345 contains NaN or Inf"):
            model.predict(large)
    with pytest.raises(NbnetError, match="batch_size"):
        model.fit(x, np.zeros(5, int), batch_size=0, verbose=0)
    per_pixel = models.Sequential([layers.Conv2D(2, 3, input_shape=(8, 8, 1)), layers.Dense(3)])  # as Keras allows
    assert tuple(per_pixel.output_shape)[-3:] == (6, 6, 3)
    with pytest.raises(NbnetError, match="Flatten"):  # but classes per pixel are not one row per sample
        per_pixel.compile("adam", "sparse_categorical_crossentropy")


def test_uint8_input_trains_as_its_float32_scaling_and_stays_uint8(monkeypatch):
    """A model that starts with Rescaling takes uint8 pixels: fit keeps them uint8 (no float
    copy of the data set) and computes exactly what a pre-scaled float32 input gives."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (40, 6, 6, 1), dtype=np.uint8)
    labels = rng.integers(0, 3, 40)

    def model(rescale):
        stack = [layers.Rescaling(1 / 255, input_shape=(6, 6, 1))] if rescale else []
        stack += [layers.Conv2D(2, 3, activation="relu", **({} if rescale else {"input_shape": (6, 6, 1)})),
                  layers.Flatten(), layers.Dense(3, activation="softmax")]
        net = models.Sequential(stack, seed=1)
        net.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        return net

    reference = model(rescale=False)
    reference.fit(pixels * np.float32(1 / 255), labels, batch_size=16, epochs=2, verbose=0, validation_split=0.25)
    rescaled = model(rescale=True)
    prepared = []
    original = models.Sequential._prepare_x
    monkeypatch.setattr(models.Sequential, "_prepare_x",
                        lambda self, x, argument="x": prepared.append(original(self, x, argument)) or prepared[-1])
    rescaled.fit(pixels, labels, batch_size=16, epochs=2, verbose=0, validation_split=0.25)
    assert prepared[0][0].dtype == np.uint8 and np.shares_memory(prepared[0][0], pixels)
    for got, expected in zip(rescaled.get_weights(), reference.get_weights()):
        np.testing.assert_array_equal(got, expected)
    assert rescaled.history_log == reference.history_log
    np.testing.assert_array_equal(rescaled.predict(pixels), reference.predict(pixels * np.float32(1 / 255)))
    assert rescaled.evaluate(pixels, labels, verbose=0) == reference.evaluate(pixels * np.float32(1 / 255), labels,
                                                                              verbose=0)


def test_model_checkpoint_every_few_batches_saves_weights_files_of_that_moment(tmp_path):
    rng = np.random.default_rng(8)
    x, y = rng.standard_normal((40, 6)).astype(np.float32), rng.integers(0, 3, 40)
    model = models.Sequential([layers.Dense(5, activation="relu", input_shape=(6,)),
                               layers.Dense(3, activation="softmax")], seed=4)
    model.compile("adam", "sparse_categorical_crossentropy")
    seen = {}

    class Recorder(callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_train_batch_end(self, batch, logs=None):
            seen[(self.epoch + 1, batch + 1)] = self.model.get_weights()

    checkpoint = callbacks.ModelCheckpoint(str(tmp_path / "w-{epoch}-{batch}.weights.h5"), save_weights_only=True,
                                           save_freq=3)
    model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0, callbacks=[checkpoint, Recorder()])
    # Five batches an epoch, a save every third batch counted across epochs, as Keras counts.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w-1-3.weights.h5", "w-2-1.weights.h5", "w-2-4.weights.h5"]
    for epoch, batch in ((1, 3), (2, 1), (2, 4)):
        restored = models.Sequential([layers.Dense(5, activation="relu", input_shape=(6,)),
                                      layers.Dense(3, activation="softmax")], seed=9)
        restored.load_weights(tmp_path / f"w-{epoch}-{batch}.weights.h5")
        for got, expected in zip(restored.get_weights(), seen[(epoch, batch)]):
            np.testing.assert_array_equal(got, expected)
    with pytest.raises(NbnetError, match=r"must end in \.weights\.h5"):
        callbacks.ModelCheckpoint(str(tmp_path / "w.nbnet"), save_weights_only=True)


def test_a_model_used_as_a_layer_shares_its_weights_both_ways():
    rng = np.random.default_rng(11)
    x, y = rng.standard_normal((40, 5)).astype(np.float32), rng.integers(0, 3, 40)
    inner = models.Sequential([layers.Dense(6, activation="relu", input_shape=(5,)), layers.Dense(3)], seed=2)
    inner.compile("adam", "mse")
    outer = models.Sequential([inner, layers.Softmax()])
    assert outer.input_shape == (None, 5) and outer.layers[:2] == inner.layers
    outer.compile("adam", "sparse_categorical_crossentropy")
    outer.fit(x, y, epochs=2, batch_size=8, verbose=0)  # trains the inner model's layers
    logits = inner.predict(x)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    np.testing.assert_allclose(outer.predict(x), e / e.sum(axis=1, keepdims=True), rtol=1e-5, atol=1e-7)
    inner.fit(x, np.eye(3, dtype=np.float32)[y], epochs=1, batch_size=8, verbose=0)  # and back
    np.testing.assert_array_equal(outer.layers[0].get_weights()[0], inner.get_weights()[0])
    logits = inner.predict(x)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    np.testing.assert_allclose(outer.predict(x), e / e.sum(axis=1, keepdims=True), rtol=1e-5, atol=1e-7)
    with pytest.raises(ShapeError, match=r"built for input shape \(None, 5\), but in model .* receives \(None, 7\)"):
        models.Sequential([layers.Input((7,)), inner.layers[0]])


def test_backup_and_restore_resumes_an_interrupted_fit_where_it_stopped(tmp_path):
    rng = np.random.default_rng(12)
    x, y = rng.standard_normal((48, 5)).astype(np.float32), rng.integers(0, 3, 48)

    def model():
        net = models.Sequential([layers.Dense(6, activation="relu", input_shape=(5,)),
                                 layers.Dense(3, activation="softmax")], seed=3)
        net.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
        return net

    reference = model()
    reference.fit(x, y, epochs=4, batch_size=16, verbose=0)

    class CrashAfterEpoch(callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise KeyboardInterrupt

    backup = callbacks.BackupAndRestore(tmp_path / "backup")
    first = model()
    with pytest.raises(KeyboardInterrupt):
        first.fit(x, y, epochs=4, batch_size=16, verbose=0, callbacks=[backup, CrashAfterEpoch()])
    assert (tmp_path / "backup" / "latest.nbnet").exists()
    resumed = model()  # a fresh process would build the model anew
    seen = []
    history = resumed.fit(x, y, epochs=4, batch_size=16, verbose=0,
                          callbacks=[callbacks.BackupAndRestore(tmp_path / "backup"),
                                     callbacks.LambdaCallback(on_epoch_begin=lambda epoch, logs: seen.append(epoch))])
    assert seen == [2, 3] and len(history.history["loss"]) == 2
    for got, expected in zip(resumed.get_weights(), reference.get_weights()):
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)
    assert not (tmp_path / "backup" / "latest.nbnet").exists()  # a completed fit deletes its backup


def test_initializer_objects_seed_layers_and_survive_saving(tmp_path):
    from nbnet import initializers

    def model(seed):
        return models.Sequential([
            layers.Dense(6, input_shape=(5,), kernel_initializer=initializers.HeNormal(seed=3),
                         bias_initializer=initializers.Constant(0.25)),
            layers.Dense(2, kernel_initializer=initializers.RandomUniform(-0.1, 0.1))], seed=seed)

    first, second = model(0), model(1)
    np.testing.assert_array_equal(first.layers[0].get_weights()[0], second.layers[0].get_weights()[0])  # own seed
    np.testing.assert_array_equal(first.layers[0].get_weights()[1], 0.25)
    assert np.abs(first.layers[1].get_weights()[0]).max() <= 0.1
    assert not np.array_equal(first.layers[1].get_weights()[0], second.layers[1].get_weights()[0])  # the model's
    first.save(tmp_path / "m.nbnet")
    restored = models.load_model(tmp_path / "m.nbnet")
    assert restored.get_config() == first.get_config()
    assert restored.layers[0].get_config()["kernel_initializer"] == {"class_name": "HeNormal", "config": {"seed": 3}}
    with pytest.raises(NbnetError, match=r"unknown initializer 'he_gaussian'.*lecun_normal"):
        layers.Dense(2, kernel_initializer="he_gaussian")


def test_every_keras_hook_runs_in_order():
    rng = np.random.default_rng(13)
    x, y = rng.standard_normal((20, 3)).astype(np.float32), rng.integers(0, 2, 20)
    model = models.Sequential([layers.Dense(2, activation="softmax", input_shape=(3,))], seed=0)
    model.compile("sgd", "sparse_categorical_crossentropy", metrics=["accuracy"])
    calls = []

    class Recorder(callbacks.Callback):
        pass

    recorder = Recorder()
    for hook in [name for name in dir(callbacks.Callback) if name.startswith("on_")]:
        setattr(recorder, hook, lambda *args, _hook=hook: calls.append((_hook,) + tuple(
            a if isinstance(a, int) else sorted(a) for a in args)))
    model.fit(x[:12], y[:12], batch_size=6, epochs=1, verbose=0, validation_data=(x[12:], y[12:]),
              callbacks=[recorder])
    assert calls == [("on_train_begin", []), ("on_epoch_begin", 0, []),
                     ("on_train_batch_begin", 0, []), ("on_train_batch_end", 0, ["accuracy", "loss"]),
                     ("on_train_batch_begin", 1, []), ("on_train_batch_end", 1, ["accuracy", "loss"]),
                     ("on_test_begin", []), ("on_test_batch_begin", 0, []), ("on_test_batch_end", 0, ["accuracy", "loss"]),
                     ("on_test_batch_begin", 1, []), ("on_test_batch_end", 1, ["accuracy", "loss"]),
                     ("on_test_end", ["accuracy", "loss"]),
                     ("on_epoch_end", 0, ["accuracy", "loss", "val_accuracy", "val_loss"]),
                     ("on_train_end", ["accuracy", "loss", "val_accuracy", "val_loss"])]
    calls.clear()
    loss, accuracy = model.evaluate(x, y, batch_size=8, verbose=0, callbacks=[recorder])
    assert [c[0] for c in calls] == ["on_test_begin"] + ["on_test_batch_begin", "on_test_batch_end"] * 3 + ["on_test_end"]
    calls.clear()
    model.predict(x, batch_size=8, callbacks=[recorder])
    assert [c[:2] for c in calls] == [("on_predict_begin", [])] + [
        step for i in range(3) for step in (("on_predict_batch_begin", i), ("on_predict_batch_end", i))] + [
        ("on_predict_end", [])]


def test_validation_freq_and_batch_size():
    rng = np.random.default_rng(14)
    x, y = rng.standard_normal((30, 3)).astype(np.float32), rng.integers(0, 2, 30)
    model = models.Sequential([layers.Dense(2, activation="softmax", input_shape=(3,))], seed=0)
    model.compile("sgd", "sparse_categorical_crossentropy")
    batches = []
    history = model.fit(x, y, epochs=4, batch_size=10, verbose=0, validation_split=0.4, validation_freq=2,
                        validation_batch_size=4, callbacks=[callbacks.LambdaCallback(
                            on_test_batch_end=lambda batch, logs: batches.append(batch))])
    assert len(history.history["loss"]) == 4 and len(history.history["val_loss"]) == 2  # epochs 2 and 4
    assert batches == [0, 1, 2] * 2  # 12 validation samples in batches of 4
    with pytest.raises(NbnetError, match="steps_per_epoch must be a positive number of batches, received 0"):
        model.fit(x, y, steps_per_epoch=0, verbose=0)


def test_steps_per_epoch_on_arrays_goes_on_through_the_data_as_keras():
    """Keras 3 (checked with keras 3.15): 5 batches, steps_per_epoch=3: epochs take batches
    0-2, then 3-4 (ran out: a warning, the epoch ends), then 0-2 of a new pass, ..."""
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((10, 3)).astype(np.float32), rng.integers(0, 2, 10)

    def make():
        model = models.Sequential([layers.Dense(2, activation="softmax", input_shape=(3,))], seed=0)
        model.compile("sgd", "sparse_categorical_crossentropy")
        return model

    counted, steps = make(), []
    with pytest.warns(UserWarning, match="ran out of data after 2 of steps_per_epoch=3 steps") as caught:
        history = counted.fit(x, y, batch_size=2, steps_per_epoch=3, epochs=4, shuffle=False, verbose=0,
                              callbacks=[callbacks.LambdaCallback(
                                  on_epoch_begin=lambda epoch, logs: steps.append(0),
                                  on_train_batch_begin=lambda batch, logs: steps.__setitem__(-1, steps[-1] + 1))])
    assert steps == [3, 2, 3, 2] and len(history.history["loss"]) == 4 and len(caught) == 2
    by_hand = make()
    for batch in [0, 1, 2, 3, 4] * 2:
        by_hand.train_on_batch(x[2 * batch:2 * batch + 2], y[2 * batch:2 * batch + 2])
    for mine, theirs in zip(counted.get_weights(), by_hand.get_weights()):
        np.testing.assert_array_equal(mine, theirs)
    # evaluate and predict read the first ``steps`` batches, as Keras.
    assert counted.evaluate(x, y, batch_size=2, steps=2, verbose=0) == counted.evaluate(x[:4], y[:4], verbose=0)
    assert counted.predict(x, batch_size=3, steps=2).shape == (6, 2)


def test_a_built_model_refuses_another_input_shape_and_stays_usable():
    model = models.Sequential([layers.Dense(2, input_shape=(5,))], seed=0)
    before = model.get_weights()
    with pytest.raises(ShapeError, match=r"built for input shape \(None, 5\).*\(None, 7\)"):
        model.build((None, 7))
    assert model.input_shape == (None, 5) and model.predict(np.zeros((1, 5), np.float32)).shape == (1, 2)
    for got, expected in zip(model.get_weights(), before):
        np.testing.assert_array_equal(got, expected)


def test_pop_and_keras_weight_attributes():
    model = models.Sequential([layers.Input((4,)), layers.Dense(3, activation="relu", name="layer1"),
                               layers.BatchNormalization(name="bn"), layers.Dense(5, name="layer3")], seed=0)
    kept = model.get_layer("layer1").get_weights()
    popped = model.pop()
    assert popped.name == "layer3" and [layer.name for layer in model.layers] == ["layer1", "bn"]
    assert model.output_shape == (None, 3) and model.predict(np.ones((2, 4), np.float32)).shape == (2, 3)
    for got, expected in zip(model.get_layer("layer1").get_weights(), kept):  # the others keep their weights
        np.testing.assert_array_equal(got, expected)
    dense, norm = model.layers
    np.testing.assert_array_equal(dense.kernel.numpy(), kept[0])
    assert dense.bias.shape == (3,) and norm.moving_variance.shape == (3,)
    assert len(dense.weights) == 2 and len(norm.trainable_weights) == 2 and len(norm.non_trainable_weights) == 2
    assert len(model.weights) == 6
    with pytest.raises(AttributeError, match="no attribute 'kernal'"):
        dense.kernal


def test_a_smaller_last_batch_computes_in_the_full_batches_buffers():
    """The uneven last batch of a fit or predict takes views of the buffers the full
    batches made (no new buffers each call), and gives what it gives alone."""
    rng = np.random.default_rng(3)
    model = models.Sequential([layers.Input((6, 6, 2)), layers.Conv2D(4, 3, activation="tanh"), layers.MaxPooling2D(),
                               layers.Flatten(), layers.Dense(3, activation="softmax")], seed=1)
    model.compile("sgd", "sparse_categorical_crossentropy")
    x, y = rng.standard_normal((10, 6, 6, 2)).astype(np.float32), rng.integers(0, 3, 10)
    alone = np.concatenate([model.predict(x[i:i + 1]) for i in range(10)])
    assert np.abs(model.predict(x, batch_size=4) - alone).max() < 1e-6
    dense = model.layers[-1]
    full = dense._buffer("y", (4, 3), np.float32)
    part = dense._buffer("y", (2, 3), np.float32)
    assert part.base is full and part.shape == (2, 3) and dense._buffer("y", (2, 3), np.float32) is part
    assert dense._buffer("y", (4, 3), np.float32) is full
    model.fit(x, y, batch_size=4, epochs=2, verbose=0)
    assert np.isfinite(model.predict(x, batch_size=3)).all()
    bigger = dense._buffer("y", (8, 3), np.float32)  # a larger batch gets a buffer of its own
    views = [entry for key, entry in dense._buffers.items() if isinstance(key[0], tuple)]
    assert bigger.shape == (8, 3) and bigger.base is None and not any(owner is full for owner, _ in views)
    assert dense._buffer("y", (2, 3), np.float32).base is bigger
