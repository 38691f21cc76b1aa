"""save_weights / load_weights: Keras's .weights.h5 layout, refusals that name the layer,
atomic writes."""

import h5py
import numpy as np
import pytest

from nbnet import layers, models
from nbnet.errors import ModelFileError, NbnetError


def mlp(units=8, seed=0):
    return models.Sequential([layers.Input((4,)), layers.Dense(units, activation="relu", name="hidden"),
                              layers.BatchNormalization(), layers.Dense(3, name="out")], seed=seed)


def test_layout_is_keras_per_class_numbering_not_layer_names(tmp_path):
    path = tmp_path / "m.weights.h5"
    model = mlp()
    model.save_weights(path)
    with h5py.File(path, "r") as h5:
        assert sorted(h5["layers"]) == ["batch_normalization", "dense", "dense_1"]
        assert h5["layers/dense/vars"].attrs["name"] == "hidden"
        np.testing.assert_array_equal(h5["layers/dense_1/vars/0"][()], model.get_layer("out").get_weights()[0])
        assert len(h5["layers/batch_normalization/vars"]) == 4  # gamma, beta, moving mean and variance


def test_round_trip_into_a_fresh_model_and_refusals(tmp_path):
    path = tmp_path / "m.weights.h5"
    model = mlp(seed=0)
    model.save_weights(path)
    fresh = mlp(seed=5)
    fresh.load_weights(path)
    for got, expected in zip(fresh.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(got, expected)
    wider = mlp(units=9, seed=5)
    before = wider.get_weights()
    with pytest.raises(ModelFileError, match=r"layer 'hidden' \(dense\) needs weights of shapes \[\(4, 9\), \(9,\)\]"):
        wider.load_weights(path)
    for got, expected in zip(wider.get_weights(), before):  # nothing changed
        np.testing.assert_array_equal(got, expected)
    shorter = models.Sequential([layers.Input((4,)), layers.Dense(8)])
    with pytest.raises(ModelFileError, match=r"layers \['batch_normalization', 'dense_1'\]"):
        shorter.load_weights(path)
    with pytest.raises(NbnetError, match=r"must end in \.weights\.h5"):
        model.save_weights(tmp_path / "m.h5")
    with pytest.raises(ModelFileError, match="does not exist"):
        model.load_weights(tmp_path / "missing.weights.h5")
    (tmp_path / "junk.weights.h5").write_bytes(b"not hdf5")
    with pytest.raises(ModelFileError, match="not a readable HDF5 file"):
        model.load_weights(tmp_path / "junk.weights.h5")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["junk.weights.h5", "m.weights.h5"]  # no temporary left


def test_functional_layout_numbers_layers_in_keras_order_and_nests_models(tmp_path):
    """Keras numbers a functional model's layers in its own order (by depth from the
    output), which is not the order they were called in: the deeper 1x1 conv of the second
    branch is conv2d, the first branch's conv2d_1. A model used as a layer keeps its layers
    under its own key; InputLayers and merges have keys with empty vars."""
    inputs = layers.Input((5, 5, 2))
    first = layers.Conv2D(3, 1, name="first_branch")(inputs)
    reduced = layers.Conv2D(2, 1, name="reduce")(inputs)
    second = layers.Conv2D(3, 3, padding="same", name="second_branch")(reduced)
    merged = layers.GlobalAveragePooling2D()(layers.Add()([first, second]))
    head = models.Sequential([layers.Input((3,)), layers.Dense(4, name="head_dense")])
    model = models.Model(inputs, layers.Dense(2, name="out")(head(merged)))
    path = tmp_path / "m.weights.h5"
    model.save_weights(path)
    with h5py.File(path, "r") as h5:
        assert sorted(h5["layers"]) == ["add", "conv2d", "conv2d_1", "conv2d_2", "dense", "global_average_pooling2d",
                                        "input_layer", "sequential"]
        assert [h5[f"layers/{key}/vars"].attrs["name"] for key in ("conv2d", "conv2d_1", "conv2d_2")] == [
            "reduce", "first_branch", "second_branch"]
        assert len(h5["layers/input_layer/vars"]) == 0
        np.testing.assert_array_equal(h5["layers/sequential/layers/dense/vars/0"][()],
                                      head.get_layer("head_dense").get_weights()[0])
    fresh = models.Model.from_config(model.get_config())
    fresh.load_weights(path)
    for got, expected in zip(fresh.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(got, expected)
