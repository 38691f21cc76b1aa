"""Conv2D + MaxPooling2D fusion (executor.Plan._fuse_conv_pool): the fused kernels must give
what the layers give apart: the same outputs and gradients exactly (the Winograd pass: up
to float rounding), the same training up to the order of the bias gradient's sum."""

import numpy as np
import pytest

from nbnet import layers, models
from nbnet.devices import cpu


def stack(activation="relu", use_bias=True, odd=False, fuse=True, pool_strides=None, first_filters=4):
    """Two conv + pool pairs: the first conv takes the direct path (3x3x1 field); the
    second the im2col path (3x3x4), or with ``first_filters=1`` the direct path with an
    input gradient. ``odd`` leaves a conv row and column outside every window."""
    size = 13 if odd else 12
    net = models.Sequential([
        layers.Conv2D(first_filters, 3, activation=activation, use_bias=use_bias, input_shape=(size, size, 1)),
        layers.MaxPooling2D(2, strides=pool_strides),
        layers.Conv2D(6, 3, activation=activation, use_bias=use_bias),
        layers.MaxPooling2D(2),
        layers.Flatten(),
        layers.Dense(3, activation="softmax"),
    ], seed=3)
    net.fuse_layers = fuse
    net.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    net.build()
    return net


def data(odd=False, count=48):
    rng = np.random.default_rng(5)
    size = 13 if odd else 12
    return rng.standard_normal((count, size, size, 1)).astype(np.float32), rng.integers(0, 3, count)


@pytest.mark.parametrize("winograd", [False, True])
@pytest.mark.parametrize("activation, use_bias, odd, first_filters", [
    ("relu", True, False, 4), ("relu", False, True, 4), ("linear", True, True, 4), ("relu", True, True, 1),
    ("tanh", True, False, 4), ("sigmoid", False, True, 1), ("leaky_relu", True, True, 4)])
def test_fused_step_equals_unfused(activation, use_bias, odd, first_filters, winograd, monkeypatch):
    """Exactly, except that the Winograd pass (the second conv, 3x3x4 -> 6, on the CPU)
    rounds its sums differently: then equal to float32 rounding. Tanh, sigmoid and leaky
    relu run on the pooled pre-activation's maximum (Conv2D._pooled_code). (The implicit GEMM, which
    would run the unfused convs in float32 and round otherwise, is kept out.)"""
    from nbnet.layers import convolutional

    monkeypatch.setattr(convolutional, "implicit_applies", lambda *args: False)
    winograd_calls = []
    if winograd:
        real = cpu.conv3x3_maxpool_forward
        monkeypatch.setattr(cpu, "conv3x3_maxpool_forward",
                            lambda *args: (winograd_calls.append(args[0].shape), real(*args))[1])
    else:
        monkeypatch.setattr(cpu, "conv3x3_maxpool_forward", None)
    x, y = data(odd)
    fused = stack(activation, use_bias, odd, first_filters=first_filters)
    plain = stack(activation, use_bias, odd, fuse=False, first_filters=first_filters)
    assert [layer.absorbed for layer in fused.layers] == [False, True, False, True, False, False]
    assert not any(layer.absorbed for layer in plain.layers)
    rounding = 2e-6 if winograd and first_filters > 1 else 0
    np.testing.assert_allclose(fused.predict(x), plain.predict(x), rtol=rounding, atol=rounding)
    fused.train_on_batch(x, y)
    plain.train_on_batch(x, y)
    # The second conv took the Winograd pass in predict and in the training step; a
    # 3x3x1 field takes the direct one.
    assert [shape[0] for shape in winograd_calls] == ([32, 16, 48] if winograd and first_filters > 1 else [])
    for layer_fused, layer_plain in zip(fused.layers, plain.layers):
        for key in layer_plain.grads:
            # Kernel gradients and every other value exactly; a bias gradient sums the same
            # terms in another order.
            tolerance = max(rounding * 10, 1e-6 if key == "bias" else 0)
            np.testing.assert_allclose(layer_fused.grads[key], layer_plain.grads[key], rtol=tolerance,
                                       atol=tolerance, err_msg=f"{layer_plain.name}.{key}")


def test_fused_training_tracks_unfused():
    x, y = data(count=96)
    fused, plain = stack(), stack(fuse=False)
    fused.fit(x, y, batch_size=16, epochs=3, verbose=0)
    plain.fit(x, y, batch_size=16, epochs=3, verbose=0)
    for got, expected in zip(fused.get_weights(), plain.get_weights()):
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_only_fusable_pairs_fuse():
    """Overlapping windows, or an activation that does not commute with max, keep the
    layers apart; the model still computes the same."""
    overlapping = stack(pool_strides=1)
    assert [layer.absorbed for layer in overlapping.layers] == [False, False, False, True, False, False]
    softmax = stack("softmax")  # over the channels: not elementwise
    assert not any(layer.absorbed for layer in softmax.layers)
    x, y = data()
    np.testing.assert_array_equal(softmax.predict(x), stack("softmax", fuse=False).predict(x))
    # A pool that is the model's output stays a layer of its own (the loss needs it).
    ending = models.Sequential([layers.Conv2D(2, 3, activation="relu", input_shape=(12, 12, 1)),
                                layers.MaxPooling2D(10)], seed=1)
    ending.compile(optimizer="sgd", loss="mse")
    ending.train_on_batch(x, np.zeros((len(x), 1, 1, 2), np.float32))
    assert not ending.layers[1].absorbed


def assert_trains_alike(fused, plain, x, y, grad_rtol=1e-5, rtol=1e-5, atol=1e-6, each_step=None):
    """Two training steps of each model: every layer's gradients after each step, then the
    weights, equal to the tolerances (0: the same bits); ``each_step()`` checks more."""
    for _ in range(2):
        fused.train_on_batch(x, y)
        plain.train_on_batch(x, y)
        if each_step is not None:
            each_step()
        for layer_fused, layer_plain in zip(fused.layers, plain.layers):
            for key in layer_plain.grads:
                np.testing.assert_allclose(layer_fused.grads[key], layer_plain.grads[key], rtol=grad_rtol, atol=atol,
                                           err_msg=f"{layer_plain.name}.{key}")
    for a, b in zip(fused.get_weights(), plain.get_weights()):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)


def normalised_stack(activation, fuse=True, trainable=True):
    """Conv2D -> BatchNormalization -> activation layer, twice (the second after a Dense,
    as a LeakyReLU layer), then a softmax head; BatchNormalization runs the activation in
    its own kernels (executor.Plan._fuse_norm_activation)."""
    net = models.Sequential([
        layers.Input((6, 6, 2)), layers.Conv2D(4, 3, padding="same", use_bias=False),
        layers.BatchNormalization(trainable=trainable), layers.Activation(activation), layers.Flatten(),
        layers.Dense(5), layers.BatchNormalization(), layers.LeakyReLU(0.1), layers.Dense(3, activation="softmax"),
    ], seed=4)
    net.fuse_layers = fuse
    net.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    net.build()
    return net


@pytest.mark.parametrize("activation", ["relu", "tanh", "sigmoid"])
@pytest.mark.parametrize("trainable", [True, False])
def test_normalisation_with_its_activation_equals_them_apart(activation, trainable):
    """Outputs, every gradient and the moving statistics as with the layers run apart (to
    float rounding: the fused forward contracts its multiply-adds); with trainable=False
    the first normalisation runs in inference mode, backward included."""
    rng = np.random.default_rng(6)
    x, y = rng.standard_normal((10, 6, 6, 2)).astype(np.float32), rng.integers(0, 3, 10)
    fused, plain = normalised_stack(activation, trainable=trainable), normalised_stack(activation, fuse=False,
                                                                                       trainable=trainable)
    # Shifts well away from 0: the fused backward finds which side of 0 a value lay on
    # from the pre-activation it makes again (kernels/normalization.py), beta included.
    for net in (fused, plain):
        for index, channels in ((1, 4), (5, 5)):
            net.layers[index].params["beta"][:] = np.random.default_rng(index).uniform(-1.0, 1.0, channels)
    assert [layer.absorbed for layer in fused.layers] == [False, False, True, False, False, False, True, False]
    assert fused.layers[1].activation_after is fused.layers[2] and plain.layers[1].activation_after is None
    np.testing.assert_allclose(fused.predict(x), plain.predict(x), rtol=1e-5, atol=1e-6)

    def same_mode():
        assert fused.layers[1]._training == plain.layers[1]._training == trainable

    assert_trains_alike(fused, plain, x, y, grad_rtol=1e-4, each_step=same_mode)


def test_an_activation_that_is_an_output_or_softmax_is_not_absorbed():
    head = models.Sequential([layers.Input((4,)), layers.Dense(3), layers.BatchNormalization(),
                              layers.Activation("relu")])
    head.compile("sgd", "mse")
    tail = models.Sequential([layers.Input((4,)), layers.Dense(3), layers.BatchNormalization(),
                              layers.Activation("softmax"), layers.Dense(2)])
    tail.compile("sgd", "mse")
    for net in (head, tail):
        net.build()
        assert not any(layer.absorbed for layer in net.layers) and net.layers[1].activation_after is None


def _fold_pair(build, rng, width):
    """Two compiles of ``build()`` (a Sequential whose second layer is a BatchNormalization
    of ``width`` channels), one folding its norms (fuse_layers) and one not, with the same
    weights and a first norm of random statistics, gamma and beta."""
    pair = []
    for fuse in (True, False):
        net = build()
        net.fuse_layers = fuse
        net.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
        net.build()
        pair.append(net)
    folded, plain = pair
    norm = folded.layers[1]
    norm.params["gamma"][:] = rng.uniform(0.5, 2.0, width)
    norm.params["beta"][:] = rng.standard_normal(width)
    norm.state["moving_mean"][:] = rng.standard_normal(width)
    norm.state["moving_variance"][:] = rng.uniform(0.2, 3.0, width)
    plain.set_weights(folded.get_weights())
    return folded, plain, norm


@pytest.mark.parametrize("channels, activation, use_bias", [(3, "relu", False), (32, "relu", True), (32, "tanh", False),
                                                            (8, None, True)])
def test_a_normalisation_folded_into_its_conv_predicts_as_run_apart(channels, activation, use_bias):
    """In inference a BatchNormalization reading a linear Conv2D (or Dense) is computed by
    it (executor.Plan._fold_conv_norm): kernel and bias scaled by its moving statistics,
    gamma and beta, its activation in the conv's pass; on the implicit GEMM (3, 8
    channels) and Winograd (32). Training still runs the norm on the batch's statistics."""
    rng = np.random.default_rng(channels)
    x = rng.standard_normal((7, 12, 12, channels)).astype(np.float32)
    y = rng.integers(0, 3, 7)

    def stack():
        after = [layers.Activation(activation)] if activation else []
        return models.Sequential([layers.Input((12, 12, channels)),
                                  layers.Conv2D(16, 3, padding="same", use_bias=use_bias),
                                  layers.BatchNormalization(), *after, layers.Conv2D(4, 3, activation="relu"),
                                  layers.BatchNormalization(), layers.Flatten(), layers.Dense(6),
                                  layers.BatchNormalization(), layers.Dense(3, activation="softmax")], seed=2)

    folded, plain, norm = _fold_pair(stack, rng, 16)
    steps = folded._plan.steps
    assert steps[0].norm is norm and steps[1].folded
    # The second conv has an activation of its own; the Dense layer folds its norm too.
    assert [type(step.layer).__name__ for step in steps if step.norm is not None] == ["Conv2D", "Dense"]
    np.testing.assert_allclose(folded.predict(x), plain.predict(x), rtol=1e-5, atol=1e-6)
    before = norm.state["moving_mean"].copy()
    folded.train_on_batch(x, y)
    plain.train_on_batch(x, y)
    assert not np.array_equal(norm.state["moving_mean"], before)
    for a, b in zip(folded.get_weights(), plain.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(folded.predict(x), plain.predict(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("strides, multiplier, use_bias", [(1, 1, False), (2, 2, True)])
def test_a_normalisation_folds_into_a_depthwise_conv_as_into_a_conv(strides, multiplier, use_bias):
    """The MobileNet block (DepthwiseConv2D, BatchNormalization, ReLU): in inference the
    norm folds into the depthwise kernel (viewed with its C*M output channels last) and its
    relu runs in the depthwise kernel's own pass, as run apart; training unchanged."""
    rng = np.random.default_rng(strides)
    x = rng.standard_normal((5, 9, 10, 3)).astype(np.float32)
    y = rng.integers(0, 3, 5)

    def stack():
        return models.Sequential([layers.Input((9, 10, 3)),
                                  layers.DepthwiseConv2D(3, strides=strides, padding="same",
                                                         depth_multiplier=multiplier, use_bias=use_bias),
                                  layers.BatchNormalization(), layers.Activation("relu"), layers.Flatten(),
                                  layers.Dense(3, activation="softmax")], seed=4)

    folded, plain, norm = _fold_pair(stack, rng, 3 * multiplier)
    assert folded._plan.steps[0].norm is norm and folded._plan.steps[1].folded
    np.testing.assert_allclose(folded.predict(x), plain.predict(x), rtol=1e-5, atol=1e-6)
    folded.train_on_batch(x, y)
    plain.train_on_batch(x, y)
    for a, b in zip(folded.get_weights(), plain.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(folded.predict(x), plain.predict(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("activation, size, trainable", [("relu", 12, True), (None, 13, True), ("relu", 9, True),
                                                          ("relu", 11, False)])
def test_a_pool_after_a_normalisation_runs_in_its_passes(activation, size, trainable):
    """Conv2D -> BatchNormalization -> (relu) -> 2x2 MaxPooling2D: the norm runs the pool
    in its own passes (executor.Plan._fuse_norm_pool, kernels/normalization_pool.py), odd
    sizes leaving the last row and column out of every window but not out of the
    statistics; with trainable=False in inference mode, backward included. Predictions
    (the norm then folded into the conv, the pool after it), every gradient, the moving
    statistics and the weights after two steps equal the layers run apart."""
    rng = np.random.default_rng(size)
    x, y = rng.standard_normal((6, size, size, 3)).astype(np.float32), rng.integers(0, 3, 6)

    def stack(fuse):
        after = [layers.Activation(activation)] if activation else []
        net = models.Sequential([layers.Input((size, size, 3)), layers.Conv2D(8, 3, padding="same", use_bias=False),
                                 layers.BatchNormalization(trainable=trainable), *after, layers.MaxPooling2D(2),
                                 layers.Flatten(), layers.Dense(3, activation="softmax")], seed=7)
        net.fuse_layers = fuse
        net.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
        net.build()
        norm = net.layers[1]
        norm.params["beta"][:] = np.random.default_rng(1).uniform(-1.0, 1.0, 8)
        norm.state["moving_mean"][:] = np.random.default_rng(2).standard_normal(8)
        return net

    fused, plain = stack(True), stack(False)
    norm_step = fused._plan.steps[1]
    assert norm_step.pool is fused.layers[-3] and fused.layers[1].pool_after is fused.layers[-3]
    assert len(fused._plan.steps) == 4 and plain.layers[1].pool_after is None
    np.testing.assert_allclose(fused.predict(x), plain.predict(x), rtol=1e-5, atol=1e-6)
    assert_trains_alike(fused, plain, x, y)
    assert fused.layers[1]._pooled


def test_only_a_2x2_pool_after_a_rectified_or_plain_normalisation_is_absorbed():
    def plan(activation, pool):
        after = [layers.Activation(activation)] if activation else []
        net = models.Sequential([layers.Input((8, 8, 2)), layers.Conv2D(4, 3), layers.BatchNormalization(), *after,
                                 pool, layers.Flatten(), layers.Dense(2)])
        net.build()
        return net._plan.steps[1].pool

    assert plan("relu", layers.MaxPooling2D(2)) is not None
    assert plan("tanh", layers.MaxPooling2D(2)) is None  # kernels/normalization_pool.py knows the rectifier only
    assert plan("relu", layers.MaxPooling2D(2, strides=1)) is None
    assert plan("relu", layers.MaxPooling2D(3)) is None  # the fused kernels take 2x2 windows only
    assert plan("relu", layers.AveragePooling2D(2)) is None
    assert plan(None, layers.MaxPooling2D(2, padding="same")) is None


@pytest.mark.parametrize("activation, inputs", [("relu", 2), ("tanh", 2), ("sigmoid", 2), ("relu", 3)])
def test_an_activation_after_an_add_runs_in_its_passes(activation, inputs):
    """A residual block's add and activation (executor.Plan._fuse_merge_activation): two
    inputs run the activation in the add's own passes (kernels/merging.py), three run it
    as a layer after the add. Predictions, every gradient and the weights after two steps
    equal the layers run apart."""
    rng = np.random.default_rng(inputs)
    x, y = rng.standard_normal((5, 6, 6, 4)).astype(np.float32), rng.integers(0, 3, 5)

    def model(fuse):
        source = layers.Input((6, 6, 4))
        # Weights behind every input: each input's gradient shows in theirs.
        branches = [layers.Conv2D(4, 3, padding="same")(source) for _ in range(inputs)]
        merged = layers.Activation(activation)(layers.Add()(branches))
        out = layers.Dense(3, activation="softmax")(layers.Flatten()(layers.Conv2D(2, 1)(merged)))
        net = models.Model(source, out)
        net.fuse_layers = fuse
        net._finish_build()  # a functional model made its plan when it was made
        net.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
        return net

    fused, plain = model(True), model(False)
    assert any(isinstance(step.layer, layers.Activation) for step in plain._plan.steps)
    plain.set_weights(fused.get_weights())
    add = next(step for step in fused._plan.steps if isinstance(step.layer, layers.Add))
    assert add.activation is not None and add.layer.activation_after is add.activation
    assert not any(isinstance(step.layer, layers.Activation) for step in fused._plan.steps)
    np.testing.assert_allclose(fused.predict(x), plain.predict(x), rtol=1e-6, atol=1e-7)
    assert_trains_alike(fused, plain, x, y, grad_rtol=0, rtol=0, atol=0)
    assert add.layer._fused == (inputs == 2)


def test_an_add_read_by_more_than_its_activation_keeps_it_apart():
    source = layers.Input((4,))
    merged = layers.Add()([source, layers.Dense(4)(source)])
    out = layers.Concatenate()([layers.Activation("relu")(merged), merged])
    net = models.Model(source, out)
    net.build()
    assert all(step.activation is None for step in net._plan.steps)
