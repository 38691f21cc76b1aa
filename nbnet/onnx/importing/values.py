"""What flows between converters: ``Const`` (known at import) and ``Value`` (a symbolic
nbnet tensor), with the layout that maps one onto the other.

Layout. ``Value.perm`` says how the nbnet tensor's axes relate to the ONNX tensor's:
``nbnet = onnx.transpose(perm)``, the batch axis first in both. An NCHW image held
channels-last has perm (0, 2, 3, 1). ``Value.rows``, on a 2-D value made by flattening a
tensor held in another layout, says which ONNX feature each nbnet feature is
(``nbnet[:, i] = onnx[:, rows[i]]``): a following Dense takes its kernel rows in that
order instead of permuting the activations.

Batch. The batch size is symbolic. Shape arithmetic on it is folded twice, with two
sentinel batch sizes (``BATCH_A``, ``BATCH_B``): a Const whose two versions differ
depends on the batch, and a Reshape target that holds the batch where the input does
keeps it as the batch axis.
"""

import numpy as np

BATCH_A, BATCH_B = 9973, 7919  # primes no real dimension is likely to equal


class Const:
    """An array known at import; ``b`` is its value under the second batch sentinel when it
    depends on the batch size (None: it does not). ``initializer``: from a graph
    initializer (trainable if it becomes a weight), not a Constant node."""

    def __init__(self, a, b=None, initializer=False):
        self.a = np.asarray(a)
        self.b = None if b is None or np.array_equal(np.asarray(b), self.a) and np.shape(b) == self.a.shape \
            else np.asarray(b)
        self.initializer = initializer

    @property
    def batch_dependent(self):
        return self.b is not None

    def versions(self):
        return (self.a, self.a if self.b is None else self.b)


class Value:
    """A symbolic nbnet tensor standing for an ONNX tensor (see the module docstring)."""

    def __init__(self, tensor, perm=None, rows=None, flattened_from=None):
        self.tensor = tensor
        self.perm = tuple(range(tensor.ndim)) if perm is None else tuple(int(p) for p in perm)
        if rows is not None and np.array_equal(rows, np.arange(len(rows))):
            rows = None
        self.rows = rows
        self.flattened_from = flattened_from  # the Value Flatten made this one from, while rows is set
        self.layouts = {}  # perm -> KerasTensor already made from this value

    @property
    def rank(self):
        return len(self.perm)

    @property
    def onnx_shape(self):
        """The ONNX tensor's shape, None for the batch axis."""
        shape = [None] * self.rank
        for position, axis in enumerate(self.perm):
            shape[axis] = self.tensor.shape[position]
        return tuple(shape)

    def shape_with_batch(self, batch):
        return tuple(batch if d is None else d for d in self.onnx_shape)


def identity(rank):
    return tuple(range(rank))


def channels_last(rank):
    """The perm holding ONNX's channel axis (1) last: (0, 2, ..., rank-1, 1)."""
    return (0,) + tuple(range(2, rank)) + (1,)


def flatten_rows(onnx_sample_shape, perm):
    """rows for flattening a value held in ``perm``: the ONNX feature index of each nbnet one."""
    index = np.arange(int(np.prod(onnx_sample_shape, dtype=np.int64))).reshape(onnx_sample_shape)
    return index.transpose([p - 1 for p in perm[1:]]).ravel()
