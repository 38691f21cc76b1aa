"""RandomFlip: Keras's augmentation layer. In training it mirrors each chosen image (one
draw per image, as Keras 3), its backward pass is the adjoint of that (the same mirror of
the gradient), and at inference it is the identity; seeded runs repeat."""

import numpy as np
import pytest

import nbnet as keras
from nbnet import layers
from nbnet.errors import NbnetError


def flipped(x, mode):
    return {"horizontal": x[:, :, ::-1], "vertical": x[:, ::-1], "horizontal_and_vertical": x[:, ::-1, ::-1]}[mode]


@pytest.mark.parametrize("mode", ["horizontal", "vertical", "horizontal_and_vertical"])
def test_training_mirrors_the_chosen_images_and_backward_is_its_adjoint(mode):
    flip = layers.RandomFlip(mode, seed=3)
    flip.build((5, 4, 3))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((400, 5, 4, 3)).astype(np.float32)
    y = flip.forward(x, training=True)
    chosen = flip._flips.astype(bool)
    np.testing.assert_array_equal(y[chosen], flipped(x[chosen], mode))
    np.testing.assert_array_equal(y[~chosen], x[~chosen])
    assert 150 < chosen.sum() < 250  # about half, one draw per image
    r = rng.standard_normal(y.shape).astype(np.float32)
    dx = flip.backward(r)
    # <forward(x), r> = <x, backward(r)>: the backward pass is the forward's adjoint.
    assert np.sum(y.astype(np.float64) * r) == pytest.approx(np.sum(x.astype(np.float64) * dx), rel=1e-9)
    np.testing.assert_array_equal(dx[chosen], flipped(r[chosen], mode))
    assert flip.forward(x) is x and flip.backward(r) is r  # inference: the identity


def _model(seed):
    return keras.Sequential([keras.Input((6, 5, 1)), layers.RandomFlip("horizontal"), layers.Conv2D(2, 3),
                             layers.Flatten(), layers.Dense(2)], seed=seed)


def test_a_seeded_model_flips_the_same_images_and_predicts_unflipped():
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((32, 6, 5, 1)).astype(np.float32), rng.standard_normal((32, 2)).astype(np.float32)
    weights = []
    for seed in (7, 7, 8):
        model = _model(seed)
        model.compile("sgd", "mse")
        model.fit(x, y, batch_size=8, epochs=2, verbose=0)
        weights.append(model.get_weights())
    for a, b in zip(weights[0], weights[1]):
        np.testing.assert_array_equal(a, b)
    assert not all(np.array_equal(a, b) for a, b in zip(weights[0], weights[2]))
    without = keras.Sequential(model.layers[1:])  # the same weights, no flip layer
    np.testing.assert_array_equal(model.predict(x), without.predict(x))


def test_exports_to_onnx_as_the_identity(tmp_path):
    from nbnet import onnx as nbnet_onnx

    model = _model(2)
    x = np.random.default_rng(2).standard_normal((5, 6, 5, 1)).astype(np.float32)
    assert nbnet_onnx.export(model, tmp_path / "flip.onnx", print_fn=None, x=x).report.passed


def test_bad_settings_are_refused_by_name():
    with pytest.raises(NbnetError, match="RandomFlip 'f': mode must be one of horizontal, vertical, "
                                         "horizontal_and_vertical, received 'diagonal'"):
        layers.RandomFlip("diagonal", name="f")
    with pytest.raises(NbnetError, match="channels_last, received data_format='channels_first'"):
        layers.RandomFlip(data_format="channels_first")
    with pytest.raises(NbnetError, match="rank 4"):
        keras.Sequential([keras.Input((6,)), layers.RandomFlip()])
