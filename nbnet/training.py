"""The training loop: Keras's fit, evaluate, predict and train_on_batch over a model's
execution plan (see executor.py), on whichever device the model runs on.

During fit the training set is copied to the device once, batches are gathered there, and
the per-step loss and accuracy totals stay on the device until the loop reads them back,
every ``steps_per_execution`` steps (Keras's name).
"""

import functools
import math
import time
import warnings

import numpy as np

from . import callbacks as callbacks_module
from . import metrics as metrics_module
from .devices import cpu
from .feeding import ArrayFeeder, BatchStream, StreamFeeder, is_batch_source
from .kernels.training import values_finite
from . import inference_program
from .outputs import prepare_targets
from .errors import NbnetError, ResourceError, ShapeError, TrainingDiverged, TrainingInterrupted
from .progress import ProgressBar
from .tensor import as_tensor
from .threads import blas_limited, numba_thread_count, numba_threads, single_threaded_blas

# Inference runs in chunks of at most this many samples whatever the batch size asked for:
# the results are the same, a batch of 1000 CNN images would hold ~300 MB of buffers, and
# at the usual training batch the training buffers are reused.
INFERENCE_CHUNK = 128
# predict takes larger chunks (up to the batch size asked for) while its layers' outputs
# stay within this many bytes: an MLP 784-512-512-10 (11 KB a sample) predicts 1000 images
# at 72k images/s in chunks of 128 and 123k in one (its matmuls too thin at 128 rows to
# split across the cores); CNNs gain less (the MNIST CNN 41k -> 45k at 400) or lose
# (two strided convs, 50 KB a sample: 51k at 128, 43k at 1000).
PREDICT_CHUNK_BYTES = 16 << 20
# Steps between reading the loss and accuracy back from a GPU (each read waits for the
# device); on the CPU every step is read, which costs nothing.
GPU_STEPS_PER_EXECUTION = 20


def _helped_from_the_start(fit):
    """On an empty kernel cache (a fresh install) the helper process (warmup.compile_helper)
    starts as fit begins, not at its first step: it then compiles while this process checks
    and gathers the data and compiles those kernels (0.5 s of a cold first fit). The first
    step stops it, as it stops the one it starts itself on a cold cache."""
    @functools.wraps(fit)
    def wrapper(self, *args, **kwargs):
        if not getattr(self, "_first_step_pending", True) or not self.built or getattr(self, "loss", None) is None:
            return fit(self, *args, **kwargs)
        from .warmup import compile_helper

        with compile_helper(self, cold_only=True) as helper:
            self._early_helper = helper
            try:
                return fit(self, *args, **kwargs)
            finally:
                self._early_helper = None

    return wrapper


def _check_steps(steps, method, argument="steps"):
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise NbnetError(f"{method}: {argument} must be a positive number of batches, received {steps!r}.")
    return int(steps)


class TrainingLoop:
    """fit / evaluate / predict / train_on_batch of a Model (a mixin: it reads the model's
    ``_plan``, loss, optimizer, metrics and device session)."""

    # -- input checks ------------------------------------------------------------------
    def _ensure_built(self, xs):
        if not self.built:
            self.build(np.shape(xs[0])[1:])

    def _input_arrays(self, x, argument):
        """``x`` as a list with one array per model input: an array (one input), a list or
        tuple in the inputs' order, or a dict keyed by the inputs' names."""
        names = self.input_names
        if isinstance(x, dict):
            missing = [name for name in names if name not in x]
            if missing or len(x) != len(names):
                raise NbnetError(f"{argument}: model '{self.name}' takes the inputs {names}; the dict given has the "
                                 f"keys {list(x)}.")
            return [x[name] for name in names]
        if isinstance(x, (list, tuple)) and len(names) > 1:
            if len(x) != len(names):
                raise NbnetError(f"{argument}: model '{self.name}' takes {len(names)} inputs {names}, but received "
                                 f"{len(x)} arrays.")
            return list(x)
        if len(names) > 1:
            raise NbnetError(f"{argument}: model '{self.name}' takes {len(names)} inputs {names}; give a list of "
                             f"{len(names)} arrays or a dict keyed by those names, not one {type(x).__name__}.")
        if self.built and isinstance(x, (list, tuple)) and len(x) == 1 and np.ndim(x[0]) >= 1:
            first = np.asarray(x[0])
            if first.ndim == len(self._input_shapes()[0]) + 1:
                return [first]  # Keras's [x] for a one-input model
        return [x]

    def _prepare_x(self, x, argument="x"):
        """The inputs as a list of C-contiguous float32 (or uint8) arrays of the model's
        input shapes, one per model input, with a common sample count."""
        if x is None:
            raise NbnetError(f"{argument}: received None; give the input samples.")
        if type(x) is np.ndarray and x.dtype == np.float32 and x.flags.c_contiguous and x.size and self.built:
            # The common case in few steps (a tenth of a one-image predict went to the general ones).
            shapes = self._input_shapes()
            if len(shapes) == 1 and x.shape[1:] == shapes[0] and _first_non_finite_sample(x) is None:
                return [x]
        try:
            arrays = [np.asarray(a) for a in self._input_arrays(x, argument)]
        except ValueError as error:  # ragged nested lists
            raise ShapeError(f"{argument}: cannot be read as an array of samples ({error}). Give a NumPy array (one "
                             "per model input), or a batch source (a generator or PyDataset) for batches.") from None
        for array in arrays:
            if array.dtype.kind not in "fiub":
                raise NbnetError(f"{argument}: expected a numeric array, received dtype {array.dtype}.")
            if array.size == 0 or array.ndim == 0:
                raise ShapeError(f"{argument}: received an empty array of shape {array.shape}; give at least one "
                                 "sample.")
        self._ensure_built(arrays)
        prepared = []
        for array, expected, name in zip(arrays, self._input_shapes(), self.input_names):
            label = argument if len(arrays) == 1 else f"{argument}[{name!r}]"
            if array.shape[1:] != expected and array.shape[1:] == expected[:-1] and expected[-1] == 1:
                array = array[..., np.newaxis]  # (N, 28, 28) for a one-channel (28, 28, 1) input, as users expect
            if array.shape[1:] != expected:
                raise ShapeError(f"{label}: model '{self.name}' expects input shape {(None,) + expected}, "
                                 f"but received {array.shape}.")
            if array.dtype == np.uint8:
                # Kept as uint8 (a quarter of float32's memory); each batch is converted as it is
                # gathered, to the same float32 values a full conversion would give.
                prepared.append(np.ascontiguousarray(array))
                continue
            array = np.ascontiguousarray(array, dtype=np.float32)
            bad = _first_non_finite_sample(array)
            if bad is not None:
                raise NbnetError(f"{label}: sample {bad} contains NaN or Inf values; clean or drop such samples "
                                 "first.")
            prepared.append(array)
        counts = {len(a) for a in prepared}
        if len(counts) > 1:
            raise ShapeError(f"{argument}: the inputs {self.input_names} have different sample counts "
                             f"{[len(a) for a in prepared]}.")
        return prepared

    def _prepare_xy(self, x, y, argument="y"):
        """(inputs, targets): lists, one array per model input and per output."""
        xs = self._prepare_x(x)
        self._require_compiled()
        return xs, prepare_targets(self._heads, y, len(xs[0]), argument)

    def _require_compiled(self):
        if self.loss is None:
            raise NbnetError(f"{type(self).__name__} '{self.name}' must be compiled before training or evaluation: "
                             "call model.compile(optimizer=..., loss=...).")

    @staticmethod
    def _check_batch_size(batch_size):
        if int(batch_size) < 1:
            raise NbnetError(f"batch_size must be at least 1, received {batch_size!r}.")
        return int(batch_size)

    # -- one batch -------------------------------------------------------------------------
    def _fused(self):
        """Per output, whether its activation is folded into its loss (softmax +
        cross-entropy): the output layer then keeps its logits for the loss."""
        flags = []
        for head in self._heads:
            step, loss = self._plan.output_step(head.index), head.loss
            flags.append(not loss.from_logits and loss.fusable_activation is not None
                         and self._plan.can_fuse_output(head.index)
                         and getattr(step.layer, "activation", None) == loss.fusable_activation)
        return flags

    def _forward(self, xs, training, fused=None):
        """The model's outputs (a list) for a batch already on the device (a list, one per input)."""
        self._plan.set_fused_outputs(fused or [False] * len(self._plan.output_slots))
        return self._plan.forward(xs, training)

    def _loss_and_grad(self, outputs, targets, totals, weights=None, fused=None):
        """The loss gradients (reused buffers, each scaled by its output's loss weight),
        one per output; each output's summed batch loss (each sample's times its weight,
        when ``weights`` are given) goes into column ``index`` of ``totals`` (float64, on
        the device)."""
        grads = []
        for head, output, target, is_fused in zip(self._heads, outputs, targets, fused or self._fused()):
            source = self._plan.output_step(head.index).layer.logits if is_fused else output
            source = source.reshape(output.shape[0], source.size // max(output.shape[0], 1))
            grad = self._scratch(f"loss_grad{head.index}", source.shape, source.dtype)
            head.loss.compute(source, target, grad, is_fused or head.loss.from_logits, self.ops,
                              totals[head.index:head.index + 1], weights)
            if head.weight != 1.0:
                flat = grad.reshape(-1)
                self.ops.scale_shift(flat, grad.dtype.type(head.weight), grad.dtype.type(0.0), flat)
            grads.append(grad.reshape(output.shape))
        return grads

    def _scratch(self, key, shape, dtype):
        """A model-level buffer of the current device, reused while its shape stays."""
        key = (self.ops.name, key)
        shape = tuple(int(d) for d in shape)
        buf = self._scratch_buffers.get(key)
        if buf is None or tuple(buf.shape) != shape or buf.dtype != dtype:
            buf = self._scratch_buffers[key] = self.ops.empty(shape, dtype)
        return buf

    def _train_step(self, xs, targets, totals, step, weights=None):
        """One optimizer step on a batch already on the device. Its summed loss, correct
        count and penalties go into ``totals`` (a _StepTotals row); a step whose loss or
        gradients are not finite sets the halt flag instead of updating the weights."""
        # The first step compiles the kernels: with a helper process on a cold cache (on an
        # empty one already running since fit began, see _helped_from_the_start).
        if getattr(self, "_first_step_pending", True):
            self._first_step_pending = False
            early = getattr(self, "_early_helper", None)
            if early is not None:
                try:
                    return self._train_step(xs, targets, totals, step, weights)
                finally:
                    early.stop()
            from .warmup import compile_helper

            with compile_helper(self):
                return self._train_step(xs, targets, totals, step, weights)
        ops = self.ops
        ops.fill_zero(self.flat_grads)
        fused = self._fused()
        with np.errstate(all="ignore"):  # overflow shows up as a non-finite loss: the halt flag
            outputs = self._forward(xs, training=True, fused=fused)
            grads = self._loss_and_grad(outputs, targets, totals, weights, fused)
            column = 2 * len(self._heads)
            for layer in self._plan.layers:
                count = len(layer.active_regularizers())
                if count:
                    layer.regularization([totals[column + i:column + i + 1] for i in range(count)])
                    column += count
            self._plan.backward(grads, ops)
        for head in self._heads:  # a non-finite loss of any output halts the step
            ops.check_finite(self.flat_grads, totals[head.index:head.index + 1], step, self._halt)
        self.optimizer.apply(self.flat_params, self.flat_grads, ops, self._halt, self._segments)
        self._update_metrics(outputs, targets, totals)

    def _split_metrics(self):
        for head in self._heads:
            head.split_metrics()

    def _reset_host_metrics(self):
        for head in self._heads:
            for metric in head.host_metrics:
                metric.reset_state()

    def _update_metrics(self, outputs, targets, totals):
        """Each output's correct count into its column of ``totals`` (after the losses),
        and its host metrics updated."""
        count = len(self._heads)
        for head, output, target in zip(self._heads, outputs, targets):
            if head.counted is not None:
                column = count + head.index
                metrics_module.correct_count(output, target, head.loss.sparse_targets, ops=self.ops,
                                             out=totals[column:column + 1])
            if head.host_metrics:
                y_pred = self.ops.to_host(output).reshape((-1,) + head.shape)
                y_true = self.ops.to_host(target)
                for metric in head.host_metrics:
                    metric.update_state(y_true, y_pred)

    def _penalty_columns(self):
        return sum(len(layer.active_regularizers()) for layer in self._plan.layers)

    def _start_steps(self):
        """A cleared halt flag, on the device, before a run of training steps; metrics afresh."""
        self._halt = self.ops.zeros(1, np.int32)
        self._split_metrics()

    def _halted(self, step_losses):
        """A TrainingDiverged error if a step halted, else None; ``step_losses`` maps
        optimizer steps to their mean batch loss."""
        halted = int(self.ops.to_host(self._halt)[0])
        if not halted:
            return None
        # The steps after the bad one changed nothing: the weights are the last good step's.
        self.optimizer.iterations = halted - 1
        return TrainingDiverged(self._divergence_message(step_losses.get(halted, float("nan"))))

    def _divergence_message(self, loss):
        bad = [layer.name for layer in reversed(self._plan.layers)
               if any(not np.isfinite(self.ops.to_host(g)).all() for g in layer.grads.values())]
        where = f"non-finite gradients in {', '.join(bad)} (output side first)" if bad else "all gradients finite"
        return (f"Training diverged at optimizer step {self.optimizer.iterations + 1}: the batch loss is {loss}, "
                f"{where}; learning rate {self.optimizer.current_learning_rate():g}. The weights are those of the "
                "last good step. Lower the learning rate, scale the inputs to [0, 1], or check the data for outliers.")

    def _check_memory(self, batch_size, data_bytes=0):
        """Fail before the first step when a batch's activations (and, on a GPU, the
        training data) cannot fit in the device's memory."""
        per_sample = 0
        for step in self._plan.steps:
            per_sample += 2 * int(np.prod(step.shape))  # output and input gradient
            if hasattr(step.source, "kernel_size"):
                per_sample += 2 * int(np.prod(step.shape[:-1])) * int(np.prod(step.source.params["kernel"].shape[:-1]))
        needed = per_sample * 4 * batch_size + 3 * 4 * self.flat_params.size + (data_bytes if self.ops is not cpu else 0)
        available = self.ops.available_memory()
        if available is not None and needed > 0.8 * available:
            where = "GPU memory" if self.ops is not cpu else "memory"
            raise ResourceError(
                f"batch_size={batch_size} needs about {needed / 2**30:.2f} GiB for activations and gradients of "
                f"model '{self.name}', but only {available / 2**30:.2f} GiB of {where} is available; "
                f"use a batch size of at most {max(int(0.8 * available / (per_sample * 4)), 1)}.")

    def _penalty(self):
        """The regularization penalty alone (its gradient goes into scratch grads)."""
        saved = self._scratch("saved_grads", self.flat_grads.shape, self.flat_grads.dtype)
        self.ops.copy(self.flat_grads, saved)
        penalty = sum(layer.regularization() for layer in self._plan.layers)
        self.ops.copy(saved, self.flat_grads)
        return penalty

    def _steps_per_execution(self):
        if self.steps_per_execution is not None:
            return self.steps_per_execution
        return 1 if self.ops is cpu else GPU_STEPS_PER_EXECUTION

    # -- Keras API ---------------------------------------------------------------------------
    @blas_limited
    @_helped_from_the_start
    def fit(self, x=None, y=None, batch_size=None, epochs=1, verbose="auto", callbacks=None, validation_split=0.0,
            validation_data=None, shuffle=True, class_weight=None, sample_weight=None, initial_epoch=0,
            steps_per_epoch=None, validation_steps=None, validation_batch_size=None, validation_freq=1):
        """Keras's fit, on arrays or on a batch source (a PyDataset or Keras Sequence, a
        dataset, a generator or an iterable of (x, y) or (x, y, sample_weight) batches,
        read as they come: ``steps_per_epoch`` batches an epoch when given, else until the
        source ends; a PyDataset's batch order is shuffled when ``shuffle``). On arrays,
        ``steps_per_epoch`` works as Keras's: each epoch goes on through the data where the
        last one stopped, an epoch that reaches the end of a pass stops there.
        ``sample_weight`` (one per sample) and ``class_weight`` ({class: weight}) scale
        each sample's loss, as Keras: the mean stays over the batch size.
        ``validation_freq``: validate every that many epochs."""
        if not (isinstance(validation_freq, int) and validation_freq >= 1):
            raise NbnetError(f"fit: validation_freq must be a positive number of epochs, received {validation_freq!r}.")
        streaming = is_batch_source(x)
        if streaming:
            for name, value in (("y", y), ("sample_weight", sample_weight), ("batch_size", batch_size)):
                if value is not None:
                    raise NbnetError(f"fit: {name}= cannot be given with a batch source as x (a {type(x).__name__}): "
                                     "its batches carry the targets and weights and set the batch size.")
            if validation_split:
                raise NbnetError("fit: validation_split needs arrays; with a batch source as x, give "
                                 "validation_data instead.")
            self._require_compiled()
            feeder = StreamFeeder(self, BatchStream(x, steps_per_epoch, shuffle, "x"), class_weight)
            batch_size = None
        else:
            if steps_per_epoch is not None:
                _check_steps(steps_per_epoch, "fit", "steps_per_epoch")
            batch_size = self._check_batch_size(32 if batch_size is None else batch_size)
            x, targets = self._prepare_xy(x, y)
            weights = self._sample_weights(y, targets, sample_weight, class_weight)
        validation_batch_size = self._check_batch_size(validation_batch_size or batch_size or 32)
        validation = None
        if validation_data is not None:
            if is_batch_source(validation_data):
                validation = BatchStream(validation_data, validation_steps, False, "validation_data")
            elif not isinstance(validation_data, (tuple, list)) or len(validation_data) not in (2, 3):
                raise NbnetError("validation_data must be (x_val, y_val), (x_val, y_val, val_sample_weight) or a "
                                 f"batch source, received {type(validation_data).__name__}.")
            else:
                x_val, t_val = self._prepare_xy(validation_data[0], validation_data[1], "validation_data[1]")
                w_val = None
                if len(validation_data) == 3:
                    w_val = self._sample_weights(validation_data[1], t_val, validation_data[2], None,
                                                 "validation_data[2]")
                validation = (x_val, t_val, w_val)
        elif validation_split and not streaming:
            if not 0.0 < validation_split < 1.0:
                raise NbnetError(f"validation_split must be in (0, 1), received {validation_split!r}.")
            split = int(len(x[0]) * (1.0 - validation_split))  # Keras: the last samples, before shuffling
            x, x_val = [a[:split] for a in x], [a[split:] for a in x]
            targets, t_val = [t[:split] for t in targets], [t[split:] for t in targets]
            w_val = None
            if weights is not None:
                weights, w_val = weights[:split], weights[split:]
            validation = (x_val, t_val, w_val)
        if not streaming:
            self._check_memory(min(batch_size, len(x[0])), sum(a.nbytes for a in x + targets))
        if verbose and self._announce_device:
            print(self.device_message)
            self._announce_device = False
        with self._on_device():
            if not streaming:
                feeder = ArrayFeeder(self, x, targets, weights, batch_size, shuffle, steps_per_epoch)
            return self._fit(feeder, epochs, verbose, callbacks, initial_epoch, validation,
                             (validation_freq, validation_batch_size), {"epochs": int(epochs),
                                                                        "batch_size": batch_size,
                                                                        "shuffle": bool(shuffle)})

    def _fit(self, feeder, epochs, verbose, callbacks, initial_epoch, validation, validation_settings, fit_config):
        """The epochs of a fit, batches from ``feeder`` (feeding.py); ``validation``: None,
        (x, targets, weights) arrays or a BatchStream; ``validation_settings``: (validate
        every that many epochs, the validation batch size)."""
        ops = self.ops
        history = callbacks_module.History()
        # History last, as Keras: it records what the other callbacks add to the logs.
        callback_list = list(callbacks or []) + [history]
        steps = feeder.steps
        for callback in callback_list:
            callback.set_model(self)
            callback.set_params({"verbose": verbose, "epochs": int(epochs), "steps": steps})
        self.stop_training = False
        self.diverged = None
        self.fit_config = fit_config
        totals = _StepTotals(ops, self._steps_per_execution(), len(self._heads), self._penalty_columns())
        self._start_steps()
        resume, self.resume_point = self.resume_point, None
        if resume is not None and (resume["epoch"] != int(initial_epoch) or not feeder.resumable):
            resume = None  # a different schedule than the interrupted one: start the epoch afresh
        self._initial_epoch = None
        logs = {}
        for callback in callback_list:
            callback.on_train_begin({})
        if self._initial_epoch is not None:  # set by BackupAndRestore, as in Keras
            initial_epoch = self._initial_epoch
        validation_freq, validation_batch_size = validation_settings
        for epoch in range(int(initial_epoch), epochs):
            for callback in callback_list:
                callback.on_epoch_begin(epoch, {})
            if verbose:
                print(f"Epoch {epoch + 1}/{epochs}")
            self._reset_host_metrics()
            epoch_rng_state = resume["epoch_rng_state"] if resume else self.rng.bit_generator.state
            bar = ProgressBar(steps, verbose)
            first_step = resume["step"] if resume else 0
            running = _Running.restore(self._heads, resume) if resume else _Running(self._heads)
            resume = None
            step = first_step - 1
            batches = feeder.epoch(epoch_rng_state, first_step)
            while True:
                item = next(batches, None)
                if item is not None:
                    step, xb, tb, wb, size = item
                    for callback in callback_list:
                        callback.on_train_batch_begin(step, {})
                    optimizer_step = self.optimizer.iterations + 1
                    self._train_step(xb, tb, totals.next_row(size, optimizer_step), optimizer_step, wb)
                    if not (totals.full() or self.stop_requested is not None or step + 1 == steps):
                        continue
                elif not totals.pending:
                    break
                step_losses = {}
                for done_step, size, row in totals.drain():
                    step_losses[done_step] = running.add(size, row) / size
                diverged = self._halted(step_losses)
                logs = self._logs(running)
                if diverged is not None:
                    # As Keras with TerminateOnNaN: the epoch ends here with a NaN loss, and
                    # fit returns its History; the weights are the last good step's.
                    logs["loss"] = float("nan")
                    self.diverged, self.stop_training = diverged, True
                    warnings.warn(str(diverged), RuntimeWarning, stacklevel=3)
                bar.update(step + 1, logs)
                for callback in callback_list:
                    callback.on_train_batch_end(step, logs)
                if self.stop_requested is not None and (steps is None or step + 1 < steps):
                    if feeder.resumable:
                        self.resume_point = {"epoch": epoch, "step": step + 1, "epoch_rng_state": epoch_rng_state,
                                             **running.state()}
                    if verbose:
                        print()
                    raise TrainingInterrupted(f"Training stopped at epoch {epoch + 1}, step {step + 1}"
                                              f"{f'/{steps}' if steps else ''}.", self.stop_requested)
                if self.stop_training or item is None:  # stopped by a batch callback, a divergence, or the end
                    break
            if step < first_step:
                # As Keras: a source that runs out (a generator used up by the epochs before)
                # ends the training, with a warning; the empty epoch is not recorded.
                warnings.warn(f"Your input ran out of data at epoch {epoch + 1}; interrupting training. Make sure "
                              "it can give steps_per_epoch * epochs batches (an endless generator with "
                              "steps_per_epoch, or a PyDataset).", UserWarning, stacklevel=3)
                break
            if bar.total is None:
                bar.total = step + 1  # a source of unknown length: now known
            if validation is not None and (epoch + 1) % validation_freq == 0:
                # As Keras, the fit's callbacks see the validation run's test hooks.
                validation_run = self._evaluate_batches(self._validation_batches(validation, validation_batch_size),
                                                        callback_list)
                logs.update({f"val_{k}": v for k, v in self._logs(validation_run).items()})
            bar.finish(logs)
            self.epochs_trained += 1
            for key, value in logs.items():
                self.history_log.setdefault(key, []).append(float(value))
            with self._on_host():
                for callback in callback_list:
                    callback.on_epoch_end(epoch, logs)
            if self.stop_training:
                break
        with self._on_host():
            for callback in callback_list:
                callback.on_train_end(dict(logs) if logs else {})
        return history

    def _validation_batches(self, validation, batch_size):
        if isinstance(validation, BatchStream):
            return self._stream_batches(validation)
        x, targets, weights = validation
        return self._array_batches(x, targets, weights, batch_size)

    def _epoch_order(self, count, shuffle, epoch_rng_state):
        """The epoch's sample order, drawn from the generator state at the epoch's start
        (which an interrupted run saved), leaving the generator where it is now."""
        if not shuffle:
            return np.arange(count)
        current = self.rng.bit_generator.state
        self.rng.bit_generator.state = epoch_rng_state
        order = self.rng.permutation(count)
        if current != epoch_rng_state:
            self.rng.bit_generator.state = current
        return order

    def _logs(self, running):
        """Keras's logs: each metric (prefixed by its output's name when there are several
        outputs), the loss, and with several outputs each output's own loss."""
        logs = {}
        for head in self._heads:
            for metric in head.metrics:
                counted = running.correct[head.index] / running.seen if running.seen else 0.0
                logs[head.prefix + metric.name] = counted if metric is head.counted else float(metric.result())
        logs["loss"] = running.loss / running.seen if running.seen else float("nan")
        if len(self._heads) > 1:
            for head in self._heads:
                logs[f"{head.name}_loss"] = running.losses[head.index] / running.seen if running.seen else float("nan")
        return logs

    def _array_batches(self, x, targets, weights, batch_size):
        """(inputs, targets, weights or None) on the device, a chunk of host arrays at a time."""
        ops, chunk = self.ops, min(batch_size, INFERENCE_CHUNK)
        for start in range(0, len(x[0]), chunk):
            yield (_chunk_to_device(ops, x, start, chunk), _chunk_to_device(ops, targets, start, chunk, convert=False),
                   None if weights is None else ops.to_device(weights[start:start + chunk]))

    def _stream_batches(self, stream):
        """(inputs, targets, weights or None) on the device, a BatchStream's batch at a time."""
        for x, y, weight in stream.epoch():
            if y is None:
                raise NbnetError(f"{stream.argument}: a batch has no targets; evaluation needs (x, y) or "
                                 "(x, y, sample_weight) batches.")
            xs, targets = self._prepare_xy(x, y, "y (in a batch)")
            weights = self._sample_weights(y, targets, weight, None)
            yield (_chunk_to_device(self.ops, xs, 0, len(xs[0])), _chunk_to_device(self.ops, targets, 0, len(xs[0]),
                                                                                   convert=False),
                   None if weights is None else self.ops.to_device(weights))

    def _evaluate_batches(self, batches, callback_list=()):
        """The _Running totals over ``batches`` (see _array_batches). Given callbacks, their
        test hooks run (each batch's running logs are then read back as it ends)."""
        penalty = self._penalty()
        totals = _StepTotals(self.ops, INFERENCE_CHUNK, len(self._heads), 0)
        fused = self._fused()
        self._split_metrics()
        running = _Running(self._heads)

        def add_drained():
            for _, size, row in totals.drain():
                running.add(size, row, penalty * size)

        for callback in callback_list:
            callback.on_test_begin({})
        for index, (xb, tb, wb) in enumerate(batches):
            for callback in callback_list:
                callback.on_test_batch_begin(index, {})
            outputs = self._forward(xb, training=False, fused=fused)
            row = totals.next_row(len(tb[0]))
            self._loss_and_grad(outputs, tb, row, wb, fused)
            self._update_metrics(outputs, tb, row)
            if callback_list or totals.full():
                add_drained()
            if callback_list:
                logs = self._logs(running)
                for callback in callback_list:
                    callback.on_test_batch_end(index, logs)
        add_drained()
        for callback in callback_list:
            callback.on_test_end(self._logs(running))
        return running

    @blas_limited
    def evaluate(self, x=None, y=None, batch_size=None, verbose="auto", sample_weight=None, steps=None,
                 callbacks=None, return_dict=False):
        """[loss, accuracy] (just the loss when compiled without metrics), or with
        ``return_dict`` a dict keyed as the logs are. ``x`` may be a batch source (see
        fit), read for ``steps`` batches when given, else to its end."""
        start = time.perf_counter()
        callback_list = self._with_model(callbacks)
        if is_batch_source(x):
            if y is not None or sample_weight is not None:
                raise NbnetError("evaluate: with a batch source as x, its batches carry the targets and weights; "
                                 "leave y and sample_weight out.")
            self._require_compiled()
            stream = BatchStream(x, steps, False, "x")
            with self._on_device():
                running = self._evaluate_batches(self._stream_batches(stream), callback_list)
            batch_count = stream.length or 1
        else:
            x, targets = self._prepare_xy(x, y)
            weights = self._sample_weights(y, targets, sample_weight, None)
            batch_size = self._check_batch_size(32 if batch_size is None else batch_size)
            if steps is not None:  # Keras: the first ``steps`` batches
                used = _check_steps(steps, "evaluate") * batch_size
                x, targets = [a[:used] for a in x], [t[:used] for t in targets]
                weights = None if weights is None else weights[:used]
            with self._on_device():
                running = self._evaluate_batches(self._array_batches(x, targets, weights, batch_size), callback_list)
            batch_count = math.ceil(len(x[0]) / batch_size)
        logs = self._logs(running)
        if verbose:
            bar = ProgressBar(batch_count, verbose=2)
            bar.start = start
            bar.finish(logs)
        return self._results(logs, return_dict)

    def _results(self, logs, return_dict=False):
        """What evaluate and train_on_batch return: the loss, or [loss, metrics...] in
        compile's order (with several outputs: the loss, each output's loss, then the
        metrics), or a dict keyed as the logs."""
        names = self.metrics_names
        if return_dict:
            return {name: logs[name] for name in names}
        return [logs[name] for name in names] if len(names) > 1 else logs["loss"]

    @property
    def metrics_names(self):
        heads = getattr(self, "_heads", None) or []
        names = ["loss"]
        if len(heads) > 1:
            names += [f"{head.name}_loss" for head in heads]
        return names + [head.prefix + metric.name for head in heads for metric in head.metrics]

    def predict(self, x, batch_size=None, verbose=0, steps=None, callbacks=None):
        """The outputs for ``x``: an array, or with several outputs a list (a dict when
        the model's outputs were given as one). ``x`` may be a batch source (see fit):
        each batch's x is used, targets ignored."""
        if is_batch_source(x):
            parts = [self.predict(batch_x, batch_size=INFERENCE_CHUNK, callbacks=callbacks)
                     for batch_x, _, _ in BatchStream(x, steps, False, "x").epoch()]
            if not parts:
                raise NbnetError("predict: the batch source gave no batches.")
            if isinstance(parts[0], dict):
                return {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}
            if isinstance(parts[0], list):
                return [np.concatenate(group) for group in zip(*parts)]
            return np.concatenate(parts)
        batch_size = 32 if batch_size is None else batch_size
        x = self._prepare_x(x)
        batch_size = self._check_batch_size(batch_size)
        if steps is not None:  # Keras: the first ``steps`` batches
            x = [a[:_check_steps(steps, "predict") * batch_size] for a in x]
        return self._predict_prepared(x, batch_size, callbacks)

    def _predict_prepared(self, x, batch_size, callbacks):
        """predict on inputs _prepare_x has made (a list of arrays)."""
        count = len(x[0])
        if count <= inference_program.RECORD_MAX_SAMPLES and not callbacks and self.ops is cpu:
            # A recorded shape goes straight to its program (which sets its own thread
            # count): no device session, no chunks, BLAS held to one thread only where
            # the program's products could use more.
            program = self._plan.programs.current(x, 1 if count == 1 else numba_thread_count())
            if program is not None:
                if program.blas_single:
                    return self._program_outputs(program, x)
                with single_threaded_blas():
                    return self._program_outputs(program, x)
        return self._predict_chunks(x, batch_size, callbacks)

    def _program_outputs(self, program, x):
        return self._structured([np.array(y) for y in program.run(x)])

    @blas_limited
    def _predict_chunks(self, x, batch_size, callbacks):
        count = len(x[0])
        outputs = [np.empty((count,) + tuple(t.sample_shape), np.float32) for t in self._output_tensors]
        recordable = count <= inference_program.RECORD_MAX_SAMPLES
        threads = numba_thread_count()
        lowered = 1 if count == 1 else threads  # see threads.numba_threads
        sample_bytes = 4 * self._plan.values_per_sample
        chunk = min(batch_size, max(INFERENCE_CHUNK, PREDICT_CHUNK_BYTES // max(sample_bytes, 1)))
        callback_list = self._with_model(callbacks)
        for callback in callback_list:
            callback.on_predict_begin({})
        with self._on_device(), numba_threads(lowered):
            ops = self.ops
            for index, start in enumerate(range(0, count, chunk)):
                for callback in callback_list:
                    callback.on_predict_batch_begin(index, {})
                xs = _chunk_to_device(ops, x, start, chunk)
                # A large predict's last, smaller chunk is not recorded: once per predict.
                ys = self._inference_forward(xs, threads) if recordable else self._forward(xs, training=False)
                for y, out in zip(ys, outputs):
                    ops.copy_to_host(y, out[start:start + chunk])
                for callback in callback_list:
                    callback.on_predict_batch_end(index, {"outputs": self._structured([o[start:start + chunk]
                                                                                        for o in outputs])})
        for callback in callback_list:
            callback.on_predict_end({})
        return self._structured(outputs)

    def _inference_forward(self, xs, threads):
        """The outputs (a list) of an inference forward of the small batch ``xs`` (on the
        device), through the plan's recorded programs on the CPU (see inference_program);
        ``threads``: the Numba threads before one sample lowered them."""
        if self.ops is not cpu:
            return self._forward(xs, training=False)
        return self._plan.programs.forward(xs, lambda inputs: self._forward(inputs, training=False), cpu, threads)

    def _structured(self, outputs):
        """Per-output arrays as the model's outputs were given: one, a list, or a dict."""
        structure = self._outputs_structure
        if isinstance(structure, dict):
            return dict(zip(structure, outputs))
        return outputs if isinstance(structure, (list, tuple)) else outputs[0]

    def _with_model(self, callbacks):
        callback_list = list(callbacks or [])
        for callback in callback_list:
            callback.set_model(self)
        return callback_list

    def predict_on_batch(self, x):
        x = self._prepare_x(x)
        return self._predict_prepared(x, max(len(x[0]), 1), None)

    def _call_on_arrays(self, x, training):
        """Keras's ``model(x)`` on arrays: inference unless ``training=True`` (Dropout
        active, BatchNormalization on the batch's statistics, which it also moves into its
        moving averages, as Keras does). Returns an array with ``.numpy()``."""
        if not training:
            return as_tensor(self.predict_on_batch(x))
        x = self._prepare_x(x)
        with self._on_device():
            outputs = self._forward(_chunk_to_device(self.ops, x, 0, len(x[0])), training=True)
            outputs = [as_tensor(self.ops.to_host(y).copy()) for y in outputs]
        return self._structured(outputs)

    @blas_limited
    def train_on_batch(self, x, y, sample_weight=None, class_weight=None, return_dict=False):
        x, targets = self._prepare_xy(x, y)
        weights = self._sample_weights(y, targets, sample_weight, class_weight)
        with self._on_device():
            ops = self.ops
            self._start_steps()
            totals = _StepTotals(ops, 1, len(self._heads), self._penalty_columns())
            step = self.optimizer.iterations + 1
            count = len(x[0])
            self._train_step(_chunk_to_device(ops, x, 0, count), _chunk_to_device(ops, targets, 0, count, False),
                             totals.next_row(count, step), step, None if weights is None else ops.to_device(weights))
            running = _Running(self._heads)
            ((_, _, row),) = totals.drain()
            diverged = self._halted({step: running.add(count, row) / count})
            if diverged is not None:
                raise diverged
        return self._results(self._logs(running), return_dict)

    def _sample_weights(self, y, targets, sample_weight, class_weight, argument="sample_weight"):
        """One weight per sample, shared by every output (see sample_weights), or None."""
        if class_weight is not None and len(self._heads) > 1:
            raise NbnetError("class_weight is only supported for models with one output (as Keras); give "
                             "sample_weight instead.")
        first = y[self._heads[0].name] if isinstance(y, dict) else y[0] if len(self._heads) > 1 else y
        return sample_weights(first, targets[0], sample_weight, class_weight, argument)


def sample_weights(y, targets, sample_weight, class_weight, argument="sample_weight"):
    """Keras's per-sample weights as float32 (N,), or None: ``sample_weight`` as given, or
    ``class_weight`` ({class id: weight}, classes it leaves out weigh 1) looked up by each
    sample's class (its id, the argmax of a one-hot row, or a 0/1 target rounded)."""
    count = len(targets)
    weights = None
    if sample_weight is not None and class_weight is not None:
        raise NbnetError("fit: give class_weight or sample_weight, not both (as Keras); multiply the class weights "
                         "into sample_weight yourself.")
    if sample_weight is not None:
        weights = np.asarray(sample_weight, np.float64)
        if weights.shape not in ((count,), (count, 1)):
            raise ShapeError(f"{argument}: expected one weight per sample, shape ({count},), but received shape "
                             f"{weights.shape}.")
        weights = weights.reshape(count)
        if not np.isfinite(weights).all() or (weights < 0).any():
            raise NbnetError(f"{argument}: weights must be finite and non-negative.")
    if class_weight is not None:
        if not isinstance(class_weight, dict):
            raise NbnetError(f"class_weight: expected a dict {{class id: weight}}, received {type(class_weight).__name__}.")
        y = np.asarray(y)
        rows = y.reshape(count, -1)
        classes = rows.argmax(axis=1) if rows.shape[1] > 1 else np.round(rows[:, 0]).astype(np.int64)
        by_class = np.array([float(class_weight.get(int(c), 1.0)) for c in classes])
        weights = by_class
    return None if weights is None else weights.astype(np.float32)


def _chunk_to_device(ops, arrays, start, size, convert=True):
    """Rows start..start+size of each array, on the device; with ``convert``, as the
    float32 the layers compute with (uint8 inputs are converted a chunk at a time)."""
    chunks = [a[start:start + size] for a in arrays]
    # A read-only array (np.load's mmap, onnx's tensors) is another type to Numba: every
    # kernel it reached would compile again, so such a chunk is copied.
    return [ops.to_device(c if (c.dtype == np.float32 and c.flags.writeable) or not convert else
                          c.astype(np.float32)) for c in chunks]


def _first_non_finite_sample(x, chunk=4096):
    """The index of the first sample holding NaN or Inf, or None (``x`` float32, as
    _prepare_x makes it). One vectorised pass (kernels/training.values_finite: no mask, no
    overflow) rules both out (1000 MNIST images: NumPy's isfinite and all 0.20 ms, its sum
    0.21, this 0.14; one image 1.24 us against 0.39); otherwise the samples are checked in
    slices, so a mask of the whole array (47 MB for MNIST, on top of the peak) never exists
    at once."""
    if values_finite(x.reshape(-1)):
        return None
    for start in range(0, len(x), chunk):
        finite = np.isfinite(x[start:start + chunk])
        if not finite.all():
            return start + int(np.flatnonzero(~finite.reshape(len(finite), -1).all(axis=1))[0])
    return None


class _StepTotals:
    """The totals of a run of steps, one row each: per output its summed batch loss, then
    per output its correct count, then one column per regularization penalty. They stay
    on the device where the steps ran (kernels write them through ``total_out``) until
    ``drain`` reads them back in one copy."""

    def __init__(self, ops, capacity, outputs, penalties):
        self.ops = ops
        self.values = ops.zeros((capacity, 2 * outputs + penalties), np.float64)
        self.pending = []  # (optimizer step, batch size) of each filled row

    def next_row(self, size, step=0):
        row = self.values[len(self.pending)]
        self.pending.append((step, size))
        return row

    def full(self):
        return len(self.pending) == self.values.shape[0]

    def drain(self):
        """[(step, batch size, row of host values)] of the pending rows."""
        values = self.ops.to_host(self.values)
        done = [(step, size, np.array(values[k])) for k, (step, size) in enumerate(self.pending)]
        self.pending = []
        return done


class _Running:
    """Sums over the steps of an epoch (or the chunks of an evaluation): the loss the
    optimizer minimises (outputs' losses times their weights, plus the penalties), and per
    output its own loss and correct count."""

    def __init__(self, heads):
        self.weights = [head.weight for head in heads]
        self.loss, self.seen = 0.0, 0
        self.losses, self.correct = [0.0] * len(heads), [0.0] * len(heads)

    def add(self, size, row, extra=0.0):
        """Add a drained _StepTotals row of ``size`` samples (``extra``: more summed loss);
        returns the row's summed total loss."""
        count = len(self.weights)
        total = sum(w * float(row[i]) for i, w in enumerate(self.weights)) + float(row[2 * count:].sum()) * size
        total += extra
        self.loss += total
        self.seen += size
        for i in range(count):
            self.losses[i] += float(row[i])
            self.correct[i] += float(row[count + i])
        return total

    def state(self):
        """For a resume point (JSON)."""
        return {"loss_sum": self.loss, "losses": list(self.losses), "correct": list(self.correct), "seen": self.seen}

    @classmethod
    def restore(cls, heads, state):
        running = cls(heads)
        running.loss, running.seen = float(state["loss_sum"]), state["seen"]
        correct = state["correct"]
        # Files from before several outputs kept one loss and one count.
        running.correct = list(correct) if isinstance(correct, list) else [float(correct)]
        running.losses = list(state.get("losses", [state["loss_sum"]]))
        return running
