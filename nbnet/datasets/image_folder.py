"""Keras's ``image_dataset_from_directory``: a folder of class subfolders of images as a
dataset that ``fit``, ``evaluate`` and ``predict`` take directly (a ``PyDataset``).

As Keras 3 makes it: class names are the sorted subfolder names (or ``class_names`` in
the order given); the file list is every ``.bmp .gif .jpeg .jpg .png`` file under each
class folder (``os.walk`` order, sorted), shuffled once with ``seed`` (NumPy's
``RandomState``, as Keras) before the validation split takes its last
``int(validation_split * n)`` files; images are decoded by Pillow (converted to L, RGB or
RGBA as Keras's Pillow path does), resized to ``image_size`` without antialiasing
(half-pixel centres, as ``keras.ops.image.resize``), and given as float32 0..255, not
scaled. Labels: int32 ids, one-hot float32 rows, or float32 0/1 of shape (n, 1).

Differences: the batch order inside an epoch is nbnet's own (the first epoch reads the
files in ``file_paths`` order, later epochs in a permutation drawn from ``seed`` and the
epoch number), since Keras's comes from tf.data's shuffle buffer; ``image_size=None``
keeps the images' own size, which must then be the same for all. An unreadable or
truncated image file is refused (a ``DatasetError`` naming it) when it is read, as Keras
fails on it; a file that is not an image at all is named as soon as its header is read.
"""

import os

import numpy as np

from ..errors import DatasetError
from ..feeding import PyDataset

ALLOWLIST_FORMATS = (".bmp", ".gif", ".jpeg", ".jpg", ".png")
COLOR_MODES = {"grayscale": 1, "rgb": 3, "rgba": 4}
INTERPOLATIONS = ("bilinear", "nearest", "bicubic", "lanczos3", "lanczos5")
_KERAS_ONLY_INTERPOLATIONS = ("area", "gaussian", "mitchellcubic")  # TensorFlow's own


class ImageDatasetError(DatasetError, ValueError):
    """Bad arguments or files for an image dataset (a ValueError too, as Keras raises)."""


def require_pillow():
    """PIL.Image, or an error naming the extra that installs it."""
    try:
        from PIL import Image
    except ImportError:
        raise DatasetError("Reading image files needs Pillow: pip install 'nbnet[images]' "
                           "(or pip install Pillow).") from None
    return Image


def image_dataset_from_directory(directory, labels="inferred", label_mode="int", class_names=None, color_mode="rgb",
                                 batch_size=32, image_size=(256, 256), shuffle=True, seed=None, validation_split=None,
                                 subset=None, interpolation="bilinear", follow_links=False, crop_to_aspect_ratio=False,
                                 pad_to_aspect_ratio=False, data_format=None, format=None, verbose=True):
    """Keras's ``image_dataset_from_directory`` (see the module's text): an
    ``ImageFolderDataset`` of ``(images, labels)`` batches (images alone when ``labels``
    or ``label_mode`` is None), or with ``subset="both"`` a (training, validation) pair.
    ``batch_size=None`` gives single samples. ``format`` ("tf", "grain") is accepted and
    ignored: the dataset is always nbnet's."""
    inferred = isinstance(labels, str) and labels == "inferred"
    if not inferred and labels is not None:
        if isinstance(labels, str) or not isinstance(labels, (list, tuple, np.ndarray)):
            raise ImageDatasetError("`labels` must be 'inferred', None, or a list/tuple of integer labels, one per "
                                    f"image file in the directory; received labels={labels!r}.")
        if class_names:
            raise ImageDatasetError("`class_names` can only be given with labels='inferred'; received "
                                    f"labels={labels!r} and class_names={class_names!r}.")
    if label_mode not in ("int", "categorical", "binary", None):
        raise ImageDatasetError(f"`label_mode` must be 'int', 'categorical', 'binary' or None, received "
                                f"{label_mode!r}.")
    if labels is None or label_mode is None:
        labels, label_mode = None, None
    if color_mode not in COLOR_MODES:
        raise ImageDatasetError(f"`color_mode` must be one of 'grayscale', 'rgb', 'rgba', received {color_mode!r}.")
    image_size = _check_image_size(image_size)
    interpolation = check_interpolation(interpolation)
    if crop_to_aspect_ratio and pad_to_aspect_ratio:
        raise ImageDatasetError("Only one of `crop_to_aspect_ratio` and `pad_to_aspect_ratio` can be True.")
    if data_format not in (None, "channels_last"):
        raise ImageDatasetError(f"nbnet's images are channels_last; received data_format={data_format!r}.")
    if batch_size is not None and (int(batch_size) != batch_size or batch_size < 1):
        raise ImageDatasetError(f"`batch_size` must be a positive integer or None, received {batch_size!r}.")
    _check_validation_split(validation_split, subset, shuffle, seed)

    if seed is None:
        seed = np.random.randint(1e6)
    file_paths, labels, class_names = index_directory(directory, labels, class_names=class_names, shuffle=shuffle,
                                                      seed=seed, follow_links=follow_links, verbose=verbose)
    if label_mode == "binary" and len(class_names) != 2:
        raise ImageDatasetError(f"label_mode='binary' needs exactly 2 classes; found {len(class_names)} in "
                                f"{directory}: {class_names}.")
    settings = dict(label_mode=label_mode, class_names=class_names, color_mode=color_mode, image_size=image_size,
                    interpolation=interpolation, crop_to_aspect_ratio=crop_to_aspect_ratio,
                    pad_to_aspect_ratio=pad_to_aspect_ratio, batch_size=batch_size, seed=seed)
    if subset == "both":
        parts = [split(file_paths, labels, validation_split, name, directory, verbose)
                 for name in ("training", "validation")]
        if image_size is None:  # both halves at the one size found across them
            settings["image_size"] = common_size(file_paths, directory)
        return (ImageFolderDataset(*parts[0], shuffle=shuffle, **settings),
                ImageFolderDataset(*parts[1], shuffle=False, **settings))
    file_paths, labels = split(file_paths, labels, validation_split, subset, directory, verbose)
    return ImageFolderDataset(file_paths, labels, shuffle=shuffle, **settings)


def _check_image_size(image_size):
    if image_size is None:
        return None
    if isinstance(image_size, (int, np.integer)):
        image_size = (image_size, image_size)
    if (not isinstance(image_size, (list, tuple)) or len(image_size) != 2
            or not all(isinstance(side, (int, np.integer)) and side >= 1 for side in image_size)):
        raise ImageDatasetError(f"`image_size` must be (height, width), two positive integers, or None to keep the "
                                f"images' own size; received {image_size!r}.")
    return int(image_size[0]), int(image_size[1])


def check_interpolation(interpolation):
    name = str(interpolation).lower()
    if name in _KERAS_ONLY_INTERPOLATIONS:
        raise ImageDatasetError(f"interpolation={interpolation!r} is TensorFlow's only; nbnet resizes with "
                                f"{', '.join(INTERPOLATIONS)}.")
    if name not in INTERPOLATIONS:
        raise ImageDatasetError(f"`interpolation` must be one of {', '.join(INTERPOLATIONS)}; received "
                                f"{interpolation!r}.")
    return name


def _check_validation_split(validation_split, subset, shuffle, seed):
    """Keras's check_validation_split_arg."""
    if validation_split and not 0 < validation_split < 1:
        raise ImageDatasetError(f"`validation_split` must be between 0 and 1, received {validation_split!r}.")
    if (validation_split or subset) and not (validation_split and subset):
        raise ImageDatasetError("If `subset` is set, `validation_split` must be set, and inversely.")
    if subset not in ("training", "validation", "both", None):
        raise ImageDatasetError(f"`subset` must be 'training', 'validation' or 'both', received {subset!r}.")
    if validation_split and shuffle and seed is None:
        raise ImageDatasetError("With `validation_split` and shuffling, give a `seed`, so that the training and "
                                "validation subsets do not overlap.")


def index_directory(directory, labels="inferred", class_names=None, shuffle=True, seed=None, follow_links=False,
                    verbose=True, formats=ALLOWLIST_FORMATS):
    """Keras's ``index_directory``: ``(file_paths, labels, class_names)``, the paths
    shuffled with ``RandomState(seed)`` when ``shuffle``, else in sorted order."""
    directory = os.fspath(directory)
    inferred = isinstance(labels, str) and labels == "inferred"
    if isinstance(labels, str) and not inferred:
        raise ImageDatasetError(f"`labels` must be 'inferred', None or a list of integer labels, received {labels!r}.")
    if not os.path.isdir(directory):
        raise ImageDatasetError(f"{directory}: no such directory" if not os.path.exists(directory)
                                else f"{directory}: not a directory (expected a folder of class subfolders of images)")
    if inferred:
        subdirs = [name.rstrip("/") for name in sorted(os.listdir(directory))
                   if os.path.isdir(os.path.join(directory, name)) and not name.startswith(".")]
        if class_names is not None:
            class_names = [str(name) for name in class_names]
            if not set(class_names).issubset(subdirs):
                raise ImageDatasetError(f"The class_names given do not match the subfolders of {directory}: expected "
                                        f"{subdirs} (or a subset of it), received class_names={class_names}.")
            subdirs = class_names
    else:
        if class_names is not None:
            raise ImageDatasetError("With labels=None (no labels) or a list of labels, `class_names` cannot be given.")
        subdirs = [""]
    filenames, per_class = [], []
    for subdir in subdirs:
        found = _files_under(os.path.join(directory, subdir), follow_links, formats)
        filenames += [os.path.join(subdir, os.path.relpath(path, os.path.join(directory, subdir))) if subdir else
                      os.path.relpath(path, directory) for path in found]
        per_class.append(len(found))
    if not filenames:
        raise ImageDatasetError(_no_images(directory, subdirs if inferred else [], formats))
    if inferred:
        labels = np.repeat(np.arange(len(subdirs), dtype=np.int32), per_class)
        class_names = list(subdirs)
    elif labels is None:
        class_names = None
    else:
        if len(labels) != len(filenames):
            raise ImageDatasetError(f"Expected one label per image file: received {len(labels)} labels, but found "
                                    f"{len(filenames)} files in {directory}.")
        labels = np.asarray(labels)
        if labels.dtype.kind not in "iu":
            raise ImageDatasetError(f"`labels` must be integers, received values of dtype {labels.dtype}.")
        class_names = [str(label) for label in sorted(set(labels.tolist()))]
    if verbose:
        print(f"Found {len(filenames)} files." if labels is None else
              f"Found {len(filenames)} files belonging to {len(class_names)} classes.")
    file_paths = [os.path.join(directory, name) for name in filenames]
    if shuffle:  # as Keras: one RandomState(seed) shuffle of the paths, the same one of the labels
        if seed is None:
            seed = np.random.randint(1e6)
        np.random.RandomState(seed).shuffle(file_paths)
        if labels is not None:
            labels = np.array(labels)
            np.random.RandomState(seed).shuffle(labels)
    return file_paths, labels, class_names


def _files_under(folder, follow_links, formats):
    """Image files under ``folder``, as Keras walks it: directories in sorted order, their files sorted."""
    found = []
    for root, _, files in sorted(os.walk(folder, followlinks=follow_links), key=lambda entry: entry[0]):
        found += [os.path.join(root, name) for name in sorted(files) if name.lower().endswith(formats)]
    return found


def _no_images(directory, subdirs, formats):
    allowed = ", ".join(formats)
    loose = [name for name in sorted(os.listdir(directory)) if name.lower().endswith(formats)]
    if loose and not subdirs:
        return (f"{directory} holds {len(loose)} image file{'s' if len(loose) > 1 else ''} but no class subfolders: "
                "put each class's images in a "
                f"subfolder named after the class ({directory}/CLASS_NAME/{loose[0]}).")
    if subdirs:
        return (f"No images found in {directory}: its subfolders ({', '.join(subdirs[:10])}"
                f"{', ...' if len(subdirs) > 10 else ''}) hold no files of the allowed formats ({allowed}).")
    return (f"No images found in {directory}: it holds no class subfolders and no files of the allowed formats "
            f"({allowed}).")


def split(file_paths, labels, validation_split, subset, directory="", verbose=True):
    """Keras's ``get_training_or_validation_split``: the validation subset is the last
    ``int(validation_split * n)`` files (refused when that is none, where Keras would
    return every file or none)."""
    if not validation_split:
        return file_paths, labels
    count = int(validation_split * len(file_paths))
    if count == 0 or count == len(file_paths):
        raise ImageDatasetError(f"validation_split={validation_split} of the {len(file_paths)} images in {directory} "
                                f"leaves {count} for validation and {len(file_paths) - count} for training; "
                                "both need at least one.")
    if subset == "training":
        if verbose:
            print(f"Using {len(file_paths) - count} files for training.")
        return file_paths[:-count], None if labels is None else labels[:-count]
    if verbose:
        print(f"Using {count} files for validation.")
    return file_paths[-count:], None if labels is None else labels[-count:]


def image_header(path):
    """(width, height, mode) from an image file's header, without decoding it."""
    Image = require_pillow()
    try:
        with Image.open(path) as image:
            return image.size[0], image.size[1], image.mode
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as error:
        raise DatasetError(f"{path}: not a readable image ({_reason(error)}); remove or replace it.") from None


def common_size(file_paths, directory=""):
    """The (height, width) all the files share, read from their headers; refused, with
    examples, when they differ."""
    sizes = {}
    for path in file_paths:
        width, height, _ = image_header(path)
        sizes.setdefault((height, width), []).append(path)
    if len(sizes) > 1:
        ranked = sorted(sizes.items(), key=lambda item: -len(item[1]))
        listing = "; ".join(f"{h}x{w}: {len(paths)} (e.g. {paths[0]})" for (h, w), paths in ranked[:4])
        raise ImageDatasetError(f"The images in {directory or 'the dataset'} have {len(sizes)} different sizes "
                                f"(height x width: {listing}{'; ...' if len(sizes) > 4 else ''}). Give "
                                "image_size=(h, w) to resize them all (nbnet train: --image-size HxW).")
    return next(iter(sizes))


def _reason(error):
    text = str(error)
    return text if text and "<_io." not in text else type(error).__name__


def load_image(path, color_mode="rgb", image_size=None, interpolation="bilinear", crop_to_aspect_ratio=False,
               pad_to_aspect_ratio=False):
    """One image file as the dataset gives it: float32 (height, width, channels), 0..255,
    converted as Keras's Pillow path does (to L unless already 8-, 16- or 32-bit
    grayscale; to RGB or RGBA), resized to ``image_size`` when given."""
    Image = require_pillow()
    channels = COLOR_MODES[color_mode]
    try:
        with Image.open(path) as image:
            mode = {1: ("L", "I;16", "I"), 3: ("RGB",), 4: ("RGBA",)}[channels]
            if image.mode not in mode:
                image = image.convert(mode[0])
            pixels = np.asarray(image, dtype=np.float32)
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as error:
        raise DatasetError(f"{path}: cannot read the image ({_reason(error)}); it is truncated or corrupt, or not an "
                           "image: remove or replace it.") from None
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    if image_size is not None:
        pixels = resize(pixels, image_size, interpolation, crop_to_aspect_ratio, pad_to_aspect_ratio)
    return pixels


def resize(image, size, interpolation="bilinear", crop_to_aspect_ratio=False, pad_to_aspect_ratio=False):
    """``keras.ops.image.resize`` of one (height, width, channels) image, antialias off:
    half-pixel centres; ``crop_to_aspect_ratio`` takes the central window of the target's
    aspect ratio first, ``pad_to_aspect_ratio`` pads with zeros on both sides, as Keras."""
    image = np.asarray(image, np.float32)
    height, width = image.shape[:2]
    target_height, target_width = size
    if crop_to_aspect_ratio:
        crop_height = max(min(height, int(float(width * target_height) / target_width)), 1)
        crop_width = max(min(width, int(float(height * target_width) / target_height)), 1)
        top, left = int(float(height - crop_height) / 2), int(float(width - crop_width) / 2)
        image = image[top:top + crop_height, left:left + crop_width]
    elif pad_to_aspect_ratio:
        pad_height = max(height, int(float(width * target_height) / target_width))
        pad_width = max(width, int(float(height * target_width) / target_height))
        top, left = int(float(pad_height - height) / 2), int(float(pad_width - width) / 2)
        if top > 0:
            image = np.pad(image, ((top, top), (0, 0), (0, 0)))
        elif left > 0:
            image = np.pad(image, ((0, 0), (left, left), (0, 0)))
    for axis, target in ((0, target_height), (1, target_width)):
        if image.shape[axis] != target:
            image = _resize_axis(image, axis, target, interpolation)
    return np.ascontiguousarray(image, np.float32)


def _resize_axis(image, axis, out_size, interpolation):
    in_size = image.shape[axis]
    scale = in_size / out_size
    if interpolation == "nearest":
        index = np.minimum(np.floor((np.arange(out_size, dtype=np.float32) + 0.5) * in_size / out_size), in_size - 1)
        return np.take(image, index.astype(np.intp), axis=axis)
    position = (np.arange(out_size) + 0.5) * scale - 0.5
    if interpolation == "bilinear":  # two taps, the edges clamped (TensorFlow's, PyTorch's and JAX's bilinear)
        lower = np.floor(position)
        fraction = (position - lower).astype(np.float32)
        low = np.take(image, np.clip(lower, 0, in_size - 1).astype(np.intp), axis=axis)
        high = np.take(image, np.clip(lower + 1, 0, in_size - 1).astype(np.intp), axis=axis)
        shape = [1, 1, 1]
        shape[axis] = out_size
        fraction = fraction.reshape(shape)
        return low + (high - low) * fraction
    # bicubic, lanczos: Keras's NumPy backend's weight matrix (scale_and_translate without antialiasing)
    distance = np.abs(position[None, :] - np.arange(in_size)[:, None])
    weights = _KERNELS[interpolation](distance)
    total = weights.sum(axis=0, keepdims=True)
    weights = np.where(np.abs(total) > 1000.0 * np.finfo(np.float32).eps,
                       weights / np.where(total != 0, total, 1), 0).astype(np.float32)
    return np.moveaxis(np.tensordot(image, weights, axes=(axis, 0)), -1, axis)


def _cubic(x):
    out = ((1.5 * x - 2.5) * x) * x + 1.0
    out = np.where(x >= 1.0, ((-0.5 * x + 2.5) * x - 4.0) * x + 2.0, out)
    return np.where(x >= 2.0, 0.0, out)


def _lanczos(radius, x):
    with np.errstate(invalid="ignore", divide="ignore"):
        y = radius * np.sin(np.pi * x) * np.sin(np.pi * x / radius)
        out = np.where(x > 1e-3, y / np.where(x != 0, np.pi ** 2 * x ** 2, 1), 1)
    return np.where(x > radius, 0.0, out)


_KERNELS = {"bicubic": _cubic, "lanczos3": lambda x: _lanczos(3.0, x), "lanczos5": lambda x: _lanczos(5.0, x)}


def to_layout(images, layout):
    """(N, H, W, C) images as (N, C, H, W) ("channels_first"), (N, H*W*C) ("flat") or as they are."""
    if layout == "channels_first":
        return np.ascontiguousarray(images.transpose(0, 3, 1, 2))
    if layout == "flat":
        return images.reshape(len(images), -1)
    return images


class ImageFolderDataset(PyDataset):
    """The dataset ``image_dataset_from_directory`` returns: batches of float32 images
    (0..255) and their labels, read from disk as they are asked for. ``class_names``,
    ``file_paths`` (in the dataset's order), ``labels`` (int ids, or None),
    ``image_size``, ``color_mode`` and ``batch_size`` are attributes; ``len()`` is the
    number of batches (of samples when ``batch_size`` is None). Iterating gives one
    epoch's batches."""

    def __init__(self, file_paths, labels, *, label_mode="int", class_names=None, color_mode="rgb",
                 image_size=(256, 256), interpolation="bilinear", crop_to_aspect_ratio=False,
                 pad_to_aspect_ratio=False, batch_size=32, shuffle=False, seed=None):
        super().__init__()
        self.file_paths = list(file_paths)
        self.labels = None if labels is None else np.asarray(labels, np.int32)
        self.label_mode = label_mode if self.labels is not None else None
        self.class_names = class_names
        self.color_mode, self.interpolation = color_mode, interpolation
        self.crop_to_aspect_ratio, self.pad_to_aspect_ratio = crop_to_aspect_ratio, pad_to_aspect_ratio
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.epoch = 0  # the permutation of epoch e > 0 is drawn from (seed, e); set it to resume a run
        self.image_size = common_size(self.file_paths) if image_size is None else tuple(image_size)
        self.scale = None  # a factor applied to the pixels (with_scale)
        self.layout = None  # "channels_first": batches (N, C, H, W); "flat": (N, H*W*C); for models taking those

    @property
    def num_channels(self):
        return COLOR_MODES[self.color_mode]

    @property
    def element_shape(self):
        return self.image_size + (self.num_channels,)

    def __len__(self):
        count = len(self.file_paths)
        return count if self.batch_size is None else -(-count // self.batch_size)

    def _order(self):
        if not self.shuffle or self.epoch == 0:
            return np.arange(len(self.file_paths))
        return np.random.default_rng([int(self.seed or 0), int(self.epoch)]).permutation(len(self.file_paths))

    def __getitem__(self, index):
        length = len(self)
        index = int(index)
        if index < 0:
            index += length
        if not 0 <= index < length:
            raise IndexError(f"batch {index} of a dataset of {length}")
        if self.batch_size is None:
            return self._samples(self._order()[index:index + 1], batched=False)
        return self._samples(self._order()[index * self.batch_size:(index + 1) * self.batch_size], batched=True)

    def _samples(self, ids, batched):
        images = np.empty((len(ids),) + self.element_shape, np.float32)
        for row, i in enumerate(ids):
            image = load_image(self.file_paths[i], self.color_mode, self.image_size, self.interpolation,
                               self.crop_to_aspect_ratio, self.pad_to_aspect_ratio)
            if image.shape != images.shape[1:]:  # a file of another size where image_size=None took one size
                raise ImageDatasetError(f"{self.file_paths[i]} is {image.shape[0]}x{image.shape[1]}, the dataset's "
                                        f"images {self.image_size[0]}x{self.image_size[1]}: give image_size=(h, w).")
            images[row] = image
        if self.scale is not None:
            images *= np.float32(self.scale)
        if self.layout:
            images = to_layout(images, self.layout)
        labels = self._labels(ids)
        if not batched:
            images = images[0]
            labels = None if labels is None else labels[0]
        return images if labels is None else (images, labels)

    def _labels(self, ids):
        if self.labels is None:
            return None
        ids = self.labels[ids]
        if self.label_mode == "categorical":
            return np.eye(len(self.class_names), dtype=np.float32)[ids]
        if self.label_mode == "binary":
            return ids.astype(np.float32)[:, None]
        return ids

    def __iter__(self):
        for index in range(len(self)):
            yield self[index]

    def on_epoch_end(self):
        self.epoch += 1

    def with_scale(self, factor, layout=None):
        """A copy whose pixels come multiplied by ``factor`` (1/255: 0..1, as a model
        without a Rescaling layer was trained; None: as they are), in ``layout``
        ("channels_first", "flat", None: (N, H, W, C))."""
        copy = object.__new__(type(self))
        copy.__dict__.update(self.__dict__)
        copy.scale, copy.layout = factor, layout
        return copy

    def __repr__(self):
        return (f"<ImageFolderDataset: {len(self.file_paths)} images {self.element_shape}, "
                f"{len(self.class_names) if self.class_names else 'no'} classes, batch_size={self.batch_size}>")

