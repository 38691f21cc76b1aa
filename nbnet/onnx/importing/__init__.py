"""ONNX graph -> nbnet functional Model.

    from nbnet.onnx import load
    model = load("mnist-8.onnx")        # any ONNX file whose operators nbnet supports

Three parts, in the order a graph passes through them: ``context`` reads the file
(external data, weights listed as inputs, unsorted nodes), sorts the nodes and runs each
through its converter (one function per operator and opset range, see ``registry``;
grouped by family in ``constants`` (which folds the shape arithmetic exporters emit),
``elementwise``, ``linear``, ``spatial`` and ``layout``); ``values`` keeps each tensor's
layout, so the model takes and returns the graph's own layout (NCHW at the boundary) while
Conv, pooling and BatchNormalization compute channels-last inside, with a Permute only where a layout has to change and Flatten's
order folded into the next Dense's kernel rows.
"""

from . import constants, elementwise, layout, linear, spatial  # noqa: F401  (they register the converters)
from .context import ImportContext, load_proto
from .registry import MIN_IMPORT_OPSET, OnnxImportError, converter, lookup, newest_opset, supported_operators

__all__ = ["import_model", "import_proto", "OnnxImportError", "converter", "lookup", "supported_operators",
           "MIN_IMPORT_OPSET", "newest_opset"]


def import_proto(proto, source="<onnx model>"):
    """An nbnet Model computing what the ONNX ``proto`` computes (uncompiled)."""
    ctx = ImportContext(proto, source)
    ctx.declared_batch = _declared_batch(proto)
    return ctx.run()


def import_model(path):
    return import_proto(load_proto(path), str(path))


def _declared_batch(proto):
    initializers = {t.name for t in proto.graph.initializer}
    for info in proto.graph.input:
        if info.name in initializers:
            continue
        dims = info.type.tensor_type.shape.dim
        if dims and dims[0].HasField("dim_value"):
            return dims[0].dim_value
    return None
