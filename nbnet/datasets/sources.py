"""A user's own data for ``nbnet train``, ``evaluate`` and ``predict``, whatever its form:
a folder of class subfolders of images (streamed from disk), an ``.npz`` with
``x_train``/``y_train`` (and ``x_test``/``y_test``), a CSV of a label column and pixel
columns (Kaggle's digit-recognizer layout), a folder of IDX files, or the built-in MNIST
and Fashion-MNIST; plus how a model takes them (shape, channels, pixel scale), recorded in
the model file so ``predict`` converts image files the same way.

Pixels are kept as they are stored (uint8 0..255, or floats in 0..1); ``to_model`` scales
them as the model expects: a model starting with a Rescaling layer takes 0..255, any other
0..1. ``preprocessing(model, data)`` records, as ``input_scale``, the factor that turns a
0..255 pixel into what the model was trained on.
"""

import inspect
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DatasetError
from . import idx
from .image_folder import (ALLOWLIST_FORMATS, COLOR_MODES, ImageFolderDataset, check_interpolation, common_size,
                           image_header, index_directory, load_image, require_pillow, to_layout)

BUILT_IN = ("mnist", "fashion_mnist")
LABEL_COLUMNS = ("label", "labels", "class", "target", "y", "digit")
SPLIT_NAMES = {"train": ("train", "training"), "test": ("test", "testing"),
               "validation": ("val", "valid", "validation")}
_GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}
_CSV_CHUNK = 2000


@dataclass
class Data:
    """Training data and what was inferred about it. Arrays (``x_train``...) hold pixels as
    stored; a folder gives ImageFolderDatasets (``train``, ``validation``, ``test``)."""

    source: str  # what was read, as messages say it
    input_shape: tuple
    num_classes: int
    class_names: list = None
    x_train: np.ndarray = None
    y_train: np.ndarray = None
    x_test: np.ndarray = None
    y_test: np.ndarray = None
    train: ImageFolderDataset = None
    validation: ImageFolderDataset = None
    test: ImageFolderDataset = None
    pixel_range: float = 255.0  # the value of white as stored: 255, 1, or None (not pixels)
    dataset: str = None  # "mnist" or "fashion_mnist"
    path: str = None  # the --data path
    validation_split: float = 0.0  # what fit holds out of the arrays (a folder is split when loaded)
    image_settings: dict = field(default_factory=dict)  # color_mode, interpolation, crop/pad, split_seed
    notes: list = field(default_factory=list)  # lines saying what was inferred

    @property
    def streamed(self):
        return self.train is not None

    @property
    def has_test(self):
        return self.test is not None or self.x_test is not None

    def describe(self):
        return "\n".join([f"Data: {self.source}"] + [f"  {line}" for line in self.notes])


# -- arrays ------------------------------------------------------------------------------
def as_images(x, name):
    """(N, H, W, C) images from (N, H, W), (N, H, W, C) with C 1, 3 or 4, or (N, P) rows of
    a square number of pixels; integer pixels become uint8 (refused outside 0..255)."""
    x = np.asarray(x)
    if x.dtype.kind not in "biuf":
        raise DatasetError(f"{name}: expected numeric pixels, found dtype {x.dtype}.")
    if x.ndim == 2:
        side = math.isqrt(x.shape[1])
        if side * side != x.shape[1]:
            raise DatasetError(f"{name}: rows of {x.shape[1]} values are not square images; expected (N, H, W), "
                               "(N, H, W, C) or (N, side*side).")
        x = x.reshape(len(x), side, side, 1)
    elif x.ndim == 3:
        x = x[..., None]
    elif x.ndim != 4 or x.shape[-1] not in (1, 3, 4):
        raise DatasetError(f"{name}: shape {x.shape} is not images; expected (N, H, W), (N, H, W, C) with C 1, 3 or "
                           "4 channels, or (N, side*side).")
    if len(x) == 0:
        raise DatasetError(f"{name}: holds no images.")
    if x.dtype.kind in "biu":
        low, high = int(x.min()), int(x.max())
        if low < 0 or high > 255:
            raise DatasetError(f"{name}: integer pixels must be 0..255, found {low}..{high}.")
        return x if x.dtype == np.uint8 else x.astype(np.uint8)
    if not np.isfinite(x).all():
        raise DatasetError(f"{name}: holds NaN or infinite values.")
    return x.astype(np.float32, copy=False)


def pixel_range(x):
    """255 for uint8 pixels or floats up to 255, 1 for floats in 0..1, None for other values."""
    if x.dtype == np.uint8:
        return 255.0
    low, high = float(x.min()), float(x.max())
    if low >= 0 and high <= 1:
        return 1.0
    if low >= 0 and high <= 255:
        return 255.0
    return None


def as_labels(y, name, count):
    """int64 class ids from (N,) or (N, 1) integers, or one-hot (N, K) rows."""
    y = np.asarray(y)
    if y.dtype.kind not in "biuf":
        raise DatasetError(f"{name}: expected integer class ids, found dtype {y.dtype}.")
    if y.ndim == 2 and y.shape[1] > 1:
        if not (np.isin(y, (0, 1)).all() and (y.sum(axis=1) == 1).all()):
            raise DatasetError(f"{name}: a 2-D label array must be one-hot rows; shape {y.shape} is not.")
        y = y.argmax(axis=1)
    elif y.ndim == 2:
        y = y[:, 0]
    elif y.ndim != 1:
        raise DatasetError(f"{name}: expected class ids of shape (N,), found shape {y.shape}.")
    if len(y) != count:
        raise DatasetError(f"{name}: {len(y)} labels for {count} images.")
    if y.dtype.kind == "f" and not (np.isfinite(y).all() and (y == np.round(y)).all()):
        raise DatasetError(f"{name}: labels must be whole class ids 0, 1, 2...; found non-integer values.")
    y = y.astype(np.int64)
    if len(y) and y.min() < 0:
        raise DatasetError(f"{name}: class ids must be 0 or more, found {y.min()}.")
    return y


def _class_count(labels, names, source):
    count = max(int(y.max()) + 1 for y in labels if y is not None and len(y))
    present = len(np.unique(np.concatenate([y for y in labels if y is not None])))
    if present < 2:
        raise DatasetError(f"{source}: every label is {int(labels[0][0])}; a classifier needs at least two classes.")
    if names is not None and count > len(names):
        raise DatasetError(f"{source}: labels go up to {count - 1}, but only {len(names)} class names are known.")
    return len(names) if names is not None else count


# -- readers -----------------------------------------------------------------------------
def read_npz(path):
    """``((x_train, y_train), (x_test, y_test) or None)`` from an .npz, as images and
    int64 labels."""
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as error:
        raise DatasetError(f"{path}: not a readable .npz file ({type(error).__name__}: {error}).") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DatasetError(f"{path}: a single array, not an .npz archive of x_train/y_train.")
    with archive:
        keys = set(archive.files)
        missing = [key for key in ("x_train", "y_train") if key not in keys]
        if missing:
            raise DatasetError(f"{path}: no {' and no '.join(missing)} array; expected x_train and y_train (and "
                               f"optionally x_test and y_test), found: {', '.join(sorted(keys)) or 'no arrays'}.")
        if ("x_test" in keys) != ("y_test" in keys):
            raise DatasetError(f"{path}: has {'x_test' if 'x_test' in keys else 'y_test'} without "
                               f"{'y_test' if 'x_test' in keys else 'x_test'}; give both or neither.")
        try:
            arrays = {key: archive[key] for key in ("x_train", "y_train", "x_test", "y_test") if key in keys}
        except Exception as error:  # object arrays (pickles) are refused, corrupt members fail
            raise DatasetError(f"{path}: cannot read its arrays ({type(error).__name__}: {error}).") from None
    x_train = as_images(arrays["x_train"], f"{path}: x_train")
    train = (x_train, as_labels(arrays["y_train"], f"{path}: y_train", len(x_train)))
    test = None
    if "x_test" in arrays:
        x_test = as_images(arrays["x_test"], f"{path}: x_test")
        test = (x_test, as_labels(arrays["y_test"], f"{path}: y_test", len(x_test)))
        if x_test.shape[1:] != x_train.shape[1:]:
            raise DatasetError(f"{path}: x_test's images are {x_test.shape[1:]}, x_train's {x_train.shape[1:]}.")
    return train, test


def read_pixel_csv(path, require_label=True):
    """``(images (N, side, side, 1), labels int64 or None, class_names or None)`` from a CSV
    of a label column and side*side pixel columns (Kaggle's digit recognizer: ``label,
    pixel0, ..., pixel783``; a file without a header row has the label first). Labels may
    be class ids or names (then sorted, as folder names are)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise DatasetError(f"{path}: cannot read it ({error}).") from None
    data = data.removeprefix(b"\xef\xbb\xbf")
    lines = data.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise DatasetError(f"{path}: empty file; expected a header and rows of a label and pixel values.")
    first = [field.strip().strip('"').strip() for field in lines[0].decode("utf-8", "replace").split(",")]
    has_header = not all(_is_number(field) for field in first)
    columns = first if has_header else [f"column {i + 1}" for i in range(len(first))]
    rows = lines[1:] if has_header else lines
    if not rows:
        raise DatasetError(f"{path}: no data rows after the header.")
    lowered = [name.lower() for name in columns]
    label = next((lowered.index(name) for name in LABEL_COLUMNS if name in lowered), None)
    if label is None and not has_header and require_label:
        label = 0
    if label is None and require_label:
        raise DatasetError(f"{path}: no label column; name one of the columns 'label' (found columns: "
                           f"{', '.join(columns[:5])}{', ...' if len(columns) > 5 else ''}).")
    pixels = len(columns) - (label is not None)
    side = math.isqrt(pixels)
    if pixels == 0 or side * side != pixels:
        raise DatasetError(f"{path}: {pixels} pixel columns are not a square image (28x28 needs 784); expected a "
                           "label column and side*side pixel columns.")
    width = len(columns)
    body = [row.replace(b'"', b"") for row in rows]
    for number, row in enumerate(body):
        if row.count(b",") != width - 1:
            line = number + 1 + has_header
            raise DatasetError(f"{path}: line {line} has {row.count(b',') + 1} fields, the header {width}.")
    if label is None:
        label_text, pixel_rows = None, body
    elif label == 0:
        split = [row.split(b",", 1) for row in body]
        label_text, pixel_rows = [part[0] for part in split], [part[1] for part in split]
    elif label == width - 1:
        split = [row.rsplit(b",", 1) for row in body]
        label_text, pixel_rows = [part[1] for part in split], [part[0] for part in split]
    else:
        split = [row.split(b",") for row in body]
        label_text = [fields[label] for fields in split]
        pixel_rows = [b",".join(fields[:label] + fields[label + 1:]) for fields in split]
    values = np.empty((len(pixel_rows), pixels), np.float32)
    for start in range(0, len(pixel_rows), _CSV_CHUNK):
        chunk = pixel_rows[start:start + _CSV_CHUNK]
        parsed = None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", DeprecationWarning)  # numpy's note that it stopped early
                parsed = np.fromstring(b",".join(chunk), dtype=np.float32, sep=",")
        except (ValueError, DeprecationWarning):
            pass
        if parsed is None or parsed.size != len(chunk) * pixels or not np.isfinite(parsed).all():
            raise DatasetError(_bad_csv_value(path, body, start, len(chunk), label, columns, has_header))
        values[start:start + len(chunk)] = parsed.reshape(len(chunk), pixels)
    images = as_images(values.reshape(len(values), side, side, 1), str(path))
    if images.dtype != np.uint8 and (images == np.round(images)).all() and images.min() >= 0 and images.max() <= 255:
        images = images.astype(np.uint8)
    if label_text is None:
        return images, None, None
    texts = [text.strip().decode("utf-8", "replace") for text in label_text]
    if all(_is_int(text) for text in texts):
        return images, as_labels(np.array([int(float(text)) for text in texts]), f"{path}: labels", len(images)), None
    names = sorted(set(texts))
    lookup = {name: i for i, name in enumerate(names)}
    return images, np.array([lookup[text] for text in texts], np.int64), names


def _is_number(text):
    try:
        float(text)
        return True
    except ValueError:
        return False


def _is_int(text):
    try:
        return float(text) == int(float(text))
    except (ValueError, OverflowError):
        return False


def _bad_csv_value(path, body, start, count, label, columns, has_header):
    for number in range(start, start + count):
        for column, text in enumerate(body[number].split(b",")):
            if column == label:
                continue
            value = text.strip().decode("utf-8", "replace")
            if not _is_number(value) or not math.isfinite(float(value)):
                return (f"{path}: line {number + 1 + has_header}, column '{columns[column]}': {value!r} is not a "
                        "number; pixel columns must hold numbers (0..255).")
    return f"{path}: rows {start + 1}..{start + count} could not be read as numbers."


def read_idx_folder(path):
    """``((x_train, y_train), (x_test, y_test) or None)`` from a folder of IDX files: the
    standard MNIST names, or any names with train/test (t10k) and images/labels (idx3/idx1)
    in them, plain or gzipped."""
    directory = Path(path)
    files = [entry for entry in sorted(directory.iterdir()) if entry.is_file() and _looks_idx(entry.name)]
    roles = {}
    for entry in files:
        name = entry.name.lower()
        role = "train" if "train" in name else "test" if ("t10k" in name or "test" in name) else None
        kind = "images" if ("images" in name or "idx3" in name) else "labels" if ("labels" in name or "idx1" in name) \
            else None
        if role and kind:
            roles.setdefault((role, kind), []).append(entry)
    for key, entries in roles.items():
        if len(entries) > 1:
            raise DatasetError(f"{directory}: several {key[0]} {key[1]} files ({', '.join(e.name for e in entries)}); "
                               "keep one.")
    if ("train", "images") not in roles or ("train", "labels") not in roles:
        missing = [kind for kind in ("images", "labels") if ("train", kind) not in roles]
        raise DatasetError(f"{directory}: no training {' or '.join(missing)} IDX file (expected names like "
                           f"{idx.STANDARD_FILES[0]} and {idx.STANDARD_FILES[1]}, maybe .gz).")
    parts = []
    for role in ("train", "test"):
        if (role, "images") not in roles and (role, "labels") not in roles:
            parts.append(None)
            continue
        if (role, "images") not in roles or (role, "labels") not in roles:
            raise DatasetError(f"{directory}: a {role} {'labels' if (role, 'labels') in roles else 'images'} file "
                               "without its partner; give both or neither.")
        images_file, labels_file = roles[(role, "images")][0], roles[(role, "labels")][0]
        x = as_images(idx.read_idx(images_file), str(images_file))
        parts.append((x, as_labels(idx.read_idx(labels_file), str(labels_file), len(x))))
    return parts[0], parts[1]


def _looks_idx(name):
    name = name.lower().removesuffix(".gz")
    return "idx" in name or name.endswith("-ubyte")


def _split_folders(directory):
    """{"train": path, "test": path, "validation": path} for a folder holding train/ and
    test/ (or training/, testing/, val/) folders of class folders; {} otherwise."""
    found = {}
    for entry in sorted(Path(directory).iterdir()):
        for role, names in SPLIT_NAMES.items():
            if entry.is_dir() and entry.name.lower() in names and role not in found:
                found[role] = entry
    return found if "train" in found and ("test" in found or "validation" in found) else {}


def kind_of(path):
    """'folder', 'npz', 'csv', 'idx' or 'npy' for a data path, or a DatasetError."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path}: no such file or folder.")
    if path.is_dir():
        if any(entry.is_file() and _looks_idx(entry.name) for entry in path.iterdir()):
            return "idx"
        return "folder"
    suffix = path.suffix.lower()
    if suffix in (".npz", ".csv", ".npy"):
        return suffix[1:]
    if suffix in ALLOWLIST_FORMATS:
        return "image"
    if _looks_idx(path.name):
        return "idx"
    raise DatasetError(f"{path}: unknown kind of data; give a folder of class folders of images, an .npz with "
                       "x_train/y_train, a CSV with a label column and pixel columns, or a folder of IDX files.")


# -- training data -----------------------------------------------------------------------
def load_training(data=None, dataset=None, data_dir=None, *, image_size=None, color_mode=None,
                  validation_split=0.0, seed=None, batch_size=32, model=None, verbose=True):
    """The training (and test) data for ``nbnet train``: ``data`` a path, or ``dataset`` a
    built-in set's name, or neither for MNIST. ``model``: a model being resumed, whose
    recorded image settings (size, colour, split seed) are used for a folder."""
    if data is not None and dataset is not None:
        raise DatasetError("Give --data PATH or --dataset NAME, not both.")
    recorded = (getattr(model, "preprocessing", None) or {}) if model is not None else {}
    validation_split = validation_split or recorded.get("validation_split") or 0.0  # resuming: split as before
    if data is None and dataset is None and recorded.get("data"):  # resuming: the data it was trained on
        data = recorded["data"]
        if not Path(data).exists():
            raise DatasetError(f"the model was trained on {data}, which is gone; give --data PATH to train on.")
    if data is None:
        loaded = _built_in(dataset or recorded.get("dataset") or "mnist", data_dir, verbose)
        loaded.validation_split = validation_split
        return loaded
    loaded = _load_path(data, image_size, color_mode, validation_split, seed, batch_size, model)
    loaded.path = str(Path(data).resolve())
    if validation_split and not loaded.streamed:  # fit holds out the last samples, as Keras
        loaded.validation_split = validation_split
        held = len(loaded.x_train) - int(len(loaded.x_train) * (1.0 - validation_split))
        loaded.notes.insert(1, f"the last {held} training images held out for validation (--validation-split "
                               f"{validation_split})")
    return loaded


def _load_path(data, image_size, color_mode, validation_split, seed, batch_size, model):
    kind = kind_of(data)
    if kind == "folder":
        return _folder(Path(data), image_size, color_mode, validation_split, seed, batch_size, model)
    if kind == "npz":
        train, test = read_npz(data)
        source = f"{data} (x_train/y_train{', x_test/y_test' if test else ''})"
        return _from_arrays(source, train, test, None)
    if kind == "csv":
        x, y, names = read_pixel_csv(data)
        return _from_arrays(f"{data} (CSV: a label column and {x.shape[1]}x{x.shape[2]} pixel columns)", (x, y), None,
                            names)
    if kind == "idx":
        train, test = read_idx_folder(data)
        return _from_arrays(f"{data} (IDX files)", train, test, None)
    raise DatasetError(f"{data}: a single {kind} file is not training data; give a folder of class folders of "
                       "images, an .npz with x_train/y_train, a CSV or a folder of IDX files.")


def _built_in(name, data_dir, verbose):
    from . import fashion_mnist, mnist

    if name not in BUILT_IN:
        raise DatasetError(f"Unknown dataset {name!r}: use one of {', '.join(BUILT_IN)}.")
    module = mnist if name == "mnist" else fashion_mnist
    (x_train, y_train), (x_test, y_test) = module.load_data(data_dir=data_dir, verbose=verbose)
    names = list(fashion_mnist.CLASS_NAMES) if name == "fashion_mnist" else None
    data = _from_arrays(f"{'MNIST' if name == 'mnist' else 'Fashion-MNIST'} (built in)",
                        (x_train[..., None], y_train.astype(np.int64)), (x_test[..., None], y_test.astype(np.int64)),
                        names)
    data.dataset = name
    return data


def _from_arrays(source, train, test, names):
    x_train, y_train = train
    x_test, y_test = test if test else (None, None)
    num_classes = _class_count([y_train, y_test], names, source)
    scale = pixel_range(x_train)
    data = Data(source, tuple(x_train.shape[1:]), num_classes, names, x_train, y_train, x_test, y_test,
                pixel_range=scale)
    h, w, c = data.input_shape
    low, high = float(x_train.min()), float(x_train.max())
    kind = "uint8 0..255" if x_train.dtype == np.uint8 else {255.0: "floats 0..255", 1.0: "floats 0..1"}.get(
        scale, f"floats {low:.3g}..{high:.3g}, not pixels: given to the model as they are")
    data.notes.append(f"{len(x_train)} training images {h}x{w}x{c} ({kind}), {num_classes} classes "
                      + (f"({_names_text(names)})" if names else f"(labels 0..{num_classes - 1})"))
    data.notes.append(f"test set: {len(x_test)} images" if test else "no test set in the data")
    return data


def _names_text(names, limit=10):
    return ", ".join(names[:limit]) + (", ..." if len(names) > limit else "")


def _folder(directory, image_size, color_mode, validation_split, seed, batch_size, model):
    require_pillow()
    recorded = (getattr(model, "preprocessing", None) or {}) if model is not None else {}
    splits = _split_folders(directory)
    train_dir = splits.get("train", directory)
    paths, labels, names = index_directory(train_dir, shuffle=False, verbose=False)
    if len(names) < 2:
        raise DatasetError(f"{train_dir}: found {len(names)} class folder ({', '.join(names)}); a classifier needs "
                           "at least two, one folder of images per class.")
    if model is not None:  # resuming: the images as the model takes them
        (h, w, c), _ = image_shape(model)
        image_size, color_mode = (h, w), recorded.get("color_mode") or _color_mode_for(c)
    inferred = []
    if image_size is None or color_mode is None:
        headers = [image_header(path) for path in paths]
        if color_mode is None:
            color_mode = "grayscale" if all(mode in _GRAY_MODES for _, _, mode in headers) else "rgb"
            inferred.append("colour")
        if image_size is None:
            image_size = common_size(paths, train_dir)
            inferred.append("size")
    if color_mode not in COLOR_MODES:
        raise DatasetError(f"color mode must be one of {', '.join(COLOR_MODES)}, received {color_mode!r}.")
    interpolation = check_interpolation(recorded.get("interpolation", "bilinear"))
    batch_size = batch_size or recorded.get("batch_size") or 32  # a resumed stream's fit_config has none
    split_seed = recorded.get("split_seed")
    if split_seed is None:
        split_seed = int(seed) if seed is not None else int(np.random.randint(1e6))
    settings = dict(class_names=names, color_mode=color_mode, image_size=tuple(image_size),
                    interpolation=interpolation, batch_size=batch_size)
    rng_paths, rng_labels, _ = index_directory(train_dir, class_names=names, shuffle=True, seed=split_seed,
                                               verbose=False)
    validation = None
    if validation_split and "validation" in splits:
        raise DatasetError(f"{directory} has a {splits['validation'].name}/ folder; leave --validation-split out.")
    if validation_split:
        from .image_folder import split

        train_part = split(rng_paths, rng_labels, validation_split, "training", train_dir, verbose=False)
        val_part = split(rng_paths, rng_labels, validation_split, "validation", train_dir, verbose=False)
        train = ImageFolderDataset(*train_part, shuffle=True, seed=split_seed, **settings)
        validation = ImageFolderDataset(*val_part, shuffle=False, **settings)
    else:
        train = ImageFolderDataset(rng_paths, rng_labels, shuffle=True, seed=split_seed, **settings)
    if "validation" in splits:
        validation = folder_dataset(splits["validation"], names, settings)
    test = folder_dataset(splits["test"], names, settings) if "test" in splits else None
    h, w = image_size
    source = f"{directory} (a folder of class folders" + (", in " + " and ".join(
        f"{splits[role].name}/" for role in ("train", "validation", "test") if role in splits) if splits else "") + ")"
    data = Data(source, (h, w, COLOR_MODES[color_mode]), len(names), names, train=train, validation=validation,
                test=test, pixel_range=255.0)
    data.image_settings = {"color_mode": color_mode, "interpolation": interpolation, "split_seed": split_seed,
                           "batch_size": batch_size, "validation_split": validation_split}
    options = " and ".join(option for option, key in (("--image-size", "size"), ("--color-mode", "colour"))
                           if key in inferred)
    how = f" (inferred from the files; {options} to change)" if inferred else ""
    data.notes.append(f"{len(paths)} images, {len(names)} classes ({_names_text(names)}), {h}x{w} {color_mode}{how}")
    if validation_split:
        data.notes.append(f"{len(train.file_paths)} for training, {len(validation.file_paths)} for validation "
                          f"(--validation-split {validation_split}, split seed {split_seed})")
    elif validation is not None:
        data.notes.append(f"validation set: {len(validation.file_paths)} images in {splits['validation']}")
    data.notes.append(f"test set: {len(test.file_paths)} images in {splits['test']}" if test is not None
                      else "no test set (a test/ folder beside train/ would be one)")
    return data


def _color_mode_for(channels):
    modes = {count: mode for mode, count in COLOR_MODES.items()}
    if channels not in modes:
        raise DatasetError(f"the model takes {channels} channels; images give 1 (grayscale), 3 (rgb) or 4 (rgba).")
    return modes[channels]


def folder_dataset(directory, class_names, settings, shuffle=False):
    """A dataset of a folder of class folders whose labels are the indices of their names
    in ``class_names`` (those of the training data or the model); a class folder that is
    not among them is refused."""
    paths, labels, names = index_directory(directory, shuffle=False, verbose=False)
    if class_names is None:  # a model without names: numbered folders are class ids
        if not all(name.isdigit() for name in names):
            raise DatasetError(f"{directory}: the model records no class names, so its class folders must be "
                               f"numbered 0, 1, 2...; found {_names_text(names)}.")
        lookup = {name: int(name) for name in names}
        class_names = None
    else:
        unknown = [name for name in names if name not in class_names]
        if unknown:
            raise DatasetError(f"{directory}: class folder(s) {', '.join(unknown)} are not among the classes it is "
                               f"judged by ({_names_text(list(class_names), 20)}).")
        lookup = {name: class_names.index(name) for name in names}
    ids = np.array([lookup[names[label]] for label in labels], np.int32)
    return ImageFolderDataset(paths, ids, **dict(settings, class_names=class_names), shuffle=shuffle)


# -- models ------------------------------------------------------------------------------
def build_model(definition, data, **kwargs):
    """``definition.build(**kwargs)``, given the data's ``input_shape`` and
    ``num_classes`` where its build takes them."""
    parameters = inspect.signature(definition.build).parameters
    open_ended = any(p.kind == inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    for name, value in (("input_shape", tuple(data.input_shape)), ("num_classes", data.num_classes)):
        if name in parameters or open_ended:
            kwargs[name] = value
    return definition.build(**kwargs)


def _single_input_shape(model):
    shapes = model._input_shapes()
    if len(shapes) != 1:
        raise DatasetError(f"model '{model.name}' has several inputs; nbnet's data commands feed one input of images.")
    return tuple(shapes[0])


def image_shape(model):
    """``((height, width, channels), layout)``: the images a model takes, and how: layout
    None for (H, W, C), "channels_first" for (C, H, W) (a model imported from ONNX may take
    that), "flat" for rows of H*W*C values (square grayscale unless recorded otherwise)."""
    shape = _single_input_shape(model)
    if len(shape) == 3 and shape[-1] not in (1, 3, 4) and shape[0] in (1, 3, 4):
        return (shape[1], shape[2], shape[0]), "channels_first"
    if len(shape) == 3:
        return shape, None
    recorded = getattr(model, "preprocessing", None) or {}
    if len(shape) == 1 and recorded.get("image_size"):
        h, w = recorded["image_size"]
        channels = COLOR_MODES.get(recorded.get("color_mode"), 1)
        if h * w * channels == shape[0]:
            return (h, w, channels), "flat"
    if len(shape) == 1 and math.isqrt(shape[0]) ** 2 == shape[0]:
        return (math.isqrt(shape[0]), math.isqrt(shape[0]), 1), "flat"
    raise DatasetError(f"model '{model.name}' takes inputs of shape {shape}, not images (height, width, channels).")


def output_width(model):
    return int(np.prod(model._output_tensors[0].sample_shape))


def check_model(model, data):
    """Refuse data the model cannot take: another image shape, or labels past its outputs."""
    shape, _ = image_shape(model)
    if tuple(data.input_shape) != shape:
        raise DatasetError(f"model '{model.name}' takes inputs of shape {shape}, the data are images of shape "
                           f"{tuple(data.input_shape)}. Use --model small_cnn (any image size and channel count), or "
                           "a definition whose build(...) takes input_shape and num_classes.")
    width = output_width(model)
    if data.num_classes > width:
        raise DatasetError(f"the data's labels go up to {data.num_classes - 1} ({data.num_classes} classes), but model "
                           f"'{model.name}' has {width} outputs: labels must be 0..{width - 1} for it.")


def has_rescaling(model):
    from ..layers import InputLayer, Rescaling

    first = next((layer for layer in model.layers if not isinstance(layer, InputLayer)), None)
    return isinstance(first, Rescaling)


def input_scale(model, data_range=255.0):
    """The factor from a 0..255 pixel to what ``model`` is fed, for data whose white is
    ``data_range``: the factor recorded with the model (when it was trained, or given as
    ``--input-scale``), else 1 for a model starting with Rescaling fed 0..255, else 1/255."""
    if data_range is None:
        return None
    recorded = (getattr(model, "preprocessing", None) or {}).get("input_scale")
    if recorded is not None:
        return float(recorded)
    return 1.0 if (data_range == 255.0 and has_rescaling(model)) else 1.0 / 255.0


def to_model(x, model, data_range=255.0):
    """Stored (N, H, W, C) pixels as the model takes them (``input_scale``): 0..255 pixels
    kept (uint8 stays uint8) for a model that starts with Rescaling, else scaled to 0..1
    float32; 0..1 floats as they are; (N, C, H, W) for a model that takes that layout."""
    if data_range is not None:
        factor = input_scale(model, data_range) * (255.0 / data_range)
        if abs(factor - 1.0) > 1e-12:
            x = x * np.float32(factor)
    return to_layout(x, image_shape(model)[1])


def _stream_for(model, dataset):
    scale = input_scale(model)
    scale = None if scale == 1.0 else scale
    layout = image_shape(model)[1]
    return dataset.with_scale(scale, layout) if (scale or layout) else dataset


def fit_arguments(model, data):
    """fit's x, y and validation_data for the data, converted for the model."""
    if data.streamed:
        train = _stream_for(model, data.train)
        train.epoch = model.epochs_trained  # a resumed run continues the datasets' epoch orders
        validation = None if data.validation is None else _stream_for(model, data.validation)
        return {"x": train, "validation_data": validation}
    return {"x": to_model(data.x_train, model, data.pixel_range), "y": data.y_train}


def test_arguments(model, data):
    """evaluate's x and y for the data's test set, or None."""
    if data.test is not None:
        return {"x": _stream_for(model, data.test)}
    if data.x_test is not None:
        return {"x": to_model(data.x_test, model, data.pixel_range), "y": data.y_test}
    return None


def preprocessing(model, data):
    """What the model file records about its input: how to turn an image file into it."""
    (h, w, c), _ = image_shape(model)
    record = {"image_size": [int(h), int(w)], "color_mode": data.image_settings.get("color_mode") or
              _color_mode_for(c), "interpolation": data.image_settings.get("interpolation", "bilinear"),
              "input_scale": input_scale(model, data.pixel_range), "dataset": data.dataset, "data": data.path,
              "validation_split": data.validation_split or data.image_settings.get("validation_split") or 0.0}
    for key in ("split_seed", "batch_size"):  # a folder's: resuming splits and batches it as before
        if data.image_settings.get(key) is not None:
            record[key] = data.image_settings[key]
    return record


def model_settings(model):
    """How image files become this model's input: the recorded preprocessing, else what
    its input shape and first layer say (size, channels; 0..255 for a model starting with
    Rescaling, else 0..1)."""
    (h, w, c), layout = image_shape(model)
    recorded = dict(getattr(model, "preprocessing", None) or {})
    settings = {"image_size": (h, w), "color_mode": _color_mode_for(c), "interpolation": "bilinear",
                "input_scale": input_scale(model), "layout": layout}
    settings.update({key: recorded[key] for key in ("color_mode", "interpolation", "input_scale") if key in recorded})
    return settings


# -- evaluation --------------------------------------------------------------------------
@dataclass
class EvaluationData:
    """A labelled test set converted for a model: arrays ``x``/``y``, or a ``dataset``."""

    source: str
    y: np.ndarray
    class_names: list = None
    x: np.ndarray = None
    dataset: ImageFolderDataset = None
    display: np.ndarray = None  # the images as stored, for pictures (arrays only)

    def images(self, indices):
        """Images to show, 0..255 or 0..1, for these test indices."""
        if self.display is not None:
            return self.display[indices]
        settings = self.dataset
        return np.stack([load_image(settings.file_paths[i], settings.color_mode, settings.image_size,
                                    settings.interpolation) for i in indices]) if len(indices) else np.empty((0,))


def load_test(model, data=None, dataset=None, data_dir=None, batch_size=1000, verbose=False):
    """The labelled test set ``nbnet evaluate`` uses: ``data``'s (an .npz's x_test/y_test,
    a CSV's rows, an IDX folder's test files, a folder's test/ folder or all its images),
    or a built-in set's (``dataset``, else the one the model was trained on, else MNIST)."""
    class_names = getattr(model, "class_names", None)
    if data is None:
        name = dataset or (getattr(model, "preprocessing", None) or {}).get("dataset") or "mnist"
        built = _built_in(name, data_dir, verbose)
        x, y, source, names = built.x_test, built.y_test, built.source, built.class_names
        class_names = class_names or names
    else:
        kind = kind_of(data)
        if kind == "folder":
            splits = _split_folders(data)
            folder = splits.get("test", data)
            settings = model_settings(model)
            stream = folder_dataset(folder, class_names, dict(
                color_mode=settings["color_mode"], image_size=settings["image_size"],
                interpolation=settings["interpolation"], batch_size=batch_size))
            scale = settings["input_scale"]
            if scale is None:
                raise DatasetError(_no_scale(model))
            stream = stream.with_scale(None if scale == 1.0 else scale, settings["layout"])
            _check_labels(model, stream.labels, str(folder))
            return EvaluationData(str(folder), stream.labels.astype(np.int64), class_names, dataset=stream)
        if kind == "npz":
            _, test = read_npz(data)
            if test is None:
                raise DatasetError(f"{data}: no x_test/y_test arrays to evaluate on.")
            (x, y), source = test, f"{data} (x_test/y_test)"
        elif kind == "csv":
            x, y, names = read_pixel_csv(data)
            source = str(data)
            if names is not None:
                y = _map_names(names, y, class_names, data)
        elif kind == "idx":
            _, test = read_idx_folder(data)
            if test is None:
                raise DatasetError(f"{data}: no test images/labels IDX files (t10k-images-idx3-ubyte, "
                                   "t10k-labels-idx1-ubyte) to evaluate on.")
            (x, y), source = test, f"{data} (IDX test files)"
        else:
            raise DatasetError(f"{data}: nbnet evaluate takes a folder of class folders, an .npz with x_test/y_test, "
                               "a CSV with labels or a folder of IDX files.")
    settings = model_settings(model)
    shape = tuple(settings["image_size"]) + (COLOR_MODES[settings["color_mode"]],)
    if tuple(x.shape[1:]) != shape:
        raise DatasetError(f"{source}: images of shape {tuple(x.shape[1:])}, but model '{model.name}' takes {shape}.")
    _check_labels(model, y, source)
    return EvaluationData(source, y, class_names, x=convert(x, pixel_range(x), settings), display=x)


def convert(x, data_range, settings):
    """(N, H, W, C) data whose white is ``data_range`` as a model with these settings
    (``model_settings``) was trained: scaled by its ``input_scale`` per 0..255 pixel (uint8
    kept when that is 1), laid out channels first when it takes them so."""
    scale = settings["input_scale"]
    if scale is not None and data_range is not None:
        factor = scale * (255.0 / data_range)
        if abs(factor - 1.0) > 1e-12:
            x = x * np.float32(factor)
    elif scale is None and data_range is not None:
        raise DatasetError("the model was trained on values that are not pixels (0..255 or 0..1); these data are "
                           "pixels, so nbnet cannot tell how to convert them.")
    return to_layout(x, settings.get("layout"))


def _map_names(names, y, class_names, source):
    if class_names is None:
        raise DatasetError(f"{source}: labels are names ({_names_text(names)}) but the model records no class names.")
    unknown = [name for name in names if name not in class_names]
    if unknown:
        raise DatasetError(f"{source}: labels {', '.join(unknown)} are not among the model's classes.")
    return np.array([class_names.index(names[i]) for i in y], np.int64)


def _check_labels(model, y, source):
    width = max(output_width(model), 2)  # one sigmoid output: classes 0 and 1
    if len(y) and int(y.max()) >= width:
        raise DatasetError(f"{source}: labels go up to {int(y.max())}, but model '{model.name}' has {width} outputs "
                           f"(classes 0..{width - 1}).")


def _no_scale(model):
    return (f"model '{model.name}' was trained on values that are not pixels (0..255 or 0..1), so nbnet cannot tell "
            "how to turn image files into its input; give it arrays of model input (.npy) instead.")


# -- prediction inputs -------------------------------------------------------------------
def image_files(folder):
    """The image files under a folder, sorted, as Keras walks it."""
    found = []
    for root, _, files in sorted(os.walk(folder), key=lambda entry: entry[0]):
        found += [os.path.join(root, name) for name in sorted(files) if name.lower().endswith(ALLOWLIST_FORMATS)]
    return found


def predict_inputs(paths, model, invert=False, scale=True):
    """``(names, x)``: one name per image (the file's path, or ``FILE[i]`` for an array's
    i-th image) and the model input for all of them. Image files are decoded, converted
    to the model's channels and resized to its size as recorded at training (else as its
    input shape says), inverted when ``invert`` (255 - pixel, for dark digits on light
    paper), then scaled as it was trained; uint8 arrays are scaled likewise (unless not
    ``scale``), float arrays are given as they are."""
    settings = model_settings(model)
    h, w = settings["image_size"]
    channels = COLOR_MODES[settings["color_mode"]]
    shape = (h, w, channels)
    first = settings["layout"] == "channels_first"
    layout = lambda x: to_layout(x, settings["layout"])  # noqa: E731
    names, parts = [], []
    for path in paths:
        suffix = Path(path).suffix.lower()
        kind = ("folder" if Path(path).is_dir() else "image" if suffix in ALLOWLIST_FORMATS
                else suffix[1:] if suffix in (".npy", ".npz", ".csv") else "idx")  # anything else is read as IDX
        if kind in ("folder", "image"):
            files = image_files(path) if kind == "folder" else [str(path)]
            if not files:
                raise DatasetError(f"{path}: no image files ({', '.join(ALLOWLIST_FORMATS)}) in it.")
            if settings["input_scale"] is None:
                raise DatasetError(_no_scale(model))
            images = np.stack([load_image(file, settings["color_mode"], (h, w), settings["interpolation"])
                               for file in files])
            if invert:
                images = 255.0 - images
            if scale and settings["input_scale"] != 1.0:
                images *= np.float32(settings["input_scale"])
            names += files
            parts.append(layout(images))
            continue
        if kind == "npy":
            try:
                array = np.load(path, allow_pickle=False)
            except Exception as error:
                raise DatasetError(f"{path}: not a readable .npy file ({type(error).__name__}: {error}).") from None
        elif kind == "npz":
            array = _npz_inputs(path)
        elif kind == "csv":
            array = read_pixel_csv(path, require_label=False)[0]
        else:
            array = idx.read_idx(path)
        array = np.asarray(array)
        if first and array.ndim == 4 and array.shape[1:] == (channels, h, w):  # already as the model takes it
            array, layout_of_part = array, (lambda x: x)
        else:
            layout_of_part = layout
        array = _array_images(array, (channels, h, w) if layout_of_part is not layout else shape, path)
        if invert:
            array = (255 - array) if array.dtype == np.uint8 else (
                (1.0 - array) if array.size and array.max() <= 1.0 else 255.0 - array)
        if scale and array.dtype == np.uint8 and settings["input_scale"] not in (None, 1.0):
            array = array * np.float32(settings["input_scale"])
        names += [f"{path}[{i}]" for i in range(len(array))]
        parts.append(layout_of_part(array))
    if len(parts) == 1:
        return names, parts[0]
    dtype = np.uint8 if all(part.dtype == np.uint8 for part in parts) else np.float32
    return names, np.concatenate([part.astype(dtype, copy=False) for part in parts])


def _npz_inputs(path):
    try:
        with np.load(path, allow_pickle=False) as archive:
            keys = archive.files
            key = next((k for k in ("x_test", "x", "images", "x_train") if k in keys), keys[0] if len(keys) == 1
                       else None)
            if key is None:
                raise DatasetError(f"{path}: which array to predict on? Expected x_test, x or images, found "
                                   f"{', '.join(keys) or 'none'}.")
            return archive[key]
    except DatasetError:
        raise
    except Exception as error:
        raise DatasetError(f"{path}: not a readable .npz file ({type(error).__name__}: {error}).") from None


def _array_images(array, shape, path):
    if array.dtype.kind not in "biuf":
        raise DatasetError(f"{path}: expected numeric images, found dtype {array.dtype}.")
    if array.shape == shape or (shape[-1] == 1 and array.shape == shape[:2]):
        array = array.reshape((1,) + shape)
    elif array.ndim == 3 and shape[-1] == 1 and array.shape[1:] == shape[:2]:
        array = array[..., None]
    elif array.ndim == 2 and array.shape[1] == int(np.prod(shape)):
        array = array.reshape((len(array),) + shape)
    if array.shape[1:] != shape:
        raise DatasetError(f"{path}: images of shape {array.shape[1:] if array.ndim > 1 else array.shape}, but the "
                           f"model takes {shape}" + (" (image files are resized; arrays are not)" if array.ndim > 2
                                                     else "") + ".")
    if array.dtype.kind in "biu":
        if array.size and (array.min() < 0 or array.max() > 255):
            raise DatasetError(f"{path}: integer pixels must be 0..255.")
        return array.astype(np.uint8, copy=False)
    return array.astype(np.float32, copy=False)


# -- prediction outputs ------------------------------------------------------------------
def prediction_rows(names, probabilities, class_names=None):
    """One dict per input: its name, the class (id and name), its probability, and every
    class's probability."""
    probabilities = as_probabilities(probabilities)
    classes = probabilities.argmax(axis=1)
    return [{"input": name, "class": int(c),
             "class_name": str(class_names[c]) if class_names and c < len(class_names) else str(int(c)),
             "probability": float(p[c]), "probabilities": [float(v) for v in p]}
            for name, c, p in zip(names, classes, probabilities)]


def as_probabilities(outputs):
    """Per-class probabilities from a model's outputs: as they are when each row is a
    distribution, a softmax of logits otherwise, (1 - p, p) for one sigmoid output."""
    outputs = np.asarray(outputs, np.float64).reshape(len(outputs), -1)
    if outputs.shape[1] == 1:
        if outputs.size and (outputs.min() < 0 or outputs.max() > 1):
            outputs = 1.0 / (1.0 + np.exp(-outputs))
        return np.concatenate([1.0 - outputs, outputs], axis=1)
    if outputs.size and (outputs.min() < 0 or not np.allclose(outputs.sum(axis=1), 1.0, atol=1e-3)):
        shifted = np.exp(outputs - outputs.max(axis=1, keepdims=True))
        return shifted / shifted.sum(axis=1, keepdims=True)
    return outputs


def prediction_lines(rows):
    """Aligned lines: input, class (its name when known), probability."""
    if not rows:
        return []
    width = max(len(row["input"]) for row in rows)
    name_width = max(len(row["class_name"]) for row in rows)
    return [f"{row['input']:<{width}}  {row['class_name']:<{name_width}}  {row['probability']:.4f}" for row in rows]


def write_predictions(path, rows, probabilities, class_names=None):
    """``.csv``: a row per input (input, class, class_name, probability, then one column per
    class); ``.json``: the rows as a list, with the class names; ``.npy``: the probabilities."""
    import csv
    import io
    import json

    from ..paths import atomic_write

    suffix = Path(path).suffix.lower()
    if suffix == ".npy":
        with atomic_write(path) as handle:
            np.save(handle, probabilities)
        return
    if suffix == ".json":
        text = json.dumps({"class_names": list(class_names) if class_names else None, "predictions": rows}, indent=1)
    elif suffix == ".csv":
        count = len(rows[0]["probabilities"]) if rows else 0
        columns = [f"p_{class_names[i]}" if class_names and i < len(class_names) else f"p_{i}" for i in range(count)]
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["input", "class", "class_name", "probability"] + columns)
        for row in rows:
            writer.writerow([row["input"], row["class"], row["class_name"], f"{row['probability']:.6g}"]
                            + [f"{p:.6g}" for p in row["probabilities"]])
        text = buffer.getvalue()
    else:
        raise DatasetError(f"--output {path}: write .csv, .json or .npy.")
    with atomic_write(path) as handle:
        handle.write(text.encode())
