"""Sequential: the Keras-style model. Layers run in order; all trainable parameters live
in one flat float32 vector (each layer holds views into it), so the optimizer updates
the whole model in one kernel launch per step and saving or restoring is one copy."""

import math
import time

import numpy as np

from . import callbacks as callbacks_module
from . import losses, metrics as metrics_module, optimizers, utils
from .errors import NbnetError, ResourceError, ShapeError, TrainingDiverged, TrainingInterrupted
from .layers import Dropout, Layer
from .progress import ProgressBar
from .threads import blas_limited


# Inference runs in chunks of at most this many samples whatever the batch size asked for:
# the results are the same, a batch of 1000 CNN images would hold ~300 MB of buffers, and
# at the usual training batch the training buffers are reused.
INFERENCE_CHUNK = 128


class Sequential:
    def __init__(self, layers=None, name=None, seed=None):
        self.name = name or "sequential"
        self.layers = []
        self.seed = seed
        self.built = False
        self.optimizer = self.loss = None
        self.metrics = []
        self.stop_training = False
        self.epochs_trained = 0
        self.history_log = {}
        # Set (to a signal number) by a signal handler: fit stops cleanly after the current step.
        self.stop_requested = None
        # Where an interrupted fit stopped inside an epoch, so a resumed fit continues exactly.
        self.resume_point = None
        # The last fit's schedule, kept in the model file so a resumed run repeats it.
        self.fit_config = None
        for layer in layers or []:
            self.add(layer)

    # -- construction ----------------------------------------------------------------
    def add(self, layer):
        if not isinstance(layer, Layer):
            raise NbnetError(f"Sequential.add expects an nbnet layer, received {type(layer).__name__}.")
        if self.built:
            raise NbnetError(f"Sequential '{self.name}': cannot add layer '{layer.name}' after the model is built.")
        self.layers.append(layer)

    def build(self, input_shape=None):
        """Create every layer's weights for ``input_shape`` (batch axis optional: Keras's
        ``build((None, 28, 28, 1))`` and ``(28, 28, 1)`` both work)."""
        if not self.layers:
            raise NbnetError(f"Sequential '{self.name}' has no layers to build.")
        if input_shape is None:
            input_shape = self.layers[0].input_shape
            if input_shape is None:
                raise NbnetError(f"Sequential '{self.name}': give the first layer input_shape=(...), "
                                 "or call model.build(input_shape), before using the model.")
        shape = tuple(input_shape)
        if shape and shape[0] is None:
            shape = shape[1:]
        self.input_shape = tuple(int(d) for d in shape)
        if self.seed is None:
            self.seed = utils.next_model_seed()
        self.rng = np.random.default_rng(self.seed)
        shape = self.input_shape
        self.output_shapes = []
        has_params_before = False
        for layer in self.layers:
            layer.needs_input_grad = has_params_before
            shape = layer.build(shape, self.rng)
            self.output_shapes.append(shape)
            if isinstance(layer, Dropout) and layer.seed is None:
                layer.rng = self.rng  # one Generator for shuffling and dropout: one state to save
            has_params_before = has_params_before or (bool(layer.params) and layer.trainable)
        self._gather_parameters()
        self.built = True

    def _gather_parameters(self):
        """Move trainable weights and their gradients into two flat vectors and rebind
        each layer's arrays to views of them."""
        entries = [(layer, key) for layer in self.layers if layer.trainable for key in layer.params]
        total = sum(layer.params[key].size for layer, key in entries)
        self.flat_params = np.empty(total, np.float32)
        self.flat_grads = np.zeros(total, np.float32)
        offset = 0
        for layer, key in entries:
            value = layer.params[key]
            view = self.flat_params[offset:offset + value.size].reshape(value.shape)
            view[...] = value
            layer.params[key] = view
            layer.grads[key] = self.flat_grads[offset:offset + value.size].reshape(value.shape)
            offset += value.size

    @property
    def output_shape(self):
        return self.output_shapes[-1]

    def compile(self, optimizer="rmsprop", loss=None, metrics=None):
        if loss is None:
            raise NbnetError(f"Sequential '{self.name}': compile needs a loss, e.g. loss='sparse_categorical_crossentropy'.")
        self.optimizer = optimizers.get(optimizer)
        self.loss = losses.get(loss)
        self.metrics = metrics_module.resolve(metrics)
        if self.layers and self.layers[0].input_shape is not None and not self.built:
            self.build()

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
            x = layer.forward(x, training=training)
        return x

    def _loss_and_grad(self, outputs, targets):
        fused = self._fused()
        source = self.layers[-1].logits if fused else outputs
        source = source.reshape(len(outputs), -1)
        grad = np.empty_like(source)
        total = self.loss.compute(source, targets, grad, fused or self.loss.from_logits)
        return total, grad.reshape(outputs.shape), fused

    def _train_batch(self, x, targets):
        with np.errstate(all="ignore"):  # overflow is detected below and reported as divergence
            return self._train_batch_unchecked(x, targets)

    def _train_batch_unchecked(self, x, targets):
        self.layers[-1].keep_logits = self._fused()
        self.flat_grads.fill(0.0)
        outputs = self._forward(x, training=True)
        total, grad, fused = self._loss_and_grad(outputs, targets)
        penalty = sum(layer.regularization() for layer in self.layers)
        grad = self.layers[-1].backward(grad, from_logits=True) if fused else self.layers[-1].backward(grad)
        for layer in reversed(self.layers[:-1]):
            grad = layer.backward(grad)
        loss = total + penalty * len(x)
        if not (math.isfinite(loss) and np.isfinite(self.flat_grads).all()):
            raise TrainingDiverged(self._divergence_message(loss / len(x)))
        self.optimizer.apply(self.flat_params, self.flat_grads)
        correct = metrics_module.correct_count(outputs, targets, self.loss.sparse_targets) if self.metrics else 0.0
        return loss, correct

    def _divergence_message(self, loss):
        bad = [layer.name for layer in reversed(self.layers)
               if any(not np.isfinite(g).all() for g in layer.grads.values())]
        where = f"non-finite gradients in {', '.join(bad)} (output side first)" if bad else "all gradients finite"
        return (f"Training diverged at optimizer step {self.optimizer.iterations + 1}: the batch loss is {loss}, "
                f"{where}; learning rate {self.optimizer.current_learning_rate():g}. The weights are those of the "
                "last good step. Lower the learning rate, scale the inputs to [0, 1], or check the data for outliers.")

    def _check_memory(self, batch_size):
        """Fail before the first step when a batch's activations cannot fit in memory."""
        per_sample = 0
        for layer, shape in zip(self.layers, self.output_shapes):
            per_sample += 2 * int(np.prod(shape))  # output and input gradient
            if hasattr(layer, "kernel_size"):
                per_sample += 2 * int(np.prod(shape[:-1])) * int(np.prod(layer.params["kernel"].shape[:-1]))
        needed = per_sample * 4 * batch_size + 3 * 4 * self.flat_params.size
        available = _available_memory()
        if available is not None and needed > 0.8 * available:
            raise ResourceError(
                f"batch_size={batch_size} needs about {needed / 2**30:.2f} GiB for activations and gradients of "
                f"model '{self.name}', but only {available / 2**30:.2f} GiB of memory is available; "
                f"use a batch size of at most {max(int(0.8 * available / (per_sample * 4)), 1)}.")

    def _penalty(self):
        """The regularization penalty alone (its gradient goes into scratch grads)."""
        saved = self.flat_grads.copy()
        penalty = sum(layer.regularization() for layer in self.layers)
        self.flat_grads[...] = saved
        return penalty

    # -- Keras API ---------------------------------------------------------------------------
    @blas_limited
    def fit(self, x=None, y=None, batch_size=32, epochs=1, verbose=1, callbacks=None, validation_split=0.0,
            validation_data=None, shuffle=True, initial_epoch=0):
        x, targets = self._prepare_xy(x, y)
        batch_size = self._check_batch_size(batch_size)
        if validation_data is not None:
            x_val, y_val = validation_data[0], validation_data[1]
            x_val, t_val = self._prepare_xy(x_val, y_val)
        elif validation_split:
            if not 0.0 < validation_split < 1.0:
                raise NbnetError(f"validation_split must be in (0, 1), received {validation_split!r}.")
            split = int(len(x) * (1.0 - validation_split))  # Keras: the last samples, before shuffling
            x, x_val, targets, t_val = x[:split], x[split:], targets[:split], targets[split:]
        else:
            x_val = None
        history = callbacks_module.History()
        callback_list = [history] + list(callbacks or [])
        for callback in callback_list:
            callback.set_model(self)
        self.stop_training = False
        self.fit_config = {"epochs": int(epochs), "batch_size": batch_size, "shuffle": bool(shuffle)}
        steps = math.ceil(len(x) / batch_size)
        self._check_memory(min(batch_size, len(x)))
        batch_x = np.empty((min(batch_size, len(x)),) + x.shape[1:], np.float32)
        resume, self.resume_point = self.resume_point, None
        if resume is not None and resume["epoch"] != int(initial_epoch):
            resume = None  # a different schedule than the interrupted one: start the epoch afresh
        for callback in callback_list:
            callback.on_train_begin()
        for epoch in range(int(initial_epoch), epochs):
            for callback in callback_list:
                callback.on_epoch_begin(epoch)
            if verbose:
                print(f"Epoch {epoch + 1}/{epochs}")
            epoch_rng_state = resume["epoch_rng_state"] if resume else self.rng.bit_generator.state
            order = self._epoch_order(len(x), shuffle, epoch_rng_state)
            bar = ProgressBar(steps, verbose)
            first_step, loss_sum, correct, seen = (resume["step"], resume["loss_sum"], resume["correct"],
                                                   resume["seen"]) if resume else (0, 0.0, 0.0, 0.0)
            resume = None
            for step in range(first_step, steps):
                index = order[step * batch_size:(step + 1) * batch_size]
                xb = np.take(x, index, axis=0, out=batch_x[:len(index)])
                batch_loss, batch_correct = self._train_batch(xb, targets[index])
                loss_sum, correct, seen = loss_sum + batch_loss, correct + batch_correct, seen + len(index)
                logs = self._logs(loss_sum, correct, seen)
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
            if x_val is not None:
                val_loss, val_correct = self._evaluate_arrays(x_val, t_val, batch_size)
                logs.update({f"val_{k}": v for k, v in self._logs(val_loss, val_correct, len(x_val)).items()})
            bar.finish(logs)
            self.epochs_trained += 1
            for key, value in logs.items():
                self.history_log.setdefault(key, []).append(float(value))
            for callback in callback_list:
                callback.on_epoch_end(epoch, logs)
            if self.stop_training:
                break
        for callback in callback_list:
            callback.on_train_end()
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
        logs = {"accuracy": correct / seen} if self.metrics else {}
        logs["loss"] = loss_sum / seen
        return logs

    def _evaluate_arrays(self, x, targets, batch_size):
        loss_sum = correct = 0.0
        penalty = self._penalty()
        batch_size = min(batch_size, INFERENCE_CHUNK)
        for start in range(0, len(x), batch_size):
            xb, tb = x[start:start + batch_size], targets[start:start + batch_size]
            self.layers[-1].keep_logits = self._fused()
            outputs = self._forward(xb, training=False)
            total, _, _ = self._loss_and_grad(outputs, tb)
            loss_sum += total + penalty * len(xb)
            if self.metrics:
                correct += metrics_module.correct_count(outputs, tb, self.loss.sparse_targets)
        return loss_sum, correct

    @blas_limited
    def evaluate(self, x=None, y=None, batch_size=32, verbose=1):
        """[loss, accuracy] (just the loss when compiled without metrics)."""
        x, targets = self._prepare_xy(x, y)
        batch_size = self._check_batch_size(batch_size)
        start = time.perf_counter()
        loss_sum, correct = self._evaluate_arrays(x, targets, batch_size)
        logs = self._logs(loss_sum, correct, len(x))
        if verbose:
            bar = ProgressBar(math.ceil(len(x) / batch_size), verbose=2)
            bar.start = start
            bar.finish(logs)
        return [logs["loss"], logs["accuracy"]] if self.metrics else logs["loss"]

    @blas_limited
    def predict(self, x, batch_size=32, verbose=0):
        x = self._prepare_x(x)
        batch_size = self._check_batch_size(batch_size)
        outputs = np.empty((len(x),) + tuple(self.output_shape), np.float32)
        self.layers[-1].keep_logits = False
        batch_size = min(batch_size, INFERENCE_CHUNK)
        for start in range(0, len(x), batch_size):
            outputs[start:start + batch_size] = self._forward(x[start:start + batch_size], training=False)
        return outputs

    def predict_on_batch(self, x):
        return self.predict(x, batch_size=max(len(x), 1))

    @blas_limited
    def train_on_batch(self, x, y):
        x, targets = self._prepare_xy(x, y)
        loss_sum, correct = self._train_batch(x, targets)
        logs = self._logs(loss_sum, correct, len(x))
        return [logs["loss"], logs["accuracy"]] if self.metrics else logs["loss"]

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


def _first_non_finite_sample(x, chunk=4096):
    """The index of the first sample holding NaN or Inf, or None. Checked in slices, so a
    mask of the whole array (47 MB for MNIST, on top of the peak) never exists at once."""
    for start in range(0, len(x), chunk):
        finite = np.isfinite(x[start:start + chunk])
        if not finite.all():
            return start + int(np.flatnonzero(~finite.reshape(len(finite), -1).all(axis=1))[0])
    return None


def _available_memory():
    """Bytes of memory available (Linux's MemAvailable), or None where unknown."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def load_model(path):
    from .saving import load_model as load

    return load(path)
