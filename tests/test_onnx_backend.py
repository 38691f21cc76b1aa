"""onnx's own backend test suite (``onnx.backend.test.BackendTest``) run over nbnet's
importer through ``NbnetBackend`` (``prepare`` / ``run``).

Selected: every node case of the operators nbnet imports (a case whose graph uses only
``OPERATORS``, and the ``_expanded`` variants of those cases), and the wheel's
pytorch-converted, pytorch-operator and simple model cases that use only ``OPERATORS``
(foreign graphs: weights as initializers, exporters' layouts). CPU only.

Node data. The installed onnx wheel ships no ``backend/test/data/node``; its loader builds
the node cases in memory from ``onnx.backend.test.case.node`` on every run (about 5 s).
The selected ones are written once, in ``onnx.backend.test.cmd_tools generate-data``'s
layout (``<dir>/node/<case>/model.onnx``, ``test_data_set_N/input_j.pb``,
``output_j.pb``), to a cache directory keyed by the onnx version and the operator list,
and BackendTest's loader is pointed at it for ``kind="node"``.

Tolerance: onnxruntime's backend-test tolerance (rtol 1e-3, atol 1e-5), or the case's
own where tighter.

Exclusions. nbnet models have one batch axis first and compute from their first input;
the backend binds every other graph input as an initializer at run time (the
weights-as-inputs form of older exporters), so a case's second operand takes the
constant-operand path. A case the importer refuses with OnnxImportError is skipped with
the error as its reason (``pytest -rs`` lists each excluded case and why); any other
failure fails.

Counts (onnx 1.23.2, CPU; ``pytest -v -rs tests/test_onnx_backend.py``):
    node cases                       456 selected: 107 pass, 349 excluded
    pytorch-converted                 65 selected: 37 pass,  28 excluded
    pytorch-operator                  17 selected:  6 pass,  11 excluded
    simple                             1 selected:  1 pass
The exclusions, by reason: the first axis of a node case is not a batch (Transpose,
Squeeze, Unsqueeze, Reshape, Gather, Slice, Softmax across axis 0, a constant varying along
it, 1-D inputs); input or output types other than float32 (Cast and CastLike to ints,
float8/4-bit, double inputs, Shape's int64 output, sequences/optionals); outputs that are
constants; the ``_expanded`` variants' ReduceMax and other unsupported operators; 1-D and
3-D Conv and pooling; grouped/dilated Conv; dilated pooling; MatMul with a rank-1 or
rank > 2 operand; Dropout in training mode; Selu with constants other than SELU's own;
Resize other than nearest-neighbour upscaling by whole factors (linear, cubic, downscaling,
sizes that are no whole multiple, align_corners, tf_crop_and_resize);
and opset-6 graphs with computed Concat or Gemm C operands.
"""

import glob
import hashlib
import json
import os
import re
import shutil
import tempfile
import unittest
import warnings

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
import onnx.backend.test  # noqa: E402
from onnx import numpy_helper  # noqa: E402
from onnx.backend.base import Backend, BackendRep  # noqa: E402

from nbnet.onnx.importing import OnnxImportError, import_proto  # noqa: E402

OPERATORS = ["Conv", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "Gemm", "MatMul", "Add", "Sub",
             "Mul", "Div", "Relu", "LeakyRelu", "Sigmoid", "Tanh", "Elu", "Selu", "Softplus", "Softmax", "LogSoftmax",
             "Clip", "Flatten", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Concat", "BatchNormalization", "Dropout",
             "Identity", "Constant", "Shape", "Gather", "Slice", "Cast", "ConstantOfShape", "Resize", "Upsample"]
MODEL_KINDS = ("pytorch-converted", "pytorch-operator", "simple")
ORT_RTOL, ORT_ATOL = 1e-3, 1e-5


class NbnetRep(BackendRep):
    def __init__(self, model):
        self.model = model

    def run(self, inputs, **kwargs):
        try:
            return self._run(inputs)
        except OnnxImportError as error:
            raise unittest.SkipTest(f"excluded: {str(error).split('cannot import ', 1)[-1][:300]}") from None

    def _run(self, inputs):
        proto = onnx.ModelProto()
        proto.CopyFrom(self.model)
        graph = proto.graph
        initialized = {t.name for t in graph.initializer}
        feeds = [i for i in graph.input if i.name not in initialized]
        values = list(inputs.values()) if isinstance(inputs, dict) else list(inputs)
        for info, value in list(zip(feeds, values))[1:]:  # bind all but the first input
            if not isinstance(value, np.ndarray):
                raise OnnxImportError(f"cannot import input '{info.name}': a {type(value).__name__}, "
                                      "not a tensor; nbnet imports tensor inputs")
            graph.initializer.append(numpy_helper.from_array(value, info.name))
        model = import_proto(proto, "backend case")
        x = values[0]
        if not isinstance(x, np.ndarray) or x.dtype != np.float32:
            raise OnnxImportError(f"cannot import input data of type {getattr(x, 'dtype', type(x).__name__)}; "
                                  "nbnet models take float32")
        # x as onnx's loader hands it: read-only (predict copies such chunks, so no kernel
        # compiles a second signature; test_onnx_ops_kernels checks one per dtype)
        out = model.predict(x, verbose=0, batch_size=max(len(x), 1))
        return out if isinstance(out, (list, tuple)) else [out]


class NbnetBackend(Backend):
    @classmethod
    def prepare(cls, model, device="CPU", **kwargs):
        return NbnetRep(model)

    @classmethod
    def supports_device(cls, device):
        return device == "CPU"


def _ops(model):
    ops = set()
    for node in model.graph.node:
        ops.add(node.op_type)
        for attribute in node.attribute:  # a subgraph's operators count too
            for graph in [attribute.g, *attribute.graphs]:
                ops.update(n.op_type for n in graph.node)
    return ops


def _ours(model):
    return _ops(model) <= set(OPERATORS)


# -- node data: written once in cmd_tools' layout -----------------------------------------
def _write_proto(path, value, type_proto, name):
    if type_proto.HasField("sequence_type"):
        proto = numpy_helper.from_list(value, name)
    elif type_proto.HasField("optional_type"):
        proto = numpy_helper.from_optional(value, name)
    elif isinstance(value, onnx.TensorProto):
        proto = value
    else:
        proto = numpy_helper.from_array(np.asarray(value), name)
    with open(path, "wb") as f:
        f.write(proto.SerializeToString())


def _write_node_cases(root):
    """The selected node cases under ``root/node`` (a fresh directory renamed into place,
    so a concurrent run sees either no cache or a whole one)."""
    from onnx.backend.test.loader import load_node_model_tests

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cases = load_node_model_tests()
    ours = {case.name for case in cases if _ours(case.model)}
    selected = [case for case in cases
                if case.name in ours or re.sub(r"_expanded(_ver\d+)?$", "", case.name) in ours]
    staging = tempfile.mkdtemp(prefix=os.path.basename(root) + ".", dir=os.path.dirname(root))
    for case in selected:
        case_dir = os.path.join(staging, "node", case.name)
        os.makedirs(case_dir)
        with open(os.path.join(case_dir, "model.onnx"), "wb") as f:
            f.write(case.model.SerializeToString())
        with open(os.path.join(case_dir, "data.json"), "w") as f:
            json.dump({"rtol": case.rtol, "atol": case.atol}, f)
        graph = case.model.graph
        for i, (inputs, outputs) in enumerate(case.data_sets):
            data_dir = os.path.join(case_dir, f"test_data_set_{i}")
            os.makedirs(data_dir)
            for j, value in enumerate(inputs):
                _write_proto(os.path.join(data_dir, f"input_{j}.pb"), value, graph.input[j].type, graph.input[j].name)
            for j, value in enumerate(outputs):
                _write_proto(os.path.join(data_dir, f"output_{j}.pb"), value, graph.output[j].type,
                             graph.output[j].name)
    try:
        os.rename(staging, root)
    except OSError:  # another run wrote it first
        shutil.rmtree(staging, ignore_errors=True)


def node_data_dir():
    key = hashlib.sha1(json.dumps([onnx.__version__, OPERATORS, 1]).encode()).hexdigest()[:10]
    root = os.path.join(tempfile.gettempdir(), f"nbnet-onnx-backend-{onnx.__version__}-{key}")
    if not os.path.isdir(os.path.join(root, "node")):
        _write_node_cases(root)
    return root


def _model_cases(data_dir, kind):
    """Model cases of ``data_dir/kind`` as onnx's loader reads them (its ``kind == "node"``
    branch builds cases in memory and ignores ``data_dir``: this is its directory branch)."""
    from onnx.backend.test.case.test_case import TestCase

    cases = []
    for case_dir in sorted(glob.glob(os.path.join(data_dir, kind, "test_*", ""))):
        name = os.path.basename(os.path.dirname(case_dir))
        tolerance = {"rtol": 1e-3, "atol": 1e-7}
        if os.path.exists(os.path.join(case_dir, "data.json")):
            with open(os.path.join(case_dir, "data.json")) as f:
                tolerance.update(json.load(f))
        cases.append(TestCase(name=name, model_name=name[len("test_"):], url=None, model_dir=case_dir.rstrip("/"),
                              model=None, data_sets=None, kind=kind, **tolerance))
    return cases


class NbnetBackendTest(onnx.backend.test.BackendTest):
    @classmethod
    def assert_similar_outputs(cls, ref_outputs, outputs, rtol, atol, model_dir=None):
        super().assert_similar_outputs(ref_outputs, outputs, min(rtol, ORT_RTOL), ORT_ATOL if atol < ORT_ATOL else
                                       min(atol, ORT_ATOL), model_dir=model_dir)


def _backend_test():
    import onnx.backend.test.runner as runner

    original = runner.load_model_tests
    node_root = node_data_dir()

    def load_model_tests(data_dir=None, kind=None):
        if kind == "node":
            return _model_cases(node_root, "node")
        if kind in MODEL_KINDS:
            return original(kind=kind)
        return []  # "real" downloads models, "light" holds whole zoo networks: not selected

    runner.load_model_tests = load_model_tests  # only while BackendTest loads its cases
    try:
        backend_test = NbnetBackendTest(NbnetBackend, __name__)
    finally:
        runner.load_model_tests = original
    names = {"node": sorted(os.path.basename(p) for p in glob.glob(os.path.join(node_root, "node", "test_*"))),
             "model": []}
    data_dir = os.path.join(os.path.dirname(onnx.backend.test.__file__), "data")
    for kind in MODEL_KINDS:
        for path in sorted(glob.glob(os.path.join(data_dir, kind, "test_*", "model.onnx"))):
            if _ours(onnx.load(path, load_external_data=False)):
                names["model"].append(os.path.basename(os.path.dirname(path)))
    for name in names["node"] + names["model"]:
        backend_test.include(f"^{re.escape(name)}_cpu$")
    return backend_test, names


def _selected_cases(backend_test):
    """BackendTest's unittest classes, without the cases it only marks skipped (not
    selected, or a device nbnet's backend does not take): the rest are nbnet's to pass."""
    cases = backend_test.enable_report().test_cases
    for case in cases.values():
        for name in [n for n in vars(case) if n.startswith("test_")]:
            reason = getattr(getattr(case, name), "__unittest_skip_why__", "")
            if reason == "no matched include pattern" or reason.startswith("Backend doesn't support device"):
                delattr(case, name)
    return cases


if os.environ.get("NBNET_SKIP_ONNX_BACKEND") is None:
    BACKEND_TEST, SELECTED = _backend_test()
    globals().update(_selected_cases(BACKEND_TEST))
else:
    SELECTED = {}


@pytest.mark.skipif(not SELECTED, reason="NBNET_SKIP_ONNX_BACKEND is set")
def test_selection():
    """The selection cannot silently shrink (an onnx upgrade renaming cases, a broken cache)."""
    node, model = SELECTED["node"], SELECTED["model"]
    assert len(node) >= 300, len(node)
    assert len(model) >= 50, len(model)
    assert "test_Conv2d_padding" in model and "test_operator_maxpool" in model and "test_maxpool_2d_pads" in node
