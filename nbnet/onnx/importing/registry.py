"""The converter registry: one small function per ONNX operator and opset range.

    @converter("Softmax", since=13)
    def softmax_13(ctx, node, inputs): ...

A converter receives the import context, the NodeProto and its inputs (``Const`` for
values known at import, ``Value`` for tensors that depend on the model's input, None for
an omitted optional input) and returns one entry per node output. The entry used for a
node is the one with the highest ``since`` at or below the model's opset."""

from ...errors import ModelFileError

_REGISTRY = {}  # op type -> sorted [(since, function)]
MIN_IMPORT_OPSET = 6  # opset 6: the pytorch-converted backend cases; Add-Div's legacy broadcast handled


class OnnxImportError(ModelFileError):
    """An ONNX graph nbnet cannot turn into a model (unsupported operator, attribute, data
    type, or a shape that cannot be fixed); the message names the node or tensor."""


def converter(op_type, since=1):
    def register(function):
        entries = _REGISTRY.setdefault(op_type, [])
        entries.append((since, function))
        entries.sort(key=lambda entry: entry[0])
        return function

    return register


def lookup(op_type, opset):
    """The converter for ``op_type`` at ``opset``, or None."""
    chosen = None
    for since, function in _REGISTRY.get(op_type, ()):
        if since <= opset:
            chosen = function
    return chosen


def supported_operators():
    return sorted(_REGISTRY)


def newest_opset():
    import onnx

    return onnx.defs.onnx_opset_version()
