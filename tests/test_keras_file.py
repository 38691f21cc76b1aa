"""Keras 3 .keras files: Keras-written files (tests/fixtures/keras_files, made by
tools/keras_parity.py) load and predict as Keras predicted; nbnet's own .keras files read
back exactly; files that are code, foreign or corrupt are refused with nbnet's error."""

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from nbnet import layers, models
from nbnet.errors import ModelFileError

FIXTURES = Path(__file__).parent / "fixtures"
CASES = json.loads((FIXTURES / "keras_parity.json").read_text())["keras_files"]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c["name"])
def test_keras_written_file_exports_to_verified_onnx(case, tmp_path):
    """Keras file in, ONNX out, without TensorFlow: checked by onnx.checker, shape inference
    and onnxruntime against nbnet, which itself matched Keras above."""
    from nbnet.onnx import export

    model = models.load_model(FIXTURES / "keras_files" / case["file"])
    x = np.asarray(case["x"], np.float32)
    result = export(model, tmp_path / "m.onnx", x=x, print_fn=lambda *_: None)
    assert result.report.max_abs_diff <= 1e-5
    np.testing.assert_allclose(model.predict(x), case["predictions"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c["name"])
def test_keras_legacy_h5_file_loads_and_predicts(case):
    model = models.load_model(FIXTURES / "keras_files" / case["legacy_file"])
    np.testing.assert_allclose(model.predict(np.asarray(case["x"], np.float32)), case["predictions"], rtol=1e-5,
                               atol=1e-6)
    assert type(model.optimizer).__name__.lower() == case["optimizer"]
    # The same weights from a Keras 2 style weights file, into a fresh copy of the model.
    fresh = models.load_model(FIXTURES / "keras_files" / case["legacy_file"])
    for layer in fresh.layers:
        layer.set_weights([np.zeros_like(w) for w in layer.get_weights()])
    fresh.load_weights(FIXTURES / "keras_files" / case["legacy_weights"])
    for got, expected in zip(fresh.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c["name"])
def test_keras_written_file_loads_predicts_and_trains(case, tmp_path):
    model = models.load_model(FIXTURES / "keras_files" / case["file"])
    x = np.asarray(case["x"], np.float32)
    np.testing.assert_allclose(model.predict(x), case["predictions"], rtol=1e-5, atol=1e-6)
    assert model.loss.name == case["loss"] or (case["loss"] == "mse" and model.loss.name == "mean_squared_error")
    assert type(model.optimizer).__name__.lower() == case["optimizer"]
    # nbnet's .keras of it reads back to the same model.
    model.save(tmp_path / "again.keras")
    again = models.load_model(tmp_path / "again.keras")
    assert [type(layer).__name__ for layer in again.layers] == [type(layer).__name__ for layer in model.layers]
    for got, expected in zip(again.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(again.predict(x), model.predict(x))
    # A Keras-trained model continues training here.
    width = model.output_shape[-1]
    y = np.arange(len(x)) % width if "sparse" in case["loss"] else np.eye(width, dtype=np.float32)[
        np.arange(len(x)) % width] if width > 1 else (np.arange(len(x)) % 2).astype(np.float32)[:, None]
    history = model.fit(x, y, epochs=2, batch_size=2, verbose=0)
    assert np.isfinite(history.history["loss"]).all()


def test_refusals(tmp_path):
    source = FIXTURES / "keras_files" / "mlp.keras"

    def rewritten(name, change):
        with zipfile.ZipFile(source) as archive:
            files = {item: archive.read(item) for item in archive.namelist()}
        config = json.loads(files["config.json"])
        change(config["config"]["layers"])
        files["config.json"] = json.dumps(config).encode()
        path = tmp_path / name
        with zipfile.ZipFile(path, "w") as archive:
            for item, data in files.items():
                archive.writestr(item, data)
        return path

    def to_lambda(layers_config):
        layers_config[1] = {"module": "keras.layers", "class_name": "Lambda", "config": {"name": "sneaky",
                                                                                       "function": "os.system"}}

    with pytest.raises(ModelFileError, match=r"'sneaky' \(Lambda\) is custom code"):
        models.load_model(rewritten("lambda.keras", to_lambda))

    def constrain(layers_config):
        layers_config[1]["config"]["kernel_constraint"] = {"class_name": "MaxNorm", "config": {"max_value": 2}}

    with pytest.raises(ModelFileError, match=r"\(Dense\): kernel_constraint=.*MaxNorm.* is not supported"):
        models.load_model(rewritten("constraint.keras", constrain))

    def unknown(layers_config):
        layers_config[1]["class_name"] = "LSTM"

    with pytest.raises(ModelFileError, match="Keras LSTM, which nbnet does not have"):
        models.load_model(rewritten("lstm.keras", unknown))
    truncated = tmp_path / "truncated.keras"
    truncated.write_bytes(source.read_bytes()[:2000])
    with pytest.raises(ModelFileError):
        models.load_model(truncated)
    foreign = tmp_path / "foreign.keras"
    with zipfile.ZipFile(foreign, "w") as archive:
        archive.writestr("readme.txt", "not a model")
    with pytest.raises(ModelFileError):
        models.load_model(foreign)


def test_legacy_h5_round_trip_and_a_failed_save_leaves_nothing(tmp_path):
    model = models.load_model(FIXTURES / "keras_files" / "cnn_batchnorm.keras")
    model.save(tmp_path / "m.h5")
    again = models.load_model(tmp_path / "m.h5")
    for got, expected in zip(again.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(got, expected)
    assert again.loss.name == model.loss.name
    unbuilt = models.Sequential([layers.Dense(2)])
    with pytest.raises(Exception, match="not built"):
        unbuilt.save(tmp_path / "u.keras")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.h5"]


CONTINUED = json.loads((FIXTURES / "keras_parity.json").read_text())["continued_training"]


@pytest.mark.parametrize("case", CONTINUED["cases"], ids=lambda c: c["optimizer"])
def test_training_continues_from_a_keras_file_as_in_keras(case, tmp_path):
    """Keras trained two steps and saved (its optimizer's moments included), then trained two
    more; nbnet, continuing from the file, must reach the same weights. Then nbnet's own
    .keras of the continued model carries the state on (read back, the next step is the same)."""
    model = models.load_model(FIXTURES / "keras_files" / case["file"])
    assert model.optimizer.iterations == 2
    x, y = np.asarray(CONTINUED["x"], np.float32), np.asarray(CONTINUED["y"])
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    for got, expected in zip(model.get_weights(), case["weights_after"]):
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    model.save(tmp_path / "continued.keras")
    again = models.load_model(tmp_path / "continued.keras")
    assert again.optimizer.iterations == 4
    for name, value in model.optimizer.slots.items():
        np.testing.assert_array_equal(again.optimizer.slots[name], value)
