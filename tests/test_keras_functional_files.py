"""Functional models in Keras's files. Keras-written .keras, .h5 and .weights.h5 files
(tests/fixtures/keras_files/functional_*, made by tools/keras_functional_files.py: a
residual CNN with BatchNormalization, an Inception block, a siamese model with a shared
layer on two inputs, Sequential and functional models used as layers, Average / Maximum
/ Minimum, a shared encoder with a frozen layer) load, predict and train on as Keras did,
and export to verified ONNX; nbnet's own files of them read back identically and keep
Keras's layout; what nbnet cannot run is refused with nbnet's own error."""

import io
import json
import sys
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest

import nbnet
from nbnet import layers, models
from nbnet.errors import ModelFileError

FIXTURES = Path(__file__).parent / "fixtures" / "keras_files"
CASES = json.loads((FIXTURES / "functional_cases.json").read_text())["cases"]
sys.path.insert(0, str(Path(__file__).parent.parent / "tools"))
import keras_functional_files  # noqa: E402  (the architectures, as plain Python; Keras is not imported)


def inputs(case):
    xs = [np.asarray(x, np.float32) for x in case["x"]]
    return xs[0] if len(xs) == 1 else xs


def weights_by_layer(model):
    return {layer.name: layer.get_weights() for layer in model._weight_layers() if layer.weight_order}


def assert_same_weights(model, other):
    ours, theirs = weights_by_layer(model), weights_by_layer(other)
    assert list(ours) == list(theirs)
    for name, arrays in ours.items():
        for got, expected in zip(theirs[name], arrays):
            np.testing.assert_array_equal(got, expected)


def h5_names(data):
    """Every group and dataset path in HDF5 bytes or a file, with its shape (None: a group)."""
    found = {}
    with h5py.File(data if isinstance(data, Path) else io.BytesIO(data), "r") as h5:
        h5.visititems(lambda name, item: found.__setitem__(name, getattr(item, "shape", None)))
    return found


@pytest.mark.parametrize("case", CASES, ids=lambda c: c["name"])
def test_keras_file_predicts_and_trains_on_as_keras(case):
    model = models.load_model(FIXTURES / case["keras"])
    x = inputs(case)
    assert [layer.name for layer in model.layers] == case["layers"]  # Keras's order
    np.testing.assert_allclose(model.predict(x), case["predictions"], rtol=1e-5, atol=1e-6)
    assert type(model.optimizer).__name__ == case["optimizer"]
    assert model.loss.name == case["loss"]
    assert model.optimizer.iterations == case["iterations"]  # Keras's optimizer state came along
    history = model.fit(x, np.asarray(case["y"]), batch_size=case["batch_size"], epochs=1, shuffle=False,
                        verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    after = weights_by_layer(model)
    assert sorted(after) == sorted(case["weights_after"])
    for name, arrays in case["weights_after"].items():
        for got, expected in zip(after[name], arrays):
            np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c["name"])
def test_legacy_h5_and_weights_files(case):
    x = inputs(case)
    model = models.load_model(FIXTURES / case["h5"])
    np.testing.assert_allclose(model.predict(x), case["predictions"], rtol=1e-5, atol=1e-6)
    assert type(model.optimizer).__name__ == case["optimizer"] and model.loss.name == case["loss"]
    # Keras's .weights.h5, and the weights of its legacy .h5 (matched by order, as Keras 2
    # does), into the same architecture built here, its layers numbered in Keras's order.
    for weights in (case["weights"], case["h5"]):
        built = keras_functional_files.build(nbnet, case["name"])
        built.load_weights(FIXTURES / weights)
        np.testing.assert_allclose(built.predict(x), case["predictions"], rtol=1e-5, atol=1e-6, err_msg=weights)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c["name"])
def test_keras_file_exports_to_verified_onnx(case, tmp_path):
    from nbnet.onnx import export

    model = models.load_model(FIXTURES / case["keras"])
    result = export(model, tmp_path / "m.onnx", x=inputs(case), print_fn=None)
    assert result.report.max_abs_diff <= 1e-5


@pytest.mark.parametrize("case", CASES, ids=lambda c: c["name"])
def test_nbnet_written_files_read_back_identically_in_keras_layout(case, tmp_path):
    model = models.load_model(FIXTURES / case["keras"])
    x = inputs(case)
    model.fit(x, np.asarray(case["y"]), batch_size=case["batch_size"], epochs=1, shuffle=False, verbose=0)
    model.save(tmp_path / "m.keras")
    model.save(tmp_path / "m.h5")
    model.save_weights(tmp_path / "m.weights.h5")
    again = models.load_model(tmp_path / "m.keras")
    assert_same_weights(model, again)
    np.testing.assert_array_equal(again.predict(x), model.predict(x))
    assert again.optimizer.iterations == model.optimizer.iterations
    for name, value in again.optimizer.slots.items():  # the slots Keras's layout has
        np.testing.assert_array_equal(value, model.optimizer.slots[name])
    legacy = models.load_model(tmp_path / "m.h5")
    assert_same_weights(model, legacy)
    assert type(legacy.optimizer) is type(model.optimizer) and legacy.loss.name == model.loss.name
    built = keras_functional_files.build(nbnet, case["name"])
    built.load_weights(tmp_path / "m.weights.h5")
    np.testing.assert_array_equal(built.predict(x), model.predict(x))
    for trained in (model, again):  # the same next step from the file as without it
        trained.fit(x, np.asarray(case["y"]), batch_size=case["batch_size"], epochs=1, shuffle=False, verbose=0)
    assert_same_weights(model, again)
    # Keras's layout, as Keras wrote it: the same groups and datasets (the optimizer's too),
    # the layers listed in Keras's order.
    assert h5_names(tmp_path / "m.weights.h5") == h5_names(FIXTURES / case["weights"])
    with zipfile.ZipFile(tmp_path / "m.keras") as ours, zipfile.ZipFile(FIXTURES / case["keras"]) as keras_file:
        assert h5_names(ours.read("model.weights.h5")) == h5_names(keras_file.read("model.weights.h5"))
        assert [entry["name"] for entry in json.loads(ours.read("config.json"))["config"]["layers"]] == case["layers"]
    with h5py.File(tmp_path / "m.h5", "r") as ours, h5py.File(FIXTURES / case["h5"], "r") as keras_file:
        assert list(ours["model_weights"].attrs["layer_names"]) == list(
            keras_file["model_weights"].attrs["layer_names"])
        for name in case["layers"]:
            assert len(ours["model_weights"][name].attrs["weight_names"]) == len(
                keras_file["model_weights"][name].attrs["weight_names"])


def keras2_dialect(config):
    """A Keras 3 model config as Keras 2 / tf.keras wrote it: no module keys, class_name
    "Model", each call a list of [layer, node, tensor, kwargs], batch_input_shape."""
    config = {"class_name": "Model" if config["class_name"] == "Functional" else config["class_name"],
              "config": dict(config["config"])}
    inner = config["config"]
    entries = []
    for entry in inner["layers"]:
        if entry["class_name"] in ("Functional", "Sequential"):
            new = keras2_dialect(entry)
        else:
            new = {"class_name": entry["class_name"], "config": dict(entry["config"])}
            if "batch_shape" in new["config"]:
                new["config"]["batch_input_shape"] = new["config"].pop("batch_shape")
        if "inbound_nodes" in entry:
            new["name"] = entry["name"]
            new["inbound_nodes"] = [[[*arg["config"]["keras_history"], {}] for arg in
                                     (node["args"][0] if isinstance(node["args"][0], list) else node["args"])]
                                    for node in entry["inbound_nodes"]]
        entries.append(new)
    inner["layers"] = entries
    if "input_layers" in inner:
        for key in ("input_layers", "output_layers"):
            inner[key] = [inner[key]] if isinstance(inner[key][0], str) else inner[key]
    return config


@pytest.mark.parametrize("name", ["nested", "siamese", "inception"])
def test_keras2_legacy_h5_dialect(name, tmp_path):
    """tf.keras's .h5: class_name "Model", calls as nested lists, input_layers always a list."""
    case = next(c for c in CASES if c["name"] == name)
    path = tmp_path / "keras2.h5"
    path.write_bytes((FIXTURES / case["h5"]).read_bytes())
    with h5py.File(path, "r+") as h5:
        h5.attrs["model_config"] = json.dumps(keras2_dialect(json.loads(h5.attrs["model_config"])))
    model = models.load_model(path)
    np.testing.assert_allclose(model.predict(inputs(case)), case["predictions"], rtol=1e-5, atol=1e-6)


def rewritten(tmp_path, source, change):
    """A copy of the .keras file ``source`` whose config.json ``change`` edited."""
    with zipfile.ZipFile(FIXTURES / source) as archive:
        files = {item: archive.read(item) for item in archive.namelist()}
    config = json.loads(files["config.json"])
    change(config["config"])
    files["config.json"] = json.dumps(config).encode()
    path = tmp_path / f"edited_{source}"
    with zipfile.ZipFile(path, "w") as archive:
        for item, data in files.items():
            archive.writestr(item, data)
    return path


def entry(config, name):
    return next(e for e in config["layers"] if e.get("name", e["config"].get("name")) == name)


def test_refusals_name_the_layer(tmp_path):
    with pytest.raises(ModelFileError, match=r"'doubler' \(Lambda\) is custom code"):
        models.load_model(FIXTURES / "functional_lambda.keras")
    with pytest.raises(ModelFileError, match=r"2 outputs \['first', 'second'\]; nbnet trains models with one output "
                                             "for now"):
        models.load_model(FIXTURES / "functional_two_outputs.keras")

    def lambda_in_nested_sequential(config):
        inner = entry(config, "encoder")["config"]
        inner["layers"][1] = {"module": "keras.layers", "class_name": "Lambda",
                              "config": {"name": "sneaky", "function": "os.system"}}

    with pytest.raises(ModelFileError, match=r"'sneaky' \(Lambda\) is custom code"):
        models.load_model(rewritten(tmp_path, "functional_nested.keras", lambda_in_nested_sequential))

    def unknown_class(config):
        entry(config, "branch_3x3")["class_name"] = "SeparableConv2D"

    with pytest.raises(ModelFileError, match="'branch_3x3' is a Keras SeparableConv2D, which nbnet does not have"):
        models.load_model(rewritten(tmp_path, "functional_inception.keras", unknown_class))

    def dangling(config):
        entry(config, "mixed")["inbound_nodes"][0]["args"][0][0]["config"]["keras_history"][0] = "nowhere"

    with pytest.raises(ModelFileError, match=r"cannot be connected.*unknown layers \['nowhere'\]"):
        models.load_model(rewritten(tmp_path, "functional_inception.keras", dangling))

    def channels_first(config):
        entry(config, "stem_bn")["config"]["axis"] = 1

    with pytest.raises(ModelFileError, match=r"'stem_bn' \(BatchNormalization\): axis=1 is not supported"):
        models.load_model(rewritten(tmp_path, "functional_residual_cnn.keras", channels_first))


def test_a_model_with_two_outputs_is_not_written(tmp_path):
    inputs = nbnet.Input((3,))
    hidden = layers.Dense(4)(inputs)
    model = nbnet.Model(inputs, [layers.Dense(2)(hidden), layers.Dense(1)(hidden)])
    for name in ("two.keras", "two.h5"):
        with pytest.raises(ModelFileError, match="2 outputs; nbnet writes Keras files of models with one output"):
            model.save(tmp_path / name)
    assert not list(tmp_path.iterdir())
