"""GlobalAveragePooling2D, GlobalMaxPooling2D, Reshape and ZeroPadding2D: forward against
NumPy, backward as the exact adjoint of forward (these maps are linear, or linear given
the max's argmax: <f(x), dy> = <x, f'(dy)>), training, saving and ONNX export."""

import numpy as np
import pytest

from nbnet import layers, models
from nbnet.errors import NbnetError, ShapeError
from nbnet.onnx import export, verify


def built(layer, shape):
    layer.build(shape, np.random.default_rng(0))
    return layer


def assert_adjoint(layer, x, rng):
    y = np.array(layer.forward(x, training=True))
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx = layer.backward(dy)
    assert dx.shape == x.shape
    assert float((y.astype(np.float64) * dy).sum()) == pytest.approx(float((x.astype(np.float64) * dx).sum()),
                                                                      rel=1e-5)
    return y, dy, dx


def test_global_average_pooling():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 5, 4, 6)).astype(np.float32)
    layer = built(layers.GlobalAveragePooling2D(), (5, 4, 6))
    y, dy, dx = assert_adjoint(layer, x, rng)
    np.testing.assert_allclose(y, x.mean(axis=(1, 2)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dx, np.broadcast_to(dy[:, None, None, :] / 20, x.shape), rtol=1e-6)
    kept = built(layers.GlobalAveragePooling2D(keepdims=True), (5, 4, 6))
    assert kept.compute_output_shape((5, 4, 6)) == (1, 1, 6) and kept.forward(x).shape == (3, 1, 1, 6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_global_average_pooling_kernels_give_the_average_pools_bits(dtype):
    """GlobalAveragePooling2D's own kernels and the average pool's over one window of the
    whole image (which it took before, and takes on the GPU): the same bits."""
    from nbnet.kernels.pool import avgpool_backward, avgpool_forward, global_avgpool_backward, global_avgpool_forward

    rng = np.random.default_rng(7)
    x = (rng.standard_normal((5, 7, 3, 9)) * 10).astype(dtype)
    y, window = np.empty((5, 9), dtype), np.full((5, 1, 1, 9), np.nan, dtype)
    global_avgpool_forward(x, y)
    avgpool_forward(x, 7, 3, 1, 1, 0, 0, window)
    np.testing.assert_array_equal(y, window.reshape(5, 9))
    dy = rng.standard_normal((5, 9)).astype(dtype)
    dx, spread = np.full_like(x, np.nan), np.full_like(x, np.nan)
    global_avgpool_backward(dy, dx)
    avgpool_backward(dy.reshape(5, 1, 1, 9), 7, 3, 1, 1, 0, 0, spread)
    np.testing.assert_array_equal(dx, spread)


def test_global_max_pooling_routes_the_gradient_to_each_maximum():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 3, 5, 4)).astype(np.float32)
    layer = built(layers.GlobalMaxPooling2D(), (3, 5, 4))
    y, dy, dx = assert_adjoint(layer, x, rng)
    np.testing.assert_array_equal(y, x.max(axis=(1, 2)))
    flat = x.reshape(2, 15, 4)
    expected = np.zeros_like(flat)
    for n in range(2):
        for c in range(4):
            expected[n, np.argmax(flat[n, :, c]), c] = dy[n, c]
    np.testing.assert_array_equal(dx, expected.reshape(x.shape))


def test_reshape_and_its_errors():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 6, 2)).astype(np.float32)
    layer = built(layers.Reshape((3, -1)), (6, 2))
    assert layer.compute_output_shape((6, 2)) == (3, 4)
    y, dy, dx = assert_adjoint(layer, x, rng)
    np.testing.assert_array_equal(y, x.reshape(4, 3, 4))
    np.testing.assert_array_equal(dx, dy.reshape(x.shape))
    with pytest.raises(ShapeError, match=r"12 values per sample.*\(None, 5, 2\)"):
        built(layers.Reshape((3, 4)), (5, 2))
    with pytest.raises(NbnetError, match="at most one -1"):
        layers.Reshape((-1, -1))


@pytest.mark.parametrize("padding,pads", [(1, ((1, 1), (1, 1))), ((2, 0), ((2, 2), (0, 0))),
                                          (((0, 3), (1, 2)), ((0, 3), (1, 2)))])
def test_zero_padding(padding, pads):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 4, 3, 5)).astype(np.float32)
    layer = built(layers.ZeroPadding2D(padding), (4, 3, 5))
    y, dy, dx = assert_adjoint(layer, x, rng)
    np.testing.assert_array_equal(y, np.pad(x, ((0, 0), *pads, (0, 0))))
    (top, _), (left, _) = pads
    np.testing.assert_array_equal(dx, dy[:, top:top + 4, left:left + 3, :])
    with pytest.raises(NbnetError, match="padding must be"):
        layers.ZeroPadding2D((1, -1))


def small_net(seed=0):
    return models.Sequential([
        layers.Input((9, 9, 1)), layers.ZeroPadding2D(1), layers.Conv2D(4, 3, activation="relu"),
        layers.MaxPooling2D(2), layers.Reshape((4, 4, 4)), layers.Conv2D(6, 2, padding="same", activation="relu"),
        layers.GlobalAveragePooling2D(), layers.Dense(3, activation="softmax")], seed=seed)


def test_a_network_of_them_trains_saves_and_exports(tmp_path):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((60, 9, 9, 1)).astype(np.float32)
    y = (x[:, :4].mean(axis=(1, 2, 3)) > 0).astype(np.int64) + (x[:, 5:].mean(axis=(1, 2, 3)) > 0)
    model = small_net()
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    first = model.evaluate(x, y, verbose=0)[0]
    model.fit(x, y, epochs=15, batch_size=20, verbose=0)
    assert model.evaluate(x, y, verbose=0)[0] < first
    model.save(tmp_path / "m.nbnet")
    np.testing.assert_array_equal(models.load_model(tmp_path / "m.nbnet").predict(x), model.predict(x))
    result = export(model, tmp_path / "m.onnx", x=x)  # checker, shape inference, onnxruntime against predict
    assert result.report.max_abs_diff < 1e-5
    keep = models.Sequential([layers.Input((5, 5, 3)), layers.GlobalMaxPooling2D(keepdims=True), layers.Flatten()])
    written = export(keep, tmp_path / "k.onnx", x=rng.standard_normal((4, 5, 5, 3)).astype(np.float32))
    report = verify(keep, written.path, rng.standard_normal((7, 5, 5, 3)).astype(np.float32))
    assert report.max_abs_diff == 0.0
