"""The .nbnet model file: one zip (NumPy's .npz) of plain arrays, never pickles.

``__nbnet__`` holds UTF-8 JSON: the format version, the architecture, the compile
settings, the optimizer's step count, the training history and the random generator's
state; weights are ``layer.<index>.<name>`` and optimizer slots ``optimizer.<slot>``.
Together they let a loaded model predict identically and continue training exactly as
an uninterrupted run would. Files are written atomically (temp file, fsync, rename).
"""

import json
from pathlib import Path

import numpy as np

from . import __version__, layers as layers_module, losses, metrics, optimizers
from .errors import ModelFileError
from .paths import atomic_write

FORMAT = "nbnet-model"
FORMAT_VERSION = 1
META_KEY = "__nbnet__"


def save_model(model, path):
    """``.keras``: Keras 3's format, ``.h5``: the legacy HDF5 one (Keras loads both;
    optimizer state not kept); any other name: nbnet's own file, which resumes training
    exactly."""
    suffix = Path(path).suffix.lower()
    if suffix == ".keras":
        from .keras_file import save_keras

        return save_keras(model, path)
    if suffix == ".h5":
        from .keras_file import save_legacy_h5

        return save_legacy_h5(model, path)
    if suffix == ".onnx":  # an nbnet archive under that name would look like a corrupt ONNX file
        raise ModelFileError(f"{path}: save writes .nbnet, .keras or .h5 files; for ONNX call "
                             f"nbnet.onnx.export(model, {str(path)!r}) or run `nbnet export MODEL {path}`.")
    model._require_built()
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "nbnet_version": __version__,
        "config": model.get_config(),
        "compile": None if model.loss is None else _compile_config(model),
        "optimizer_iterations": model.optimizer.iterations if model.optimizer else 0,
        "epochs_trained": model.epochs_trained,
        # The epoch a fit restored by BackupAndRestore starts at (only in its backups).
        "backup_epoch": getattr(model, "backup_epoch", None),
        "history": model.history_log,
        "rng_state": model.rng.bit_generator.state,
        "resume_point": model.resume_point,
        "fit_config": model.fit_config,
        # What the data commands know of the model's input: class names, and how an image
        # file becomes its input (size, colour, pixel scale); see nbnet/datasets/sources.py.
        "class_names": getattr(model, "class_names", None),
        "preprocessing": getattr(model, "preprocessing", None),
    }
    arrays = {META_KEY: np.frombuffer(json.dumps(meta).encode(), np.uint8)}
    for index, layer in enumerate(model._weight_layers()):
        for key in layer.weight_order:
            arrays[f"layer.{index}.{key}"] = layer._weight(key)
    if model.optimizer is not None:
        for slot, value in model.optimizer.slots.items():
            arrays[f"optimizer.{slot}"] = value
    with atomic_write(path) as handle:
        np.savez_compressed(handle, **arrays)


def _compile_config(model):
    """compile's arguments as data: one loss and metric list, or with several outputs
    one per output (by name) and their loss weights."""
    heads = model._heads
    if len(heads) == 1:
        return {"optimizer": model.optimizer.get_config(), "loss": heads[0].loss.get_config(),
                "metrics": [metrics.serialize(metric) for metric in heads[0].metrics]}
    return {"optimizer": model.optimizer.get_config(),
            "loss": {head.name: head.loss.get_config() for head in heads},
            "loss_weights": {head.name: head.weight for head in heads},
            "metrics": {head.name: [metrics.serialize(metric) for metric in head.metrics] for head in heads}}


def _compile_from_config(model, compiled):
    loss = compiled["loss"]
    loss = {name: losses.get(item) for name, item in loss.items()} if "loss_weights" in compiled else losses.get(loss)
    model.compile(optimizer=optimizers.get(compiled["optimizer"]), loss=loss,
                  loss_weights=compiled.get("loss_weights"), metrics=compiled["metrics"])


def _read(path):
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"Model file {path} does not exist.")
    try:
        with np.load(path, allow_pickle=False) as archive:
            if META_KEY not in archive.files:
                raise ModelFileError(f"{path} is not an nbnet model file (no {META_KEY} record); "
                                     "nbnet reads files written by model.save or nbnet train.")
            arrays = {name: archive[name] for name in archive.files}
        meta = json.loads(arrays.pop(META_KEY).tobytes().decode())
    except ModelFileError:
        raise
    except Exception as error:  # corrupt bytes surface as zlib, zipfile, struct, JSON... errors
        raise ModelFileError(f"{path} is truncated or corrupt and cannot be read ({type(error).__name__}: {error}). "
                             "Restore it from a checkpoint or train again.") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ModelFileError(f"{path} is not an nbnet model file.")
    version = meta.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ModelFileError(f"{path} has model format {version!r}, written by nbnet {meta.get('nbnet_version')}; this "
                             f"nbnet {__version__} reads formats up to {FORMAT_VERSION}. Upgrade nbnet to load it.")
    return meta, arrays


def model_from_config(config):
    from .models import Model, Sequential

    if "input_layers" in config:
        return Model.from_config(config)
    built = []
    for entry in config["layers"]:
        cls = getattr(layers_module, entry["class_name"], None)
        if not (isinstance(cls, type) and issubclass(cls, layers_module.Layer)):
            raise ModelFileError(f"Unknown layer type {entry['class_name']!r} in the model's architecture.")
        built.append(cls(**entry["config"]))
    model = Sequential(built, name=config.get("name"), seed=config.get("seed"))
    if config.get("input_shape") is not None:
        model.build(config["input_shape"])
    return model


def load_model(path):
    from .keras_file import is_keras_file, is_legacy_h5, load_keras, load_legacy_h5

    if Path(path).suffix.lower() == ".onnx":  # nbnet-written or foreign: see nbnet.onnx.load
        from .onnx import load as load_onnx

        return load_onnx(path)
    if is_keras_file(path):
        return load_keras(path)
    if is_legacy_h5(path):
        return load_legacy_h5(path)
    meta, arrays = _read(path)
    try:
        model = model_from_config(meta["config"])
        weights = [arrays[f"layer.{index}.{key}"] for index, layer in enumerate(model._weight_layers())
                   for key in layer.weight_order]
        model.set_weights(weights)
        if meta.get("compile"):
            compiled = meta["compile"]
            _compile_from_config(model, compiled)
            model.optimizer.iterations = int(meta.get("optimizer_iterations", 0))
            model.optimizer.slots = {key.split(".", 1)[1]: np.array(value, np.float32)
                                     for key, value in arrays.items() if key.startswith("optimizer.")}
        model.epochs_trained = int(meta.get("epochs_trained", 0))
        model.backup_epoch = meta.get("backup_epoch")
        model.history_log = {key: list(values) for key, values in meta.get("history", {}).items()}
        model.resume_point = meta.get("resume_point")
        model.fit_config = meta.get("fit_config")
        model.class_names = meta.get("class_names")
        model.preprocessing = meta.get("preprocessing")
        if meta.get("rng_state"):
            model.rng.bit_generator.state = meta["rng_state"]
    except ModelFileError:
        raise
    except Exception as error:  # a well-formed zip whose contents do not fit together
        raise ModelFileError(f"{path}: the model description is inconsistent with its weights ({error}).") from None
    return model
