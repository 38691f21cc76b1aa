"""Sequential: the Keras-style model. Layers run in order; all trainable parameters live
in one flat float32 vector (each layer holds views into it), so the optimizer updates
the whole model in one kernel launch per step and saving or restoring is one copy.

The same training step runs on the CPU and on a GPU (``compile(device=...)`` or
``model.to(device)``): layers launch their kernels through the device module ``ops``.
On a GPU, each fit, evaluate or predict copies the weights, optimizer slots and layer
state to the device at the start and back at the end (and at each epoch's end, for the
callbacks), so between calls the host arrays are current: saving, ``get_weights`` and
ONNX export never see device arrays. During fit the training set is copied to the GPU
once, batches are gathered there, and the per-step loss and accuracy totals stay on the
device until the loop reads them back, every ``steps_per_execution`` steps (Keras's name).
"""

import math
import time
import warnings
from contextlib import contextmanager

import numpy as np

from . import callbacks as callbacks_module
from . import devices, losses, metrics as metrics_module, optimizers, utils
from .devices import cpu
from .errors import NbnetError, ResourceError, ShapeError, TrainingDiverged, TrainingInterrupted
from .layers import Conv2D, Dropout, InputLayer, Layer, MaxPooling2D
from .layers.base import unique_name
from .progress import ProgressBar
from .tensor import as_tensor
from .threads import blas_limited


# Inference runs in chunks of at most this many samples whatever the batch size asked for:
# the results are the same, a batch of 1000 CNN images would hold ~300 MB of buffers, and
# at the usual training batch the training buffers are reused.
INFERENCE_CHUNK = 128
# Steps between reading the loss and accuracy back from a GPU (each read waits for the
# device); on the CPU every step is read, which costs nothing.
GPU_STEPS_PER_EXECUTION = 20


class Sequential:
    # Run each Conv2D + MaxPooling2D pair as one pass (see _fuse_conv_pool); read at build.
    fuse_layers = True

    def __init__(self, layers=None, name=None, seed=None):
        # Keras's names: sequential, sequential_1, ... (backend.clear_session starts them afresh).
        self.name = name or unique_name("sequential")
        self.layers = []
        self.seed = seed
        self.built = False
        self.optimizer = self.loss = None
        self.metrics = []
        self.stop_training = False
        # The last fit's TrainingDiverged (it stopped at a non-finite loss), else None.
        self.diverged = None
        self.epochs_trained = 0
        self.backup_epoch = None  # see callbacks.BackupAndRestore
        self.history_log = {}
        # Set (to a signal number) by a signal handler: fit stops cleanly after the current step.
        self.stop_requested = None
        # Where an interrupted fit stopped inside an epoch, so a resumed fit continues exactly.
        self.resume_point = None
        # The last fit's schedule, kept in the model file so a resumed run repeats it.
        self.fit_config = None
        self.ops, self.device_message, self._announce_device = cpu, None, False
        self.steps_per_execution = None
        self._on_device_depth = 0
        self._host_arrays = None  # during a GPU session: the host arrays it copies back into
        self._scratch_buffers = {}
        self._input_layer = None
        self.output_shapes = []
        for layer in layers or []:
            self.add(layer)

    # -- construction ----------------------------------------------------------------
    def add(self, layer):
        """Append ``layer``. As in Keras, once the input shape is known (an ``Input`` first,
        or a first layer given ``input_shape``) each added layer is built at once, so
        ``summary()`` works before ``compile``."""
        if isinstance(layer, Sequential):
            self._add_model(layer)
            return
        if isinstance(layer, InputLayer):
            if self.layers or self._input_layer is not None:
                raise NbnetError(f"Sequential '{self.name}': an Input can only come first, received "
                                 f"'{layer.name}' after {len(self.layers)} layers.")
            self._input_layer = layer
            return
        if not isinstance(layer, Layer):
            raise NbnetError(f"Sequential.add expects an nbnet layer, received {type(layer).__name__}.")
        if self.built:
            self._build_layers([layer])
            self.layers.append(layer)
            self._finish_build()
            return
        self.layers.append(layer)
        if self._known_input_shape() is not None:
            try:
                self.build()
            except NbnetError:
                self.layers.pop()  # nothing half-added: the model stays as it was
                raise

    def pop(self):
        """Remove the last layer, as Keras's Sequential.pop (the others keep their weights)."""
        if not self.layers:
            raise NbnetError(f"Sequential '{self.name}' has no layer to pop.")
        layer = self.layers.pop()
        if self.built:
            self.output_shapes.pop()
            if self.layers:
                self._finish_build()
            else:
                self.built = False
        return layer

    def _add_model(self, model):
        """A model used as a layer (Keras's ``Sequential([model, layers.Softmax()])``): its
        layers join this model, shared, so both see the same weights; whichever model runs
        next gathers them (see _claim_layers)."""
        if not model.layers:
            raise NbnetError(f"Sequential '{self.name}': the model '{model.name}' added to it has no layers.")
        if not self.layers and self._input_layer is None and model.built:
            self._input_layer = InputLayer(shape=model.input_shape)
        for layer in model.layers:
            self.add(layer)

    def _known_input_shape(self):
        if self._input_layer is not None:
            return self._input_layer.shape
        return self.layers[0].input_shape if self.layers else None

    def build(self, input_shape=None):
        """Create every layer's weights for ``input_shape`` (batch axis optional: Keras's
        ``build((None, 28, 28, 1))`` and ``(28, 28, 1)`` both work). A model already built
        for that shape stays as it is."""
        if not self.layers:
            raise NbnetError(f"Sequential '{self.name}' has no layers to build.")
        if input_shape is None:
            input_shape = self._known_input_shape()
            if input_shape is None:
                raise NbnetError(f"Sequential '{self.name}': give the first layer input_shape=(...), start with "
                                 "keras.Input(shape=...), or call model.build(input_shape), before using the model.")
        shape = tuple(input_shape)
        if shape and shape[0] is None:
            shape = shape[1:]
        shape = tuple(int(d) for d in shape)
        if self.built and shape == self.input_shape:
            self._fuse_conv_pool()  # fuse_layers may have changed since
            return
        if self.built:
            raise ShapeError(f"Sequential '{self.name}' is built for input shape {(None,) + self.input_shape}; it "
                             f"cannot be rebuilt for {(None,) + shape} (its weights have those shapes). Build a new "
                             "model for the other shape.")
        self.input_shape = shape
        if self.seed is None:
            self.seed = utils.next_model_seed()
        self.rng = np.random.default_rng(self.seed)
        self.output_shapes = []
        self._build_layers(self.layers)
        self._finish_build()

    def _build_layers(self, new_layers):
        """Build ``new_layers``, which follow the layers already in ``output_shapes``."""
        shape = self.output_shapes[-1] if self.output_shapes else self.input_shape
        for layer in new_layers:
            if layer.built:  # a layer of another model (or a rebuilt one) keeps its weights, as in Keras
                if tuple(layer.built_input_shape) != tuple(shape):
                    raise ShapeError(f"Layer '{layer.name}' was built for input shape "
                                     f"{(None,) + tuple(layer.built_input_shape)}, but in model '{self.name}' it "
                                     f"receives {(None,) + tuple(shape)}; use a new layer there.")
                shape = layer.compute_output_shape(shape)
            else:
                shape = layer.build(shape, self.rng)
            self.output_shapes.append(shape)
            if isinstance(layer, Dropout) and layer.seed is None:
                layer.rng = self.rng  # one Generator for shuffling and dropout: one state to save

    def _finish_build(self):
        """Set the layers up for this model: which need input gradients (those after a
        trainable weight), which conv runs its pool, the flat vectors. Run after a build,
        an add or pop, a trainable change, and when layers shared with another model
        come back (see _claim_layers)."""
        has_params_before = False
        for layer in self.layers:
            layer.owner = self
            layer.needs_input_grad = has_params_before
            has_params_before = has_params_before or (bool(layer.params) and layer.trainable)
        self._fuse_conv_pool()
        self._gather_parameters()
        self.built = True

    def _claim_layers(self):
        """Layers shared with another model are set up for whichever model ran last; set
        them up for this one again (the weights live in the layers: no value changes)."""
        if self.built and any(getattr(layer, "owner", None) is not self for layer in self.layers):
            self._finish_build()

    def _fuse_conv_pool(self):
        """Each Conv2D followed by a MaxPooling2D it can absorb (see Conv2D.can_absorb) runs
        the pool in its own pass: the conv-sized activation and its gradient are never
        written. Outputs and gradients equal running them apart (a bias gradient sums in
        another order); ``fuse_layers = False`` turns it off. A model's output layer is
        never absorbed: the loss works on it."""
        for layer in self.layers:
            layer.absorbed = False
            if isinstance(layer, Conv2D):
                layer.pool = None
        for before, after in zip(self.layers, self.layers[1:-1]):
            if (self.fuse_layers and isinstance(before, Conv2D) and isinstance(after, MaxPooling2D)
                    and before.can_absorb(after)):
                before.pool, after.absorbed = after, True

    def _gather_parameters(self):
        """Move trainable weights and their gradients into two flat vectors and rebind
        each layer's arrays to views of them; frozen layers get arrays of their own."""
        previous = {(id(layer), key) for layer, key in getattr(self, "_flat_entries", [])}
        self._flat_entries = [(layer, key) for layer in self.layers if layer.trainable for key in layer.params]
        for layer in self.layers:
            if not layer.trainable:
                for key in layer.params:
                    if (id(layer), key) in previous:
                        layer.params[key] = layer.params[key].copy()
                        layer.grads[key] = np.zeros_like(layer.params[key])
        sizes = [layer.params[key].size for layer, key in self._flat_entries]
        total = sum(sizes)
        # Where each weight array starts and ends in the flat vectors (the optimizer's clipnorm).
        self._segments = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        flat_params = np.empty(total, np.float32)
        offset = 0
        for layer, key in self._flat_entries:
            value = layer.params[key]
            flat_params[offset:offset + value.size] = value.reshape(-1)
            offset += value.size
        self._bind_flat(flat_params, np.zeros(total, np.float32))

    def _bind_flat(self, flat_params, flat_grads):
        """Make ``flat_params``/``flat_grads`` the model's vectors, each layer's trainable
        weights and gradients views of them."""
        self.flat_params, self.flat_grads = flat_params, flat_grads
        offset = 0
        for layer, key in self._flat_entries:
            shape = tuple(layer.params[key].shape)
            size = int(np.prod(shape))
            layer.params[key] = flat_params[offset:offset + size].reshape(shape)
            layer.grads[key] = flat_grads[offset:offset + size].reshape(shape)
            offset += size

    # -- devices -------------------------------------------------------------------------
    def to(self, device):
        """Compute on ``device`` from now on: 'cpu', 'cuda' (an NVIDIA GPU; an error that
        names what is missing when none is usable) or 'auto' (the GPU when usable, else
        the CPU, saying which). The weights stay where they are between calls, so a model
        trained on one device continues on the other. Returns the model."""
        ops, message = devices.resolve(device)
        self.ops, self.device_message = ops, message
        self._announce_device = devices.normalise(device) != "cpu"
        return self

    @property
    def device(self):
        return self.ops.name

    @contextmanager
    def _on_device(self):
        """Run the enclosed computation on ``self.ops``: the weights, gradients, optimizer
        slots and layer state move there, and back into the host arrays at the end."""
        ops = self.ops
        if not self._on_device_depth:
            self._claim_layers()
        self._on_device_depth += 1
        if ops is cpu or self._on_device_depth > 1:
            try:
                yield
            finally:
                self._on_device_depth -= 1
            return
        host = self._host_arrays = self._arrays()
        try:
            self._bind_arrays(self._arrays_to(ops, host), ops)
            yield
        finally:
            try:
                self._copy_back(host)
            finally:
                self._bind_arrays(host, cpu)
                self._on_device_depth -= 1

    @contextmanager
    def _on_host(self):
        """Inside ``_on_device``: make the host arrays current and the model a CPU one for
        the enclosed code (callbacks that save, read or set weights), then carry any
        change back to the device."""
        ops = self.ops
        if ops is cpu or not self._on_device_depth:
            yield
            return
        device_arrays, depth = self._arrays(), self._on_device_depth
        host = self._host_arrays
        self._copy_back(host)
        self._bind_arrays(host, cpu)
        self._on_device_depth = 0  # a fit or predict called from here starts its own session
        try:
            yield
        finally:
            self._on_device_depth = depth
            self._bind_arrays(self._arrays_to(ops, self._arrays(), into=device_arrays), ops)

    def _arrays(self):
        """Every array the model computes with: the flat vectors, the arrays outside them
        (frozen layers' weights and gradients, BatchNormalization's moving statistics) and
        the optimizer's slots."""
        flat = {(id(layer), key) for layer, key in self._flat_entries}
        loose = {(index, store, key): getattr(layer, store)[key] for index, layer in enumerate(self.layers)
                 for store in ("params", "grads", "state") for key in getattr(layer, store)
                 if store == "state" or (id(layer), key) not in flat}
        slots = dict(self.optimizer.slots) if self.optimizer is not None else {}
        return {"flat_params": self.flat_params, "flat_grads": self.flat_grads, "loose": loose, "slots": slots}

    def _arrays_to(self, ops, arrays, into=None):
        """``arrays`` copied to the device ``ops``: into the matching arrays of ``into``
        where given (so device arrays keep their identity), else into new ones."""
        def move(value, target):
            if target is not None and tuple(target.shape) == tuple(value.shape):
                ops.upload(value, target)
                return target
            return ops.to_device(value)
        into = into or {"flat_params": None, "flat_grads": None, "loose": {}, "slots": {}}
        return {"flat_params": move(arrays["flat_params"], into["flat_params"]),
                "flat_grads": into["flat_grads"] if into["flat_grads"] is not None
                else ops.zeros(arrays["flat_grads"].shape[0], np.float32),
                "loose": {k: move(v, into["loose"].get(k)) for k, v in arrays["loose"].items()},
                "slots": {k: move(v, into["slots"].get(k)) for k, v in arrays["slots"].items()}}

    def _bind_arrays(self, arrays, ops):
        self._bind_flat(arrays["flat_params"], arrays["flat_grads"])
        for (index, store, key), value in arrays["loose"].items():
            getattr(self.layers[index], store)[key] = value
        if self.optimizer is not None:
            self.optimizer.slots = dict(arrays["slots"])
        for layer in self.layers:
            layer.set_device(ops)
        if ops is cpu:
            self._host_arrays = arrays

    def _copy_back(self, host):
        """Copy the device's current weights, state and slots into the host arrays ``host``
        (gradients are scratch and stay behind); slots created on the device are added."""
        ops, current = self.ops, self._arrays()
        ops.copy_to_host(current["flat_params"], host["flat_params"])
        for key, value in current["loose"].items():
            if key[1] != "grads":
                ops.copy_to_host(value, host["loose"][key])
        for name, value in current["slots"].items():
            if name in host["slots"] and tuple(host["slots"][name].shape) == tuple(value.shape):
                ops.copy_to_host(value, host["slots"][name])
            else:
                host["slots"][name] = ops.to_host(value)

    @property
    def output_shape(self):
        return self.output_shapes[-1]

    def compile(self, optimizer="rmsprop", loss=None, metrics=None, device=None, steps_per_execution=None):
        """Keras's compile, plus ``device`` ('cpu', 'cuda' or 'auto'; see ``to``).
        ``steps_per_execution``: steps between reading the loss and metrics back (and
        calling the batch callbacks); default 1 on the CPU, GPU_STEPS_PER_EXECUTION on a GPU."""
        if loss is None:
            raise NbnetError(f"Sequential '{self.name}': compile needs a loss, e.g. loss='sparse_categorical_crossentropy'.")
        if steps_per_execution is not None and int(steps_per_execution) < 1:
            raise NbnetError(f"steps_per_execution must be at least 1, received {steps_per_execution!r}.")
        if device is not None:
            self.to(device)
        self.optimizer = optimizers.get(optimizer)
        self.loss = losses.get(loss)
        self.metrics = metrics_module.resolve(metrics, self.loss)
        self.steps_per_execution = None if steps_per_execution is None else int(steps_per_execution)
        if not self.built and self._known_input_shape() is not None:
            self.build()
        elif self.built:
            self._apply_trainable()

    def _apply_trainable(self):
        """Keras applies ``layer.trainable = False`` (or True) at the next compile: the
        flat vectors are gathered afresh when the set of trainable layers changed."""
        if [(id(layer), key) for layer, key in self._flat_entries] != [
                (id(layer), key) for layer in self.layers if layer.trainable for key in layer.params]:
            self._finish_build()

    # -- input checks ------------------------------------------------------------------
    def _ensure_built(self, x):
        if not self.built:
            self.build(np.shape(x)[1:])

    def _prepare_x(self, x, argument="x"):
        x = np.asarray(x)
        if x.dtype.kind not in "fiub":
            raise NbnetError(f"{argument}: expected a numeric array, received dtype {x.dtype}.")
        if x.size == 0 or x.ndim == 0:
            raise ShapeError(f"{argument}: received an empty array of shape {x.shape}; give at least one sample.")
        self._ensure_built(x)
        expected = self.input_shape
        if x.shape[1:] != expected and x.shape[1:] == expected[:-1] and expected[-1] == 1:
            x = x[..., np.newaxis]  # (N, 28, 28) for a one-channel (28, 28, 1) input, as users expect
        if x.shape[1:] != expected:
            raise ShapeError(f"{argument}: model '{self.name}' expects input shape {(None,) + expected}, "
                             f"but received {x.shape}.")
        if x.dtype == np.uint8:
            # Kept as uint8 (a quarter of float32's memory); each batch is converted as it is
            # gathered, to the same float32 values a full conversion would give.
            return np.ascontiguousarray(x)
        x = np.ascontiguousarray(x, dtype=np.float32)
        bad = _first_non_finite_sample(x)
        if bad is not None:
            raise NbnetError(f"{argument}: sample {bad} contains NaN or Inf values; clean or drop such samples first.")
        return x

    def _prepare_xy(self, x, y):
        x = self._prepare_x(x)
        if y is None:
            raise NbnetError("y: training and evaluation need targets; received None.")
        y = np.asarray(y)
        if len(y) != len(x):
            raise ShapeError(f"x and y must have the same number of samples; received {len(x)} and {len(y)}.")
        self._require_compiled()
        return x, self.loss.prepare_targets(y, int(np.prod(self.output_shape)))

    def _require_compiled(self):
        if self.loss is None:
            raise NbnetError(f"Sequential '{self.name}' must be compiled before training or evaluation: "
                             "call model.compile(optimizer=..., loss=...).")

    @staticmethod
    def _check_batch_size(batch_size):
        if int(batch_size) < 1:
            raise NbnetError(f"batch_size must be at least 1, received {batch_size!r}.")
        return int(batch_size)

    # -- one batch -------------------------------------------------------------------------
    def _fused(self):
        """Whether the output activation is folded into the loss (softmax + cross-entropy)."""
        last = self.layers[-1]
        return (not self.loss.from_logits and self.loss.fusable_activation is not None
                and getattr(last, "activation", None) == self.loss.fusable_activation)

    def _forward(self, x, training):
        for layer in self.layers:
            if not layer.absorbed:
                x = layer.forward(x, training=training)
        return x

    def _loss_and_grad(self, outputs, targets, total_out, weights=None):
        """The loss gradient (a reused buffer) and whether the output activation was fused;
        the batch's summed loss (each sample's times its weight, when ``weights`` are given)
        goes into ``total_out`` (a (1,) float64 array, on the device)."""
        fused = self._fused()
        source = self.layers[-1].logits if fused else outputs
        source = source.reshape(outputs.shape[0], source.size // max(outputs.shape[0], 1))
        grad = self._scratch("loss_grad", source.shape, source.dtype)
        self.loss.compute(source, targets, grad, fused or self.loss.from_logits, self.ops, total_out, weights)
        return grad.reshape(outputs.shape), fused

    def _scratch(self, key, shape, dtype):
        """A model-level buffer of the current device, reused while its shape stays."""
        key = (self.ops.name, key)
        shape = tuple(int(d) for d in shape)
        buf = self._scratch_buffers.get(key)
        if buf is None or tuple(buf.shape) != shape or buf.dtype != dtype:
            buf = self._scratch_buffers[key] = self.ops.empty(shape, dtype)
        return buf

    def _train_step(self, x, targets, totals, step, weights=None):
        """One optimizer step on a batch already on the device. Its summed loss, correct
        count and penalties go into ``totals`` (a _StepTotals row); a step whose loss or
        gradients are not finite sets the halt flag instead of updating the weights."""
        ops = self.ops
        self.layers[-1].keep_logits = self._fused()
        ops.fill_zero(self.flat_grads)
        with np.errstate(all="ignore"):  # overflow shows up as a non-finite loss: the halt flag
            outputs = self._forward(x, training=True)
            grad, fused = self._loss_and_grad(outputs, targets, totals[0:1], weights)
            column = 2
            for layer in self.layers:
                count = len(layer.active_regularizers())
                if count:
                    layer.regularization([totals[column + i:column + i + 1] for i in range(count)])
                    column += count
            grad = self.layers[-1].backward(grad, from_logits=True) if fused else self.layers[-1].backward(grad)
            for layer in reversed(self.layers[:-1]):
                if grad is None:
                    break  # no trainable weight before this point (frozen or weightless layers)
                if not layer.absorbed:
                    grad = layer.backward(grad)
        ops.check_finite(self.flat_grads, totals[0:1], step, self._halt)
        self.optimizer.apply(self.flat_params, self.flat_grads, ops, self._halt, self._segments)
        self._update_metrics(outputs, targets, totals[1:2])

    def _split_metrics(self):
        """Decide, for the metrics compiled, which one the device counts (an accuracy the
        correct count gives exactly) and which update on the host; their states start afresh.
        As Keras's compile(metrics=...), they ignore sample weights."""
        width = int(np.prod(self.output_shape))
        self._counted = next((m for m in self.metrics if metrics_module.counted_on_device(m, self.loss, width)), None)
        self._host_metrics = [m for m in self.metrics if m is not self._counted]
        for metric in self._host_metrics:
            metric.reset_state()

    def _update_metrics(self, outputs, targets, correct_out):
        if self._counted is not None:
            metrics_module.correct_count(outputs, targets, self.loss.sparse_targets, ops=self.ops, out=correct_out)
        if self._host_metrics:
            y_pred = self.ops.to_host(outputs).reshape((-1,) + tuple(self.output_shape))
            y_true = self.ops.to_host(targets)
            for metric in self._host_metrics:
                metric.update_state(y_true, y_pred)

    def _penalty_columns(self):
        return sum(len(layer.active_regularizers()) for layer in self.layers)

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
        bad = [layer.name for layer in reversed(self.layers)
               if any(not np.isfinite(self.ops.to_host(g)).all() for g in layer.grads.values())]
        where = f"non-finite gradients in {', '.join(bad)} (output side first)" if bad else "all gradients finite"
        return (f"Training diverged at optimizer step {self.optimizer.iterations + 1}: the batch loss is {loss}, "
                f"{where}; learning rate {self.optimizer.current_learning_rate():g}. The weights are those of the "
                "last good step. Lower the learning rate, scale the inputs to [0, 1], or check the data for outliers.")

    def _check_memory(self, batch_size, data_bytes=0):
        """Fail before the first step when a batch's activations (and, on a GPU, the
        training data) cannot fit in the device's memory."""
        per_sample = 0
        for layer, shape in zip(self.layers, self.output_shapes):
            per_sample += 2 * int(np.prod(shape))  # output and input gradient
            if hasattr(layer, "kernel_size"):
                per_sample += 2 * int(np.prod(shape[:-1])) * int(np.prod(layer.params["kernel"].shape[:-1]))
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
        penalty = sum(layer.regularization() for layer in self.layers)
        self.ops.copy(saved, self.flat_grads)
        return penalty

    def _steps_per_execution(self):
        if self.steps_per_execution is not None:
            return self.steps_per_execution
        return 1 if self.ops is cpu else GPU_STEPS_PER_EXECUTION

    # -- Keras API ---------------------------------------------------------------------------
    @blas_limited
    def fit(self, x=None, y=None, batch_size=32, epochs=1, verbose="auto", callbacks=None, validation_split=0.0,
            validation_data=None, shuffle=True, class_weight=None, sample_weight=None, initial_epoch=0,
            steps_per_epoch=None, validation_steps=None, validation_batch_size=None, validation_freq=1):
        """Keras's fit. ``sample_weight`` (one per sample) and ``class_weight`` ({class:
        weight}) scale each sample's loss, as Keras: the mean stays over the batch size.
        ``validation_freq``: validate every that many epochs. ``steps_per_epoch`` and
        ``validation_steps`` are for generators, which nbnet's fit does not take yet."""
        for name, value in (("steps_per_epoch", steps_per_epoch), ("validation_steps", validation_steps)):
            if value is not None:
                raise NbnetError(f"fit: {name}={value!r} is for data generators; nbnet's fit takes arrays and runs "
                                 "every sample each epoch, so leave it out.")
        if not (isinstance(validation_freq, int) and validation_freq >= 1):
            raise NbnetError(f"fit: validation_freq must be a positive number of epochs, received {validation_freq!r}.")
        validation = (validation_freq, self._check_batch_size(validation_batch_size or batch_size))
        x, targets = self._prepare_xy(x, y)
        weights = sample_weights(y, targets, sample_weight, class_weight)
        batch_size = self._check_batch_size(batch_size)
        w_val = None
        if validation_data is not None:
            if not isinstance(validation_data, (tuple, list)) or len(validation_data) not in (2, 3):
                raise NbnetError("validation_data must be (x_val, y_val) or (x_val, y_val, val_sample_weight), "
                                 f"received {type(validation_data).__name__}.")
            x_val, t_val = self._prepare_xy(validation_data[0], validation_data[1])
            if len(validation_data) == 3:
                w_val = sample_weights(validation_data[1], t_val, validation_data[2], None, "validation_data[2]")
        elif validation_split:
            if not 0.0 < validation_split < 1.0:
                raise NbnetError(f"validation_split must be in (0, 1), received {validation_split!r}.")
            split = int(len(x) * (1.0 - validation_split))  # Keras: the last samples, before shuffling
            x, x_val, targets, t_val = x[:split], x[split:], targets[:split], targets[split:]
            if weights is not None:
                weights, w_val = weights[:split], weights[split:]
        else:
            x_val = t_val = None
        self._check_memory(min(batch_size, len(x)), x.nbytes + targets.nbytes)
        if verbose and self._announce_device:
            print(self.device_message)
            self._announce_device = False
        with self._on_device():
            return self._fit(x, targets, x_val, t_val, batch_size, epochs, verbose, callbacks, shuffle, initial_epoch,
                             weights, w_val, validation)

    def _fit(self, x, targets, x_val, t_val, batch_size, epochs, verbose, callbacks, shuffle, initial_epoch,
             weights=None, w_val=None, validation=(1, None)):
        """``validation``: (validate every that many epochs, the validation batch size)."""
        ops = self.ops
        history = callbacks_module.History()
        # History last, as Keras: it records what the other callbacks add to the logs.
        callback_list = list(callbacks or []) + [history]
        steps = math.ceil(len(x) / batch_size)
        for callback in callback_list:
            callback.set_model(self)
            callback.set_params({"verbose": verbose, "epochs": int(epochs), "steps": steps})
        self.stop_training = False
        self.diverged = None
        self.fit_config = {"epochs": int(epochs), "batch_size": batch_size, "shuffle": bool(shuffle)}
        # The training set goes to the device once (on the CPU these are views, no copy);
        # each batch is gathered from it by the epoch's order, as 2-D rows.
        x_rows = ops.to_device(x.reshape(len(x), -1))
        t_rows = ops.to_device(targets.reshape(len(targets), -1))
        rows = min(batch_size, len(x))
        batch_x = self._scratch("batch_x", (rows,) + x.shape[1:], np.float32)
        batch_t = self._scratch("batch_t", (rows,) + targets.shape[1:], targets.dtype)
        if weights is not None:
            w_rows = ops.to_device(weights.reshape(len(weights), 1))
            batch_w = self._scratch("batch_w", (rows, 1), np.float32)
        totals = _StepTotals(ops, self._steps_per_execution(), self._penalty_columns())
        self._start_steps()
        resume, self.resume_point = self.resume_point, None
        if resume is not None and resume["epoch"] != int(initial_epoch):
            resume = None  # a different schedule than the interrupted one: start the epoch afresh
        self._initial_epoch = None
        logs = {}
        for callback in callback_list:
            callback.on_train_begin({})
        if self._initial_epoch is not None:  # set by BackupAndRestore, as in Keras
            initial_epoch = self._initial_epoch
        for epoch in range(int(initial_epoch), epochs):
            for callback in callback_list:
                callback.on_epoch_begin(epoch, {})
            if verbose:
                print(f"Epoch {epoch + 1}/{epochs}")
            for metric in self._host_metrics:
                metric.reset_state()
            epoch_rng_state = resume["epoch_rng_state"] if resume else self.rng.bit_generator.state
            order = ops.to_device(self._epoch_order(len(x), shuffle, epoch_rng_state))
            bar = ProgressBar(steps, verbose)
            first_step, loss_sum, correct, seen = (resume["step"], resume["loss_sum"], resume["correct"],
                                                   resume["seen"]) if resume else (0, 0.0, 0.0, 0.0)
            resume = None
            for step in range(first_step, steps):
                start = step * batch_size
                count = min(batch_size, len(x) - start)
                xb, tb = batch_x[:count], batch_t[:count]
                ops.gather_rows(x_rows, order, start, xb.reshape(count, x_rows.shape[1]))
                ops.gather_rows(t_rows, order, start, tb.reshape(count, t_rows.shape[1]))
                wb = None
                if weights is not None:
                    ops.gather_rows(w_rows, order, start, batch_w[:count])
                    wb = batch_w[:count].reshape(count)
                for callback in callback_list:
                    callback.on_train_batch_begin(step, {})
                optimizer_step = self.optimizer.iterations + 1
                self._train_step(xb, tb, totals.next_row(count, optimizer_step), optimizer_step, wb)
                if not (totals.full() or self.stop_requested is not None or step + 1 == steps):
                    continue
                step_losses = {}
                for done_step, size, batch_loss, batch_correct in totals.drain():
                    loss_sum, correct, seen = loss_sum + batch_loss, correct + batch_correct, seen + size
                    step_losses[done_step] = batch_loss / size
                diverged = self._halted(step_losses)
                logs = self._logs(loss_sum, correct, seen)
                if diverged is not None:
                    # As Keras with TerminateOnNaN: the epoch ends here with a NaN loss, and
                    # fit returns its History; the weights are the last good step's.
                    logs["loss"] = float("nan")
                    self.diverged, self.stop_training = diverged, True
                    warnings.warn(str(diverged), RuntimeWarning, stacklevel=3)
                bar.update(step + 1, logs)
                for callback in callback_list:
                    callback.on_train_batch_end(step, logs)
                if self.stop_requested is not None and step + 1 < steps:
                    self.resume_point = {"epoch": epoch, "step": step + 1, "epoch_rng_state": epoch_rng_state,
                                         "loss_sum": loss_sum, "correct": correct, "seen": seen}
                    if verbose:
                        print()
                    raise TrainingInterrupted(f"Training stopped at epoch {epoch + 1}, step {step + 1}/{steps}.",
                                              self.stop_requested)
                if self.stop_training:  # set by a batch callback (TerminateOnNaN) or a divergence: as Keras
                    break
            validation_freq, validation_batch_size = validation
            if x_val is not None and (epoch + 1) % validation_freq == 0:
                # As Keras, the fit's callbacks see the validation run's test hooks.
                val_loss, val_correct = self._evaluate_arrays(x_val, t_val, validation_batch_size, w_val,
                                                              callback_list)
                logs.update({f"val_{k}": v for k, v in self._logs(val_loss, val_correct, len(x_val)).items()})
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

    def _logs(self, loss_sum, correct, seen):
        logs = {metric.name: correct / seen if metric is self._counted else float(metric.result())
                for metric in self.metrics}
        logs["loss"] = loss_sum / seen
        return logs

    def _evaluate_arrays(self, x, targets, batch_size, weights=None, callback_list=()):
        """(summed loss, correct count) over host arrays, sent to the device a chunk at a time;
        ``weights``: one per sample, or None. Given callbacks, their test hooks run (each
        chunk's running logs are then read back as it ends)."""
        ops = self.ops
        penalty = self._penalty()
        chunk = min(batch_size, INFERENCE_CHUNK)
        totals = _StepTotals(ops, max(math.ceil(len(x) / chunk), 1), 0)
        fused = self._fused()
        self._split_metrics()
        loss_sum = correct = seen = 0.0

        def add_drained():
            nonlocal loss_sum, correct, seen
            for _, size, chunk_loss, chunk_correct in totals.drain():
                loss_sum, correct, seen = loss_sum + chunk_loss + penalty * size, correct + chunk_correct, seen + size

        for callback in callback_list:
            callback.on_test_begin({})
        for index, start in enumerate(range(0, len(x), chunk)):
            for callback in callback_list:
                callback.on_test_batch_begin(index, {})
            xb, tb = ops.to_device(_float_input(x[start:start + chunk])), ops.to_device(targets[start:start + chunk])
            wb = None if weights is None else ops.to_device(weights[start:start + chunk])
            self.layers[-1].keep_logits = fused
            outputs = self._forward(xb, training=False)
            row = totals.next_row(len(xb))
            self._loss_and_grad(outputs, tb, row[0:1], wb)
            self._update_metrics(outputs, tb, row[1:2])
            if callback_list:
                add_drained()
                logs = self._logs(loss_sum, correct, seen)
                for callback in callback_list:
                    callback.on_test_batch_end(index, logs)
        add_drained()
        for callback in callback_list:
            callback.on_test_end(self._logs(loss_sum, correct, seen))
        return loss_sum, correct

    @blas_limited
    def evaluate(self, x=None, y=None, batch_size=32, verbose="auto", sample_weight=None, callbacks=None,
                 return_dict=False):
        """[loss, accuracy] (just the loss when compiled without metrics), or with
        ``return_dict`` a dict keyed as the logs are."""
        x, targets = self._prepare_xy(x, y)
        weights = sample_weights(y, targets, sample_weight, None)
        batch_size = self._check_batch_size(batch_size)
        start = time.perf_counter()
        callback_list = self._with_model(callbacks)
        with self._on_device():
            loss_sum, correct = self._evaluate_arrays(x, targets, batch_size, weights, callback_list)
        logs = self._logs(loss_sum, correct, len(x))
        if verbose:
            bar = ProgressBar(math.ceil(len(x) / batch_size), verbose=2)
            bar.start = start
            bar.finish(logs)
        return self._results(logs, return_dict)

    def _results(self, logs, return_dict=False):
        """What evaluate and train_on_batch return: the loss, or [loss, metrics...] in
        compile's order, or a dict keyed as the logs."""
        if return_dict:
            return {"loss": logs["loss"], **{metric.name: logs[metric.name] for metric in self.metrics}}
        return [logs["loss"]] + [logs[metric.name] for metric in self.metrics] if self.metrics else logs["loss"]

    @property
    def metrics_names(self):
        return ["loss"] + [metric.name for metric in self.metrics]

    @blas_limited
    def predict(self, x, batch_size=32, verbose=0, callbacks=None):
        x = self._prepare_x(x)
        batch_size = self._check_batch_size(batch_size)
        outputs = np.empty((len(x),) + tuple(self.output_shape), np.float32)
        self.layers[-1].keep_logits = False
        chunk = min(batch_size, INFERENCE_CHUNK)
        callback_list = self._with_model(callbacks)
        for callback in callback_list:
            callback.on_predict_begin({})
        with self._on_device():
            ops = self.ops
            for index, start in enumerate(range(0, len(x), chunk)):
                for callback in callback_list:
                    callback.on_predict_batch_begin(index, {})
                y = self._forward(ops.to_device(_float_input(x[start:start + chunk])), training=False)
                ops.copy_to_host(y, outputs[start:start + chunk])
                for callback in callback_list:
                    callback.on_predict_batch_end(index, {"outputs": outputs[start:start + chunk]})
        for callback in callback_list:
            callback.on_predict_end({})
        return outputs

    def _with_model(self, callbacks):
        callback_list = list(callbacks or [])
        for callback in callback_list:
            callback.set_model(self)
        return callback_list

    def __call__(self, x, training=False):
        """The model on a batch, as Keras's ``model(x)``: inference unless ``training=True``
        (Dropout active, BatchNormalization on the batch's statistics, which it also moves
        into its moving averages, as Keras does). Returns an array with ``.numpy()``."""
        if not training:
            return as_tensor(self.predict(x, batch_size=max(len(x), 1)))
        x = self._prepare_x(x)
        self.layers[-1].keep_logits = False
        with self._on_device():
            y = self._forward(self.ops.to_device(_float_input(x)), training=True)
            return as_tensor(self.ops.to_host(y).copy())

    def predict_on_batch(self, x):
        return self.predict(x, batch_size=max(len(x), 1))

    @blas_limited
    def train_on_batch(self, x, y, return_dict=False):
        x, targets = self._prepare_xy(x, y)
        with self._on_device():
            ops = self.ops
            self._start_steps()
            totals = _StepTotals(ops, 1, self._penalty_columns())
            step = self.optimizer.iterations + 1
            self._train_step(ops.to_device(_float_input(x)), ops.to_device(targets), totals.next_row(len(x), step), step)
            ((_, _, loss_sum, correct),) = totals.drain()
            diverged = self._halted({step: loss_sum / len(x)})
            if diverged is not None:
                raise diverged
        return self._results(self._logs(loss_sum, correct, len(x)), return_dict)

    @property
    def trainable_weights(self):
        """The trainable layers' weights (Keras's order), as arrays."""
        return [layer.params[key] for layer in self.layers if layer.trainable
                for key in layer.weight_order if key in layer.params]

    @property
    def non_trainable_weights(self):
        """Frozen layers' weights and every layer's state (BatchNormalization's moving statistics)."""
        return [layer.params[key] if key in layer.params else layer.state[key] for layer in self.layers
                for key in layer.weight_order if not (layer.trainable and key in layer.params)]

    @property
    def weights(self):
        return [w for layer in self.layers for w in (layer.params.get(k, layer.state.get(k))
                                                    for k in layer.weight_order)]

    def get_layer(self, name=None, index=None):
        """A layer by name or by index, as Keras's get_layer."""
        if index is not None:
            if not -len(self.layers) <= int(index) < len(self.layers):
                raise NbnetError(f"get_layer: index {index} is out of range; the model has {len(self.layers)} layers.")
            return self.layers[int(index)]
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise NbnetError(f"get_layer: no layer named {name!r}; the layers are {[layer.name for layer in self.layers]}.")

    def get_weights(self):
        self._require_built()
        return [w for layer in self.layers for w in layer.get_weights()]

    def set_weights(self, weights):
        self._require_built()
        weights = list(weights)
        expected = sum(len(layer.weight_order) for layer in self.layers)
        if len(weights) != expected:
            raise ShapeError(f"Sequential '{self.name}' has {expected} weight arrays, but received {len(weights)}.")
        position = 0
        for layer in self.layers:
            count = len(layer.weight_order)
            layer.set_weights(weights[position:position + count])
            position += count

    def _require_built(self):
        if not self.built:
            raise NbnetError(f"Sequential '{self.name}' is not built yet: give the first layer input_shape=(...) "
                             "or call model.build(input_shape).")

    def count_params(self):
        return sum(layer.count_params() for layer in self.layers)

    def summary(self, print_fn=None):
        from .summary import render_summary

        self._require_built()
        text = render_summary(self)
        (print_fn or print)(text)
        return text

    def get_config(self):
        return {"name": self.name, "seed": self.seed, "input_shape": list(self.input_shape) if self.built else None,
                "layers": [{"class_name": type(layer).__name__, "config": layer.get_config()} for layer in self.layers]}

    def save(self, path):
        from .saving import save_model

        save_model(self, path)

    def save_weights(self, filepath, overwrite=True):
        """Keras 3's ``.weights.h5`` file."""
        from .weights_file import save_weights

        save_weights(self, filepath, overwrite)

    def load_weights(self, filepath):
        """Weights from a ``.weights.h5`` file that nbnet or Keras wrote for this architecture."""
        from .weights_file import load_weights

        load_weights(self, filepath)


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


def _float_input(x):
    """A chunk of (possibly uint8) input as the float32 the layers compute with."""
    return x if x.dtype == np.float32 else x.astype(np.float32)


def _first_non_finite_sample(x, chunk=4096):
    """The index of the first sample holding NaN or Inf, or None. Checked in slices, so a
    mask of the whole array (47 MB for MNIST, on top of the peak) never exists at once."""
    for start in range(0, len(x), chunk):
        finite = np.isfinite(x[start:start + chunk])
        if not finite.all():
            return start + int(np.flatnonzero(~finite.reshape(len(finite), -1).all(axis=1))[0])
    return None


class _StepTotals:
    """The totals of a run of steps, one row each: summed batch loss, correct count, and
    one column per regularization penalty. They stay on the device where the steps ran
    (kernels write them through ``total_out``) until ``drain`` reads them back in one copy."""

    def __init__(self, ops, capacity, penalties):
        self.ops = ops
        self.values = ops.zeros((capacity, 2 + penalties), np.float64)
        self.pending = []  # (optimizer step, batch size) of each filled row

    def next_row(self, size, step=0):
        row = self.values[len(self.pending)]
        self.pending.append((step, size))
        return row

    def full(self):
        return len(self.pending) == self.values.shape[0]

    def drain(self):
        """[(step, batch size, loss sum with penalties, correct count)] of the pending rows."""
        values = self.ops.to_host(self.values)
        done = [(step, size, float(values[k, 0] + values[k, 2:].sum() * size), float(values[k, 1]))
                for k, (step, size) in enumerate(self.pending)]
        self.pending = []
        return done


def load_model(path):
    from .saving import load_model as load

    return load(path)
