"""Winograd F(2x2, 5x5), the pass of 5x5 convolutions from 16 channels: its transforms,
its output and gradients against a float64 convolution, the layer's gradients against
finite differences, and a training step against im2col's."""

import numpy as np
import pytest

import nbnet as keras
from nbnet import layers
from nbnet.kernels.conv import im2col, output_geometry
from nbnet.kernels import winograd5x5
from nbnet.kernels.winograd5x5 import conv5x5_forward, toom_cook


@pytest.fixture(autouse=True)
def zen_pairs(monkeypatch):
    """The layers here take this pass from 512 channel pairs (Zen 4's rule) on any CPU
    and from one image: their tests are of the pass, test_applies_... checks where each CPU
    family takes it, tests/test_winograd.py from how many images."""
    from nbnet.layers import convolutional

    monkeypatch.setattr(winograd5x5, "HOST_MIN_CHANNEL_PAIRS", winograd5x5.MIN_CHANNEL_PAIRS)
    monkeypatch.setattr(convolutional, "WINOGRAD_MIN_IMAGES", 1)


@pytest.mark.parametrize("m, r, points", [(2, 5, (0, 1, -1, 2, -2)), (2, 3, (0, 1, -1)), (4, 3, (0, 1, -1, 2, -2))])
def test_toom_cook_matrices_compute_a_correlation(m, r, points):
    a_t, g, b_t = toom_cook(m, r, points)
    rng = np.random.default_rng(m + r)
    for _ in range(5):
        kernel, signal = rng.standard_normal(r), rng.standard_normal(m + r - 1)
        expected = [kernel @ signal[i:i + r] for i in range(m)]
        np.testing.assert_allclose(a_t @ ((g @ kernel) * (b_t @ signal)), expected, rtol=1e-12, atol=1e-12)


def test_toom_cook_needs_distinct_points():
    with pytest.raises(ValueError, match="needs 5 distinct points"):
        toom_cook(2, 5, (0, 1, -1, 2, 2))


def reference_conv(x, kernel, padding):
    """The convolution in float64, by im2col."""
    batch, height, width, channels = x.shape
    out_h, out_w, top, left = output_geometry(height, width, (5, 5), (1, 1), padding)
    cols = np.empty((batch * out_h * out_w, 25 * channels))
    im2col(x.astype(np.float64), 5, 5, 1, 1, top, left, out_h, out_w, cols)
    return (cols @ kernel.reshape(-1, kernel.shape[-1]).astype(np.float64)).reshape(batch, out_h, out_w, -1)


@pytest.mark.parametrize("batch, height, width, channels, filters, padding", [
    (3, 14, 14, 32, 64, "same"),   # TensorFlow's MNIST net's second layer
    (2, 13, 11, 16, 8, "valid"),   # odd outputs: the last blocks half outside
    (1, 9, 12, 24, 5, "same"),
    (40, 8, 8, 16, 16, "same"),    # more blocks than a chunk: several chunks per worker
])
def test_forward_equals_the_convolution(batch, height, width, channels, filters, padding):
    rng = np.random.default_rng(batch * height)
    x = rng.standard_normal((batch, height, width, channels)).astype(np.float32)
    kernel = (rng.standard_normal((5, 5, channels, filters)) / np.sqrt(25 * channels)).astype(np.float32)
    expected = reference_conv(x, kernel, padding)
    _, _, top, left = output_geometry(height, width, (5, 5), (1, 1), padding)
    z = np.full(expected.shape, np.nan, np.float32)
    conv5x5_forward(x, kernel, top, left, np.empty((36, channels, filters), np.float32), z)
    # Float32 rounding through transforms whose coefficients reach 5: within 2e-5 of the
    # outputs' scale (im2col + BLAS: within 5e-6).
    assert np.abs(z - expected).max() <= 2e-5 * np.abs(expected).max()


def reference_backward(x, kernel, dz, padding):
    """The kernel and input gradients of the convolution in float64: im2col's products and
    the columns' gradient added back window by window."""
    batch, height, width, channels = x.shape
    out_h, out_w, top, left = output_geometry(height, width, (5, 5), (1, 1), padding)
    cols = np.empty((batch * out_h * out_w, 25 * channels))
    im2col(x.astype(np.float64), 5, 5, 1, 1, top, left, out_h, out_w, cols)
    rows = dz.reshape(-1, kernel.shape[-1]).astype(np.float64)
    dkernel = (cols.T @ rows).reshape(kernel.shape)
    windows = (rows @ kernel.reshape(-1, kernel.shape[-1]).astype(np.float64).T).reshape(
        batch, out_h, out_w, 5, 5, channels)
    padded = np.zeros((batch, height + 8, width + 8, channels))
    for p in range(5):
        for q in range(5):
            padded[:, 4 - top + p:4 - top + p + out_h, 4 - left + q:4 - left + q + out_w] += windows[:, :, :, p, q]
    return dkernel, padded[:, 4:4 + height, 4:4 + width]


@pytest.mark.parametrize("batch, height, width, channels, filters, padding, dtype", [
    (3, 14, 14, 32, 64, "same", np.float32),
    (2, 13, 11, 16, 8, "valid", np.float32),
    (40, 8, 8, 16, 16, "same", np.float32),
    (2, 9, 7, 16, 3, "same", np.float64),
])
def test_backward_equals_the_convolutions_gradients(batch, height, width, channels, filters, padding, dtype):
    rng = np.random.default_rng(batch + channels)
    x = rng.standard_normal((batch, height, width, channels)).astype(dtype)
    kernel = (rng.standard_normal((5, 5, channels, filters)) / np.sqrt(25 * channels)).astype(dtype)
    out_h, out_w, top, left = output_geometry(height, width, (5, 5), (1, 1), padding)
    dz = rng.standard_normal((batch, out_h, out_w, filters)).astype(dtype)
    expected_dkernel, expected_dx = reference_backward(x, kernel, dz, padding)
    dkernel = np.ones_like(kernel)  # the gradient is added in
    dx = np.full(x.shape, np.nan, dtype)
    winograd5x5.conv5x5_backward(x, kernel, dz, top, left, np.empty((36, channels, filters), dtype), dkernel,
                                 True, dx)
    rounding = 3e-5 if dtype == np.float32 else 1e-12
    assert np.abs(dkernel - 1 - expected_dkernel).max() <= rounding * np.abs(expected_dkernel).max()
    assert np.abs(dx - expected_dx).max() <= rounding * np.abs(expected_dx).max()
    untouched = np.full(x.shape, 7.0, dtype)
    winograd5x5.conv5x5_backward(x, kernel, dz, top, left, np.empty((36, channels, filters), dtype),
                                 np.zeros_like(kernel), False, untouched)
    assert (untouched == 7.0).all()


def test_applies_to_5x5_stride_1_from_16_channels_and_512_pairs():
    assert winograd5x5.applies((5, 5), (1, 1), 16, 32, 196)
    assert winograd5x5.applies((5, 5), (1, 1), 24, 48, 196)
    assert not winograd5x5.applies((5, 5), (1, 1), 16, 16, 196)  # 256 pairs: the planar pass is faster
    assert not winograd5x5.applies((5, 5), (1, 1), 8, 128, 196)
    assert not winograd5x5.applies((5, 5), (2, 2), 32, 64, 196)
    assert not winograd5x5.applies((3, 3), (1, 1), 32, 64, 196)
    assert not winograd5x5.applies((5, 5), (1, 1), 32, 64, 49)  # 7x7: the implicit GEMM is faster


def test_off_zen4_the_implicit_gemm_keeps_up_to_1024_channel_pairs(monkeypatch):
    assert winograd5x5.min_channel_pairs("znver4") == winograd5x5.MIN_CHANNEL_PAIRS == 512
    assert winograd5x5.min_channel_pairs("znver3") == winograd5x5.min_channel_pairs("sapphirerapids") == 1025
    monkeypatch.setattr(winograd5x5, "HOST_MIN_CHANNEL_PAIRS", winograd5x5.min_channel_pairs("sapphirerapids"))
    assert not winograd5x5.applies((5, 5), (1, 1), 16, 32, 196)
    assert not winograd5x5.applies((5, 5), (1, 1), 32, 32, 196)
    assert winograd5x5.applies((5, 5), (1, 1), 24, 48, 196)
    assert winograd5x5.applies((5, 5), (1, 1), 32, 64, 196)
    conv = layers.Conv2D(32, 5, padding="same")
    conv.build((14, 14, 16), np.random.default_rng(0))
    conv.forward(np.zeros((2, 14, 14, 16), np.float32))
    assert conv._implicit and not conv._winograd5x5


def _conv_layer(pool, activation, seed=0):
    """A 5x5 conv on 16 channels (float64), its bias keeping the pre-activations away
    from relu's kink, the pooled ones away from ties."""
    conv = layers.Conv2D(32, 5, padding="same", activation=activation)
    conv.build((10, 11, 16), np.random.default_rng(seed))
    conv.astype(np.float64)
    if pool:
        conv.pool = layers.MaxPooling2D(2)
        conv.pool.build((10, 11, 32))
    return conv


@pytest.mark.parametrize("pool, activation", [(False, "tanh"), (False, None), (True, "relu")])
def test_layer_gradients_equal_finite_differences(pool, activation):
    """Conv2D's Winograd pass (forward and backward) against central differences, as
    tests/test_layers.py checks every layer, pooled (the fused pool's gradient) or not."""
    import test_layers

    conv = _conv_layer(pool, activation)
    x = np.random.default_rng(7).standard_normal((2, 10, 11, 16))
    conv.forward(x, training=True)
    assert conv._winograd5x5 and not conv._planar and conv._cols is None
    test_layers.assert_gradients(conv, x, training=True)


def test_training_with_winograd_equals_training_with_im2col(monkeypatch):
    """One SGD step of a model whose 5x5 conv runs Winograd equals the step with im2col
    (up to float32 rounding); predict takes the same pass. (At 16 channels float32 runs
    the implicit GEMM: kept out here.)"""
    from nbnet.devices import cpu
    from nbnet.layers import convolutional

    monkeypatch.setattr(convolutional, "implicit_applies", lambda *args: False)

    rng = np.random.default_rng(4)
    x = rng.standard_normal((6, 12, 12, 16)).astype(np.float32)
    y = rng.integers(0, 3, 6)
    results = []
    for forward in (cpu.conv5x5_forward, None):
        monkeypatch.setattr(cpu, "conv5x5_forward", forward)
        keras.utils.set_random_seed(4)
        model = keras.Sequential([keras.Input((12, 12, 16)), layers.Conv2D(40, 5, padding="same", activation="relu"),
                                  layers.MaxPooling2D(2), layers.Flatten(), layers.Dense(3, activation="softmax")])
        model.compile(keras.optimizers.SGD(0.1), "sparse_categorical_crossentropy")
        model.train_on_batch(x, y)
        results.append((model.get_weights(), model.predict(x), model.layers[0]._winograd5x5))
    (weights, predicted, used), (im2col_weights, im2col_predicted, unused) = results
    assert used and not unused
    for a, b in zip(weights, im2col_weights):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(predicted, im2col_predicted, rtol=1e-4, atol=1e-6)


def test_model_with_a_5x5_layer_exports_and_matches_onnxruntime(tmp_path):
    from nbnet import onnx as nbnet_onnx

    keras.utils.set_random_seed(4)
    model = keras.Sequential([keras.Input((12, 12, 32)), layers.Conv2D(40, 5, padding="same", activation="relu"),
                              layers.MaxPooling2D(2), layers.Flatten(), layers.Dense(3, activation="softmax")])
    x = np.random.default_rng(3).standard_normal((5, 12, 12, 32)).astype(np.float32)
    result = nbnet_onnx.export(model, tmp_path / "net.onnx", print_fn=None, x=x)
    assert result.report.passed and model.layers[0]._winograd5x5
