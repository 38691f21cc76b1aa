"""Keras model files. Keras 3's ``.keras``, read and written: a zip of ``metadata.json``,
``config.json`` (the model's and each layer's ``get_config``, with ``module``,
``class_name`` and ``build_config``; the compile settings) and ``model.weights.h5``
(Keras's weights layout, see ``weights_file``; the optimizer's state, see
``keras_optimizer_state``). Keras 2 / tf.keras legacy ``.h5`` model files, read and
written: the same configs in the ``model_config`` attribute, the weights in
``model_weights/<layer>`` listed by each group's ``weight_names``.

Sequential and functional models (``class_name`` "Functional", or Keras 2's "Model"): a
functional model's layers with their calls (``inbound_nodes``), as
``functional_config`` reads and writes them, with Keras's layer configs; merge layers,
shared layers, several inputs and outputs (a list, or a dict by name: Keras orders those
by key), and Sequential or functional models used as layers. The compile settings: the
optimizer, and per output the loss, loss weight and metrics, in each form Keras writes
them (one for all, a list, a dict by output name; names or serialized objects; Keras 2's
nested lists), restored with the optimizer's state (a legacy .h5 file's
``optimizer_weights`` too, see ``_load_legacy_optimizer``).

Files are data: a ``Lambda`` layer or any class nbnet does not have is refused with the
layer's name, never imported or run, and so is a setting nbnet cannot honour (a
channels-first layout, a constraint, ...): nbnet never silently computes something else.
"""

import inspect
import io
import json
import zipfile
from pathlib import Path

import h5py
import numpy as np

from . import __version__, layers as layers_module
from .errors import ModelFileError, NbnetError
from .functional_config import from_functional_config, functional_config
from .paths import atomic_write

CONFIG, METADATA, WEIGHTS = "config.json", "metadata.json", "model.weights.h5"
# Keras settings nbnet has no argument for, and the values at which leaving them out changes
# nothing. Any other value is refused (see _layer_from_keras).
_NEUTRAL = {
    "dtype": None, "data_format": ("channels_last", None), "dilation_rate": ([1, 1], 1, (1, 1)), "groups": 1,
    "activity_regularizer": None, "kernel_constraint": None, "bias_constraint": None, "depthwise_constraint": None, "beta_constraint": None,
    "gamma_constraint": None, "beta_regularizer": None, "gamma_regularizer": None, "noise_shape": None,
    "center": True, "scale": True, "axis": (-1, [-1]), "renorm": False, "renorm_clipping": None,
    "renorm_momentum": None, "synchronized": None, "moving_mean_initializer": None,
    "moving_variance_initializer": None, "beta_initializer": None, "gamma_initializer": None,
    "max_value": None, "threshold": (0, 0.0), "negative_slope": (0, 0.0), "batch_input_shape": None, "lora_rank": None, "lora_alpha": None, "quantization_config": None,
}
# Keys whose value does not matter to the computation (the initializers of BatchNormalization
# and renorm's momentum only apply to settings checked elsewhere).
_ANY_VALUE = {"dtype", "synchronized", "renorm_momentum", "moving_mean_initializer", "moving_variance_initializer",
              "beta_initializer", "gamma_initializer", "batch_input_shape", "axis", "sparse", "ragged"}


def is_legacy_h5(path):
    try:
        with open(path, "rb") as handle:
            if handle.read(8) != b"\x89HDF\r\n\x1a\n":
                return False
        with h5py.File(path, "r") as h5:
            return "model_config" in h5.attrs
    except OSError:
        return False


def is_keras_file(path):
    try:
        with zipfile.ZipFile(path) as archive:
            return CONFIG in archive.namelist() and WEIGHTS in archive.namelist()
    except (OSError, zipfile.BadZipFile):
        return False


# ------------------------------------------------------------------------------ reading
MODEL_CLASSES = ("Sequential", "Functional", "Model")


def load_keras(path):
    """A model from a Keras 3 ``.keras`` file, with its weights and, when nbnet has them,
    its optimizer (and the optimizer's state), loss and metrics."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            config = json.loads(archive.read(CONFIG))
            weights = archive.read(WEIGHTS)
    except (OSError, zipfile.BadZipFile, KeyError, ValueError) as exc:
        raise ModelFileError(f"{path} is not a readable Keras .keras file ({type(exc).__name__}: {exc}).") from None
    model = _model_from_keras(config, path)
    _load_weights_bytes(model, weights, path)
    compiled = config.get("compile_config")
    if compiled:
        _compile_from_keras(model, compiled, path)
    if model.optimizer is not None:
        _load_optimizer_bytes(model, weights, path)
    return model


def load_legacy_h5(path):
    """A model from a Keras 2 / tf.keras (or Keras 3 legacy) ``.h5`` model file."""
    from .weights_file import legacy_group_values, legacy_updates, legacy_weights, set_updates

    path = Path(path)
    try:
        with h5py.File(path, "r") as h5:
            config = json.loads(_text(h5.attrs["model_config"]))
            training = json.loads(_text(h5.attrs["training_config"])) if "training_config" in h5.attrs else None
            keras2 = not _text(h5.attrs.get("keras_version", "")).startswith("3.")
            model = _model_from_keras(config, path)
            stored = h5["model_weights"] if "model_weights" in h5 else h5
            updates, weights_by_name = [], {}
            for layer in model.layers:  # by name: the names come from the same file
                group = stored.get(layer.name)
                updates.extend(legacy_updates(layer, legacy_group_values(group) if group is not None else [], path))
                names = [_text(name).split(":")[0] for name in group.attrs.get("weight_names", [])] \
                    if group is not None else []
                for name, pair in zip(names, legacy_weights(layer)):
                    weights_by_name[name] = None if name in weights_by_name else pair  # None: named twice
            optimizer_weights = None
            if "optimizer_weights" in h5:
                group = h5["optimizer_weights"]
                names = [_text(name) for name in group.attrs.get("weight_names", [])]
                optimizer_weights = (names, [np.asarray(group[name]) for name in names])
    except (OSError, KeyError, ValueError) as exc:
        raise ModelFileError(f"{path} is not a readable Keras .h5 model file ({type(exc).__name__}: {exc}).") from None
    set_updates(updates)
    if training:
        _compile_from_keras(model, {"optimizer": training.get("optimizer_config"), "loss": training.get("loss"),
                                    "loss_weights": training.get("loss_weights"), "metrics": training.get("metrics"),
                                    "weighted_metrics": training.get("weighted_metrics"), "keras2": keras2}, path)
    if model.optimizer is not None and optimizer_weights:
        _load_legacy_optimizer(model, *optimizer_weights,
                               {name: pair for name, pair in weights_by_name.items() if pair is not None}, path)
    return model


def _load_legacy_optimizer(model, names, values, weights_by_name, path):
    """A legacy .h5 file's ``optimizer_weights``. Keras 3 writes ``optimizer.variables``,
    the list a .keras file keeps (read as there; Keras 3.15 itself restores only the step
    count and learning rate from it: it builds the optimizer over ``model._trainable_variables``,
    empty for a functional model). Keras 2 / tf.keras (OptimizerV2) writes ``iter`` and
    slots named by their weights, read by name where every name fits exactly one weight;
    any other layout (Keras 2.11+'s new optimizers among them) starts the optimizer afresh,
    with a warning."""
    from . import keras_optimizer_state

    if keras_optimizer_state.is_keras3_layout(names):
        keras_optimizer_state.read_values(model, values, f"{path}:optimizer_weights")
        return
    why = keras_optimizer_state.read_keras2(model, names, values, weights_by_name)
    if why is not None:
        import warnings

        warnings.warn(f"{path}: the optimizer's saved state was not restored ({why}); {type(model.optimizer).__name__} "
                      "starts afresh.", stacklevel=3)


def _text(value):
    return value.decode() if isinstance(value, bytes) else str(value)




def _model_from_keras(config, path):
    """The model a Keras model config (``{"class_name": ..., "config": ...}``) describes."""
    kind = config.get("class_name") if isinstance(config, dict) else type(config).__name__
    if kind == "Sequential":
        model = _sequential_from_config(config, path)
    elif kind in ("Functional", "Model"):
        model = _functional_from_config(config, path)
    else:
        raise ModelFileError(f"{path}: nbnet reads Sequential and functional Keras models; this file holds a "
                             f"{kind!r} (a subclassed model's call() is code, which a file cannot carry).")
    _check_axes(model)
    inner = config.get("config")
    if isinstance(inner, dict) and inner.get("trainable") is False:
        model.trainable = False
    return model


def _sequential_from_config(config, path):
    from .models import Sequential

    inner = config.get("config", {})
    entries = inner.get("layers", []) if isinstance(inner, dict) else inner  # Keras 2.0 kept a bare list
    built, input_layer = [], None
    for entry in entries:
        if entry.get("class_name") == "InputLayer":
            input_layer = layers_module.InputLayer(**_input_config(entry.get("config", {})))
            continue
        if entry.get("class_name") in MODEL_CLASSES:
            raise ModelFileError(f"{path}: the Sequential model holds the model '{entry.get('config', {}).get('name')}'"
                                 " as a layer; nbnet reads models used as layers in functional models only.")
        layer_config = entry.get("config", {})
        if input_layer is None and not built and layer_config.get("batch_input_shape"):  # Keras 2's first layer
            input_layer = layers_module.InputLayer(batch_shape=layer_config["batch_input_shape"])
        built.append(_layer_from_keras(entry))
    if input_layer is None:
        shape = (config.get("build_config") or {}).get("input_shape")
        if shape is None:
            raise ModelFileError(f"{path}: the model was never built in Keras, so its input shape is unknown.")
        input_layer = layers_module.InputLayer(batch_shape=shape)
    return Sequential([input_layer] + built, name=inner.get("name") if isinstance(inner, dict) else None)


def _functional_from_config(config, path):
    """Keras's functional config, its calls replayed by ``from_functional_config`` with
    layers made from Keras's layer configs (models used as layers made the same way)."""
    inner = dict(config.get("config") or {})
    name = inner.get("name")
    keys = None
    if isinstance(inner.get("output_layers"), dict):  # outputs by name: Keras flattens them by sorted key
        keys = sorted(inner["output_layers"])
        outputs = [_tensor_list(inner["output_layers"][key])[0] for key in keys]
    else:
        outputs = _tensor_list(inner.get("output_layers"))
    inputs = _tensor_list(inner.get("input_layers"))
    inner["input_layers"] = inputs[0] if len(inputs) == 1 else inputs
    inner["output_layers"] = outputs[0] if len(outputs) == 1 and keys is None else outputs

    def make_layer(entry):
        if entry.get("class_name") == "InputLayer":
            return layers_module.InputLayer(**_input_config(entry.get("config", {})))
        if entry.get("class_name") in MODEL_CLASSES:
            return _model_from_keras(entry, path)
        return _layer_from_keras(entry)

    try:
        model = from_functional_config(inner, make_layer)
        if keys is not None:  # the same graph, its outputs by name, in Keras's (sorted) order
            from .models import Model

            model = Model(model.input, dict(zip(keys, model.outputs)), name=model.name, seed=model.seed)
        return model
    except ModelFileError:
        raise
    except (NbnetError, KeyError, IndexError, TypeError) as exc:  # calls that do not fit together
        raise ModelFileError(f"{path}: the functional model '{name}' cannot be rebuilt ({type(exc).__name__}: "
                             f"{exc}).") from None


def _tensor_list(value):
    """A model's ``input_layers`` / ``output_layers`` as a list of [layer, node, tensor]:
    Keras 3 writes one such history for a single tensor, a list (or dict) of them for
    several; Keras 2 always a list."""
    if isinstance(value, dict):
        value = list(value.values())
    if not isinstance(value, list) or not value:
        raise ModelFileError(f"A functional model's inputs or outputs are malformed: {value!r}.")
    return [value] if isinstance(value[0], str) else value


def _check_axes(model):
    """BatchNormalization normalizes the last axis only: any other ``axis`` is refused,
    checked once each call's input rank is known."""
    for node in model._nodes:
        axis = getattr(node.layer, "keras_axis", None)
        if axis is not None and axis not in (-1, len(node.inputs[0].sample_shape)):  # Keras counts the batch axis
            raise ModelFileError(f"Layer '{node.layer.name}' (BatchNormalization): axis={axis} is not supported by "
                                 "nbnet (only the last, channel axis).")


def _input_config(config):
    shape = config.get("batch_shape") or config.get("batch_input_shape")
    if shape is None:
        raise ModelFileError(f"InputLayer '{config.get('name')}' has no batch_shape.")
    return {"batch_shape": shape, "name": config.get("name")}


def _plain(value):
    """A Keras serialized object ({module, class_name, config, ...}) as nbnet's {class_name, config}."""
    if isinstance(value, dict) and "class_name" in value:
        inner = {k: v for k, v in (value.get("config") or {}).items()
                 if not (k in ("input_axes", "output_axes") and v is None)}
        return {"class_name": value["class_name"], "config": inner}
    return value


def _layer_from_keras(entry):
    class_name, config = entry.get("class_name"), dict(entry.get("config") or {})
    name = config.get("name", class_name)
    if class_name == "Lambda" or entry.get("registered_name") not in (None, class_name):
        raise ModelFileError(f"Layer '{name}' ({class_name}) is custom code; nbnet treats model files as data and "
                             "never runs code from them (Keras's safe_mode refuses it too).")
    cls = getattr(layers_module, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, layers_module.Layer)) or class_name == "InputLayer":
        raise ModelFileError(f"Layer '{name}' is a Keras {class_name}, which nbnet does not have.")
    accepted = set(inspect.signature(cls.__init__).parameters) | {"name", "trainable", "input_shape"}
    kwargs = {}
    for key, value in config.items():
        if key in accepted:
            kwargs[key] = value
        elif key not in _NEUTRAL:
            raise ModelFileError(f"Layer '{name}' ({class_name}): nbnet has no setting {key}={value!r}.")
        elif key not in _ANY_VALUE and not _neutral(key, value):
            raise ModelFileError(f"Layer '{name}' ({class_name}): {key}={value!r} is not supported by nbnet "
                                 f"(only {_NEUTRAL[key]!r}).")
    for key in ("kernel_initializer", "bias_initializer", "kernel_regularizer", "bias_regularizer", "activation",
                "depthwise_initializer", "depthwise_regularizer"):
        if key in kwargs:
            kwargs[key] = _plain(kwargs[key])
            if key.endswith("regularizer") and isinstance(kwargs[key], dict):
                kwargs[key] = kwargs[key]["config"]
            if key == "activation" and isinstance(kwargs[key], dict):
                kwargs[key] = kwargs[key]["config"]
    if class_name == "LeakyReLU" and "alpha" in config and "negative_slope" not in config:  # Keras 2's name
        kwargs["negative_slope"] = config["alpha"]
    try:
        layer = cls(**kwargs)
    except TypeError as exc:
        raise ModelFileError(f"Layer '{name}' ({class_name}): {exc}.") from None
    if class_name == "BatchNormalization":  # checked once the input rank is known
        axis = config.get("axis", -1)
        layer.keras_axis = axis[0] if isinstance(axis, list) and len(axis) == 1 else axis
    return layer


def _neutral(key, value):
    allowed = _NEUTRAL[key]
    return value == allowed or (isinstance(allowed, tuple) and value in allowed)


def _load_weights_bytes(model, data, path):
    from .weights_file import load_weights_from

    try:
        with h5py.File(io.BytesIO(data), "r") as h5:
            load_weights_from(model, h5, f"{path}:{WEIGHTS}")
    except OSError as exc:
        raise ModelFileError(f"{path}: {WEIGHTS} is not readable HDF5 ({exc}).") from None


def _load_optimizer_bytes(model, data, path):
    """The optimizer's moments, where Keras saved them (it does once it has stepped)."""
    from . import keras_optimizer_state

    with h5py.File(io.BytesIO(data), "r") as h5:
        if "optimizer" in h5 and "vars" in h5["optimizer"]:
            keras_optimizer_state.read(model, h5["optimizer"]["vars"], f"{path}:{WEIGHTS}")


def _compile_from_keras(model, compiled, path):
    """compile(...) as the file's compile settings say: Keras 3's ``compile_config`` or a
    legacy .h5 file's ``training_config``. What nbnet lacks (a loss, a metric, a setting)
    leaves the model uncompiled, with a warning naming it: the model itself still loads."""
    try:
        optimizer = _optimizer_from_keras(compiled.get("optimizer"))
        names = model._output_keys()
        if compiled.get("weighted_metrics"):
            raise NbnetError(f"weighted_metrics={compiled['weighted_metrics']!r}: nbnet's compile has no "
                             "weighted_metrics (metrics that use sample weights)")
        loss = _per_output(compiled.get("loss"), names, _loss_from_keras)
        metrics = _metrics_from_keras(compiled.get("metrics"), names, compiled.get("keras2", False))
        loss_weights = compiled.get("loss_weights")
        if len(names) == 1 and isinstance(loss_weights, list) and len(loss_weights) == 1:
            loss_weights = loss_weights[0]  # Keras takes [w] for one output too
        model.compile(optimizer=optimizer or "rmsprop", loss=loss, loss_weights=loss_weights, metrics=metrics)
    except Exception as exc:  # an optimizer, loss or metric nbnet lacks: the model itself still loads
        import warnings

        warnings.warn(f"{path}: the model loaded, but its compile settings could not be restored ({exc}); "
                      "call model.compile(...) yourself before fit.", stacklevel=3)


def _optimizer_from_keras(optimizer):
    from . import optimizers, schedules

    optimizer = _plain(optimizer)
    if not isinstance(optimizer, dict):
        return optimizer
    config = dict(optimizer["config"])
    config.pop("name", None)
    for key in ("is_legacy_optimizer", "jit_compile"):  # Keras 2 bookkeeping, not settings
        config.pop(key, None)
    if not config.get("decay"):
        config.pop("decay", None)
    if "lr" in config and "learning_rate" not in config:
        config["learning_rate"] = config.pop("lr")
    rate = _plain(config.get("learning_rate"))
    if isinstance(rate, dict):
        config["learning_rate"] = getattr(schedules, rate["class_name"])(**{
            k: v for k, v in rate["config"].items() if k != "name"})
    return optimizers.get(optimizer["class_name"].lower()).__class__(**config)


def _is_object(value):
    """A serialized Keras object ({class_name, config, ...}), not a dict keyed by output."""
    return isinstance(value, dict) and "class_name" in value


def _per_output(value, names, convert):
    """``value`` (one for every output, a list, or a dict by output name) with each entry
    converted by ``convert(entry, output name or None)``."""
    if isinstance(value, dict) and not _is_object(value):
        return {key: convert(item, key) for key, item in value.items()}
    if isinstance(value, list) and len(names) > 1:
        return [convert(item, names[i] if i < len(names) else None) for i, item in enumerate(value)]
    if isinstance(value, list) and len(value) == 1:
        return [convert(value[0], None)]
    return convert(value, None)


# Keras's loss settings nbnet has no argument for, and the values at which leaving them out
# changes nothing (Keras 2 wrote reduction "auto").
_LOSS_NEUTRAL = {"reduction": ("sum_over_batch_size", "auto", None), "label_smoothing": (0, 0.0, None),
                 "axis": (-1, None), "ignore_class": (None,), "dtype": None, "name": None, "fn": None}


# Keras's loss settings nbnet's losses take as arguments (besides from_logits).
_LOSS_SETTINGS = ("delta",)


def _loss_from_keras(value, output):
    """A Keras loss (a name, or a serialized object, Keras 3's or Keras 2's
    LossFunctionWrapper) as nbnet's Loss; one nbnet lacks, or a setting it cannot honour,
    is refused by name."""
    from . import losses

    where = f"output {output!r}: " if output else ""
    if value is None:
        return None
    if not _is_object(value):
        try:
            return losses.get(value)
        except NbnetError:
            raise NbnetError(f"{where}nbnet has no loss {value!r}") from None
    class_name, config = value["class_name"], dict(value.get("config") or {})
    for key, setting in config.items():
        if key == "from_logits" or key in _LOSS_SETTINGS:
            continue
        if key not in _LOSS_NEUTRAL:
            raise NbnetError(f"{where}the loss {class_name} has the setting {key}={setting!r}, which nbnet lacks")
        allowed = _LOSS_NEUTRAL[key]
        if allowed is not None and setting not in allowed:
            raise NbnetError(f"{where}the loss {class_name} with {key}={setting!r} is not supported by nbnet")
    for candidate in (class_name, config.get("fn"), config.get("name")):
        if candidate is None:
            continue
        try:
            resolved = losses.get(candidate)
        except NbnetError:
            continue
        settings = {key: config[key] for key in _LOSS_SETTINGS if key in config and key in resolved.get_config()}
        return losses.get({"name": resolved.name, "from_logits": bool(config.get("from_logits", False)), **settings})
    raise NbnetError(f"{where}nbnet has no loss {class_name} ({config.get('name') or config.get('fn')!r})")


def _metrics_from_keras(value, names, keras2=False):
    """Keras's metrics: a list (one output; Keras 2 nested it: [[...]]), or with several
    outputs a dict by output name or a list with one entry (a metric, or a list of them) per
    output, each metric a name or a serialized object. Keras 2 (``keras2``) applied a flat
    list of metrics to every output."""
    if value is None:
        return None
    if isinstance(value, dict) and not _is_object(value):
        return {key: _metric_list(item) for key, item in value.items()}
    if not isinstance(value, list):
        value = [value]
    if len(names) > 1:
        if any(isinstance(item, list) for item in value) or (not keras2 and len(value) == len(names)):
            return [_metric_list(item) for item in value]  # one entry per output
        if keras2:  # Keras 2 broadcast a flat list: the same metrics on every output
            return [_metric_list(value) for _ in names]
        return value  # Keras 3 refuses any other list; so does compile
    return _metric_list(value)


def _metric_list(value):
    if value is None:
        return []
    if not isinstance(value, list):
        value = [value]
    flat = []
    for item in value:
        if isinstance(item, list):
            flat.extend(_metric_list(item))
        elif item is not None:
            flat.append(_metric_from_keras(item))
    return flat


def _metric_from_keras(item):
    """A metric as nbnet's compile takes it: a name, or a serialized object by nbnet's
    class (Keras 2's MeanMetricWrapper by its function's name)."""
    from . import metrics

    if not _is_object(item):
        return item
    class_name, config = item["class_name"], dict(item.get("config") or {})
    known = getattr(metrics, class_name, None)
    if class_name != "MeanMetricWrapper" and not (isinstance(known, type) and issubclass(known, metrics.Metric)):
        raise NbnetError(f"nbnet has no metric {class_name} ({config.get('name')!r})")
    if class_name == "MeanMetricWrapper":  # Keras 2: a function and a name
        name, fn = config.get("name"), config.get("fn")
        if name in metrics.ACCURACY_NAMES or fn is None:
            return name
        kind = type(metrics.get(fn)).__name__
        return {"class_name": kind, "config": {"name": name}}
    config.pop("dtype", None)
    return {"class_name": class_name, "config": config}


# ------------------------------------------------------------------------------ writing
def save_keras(model, path):
    """Write ``model`` as a Keras 3 ``.keras`` file that ``keras.saving.load_model`` reads."""
    from .weights_file import save_model_weights_to

    config = _keras_config(model)
    weights = io.BytesIO()
    with h5py.File(weights, "w") as h5:
        save_model_weights_to(model, h5)
    metadata = {"keras_version": "3.0.0", "date_saved": None, "saved_by": f"nbnet {__version__}"}
    with atomic_write(path, mode="w+b") as handle:
        with zipfile.ZipFile(handle, "w") as archive:
            archive.writestr(METADATA, json.dumps(metadata))
            archive.writestr(CONFIG, json.dumps(config))
            archive.writestr(WEIGHTS, weights.getvalue())


def save_legacy_h5(model, path):
    """Write ``model`` as a legacy ``.h5`` model file, as Keras 3 still writes (and Keras 2
    and tf.keras wrote): the config in ``model_config``, each layer's weights in a group of
    its name, the layers listed in ``model.layers`` order, Keras's, by which Keras matches them.
    No ``optimizer_weights``: Keras 3.15, loading a functional model's .h5 file that has them,
    builds its optimizer over no variables (``model._trainable_variables``), keeps only the
    step count, and then fails in ``fit`` ("Unknown variable"); without them Keras trains the
    model on with a fresh optimizer. Use .keras to carry the optimizer's state."""
    from .models import Model
    from .weights_file import legacy_weights

    config = _keras_config(model)
    with atomic_write(path, mode="w+b") as handle:
        with h5py.File(handle, "w") as h5:
            h5.attrs["model_config"] = json.dumps({key: config[key] for key in ("class_name", "config")})
            if "compile_config" in config:
                compiled = config["compile_config"]
                h5.attrs["training_config"] = json.dumps({
                    "loss": compiled["loss"], "metrics": compiled["metrics"], "loss_weights": compiled["loss_weights"],
                    "weighted_metrics": None,
                    "optimizer_config": {key: compiled["optimizer"][key] for key in ("class_name", "config")}})
            h5.attrs["keras_version"] = "3.0.0"
            h5.attrs["backend"] = "nbnet"
            weights = h5.create_group("model_weights")
            ordered = model.layers
            weights.attrs["layer_names"] = [layer.name.encode() for layer in ordered]  # Keras's order
            for layer in ordered:
                group = weights.create_group(layer.name)
                pairs = legacy_weights(layer)
                prefix = f"{layer.name}/" if isinstance(layer, Model) else ""
                names = [f"{prefix}{owner.name}/{key}" for owner, key in pairs]  # Keras's variable paths
                group.attrs["weight_names"] = [name.encode() for name in names]
                for name, (owner, key) in zip(names, pairs):
                    group.create_dataset(name, data=np.asarray(owner._weight(key), np.float32))


def _keras_config(model):
    """The model's config.json tree, as Keras 3 writes it."""
    model._require_built()
    config = _keras_model_entry(model)
    if model.loss is not None:
        heads = model._heads
        several = len(heads) > 1
        config["compile_config"] = {
            "optimizer": {"module": "keras.optimizers", "class_name": type(model.optimizer).__name__,
                          "config": _keras_optimizer_config(model.optimizer), "registered_name": None},
            # Several outputs: dicts by output name, as Keras writes compile(loss={...}, ...).
            "loss": {head.name: _keras_loss(head.loss) for head in heads} if several else _keras_loss(heads[0].loss),
            "loss_weights": ({head.name: head.weight for head in heads} if several
                             else None if heads[0].weight == 1.0 else heads[0].weight),
            "metrics": ({head.name: [_keras_metric(m) for m in head.metrics] for head in heads} if several
                        else [_keras_metric(m) for m in heads[0].metrics] or None),
            "weighted_metrics": None,
        }
    return config


def _keras_loss(loss):
    """Its name where Keras reads the name as the same loss, else Keras's serialized object."""
    settings = {key: value for key, value in loss.get_config().items() if key in _LOSS_SETTINGS}
    if loss.from_logits:
        settings["from_logits"] = True
    if not settings or settings == {"delta": 1.0}:
        return loss.name
    return {"module": "keras.losses", "class_name": _LOSS_CLASSES[loss.name], "config": settings,
            "registered_name": None}


def _keras_metric(metric):
    """A metric as Keras's compile takes it: its name where Keras reads that name as the
    same metric ('accuracy', 'mae', ...), else Keras's serialized object of its class."""
    from . import metrics

    try:
        same = type(metrics.get(metric.name)) is type(metric) or metric.name in metrics.ACCURACY_NAMES
    except NbnetError:
        same = False
    if same:
        return metric.name
    return {"module": "keras.metrics", "class_name": type(metric).__name__,
            "config": {**metric.get_config(), "dtype": "float32"}, "registered_name": None}


def _keras_model_entry(model):
    """A model's entry (a whole file's, or a layer's in a functional model), compile aside."""
    from .models import Model, Sequential

    if isinstance(model, Sequential):
        shape = list(model.input_shape)
        layers = [_keras_input_entry(model._input_layer)]
        for layer, node in zip(model.layers, model._nodes):
            layers.append(_keras_layer_entry(layer, node.inputs[0].shape))
        return {"module": "keras", "class_name": "Sequential", "registered_name": None,
                "config": {"name": model.name, "trainable": model.trainable, "layers": layers},
                "build_config": {"input_shape": shape}}

    def layer_entry(layer):
        if isinstance(layer, layers_module.InputLayer):
            return _keras_input_entry(layer)
        if isinstance(layer, Model):  # a model used as a layer
            return _keras_model_entry(layer)
        shapes = layer.built_input_shape
        shape = [[None, *s] for s in shapes] if isinstance(shapes, list) else [None, *shapes]
        return _keras_layer_entry(layer, shape)

    names = [layer.name for layer in model.layers]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise ModelFileError(f"Model '{model.name}' has several layers named {twice}; a Keras file names each layer "
                             "once (give them distinct names).")
    config = functional_config(model, layer_entry)
    config.pop("seed", None)  # nbnet's, not Keras's
    return {"module": "keras.src.models.functional", "class_name": "Functional", "registered_name": "Functional",
            "config": config, "build_config": {"input_shape": None}}


def _keras_input_entry(layer):
    return {"module": "keras.layers", "class_name": "InputLayer", "registered_name": None,
            "config": {"batch_shape": [None, *layer.shape], "dtype": "float32", "sparse": False, "ragged": False,
                       "name": layer.name}}


def _keras_layer_entry(layer, input_shape):
    reason = layer.keras_incompatibility()
    if reason:
        raise ModelFileError(f"Layer '{layer.name}' ({type(layer).__name__}) cannot go into a Keras file: {reason}. "
                             "Save the model as .nbnet, or export it to ONNX.")
    return {"module": "keras.layers", "class_name": type(layer).__name__, "registered_name": None,
            "config": _keras_layer_config(layer), "build_config": {"input_shape": list(input_shape)}}


_LOSS_CLASSES = {"categorical_crossentropy": "CategoricalCrossentropy",
                 "sparse_categorical_crossentropy": "SparseCategoricalCrossentropy",
                 "binary_crossentropy": "BinaryCrossentropy", "mean_squared_error": "MeanSquaredError",
                 "mean_absolute_error": "MeanAbsoluteError", "huber": "Huber",
                 "mean_squared_logarithmic_error": "MeanSquaredLogarithmicError",
                 "mean_absolute_percentage_error": "MeanAbsolutePercentageError"}


def _keras_layer_config(layer):
    config = {**layer.get_config(), "dtype": "float32"}
    config.pop("input_shape", None)
    for key in ("kernel_initializer", "bias_initializer", "depthwise_initializer"):
        if isinstance(config.get(key), dict):
            config[key] = {"module": "keras.initializers", **config[key], "registered_name": None}
    for key in ("kernel_regularizer", "bias_regularizer", "depthwise_regularizer"):
        if isinstance(config.get(key), dict):
            config[key] = {"module": "keras.regularizers", "class_name": "L1L2", "config": config[key],
                           "registered_name": None}
    return config


def _keras_optimizer_config(optimizer):
    config = optimizer.get_config()
    config.pop("name", None)
    rate = config.get("learning_rate")
    if isinstance(rate, dict):
        rate = dict(rate)
        config["learning_rate"] = {"module": "keras.optimizers.schedules", "class_name": rate.pop("name"),
                                   "config": rate, "registered_name": None}
    return config
