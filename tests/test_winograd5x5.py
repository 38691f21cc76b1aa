"""Winograd F(2x2, 5x5), the inference pass of 5x5 convolutions: its transforms, its
output against a float64 convolution, and the layer's use of it (predict and evaluate
only; training and a backward pass after an inference pass keep im2col's results)."""

import numpy as np
import pytest

import nbnet as keras
from nbnet import layers
from nbnet.kernels.conv import im2col, output_geometry
from nbnet.kernels.winograd5x5 import conv5x5_forward, toom_cook


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


def _net(pool, filters):
    keras.utils.set_random_seed(4)
    stack = [keras.Input((12, 12, 16)), layers.Conv2D(filters, 5, padding="same", activation="relu")]
    stack += [layers.MaxPooling2D(2)] if pool else []
    model = keras.Sequential(stack + [layers.Flatten(), layers.Dense(3, activation="softmax")])
    model.compile("sgd", "sparse_categorical_crossentropy")
    return model


@pytest.mark.parametrize("pool", [False, True])
@pytest.mark.parametrize("filters, training_pass", [(40, "im2col"), (32, "planar")])
def test_predict_takes_winograd_and_training_keeps_its_pass(pool, filters, training_pass):
    """16 -> 40 channels train by im2col, 16 -> 32 by the planar pass; both predict by
    Winograd, to the same outputs up to rounding."""
    model = _net(pool, filters)
    conv = model.layers[0]
    x = np.random.default_rng(1).standard_normal((6, 12, 12, 16)).astype(np.float32)
    trained_forward = model(x, training=True).numpy()
    assert conv._planar == (training_pass == "planar") and (conv._cols is not None) == (training_pass == "im2col")
    predicted = model.predict(x)
    assert not conv._planar and conv._cols is None and conv._x is not None  # Winograd: no columns kept
    np.testing.assert_allclose(predicted, trained_forward, rtol=1e-5, atol=1e-6)
    assert not np.array_equal(predicted, trained_forward)  # (a different pass indeed)


def test_a_backward_after_an_inference_pass_gives_the_training_gradients():
    conv = layers.Conv2D(40, 5, padding="same", activation="tanh")
    conv.build((10, 10, 16), np.random.default_rng(0))
    rng = np.random.default_rng(2)
    x = rng.standard_normal((4, 10, 10, 16)).astype(np.float32)
    dy = rng.standard_normal((4, 10, 10, 40)).astype(np.float32)
    gradients = []
    for training in (True, False):
        conv.forward(x, training=training)
        assert (conv._cols is None) == (not training)  # im2col, then Winograd
        dx = conv.backward(dy.copy()).copy()
        gradients.append((dx, conv.grads["kernel"].copy(), conv.grads["bias"].copy()))
        conv.grads["kernel"][:] = 0
        conv.grads["bias"][:] = 0
    for after_training, after_inference in zip(*gradients):
        # (the activation's derivative comes from outputs that differ in the last bits)
        np.testing.assert_allclose(after_inference, after_training, rtol=2e-4, atol=2e-6 * np.abs(after_training).max())


def test_model_with_a_5x5_layer_exports_and_matches_onnxruntime(tmp_path):
    from nbnet import onnx as nbnet_onnx

    model = _net(pool=True, filters=40)
    x = np.random.default_rng(3).standard_normal((5, 12, 12, 16)).astype(np.float32)
    result = nbnet_onnx.export(model, tmp_path / "net.onnx", print_fn=None, x=x)
    assert result.report.passed
