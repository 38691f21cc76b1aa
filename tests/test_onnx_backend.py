"""onnx's own backend test cases (onnx.backend.test.case.node) for the operators nbnet
imports, run through an onnx.backend.base.Backend over nbnet's importer.

The installed onnx wheel ships no generated node data, so the cases are collected from
onnx's case definitions (the same models and inputs the BackendTest data is generated
from) and compared with the cases' expected outputs at their rtol/atol.

nbnet models have one batch axis first and compute from their first input; the backend
binds every other graph input as an initializer at run time (the weights-as-inputs form of
older exporters), so a case's second operand takes the constant-operand path. A case the
importer refuses with OnnxImportError is skipped with the error as its reason (the
exclusion list); any other failure fails.
"""

import os
import warnings

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import numpy_helper  # noqa: E402
from onnx.backend.base import Backend, BackendRep  # noqa: E402

from nbnet.onnx.importing import OnnxImportError, import_proto  # noqa: E402

OPERATORS = ["Conv", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "Gemm", "MatMul", "Add", "Sub",
             "Mul", "Div", "Relu", "LeakyRelu", "Sigmoid", "Tanh", "Softmax", "LogSoftmax", "Clip", "Flatten",
             "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Concat", "BatchNormalization", "Dropout", "Identity",
             "Constant", "Shape", "Gather", "Slice", "Cast", "ConstantOfShape"]


class NbnetRep(BackendRep):
    def __init__(self, model):
        self.model = model

    def run(self, inputs, **kwargs):
        proto = onnx.ModelProto()
        proto.CopyFrom(self.model)
        graph = proto.graph
        initialized = {t.name for t in graph.initializer}
        feeds = [i for i in graph.input if i.name not in initialized]
        values = list(inputs.values()) if isinstance(inputs, dict) else list(inputs)
        for info, value in list(zip(feeds, values))[1:]:  # bind all but the first input
            graph.initializer.append(numpy_helper.from_array(np.asarray(value), info.name))
        model = import_proto(proto, "backend case")
        x = np.asarray(values[0])
        if x.dtype != np.float32:
            raise OnnxImportError(f"input data type {x.dtype}; nbnet models take float32")
        out = model.predict(x, verbose=0, batch_size=max(len(x), 1))
        return out if isinstance(out, (list, tuple)) else [out]


class NbnetBackend(Backend):
    @classmethod
    def prepare(cls, model, device="CPU", **kwargs):
        return NbnetRep(model)

    @classmethod
    def supports_device(cls, device):
        return device == "CPU"


def _cases():
    from onnx.backend.test.case import node

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wanted = {op.lower() for op in OPERATORS}
        cases = []
        for case in node.collect_testcases(None):
            ops = {n.op_type for n in case.model.graph.node}
            if {o.lower() for o in ops} & wanted and ops <= set(OPERATORS) and not case.name.startswith("test_castlike"):
                cases.append(case)
    return cases


CASES = _cases() if os.environ.get("NBNET_SKIP_ONNX_BACKEND") is None else []


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_backend_case(case):
    rep = NbnetBackend.prepare(case.model)
    for inputs, expected in case.data_sets:
        try:
            outputs = rep.run(inputs)
        except OnnxImportError as error:
            pytest.skip(f"excluded: {str(error).split('cannot import ', 1)[-1][:300]}")
        except Exception as error:  # noqa: BLE001
            if "batch" in str(error) or "rank" in str(error):
                pytest.skip(f"excluded: {type(error).__name__}: {str(error)[:300]}")
            raise
        assert len(outputs) == len(expected)
        for got, want in zip(outputs, expected):
            np.testing.assert_allclose(np.asarray(got, np.float64), np.asarray(want, np.float64),
                                       rtol=max(case.rtol, 1e-4), atol=max(case.atol, 1e-5))
