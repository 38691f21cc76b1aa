"""The execution plan of a model: its graph flattened into steps, run forward in
topological order and backward in reverse.

Built once per model set-up (``Plan(model)``): nested models are expanded into their
layers, each tensor gets a slot, a layer called more than once runs as separate call
objects (``Layer.call_copy``: the same weights and gradients, buffers of its own), a
Conv2D whose only consumer is a MaxPooling2D it can absorb runs the pool in its own pass,
a BatchNormalization or Add whose only consumer is an elementwise Activation runs that
(and a BatchNormalization a 2x2 MaxPooling2D after it, with a relu or none). In
inference a BatchNormalization whose input comes only from a linear Conv2D or Dense is
folded into that layer's kernel and bias (see NormFoldingMixin.forward_folded).
Backward sums the gradients of a tensor that feeds several layers, and skips every step
no trainable weight depends on.
"""

import math

from .inference_program import Programs
from .kernels.activations import LEAKY_RELU, LINEAR, RELU, SIGMOID, TANH
from .layers import Activation, Add, BatchNormalization, Conv2D, MaxPooling2D

# The activations BatchNormalization's kernels can run in their own pass.
NORM_ACTIVATIONS = (RELU, LEAKY_RELU, SIGMOID, TANH)


class Step:
    """One layer call: ``layer`` (the call object) reads the slots ``inputs`` and writes
    the slot ``output``, a tensor of ``shape`` per sample; ``source`` is the model's layer."""

    __slots__ = ("layer", "source", "inputs", "output", "shape", "multiple", "needs_backward", "needs_input_grad",
                 "fused_output", "pool", "activation", "norm", "folded", "hidden_shapes")

    def __init__(self, layer, source, inputs, output, shape):
        self.layer, self.source, self.inputs, self.output, self.shape = layer, source, inputs, output, shape
        self.multiple = bool(getattr(source, "multiple_inputs", False))
        self.needs_backward = self.needs_input_grad = True
        self.fused_output = False
        self.pool = None  # the MaxPooling2D call this Conv2D or BatchNormalization runs in its own pass
        self.activation = None  # the Activation call this BatchNormalization or Add runs in its own pass
        self.norm = None  # the BatchNormalization call this Conv2D or Dense folds in, in inference
        self.folded = False  # a BatchNormalization the layer before it computes, in inference
        self.hidden_shapes = []  # per sample, the outputs of its own that absorbing a reader hid


class Plan:
    def __init__(self, model, fuse=True):
        self.steps, self.slot_count = [], 0
        self.input_slots = [self._new_slot() for _ in model._input_tensors]
        self.output_slots = self._expand(model, self.input_slots)
        # Each layer once, in the order of its first call: the owners of weights and state.
        self.layers = list({id(step.source): step.source for step in self.steps}.values())
        if fuse:
            self._fuse_conv_pool()
            self._fuse_norm_activation()
            self._fuse_norm_pool()
            self._fuse_merge_activation()
            self._fold_conv_norm()
        self._mark_gradients()
        # What one sample's pass writes, the outputs that fused passes still make included
        # (a conv's before its absorbed pool): predict sizes its chunks by it.
        self.values_per_sample = sum(math.prod(shape) for step in self.steps
                                     for shape in [step.shape] + step.hidden_shapes)
        self._values = [None] * self.slot_count
        self._fused = None
        self.programs = Programs(self)  # recorded inference passes of small batches

    def bind(self):
        """Set the call objects up for this plan (a plan is data until then, so one made
        to read a model's structure, as the ONNX exporter does, changes nothing)."""
        for step in self.steps:
            step.layer.needs_input_grad = step.needs_input_grad
            step.layer.absorbed = False
            if isinstance(step.layer, Conv2D):
                step.layer.pool = step.pool
            if isinstance(step.layer, BatchNormalization):
                step.layer.activation_after, step.layer.pool_after = step.activation, step.pool
            if isinstance(step.layer, Add):
                step.layer.activation_after = step.activation
            for absorbed in (step.pool, step.activation):
                if absorbed is not None:
                    absorbed.absorbed = True

    def _new_slot(self):
        self.slot_count += 1
        return self.slot_count - 1

    def _expand(self, model, input_slots):
        slots = {id(tensor): slot for tensor, slot in zip(model._input_tensors, input_slots)}
        for node in model._nodes:
            inputs = [slots[id(tensor)] for tensor in node.inputs]
            if hasattr(node.layer, "_nodes"):  # a model used as a layer: its layers join the plan
                outputs = self._expand(node.layer, inputs)
            else:
                called = any(step.source is node.layer for step in self.steps)
                layer = node.layer.call_copy() if called else node.layer
                outputs = [self._new_slot()]
                self.steps.append(Step(layer, node.layer, inputs, outputs[0], node.outputs[0].sample_shape))
            for tensor, slot in zip(node.outputs, outputs):
                slots[id(tensor)] = slot
        return [slots[id(tensor)] for tensor in model._output_tensors]

    def consumers(self, slot):
        return [step for step in self.steps if slot in step.inputs]

    def _absorbable_reader(self, step):
        """The one step that reads ``step``'s output, where neither output is a model
        output (the loss works on those); else None."""
        if step.output in self.output_slots:
            return None
        readers = self.consumers(step.output)
        if len(readers) != 1 or readers[0].output in self.output_slots:
            return None
        return readers[0]

    def _absorb(self, step, reader):
        step.hidden_shapes.append(step.shape)
        step.output, step.shape = reader.output, reader.shape
        self.steps.remove(reader)

    def _fuse_conv_pool(self):
        """Each Conv2D whose output goes only to a MaxPooling2D it can absorb (see
        Conv2D.can_absorb) runs the pool in its own pass: the conv-sized activation and
        its gradient are never written. Outputs and gradients equal running them apart (a
        bias gradient sums in another order)."""
        for step in list(self.steps):
            pool = self._absorbable_reader(step) if isinstance(step.layer, Conv2D) else None
            if pool is not None and isinstance(pool.layer, MaxPooling2D) and step.layer.can_absorb(pool.layer):
                step.pool = pool.layer
                self._absorb(step, pool)

    def _fuse_norm_activation(self):
        """Each BatchNormalization whose output goes only to an elementwise Activation
        (relu, leaky relu, sigmoid, tanh) runs it in its own pass (see
        kernels/normalization.py): the normalised tensor and its gradient are never
        written."""
        for step in list(self.steps):
            activation = self._absorbable_reader(step) if isinstance(step.layer, BatchNormalization) else None
            if (activation is not None and isinstance(activation.layer, Activation)
                    and activation.layer._code in NORM_ACTIVATIONS):
                step.activation = activation.layer
                self._absorb(step, activation)

    def _fuse_norm_pool(self):
        """Each BatchNormalization (with no activation or a relu) whose output goes only to
        a 2x2 MaxPooling2D of stride 2 ('valid') runs the pool in its own passes (see
        kernels/normalization_pool.py): the normalised batch and its full-size gradient
        are never written. Outputs and gradients equal running them apart."""
        for step in list(self.steps):
            pool = self._absorbable_reader(step) if isinstance(step.layer, BatchNormalization) else None
            code = step.activation._code if step.activation is not None else LINEAR
            if (pool is not None and isinstance(pool.layer, MaxPooling2D) and pool.layer.tiles_input()
                    and pool.layer.pool_size == (2, 2) and code in (LINEAR, RELU) and len(step.shape) == 3):
                step.pool = pool.layer
                self._absorb(step, pool)

    def _fuse_merge_activation(self):
        """Each Add whose output goes only to an elementwise Activation (relu, leaky relu,
        sigmoid, tanh) runs it in its own passes (see layers.merging.Add): a residual
        block's add and relu, one pass each way where there were two."""
        for step in list(self.steps):
            activation = self._absorbable_reader(step) if type(step.layer) is Add else None
            if (activation is not None and isinstance(activation.layer, Activation)
                    and activation.layer._code in NORM_ACTIVATIONS):
                step.activation = activation.layer
                self._absorb(step, activation)

    def _fold_conv_norm(self):
        """Each BatchNormalization that alone reads a Conv2D's or Dense's output, where
        that layer has no activation (nor an absorbed pool), is computed by it in
        inference: the moving statistics, gamma and beta folded into its kernel and bias,
        the norm's absorbed activation applied in the layer's own pass (relu in the
        implicit GEMM's stores). Training runs both as they are."""
        for step in self.steps:
            norm = self._absorbable_reader(step) if hasattr(step.layer, "can_fold_norm") else None
            if (norm is not None and isinstance(norm.layer, BatchNormalization) and step.pool is None
                    and step.layer.can_fold_norm()):
                step.norm = norm.layer
                norm.folded = True

    def _mark_gradients(self):
        """Which steps need an input gradient (a trainable weight lies before them) and
        which need a backward pass at all (one lies before or in them)."""
        self.requires_grad = [False] * self.slot_count
        for step in self.steps:
            needs_input_grad = step.needs_input_grad = any(self.requires_grad[slot] for slot in step.inputs)
            trainable = bool(step.source.params) and step.source.trainable
            step.needs_backward = needs_input_grad or trainable
            self.requires_grad[step.output] = step.needs_backward

    def call_objects(self):
        """Every object that computes: the layers and their call copies."""
        return ([step.layer for step in self.steps] + [step.pool for step in self.steps if step.pool is not None]
                + [step.activation for step in self.steps if step.activation is not None])

    def output_step(self, index):
        slot = self.output_slots[index]
        return next((step for step in self.steps if step.output == slot), None)

    def can_fuse_output(self, index):
        """Whether output ``index``'s activation may be folded into its loss: the tensor
        goes nowhere else (its gradient is then the loss's alone)."""
        step = self.output_step(index)
        return step is not None and not self.consumers(step.output) and self.output_slots.count(step.output) == 1

    def set_fused_outputs(self, fused):
        """``fused``: one bool per output, whether its layer keeps logits for the loss."""
        fused = tuple(fused)
        if fused == self._fused:  # every forward asks; a one-image predict is 100 us in all
            return
        self._fused = fused
        for step in self.steps:
            step.fused_output = False
            if hasattr(step.layer, "keep_logits"):
                step.layer.keep_logits = False
        for index, flag in enumerate(fused):
            step = self.output_step(index)
            if step is not None and flag:
                step.fused_output = step.layer.keep_logits = True

    def forward(self, inputs, training):
        values = self._values
        for slot, value in zip(self.input_slots, inputs):
            values[slot] = value
        for step in self.steps:
            if step.multiple:
                values[step.output] = step.layer.forward([values[slot] for slot in step.inputs], training=training)
            elif training or (step.norm is None and not step.folded):
                values[step.output] = step.layer.forward(values[step.inputs[0]], training=training)
            elif step.folded:
                values[step.output] = values[step.inputs[0]]  # the layer before it computed it
            else:
                values[step.output] = step.layer.forward_folded(values[step.inputs[0]], step.norm)
        outputs = [values[slot] for slot in self.output_slots]
        for slot in range(self.slot_count):
            values[slot] = None  # the plan keeps no batch alive between calls
        return outputs

    def backward(self, output_grads, ops):
        """Run every needed step's backward from ``output_grads`` (one per output, or None
        for an output without a loss); the weights' gradients are added into ``grads``."""
        grads = [None] * self.slot_count

        def add(slot, grad):
            if not self.requires_grad[slot]:
                return
            if grads[slot] is None:
                grads[slot] = grad
            else:
                ops.add_into(grads[slot].reshape(-1), grad.reshape(-1))

        for slot, grad in zip(self.output_slots, output_grads):
            if grad is not None:
                add(slot, grad)
        for step in reversed(self.steps):
            dy = grads[step.output]
            if dy is None or not step.needs_backward:
                continue
            grads[step.output] = None
            result = step.layer.backward(dy, from_logits=True) if step.fused_output else step.layer.backward(dy)
            if not step.needs_input_grad:
                continue
            if step.multiple:
                for slot, grad in zip(step.inputs, result):
                    if grad is not None and self.requires_grad[slot]:
                        add(slot, grad)
            elif result is not None:
                add(step.inputs[0], result)
