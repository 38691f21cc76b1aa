"""The Winograd F(2x2, 3x3) conv + max pool passes against the im2col ones they replace on
the CPU: im2col + matmul + the fused bias/activation/pool kernel forward, and the pool's
gradient + the two matmuls + col2im backward."""

import numpy as np
import pytest

from nbnet.kernels import conv, pool, winograd, winograd_tiles
from nbnet.kernels.activations import LINEAR, RELU
from nbnet.layers import convolutional


@pytest.fixture(autouse=True)
def winograd_from_one_image(monkeypatch):
    """The layers here run Winograd on their few images (Conv2D gives fewer than
    WINOGRAD_MIN_IMAGES to the implicit GEMM; test_few_images_... checks that)."""
    monkeypatch.setattr(convolutional, "WINOGRAD_MIN_IMAGES", 1)


def reference(x, kernel, bias, code, padding):
    batch, height, width, channels = x.shape
    filters = kernel.shape[3]
    out_h, out_w, top, left = conv.output_geometry(height, width, (3, 3), (1, 1), padding)
    out_h, out_w = out_h // 2 * 2, out_w // 2 * 2  # the pixels the pool's windows cover
    cols = np.empty((batch * out_h * out_w, 9 * channels), x.dtype)
    conv.im2col(x, 3, 3, 1, 1, top, left, out_h, out_w, cols)
    z = (cols @ kernel.reshape(-1, filters)).reshape(batch, out_h, out_w, filters)
    y = np.empty((batch, out_h // 2, out_w // 2, filters), x.dtype)
    argmax = np.empty(y.shape, np.int32)
    pool.bias_activation_maxpool(z, bias, code, 2, 2, y, argmax)
    return y, argmax, (top, left)


@pytest.mark.parametrize("batch, size, channels, filters, padding, code, use_bias, dtype", [
    (6, 13, 32, 64, "valid", RELU, True, np.float32),    # the MNIST CNN's second layer
    (3, 9, 3, 5, "same", RELU, True, np.float32),        # padding, odd batch over two workers
    (2, 8, 2, 3, "valid", LINEAR, False, np.float32),
    (1, 7, 4, 2, "same", LINEAR, True, np.float64),
])
def test_winograd_matches_im2col(batch, size, channels, filters, padding, code, use_bias, dtype):
    rng = np.random.default_rng(batch)
    x = rng.standard_normal((batch, size, size + 1, channels)).astype(dtype)
    kernel = rng.standard_normal((3, 3, channels, filters)).astype(dtype)
    bias = rng.standard_normal(filters).astype(dtype) if use_bias else np.zeros(0, dtype)
    expected, expected_argmax, (top, left) = reference(x, kernel, bias, code, padding)
    y = np.full(expected.shape, np.nan, dtype)
    argmax = np.full(expected.shape, -1, np.int32)
    winograd.conv3x3_maxpool_forward(x, kernel, bias, code, top, left, np.empty((16, channels, filters), dtype),
                                     y, argmax)
    rounding = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(y, expected, rtol=rounding, atol=rounding * np.abs(expected).max())
    # The same window position wins, but where two are within rounding of each other.
    assert (argmax == expected_argmax).mean() > 0.99
    if code == RELU:
        assert (y == 0).sum() == (expected == 0).sum()


def reference_backward(x, kernel, dy, argmax, y, code, padding):
    batch, height, width, channels = x.shape
    filters = kernel.shape[3]
    out_h, out_w, top, left = conv.output_geometry(height, width, (3, 3), (1, 1), padding)
    geometry = (3, 3, 1, 1, top, left, out_h // 2 * 2, out_w // 2 * 2)
    cols = np.empty((batch * geometry[-2] * geometry[-1], 9 * channels), x.dtype)
    conv.im2col(x, *geometry, cols)
    dz = np.empty((batch, geometry[-2], geometry[-1], filters), x.dtype)
    dbias = np.zeros(filters, x.dtype)
    pool.maxpool_activation_backward(dy, argmax, y, code, 2, 2, dz, dbias)
    dz = dz.reshape(-1, filters)
    dx = np.empty_like(x)
    conv.col2im(dz @ kernel.reshape(-1, filters).T, *geometry, dx)
    return (cols.T @ dz).reshape(kernel.shape), dbias, dx


@pytest.mark.parametrize("batch, size, channels, filters, padding, code, dtype", [
    (6, 13, 32, 64, "valid", RELU, np.float32),
    (3, 9, 3, 5, "same", RELU, np.float32),
    (2, 8, 2, 3, "valid", LINEAR, np.float64),
])
def test_winograd_backward_matches_im2col(batch, size, channels, filters, padding, code, dtype):
    """The kernel, bias and input gradients from the pooled gradient, against the
    im2col pass's, given the same forward argmax."""
    rng = np.random.default_rng(size)
    x = rng.standard_normal((batch, size, size + 1, channels)).astype(dtype)
    kernel = rng.standard_normal((3, 3, channels, filters)).astype(dtype)
    bias = rng.standard_normal(filters).astype(dtype)
    y, argmax, (top, left) = reference(x, kernel, bias, code, padding)
    dy = rng.standard_normal(y.shape).astype(dtype)
    expected_dkernel, expected_dbias, expected_dx = reference_backward(x, kernel, dy, argmax, y, code, padding)
    dkernel = np.ones_like(kernel)  # the kernel gradient is added to what is there
    dbias = np.ones_like(bias)
    dx = np.full_like(x, np.nan)
    winograd.conv3x3_maxpool_backward(x, kernel, dy, argmax, y, code, top, left,
                                      np.empty((16, channels, filters), dtype), dkernel, dbias, True, dx)
    rounding = 1e-5 if dtype == np.float32 else 1e-12
    for got, expected in ((dkernel - 1, expected_dkernel), (dbias - 1, expected_dbias), (dx, expected_dx)):
        np.testing.assert_allclose(got, expected, rtol=rounding, atol=rounding * np.abs(expected).max())
    # Without an input gradient, the same kernel gradient and dx untouched.
    again = np.zeros_like(kernel)
    untouched = np.full_like(x, 7)
    winograd.conv3x3_maxpool_backward(x, kernel, dy, argmax, y, code, top, left,
                                      np.empty((16, channels, filters), dtype), again, np.zeros(0, dtype), False,
                                      untouched)
    np.testing.assert_allclose(again, expected_dkernel, rtol=rounding, atol=rounding * np.abs(expected_dkernel).max())
    assert (untouched == 7).all()


def test_chunks_cover_every_image(monkeypatch):
    """Batches split into workers' parts and each part into chunks: every image once."""
    monkeypatch.setattr(winograd, "CHUNK_TILES", 7)  # 2 images of 3x3 blocks a chunk
    rng = np.random.default_rng(0)
    x = rng.standard_normal((9, 7, 7, 2)).astype(np.float32)
    kernel = rng.standard_normal((3, 3, 2, 4)).astype(np.float32)
    bias = np.zeros(4, np.float32)
    expected, _, _ = reference(x, kernel, bias, LINEAR, "same")
    y = np.full(expected.shape, np.nan, np.float32)
    winograd.conv3x3_maxpool_forward(x, kernel, bias, LINEAR, 1, 1, np.empty((16, 2, 4), np.float32), y,
                                     np.empty(expected.shape, np.int32))
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


def test_parts_run_one_after_another_on_one_thread(monkeypatch):
    """A thread pool may run both workers' parts on one thread in turn: the kernel
    gradient must still sum both (each part's sums live in that thread's scratch)."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 9, 9, 3)).astype(np.float32)
    kernel = rng.standard_normal((3, 3, 3, 4)).astype(np.float32)
    y, argmax, (top, left) = reference(x, kernel, np.zeros(0, np.float32), LINEAR, "valid")
    dy = rng.standard_normal(y.shape).astype(np.float32)
    expected, _, _ = reference_backward(x, kernel, dy, argmax, y, LINEAR, "valid")
    monkeypatch.setattr(winograd, "for_each_worker", lambda task, count: [task(0, 1), task(1, count)])
    dkernel = np.zeros_like(kernel)
    winograd.conv3x3_maxpool_backward(x, kernel, dy, argmax, y, LINEAR, top, left, np.empty((16, 3, 4), np.float32),
                                      dkernel, np.zeros(0, np.float32), False, x[:0])
    np.testing.assert_allclose(dkernel, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


def test_applies_only_to_3x3_stride_1_with_2x2_pool():
    assert winograd.applies((3, 3), (1, 1), (2, 2))
    assert not winograd.applies((5, 5), (1, 1), (2, 2))
    assert not winograd.applies((3, 3), (2, 2), (2, 2))
    assert not winograd.applies((3, 3), (1, 1), (3, 3))


@pytest.mark.parametrize("batch, height, width, channels, filters, padding, dtype", [
    (5, 14, 14, 16, 16, "same", np.float32),    # a residual block's conv, two workers
    (3, 7, 9, 8, 12, "same", np.float32),       # odd sides: the last blocks half outside
    (2, 9, 8, 9, 5, "valid", np.float32),
    (2, 9, 7, 40, 20, "same", np.float32),      # whole and part vectors of channels and filters, odd sides
    (2, 5, 6, 8, 3, "same", np.float64),
])
def test_unpooled_winograd_matches_im2col(monkeypatch, batch, height, width, channels, filters, padding, dtype):
    """conv3x3_forward / conv3x3_backward (no pool) against im2col + matmul and its adjoint,
    one image a chunk: F(4x4, 3x3) in float32, F(2x2, 3x3) in float64."""
    monkeypatch.setattr(winograd, "PLAIN_CHUNK_VALUES", 1)
    monkeypatch.setattr(winograd_tiles, "CHUNK_VALUES", 1)
    rng = np.random.default_rng(channels)
    x = rng.standard_normal((batch, height, width, channels)).astype(dtype)
    kernel = rng.standard_normal((3, 3, channels, filters)).astype(dtype)
    out_h, out_w, top, left = conv.output_geometry(height, width, (3, 3), (1, 1), padding)
    geometry = (3, 3, 1, 1, top, left, out_h, out_w)
    cols = np.empty((batch * out_h * out_w, 9 * channels), dtype)
    conv.im2col(x, *geometry, cols)
    expected = (cols @ kernel.reshape(-1, filters)).reshape(batch, out_h, out_w, filters)
    z = np.full(expected.shape, np.nan, dtype)
    u = np.empty((winograd.plain_positions(dtype, out_h, out_w), channels, filters), dtype)
    winograd.conv3x3_forward(x, kernel, top, left, u, z)
    rounding = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(z, expected, rtol=rounding, atol=rounding * np.abs(expected).max())

    dz = rng.standard_normal(expected.shape).astype(dtype)
    expected_dkernel = (cols.T @ dz.reshape(-1, filters)).reshape(kernel.shape)
    expected_dx = np.empty_like(x)
    conv.col2im(dz.reshape(-1, filters) @ kernel.reshape(-1, filters).T, *geometry, expected_dx)
    dkernel = np.ones_like(kernel)  # added into
    dx = np.full_like(x, np.nan)
    winograd.conv3x3_backward(x, kernel, dz, top, left, u, dkernel, True, dx)
    np.testing.assert_allclose(dkernel - 1, expected_dkernel, rtol=rounding,
                               atol=rounding * np.abs(expected_dkernel).max())
    np.testing.assert_allclose(dx, expected_dx, rtol=rounding, atol=rounding * np.abs(expected_dx).max())


def test_conv2d_takes_the_unpooled_winograd_path_and_trains_as_im2col(monkeypatch):
    """A 3x3 stride-1 conv on 8+ channels (and too wide for the planar pass) runs
    Winograd; one SGD step equals im2col's. (Up to 16 channels float32 runs the implicit
    GEMM: kept out here.)"""
    from nbnet import layers, models, optimizers
    from nbnet.layers import convolutional

    monkeypatch.setattr(convolutional, "implicit_applies", lambda *args: False)

    rng = np.random.default_rng(4)
    x = rng.standard_normal((6, 9, 10, 8)).astype(np.float32)
    y = rng.integers(0, 3, 6)
    results = []
    for minimum in (winograd.PLAIN_MIN_CHANNELS, 10 ** 6):  # (8 input channels: Winograd, then im2col)
        monkeypatch.setattr(winograd, "PLAIN_MIN_CHANNELS", minimum)
        model = models.Sequential([layers.Input((9, 10, 8)), layers.Conv2D(40, 3, padding="same", activation="relu"),
                                   layers.Conv2D(6, 3, activation="tanh"), layers.Flatten(),
                                   layers.Dense(3, activation="softmax")], seed=0)
        model.compile(optimizers.SGD(0.1), "sparse_categorical_crossentropy")
        model.train_on_batch(x, y)
        results.append((model.get_weights(), [layer._winograd for layer in model.layers[:2]]))
    (winograd_weights, used), (im2col_weights, unused) = results
    assert used == [True, False] and unused == [False, False]  # the second conv: a 7x8 output, under 64 pixels
    for a, b in zip(winograd_weights, im2col_weights):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_wide_convs_take_winograd_and_train_as_the_implicit_gemm(monkeypatch):
    """128 channels (beyond 64 the implicit GEMM took them, at half Winograd's speed) run
    the unpooled pass, F(4x4) on 8x8 and F(2x2) on 10x10; one SGD step equals the
    implicit GEMM's."""
    from nbnet import layers, models, optimizers

    rng = np.random.default_rng(5)
    least = winograd.PLAIN_MIN_CHANNELS
    for side, variant in ((8, winograd.F4_3), (10, winograd.F2_3)):
        assert winograd.plain_variant(side, side) == variant
        x = rng.standard_normal((3, side, side, 128)).astype(np.float32)
        y = rng.integers(0, 3, 3)
        results = []
        for minimum in (least, 10 ** 6):
            monkeypatch.setattr(winograd, "PLAIN_MIN_CHANNELS", minimum)
            model = models.Sequential([layers.Input((side, side, 128)),
                                       layers.Conv2D(128, 3, padding="same", activation="relu"),
                                       layers.GlobalAveragePooling2D(), layers.Dense(3, activation="softmax")],
                                      seed=0)
            model.compile(optimizers.SGD(0.1), "sparse_categorical_crossentropy")
            model.train_on_batch(x, y)
            conv = model.layers[0]
            results.append((model.get_weights(), (conv._winograd, conv._implicit)))
        (winograd_weights, used), (implicit_weights, unused) = results
        assert used == (True, False) and unused == (False, True)
        for a, b in zip(winograd_weights, implicit_weights):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_few_images_run_the_implicit_gemm_and_predict_as_winograd(monkeypatch):
    """Under WINOGRAD_MIN_IMAGES images Conv2D runs the implicit GEMM instead of Winograd
    (3x3 unpooled, 3x3 with its pool, 5x5); from there Winograd; the outputs agree to
    rounding. float64 (no implicit GEMM) keeps Winograd for any batch."""
    from nbnet import layers

    monkeypatch.undo()
    assert convolutional.WINOGRAD_MIN_IMAGES == 16
    rng = np.random.default_rng(8)
    for size, pooled, channels, flag in ((3, False, 32, "_winograd"), (3, True, 32, "_winograd"),
                                         (5, False, 64, "_winograd5x5")):
        conv_layer = layers.Conv2D(64, size, padding="same", activation="relu")
        conv_layer.build((14, 14, channels), rng)
        if pooled:
            conv_layer.pool = layers.MaxPooling2D(2)
            conv_layer.pool.build((14, 14, 64))
        x = rng.standard_normal((16, 14, 14, channels)).astype(np.float32)
        many = conv_layer.forward(x).copy()
        assert getattr(conv_layer, flag) and not conv_layer._implicit
        few = conv_layer.forward(x[:15]).copy()
        assert conv_layer._implicit and not getattr(conv_layer, flag)
        np.testing.assert_allclose(few, many[:15], rtol=1e-4, atol=1e-4 * np.abs(many).max())
        conv_layer.astype(np.float64)
        conv_layer.forward(x[:2].astype(np.float64))
        assert getattr(conv_layer, flag) and not conv_layer._implicit


def test_the_f4x4_limit_follows_the_cpu_family_and_leaves_thin_layers_alone(monkeypatch):
    """On AMD's Zen 4 F(4x4, 3x3) took only shares up to F4_MAX_PRODUCTS (14x14 measured
    slower there); elsewhere (measured on an Intel Xeon and on Zen 3) up to 0.75 of
    F(2x2)'s products, unpooled and with the pool apart. Thin layers keep F4_MAX_PRODUCTS
    on every CPU."""
    assert winograd.host_f4_max_products("znver4") == winograd.F4_MAX_PRODUCTS
    assert winograd.host_f4_max_products("sapphirerapids") == winograd.host_f4_max_products("znver3") == 0.75
    for cpu_name, f4_at_14 in (("znver4", False), ("sapphirerapids", True), ("znver3", True)):
        monkeypatch.setattr(winograd, "HOST_F4_MAX_PRODUCTS", winograd.host_f4_max_products(cpu_name))
        assert (winograd.plain_variant(14, 14) == winograd.F4_3) == f4_at_14
        assert winograd.pool_apart(np.float32, 14, 14) == f4_at_14
        assert winograd.plain_variant(28, 28) == winograd.F4_3  # 0.56 on both
        assert winograd.plain_variant(6, 6) == winograd.F2_3  # 1.0 on both
        assert not winograd.pool_apart(np.float32, 10, 10)  # 0.81: the MNIST CNN's second conv stays fused
        assert not winograd.f4_over_implicit(np.float32, 16, 32, 14, 14)


def test_a_pooled_conv_runs_f4x4_with_the_pool_apart_and_trains_as_without_winograd(monkeypatch):
    """A float32 3x3 conv + 2x2 max pool whose output suits F(4x4, 3x3) (16x16) runs the
    unpooled Winograd pass and the pool apart (winograd.pool_apart); one SGD step equals
    the one without Winograd (the implicit GEMM)."""
    from nbnet import layers, models, optimizers
    from nbnet.devices import cpu

    assert winograd.pool_apart(np.float32, 16, 16) and not winograd.pool_apart(np.float64, 16, 16)
    assert not winograd.pool_apart(np.float32, 10, 10)  # the MNIST CNN's second conv (pool-trimmed) stays fused
    rng = np.random.default_rng(6)
    x = rng.standard_normal((5, 16, 16, 32)).astype(np.float32)
    y = rng.integers(0, 3, 5)
    results = []
    for with_winograd in (True, False):
        if not with_winograd:
            monkeypatch.setattr(cpu, "conv3x3_forward", None)
            monkeypatch.setattr(cpu, "conv3x3_maxpool_forward", None)
        model = models.Sequential([layers.Input((16, 16, 32)), layers.Conv2D(24, 3, padding="same", activation="relu"),
                                   layers.MaxPooling2D(2), layers.Flatten(), layers.Dense(3, activation="softmax")],
                                  seed=0)
        model.compile(optimizers.SGD(0.1), "sparse_categorical_crossentropy")
        model.train_on_batch(x, y)
        conv = model.layers[0]
        results.append((model.get_weights(), conv.pool is not None, conv._winograd, conv._fused_winograd))
    (weights, pooled, used, fused), (reference, _, unused, _) = results
    assert pooled and used and not fused and not unused
    for a, b in zip(weights, reference):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_a_thin_conv_with_enough_channel_pairs_runs_f4x4_and_trains_as_the_implicit_gemm(monkeypatch):
    """16 -> 32 channels on a 16x16 output: F(4x4, 3x3) (winograd.f4_over_implicit), not
    the implicit GEMM Conv2D gives other thin layers; one SGD step equals the implicit
    GEMM's."""
    from nbnet import layers, models, optimizers
    from nbnet.layers import convolutional

    assert winograd.f4_over_implicit(np.float32, 16, 32, 16, 16)
    assert not winograd.f4_over_implicit(np.float32, 16, 16, 16, 16)  # 256 pairs
    assert not winograd.f4_over_implicit(np.float32, 16, 32, 14, 14)  # F(2x2) there
    rng = np.random.default_rng(7)
    x = rng.standard_normal((5, 16, 16, 16)).astype(np.float32)
    y = rng.integers(0, 3, 5)
    results = []
    for rule in (winograd.f4_over_implicit, lambda *args: False):
        monkeypatch.setattr(convolutional, "winograd_f4_over_implicit", rule)
        model = models.Sequential([layers.Input((16, 16, 16)), layers.Conv2D(32, 3, padding="same", activation="relu"),
                                   layers.Flatten(), layers.Dense(3, activation="softmax")], seed=0)
        model.compile(optimizers.SGD(0.1), "sparse_categorical_crossentropy")
        model.train_on_batch(x, y)
        results.append((model.get_weights(), model.layers[0]._winograd, model.layers[0]._implicit))
    (weights, used, _), (reference, unused, implicit) = results
    assert used and not unused and implicit
    for a, b in zip(weights, reference):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("channels", [3, 6, 15, 16, 32])
@pytest.mark.parametrize("code, pool_size, height, width", [(RELU, 2, 11, 9), (LINEAR, 2, 8, 8), (RELU, 3, 10, 7)])
def test_the_pools_activation_gradient_matches_numpy(channels, code, pool_size, height, width):
    """pool.maxpool_activation_backward (few channels: each window's gradient stored at its
    maximum in a zeroed image; from 16 the pass over every pixel) against NumPy: the
    gradient at each window's maximum where the rectifier passed it, zero elsewhere (rows
    and columns past the last whole window too, whatever the buffer held), the bias
    gradient the sum."""
    rng = np.random.default_rng(channels + pool_size)
    z = rng.standard_normal((5, height, width, channels)).astype(np.float32)
    out_shape = (5, height // pool_size, width // pool_size, channels)
    y, argmax = np.empty(out_shape, np.float32), np.empty(out_shape, np.int32)
    pool.bias_activation_maxpool(z, np.zeros(0, np.float32), code, pool_size, pool_size, y, argmax)
    dy = rng.standard_normal(out_shape).astype(np.float32)
    dz = np.full(z.shape, np.nan, np.float32)  # stale values from an earlier step
    dbias = np.ones(channels, np.float32)
    pool.maxpool_activation_backward(dy, argmax, y, code, pool_size, pool_size, dz, dbias)
    expected = np.zeros(z.shape, np.float32)
    passed = dy if code == LINEAR else np.where(y > 0, dy, 0)
    n, i, j, c = np.indices(out_shape)
    expected.reshape(5, -1, channels)[n, argmax, c] = passed
    np.testing.assert_array_equal(dz, expected)
    np.testing.assert_allclose(dbias, 1 + expected.sum(axis=(0, 1, 2)), rtol=1e-5, atol=1e-5)
