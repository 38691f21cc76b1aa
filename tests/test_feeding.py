"""fit, evaluate and predict fed by batch sources (Keras 3's PyDataset, Python generators,
iterables of batches) instead of arrays: the same training when the batches are the same,
Keras's rules for steps and exhausted sources, and memory bounded by a batch."""

import tracemalloc
import warnings

import numpy as np
import pytest

import nbnet as keras
from nbnet import layers
from nbnet.errors import NbnetError

BATCH = 16


def data(count=100, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((count, 5)).astype(np.float32)
    return x, (x[:, 0] + 0.5 * x[:, 1] > 0).astype(np.int64)


def make(metrics=("accuracy",)):
    model = keras.Sequential([layers.Input((5,)), layers.Dense(8, activation="relu"),
                              layers.Dense(2, activation="softmax")], seed=3)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=list(metrics))
    return model


class Batches(keras.utils.PyDataset):
    def __init__(self, x, y, weights=None, **kwargs):
        super().__init__(**kwargs)
        self.x, self.y, self.weights, self.epochs_ended, self.read = x, y, weights, 0, []

    def __len__(self):
        return -(-len(self.x) // BATCH)

    def __getitem__(self, index):
        self.read.append(index)
        part = slice(index * BATCH, (index + 1) * BATCH)
        if self.weights is None:
            return self.x[part], self.y[part]
        return self.x[part], self.y[part], self.weights[part]

    def on_epoch_end(self):
        self.epochs_ended += 1


def endless(x, y):
    while True:
        for start in range(0, len(x), BATCH):
            yield x[start:start + BATCH], y[start:start + BATCH]


def same_weights(a, b):
    return all(np.array_equal(p, q) for p, q in zip(a.get_weights(), b.get_weights()))


def test_a_generator_and_a_pydataset_train_bit_for_bit_as_the_arrays():
    x, y = data()
    arrays = make()
    arrays.fit(x, y, batch_size=BATCH, epochs=3, shuffle=False, verbose=0)
    generator = make()
    generator.fit(endless(x, y), steps_per_epoch=7, epochs=3, verbose=0)
    dataset, batches = make(), Batches(x, y)
    history = dataset.fit(batches, epochs=3, shuffle=False, verbose=0)
    assert same_weights(arrays, generator) and same_weights(arrays, dataset)
    assert arrays.history_log == generator.history_log == dataset.history_log
    assert batches.epochs_ended == 3 and batches.read == list(range(7)) * 3
    assert sorted(history.history) == ["accuracy", "loss"]


def test_sample_and_class_weights_in_batches_weigh_as_with_arrays():
    x, y = data()
    weights = np.linspace(0.5, 2.0, len(x)).astype(np.float32)
    arrays, streamed = make(), make()
    arrays.fit(x, y, batch_size=BATCH, sample_weight=weights, shuffle=False, verbose=0)
    streamed.fit(Batches(x, y, weights), shuffle=False, verbose=0)
    assert same_weights(arrays, streamed)
    arrays, streamed = make(), make()
    arrays.fit(x, y, batch_size=BATCH, class_weight={0: 1.0, 1: 3.0}, shuffle=False, verbose=0)
    streamed.fit(endless(x, y), steps_per_epoch=7, class_weight={0: 1.0, 1: 3.0}, verbose=0)
    assert same_weights(arrays, streamed)


def test_a_pydataset_batch_order_is_shuffled_from_the_model_seed():
    x, y = data()
    first, second = Batches(x, y), Batches(x, y)
    make().fit(first, epochs=2, verbose=0)
    make().fit(second, epochs=2, verbose=0)
    assert first.read == second.read  # the model's seeded generator draws the order
    assert sorted(first.read[:7]) == list(range(7)) and first.read[:7] != list(range(7))


def test_validation_evaluate_and_predict_take_batch_sources():
    x, y = data()
    model = make()
    history = model.fit(Batches(x, y), epochs=2, verbose=0, validation_data=endless(x, y), validation_steps=7)
    assert history.history["val_loss"][-1] == pytest.approx(model.evaluate(x, y, verbose=0)[0], rel=1e-12)
    assert model.evaluate(Batches(x, y), verbose=0) == model.evaluate(x, y, verbose=0)
    assert model.evaluate(endless(x, y), steps=7, verbose=0) == model.evaluate(x, y, verbose=0)
    np.testing.assert_array_equal(model.predict(Batches(x, y)), model.predict(x))
    np.testing.assert_array_equal(model.predict((x[i:i + 10] for i in range(0, 100, 10))), model.predict(x))


def test_a_source_that_runs_out_ends_training_as_keras_does():
    x, y = data()
    model = make()
    once = ((x[i:i + BATCH], y[i:i + BATCH]) for i in range(0, len(x), BATCH))
    with pytest.warns(UserWarning, match="ran out of data at epoch 2"):
        history = model.fit(once, epochs=3, verbose=0)
    assert len(history.history["loss"]) == 1  # the first epoch read all 7 batches; the rest had none


def test_bad_uses_are_named():
    x, y = data()
    model = make()
    with pytest.raises(NbnetError, match="y= cannot be given with a batch source"):
        model.fit(Batches(x, y), y)
    with pytest.raises(NbnetError, match="validation_split needs arrays"):
        model.fit(Batches(x, y), validation_split=0.2)
    with pytest.raises(NbnetError, match="steps_per_epoch must be a positive number of batches, received 2.5"):
        model.fit(x, y, steps_per_epoch=2.5)
    with pytest.raises(NbnetError, match="batch 0 has no targets"):
        model.fit((x[i:i + BATCH] for i in range(0, 100, BATCH)), verbose=0)


def test_a_stream_larger_than_the_memory_limit_trains_in_bounded_memory():
    """400 batches of 1024 samples of 64 float32 features: 105 MB in all, made as they are
    read; the traced peak of the whole fit stays within 12 MB (a few batches)."""
    class Synthetic(keras.utils.PyDataset):
        def __len__(self):
            return 400

        def __getitem__(self, index):
            rng = np.random.default_rng(index)
            x = rng.standard_normal((1024, 64), dtype=np.float32)
            return x, (x[:, 0] > 0).astype(np.int64)

    model = keras.Sequential([layers.Input((64,)), layers.Dense(16, activation="relu"),
                              layers.Dense(2, activation="softmax")], seed=1)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(Synthetic(), steps_per_epoch=2, verbose=0)  # compiled and warm before measuring
    total = 400 * 1024 * 64 * 4
    tracemalloc.start()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            history = model.fit(Synthetic(), epochs=1, verbose=0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    limit = 12 * 2**20
    assert total > 8 * limit and peak < limit, (total, peak)
    assert len(history.history["loss"]) == 1
    held_out_x, held_out_y = Synthetic()[1000]
    assert model.evaluate(held_out_x, held_out_y, verbose=0)[1] > 0.9  # it learned: x[:, 0] > 0
