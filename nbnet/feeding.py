"""Where a training loop's batches come from.

Arrays: copied to the device once, each batch gathered there by the epoch's order
(``ArrayFeeder``). Anything else that yields batches: Keras 3's ``PyDataset`` (Keras 2's
``Sequence``), a dataset such as ``image_dataset_from_directory`` returns, a Python
generator or any iterable of ``(x, y)`` / ``(x, y, sample_weight)`` batches: each batch is
checked, converted and sent to the device as it comes (``StreamFeeder``), so a data set
larger than memory trains in bounded memory.
"""

import warnings

import numpy as np

from .errors import NbnetError


class PyDataset:
    """Keras 3's PyDataset: a sequence of batches. Subclasses define ``__len__`` (the
    number of batches) and ``__getitem__(index)`` (a batch: ``(x, y)``, ``(x, y,
    sample_weight)``, or ``x`` alone for predict), and may define ``on_epoch_end``.
    ``workers``, ``use_multiprocessing`` and ``max_queue_size`` are accepted for Keras's
    sake; nbnet reads the batches in order, in this process."""

    def __init__(self, workers=1, use_multiprocessing=False, max_queue_size=10):
        self.workers, self.use_multiprocessing, self.max_queue_size = workers, use_multiprocessing, max_queue_size

    def __len__(self):
        raise NotImplementedError(f"{type(self).__name__} must define __len__ (its number of batches).")

    def __getitem__(self, index):
        raise NotImplementedError(f"{type(self).__name__} must define __getitem__(index), returning a batch.")

    def on_epoch_end(self):
        pass

    @property
    def num_batches(self):
        return len(self)


def is_batch_source(value):
    """Whether ``value`` yields batches rather than being the data itself."""
    if isinstance(value, PyDataset) or hasattr(value, "__next__"):
        return True
    if isinstance(value, (np.ndarray, list, tuple, dict, str, bytes)) or hasattr(value, "__array__"):
        return False
    return hasattr(value, "__iter__")


def split_batch(batch):
    """Keras's unpacking of one batch: ``(x,)``, ``(x, y)``, ``(x, y, sample_weight)``,
    or anything else as ``x`` alone (a list is taken as a tuple, as Keras does)."""
    if isinstance(batch, list):
        batch = tuple(batch)
    if not isinstance(batch, tuple):
        return batch, None, None
    if not 1 <= len(batch) <= 3:
        raise NbnetError(f"A batch must be x, (x,), (x, y) or (x, y, sample_weight); received a tuple of "
                         f"{len(batch)} items.")
    return tuple(batch) + (None,) * (3 - len(batch))


class BatchStream:
    """A batch source read epoch by epoch: a PyDataset by index (its batch order shuffled
    when asked, from the model's generator), an iterator where it left off, an iterable
    afresh each epoch; at most ``steps`` batches an epoch when given."""

    def __init__(self, source, steps=None, shuffle=False, argument="x"):
        if steps is not None and int(steps) < 1:
            raise NbnetError(f"{argument}: the number of steps must be at least 1, received {steps!r}.")
        self.source, self.steps, self.shuffle, self.argument = source, steps, shuffle, argument
        self._iterator = source if hasattr(source, "__next__") else None

    @property
    def length(self):
        """Batches an epoch, or None while unknown (a generator without ``steps``)."""
        if isinstance(self.source, PyDataset):
            return min(len(self.source), self.steps) if self.steps else len(self.source)
        if self.steps:
            return int(self.steps)
        return len(self.source) if hasattr(self.source, "__len__") else None

    def epoch(self, order=None, first=0):
        """The batches of one epoch, from batch ``first`` on, each as (x, y, sample_weight);
        ``order``: a PyDataset's batch order (a permutation of its indices), else in order."""
        if isinstance(self.source, PyDataset):
            order = list(range(len(self.source)) if order is None else order)[:self.length]
            for index in order[first:]:
                yield split_batch(self.source[int(index)])
            self.source.on_epoch_end()
            return
        iterator = self._iterator if self._iterator is not None else iter(self.source)
        produced = 0
        while self.steps is None or produced < self.steps:
            try:
                batch = next(iterator)
            except StopIteration:
                return  # the caller sees how many batches came (none: the source ran out)
            produced += 1
            if produced > first:
                yield split_batch(batch)


class ArrayFeeder:
    """Batches of arrays already prepared (lists: one array per input, per output): sent
    to the device once (on the CPU these are views, no copy) and gathered there, as 2-D
    rows, in the epoch's order."""

    def __init__(self, model, x, targets, weights, batch_size, shuffle, steps_per_epoch=None):
        ops, count = model.ops, len(x[0])
        self.model, self.ops, self.count, self.batch_size, self.shuffle = model, ops, count, batch_size, shuffle
        self.batches = -(-count // batch_size)
        # Keras's steps_per_epoch on arrays: each epoch takes that many batches and the next
        # goes on from there; a pass over the data that runs out ends its epoch early, and
        # the epoch after starts a new (reshuffled) pass.
        self.steps = int(steps_per_epoch) if steps_per_epoch is not None else self.batches
        self.resumable = steps_per_epoch is None
        self._pass_order, self._pass_batch = None, 0
        self.x_rows = [ops.to_device(a.reshape(count, -1)) for a in x]
        self.t_rows = [ops.to_device(t.reshape(count, -1)) for t in targets]
        rows = min(batch_size, count)
        self.batch_x = [model._scratch(f"batch_x{i}", (rows,) + a.shape[1:], np.float32) for i, a in enumerate(x)]
        self.batch_t = [model._scratch(f"batch_t{i}", (rows,) + t.shape[1:], t.dtype) for i, t in enumerate(targets)]
        self.w_rows = None if weights is None else ops.to_device(weights.reshape(count, 1))
        self.batch_w = None if weights is None else model._scratch("batch_w", (rows, 1), np.float32)

    def epoch(self, epoch_rng_state, first_step):
        """(step, inputs, targets, weights or None, size) on the device, for each step from
        ``first_step``; the order is drawn from the generator state the epoch started with."""
        ops = self.ops
        if self._pass_order is None or self.resumable:
            self._pass_order = ops.to_device(self.model._epoch_order(self.count, self.shuffle, epoch_rng_state))
            self._pass_batch = first_step
        order = self._pass_order
        for step in range(first_step, self.steps):
            if self._pass_batch == self.batches:
                warnings.warn(f"Your input ran out of data after {step} of steps_per_epoch={self.steps} steps; the "
                              f"epoch ends there. {self.count} samples at batch size {self.batch_size} make "
                              f"{self.batches} batches a pass.", UserWarning, stacklevel=4)
                break
            start = self._pass_batch * self.batch_size
            self._pass_batch += 1
            size = min(self.batch_size, self.count - start)
            xb, tb = [b[:size] for b in self.batch_x], [b[:size] for b in self.batch_t]
            for rows, batch in zip(self.x_rows + self.t_rows, xb + tb):
                ops.gather_rows(rows, order, start, batch.reshape(size, rows.shape[1]))
            wb = None
            if self.w_rows is not None:
                ops.gather_rows(self.w_rows, order, start, self.batch_w[:size])
                wb = self.batch_w[:size].reshape(size)
            yield step, xb, tb, wb, size
        if self._pass_batch == self.batches:
            self._pass_order = None


class StreamFeeder:
    """Batches from a BatchStream, each checked and prepared as fit prepares arrays
    (``class_weight`` applied per batch), then sent to the device."""

    def __init__(self, model, stream, class_weight=None):
        self.model, self.stream, self.class_weight = model, stream, class_weight
        self.steps = stream.length
        # A PyDataset is read by index, so an interrupted epoch can go on where it stopped.
        self.resumable = isinstance(stream.source, PyDataset)

    def epoch(self, epoch_rng_state, first_step):
        model, ops = self.model, self.model.ops
        order = None
        if self.stream.shuffle and isinstance(self.stream.source, PyDataset):
            order = model._epoch_order(len(self.stream.source), True, epoch_rng_state)
        for step, (x, y, weight) in enumerate(self.stream.epoch(order, first_step), start=first_step):
            if y is None:
                raise NbnetError(f"{self.stream.argument}: batch {step} has no targets; fit and evaluate need "
                                 "(x, y) or (x, y, sample_weight) batches.")
            xs, targets = model._prepare_xy(x, y, "y (in a batch)")
            weights = model._sample_weights(y, targets, weight, self.class_weight)
            size = len(xs[0])
            yield (step, [ops.to_device(a if a.dtype == np.float32 else a.astype(np.float32)) for a in xs],
                   [ops.to_device(t) for t in targets], None if weights is None else ops.to_device(weights), size)
