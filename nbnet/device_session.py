"""Where a model's arrays live, and how they get to a device and back.

All trainable parameters live in one flat float32 vector (each layer holds views into
it), so the optimizer updates the whole model in one kernel launch per step and saving
or restoring is one copy.

The same training step runs on the CPU and on a GPU (``compile(device=...)`` or
``model.to(device)``): layers launch their kernels through the device module ``ops``.
On a GPU, each fit, evaluate or predict copies the weights, optimizer slots and layer
state to the device at the start and back at the end (and around the callbacks, see
``_on_host``), so between calls the host arrays are current: saving, ``get_weights`` and
ONNX export never see device arrays.
"""

from contextlib import contextmanager

import numpy as np

from . import devices
from .devices import cpu


class DeviceSession:
    """The parameter vectors and the device session of a Model (a mixin: it reads the
    model's ``_plan``, ``optimizer`` and ``ops``)."""

    # -- the flat parameter vectors ------------------------------------------------------
    def _gather_parameters(self):
        """Move trainable weights and their gradients into two flat vectors and rebind
        each layer's arrays to views of them; frozen layers get arrays of their own."""
        layers = self._plan.layers
        previous = {(id(layer), key) for layer, key in getattr(self, "_flat_entries", [])}
        self._flat_entries = [(layer, key) for layer in layers if layer.trainable for key in layer.params]
        for layer in layers:
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
        loose = {(index, store, key): getattr(layer, store)[key] for index, layer in enumerate(self._plan.layers)
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
            getattr(self._plan.layers[index], store)[key] = value
        if self.optimizer is not None:
            self.optimizer.slots = dict(arrays["slots"])
        for layer in self._plan.call_objects():
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
