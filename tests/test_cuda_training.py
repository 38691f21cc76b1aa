"""Training on the GPU path (``device='cuda'``) against the same training on the CPU.

Without a GPU, ``device='cuda'`` runs every kernel in Numba's CUDA simulator; the tests
here train tiny networks both ways from the same seed and require the same weights,
optimizer state, layer state, history and predictions, within float32 tolerances (the
GPU sums in other orders: tiled matmuls, two-pass reductions). The plain run checks the
device errors and re-runs this module under the simulator (see ``simulator.py``).
"""

import os
import sys

import numpy as np
import pytest

from nbnet import layers, metrics, models, optimizers, regularizers
from nbnet.callbacks import ModelCheckpoint
from nbnet.errors import NbnetError, TrainingDiverged

try:
    from .simulator import ON_CUDA, SIMULATED, plain_only, run_under_simulator, sim_only, small_launches
except ImportError:  # tests/ is not a package
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from simulator import ON_CUDA, SIMULATED, plain_only, run_under_simulator, sim_only, small_launches

# A few steps of float32 training with sums in another order than the CPU's.
RTOL, ATOL = 2e-4, 2e-5


@plain_only
def test_cuda_training_under_simulator(request):
    run_under_simulator(request)


@plain_only
def test_cuda_without_a_gpu_is_a_clear_error():
    from nbnet.kernels.cuda import available

    usable, reason = available()
    if usable:
        pytest.skip("a GPU is usable here")
    model = models.Sequential([layers.Dense(2, input_shape=(3,))])
    with pytest.raises(NbnetError, match=r"device='cuda' was requested, but .*device='cpu'"):
        model.compile(optimizer="sgd", loss="mse", device="cuda")
    with pytest.raises(NbnetError, match=r"Unknown device 'tpu'"):
        model.to("tpu")
    model.compile(optimizer="sgd", loss="mse", device="auto")
    assert model.device == "cpu" and "device='auto'" in model.device_message and reason in model.device_message


def cnn(seed, learning_rate=0.01):
    """Both Conv2D paths (direct for a 3x3x1 field, im2col for 3x3x3), max pooling, a
    fused softmax + cross-entropy."""
    model = models.Sequential([
        layers.Conv2D(3, 3, activation="relu", input_shape=(8, 8, 1)),
        layers.Conv2D(2, 3, padding="same", activation="relu"),
        layers.MaxPooling2D(),
        layers.Flatten(),
        layers.Dense(3, activation="softmax"),
    ], seed=seed)
    model.compile(optimizer=optimizers.Adam(learning_rate), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


def mixed(seed):
    """Regularizer, BatchNormalization (moving statistics), Dropout (masks hashed from a host-drawn key),
    average pooling, SGD with momentum, a sigmoid output fused with binary cross-entropy."""
    model = models.Sequential([
        layers.AveragePooling2D(2, input_shape=(4, 4, 2)),
        layers.Flatten(),
        layers.Dense(5, activation="tanh", kernel_regularizer=regularizers.l2(0.01)),
        layers.BatchNormalization(),
        layers.Dropout(0.3),
        layers.Dense(1, activation="sigmoid"),
    ], seed=seed)
    model.compile(optimizer=optimizers.SGD(0.05, momentum=0.9), loss="binary_crossentropy", metrics=["accuracy"])
    return model


def image_data(count=10, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((count, 8, 8, 1), dtype=np.float32), rng.integers(0, 3, count)


def assert_same_model(gpu, cpu_model):
    for got, expected in zip(gpu.get_weights(), cpu_model.get_weights()):
        np.testing.assert_allclose(got, expected, rtol=RTOL, atol=ATOL)
    assert gpu.optimizer.iterations == cpu_model.optimizer.iterations
    for name, value in cpu_model.optimizer.slots.items():
        assert isinstance(gpu.optimizer.slots[name], np.ndarray)
        np.testing.assert_allclose(gpu.optimizer.slots[name], value, rtol=RTOL, atol=ATOL)
    for key, values in cpu_model.history_log.items():
        np.testing.assert_allclose(gpu.history_log[key], values, rtol=RTOL, atol=ATOL)


if ON_CUDA:
    @pytest.fixture(autouse=True, scope="module")
    def tiny_launches():
        with small_launches():
            yield


@sim_only
def test_cnn_trains_on_cuda_as_on_cpu():
    x, y = image_data()
    reference = cnn(seed=3)
    reference.fit(x, y, batch_size=4, epochs=2, verbose=0)
    gpu = cnn(seed=3)
    gpu.compile(optimizer=optimizers.Adam(0.01), loss="sparse_categorical_crossentropy", metrics=["accuracy"],
                device="cuda", steps_per_execution=2)  # 3 steps an epoch: one full run of 2, one of 1
    assert gpu.device == "cuda"
    gpu.fit(x, y, batch_size=4, epochs=2, verbose=0)
    assert_same_model(gpu, reference)
    # Between calls the weights are host arrays again, the layers back on the CPU.
    assert isinstance(gpu.flat_params, np.ndarray) and all(layer.ops.name == "cpu" for layer in gpu.layers)
    np.testing.assert_allclose(gpu.predict(x), reference.predict(x), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(gpu.evaluate(x, y, verbose=0), reference.evaluate(x, y, verbose=0), rtol=RTOL)


@sim_only
def test_state_dropout_and_regularizers_on_cuda_as_on_cpu():
    rng = np.random.default_rng(1)
    x = rng.random((12, 4, 4, 2), dtype=np.float32)
    y = (x.reshape(12, -1).sum(axis=1) > 16).astype(np.float32)
    reference = mixed(seed=5)
    reference.fit(x, y, batch_size=5, epochs=2, verbose=0, validation_split=0.25)
    gpu = mixed(seed=5).to("cuda")
    gpu.fit(x, y, batch_size=5, epochs=2, verbose=0, validation_split=0.25)
    assert_same_model(gpu, reference)
    assert "val_loss" in gpu.history_log
    np.testing.assert_allclose(gpu.layers[3].state["moving_variance"], reference.layers[3].state["moving_variance"],
                               rtol=RTOL)
    np.testing.assert_allclose(gpu.train_on_batch(x[:4], y[:4]), reference.train_on_batch(x[:4], y[:4]), rtol=RTOL)


@sim_only
def test_a_normalisation_and_its_pool_on_cuda_as_on_cpu():
    """Conv2D -> BatchNormalization -> relu -> 2x2 MaxPooling2D: the CPU runs the pool in
    the norm's passes (kernels/normalization_pool.py), the GPU runs them apart."""
    x, y = image_data(count=8)

    def model():
        net = models.Sequential([layers.Input((8, 8, 1)), layers.Conv2D(3, 3, use_bias=False),
                                 layers.BatchNormalization(), layers.Activation("relu"), layers.MaxPooling2D(2),
                                 layers.Flatten(), layers.Dense(3, activation="softmax")], seed=2)
        net.compile(optimizer=optimizers.SGD(0.1), loss="sparse_categorical_crossentropy")
        return net

    reference = model()
    reference.fit(x, y, batch_size=4, epochs=2, verbose=0)
    assert reference.layers[1].pool_after is reference.layers[3] and reference.layers[1]._pooled
    gpu = model().to("cuda")
    gpu.fit(x, y, batch_size=4, epochs=2, verbose=0)
    assert gpu.layers[1].pool_after is gpu.layers[3] and not gpu.layers[1]._pooled  # apart on the GPU
    assert_same_model(gpu, reference)


def reshaping(seed, optimizer="nadam"):
    """Zero padding, global max and average pooling, Reshape, a Keras metric object counted
    on the host, one of the newer optimizers."""
    model = models.Sequential([
        layers.Input((6, 6, 1)), layers.ZeroPadding2D(((1, 0), (0, 2))), layers.Conv2D(4, 3, activation="relu"),
        layers.GlobalMaxPooling2D(keepdims=True), layers.Reshape((2, 2, 1)), layers.GlobalAveragePooling2D(),
        layers.Dense(3, activation="softmax")], seed=seed)
    if optimizer == "clipped_sgd":
        optimizer = optimizers.SGD(0.05, momentum=0.9, clipnorm=0.05, weight_decay=0.01)
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy",
                  metrics=["accuracy", metrics.SparseTopKCategoricalAccuracy(k=2)])
    return model


@sim_only
@pytest.mark.parametrize("optimizer", ["nadam", "adagrad", "adadelta", "adamax", "rmsprop", "clipped_sgd"])
def test_reshaping_layers_metrics_and_optimizers_on_cuda_as_on_cpu(optimizer):
    rng = np.random.default_rng(6)
    x, y = rng.random((8, 6, 6, 1), dtype=np.float32), rng.integers(0, 3, 8)
    reference = reshaping(seed=2, optimizer=optimizer)
    reference.fit(x, y, batch_size=4, epochs=2, verbose=0)
    gpu = reshaping(seed=2, optimizer=optimizer).to("cuda")
    gpu.fit(x, y, batch_size=4, epochs=2, verbose=0)
    assert_same_model(gpu, reference)
    assert "sparse_top_k_categorical_accuracy" in gpu.history_log


@sim_only
def test_sample_and_class_weights_on_cuda_as_on_cpu():
    x, y = image_data(8, seed=4)
    weights = np.random.default_rng(5).uniform(0, 2, 8).astype(np.float32)
    for extra in ({"sample_weight": weights}, {"class_weight": {0: 0.5, 2: 3.0}}):
        reference = cnn(seed=6)
        reference.fit(x, y, batch_size=5, epochs=1, verbose=0, validation_data=(x[:3], y[:3], weights[:3]), **extra)
        gpu = cnn(seed=6).to("cuda")
        gpu.fit(x, y, batch_size=5, epochs=1, verbose=0, validation_data=(x[:3], y[:3], weights[:3]), **extra)
        assert_same_model(gpu, reference)
        np.testing.assert_allclose(gpu.evaluate(x, y, sample_weight=weights, verbose=0),
                                   reference.evaluate(x, y, sample_weight=weights, verbose=0), rtol=RTOL)


@sim_only
def test_cpu_model_continues_on_cuda_and_back(tmp_path):
    x, y = image_data(8)
    reference = cnn(seed=4)
    reference.fit(x, y, batch_size=4, epochs=3, verbose=0)

    model = cnn(seed=4)
    model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    model.save(tmp_path / "cpu.nbnet")
    moved = models.load_model(tmp_path / "cpu.nbnet").to("cuda")
    # The checkpoint callback saves at the epoch's end, in the middle of a GPU fit.
    moved.fit(x, y, batch_size=4, epochs=2, initial_epoch=1, verbose=0,
              callbacks=[ModelCheckpoint(str(tmp_path / "gpu.nbnet"))])
    back = models.load_model(tmp_path / "gpu.nbnet")
    assert back.device == "cpu" and back.epochs_trained == 2
    for got, expected in zip(back.get_weights(), moved.get_weights()):
        np.testing.assert_array_equal(got, expected)
    back.fit(x, y, batch_size=4, epochs=3, initial_epoch=2, verbose=0)
    for got, expected in zip(back.get_weights(), reference.get_weights()):
        np.testing.assert_allclose(got, expected, rtol=RTOL, atol=ATOL)


@sim_only
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning",
                            "ignore:invalid value encountered:RuntimeWarning")  # the simulator's threads
def test_divergence_on_cuda_keeps_the_last_good_weights():
    x, y = image_data(8)
    x[5] = 3e38  # with all-positive first-layer weights, overflows to inf in that layer
    model = cnn(seed=2)
    kernel, bias = model.layers[0].get_weights()
    model.layers[0].set_weights([np.abs(kernel) + 0.5, bias])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", device="cuda", steps_per_execution=4)
    model.train_on_batch(x[:4], y[:4])
    after_first = model.get_weights()
    with pytest.warns(RuntimeWarning, match=r"optimizer step 2: .*non-finite gradients in conv2d"):
        history = model.fit(x[4:], y[4:], batch_size=4, epochs=1, verbose=0, shuffle=False)
    assert np.isnan(history.history["loss"][-1]) and isinstance(model.diverged, TrainingDiverged)
    assert model.optimizer.iterations == 1
    for got, expected in zip(model.get_weights(), after_first):
        np.testing.assert_array_equal(got, expected)


@pytest.mark.skipif(not SIMULATED, reason="the simulator's own behaviour")
def test_auto_device_under_the_simulator_is_the_cpu():
    model = models.Sequential([layers.Dense(2, input_shape=(3,))]).to("auto")
    assert model.device == "cpu" and "simulator" in model.device_message


@sim_only
def test_uint8_pixels_on_cuda_as_on_cpu():
    """The uint8 training set goes to the GPU as uint8; batches become float32 as gathered."""
    rng = np.random.default_rng(6)
    pixels, labels = rng.integers(0, 256, (9, 6, 6, 1), dtype=np.uint8), rng.integers(0, 2, 9)

    def model():
        net = models.Sequential([layers.Rescaling(1 / 255, input_shape=(6, 6, 1)), layers.Flatten(),
                                 layers.Dense(2, activation="softmax")], seed=7)
        net.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        return net

    reference, gpu = model(), model().to("cuda")
    reference.fit(pixels, labels, batch_size=4, epochs=1, verbose=0)
    gpu.fit(pixels, labels, batch_size=4, epochs=1, verbose=0)
    assert_same_model(gpu, reference)


def graph(seed, weights=None):
    """A functional model on two inputs: a residual conv block with BatchNormalization, a
    shared Dense called twice, Concatenate, Subtract, Multiply, Maximum and Average, and
    two outputs (a fused softmax and a linear one) with weighted losses."""
    image = layers.Input((6, 6, 1))
    vector = layers.Input((4,))
    x = layers.Conv2D(3, 3, padding="same", activation="relu")(image)
    # No bias before BatchNormalization: its gradient is zero up to rounding, which Adam's
    # first steps (g / (|g| + eps)) would blow up into device-dependent noise.
    y = layers.BatchNormalization()(layers.Conv2D(3, 3, padding="same", use_bias=False)(x))
    x = layers.MaxPooling2D()(layers.Activation("relu")(layers.add([x, y])))
    x = layers.Flatten()(x)
    shared = layers.Dense(4, activation="tanh")
    a, b = shared(vector), shared(layers.Dense(4)(vector))
    merged = layers.concatenate([x, layers.subtract([a, b]), layers.multiply([a, b]), layers.maximum([a, b]),
                                 layers.average([a, b])])
    classes = layers.Dense(3, activation="softmax", name="classes")(merged)  # names: the history's keys
    value = layers.Dense(1, name="value")(merged)
    model = models.Model([image, vector], [classes, value], seed=seed)
    if weights is not None:
        model.set_weights(weights)
    return model


@sim_only
def test_graph_with_two_inputs_and_outputs_trains_on_cuda_as_on_cpu():
    rng = np.random.default_rng(4)
    x = [rng.random((10, 6, 6, 1), dtype=np.float32), rng.standard_normal((10, 4)).astype(np.float32)]
    y = [rng.integers(0, 3, 10), rng.standard_normal((10, 1)).astype(np.float32)]
    reference = graph(seed=5)
    gpu = graph(seed=5, weights=reference.get_weights())
    for model, device in ((reference, None), (gpu, "cuda")):
        model.compile(optimizer=optimizers.Adam(0.01), loss=["sparse_categorical_crossentropy", "mse"],
                      loss_weights=[1.0, 0.5], metrics=[["accuracy"], ["mae"]], device=device)
        model.fit(x, y, batch_size=4, epochs=2, verbose=0)
    assert gpu.device == "cuda"
    assert_same_model(gpu, reference)
    for got, expected in zip(gpu.predict(x), reference.predict(x)):
        np.testing.assert_allclose(got, expected, rtol=RTOL, atol=ATOL)
