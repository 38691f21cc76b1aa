"""ONNX import (nbnet/onnx/importing/): foreign models load, match onnxruntime, fine-tune,
save, reload and re-export; the layers it adds have correct gradients; errors name the node."""

import glob
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from nbnet import layers, losses, models, optimizers  # noqa: E402
from nbnet import onnx as nbnet_onnx  # noqa: E402
from nbnet.onnx.importing import OnnxImportError, import_proto  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = sorted(p for p in glob.glob(str(ROOT / "tests" / "fixtures" / "onnx_foreign" / "*.onnx"))
                  if not Path(p).stem.startswith("keras"))  # PyTorch's; Keras's has its own test
KERAS_EXPORT = ROOT / "tests" / "fixtures" / "onnx_foreign" / "keras3_cnn.onnx"
MNIST8 = ROOT.parent / "shared" / "onnx" / "mnist-8.onnx"


@pytest.fixture(scope="module")
def mnist():
    from nbnet.datasets import mnist as data

    try:
        return data.load_data(verbose=False)
    except Exception as error:  # noqa: BLE001
        pytest.skip(f"MNIST unavailable: {error}")


def _ort(path, x):
    session = ort.InferenceSession(str(path))
    info = session.get_inputs()[0]
    fixed = info.shape[0] if isinstance(info.shape[0], int) else None
    if fixed:
        return np.concatenate([session.run(None, {info.name: x[i:i + fixed]})[0] for i in range(0, len(x), fixed)])
    return session.run(None, {info.name: x})[0]


def _fine_tune(model, x, y, x_test, y_test, learning_rate):
    model.compile(optimizer=optimizers.Adam(learning_rate), loss=losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    before = model.evaluate(x_test, y_test, verbose=0)[1]
    model.fit(x, y, epochs=1, batch_size=64, verbose=0)
    after = model.evaluate(x_test, y_test, verbose=0)[1]
    return before, after


# Three fixtures in the default run; the rest under -m slow.
FAST = {"rescnn_ts_opset20", "bncnn_dynamo", "mobilecnn_ts_opset9"}
# Files onnxruntime refuses to load, compared with the same network's opset-17 export instead:
# PyTorch's opset-9 exporter emulates AveragePool's ceil_mode (no attribute before opset 10)
# with end pads as deep as the kernel, which onnxruntime rejects and nbnet trims.
ORT_REJECTS = {"mobilecnn_ts_opset9": "mobilecnn_ts_opset17"}
CASES = [pytest.param(p, id=Path(p).stem, marks=() if Path(p).stem in FAST else pytest.mark.slow) for p in FIXTURES]


@pytest.mark.parametrize("path", CASES)
def test_foreign_pytorch_model(path, mnist, tmp_path):
    (x_train, y_train), (x_test, y_test) = mnist
    x = (x_test[:1000, None] / 255.0).astype(np.float32)
    model = nbnet_onnx.load(path)
    assert model.input_shape == (None, 1, 28, 28) and model.output_shape == (None, 10)  # NCHW at the boundary
    reference = Path(path)
    if reference.stem in ORT_REJECTS:
        with pytest.raises(Exception, match="Pad should be smaller than kernel"):
            ort.InferenceSession(str(reference))
        reference = reference.with_name(ORT_REJECTS[reference.stem] + ".onnx")
    assert np.abs(model.predict(x, verbose=0) - _ort(reference, x)).max() <= 1e-4
    x_fit = (x_train[:8000, None] / 255.0).astype(np.float32)
    x_eval = (x_test[:3000, None] / 255.0).astype(np.float32)
    before, after = _fine_tune(model, x_fit, y_train[:8000], x_eval, y_test[:3000], 5e-4)
    print(f"{Path(path).stem}: accuracy {before:.4f} -> {after:.4f}")
    assert after > before
    model.save(tmp_path / "tuned.nbnet")
    again = models.load_model(tmp_path / "tuned.nbnet")
    np.testing.assert_array_equal(again.predict(x[:64], verbose=0), model.predict(x[:64], verbose=0))
    result = nbnet_onnx.export(again, tmp_path / "tuned.onnx", x=x[:200], print_fn=None)
    assert result.report.passed


@pytest.mark.slow
def test_mnist8(mnist, tmp_path):
    if not MNIST8.is_file():
        pytest.skip("the zoo's mnist-8.onnx is not in ../shared/onnx")
    (x_train, y_train), (x_test, y_test) = mnist
    x = x_test[:1000, None].astype(np.float32)  # pixels 0..255, NCHW, as the zoo model takes them
    model = models.load_model(MNIST8)  # load_model dispatches .onnx to the importer
    print(f"mnist-8: max abs diff {np.abs(model.predict(x, verbose=0) - _ort(MNIST8, x)).max():.3g}")
    assert model.input_shape == (None, 1, 28, 28)
    assert [l.__class__.__name__ for l in model.layers].count("Permute") == 1  # at the input only
    reference = _ort(MNIST8, x)
    # the scores reach ~9000: float32 rounding alone is ~1e-3 there (onnxruntime differs from onnx's
    # reference evaluator by as much), so the bound is relative to the output's size
    scale = np.abs(reference).max()
    assert np.abs(model.predict(x, verbose=0) - reference).max() <= 1e-6 * scale
    before, after = _fine_tune(model, x_train[:3000, None].astype(np.float32), y_train[:3000],
                               x_test[:2000, None].astype(np.float32), y_test[:2000], 1e-4)
    print(f"mnist-8: accuracy {before:.4f} -> {after:.4f}")
    assert after >= before
    model.save(tmp_path / "mnist8.nbnet")
    again = models.load_model(tmp_path / "mnist8.nbnet")
    np.testing.assert_array_equal(again.predict(x[:32], verbose=0), model.predict(x[:32], verbose=0))
    out = again.predict(x[:200], verbose=0)
    result = nbnet_onnx.export(again, tmp_path / "mnist8.onnx", x=x[:200], print_fn=None,
                               atol=1e-6 * float(np.abs(out).max()))
    assert result.report.passed


# -- small graphs -------------------------------------------------------------------------
def _model(nodes, inputs, outputs, initializers=(), opset=17, weights_as_inputs=False):
    init = [numpy_helper.from_array(np.asarray(v), k) for k, v in initializers]
    graph_inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs]
    if weights_as_inputs:
        graph_inputs += [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in init]
    graph = helper.make_graph(nodes, "g", graph_inputs,
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs], init)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _compare(proto, feeds, atol=1e-5):
    model = import_proto(proto)
    session = ort.InferenceSession(proto.SerializeToString())
    expected = session.run(None, feeds)[0]
    got = model.predict(list(feeds.values())[0] if len(feeds) == 1 else list(feeds.values()), verbose=0)
    np.testing.assert_allclose(got, expected, atol=atol, rtol=1e-5)
    return model


def test_mnist8_loads_and_matches(mnist):
    if not MNIST8.is_file():
        pytest.skip("the zoo's mnist-8.onnx is not in ../shared/onnx")
    x = mnist[1][0][:300, None].astype(np.float32)
    reference = _ort(MNIST8, x)
    got = nbnet_onnx.load(MNIST8).predict(x, verbose=0)
    assert np.abs(got - reference).max() <= 1e-6 * np.abs(reference).max()
    assert (got.argmax(1) == mnist[1][1][:300]).mean() > 0.95


def test_flatten_order_folds_into_dense_rows_unsorted_and_weights_as_inputs():
    rng = np.random.default_rng(0)
    w, b = rng.normal(size=(4, 3, 3, 3)).astype(np.float32), rng.normal(size=4).astype(np.float32)
    g = rng.normal(size=(4 * 5 * 5, 6)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["f", "g"], ["m"]), helper.make_node("Add", ["m", "gb"], ["y"]),
             helper.make_node("Flatten", ["r"], ["f"]), helper.make_node("Conv", ["x", "w", "b"], ["c"]),
             helper.make_node("Relu", ["c"], ["r"])]  # deliberately unsorted
    proto = _model(nodes, [("x", ["N", 3, 7, 7])], [("y", ["N", 6])],
                   [("w", w), ("b", b), ("g", g), ("gb", np.ones(6, np.float32))], opset=9, weights_as_inputs=True)
    model = _compare(proto, {"x": rng.normal(size=(5, 3, 7, 7)).astype(np.float32)})
    kinds = [l.__class__.__name__ for l in model.layers]
    assert kinds.count("Permute") == 1 and "ConstantOperation" not in kinds  # bias Add folded into Dense


def test_external_data(tmp_path):
    rng = np.random.default_rng(1)
    proto = _model([helper.make_node("Gemm", ["x", "w", "c"], ["y"], transB=1, alpha=0.5, beta=2.0)],
                   [("x", ["N", 8])], [("y", ["N", 3])],
                   [("w", rng.normal(size=(3, 8)).astype(np.float32)), ("c", rng.normal(size=3).astype(np.float32))])
    onnx.save_model(proto, str(tmp_path / "m.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="m.data", size_threshold=0)
    model = nbnet_onnx.load(tmp_path / "m.onnx")
    x = rng.normal(size=(4, 8)).astype(np.float32)
    np.testing.assert_allclose(model.predict(x, verbose=0), _ort(tmp_path / "m.onnx", x), atol=1e-5)


def test_shape_arithmetic_and_transposes_fold():
    rng = np.random.default_rng(2)
    shape = helper.make_node("Shape", ["x"], ["s"])
    nodes = [shape, helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
             helper.make_node("Unsqueeze", ["n", "axes"], ["n1"]),
             helper.make_node("Concat", ["n1", "minus"], ["target"], axis=0),
             helper.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 3, 1]),
             helper.make_node("Mul", ["t", "scale"], ["ts"]),
             helper.make_node("Reshape", ["ts", "target"], ["flat"]),
             helper.make_node("LogSoftmax", ["flat"], ["y"], axis=1)]
    proto = _model(nodes, [("x", ["N", 2, 3, 4])], [("y", ["N", 24])],
                   [("zero", np.array(0, np.int64)), ("axes", np.array([0], np.int64)),
                    ("minus", np.array([-1], np.int64)), ("scale", rng.normal(size=(2,)).astype(np.float32))], opset=13)
    _compare(proto, {"x": rng.normal(size=(3, 2, 3, 4)).astype(np.float32)})


def test_unsupported_operator_names_node_and_opset():
    proto = _model([helper.make_node("Erf", ["x"], ["y"], name="the_erf")], [("x", ["N", 4])], [("y", ["N", 4])])
    with pytest.raises(OnnxImportError, match=r"node 'the_erf' \(Erf, opset 17\).*supports.*Conv"):
        import_proto(proto)


def test_unfixable_shape_names_tensor():
    proto = _model([helper.make_node("Relu", ["x"], ["y"])], [("x", ["N", "C"])], [("y", ["N", "C"])])
    with pytest.raises(OnnxImportError, match="graph input 'x' cannot be fixed"):
        import_proto(proto)


# -- the layers import adds: gradients by finite differences -------------------------------
def _numeric_check(layer, inputs, seed=0):
    rng = np.random.default_rng(seed)
    multiple = isinstance(inputs, list)
    shapes = [x.shape[1:] for x in inputs] if multiple else inputs.shape[1:]
    layer.build(shapes if multiple else shapes, rng)
    cast = [x.astype(np.float64) for x in inputs] if multiple else inputs.astype(np.float64)
    layer.astype(np.float64)
    y = layer.forward(cast, training=True)
    dy = rng.normal(size=y.shape)
    grads = layer.backward(dy.copy())
    grads = grads if multiple else [grads]
    for index, x in enumerate(cast if multiple else [cast]):
        numeric = np.zeros_like(x)
        for i in np.ndindex(x.shape):
            old = x[i]
            x[i] = old + 1e-6
            plus = np.sum(np.array(layer.forward(cast, training=True)) * dy)
            x[i] = old - 1e-6
            minus = np.sum(np.array(layer.forward(cast, training=True)) * dy)
            x[i] = old
            numeric[i] = (plus - minus) / 2e-6
        np.testing.assert_allclose(grads[index], numeric, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("make", [
    lambda: layers.Permute((3, 1, 2)),
    lambda: layers.Clip(-0.3, 0.4),
    lambda: layers.LogSoftmax(axis=-1),
    lambda: layers.LogSoftmax(axis=1),
    lambda: layers.Take(2, [3, 0, 0, 1]),
    lambda: layers.Take(-1, [1]),
], ids=["permute", "clip", "log_softmax_last", "log_softmax_axis1", "take_repeated", "take_last"])
def test_layer_gradients(make):
    x = np.random.default_rng(3).normal(size=(2, 3, 4, 2)).astype(np.float32)
    _numeric_check(make(), x)


@pytest.mark.parametrize("operation", ["add", "sub", "rsub", "mul", "div", "rdiv"])
def test_constant_and_broadcast_operation_gradients(operation):
    rng = np.random.default_rng(4)
    layer = layers.ConstantOperation(operation, (1, 3), trainable_operand=True)
    x = rng.uniform(0.5, 1.5, size=(2, 4, 3)).astype(np.float32)
    layer.build(x.shape[1:], rng)
    layer.set_weights([rng.uniform(0.5, 1.5, size=(1, 3))])
    layer.astype(np.float64)
    cx = x.astype(np.float64)
    y = layer.forward(cx)
    dy = rng.normal(size=y.shape)
    layer.grads["operand"][...] = 0
    dx = layer.backward(dy)
    c = layer.params["operand"]
    for target, analytic in ((cx, dx), (c, layer.grads["operand"])):
        numeric = np.zeros_like(target)
        for i in np.ndindex(target.shape):
            old = target[i]
            target[i] = old + 1e-6
            plus = np.sum(layer.forward(cx) * dy)
            target[i] = old - 1e-6
            minus = np.sum(layer.forward(cx) * dy)
            target[i] = old
            numeric[i] = (plus - minus) / 2e-6
        np.testing.assert_allclose(analytic, numeric, rtol=1e-5, atol=1e-6)
    a, b = rng.uniform(0.5, 1.5, size=(2, 4, 3)), rng.uniform(0.5, 1.5, size=(2, 1, 3))
    _numeric_check(layers.BroadcastOperation(operation), [a, b])


def test_new_layers_export_and_save(tmp_path):
    inputs = layers.Input((3, 4, 2))
    x = layers.Permute((3, 1, 2))(inputs)
    x = layers.ConstantOperation("rdiv", (2, 1, 1))(layers.Clip(0.1, 2.0)(x))
    x = layers.LogSoftmax()(x)
    model = models.Model(inputs, x)
    model.layers[3].set_weights([np.array([[[2.0]], [[3.0]]], np.float32)])
    data = np.random.default_rng(5).uniform(size=(8, 3, 4, 2)).astype(np.float32)
    assert nbnet_onnx.export(model, tmp_path / "m.onnx", x=data, print_fn=None).report.passed
    model.save(tmp_path / "m.nbnet")
    np.testing.assert_array_equal(models.load_model(tmp_path / "m.nbnet").predict(data, verbose=0),
                                  model.predict(data, verbose=0))


# -- pools whose pads Keras cannot express --------------------------------------------------
@pytest.mark.parametrize("op,attrs", [
    ("MaxPool", dict(kernel_shape=[3, 2], strides=[2, 1], pads=[1, 0, 0, 1])),
    ("MaxPool", dict(kernel_shape=[3, 3], strides=[2, 2], pads=[2, 1, 1, 2], ceil_mode=1)),
    ("MaxPool", dict(kernel_shape=[2, 2], strides=[3, 3], ceil_mode=1)),
    ("AveragePool", dict(kernel_shape=[3, 2], strides=[2, 1], pads=[1, 0, 2, 1], count_include_pad=0)),
    ("AveragePool", dict(kernel_shape=[3, 2], strides=[2, 1], pads=[1, 0, 2, 1], count_include_pad=1)),
    ("AveragePool", dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1, count_include_pad=1)),
    ("AveragePool", dict(kernel_shape=[3, 3], strides=[2, 2], pads=[0, 1, 1, 0], ceil_mode=1, count_include_pad=0)),
    ("AveragePool", dict(kernel_shape=[2, 3], strides=[2, 2], auto_pad="SAME_LOWER", count_include_pad=1)),
], ids=["max_asym", "max_ceil_pads", "max_ceil_stride_gt_kernel", "avg_asym_exclude", "avg_asym_include",
        "avg_ceil_include", "avg_ceil_exclude", "avg_same_lower_include"])
def test_pool_explicit_pads_match_onnxruntime_train_and_export(op, attrs, tmp_path):
    x = np.random.default_rng(6).normal(size=(3, 2, 7, 8)).astype(np.float32)
    proto = _model([helper.make_node(op, ["x"], ["y"], **attrs)], [("x", [None, 2, 7, 8])], [("y", None)], opset=19)
    expected = ort.InferenceSession(proto.SerializeToString()).run(None, {"x": x})[0]
    model = import_proto(proto)
    got = model.predict(x, verbose=0)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    (pool,) = [layer for layer in model.layers if isinstance(layer, (layers.MaxPooling2D, layers.AveragePooling2D))]
    # the gradient reaches every input pixel a window reads (none is dropped at the border)
    xin = np.random.default_rng(7).normal(size=(2,) + tuple(pool.built_input_shape)).astype(np.float64)
    _numeric_check(type(pool)(pool_size=pool.pool_size, strides=pool.strides, padding=pool.padding), xin)
    assert nbnet_onnx.export(model, tmp_path / "pool.onnx", x=x, print_fn=None).report.passed
    model.save(tmp_path / "pool.nbnet")
    np.testing.assert_array_equal(models.load_model(tmp_path / "pool.nbnet").predict(x, verbose=0), got)


def test_pool_explicit_pads_are_checked():
    from nbnet.errors import NbnetError

    with pytest.raises(NbnetError, match="smaller than the pool size"):
        layers.MaxPooling2D((2, 2), padding=((2, 0), (0, 0)))
    with pytest.raises(NbnetError, match="padding must be"):
        layers.AveragePooling2D((2, 2), padding=((1, -1), (0, 0)))
    proto = _model([helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], pads=[2, 0, 0, 0])],
                   [("x", [None, 1, 5, 5])], [("y", None)])
    with pytest.raises(OnnxImportError, match=r"\(MaxPool, opset 17\).*lies in the padding alone"):
        import_proto(proto)



# -- Slice and Gather of computed tensors ----------------------------------------------------
def _slice_gather_model(opset):
    rng = np.random.default_rng(11)
    w = rng.normal(size=(4, 3, 3, 3)).astype(np.float32)
    i64 = lambda *v: np.array(v, np.int64)  # noqa: E731
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),  # held channels-last inside
             helper.make_node("Gather", ["c", "channels"], ["g"], axis=1),  # channels 3, 0, 3
             helper.make_node("Gather", ["g", "row"], ["r"], axis=2)]  # a scalar index drops H
    initializers = [("w", w), ("channels", i64(-1, 0, 3)), ("row", np.array(-2, np.int64))]
    if opset >= 10:
        nodes.append(helper.make_node("Slice", ["r", "starts", "ends", "axes", "steps"], ["y"]))
        initializers += [("starts", i64(-1, 0, 1)), ("ends", i64(-2 ** 63, 2 ** 62, 3)), ("axes", i64(2, 0, 1)),
                         ("steps", i64(-2, 1, 1))]
    else:
        nodes.append(helper.make_node("Slice", ["r"], ["y"], starts=[1, 0], ends=[3, 2 ** 62], axes=[1, 2]))
    return _model(nodes, [("x", [None, 3, 5, 6])], [("y", None)], initializers, opset=opset)


@pytest.mark.parametrize("opset", [9, 17])
def test_slice_and_gather_of_computed_tensors_match_onnxruntime_and_export(opset, tmp_path):
    x = np.random.default_rng(12).normal(size=(4, 3, 5, 6)).astype(np.float32)
    model = _compare(_slice_gather_model(opset), {"x": x})
    assert sum(isinstance(layer, layers.Take) for layer in model.layers) >= 3
    out = model.predict(x, verbose=0)
    assert nbnet_onnx.export(model, tmp_path / "take.onnx", x=x, print_fn=None).report.passed
    model.save(tmp_path / "take.nbnet")
    np.testing.assert_array_equal(models.load_model(tmp_path / "take.nbnet").predict(x, verbose=0), out)
    model.compile(optimizer=optimizers.SGD(0.01), loss=losses.MeanSquaredError())
    model.fit(x, np.zeros_like(out), epochs=1, batch_size=2, verbose=0)  # gradients flow through Take


@pytest.mark.parametrize("node, initializers, message", [
    (helper.make_node("Gather", ["x", "i"], ["y"], axis=0), [("i", np.array([0], np.int64))],
     r"node 'y' \(Gather, opset 17\): Gather along the batch axis"),
    (helper.make_node("Gather", ["x", "i"], ["y"], axis=1), [("i", np.array([3], np.int64))],
     r"indices \[3\] outside \[-3, 3\)"),
    (helper.make_node("Slice", ["x", "s", "e", "a"], ["y"]), [(k, np.array([v], np.int64)) for k, v in
                                                             (("s", 1), ("e", 3), ("a", 0))],
     r"\(Slice, opset 17\): a Slice of the batch axis \(1:3:1\)"),
    (helper.make_node("Slice", ["x", "s", "e", "a"], ["y"]), [(k, np.array([v], np.int64)) for k, v in
                                                             (("s", 2), ("e", 2), ("a", 1))],
     r"an empty Slice 2:2:1"),
], ids=["gather_batch", "gather_range", "slice_batch", "slice_empty"])
def test_slice_and_gather_errors_name_the_node(node, initializers, message):
    proto = _model([node], [("x", [None, 3, 4])], [("y", None)], initializers)
    with pytest.raises(OnnxImportError, match=message):
        import_proto(proto)


def test_layers_keras_cannot_read_are_refused_in_keras_files_not_written_wrong(tmp_path):
    from nbnet import layers
    from nbnet.errors import ModelFileError

    pads = models.Sequential([layers.Input((6, 6, 2)), layers.MaxPooling2D(2, padding=((1, 0), (1, 0))),
                              layers.Flatten(), layers.Dense(3)])
    clipped = models.Sequential([layers.Input((4,)), layers.Dense(3), layers.Clip(0.0, 6.0)])
    for model, words in ((pads, "explicit pads"), (clipped, "ONNX import")):
        for name in ("m.keras", "m.h5"):
            with pytest.raises(ModelFileError, match=words):
                model.save(tmp_path / name)
            assert not (tmp_path / name).exists()
        model.save(tmp_path / "m.nbnet")  # nbnet's own file keeps them
        assert models.load_model(tmp_path / "m.nbnet").layers[-1].get_config() == model.layers[-1].get_config()


def test_matmul_over_positions_imports_as_dense_on_the_last_axis(tmp_path):
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(2)
    x_info = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4])
    y_info = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 5])
    weights = [numpy_helper.from_array(rng.standard_normal((4, 5)).astype(np.float32), "w"),
               numpy_helper.from_array(rng.standard_normal(5).astype(np.float32), "b")]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["t"]), helper.make_node("Add", ["t", "b"], ["u"]),
             helper.make_node("Sigmoid", ["u"], ["y"])]
    path = tmp_path / "matmul3.onnx"
    onnx.save(helper.make_model(helper.make_graph(nodes, "g", [x_info], [y_info], weights),
                                opset_imports=[helper.make_opsetid("", 17)]), str(path))
    model = nbnet_onnx.load(path)
    dense = model.layers[1]
    assert type(dense).__name__ == "Dense" and dense.use_bias  # the Add folded into the Dense's bias
    np.testing.assert_array_equal(dense.get_weights()[1], numpy_helper.to_array(weights[1]))
    x = rng.standard_normal((7, 3, 4)).astype(np.float32)
    np.testing.assert_allclose(model.predict(x, verbose=0), _ort(path, x), atol=1e-6)
    result = nbnet_onnx.export(model, tmp_path / "again.onnx", x=x, print_fn=None)
    assert result.report.max_abs_diff <= 1e-6


def test_a_file_keras_exported_keeps_its_channels_last_boundary_and_fine_tunes(mnist, tmp_path):
    """Keras 3's own ONNX export (torch backend): NHWC input wrapped in Transposes and Casts,
    BatchNormalization folded into Sub/Mul/Add, a softmax output."""
    (x_train, y_train), (x_test, y_test) = mnist
    x = (x_test[:1000, ..., None] / 255.0).astype(np.float32)
    model = nbnet_onnx.load(KERAS_EXPORT)
    assert model.input_shape == (None, 28, 28, 1) and model.output_shape == (None, 10)
    assert "Permute" not in [type(layer).__name__ for layer in model.layers]  # NHWC throughout: no transposes left
    assert np.abs(model.predict(x, verbose=0) - _ort(KERAS_EXPORT, x)).max() <= 1e-5
    model.compile(optimizer=optimizers.Adam(5e-4), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    x_eval = (x_test[:3000, ..., None] / 255.0).astype(np.float32)
    before = model.evaluate(x_eval, y_test[:3000], verbose=0)[1]
    model.fit((x_train[:8000, ..., None] / 255.0).astype(np.float32), y_train[:8000], epochs=1, batch_size=64,
              verbose=0)
    after = model.evaluate(x_eval, y_test[:3000], verbose=0)[1]
    print(f"keras3_cnn: accuracy {before:.4f} -> {after:.4f}")
    assert after > before
    model.save(tmp_path / "tuned.nbnet")
    again = models.load_model(tmp_path / "tuned.nbnet")
    assert nbnet_onnx.export(again, tmp_path / "tuned.onnx", x=x[:200], print_fn=None).report.passed
