"""UpSampling2D (nearest): forward against NumPy's repeat, backward against central
differences, ONNX export (Resize) against onnxruntime, bad settings refused."""

import numpy as np
import pytest

import nbnet as keras
from nbnet import layers
from nbnet.errors import NbnetError


@pytest.mark.parametrize("size", [2, (3, 1), (2, 3)])
def test_forward_repeats_each_pixel_and_gradients_match_finite_differences(size):
    import test_layers

    layer = layers.UpSampling2D(size)
    layer.build((3, 4, 2))
    layer.astype(np.float64)
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 2))
    rows, cols = (size, size) if np.ndim(size) == 0 else size
    np.testing.assert_array_equal(layer.forward(x), x.repeat(rows, axis=1).repeat(cols, axis=2))
    assert layer.compute_output_shape((3, 4, 2)) == (3 * rows, 4 * cols, 2)
    test_layers.assert_gradients(layer, x)


def test_an_autoencoder_trains_and_exports(tmp_path):
    from nbnet import onnx as nbnet_onnx

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8, 8, 1)), layers.Conv2D(4, 3, padding="same", activation="relu"),
                              layers.MaxPooling2D(2), layers.UpSampling2D(), layers.Conv2D(1, 3, padding="same",
                                                                                           activation="sigmoid")])
    model.compile("adam", "binary_crossentropy")
    x = np.random.default_rng(1).uniform(0, 1, (32, 8, 8, 1)).astype(np.float32)
    history = model.fit(x, x, batch_size=8, epochs=5, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert nbnet_onnx.export(model, tmp_path / "autoencoder.onnx", print_fn=None, x=x[:5]).report.passed


def test_bad_settings_are_refused_by_name():
    with pytest.raises(NbnetError, match="UpSampling2D 'u': nbnet has the 'nearest' interpolation only, received "
                                         "interpolation='bilinear'"):
        layers.UpSampling2D(interpolation="bilinear", name="u")
    with pytest.raises(NbnetError, match="size must be a positive int or"):
        layers.UpSampling2D((2, 0))
    with pytest.raises(NbnetError, match="channels last"):
        layers.UpSampling2D(data_format="channels_first")
