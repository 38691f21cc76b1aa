"""A functional model's architecture as data, in Keras 3's shape: the layers, each with
its ``inbound_nodes`` (the tensors of each call, as ``keras_history`` [layer name, node
index, tensor index]), and the model's ``input_layers`` / ``output_layers``. nbnet's own
files (.nbnet, ONNX metadata) keep it with nbnet's layer configs; Keras files use the
same skeleton with Keras's (see keras_file.py). Rebuilding replays the calls, so nothing
in a file is ever executed.
"""

from .errors import ModelFileError


def _history(tensor, node_positions):
    return [tensor.node.layer.name, node_positions[id(tensor.node)], tensor.index]


def _tensor_config(tensor, node_positions):
    return {"class_name": "__keras_tensor__",
            "config": {"shape": list(tensor.shape), "dtype": "float32",
                       "keras_history": _history(tensor, node_positions)}}


def node_positions(model):
    """Each node's index among its layer's calls in ``model`` (Keras's node index)."""
    counts, positions = {}, {}
    for node in [t.node for t in model._input_tensors] + list(model._nodes):
        positions[id(node)] = counts.get(id(node.layer), 0)
        counts[id(node.layer)] = positions[id(node)] + 1
    return positions


def functional_config(model, layer_entry=None):
    """``model``'s architecture; ``layer_entry(layer)`` gives a layer's entry without its
    nodes (default: nbnet's class name and config; a nested model gives its own)."""
    layer_entry = layer_entry or _nbnet_entry
    positions = node_positions(model)
    calls = {}
    for node in model._nodes:
        calls.setdefault(id(node.layer), []).append(node)
    layers = []
    for layer in model.layers:
        entry = layer_entry(layer)
        entry["name"] = layer.name
        entry["inbound_nodes"] = []
        for node in calls.get(id(layer), []):
            tensors = [_tensor_config(t, positions) for t in node.inputs]
            args = [tensors] if getattr(layer, "multiple_inputs", False) or len(node.inputs) > 1 else tensors
            entry["inbound_nodes"].append({"args": args, "kwargs": {}})
        layers.append(entry)

    def structure(tensors, given):
        histories = [_history(t, positions) for t in tensors]
        if isinstance(given, dict):
            return dict(zip(given, histories))
        return histories[0] if len(histories) == 1 and not isinstance(given, (list, tuple)) else histories

    return {"name": model.name, "trainable": model.trainable, "seed": model.seed, "layers": layers,
            "input_layers": structure(model._input_tensors, model._inputs_structure),
            "output_layers": structure(model._output_tensors, model._outputs_structure)}


def _nbnet_entry(layer):
    from .models import Model, Sequential

    if isinstance(layer, Model):
        return {"class_name": "Sequential" if isinstance(layer, Sequential) else "Functional",
                "config": layer.get_config()}
    return {"class_name": type(layer).__name__, "config": layer.get_config()}


def _nbnet_layer(entry):
    from . import layers as layers_module
    from .models import Model
    from .saving import model_from_config

    class_name = entry.get("class_name")
    if class_name in ("Functional", "Model"):
        return Model.from_config(entry["config"])
    if class_name == "Sequential":
        return model_from_config(entry["config"])
    cls = getattr(layers_module, str(class_name), None)
    if not (isinstance(cls, type) and issubclass(cls, layers_module.Layer)):
        raise ModelFileError(f"Unknown layer type {class_name!r} in the model's architecture.")
    return cls(**entry["config"])


def from_functional_config(config, make_layer=None):
    """The Model ``config`` describes, its layers made by ``make_layer(entry)`` (default:
    nbnet's layers) and called as the nodes say, in an order where every call's inputs
    exist first."""
    from . import graph
    from .layers import InputLayer
    from .models import Model

    make_layer = make_layer or _nbnet_layer
    entries = config.get("layers")
    if not isinstance(entries, list):
        raise ModelFileError("The functional model's architecture has no list of layers.")
    made, pending = {}, []
    for entry in entries:
        name = entry.get("name") or entry.get("config", {}).get("name")
        if name in made:
            raise ModelFileError(f"Two layers are named {name!r} in the model's architecture.")
        layer = make_layer(entry)
        made[name] = layer
        if isinstance(layer, InputLayer):
            continue
        pending.extend((name, position, node) for position, node in enumerate(entry.get("inbound_nodes") or []))
    outputs = {}  # (layer name, node index) -> output tensors
    for name, layer in made.items():
        if isinstance(layer, InputLayer):
            outputs[(name, 0)] = [graph.input_tensor(layer)]

    def tensor(history):
        layer_name, node_index, tensor_index = history[0], int(history[1]), int(history[2])
        return outputs[(layer_name, node_index)][tensor_index]

    def inputs_of(node):
        args = node.get("args", []) if isinstance(node, dict) else node
        found = []

        def walk(value):
            if isinstance(value, dict) and value.get("class_name") == "__keras_tensor__":
                found.append(value["config"]["keras_history"])
            elif isinstance(value, dict) and "keras_history" in value.get("config", {}):
                found.append(value["config"]["keras_history"])
            elif isinstance(value, (list, tuple)):
                if len(value) >= 3 and isinstance(value[0], str) and isinstance(value[1], int):
                    found.append(value)  # Keras 2's [layer name, node index, tensor index, kwargs]
                else:
                    for item in value:
                        walk(item)

        walk(args)
        return found

    while pending:
        progressed = False
        for item in list(pending):
            name, position, node = item
            histories = inputs_of(node)
            if not all((h[0], int(h[1])) in outputs for h in histories):
                continue
            layer = made[name]
            tensors = [tensor(h) for h in histories]
            many = getattr(layer, "multiple_inputs", False) or (isinstance(layer, Model) and len(tensors) > 1)
            result = layer(tensors if many else tensors[0])
            outputs[(name, position)] = result if isinstance(result, list) else [result]
            pending.remove(item)
            progressed = True
        if not progressed:
            missing = sorted({h[0] for _, _, node in pending for h in inputs_of(node)} - set(made))
            raise ModelFileError(f"The functional model's architecture cannot be connected: the layers "
                                 f"{sorted({name for name, _, _ in pending})} wait for inputs that never come"
                                 f"{f' (unknown layers {missing})' if missing else ''}.")

    def structure(value):
        if isinstance(value, dict):
            return {key: tensor(v) for key, v in value.items()}
        if isinstance(value, list) and value and isinstance(value[0], str):
            return tensor(value)
        return [tensor(v) for v in value]

    return Model(structure(config["input_layers"]), structure(config["output_layers"]), name=config.get("name"),
                 seed=config.get("seed"))
