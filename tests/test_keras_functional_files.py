"""Functional models in Keras's files. Keras-written .keras, .h5 and .weights.h5 files
(tests/fixtures/keras_files/functional_*, made by tools/keras_functional_files.py: a
residual CNN with BatchNormalization, an Inception block, a siamese model with a shared
layer on two inputs, Sequential and functional models used as layers, Average / Maximum
/ Minimum, a shared encoder with a frozen layer; and three with several outputs: two heads
compiled with dicts by output name, two inputs and two outputs compiled with lists, and
outputs given as a dict) load with their compile settings (per output: loss, loss weight,
metrics) and optimizer state, predict and train on as Keras did, and export to verified
ONNX; nbnet's own files of them read back identically and keep Keras's layout; what
nbnet cannot run is refused with nbnet's own error, naming it."""

import io
import json
import sys
import warnings
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
SEVERAL = [case for case in CASES if "compile" in case]  # several outputs
sys.path.insert(0, str(Path(__file__).parent.parent / "tools"))
import keras_functional_files  # noqa: E402  (the architectures, as plain Python; Keras is not imported)


def inputs(case):
    xs = [np.asarray(x, np.float32) for x in case["x"]]
    return xs[0] if len(xs) == 1 else xs


def targets(case):
    """The training targets: an array, or with several outputs a dict by output name."""
    if isinstance(case["y"], dict):
        return {name: np.asarray(values) for name, values in case["y"].items()}
    return np.asarray(case["y"])


def by_output(model, predicted):
    """``predict``'s result as {output name: array} (one output: under None)."""
    if isinstance(predicted, dict):
        return predicted
    if isinstance(predicted, list):
        return dict(zip(model.output_names, predicted))
    return {None: predicted}


def assert_predicts_as_keras(model, case, x=None, **tolerance):
    got = by_output(model, model.predict(inputs(case) if x is None else x))
    expected = case["predictions"] if isinstance(case["predictions"], dict) else {None: case["predictions"]}
    assert sorted(got, key=str) == sorted(expected, key=str)
    for name, values in expected.items():
        np.testing.assert_allclose(got[name], values, **(tolerance or {"rtol": 1e-5, "atol": 1e-6}), err_msg=name)


def assert_same_predictions(model, other, x):
    ours, theirs = by_output(model, model.predict(x)), by_output(other, other.predict(x))
    assert sorted(ours, key=str) == sorted(theirs, key=str)
    for name in ours:
        np.testing.assert_array_equal(theirs[name], ours[name])


def compile_settings(model):
    """Per output: the loss's name, the loss weight and the metrics' names."""
    return {head.name: (head.loss.name, head.weight, sorted(metric.name for metric in head.metrics))
            for head in model._heads}


def assert_compiled_as_keras(model, case):
    assert type(model.optimizer).__name__ == case["optimizer"]
    if "compile" not in case:
        assert model.loss.name == case["loss"]
        return
    expected = case["compile"]
    assert model._output_keys() == expected["outputs"]
    assert compile_settings(model) == {name: (expected["loss"][name], expected["loss_weights"][name],
                                              expected["metrics"][name]) for name in expected["outputs"]}


def weights_by_layer(model):
    return {layer.name: layer.get_weights() for layer in model._weight_layers() if layer.weight_order}


def assert_same_weights(model, other):
    ours, theirs = weights_by_layer(model), weights_by_layer(other)
    assert sorted(ours) == sorted(theirs)
    for name, arrays in ours.items():
        for got, expected in zip(theirs[name], arrays):
            np.testing.assert_array_equal(got, expected)


# Logs nbnet computes otherwise than Keras: 'accuracy' compiled with mean_squared_error on a
# two-wide output is Keras's categorical_accuracy (Keras 3 picks the accuracy by the
# shapes of targets and outputs), nbnet's exact-match Accuracy (nbnet picks it by the loss).
OTHER_ACCURACY = {("shared_encoder", "accuracy")}


def slots_by_weight(model):
    """{(layer name, weight key, slot): the optimizer's slot for that weight}."""
    from nbnet.keras_optimizer_state import flat_offsets

    return {(layer.name, key, slot): values[offset:offset + int(np.prod(shape))]
            for (layer, key), (offset, shape) in ((pair, flat_offsets(model)[(id(pair[0]), pair[1])])
                                                  for pair in model._flat_entries)
            for slot, values in model.optimizer.slots.items()}


def assert_trains_on_as_keras(model, case):
    """One more epoch from the file: Keras's weights and logs (names and values) after it."""
    history = model.fit(inputs(case), targets(case), batch_size=case["batch_size"], epochs=1, shuffle=False,
                        verbose=0)
    logs = {key: values[-1] for key, values in history.history.items()}
    assert sorted(logs) == sorted(case["logs_after"])
    for key, value in case["logs_after"].items():
        if (case["name"], key) in OTHER_ACCURACY:
            continue
        assert logs[key] == pytest.approx(value, rel=1e-4, abs=1e-5), key
    after = weights_by_layer(model)
    assert sorted(after) == sorted(case["weights_after"])
    for name, arrays in case["weights_after"].items():
        for got, expected in zip(after[name], arrays):
            np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5, err_msg=name)


def h5_names(data):
    """Every group and dataset path in HDF5 bytes or a file, with its shape (None: a group)."""
    found = {}
    with h5py.File(data if isinstance(data, Path) else io.BytesIO(data), "r") as h5:
        h5.visititems(lambda name, item: found.__setitem__(name, getattr(item, "shape", None)))
    return found


@pytest.mark.parametrize("case", CASES, ids=lambda c: c["name"])
def test_keras_file_predicts_and_trains_on_as_keras(case):
    model = models.load_model(FIXTURES / case["keras"])
    assert [layer.name for layer in model.layers] == case["layers"]  # Keras's order
    assert_predicts_as_keras(model, case)
    assert_compiled_as_keras(model, case)
    assert model.optimizer.iterations == case["iterations"]  # Keras's optimizer state came along
    assert_trains_on_as_keras(model, case)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c["name"])
def test_legacy_h5_and_weights_files(case):
    """Keras 3's legacy .h5: the model, its compile settings and its optimizer's state (the
    ``optimizer_weights`` list, as a .keras file's; Keras itself keeps only the step count
    of it), so training continues as from the .keras file."""
    x = inputs(case)
    model = models.load_model(FIXTURES / case["h5"])
    assert [layer.name for layer in model.layers] == case["layers"]
    assert_predicts_as_keras(model, case)
    assert_compiled_as_keras(model, case)
    assert model.optimizer.iterations == case["iterations"]
    assert_trains_on_as_keras(model, case)
    # Keras's .weights.h5, and the weights of its legacy .h5 (matched by order, as Keras 2
    # does), into the same architecture built here, its layers numbered in Keras's order.
    for weights in (case["weights"], case["h5"]):
        built = keras_functional_files.build(nbnet, case["name"])
        built.load_weights(FIXTURES / weights)
        assert_predicts_as_keras(built, case, x)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c["name"])
def test_keras_file_exports_to_verified_onnx(case, tmp_path):
    from nbnet.onnx import export, load

    model = models.load_model(FIXTURES / case["keras"])
    result = export(model, tmp_path / "m.onnx", x=inputs(case), print_fn=None)
    assert result.report.max_abs_diff <= 1e-5
    if "compile" in case:  # every output, in the model's order of them
        predicted = load(tmp_path / "m.onnx").predict(inputs(case))
        predicted = list(predicted.values()) if isinstance(predicted, dict) else predicted
        assert len(predicted) == len(case["compile"]["outputs"])
        for got, name in zip(predicted, case["compile"]["outputs"]):
            np.testing.assert_allclose(got, case["predictions"][name], rtol=1e-5, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c["name"])
def test_nbnet_written_files_read_back_identically_in_keras_layout(case, tmp_path):
    model = models.load_model(FIXTURES / case["keras"])
    x, y = inputs(case), targets(case)
    model.fit(x, y, batch_size=case["batch_size"], epochs=1, shuffle=False, verbose=0)
    model.save(tmp_path / "m.keras")
    model.save(tmp_path / "m.h5")
    model.save_weights(tmp_path / "m.weights.h5")
    again = models.load_model(tmp_path / "m.keras")
    assert_same_weights(model, again)
    assert_same_predictions(model, again, x)
    assert compile_settings(again) == compile_settings(model) and again.output_names == model.output_names
    assert again.optimizer.iterations == model.optimizer.iterations
    for name, value in again.optimizer.slots.items():  # the slots Keras's layout has
        np.testing.assert_array_equal(value, model.optimizer.slots[name])
    legacy = models.load_model(tmp_path / "m.h5")
    assert_same_weights(model, legacy)
    assert type(legacy.optimizer) is type(model.optimizer) and compile_settings(legacy) == compile_settings(model)
    built = keras_functional_files.build(nbnet, case["name"])
    built.load_weights(tmp_path / "m.weights.h5")
    assert_same_predictions(model, built, x)
    for trained in (model, again):  # the same next step from the file as without it
        trained.fit(x, y, batch_size=case["batch_size"], epochs=1, shuffle=False, verbose=0)
    assert_same_weights(model, again)
    # Keras's layout, as Keras wrote it: the same groups and datasets (the optimizer's too),
    # the layers listed in Keras's order.
    assert h5_names(tmp_path / "m.weights.h5") == h5_names(FIXTURES / case["weights"])
    with zipfile.ZipFile(tmp_path / "m.keras") as ours, zipfile.ZipFile(FIXTURES / case["keras"]) as keras_file:
        assert h5_names(ours.read("model.weights.h5")) == h5_names(keras_file.read("model.weights.h5"))
        ours_config, keras_config = (json.loads(f.read("config.json")) for f in (ours, keras_file))
        assert [entry["name"] for entry in ours_config["config"]["layers"]] == case["layers"]
        assert ours_config["config"]["output_layers"] == keras_config["config"]["output_layers"]
    with h5py.File(tmp_path / "m.h5", "r") as ours, h5py.File(FIXTURES / case["h5"], "r") as keras_file:
        assert list(ours["model_weights"].attrs["layer_names"]) == list(
            keras_file["model_weights"].attrs["layer_names"])
        for name in case["layers"]:
            assert len(ours["model_weights"][name].attrs["weight_names"]) == len(
                keras_file["model_weights"][name].attrs["weight_names"])


@pytest.mark.parametrize("case", SEVERAL, ids=lambda c: c["name"])
def test_several_outputs_built_in_nbnet_are_written_as_keras_writes_them(case, tmp_path):
    """The architecture built and compiled in nbnet (outputs given as a dict keep the order
    given, which Keras sorts): its files number and list the layers as Keras's files do,
    carry the compile settings per output (as dicts by output name), and read back to the
    same model and settings."""
    model = keras_functional_files.build(nbnet, case["name"])
    model.load_weights(FIXTURES / case["weights"])
    optimizer, settings = keras_functional_files.OPTIMIZERS[case["name"]]
    model.compile(getattr(nbnet.optimizers, optimizer)(**settings),
                  **keras_functional_files.compile_arguments(nbnet, case["name"]))
    x, y = inputs(case), targets(case)
    model.fit(x, y, batch_size=case["batch_size"], epochs=1, shuffle=False, verbose=0)
    for suffix in (".keras", ".h5"):
        model.save(tmp_path / f"m{suffix}")
        again = models.load_model(tmp_path / f"m{suffix}")
        assert [layer.name for layer in again.layers] == case["layers"]  # Keras's order
        assert_same_weights(model, again)
        assert by_output(again, again.predict(x)).keys() == by_output(model, model.predict(x)).keys()
        for name, values in by_output(model, model.predict(x)).items():
            np.testing.assert_array_equal(by_output(again, again.predict(x))[name], values)
        assert compile_settings(again) == compile_settings(model)
        # The optimizer's state travels in .keras files; nbnet's .h5 files leave it out, as
        # Keras 3.15 cannot train a model whose .h5 file has it (see keras_file.save_legacy_h5).
        assert again.optimizer.iterations == (model.optimizer.iterations if suffix == ".keras" else 0)
        if suffix == ".keras":  # per weight: the two models' flat vectors need not list them alike
            ours, theirs = slots_by_weight(model), slots_by_weight(again)
            assert sorted(ours) == sorted(theirs)
            for key, value in ours.items():
                np.testing.assert_array_equal(theirs[key], value, err_msg=str(key))
    with zipfile.ZipFile(tmp_path / "m.keras") as archive:
        compiled = json.loads(archive.read("config.json"))["compile_config"]
        assert set(compiled["loss"]) == set(compiled["loss_weights"]) == set(case["compile"]["outputs"])
        with zipfile.ZipFile(FIXTURES / case["keras"]) as keras_file:
            assert h5_names(archive.read("model.weights.h5")) == h5_names(keras_file.read("model.weights.h5"))
    model.save_weights(tmp_path / "m.weights.h5")
    assert h5_names(tmp_path / "m.weights.h5") == h5_names(FIXTURES / case["weights"])
    with h5py.File(tmp_path / "m.h5", "r") as ours, h5py.File(FIXTURES / case["h5"], "r") as keras_file:
        assert list(ours["model_weights"].attrs["layer_names"]) == list(
            keras_file["model_weights"].attrs["layer_names"])


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
            if not isinstance(inner[key], dict):  # tf.keras kept a dict of outputs as a dict
                inner[key] = [inner[key]] if isinstance(inner[key][0], str) else inner[key]
    return config


@pytest.mark.parametrize("name", ["nested", "siamese", "inception", "two_in_two_out", "keyed_heads"])
def test_keras2_legacy_h5_dialect(name, tmp_path):
    """tf.keras's .h5: class_name "Model", calls as nested lists, input_layers always a list;
    its training_config's metrics nested per output ([[...], [...]]), and for one output
    serialized as Keras 2's MeanMetricWrapper."""
    case = next(c for c in CASES if c["name"] == name)
    path = tmp_path / "keras2.h5"
    path.write_bytes((FIXTURES / case["h5"]).read_bytes())
    with h5py.File(path, "r+") as h5:
        h5.attrs["model_config"] = json.dumps(keras2_dialect(json.loads(h5.attrs["model_config"])))
        training = json.loads(h5.attrs["training_config"])
        if "compile" not in case:
            training["metrics"] = [[{"class_name": "MeanMetricWrapper",
                                     "config": {"name": "accuracy", "dtype": "float32", "fn": "categorical_accuracy"}}]]
        elif isinstance(training["metrics"], dict):  # Keras 2: one list per output
            metrics = [training["metrics"].get(key) or [] for key in case["compile"]["outputs"]]
            training["metrics"] = [item if isinstance(item, list) else [item] for item in metrics]
        h5.attrs["keras_version"] = "2.15.0"
        h5.attrs["training_config"] = json.dumps(training)
    model = models.load_model(path)
    assert_predicts_as_keras(model, case)
    assert_compiled_as_keras(model, case)


# Keras 3's optimizer variables (``adam/<weight path with _>_<slot>``) -> OptimizerV2's slot names.
KERAS2_SLOTS = {"Adam": {"momentum": "m", "velocity": "v"}, "Nadam": {"momentum": "m", "velocity": "v"},
                "SGD": {"momentum": "momentum"}, "RMSprop": {"velocity": "rms", "momentum": "momentum"}}


def as_tf_keras_h5(source, target, optimizer):
    """A Keras 3 legacy .h5 file rewritten as tf.keras (OptimizerV2) wrote it: weights named
    ``layer/kernel:0``, and ``optimizer_weights`` as ``[iter, every weight's first slot, ...,
    every weight's second slot, ...]`` named ``Adam/layer/kernel/m:0`` (Nadam: its
    ``momentum_cache`` after the slots)."""
    target.write_bytes(source.read_bytes())
    with h5py.File(target, "r+") as h5:
        paths = []
        for layer_name in h5["model_weights"].attrs["layer_names"]:
            group = h5["model_weights"][layer_name]
            names = [n.decode() if isinstance(n, bytes) else n for n in group.attrs.get("weight_names", [])]
            for name in names:
                group.move(name, f"{name}:0")
            group.attrs["weight_names"] = [f"{name}:0".encode() for name in names]
            paths.extend(names)
        stored = h5["optimizer_weights"]
        names = [n.decode() if isinstance(n, bytes) else n for n in stored.attrs["weight_names"]]
        values = {name: np.asarray(stored[name]) for name in names}
        del h5["optimizer_weights"]
        prefix = names[0].split("/")[0]
        slots = {}
        for name in names[2:]:
            for path in paths:
                for keras3, keras2 in KERAS2_SLOTS[optimizer].items():
                    if name == f"{prefix}/{path.replace('/', '_')}_{keras3}":
                        slots.setdefault(keras2, []).append((f"{optimizer}/{path}/{keras2}:0", values[name]))
        entries = [(f"{optimizer}/iter:0", values[names[0]])]
        for keras2 in KERAS2_SLOTS[optimizer].values():
            entries.extend(slots.get(keras2, []))
        if optimizer == "Nadam":
            entries.append((f"{optimizer}/momentum_cache:0", values[names[-1]]))
        group = h5.create_group("optimizer_weights")
        group.attrs["weight_names"] = [name.encode() for name, _ in entries]
        for name, value in entries:
            group.create_dataset(name, data=value)
    return len(entries)


@pytest.mark.parametrize("name", ["two_heads", "two_in_two_out", "siamese", "inception"])
def test_tf_keras_optimizer_weights_are_restored_by_name(name, tmp_path):
    """A tf.keras .h5 file's optimizer state (OptimizerV2: Adam, SGD with momentum, Nadam,
    RMSprop with momentum), matched to the weights by name: the same state as from Keras 3's
    file, so training continues as Keras did. A name that fits no weight leaves the
    optimizer fresh, with a warning."""
    case = next(c for c in CASES if c["name"] == name)
    path = tmp_path / "tf_keras.h5"
    count = as_tf_keras_h5(FIXTURES / case["h5"], path, case["optimizer"])
    assert count > 3
    keras3 = models.load_model(FIXTURES / case["h5"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = models.load_model(path)
    assert model.optimizer.iterations == case["iterations"]
    assert sorted(model.optimizer.slots) == sorted(keras3.optimizer.slots)
    for slot, value in keras3.optimizer.slots.items():
        np.testing.assert_array_equal(model.optimizer.slots[slot], value, err_msg=slot)
    assert_trains_on_as_keras(model, case)
    with h5py.File(path, "r+") as h5:  # a slot of a weight the model does not have
        group = h5["optimizer_weights"]
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in group.attrs["weight_names"]]
        group["Opt/elsewhere/kernel/m:0"] = np.asarray(group[names[-1]])
        names[-1] = "Opt/elsewhere/kernel/m:0"
        group.attrs["weight_names"] = [name.encode() for name in names]
    with pytest.warns(UserWarning, match=r"optimizer's saved state was not restored .*'Opt/elsewhere/kernel/m:0'"):
        fresh = models.load_model(path)
    assert fresh.optimizer.iterations == 0
    assert_predicts_as_keras(fresh, case)


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


def compile_rewritten(tmp_path, source, change):
    """A copy of the .keras file ``source`` whose compile_config ``change`` edited."""
    with zipfile.ZipFile(FIXTURES / source) as archive:
        files = {item: archive.read(item) for item in archive.namelist()}
    config = json.loads(files["config.json"])
    change(config["compile_config"])
    files["config.json"] = json.dumps(config).encode()
    path = tmp_path / f"compile_{source}"
    with zipfile.ZipFile(path, "w") as archive:
        for item, data in files.items():
            archive.writestr(item, data)
    return path


def test_compile_settings_nbnet_lacks_are_refused_by_name(tmp_path):
    """An output's loss nbnet does not have, a loss setting it cannot honour, a metric it
    lacks, weighted metrics: the model loads and predicts, uncompiled, with a warning
    naming what is missing (nbnet never trains on something else)."""
    case = next(c for c in CASES if c["name"] == "two_in_two_out")

    def log_cosh(compiled):
        compiled["loss"][1] = "log_cosh"

    def smoothing(compiled):
        compiled["loss"][0]["config"]["label_smoothing"] = 0.1

    def unknown_metric(compiled):
        compiled["metrics"][1][0] = {"module": "keras.metrics", "class_name": "F1Score",
                                     "config": {"name": "f1"}, "registered_name": None}

    def weighted(compiled):
        compiled["weighted_metrics"] = [["accuracy"], []]

    for change, message in ((log_cosh, r"output 'score': nbnet has no loss 'log_cosh'"),
                            (smoothing, r"output 'match': the loss BinaryCrossentropy with label_smoothing=0.1 is "
                                        "not supported"),
                            (unknown_metric, r"nbnet has no metric F1Score \('f1'\)"),
                            (weighted, r"nbnet's compile has no weighted_metrics")):
        with pytest.warns(UserWarning, match=r"compile settings could not be restored \(.*" + message):
            model = models.load_model(compile_rewritten(tmp_path, case["keras"], change))
        assert model.optimizer is None and model.output_names == ["match", "score"]
        assert_predicts_as_keras(model, case)


def test_refusals_name_the_layer(tmp_path):
    with pytest.raises(ModelFileError, match=r"'doubler' \(Lambda\) is custom code"):
        models.load_model(FIXTURES / "functional_lambda.keras")

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


def test_an_uncompiled_model_with_two_outputs_round_trips(tmp_path):
    inputs = nbnet.Input((3,), name="features")
    hidden = layers.Dense(4, name="hidden")(inputs)
    model = nbnet.Model(inputs, [layers.Dense(2, name="first")(hidden), layers.Dense(1, name="second")(hidden)])
    x = np.linspace(-1, 1, 12, dtype=np.float32).reshape(4, 3)
    for name in ("two.keras", "two.h5"):
        model.save(tmp_path / name)
        again = models.load_model(tmp_path / name)
        assert again.output_names == ["first", "second"] and again.optimizer is None
        assert_same_predictions(model, again, x)
