"""ONNX export: every layer, padding, stride and activation against onnxruntime; dynamic
batch; opsets; the load round trip; errors; atomic writes; the CLI."""

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from nbnet import layers, models
from nbnet import onnx as nbnet_onnx
from nbnet.cli import main
from nbnet.errors import ExportError, ModelFileError
from nbnet.onnx.opsets import MIN_OPSET, ir_version_for
from nbnet.onnx.verifier import _argmax_stats

ACTIVATIONS = ["relu", "sigmoid", "tanh", "softmax", "leaky_relu", "linear", "elu", "selu", "softplus"]
ATOL = 1e-5


def build(layer_list, input_shape, seed=0):
    """A built model with non-trivial biases and BatchNormalization statistics."""
    model = models.Sequential(layer_list, seed=seed)
    model.build(input_shape)
    rng = np.random.default_rng(seed + 1)
    for layer in model.layers:
        weights = layer.get_weights()
        if isinstance(layer, layers.BatchNormalization):
            channels = weights[0].shape[0]
            weights = [rng.uniform(0.5, 1.5, channels), rng.normal(0, 0.2, channels), rng.normal(0, 0.5, channels),
                       rng.uniform(0.3, 2.0, channels)]
        elif "bias" in layer.weight_order:
            weights[-1] = rng.normal(0, 0.2, weights[-1].shape)
        layer.set_weights([np.asarray(w, np.float32) for w in weights])
    return model


def inputs(model, batch=7, seed=0):
    return np.random.default_rng(seed).standard_normal((batch,) + model.input_shape[1:], dtype=np.float32)


def assert_matches(model, x=None, opset=None, atol=ATOL):
    """Export to bytes, check the graph, run onnxruntime, compare with predict."""
    proto = nbnet_onnx.to_onnx(model, opset)
    onnx.checker.check_model(proto, full_check=True)
    x = inputs(model) if x is None else x
    expected = model.predict(x)
    got = nbnet_onnx.run_onnxruntime(proto, x)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=0, atol=atol)
    return proto


# -- every layer, padding, stride, activation ------------------------------------------
@pytest.mark.parametrize("padding", ["valid", "same"])
@pytest.mark.parametrize("strides", [1, 2, 3, (2, 1)])
@pytest.mark.parametrize("kernel", [3, (2, 3)])
def test_conv2d_geometry(padding, strides, kernel):
    # H != W, odd sizes and C > 1, then Flatten + Dense: exercises pads and the flatten order
    model = build([layers.Conv2D(4, kernel, strides=strides, padding=padding, activation="relu"), layers.Flatten(),
                   layers.Dense(3)], (7, 10, 3))
    assert_matches(model)


@pytest.mark.parametrize("pool", [layers.MaxPooling2D, layers.AveragePooling2D])
@pytest.mark.parametrize("padding", ["valid", "same"])
@pytest.mark.parametrize("size,strides", [(2, None), (3, 2), ((2, 3), (1, 2)), (3, 1)])
def test_pooling_geometry(pool, padding, size, strides):
    model = build([pool(size, strides=strides, padding=padding), layers.Flatten(), layers.Dense(4)], (7, 9, 3))
    assert_matches(model)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_fused_activations(activation):
    dense = build([layers.Dense(6, activation=activation, input_shape=(5,))], (5,))
    assert_matches(dense)
    # Conv2D's softmax is over channels: axis 1 of the NCHW tensor inside the graph
    conv = build([layers.Conv2D(4, 3, padding="same", activation=activation)], (5, 6, 2))
    assert_matches(conv)


ACTIVATION_LAYERS = {**{f"Activation({a})": (lambda a=a: layers.Activation(a)) for a in ACTIVATIONS},
                     "ReLU": layers.ReLU, "Softmax": layers.Softmax, "LeakyReLU(0.1)": lambda: layers.LeakyReLU(0.1),
                     "LeakyReLU": layers.LeakyReLU, "ELU(0.7)": lambda: layers.ELU(0.7)}


@pytest.mark.parametrize("make", ACTIVATION_LAYERS.values(), ids=ACTIVATION_LAYERS.keys())
@pytest.mark.parametrize("placement", ["nhwc_input", "after_conv", "rank3_input", "after_dense"])
def test_activation_layers(make, placement):
    if placement == "nhwc_input":  # channels-last 4-D tensor: Softmax axis -1
        model = build([make()], (4, 5, 3))
    elif placement == "after_conv":  # channels-first inside the graph: Softmax axis 1, then Flatten
        model = build([layers.Conv2D(3, 2), make(), layers.Flatten(), layers.Dense(4)], (4, 5, 2))
    elif placement == "rank3_input":
        model = build([make(), layers.Flatten()], (4, 3))
    else:
        model = build([layers.Dense(5), make()], (6,))
    assert_matches(model)


@pytest.mark.parametrize("placement", ["nhwc_input", "after_conv", "after_dense", "rank3_input", "after_flatten"])
@pytest.mark.parametrize("epsilon", [1e-3, 0.05])
def test_batch_normalization(placement, epsilon):
    bn = layers.BatchNormalization(epsilon=epsilon)
    stacks = {"nhwc_input": ([bn], (4, 5, 3)),
              "after_conv": ([layers.Conv2D(4, 3, padding="same"), bn, layers.ReLU(), layers.Flatten()], (5, 4, 2)),
              "after_dense": ([layers.Dense(6), bn, layers.Dense(3)], (5,)),
              "rank3_input": ([bn, layers.Flatten()], (4, 3)),
              "after_flatten": ([layers.Flatten(), bn], (3, 4, 2))}
    layer_list, shape = stacks[placement]
    proto = assert_matches(build(layer_list, shape))
    node, = [n for n in proto.graph.node if n.op_type == "BatchNormalization"]
    assert onnx.helper.get_attribute_value(node.attribute[0]) == pytest.approx(epsilon)


@pytest.mark.parametrize("stack", ["dense", "conv", "only_dropout"])
def test_dropout_disappears(stack):
    layer_list, shape = {"dense": ([layers.Dense(5, activation="tanh"), layers.Dropout(0.5), layers.Dense(3)], (4,)),
                         "conv": ([layers.Conv2D(2, 3), layers.Dropout(0.3), layers.Flatten()], (5, 5, 1)),
                         "only_dropout": ([layers.Dropout(0.5)], (3, 2))}[stack]
    proto = assert_matches(build(layer_list, shape))
    assert "Dropout" not in {n.op_type for n in proto.graph.node}


@pytest.mark.parametrize("offset", [0.0, -0.5])
def test_rescaling(offset, tmp_path):
    model = build([layers.Rescaling(1 / 255, offset), layers.Conv2D(2, 3, activation="relu"), layers.Flatten()],
                  (5, 5, 1))
    x = np.random.default_rng(0).integers(0, 256, (7, 5, 5, 1)).astype(np.float32)  # raw pixel values
    proto = assert_matches(model, x)
    assert ("Add" in {n.op_type for n in proto.graph.node}) == (offset != 0.0)
    nbnet_onnx.export(model, tmp_path / "r.onnx", verify=False)
    assert nbnet_onnx.load(tmp_path / "r.onnx").get_config() == model.get_config()


@pytest.mark.parametrize("stack", ["flatten_input", "flatten_rank3", "no_bias", "conv_output", "bn_rank3_output",
                                   "mlp_2d_input"])
def test_other_stacks(stack):
    layer_list, shape = {
        "flatten_input": ([layers.Flatten(), layers.Dense(3, activation="softmax")], (3, 4, 2)),
        "flatten_rank3": ([layers.Flatten(), layers.Dense(3)], (3, 4)),
        "no_bias": ([layers.Conv2D(3, 3, use_bias=False, activation="tanh"), layers.Flatten(),
                     layers.Dense(2, use_bias=False)], (5, 6, 2)),
        # a 4-D output: transposed back to NHWC before the graph output
        "conv_output": ([layers.Conv2D(3, 3, strides=2, padding="same"), layers.MaxPooling2D(2, padding="same")],
                        (7, 6, 2)),
        # (28, 28) input, as the MLP takes it
        # BatchNormalization on a rank-3 input, last: (batch, C, L) inside, transposed back for the output
        "bn_rank3_output": ([layers.BatchNormalization()], (4, 3)),
        "mlp_2d_input": ([layers.Flatten(), layers.Dense(8, activation="relu"), layers.Dense(10, activation="softmax")],
                         (28, 28)),
    }[stack]
    assert_matches(build(layer_list, shape))


def kitchen_sink(seed=0):
    """Every layer type in one model, MNIST-shaped."""
    return build([
        layers.Conv2D(4, 3, strides=2, padding="same", input_shape=(28, 28, 1), name="conv"),
        layers.BatchNormalization(name="bn"),
        layers.LeakyReLU(0.1),
        layers.MaxPooling2D(3, strides=2, padding="same"),
        layers.Conv2D(6, (3, 2), activation="sigmoid"),
        layers.AveragePooling2D(2, padding="same"),
        layers.Activation("softmax"),
        layers.Dropout(0.25),
        layers.Flatten(),
        layers.Dense(12, activation="leaky_relu", name="hidden"),
        layers.ReLU(),
        layers.Dense(10, activation="softmax", name="classifier"),
    ], (28, 28, 1), seed=seed)


# -- the graph itself ---------------------------------------------------------------------
def test_graph_structure_names_and_metadata():
    model = kitchen_sink()
    proto = nbnet_onnx.to_onnx(model)
    graph = proto.graph
    assert [i.name for i in graph.input] == ["input"] and [o.name for o in graph.output] == ["output"]
    batch = graph.input[0].type.tensor_type.shape.dim[0]
    assert batch.HasField("dim_param") and not batch.HasField("dim_value")
    assert [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim[1:]] == [28, 28, 1]
    assert "Reshape" not in {n.op_type for n in graph.node}  # the batch is never baked in
    names = {t.name for t in graph.initializer}
    assert {"conv.kernel", "conv.bias", "bn.gamma", "bn.beta", "bn.moving_mean", "bn.moving_variance",
            "hidden.kernel", "classifier.bias"} <= names
    kernel = next(t for t in graph.initializer if t.name == "conv.kernel")
    assert list(kernel.dims) == [4, 1, 3, 3]  # OIHW
    attrs = {n.name: {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute} for n in graph.node}
    assert attrs["conv"]["pads"] == [0, 0, 1, 1]  # 28 -> 14 with stride 2: the extra pad at the end
    assert attrs["conv"]["strides"] == [2, 2]
    pools = [n for n in graph.node if n.op_type in ("MaxPool", "AveragePool")]
    assert all("strides" in attrs[n.name] for n in pools)
    avg, = [n for n in pools if n.op_type == "AveragePool"]
    assert attrs[avg.name]["count_include_pad"] == 0
    assert proto.producer_name == "nbnet"
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["nbnet.architecture"]) == model.get_config()
    assert proto.ir_version == ir_version_for(proto.opset_import[0].version)


def test_default_opset_is_newest_supported():
    newest = nbnet_onnx.max_opset()
    assert nbnet_onnx.default_opset() == newest >= MIN_OPSET
    assert newest <= onnx.defs.onnx_opset_version()
    assert list(nbnet_onnx.supported_opsets()) == list(range(MIN_OPSET, newest + 1))


@pytest.mark.parametrize("which", ["lowest", "highest"])
def test_opsets(which):
    opset = MIN_OPSET if which == "lowest" else nbnet_onnx.max_opset()
    model = kitchen_sink()
    proto = assert_matches(model, opset=opset)
    assert [(o.domain, o.version) for o in proto.opset_import] == [("", opset)]
    assert proto.ir_version == ir_version_for(opset)
    if opset == 13:
        assert proto.ir_version == 7


def test_batch_sizes_through_one_file(tmp_path):
    model = kitchen_sink()
    path = tmp_path / "sink.onnx"
    result = nbnet_onnx.export(model, path, print_fn=None, samples=50)
    assert result.report.passed and path.is_file()
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 7, 128):
        x = np.random.default_rng(batch).random((batch, 28, 28, 1), dtype=np.float32)
        got = session.run(None, {"input": x})[0]
        np.testing.assert_allclose(got, model.predict(x), rtol=0, atol=ATOL)


# -- round trip ------------------------------------------------------------------------------
def test_round_trip(tmp_path):
    model = kitchen_sink(seed=3)
    path = tmp_path / "rt.onnx"
    nbnet_onnx.export(model, path, verify=False)
    loaded = nbnet_onnx.load(path)
    assert loaded.get_config() == model.get_config()
    for a, b in zip(loaded.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)
    x = inputs(model, 16)
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))


def test_load_refuses_unfit_and_corrupt_files(tmp_path):
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    foreign = tmp_path / "foreign.onnx"
    onnx.save(helper.make_model(graph, producer_name="pytorch"), foreign)
    # Another tool's file goes to the importer (tests/test_onnx_import.py), which names what it cannot take.
    with pytest.raises(ModelFileError, match="the shape of graph input 'x' cannot be fixed"):
        nbnet_onnx.load(foreign)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00\xffnot protobuf" * 10)
    with pytest.raises(ModelFileError):
        nbnet_onnx.load(garbage)
    with pytest.raises(ModelFileError, match="does not exist"):
        nbnet_onnx.load(tmp_path / "missing.onnx")


# -- errors ----------------------------------------------------------------------------------
class Doubler(layers.Layer):
    def forward(self, x, training=False):
        return 2 * x


class MyDense(layers.Dense):
    pass


def test_unsupported_layers_and_opsets(tmp_path):
    model = models.Sequential([layers.Dense(3, input_shape=(4,)), Doubler(name="twice")])
    model.build()
    with pytest.raises(ExportError, match=r"'twice' \(Doubler\).*Supported layers"):
        nbnet_onnx.export(model, tmp_path / "m.onnx")
    sub = models.Sequential([MyDense(3, input_shape=(4,), name="mine")])
    sub.build()
    with pytest.raises(ExportError, match="'mine' .*subclasses Dense"):
        nbnet_onnx.to_onnx(sub)
    plain = build([layers.Dense(2)], (3,))
    with pytest.raises(ExportError, match="opset 12 is not supported.*13"):
        nbnet_onnx.to_onnx(plain, opset=12)
    with pytest.raises(ExportError, match="not supported"):
        nbnet_onnx.to_onnx(plain, opset=nbnet_onnx.max_opset() + 1)
    with pytest.raises(ExportError, match="not built"):
        nbnet_onnx.to_onnx(models.Sequential([layers.Dense(2)]))
    assert not list(tmp_path.iterdir())


def test_failed_verification_writes_nothing(tmp_path):
    model = build([layers.Dense(4, activation="softmax")], (3,))
    predict = model.predict
    model.predict = lambda x, **kwargs: predict(x, **kwargs) + np.float32(1e-3)
    path = tmp_path / "bad.onnx"
    with pytest.raises(ExportError, match="max abs diff") as caught:
        nbnet_onnx.export(model, path, print_fn=None)
    assert not caught.value.report.passed
    assert not list(tmp_path.iterdir())  # no file, no temp file
    path.write_bytes(b"previous export")
    with pytest.raises(ExportError):
        nbnet_onnx.export(model, path, print_fn=None)
    assert path.read_bytes() == b"previous export"
    with pytest.raises(ExportError, match="kept"):
        nbnet_onnx.export(model, path, print_fn=None, keep_failed=True)
    assert onnx.load(str(path)).producer_name == "nbnet"


def test_verify_api_and_argmax_rule(tmp_path):
    model = build([layers.Dense(5, activation="softmax")], (4,))
    path = tmp_path / "m.onnx"
    nbnet_onnx.export(model, path, verify=False)
    x = inputs(model, 50)
    y = model.predict(x).argmax(axis=1)
    report = nbnet_onnx.verify(model, path, x, y)
    assert report.passed and report.max_abs_diff <= 1e-5 and report.argmax_identical == 50
    assert report.accuracy_nbnet == report.accuracy_onnx == 1.0
    assert "identical argmax" in report.table() and "PASS" in report.table()
    # a decisive argmax change fails even with a loose abs tolerance
    predict = model.predict
    model.predict = lambda x, **kwargs: predict(x, **kwargs)[:, ::-1].copy()
    with pytest.raises(ExportError, match="argmax"):
        nbnet_onnx.verify(model, path, x, atol=10.0)
    # near-ties (top-2 gap <= 1e-4) may flip
    ref = np.array([[0.5, 0.5 - 5e-5, 0.0], [0.9, 0.1, 0.0]], np.float32)
    out = np.array([[0.5 - 5e-5, 0.5, 0.0], [0.9, 0.1, 0.0]], np.float32)
    assert _argmax_stats(ref, out, 1e-4) == (1, 0)
    assert _argmax_stats(ref, out[::-1].copy(), 1e-4)[1] == 1


def test_missing_mnist_is_a_clear_export_error(tmp_path, monkeypatch):
    from nbnet.datasets import mnist
    from nbnet.errors import DatasetError

    def unavailable(**kwargs):
        raise DatasetError("no source worked")

    monkeypatch.setattr(mnist, "load_data", unavailable)
    model = build([layers.Flatten(), layers.Dense(10)], (28, 28, 1))
    with pytest.raises(ExportError, match="--no-verify"):
        nbnet_onnx.export(model, tmp_path / "m.onnx", print_fn=None)
    assert not list(tmp_path.iterdir())


def test_non_mnist_model_verifies_on_random_inputs(tmp_path):
    model = build([layers.Dense(3, activation="tanh")], (6,))
    result = nbnet_onnx.export(model, tmp_path / "r.onnx", print_fn=None, samples=64)
    assert result.report.passed and result.report.source.startswith("random") and result.report.samples == 64


# -- command line ----------------------------------------------------------------------------
def test_cli_export_reference_model(tmp_path):
    output = tmp_path / "ref.onnx"
    result = CliRunner().invoke(main, ["export", str(output), "--verify-samples", "200"])
    assert result.exit_code == 0, result.output
    for text in ("onnx.checker", "max abs diff", "identical argmax", "accuracy onnxruntime", "PASS",
                 "200 MNIST test images", "Exported 'mnist_cnn'"):
        assert text in result.output
    loaded = nbnet_onnx.load(output)
    assert loaded.name == "mnist_cnn"


def test_cli_export_errors(tmp_path):
    model = build([layers.Flatten(), layers.Dense(3)], (2, 3))
    model.save(tmp_path / "small.nbnet")
    output = tmp_path / "small.onnx"
    runner = CliRunner()
    result = runner.invoke(main, ["export", str(tmp_path / "small.nbnet"), str(output), "--opset", "12"])
    assert result.exit_code == 1 and "opset 12 is not supported" in result.output and not output.exists()
    result = runner.invoke(main, ["export", str(tmp_path / "small.nbnet"), str(output), "--opset", "13"])
    assert result.exit_code == 0, result.output
    assert "random normal inputs" in result.output and output.exists()
    result = runner.invoke(main, ["export", str(tmp_path / "missing.nbnet"), str(tmp_path / "x.onnx")])
    assert result.exit_code == 1 and "does not exist" in result.output
