"""Dilated and grouped Conv2D and DepthwiseConv2D (nbnet/kernels/depthwise.py): forward
against an independent NumPy reference, backward against float64 finite differences
(test_layers.py's check), float32 against float64, against real Keras 3 (values recorded by
tools/keras_grouped_conv_parity.py), argument errors, configs and files, ONNX export and
import against onnxruntime, and the CUDA twins against the CPU under the simulator."""

import json
import os
import sys
from pathlib import Path

import numba
import numpy as np
import pytest

from nbnet import layers, models
from nbnet.errors import NbnetError

try:
    from . import test_layers as tl
    from .simulator import ON_CUDA, plain_only, run_under_simulator, sim_only, small_launches
except ImportError:  # tests/ is not a package
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import test_layers as tl
    from simulator import ON_CUDA, plain_only, run_under_simulator, sim_only, small_launches

FIXTURE = Path(__file__).parent / "fixtures" / "keras_grouped_conv.json"
# Keras (torch, float32) against nbnet (float32): sums of at most 3*3*6 products of O(1)
# values, in other orders; max|difference| / max|Keras value|.
KERAS_RTOL = 1e-5
ORT_ATOL = 1e-5


@pytest.fixture(autouse=True, scope="module")
def single_numba_thread():
    """Finite differences call tiny kernels thousands of times (see test_layers.py)."""
    previous = numba.get_num_threads()
    numba.set_num_threads(1)
    yield
    numba.set_num_threads(previous)


def reference(x, kernel, bias, strides, dilation, padding, groups):
    """NumPy grouped, dilated convolution, written from the definition: output f of group
    g = f // (F/groups) sums tap (p, q) over the group's input channels, the tap reading
    the zero-padded input at (i*sh + p*dh, j*sw + q*dw); 'same' pads TensorFlow's way."""
    _, height, width, _ = x.shape
    kh, kw, per_group, filters = kernel.shape
    (sh, sw), (dh, dw) = strides, dilation
    span_h, span_w = (kh - 1) * dh + 1, (kw - 1) * dw + 1
    if padding == "same":
        out_h, out_w = -(-height // sh), -(-width // sw)
        total_h = max((out_h - 1) * sh + span_h - height, 0)
        total_w = max((out_w - 1) * sw + span_w - width, 0)
        x = np.pad(x, ((0, 0), (total_h // 2, total_h - total_h // 2), (total_w // 2, total_w - total_w // 2),
                       (0, 0)))
    else:
        out_h, out_w = (height - span_h) // sh + 1, (width - span_w) // sw + 1
    y = np.zeros((x.shape[0], out_h, out_w, filters))
    per_filter_group = filters // groups
    for f in range(filters):
        g = f // per_filter_group
        for p in range(kh):
            for q in range(kw):
                window = x[:, p * dh:p * dh + (out_h - 1) * sh + 1:sh, q * dw:q * dw + (out_w - 1) * sw + 1:sw,
                           g * per_group:(g + 1) * per_group]
                y[..., f] += window @ kernel[p, q, :, f]
    return y if bias is None else y + bias


def layer_reference(layer, x):
    """The reference for a built Conv2D or DepthwiseConv2D (before its activation)."""
    if isinstance(layer, layers.DepthwiseConv2D):
        kh, kw, channels, mult = layer.params["kernel"].shape
        kernel, groups = layer.params["kernel"].reshape(kh, kw, 1, channels * mult), channels
    else:
        kernel, groups = layer.params["kernel"], layer.groups
    return reference(x, kernel, layer.params.get("bias"), layer.strides, layer.dilation_rate, layer.padding, groups)


# (class, kwargs, input shape): every path (depthwise loops for groups == channels or
# DepthwiseConv2D, grouped im2col otherwise, dilation with one group), strides, even
# spans under 'same', depth_multiplier 2, activations with and without a kink.
CASES = [
    ("Conv2D", dict(filters=3, kernel_size=3, dilation_rate=2, padding="same", activation="tanh"), (7, 8, 2)),
    ("Conv2D", dict(filters=2, kernel_size=(2, 3), dilation_rate=(3, 1), padding="valid"), (8, 6, 3)),
    ("Conv2D", dict(filters=4, kernel_size=(3, 2), strides=2, groups=2, padding="same", activation="sigmoid"),
     (7, 6, 4)),
    ("Conv2D", dict(filters=6, kernel_size=2, groups=3, dilation_rate=(1, 2), padding="valid", use_bias=False),
     (5, 7, 6)),
    ("Conv2D", dict(filters=8, kernel_size=3, groups=4, padding="same"), (5, 6, 4)),  # depthwise path, M=2
    ("DepthwiseConv2D", dict(kernel_size=3, strides=2, padding="same"), (7, 8, 3)),
    ("DepthwiseConv2D", dict(kernel_size=(3, 2), strides=(1, 2), padding="valid", depth_multiplier=2,
                             activation="tanh"), (6, 7, 3)),
    ("DepthwiseConv2D", dict(kernel_size=3, dilation_rate=2, padding="same", depth_multiplier=2, use_bias=False),
     (6, 7, 2)),
    ("DepthwiseConv2D", dict(kernel_size=2, strides=2, padding="same", depth_multiplier=2), (5, 5, 2)),
    # A column stride of 1 takes the loops over whole output rows: a row stride of 2 and
    # dilated columns with them, and the plain 3x3 'same' of a MobileNet block.
    ("DepthwiseConv2D", dict(kernel_size=(3, 2), strides=(2, 1), dilation_rate=1, padding="same", activation="relu"),
     (7, 6, 3)),
    ("DepthwiseConv2D", dict(kernel_size=(2, 3), dilation_rate=(1, 2), padding="valid", depth_multiplier=3),
     (5, 8, 2)),
    ("DepthwiseConv2D", dict(kernel_size=3, padding="same", activation="relu"), (6, 5, 17)),
]


def case_id(case):
    cls, kwargs, shape = case
    return cls + "-" + "-".join(f"{k}{v}" for k, v in kwargs.items() if k != "kernel_size") + \
        "-" + "x".join(map(str, shape))


def make(case, seed=0, dtype=np.float64):
    cls, kwargs, shape = case
    rng = np.random.default_rng(seed)
    layer = tl.build(getattr(layers, cls)(**kwargs), shape, seed, np.float64)
    tl.randomize_bias(layer, rng)
    x = rng.standard_normal((2, *shape))
    if dtype != np.float64:
        layer.astype(dtype)
        x = x.astype(dtype)
    return layer, x


# ----------------------------------------------------------------------- forward, backward
@plain_only
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_forward_matches_reference(case):
    layer, x = make(case)
    if case[0] == "Conv2D":
        assert not layer._plain  # the new paths, not conv.py's
    layer._init_activation(None)  # the reference stops before the activation
    z = np.array(layer.forward(x))
    expected = layer_reference(layer, x)
    assert z.shape == expected.shape == (2, *layer.compute_output_shape(case[2]))
    assert tl.rel_err(z, expected) <= tl.FORWARD_RTOL


@plain_only
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_gradients(case):
    layer, x = make(case)
    tl.assert_gradients(layer, x)


@plain_only
@pytest.mark.parametrize("case", CASES[2::3], ids=case_id)
def test_float32_matches_float64(case):
    layer64, x64 = make(case)
    layer32, x32 = make(case, dtype=np.float32)
    y64, y32 = np.array(layer64.forward(x64)), np.array(layer32.forward(x32))
    assert y32.dtype == np.float32 and tl.rel_err(y32, y64) <= tl.FLOAT32_RTOL
    r = np.random.default_rng(5).standard_normal(y64.shape)
    dx64, dx32 = layer64.backward(r.copy()), layer32.backward(r.astype(np.float32))
    assert dx32.dtype == np.float32 and tl.rel_err(dx32, dx64) <= tl.FLOAT32_RTOL
    for key in layer64.grads:
        assert tl.rel_err(layer32.grads[key], layer64.grads[key]) <= tl.FLOAT32_RTOL


@plain_only
def test_results_do_not_depend_on_thread_count():
    layer, x = make(("DepthwiseConv2D", dict(kernel_size=3, padding="same", depth_multiplier=2), (6, 5, 3)),
                     dtype=np.float32)
    x = np.random.default_rng(1).standard_normal((37, 6, 5, 3)).astype(np.float32)  # uneven chunks
    r = np.random.default_rng(2).standard_normal((37, 6, 5, 6)).astype(np.float32)
    results = []
    for threads in (1, numba.config.NUMBA_NUM_THREADS):
        numba.set_num_threads(threads)
        layer.grads["kernel"][...] = 0
        y = np.array(layer.forward(x))
        dx = np.array(layer.backward(r.copy()))
        results.append((y, dx, layer.grads["kernel"].copy()))
    numba.set_num_threads(1)
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------- Keras parity
KERAS = json.loads(FIXTURE.read_text())["cases"]


@plain_only
@pytest.mark.parametrize("case", KERAS, ids=lambda c: c["class_name"] + "-" + "-".join(
    f"{k}{v}" for k, v in c["config"].items() if k != "kernel_size"))
def test_matches_keras(case):
    """Output and gradients (of sum(output * R)) of the same layer, input and weights."""
    x = np.asarray(case["input"], np.float32)
    layer = getattr(layers, case["class_name"])(**case["config"])
    layer.build(x.shape[1:])
    assert list(layer.weight_order) == case["weight_names"]
    layer.set_weights([np.asarray(w, np.float32) for w in case["weights"]])
    for grad in layer.grads.values():
        grad[...] = 0
    y = np.array(layer.forward(x))
    dx = layer.backward(np.asarray(case["r"], np.float32))
    pairs = [(y, case["output"]), (dx, case["dx"])] + [
        (layer.grads[key], expected) for key, expected in zip(layer.weight_order, case["dweights"])]
    for got, expected in pairs:
        assert tl.rel_err(got, np.asarray(expected)) <= KERAS_RTOL


@plain_only
def test_reads_a_keras_written_model_file():
    recorded = json.loads(FIXTURE.read_text())["model_file"]
    model = models.load_model(FIXTURE.parent / recorded["file"])
    assert [type(layer).__name__ for layer in model.layers] == ["Conv2D", "DepthwiseConv2D", "Conv2D", "Flatten",
                                                                 "Dense"]
    expected = np.asarray(recorded["output"])
    got = model.predict(np.asarray(recorded["input"], np.float32), verbose=0)
    assert tl.rel_err(got, expected) <= KERAS_RTOL


# ----------------------------------------------------------------------- arguments
@plain_only
@pytest.mark.parametrize("make_layer, shape, match", [
    (lambda: layers.Conv2D(6, 3, groups=4), None, r"filters must be divisible by groups.*filters=6 and groups=4"),
    (lambda: layers.Conv2D(4, 3, groups=2), (8, 8, 3), r"groups=2, but the input has 3 channels"),
    (lambda: layers.Conv2D(4, 3, groups=0), None, r"groups must be a positive integer, received 0"),
    (lambda: layers.Conv2D(4, 3, strides=2, dilation_rate=2), None, r"strides > 1 .* dilation_rate > 1"),
    (lambda: layers.DepthwiseConv2D(3, strides=(1, 2), dilation_rate=(2, 1)), None, r"strides=\(1, 2\)"),
    (lambda: layers.Conv2D(4, 3, 1, "same", "relu"), None, r"data_format='relu'.*activation .* by keyword"),
    (lambda: layers.Conv2D(4, 3, data_format="channels_first"), None, r"channels-last"),
    (lambda: layers.DepthwiseConv2D(3, depth_multiplier=0), None, r"depth_multiplier must be a positive"),
    (lambda: layers.Conv2D(4, 3, dilation_rate=3), (6, 9, 1), r"spanning 7x7 at dilation_rate=\(3, 3\)"),
    (lambda: layers.DepthwiseConv2D(2, dilation_rate=(4, 1)), (4, 9, 1), r"spanning 5x2"),
])
def test_bad_arguments_name_the_layer_and_the_fix(make_layer, shape, match):
    with pytest.raises(NbnetError, match=match) as info:
        make_layer().build(shape) if shape else make_layer()
    assert "'conv2d" in str(info.value) or "'depthwise_conv2d" in str(info.value)


@plain_only
def test_positional_order_is_keras():
    layer = layers.Conv2D(8, 3, 1, "same", None, 2, 4, "relu", False)
    assert (layer.padding, layer.dilation_rate, layer.groups, layer.activation, layer.use_bias) == \
        ("same", (2, 2), 4, "relu", False)
    depthwise = layers.DepthwiseConv2D(3, 1, "same", 2, "channels_last", 2, "tanh")
    assert (depthwise.depth_multiplier, depthwise.dilation_rate, depthwise.activation) == (2, (2, 2), "tanh")
    depthwise.build((5, 5, 3))
    # Keras 3 names the weight 'kernel'; Keras 2's 'depthwise_kernel' reads the same array.
    assert depthwise.kernel.shape == (3, 3, 3, 2)
    np.testing.assert_array_equal(depthwise.depthwise_kernel.numpy(), depthwise.kernel.numpy())


def _model():
    return models.Sequential([
        layers.Input((9, 8, 4)),
        layers.Conv2D(8, 3, padding="same", groups=2, dilation_rate=2, activation="relu"),
        layers.DepthwiseConv2D(3, strides=2, depth_multiplier=2, padding="same", activation="relu"),
        layers.Conv2D(16, 1, groups=16),
        layers.MaxPooling2D(2),  # after a grouped conv: never fused into it
        layers.Flatten(), layers.Dense(3, activation="softmax")], seed=3)


@plain_only
def test_summary_config_and_files_round_trip(tmp_path):
    model = _model()
    counts = [layer.count_params() for layer in model.layers]
    # (3*3*4/2*8 + 8), (3*3*8*2 + 16), (1*1*1*16 + 16), 0, 0, (2*2*16*3 + 3)
    assert counts == [152, 160, 32, 0, 0, 195]
    x = np.random.default_rng(0).standard_normal((5, 9, 8, 4)).astype(np.float32)
    expected = model.predict(x, verbose=0)
    config = model.layers[1].get_config()
    assert (config["depth_multiplier"], config["dilation_rate"], config["strides"]) == (2, [1, 1], [2, 2])
    assert model.layers[0].get_config()["groups"] == 2
    for name in ("m.nbnet", "m.keras", "m.h5"):
        model.save(tmp_path / name)
        loaded = models.load_model(tmp_path / name)
        assert [type(layer).__name__ for layer in loaded.layers] == [type(layer).__name__ for layer in model.layers]
        assert loaded.layers[0].groups == 2 and loaded.layers[0].dilation_rate == (2, 2)
        np.testing.assert_allclose(loaded.predict(x, verbose=0), expected, rtol=0, atol=1e-6)


@plain_only
def test_training_step_reduces_loss():
    model = _model()
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((32, 9, 8, 4)).astype(np.float32), rng.integers(0, 3, 32)
    history = model.fit(x, y, epochs=8, batch_size=16, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]


@plain_only
def test_plain_conv_keeps_its_fast_paths():
    conv = layers.Conv2D(4, 3, activation="relu")
    assert conv._plain and conv.can_absorb(layers.MaxPooling2D(2))
    assert not layers.Conv2D(4, 3, dilation_rate=2, activation="relu").can_absorb(layers.MaxPooling2D(2))


# ----------------------------------------------------------------------- ONNX
@plain_only
def test_onnx_export_matches_onnxruntime(tmp_path):
    pytest.importorskip("onnxruntime")
    from nbnet import onnx as nbnet_onnx

    model = _model()
    x = np.random.default_rng(2).standard_normal((4, 9, 8, 4)).astype(np.float32)
    proto = nbnet_onnx.to_onnx(model)
    import onnx

    onnx.checker.check_model(proto, full_check=True)
    convs = [node for node in proto.graph.node if node.op_type == "Conv"]
    attrs = [{a.name: list(a.ints) or a.i for a in node.attribute if a.name in ("group", "dilations")}
             for node in convs]
    assert attrs == [{"group": 2, "dilations": [2, 2]}, {"group": 8, "dilations": [1, 1]},
                     {"group": 16, "dilations": [1, 1]}]
    got = nbnet_onnx.run_onnxruntime(proto, x)
    assert np.abs(got - model.predict(x, verbose=0)).max() <= ORT_ATOL
    # nbnet's own file loads back to the same layers and weights (the depthwise kernel reshaped back)
    path = tmp_path / "m.onnx"
    nbnet_onnx.export(model, path, verify=False)
    loaded = nbnet_onnx.load(path)
    assert [type(layer).__name__ for layer in loaded.layers] == [type(layer).__name__ for layer in model.layers]
    for mine, theirs in zip(loaded.layers, model.layers):
        for a, b in zip(mine.get_weights(), theirs.get_weights()):
            np.testing.assert_array_equal(a, b)


def _conv_graph(weight, bias, group, dilations, strides, pads, shape):
    from onnx import TensorProto, helper, numpy_helper

    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], group=group, dilations=dilations, strides=strides,
                            pads=pads, kernel_shape=list(weight.shape[2:]))
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@plain_only
@pytest.mark.parametrize("channels, filters, group, dilations, strides, pads, expect", [
    (4, 8, 4, [1, 1], [2, 2], [1, 1, 1, 1], "DepthwiseConv2D"),   # depth_multiplier 2, explicit pads
    (3, 3, 3, [2, 2], [1, 1], [2, 2, 2, 2], "DepthwiseConv2D"),   # dilated 'same'
    (6, 4, 2, [1, 2], [1, 1], [0, 0, 0, 0], "Conv2D"),            # grouped, dilated, 'valid'
    (4, 6, 1, [2, 1], [1, 1], [1, 0, 2, 0], "Conv2D"),            # dilation, pads that are not 'same'
])
def test_onnx_import_matches_onnxruntime(channels, filters, group, dilations, strides, pads, expect):
    ort = pytest.importorskip("onnxruntime")
    from nbnet.onnx.importing import import_proto

    rng = np.random.default_rng(4)
    weight = rng.standard_normal((filters, channels // group, 3, 3)).astype(np.float32)
    bias = rng.standard_normal(filters).astype(np.float32)
    proto = _conv_graph(weight, bias, group, dilations, strides, pads, ["N", channels, 9, 8])
    x = rng.standard_normal((3, channels, 9, 8)).astype(np.float32)
    model = import_proto(proto)
    assert expect in [type(layer).__name__ for layer in model.layers]
    expected = ort.InferenceSession(proto.SerializeToString()).run(None, {"x": x})[0]
    got = model.predict(x, verbose=0)
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() <= ORT_ATOL


@plain_only
def test_onnx_import_refuses_stride_with_dilation():
    pytest.importorskip("onnx")
    from nbnet.onnx.importing import OnnxImportError, import_proto

    weight = np.zeros((2, 2, 3, 3), np.float32)
    proto = _conv_graph(weight, np.zeros(2, np.float32), 1, [2, 2], [2, 2], [0, 0, 0, 0], ["N", 2, 9, 9])
    with pytest.raises(OnnxImportError, match=r"dilations=\[2, 2\] with strides=\[2, 2\]"):
        import_proto(proto)


# ----------------------------------------------------------------------- CUDA twins
@plain_only
def test_cuda_twins_under_simulator(request):
    run_under_simulator(request)


if ON_CUDA:
    from numba import cuda

    from nbnet.kernels import depthwise as cpu_dw
    from nbnet.kernels.cuda import depthwise as gpu_dw

    @pytest.fixture(autouse=True, scope="module")
    def tiny_launches():
        with small_launches():
            yield


def _geometry(shape, kernel, strides, dilation, padding):
    from nbnet.layers.convolutional import dilated_geometry

    return dilated_geometry(shape[1], shape[2], kernel, strides, dilation, padding)


def _close(device_array, expected):
    np.testing.assert_allclose(device_array.copy_to_host(), expected, rtol=1e-4, atol=1e-5)


@sim_only
@pytest.mark.parametrize("kernel, strides, dilation, padding, mult", [
    ((3, 2), (2, 1), (1, 1), "same", 2), ((3, 3), (1, 1), (2, 1), "valid", 1)])
def test_depthwise_twins(kernel, strides, dilation, padding, mult):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 5, 6, 3)).astype(np.float32)
    taps = rng.standard_normal((*kernel, 3 * mult)).astype(np.float32)
    geometry = _geometry(x.shape, kernel, strides, dilation, padding)
    rows = 2 * geometry[-2] * geometry[-1]
    z = np.empty((rows, 3 * mult), np.float32)
    cpu_dw.depthwise_forward(x, taps, *geometry, z)
    z_dev = cuda.device_array_like(z)
    gpu_dw.depthwise_forward(cuda.to_device(x), cuda.to_device(taps), *geometry, z_dev)
    _close(z_dev, z)
    dz = rng.standard_normal(z.shape).astype(np.float32)
    dtaps, dx = np.ones_like(taps), np.empty_like(x)  # the kernel gradient adds into what is there
    cpu_dw.depthwise_backward(x, taps, dz, *geometry, dtaps, True, dx)
    dtaps_dev, dx_dev = cuda.to_device(np.ones_like(taps)), cuda.device_array_like(x)
    gpu_dw.depthwise_backward(cuda.to_device(x), cuda.to_device(taps), cuda.to_device(dz), *geometry, dtaps_dev, True,
                              dx_dev)
    _close(dtaps_dev, dtaps)
    _close(dx_dev, dx)


@sim_only
@pytest.mark.parametrize("groups, dilation, strides, padding", [(2, (1, 2), (1, 1), "same"),
                                                                 (3, (1, 1), (2, 2), "valid")])
def test_grouped_twins(groups, dilation, strides, padding):
    rng = np.random.default_rng(1)
    channels, filters, kernel = 6, 6, (2, 3)
    x = rng.standard_normal((2, 5, 6, channels)).astype(np.float32)
    kernel2d = rng.standard_normal((kernel[0] * kernel[1] * channels // groups, filters)).astype(np.float32)
    geometry = _geometry(x.shape, kernel, strides, dilation, padding)
    rows = 2 * geometry[-2] * geometry[-1]
    cols = np.empty((groups, rows, kernel2d.shape[0]), np.float32)
    z = np.empty((rows, filters), np.float32)
    cpu_dw.grouped_conv_forward(x, kernel2d, geometry, cols, z)
    cols_dev, z_dev, k_dev = cuda.device_array_like(cols), cuda.device_array_like(z), cuda.to_device(kernel2d)
    gpu_dw.grouped_conv_forward(cuda.to_device(x), k_dev, geometry, cols_dev, z_dev)
    _close(cols_dev, cols)
    _close(z_dev, z)
    dz = rng.standard_normal(z.shape).astype(np.float32)
    dkernel, dx = np.zeros_like(kernel2d), np.empty_like(x)
    from nbnet.kernels.matmul import workers

    scratch = np.empty((workers(), kernel2d.shape[0], filters // groups), np.float32)
    cpu_dw.grouped_conv_backward(cols, kernel2d, dz, geometry, dkernel, scratch, True, dx)
    dkernel_dev, dx_dev = cuda.to_device(np.zeros_like(kernel2d)), cuda.device_array_like(x)
    gpu_dw.grouped_conv_backward(cols_dev, k_dev, cuda.to_device(dz), geometry, dkernel_dev, None, True, dx_dev)
    _close(dkernel_dev, dkernel)
    _close(dx_dev, dx)
