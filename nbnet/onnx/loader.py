"""ONNX file -> nbnet model. A file nbnet wrote comes back exactly (the architecture from
its metadata, the weights from the initializers, converted back to Keras layouts); any
other file goes through the importer (nbnet/onnx/importing/), which builds a functional
Model from the graph's operators."""

import json
from pathlib import Path

import numpy as np

from ..errors import ModelFileError
from .exporter import META_ARCHITECTURE, META_WEIGHTS, PRODUCER


def load(path):
    """The nbnet model for an ONNX file (uncompiled): the model nbnet exported it from, or,
    for a file another tool wrote, the imported graph (see ``nbnet.onnx.importing``)."""
    import onnx
    from onnx import numpy_helper

    from ..saving import model_from_config

    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"ONNX file {path} does not exist.")
    try:
        proto = onnx.load_from_string(path.read_bytes())
    except Exception as error:
        raise ModelFileError(f"{path} is not a readable ONNX file ({type(error).__name__}: {error}).") from None
    meta = {prop.key: prop.value for prop in proto.metadata_props}
    if proto.producer_name != PRODUCER or META_ARCHITECTURE not in meta or META_WEIGHTS not in meta:
        from .importing import import_model

        return import_model(path)  # re-read with its external data, if any
    try:
        config = json.loads(meta[META_ARCHITECTURE])
        weights = json.loads(meta[META_WEIGHTS])
        model = model_from_config(config)
        if not model.built:
            raise ValueError("the architecture has no input shape")
        initializers = {tensor.name: tensor for tensor in proto.graph.initializer}
        by_layer = {(int(index), key): (name, perm) for index, key, name, perm in weights}
        arrays = []
        for index, layer in enumerate(model._weight_layers()):
            for key in layer.weight_order:
                name, perm = by_layer[(index, key)]
                value = numpy_helper.to_array(initializers[name])
                if perm is not None:
                    value = value.transpose(np.argsort(perm))
                # A depthwise kernel is written as (kh, kw, 1, C*M): same order, other shape.
                arrays.append(value.reshape(np.shape(layer._weight(key))))
        model.set_weights(arrays)
    except ModelFileError:
        raise
    except Exception as error:  # missing initializers, wrong shapes, malformed metadata
        raise ModelFileError(f"{path}: nbnet's metadata does not fit the graph's weights "
                             f"({type(error).__name__}: {error}); was the file edited after export?") from None
    return model
