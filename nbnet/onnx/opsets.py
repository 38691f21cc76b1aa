"""Which ONNX opsets nbnet exports to: from 13 (the first with per-axis Softmax) up to the
newest that both the installed ``onnx`` package and the installed onnxruntime support.

onnxruntime has no public "max opset" query, so it is probed once per process: a small
graph holding every operator the exporter emits is loaded at descending opsets, and the
first one onnxruntime accepts wins.
"""

import functools

import numpy as np

from ..errors import ExportError

MIN_OPSET = 13


def ir_version_for(opset):
    """The oldest IR version that can carry ``opset``, so older runtimes load the file."""
    from onnx import helper

    return helper.find_min_ir_version_for([helper.make_opsetid("", int(opset))], ignore_unknown=True)


def onnx_max_opset():
    import onnx

    return int(onnx.defs.onnx_opset_version())


def _probe_model(opset):
    """Every operator type the exporter writes, chained into one tiny runnable graph."""
    from onnx import TensorProto, helper, numpy_helper

    def weights(name, shape):
        return numpy_helper.from_array(np.full(shape, 0.5, np.float32), name)

    nodes = [
        helper.make_node("Mul", ["x", "k"], ["xm"]),
        helper.make_node("Add", ["xm", "k"], ["xa"]),
        helper.make_node("Transpose", ["xa"], ["t"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["t", "w", "wb"], ["c"], kernel_shape=[2, 2], strides=[1, 1], pads=[0, 0, 1, 1],
                         dilations=[1, 1]),
        helper.make_node("BatchNormalization", ["c", "s", "b", "m", "v"], ["bn"], epsilon=1e-3),
        helper.make_node("MaxPool", ["bn"], ["mp"], kernel_shape=[2, 2], strides=[2, 2], pads=[0, 0, 0, 0]),
        helper.make_node("AveragePool", ["mp"], ["ap"], kernel_shape=[1, 1], strides=[1, 1], pads=[0, 0, 0, 0],
                         count_include_pad=0),
        helper.make_node("Softmax", ["ap"], ["sm"], axis=1),
        helper.make_node("LeakyRelu", ["sm"], ["lr"], alpha=0.1),
        helper.make_node("Sigmoid", ["lr"], ["sg"]),
        helper.make_node("Tanh", ["sg"], ["th"]),
        helper.make_node("Relu", ["th"], ["r"]),
        helper.make_node("Transpose", ["r"], ["rt"], perm=[0, 2, 3, 1]),
        helper.make_node("Flatten", ["rt"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "g", "gb"], ["h"]),
        helper.make_node("Identity", ["h"], ["y"]),
        helper.make_node("Pad", ["r", "pads"], ["pd"], mode="constant"),
        helper.make_node("GlobalMaxPool", ["pd"], ["gm"]),
        helper.make_node("GlobalAveragePool", ["gm"], ["ga"]),
        helper.make_node("Reshape", ["ga", "shape"], ["z"]),
    ]
    initializers = [weights("w", (2, 1, 2, 2)), weights("wb", (2,)), weights("s", (2,)), weights("b", (2,)),
                    weights("m", (2,)), weights("v", (2,)), weights("g", (8, 3)), weights("gb", (3,)),
                    weights("k", ()), numpy_helper.from_array(np.array([0, 0, 1, 0, 0, 0, 0, 1], np.int64), "pads"),
                    numpy_helper.from_array(np.array([0, 2], np.int64), "shape")]
    graph = helper.make_graph(nodes, "opset_probe", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4, 4, 1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3]),
                               helper.make_tensor_value_info("z", TensorProto.FLOAT, ["n", 2])], initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=ir_version_for(opset))


@functools.lru_cache(maxsize=None)
def onnxruntime_max_opset():
    """The newest opset (>= MIN_OPSET, <= onnx's) at which onnxruntime loads and runs every
    operator the exporter emits; None if it cannot even do MIN_OPSET."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only: the failing probes are expected
    x = np.ones((1, 4, 4, 1), np.float32)
    for opset in range(onnx_max_opset(), MIN_OPSET - 1, -1):
        try:
            session = onnxruntime.InferenceSession(_probe_model(opset).SerializeToString(), options,
                                                   providers=["CPUExecutionProvider"])
            session.run(None, {"x": x})
        except Exception:  # onnxruntime raises its own Fail/InvalidGraph/NotImplemented types
            continue
        return opset
    return None


def max_opset():
    """The newest opset nbnet exports to with this onnx and onnxruntime."""
    import onnxruntime

    runtime = onnxruntime_max_opset()
    if runtime is None:
        raise ExportError(f"onnxruntime {onnxruntime.__version__} cannot load ONNX opset {MIN_OPSET} models, the oldest "
                          f"nbnet exports (per-axis Softmax needs opset >= {MIN_OPSET}); upgrade onnxruntime.")
    return min(onnx_max_opset(), runtime)


def default_opset():
    return max_opset()


def supported_opsets():
    return range(MIN_OPSET, max_opset() + 1)


def resolve_opset(opset):
    """``opset`` checked against what the mapping supports (None: the default)."""
    if opset is None:
        return default_opset()
    if isinstance(opset, bool) or not isinstance(opset, (int, np.integer)):
        raise ExportError(f"opset must be an integer, received {opset!r}.")
    opset, newest = int(opset), max_opset()
    if opset < MIN_OPSET:
        raise ExportError(f"ONNX opset {opset} is not supported: nbnet exports opsets {MIN_OPSET}..{newest}. Opsets "
                          f"before {MIN_OPSET} have a Softmax that flattens every axis after `axis`, which cannot express "
                          f"nbnet's per-channel softmax; use --opset {MIN_OPSET} or newer (or leave it out for {newest}).")
    if opset > newest:
        import onnxruntime

        raise ExportError(f"ONNX opset {opset} is not supported here: the installed onnx "
                          f"(opset <= {onnx_max_opset()}) and onnxruntime {onnxruntime.__version__} "
                          f"(opset <= {onnxruntime_max_opset()}) support up to {newest}; choose {MIN_OPSET}..{newest}.")
    return opset
