"""Keras's ``utils``: seeding (one global seed from which each new model draws its own
Generator), ``to_categorical`` and ``normalize``."""

import numpy as np

from .errors import NbnetError
from .datasets import image_folder as _image_folder
from .feeding import PyDataset

Sequence = PyDataset  # Keras 2's name for it
image_dataset_from_directory = _image_folder.image_dataset_from_directory  # Keras's, in nbnet/datasets/image_folder.py

_seed_sequence = None


def set_seed(seed):
    """Make weights, shuffling and dropout repeatable: every model built after this call
    draws its seed, in order, from ``seed`` (as ``keras.utils.set_random_seed``)."""
    global _seed_sequence
    _seed_sequence = np.random.SeedSequence(int(seed))
    np.random.seed(int(seed) % 2**32)


def next_model_seed():
    """The seed for the next model: drawn from set_seed's sequence, else fresh entropy."""
    if _seed_sequence is None:
        return int(np.random.SeedSequence().generate_state(1)[0])
    return int(_seed_sequence.spawn(1)[0].generate_state(1)[0])


# Keras's name.
set_random_seed = set_seed


def to_categorical(x, num_classes=None):
    """One-hot rows (float64, as Keras's NumPy path) for integer class ids of any shape; a
    trailing axis of 1 is dropped first, as Keras does."""
    x = np.asarray(x)
    if x.size and (x.dtype.kind not in "iub" and not np.array_equal(x, np.round(x))):
        raise NbnetError(f"to_categorical: expected integer class ids, received values of dtype {x.dtype}.")
    x = x.astype(np.int64)
    shape = x.shape[:-1] if x.ndim > 1 and x.shape[-1] == 1 else x.shape
    x = x.reshape(-1)
    if x.size and x.min() < 0:
        raise NbnetError(f"to_categorical: class ids must be non-negative, received {x.min()}.")
    num_classes = int(num_classes) if num_classes else int(x.max()) + 1 if x.size else 0
    if x.size and x.max() >= num_classes:
        raise NbnetError(f"to_categorical: class id {x.max()} does not fit num_classes={num_classes}.")
    one_hot = np.zeros((x.size, num_classes))
    one_hot[np.arange(x.size), x] = 1
    return one_hot.reshape(shape + (num_classes,))


def normalize(x, axis=-1, order=2):
    """``x`` divided by its ``order``-norm along ``axis`` (zero norms left as they are)."""
    x = np.asarray(x)
    norm = np.atleast_1d(np.linalg.norm(x, order, axis))
    norm[norm == 0] = 1
    return x / np.expand_dims(norm, axis)
