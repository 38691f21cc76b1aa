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


@pytest.mark.parametrize("transform, nearest", [("asymmetric", "floor"), ("half_pixel", "round_prefer_floor"),
                                                ("pytorch_half_pixel", "round_prefer_ceil")])
def test_foreign_nearest_resize_imports_as_upsampling(transform, nearest):
    """A Resize another exporter wrote (PyTorch's nn.Upsample writes asymmetric + floor)
    imports as UpSampling2D and computes what onnxruntime does; the pairs that pick
    another pixel are refused by name."""
    import onnxruntime
    from onnx import TensorProto, helper, numpy_helper

    from nbnet.onnx.importing import OnnxImportError, import_proto

    def model(transform, nearest):
        node = helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="nearest",
                                coordinate_transformation_mode=transform, nearest_mode=nearest)
        graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 3, 4])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                                  [numpy_helper.from_array(np.array([1, 1, 3, 2], np.float32), "scales")])
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])

    proto = model(transform, nearest)
    x = np.random.default_rng(4).standard_normal((2, 2, 3, 4)).astype(np.float32)
    session = onnxruntime.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    imported = import_proto(proto, "resize")
    assert any(isinstance(layer, layers.UpSampling2D) for layer in imported.layers)
    np.testing.assert_array_equal(imported.predict(x), session.run(None, {"x": x})[0])
    with pytest.raises(OnnxImportError, match="coordinate_transformation_mode='align_corners'"):
        import_proto(model("align_corners", "floor"), "resize")
