"""Small predicts replayed from a recorded program (nbnet/inference_program.py): the same
bits as the layers' own pass, the weights read live, and no program where the layers
compute outside the device module."""

import numba
import numpy as np
import pytest

import functional_architectures
from nbnet import callbacks, inference_program, layers, models
from nbnet.devices import cpu
from nbnet.kernels import activations, few_rows
from nbnet.kernels.activations import LINEAR


def small_net(extra=()):
    net = models.Sequential([
        layers.Conv2D(8, 3, activation="relu", input_shape=(10, 10, 2)),
        layers.MaxPooling2D(2),
        layers.Conv2D(16, 3, padding="same", use_bias=False),
        layers.BatchNormalization(),
        layers.Activation("relu"),
        layers.Flatten(),
        layers.Dropout(0.3),
        *extra,
        layers.Dense(5, activation="tanh"),
        layers.Dense(3, activation="softmax"),
    ], seed=4)
    net.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    return net


def images(count, seed):
    return np.random.default_rng(seed).standard_normal((count, 10, 10, 2)).astype(np.float32)


def layers_pass(net, x):
    """The layers' own inference pass, no program involved."""
    return np.array(net._forward([np.ascontiguousarray(x)], training=False)[0])


def programs(net):
    return net._plan.programs.recorded()


def test_a_shape_met_again_replays_its_kernel_calls_with_the_same_bits(monkeypatch):
    net = small_net()
    first = net.predict(images(1, 0), verbose=0)
    assert programs(net) == []  # a one-off predict records nothing
    for seed in range(1, 4):
        x = images(1, seed)
        np.testing.assert_array_equal(net.predict(x, verbose=0), layers_pass(net, x))
    (program,) = programs(net)
    assert len(program.calls) >= 5
    # The device module's wrappers that declare it are recorded as the call (or calls) they
    # make: a small Dense layer of one row its few-row kernel.
    recorded = [function for function, _, _ in program.calls]
    assert recorded.count(few_rows._serial_dense) == 2 and cpu.dense_forward not in recorded
    # Replayed: no layer's forward runs.
    for layer in net._plan.call_objects():
        monkeypatch.setattr(layer, "forward", lambda *args, **kwargs: pytest.fail("a layer ran"))
    x = images(1, 9)
    replayed = net.predict(x, verbose=0)
    # With callbacks the predict takes its chunked path, and replays there.
    batches = []
    watched = net.predict(x, verbose=0, callbacks=[callbacks.LambdaCallback(
        on_predict_batch_end=lambda batch, logs: batches.append(batch))])
    monkeypatch.undo()
    assert batches == [0]
    np.testing.assert_array_equal(replayed, layers_pass(net, x))
    np.testing.assert_array_equal(watched, replayed)
    assert not np.array_equal(replayed, first)
    # Each small batch size has its program; model(x) takes it too.
    x4 = images(4, 5)
    for _ in range(2):
        np.testing.assert_array_equal(net(x4).numpy(), layers_pass(net, x4))
    assert len(programs(net)) == 2
    # Past few_rows.FEW_ROWS_MAX rows a Dense layer is a product and an activation pass.
    x12 = images(12, 6)
    for _ in range(2):
        np.testing.assert_array_equal(net.predict(x12, verbose=0), layers_pass(net, x12))
    recorded = [function for function, _, _ in programs(net)[2].calls]
    assert recorded.count(np.matmul) == 2 and activations._bias_activation_blocks in recorded
    assert activations._softmax_rows in recorded


def test_training_and_new_weights_reach_the_replayed_predict():
    net, twin = small_net(), small_net()
    x = images(1, 1)
    for _ in range(2):
        net.predict(x, verbose=0)
    assert programs(net)
    batch, labels = images(16, 2), np.arange(16) % 3
    net.fit(batch, labels, epochs=2, batch_size=8, verbose=0)  # the weights and BN's statistics move in place
    twin.set_weights(net.get_weights())
    np.testing.assert_array_equal(net.predict(x, verbose=0), layers_pass(twin, x))
    weights = [w * 0.5 for w in net.get_weights()]
    net.set_weights(weights)
    twin.set_weights(weights)
    np.testing.assert_array_equal(net.predict(x, verbose=0), layers_pass(twin, x))
    # Weight arrays replaced (a dtype change makes new ones), then written: that program,
    # which holds the old arrays, is retired.
    for layer in net.layers:
        layer.astype(np.float32)
    assert not programs(net)[0].current()
    weights = [w * 3 for w in weights]
    net.set_weights(weights)
    twin.set_weights(weights)
    np.testing.assert_array_equal(net.predict(x, verbose=0), layers_pass(twin, x))
    assert programs(net)[0].current()


class Doubler(layers.Layer):
    """Computes outside the device module (a new array each call)."""

    def forward(self, x, training=False):
        return 2 * x


class ScaledByWeight(layers.Layer):
    """Reads its weight in Python: a replay would keep the value it had when recorded."""

    def create_weights(self, input_shape, rng):
        self.params["scale"] = np.full(1, 1.5, np.float32)

    def forward(self, x, training=False):
        y = self._buffer("y", x.shape, x.dtype)
        self.ops.scale_shift(x.reshape(-1), float(self.params["scale"][0]), 0.0, y.reshape(-1))
        return y


class ShiftedByWeightBuffer(layers.Layer):
    """Fills a buffer from its weight in NumPy, then adds it through the device module: a
    replay would read the buffer as last filled."""

    def create_weights(self, input_shape, rng):
        self.params["shift"] = np.linspace(-1, 1, input_shape[-1]).astype(np.float32)

    def forward(self, x, training=False):
        shift = self._buffer("doubled", self.params["shift"].shape, x.dtype)
        np.multiply(self.params["shift"], 2.0, out=shift)
        y = self._buffer("y", x.shape, x.dtype)
        self.ops.bias_activation_forward(x, shift, LINEAR, 0.0, y)
        return y


@pytest.mark.parametrize("odd_layer", [Doubler, ScaledByWeight, ShiftedByWeightBuffer])
def test_layers_computing_outside_the_device_module_keep_their_own_pass(odd_layer):
    net = small_net(extra=[odd_layer()])
    x = images(1, 1)
    for _ in range(3):
        net.predict(x, verbose=0)
    assert net._plan.programs.refused() == 1 and not programs(net)  # tried, not proven
    for seed in (2, 3):
        x = images(1, seed)
        np.testing.assert_array_equal(net.predict(x, verbose=0), layers_pass(net, x))
    if odd_layer is not Doubler:
        for weight in net.layers[-3].params.values():
            weight[...] = 3.0
        np.testing.assert_array_equal(net.predict(x, verbose=0), layers_pass(net, x))


def test_a_uniform_input_proves_nothing_and_waits_for_another():
    net = small_net()
    zeros = np.zeros((1, 10, 10, 2), np.float32)
    assert not inference_program.distinct([zeros])
    for _ in range(3):
        np.testing.assert_array_equal(net.predict(zeros, verbose=0), layers_pass(net, zeros))
    assert not programs(net)
    x = images(1, 3)
    np.testing.assert_array_equal(net.predict(x, verbose=0), layers_pass(net, x))
    assert programs(net)


def test_a_large_predicts_last_chunk_is_not_recorded():
    net = small_net()
    x = images(21, 6)
    for _ in range(3):
        np.testing.assert_array_equal(net.predict(x, batch_size=10, verbose=0),
                                      np.concatenate([layers_pass(net, x[:10]), layers_pass(net, x[10:20]),
                                                      layers_pass(net, x[20:])]))
    assert len(net._plan.programs) == 0  # no shape met


def test_the_program_runs_on_the_thread_count_it_measured_faster_with_the_same_bits():
    numba = pytest.importorskip("numba")
    if numba.get_num_threads() < 2:
        pytest.skip("one Numba thread only")
    net = small_net()
    x = images(1, 1)
    for _ in range(2):
        net.predict(x, verbose=0)
    (program,) = programs(net)
    assert program.threads in (1, numba.get_num_threads())
    before = numba.get_num_threads()
    results = []
    for threads in (1, before):
        program.threads = threads
        results.append(net.predict(x, verbose=0))
        assert numba.get_num_threads() == before  # the program's count is its own
    np.testing.assert_array_equal(results[0], results[1])


def assert_training_reaches_the_replay(make_layers, kernel_name, shift=0.0):
    """A one-image program recorded for the net of ``make_layers()``, calling
    ``kernel_name``: after training, its predicts are the layers' pass with the new weights
    (a twin's)."""
    def net_of():
        net = models.Sequential(make_layers(), seed=2)
        net.compile(optimizer="adam", loss="mse")
        return net

    net, twin = net_of(), net_of()
    x = np.random.default_rng(1).standard_normal((1,) + net.input_shape[1:]).astype(np.float32)
    for _ in range(2):
        net.predict(x, verbose=0)
    (program,) = programs(net)
    assert kernel_name in [function.__name__ for function, _, _ in program.calls]
    batch = np.random.default_rng(2).standard_normal((16,) + x.shape[1:]).astype(np.float32) * 3 + shift
    net.fit(batch, np.ones((16, 3), np.float32), epochs=3, batch_size=8, verbose=0)
    twin.set_weights(net.get_weights())
    np.testing.assert_array_equal(net.predict(x, verbose=0), layers_pass(twin, x))
    assert programs(net) == [program]


def test_a_folded_batch_normalization_folds_again_on_each_replay():
    """A norm folded into the conv before it (KernelMixin.forward_folded): the program folds
    through the device module (fold_norm's kernel), so training after the recording
    reaches its predicts."""
    assert_training_reaches_the_replay(lambda: [
        layers.Conv2D(4, 3, padding="same", use_bias=False, input_shape=(12, 12, 1)),
        layers.BatchNormalization(), layers.Activation("relu"), layers.Flatten(), layers.Dense(3)], "_fold_rows")


@pytest.mark.parametrize("name", functional_architectures.NAMES + ("two_heads",))
def test_graph_models_replay_their_small_predicts_with_the_layers_bits(name):
    """Residual adds, concatenations, shared and nested models, several inputs and outputs."""
    import nbnet

    net = (functional_architectures.two_heads(nbnet) if name == "two_heads"
           else functional_architectures.build(nbnet, name))
    rng = np.random.default_rng(5)
    shapes = [tuple(t.shape[1:]) for t in net.inputs]
    for count in (1, 3):
        for seed in range(3):
            xs = [rng.standard_normal((count,) + shape).astype(np.float32) for shape in shapes]
            got = net.predict(xs if len(xs) > 1 else xs[0], verbose=0)
            expected = [np.array(y) for y in net._forward([np.ascontiguousarray(x) for x in xs], training=False)]
            got = got if isinstance(got, list) else [got]
            for a, b in zip(got, expected):
                np.testing.assert_array_equal(a, b)
    assert len(programs(net)) == 2


def test_models_of_many_weights_are_not_recorded(monkeypatch):
    """The proof copies every weight: past RECORD_MAX_WEIGHT_BYTES it is not tried."""
    net = small_net()
    weight_bytes = sum(w.nbytes for w in net.get_weights())
    monkeypatch.setattr(inference_program, "RECORD_MAX_WEIGHT_BYTES", weight_bytes - 1)
    x = images(1, 1)
    for _ in range(3):
        np.testing.assert_array_equal(net.predict(x, verbose=0), layers_pass(net, x))
    assert net._plan.programs.refused() == 1 and not programs(net)


def test_blas_stays_as_the_user_set_it_where_the_programs_products_are_small(monkeypatch):
    """A program whose BLAS products are all too small for BLAS's own threads runs without
    holding BLAS to one thread (inference_program.BLAS_ONE_THREAD_MACS); one with a larger
    product (16 samples through a 784 -> 128 Dense layer) holds it."""
    from nbnet import threads

    held = []
    entered = threads.single_threaded_blas.__enter__
    monkeypatch.setattr(threads.single_threaded_blas, "__enter__", lambda self: held.append(1) or entered(self))
    net = models.Sequential([layers.Input((784,)), layers.Dense(128, activation="relu"), layers.Dense(10)], seed=1)
    x = np.random.default_rng(0).standard_normal((16, 784)).astype(np.float32)
    for count in (1, 16):
        expected = net.predict(x[:count])  # the layers' pass; then recorded, then replayed
        for _ in range(2):
            held.clear()
            np.testing.assert_array_equal(net.predict(x[:count]), expected)
        program = net._plan.programs.current([x[:count]], 1 if count == 1 else numba.get_num_threads())
        assert program is not None and program.blas_single == (count == 1)
        assert bool(held) == (count == 16)


def test_thread_counts_are_timed_from_the_count_replays_start_from():
    """_fastest times each count from all the threads (a replay's predict starts there, then
    switches to its program's count and back), not from the recording predict's one, and
    gives that count back afterwards."""
    before = numba.get_num_threads()
    if before < 2:
        pytest.skip("one Numba thread: nothing to choose")

    class Timed:
        threads, started_from = 1, []

        def run(self, inputs):
            self.started_from.append(numba.get_num_threads())

    program = Timed()
    try:
        numba.set_num_threads(1)  # as inside a one-image predict's lowering
        chosen = inference_program._fastest(program, [np.zeros(1)], [1, before])
        assert numba.get_num_threads() == 1
    finally:
        numba.set_num_threads(before)
    assert chosen in (1, before) and set(program.started_from) == {before}


def test_a_one_image_conv_replays_the_implicit_gemms_kernel_split_for_every_thread():
    """The program calls the implicit GEMM's kernels, not their Python wrappers, a large
    conv's image split in parts for all of Numba's threads though recorded on one: the
    layers' bits whichever count it runs on. A non-contiguous operand keeps the wrapper
    (the kernel would read a copy made at recording)."""
    from nbnet.kernels import implicit_gemm

    net = models.Sequential([layers.Conv2D(64, 3, padding="same", activation="tanh", input_shape=(14, 14, 32)),
                             layers.Conv2D(8, 3, activation="relu"), layers.MaxPooling2D(2), layers.Flatten(),
                             layers.Dense(3)], seed=4)
    x = np.random.default_rng(3).standard_normal((1, 14, 14, 32)).astype(np.float32)
    for _ in range(2):
        net.predict(x, verbose=0)
    (program,) = programs(net)
    names = [function.__name__ for function, _, _ in program.calls]
    assert "_forward" in names and "implicit_conv_forward" not in names
    parts = [args[-1] for function, args, _ in program.calls if function is implicit_gemm._forward]
    assert parts[0] == max(1, numba.config.NUMBA_NUM_THREADS)  # 14x14x32 -> 64: 3.6M multiply-adds
    for threads in sorted({1, numba.config.NUMBA_NUM_THREADS}):
        program.threads = threads
        y = np.random.default_rng(threads).standard_normal(x.shape).astype(np.float32)
        np.testing.assert_array_equal(net.predict(y, verbose=0), layers_pass(net, y))
    kernel = np.zeros((3, 3, 32, 64), np.float32)
    z = np.empty((14 * 14, 64), np.float32)
    assert implicit_gemm.implicit_conv_forward.replayed_as(x[:, :, ::-1], kernel, 1, 1, 1, 1, 14, 14, z) is None
    assert implicit_gemm.implicit_conv_forward.replayed_as(x, kernel, 1, 1, 1, 1, 14, 14, z)[0] is implicit_gemm._forward


def test_a_batch_normalization_of_its_own_makes_its_scale_again_on_each_replay():
    """A norm that is not folded (after a pool) replays as two kernels, its scale made from
    the moving variance of then: training after the recording reaches its predicts."""
    assert_training_reaches_the_replay(lambda: [
        layers.Conv2D(4, 3, activation="relu", input_shape=(10, 10, 1)), layers.MaxPooling2D(2),
        layers.BatchNormalization(), layers.Flatten(), layers.Dense(3)], "moving_scale_into", shift=1.0)
