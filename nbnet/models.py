"""Keras's models: ``Model`` (the functional API: ``Model(inputs, outputs)`` over layers
called on ``keras.Input`` tensors) and ``Sequential``, the chain case of the same graph.

This module is the Keras surface: building, compiling, weights, summary and config. The
data flows one way from here: training.py runs the loop, executor.py runs the graph's
steps, layers launch kernels; device_session.py keeps the arrays and moves them.
"""

import numpy as np

from . import graph, optimizers, utils
from .device_session import DeviceSession
from .devices import cpu
from .errors import NbnetError, ShapeError
from .executor import Plan
from .layers import InputLayer, Layer
from .layers.base import unique_name
from .outputs import compile_heads
from .training import TrainingLoop


class Model(TrainingLoop, DeviceSession):
    """A graph of layers from ``inputs`` to ``outputs`` (KerasTensors, or lists or dicts
    of them), as Keras's functional Model."""

    # Run each Conv2D + MaxPooling2D pair as one pass (see executor.Plan); read at build.
    fuse_layers = True

    def __init__(self, inputs=None, outputs=None, name=None, seed=None, **kwargs):
        if type(self) is Model and (inputs is None or outputs is None):
            raise NbnetError("Model(inputs=..., outputs=...): nbnet builds models with Keras's functional API or "
                             "Sequential; subclassing Model with a call() method is not supported.")
        trainable = kwargs.pop("trainable", True)
        if kwargs:
            raise NbnetError(f"Model: unexpected arguments {sorted(kwargs)}.")
        self._init_state(name or unique_name("functional"), seed)
        self._trainable = trainable
        if type(self) is Model or inputs is not None:
            self._init_graph(inputs, outputs)

    def _init_state(self, name, seed):
        self.name = name
        self.layers = []
        self.seed = seed
        self.built = False
        self.optimizer = self.loss = None
        self.metrics = []
        self._heads, self._compile_args = [], None
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
        self._input_tensors, self._output_tensors, self._nodes = [], [], []
        self._plan = None

    def _init_graph(self, inputs, outputs):
        if isinstance(outputs, dict):  # Keras orders outputs given as a dict by their keys
            outputs = {key: outputs[key] for key in sorted(outputs)}
        self._inputs_structure, self._outputs_structure = inputs, outputs
        self._input_tensors = graph.flatten_tensors(inputs, f"Model '{self.name}' inputs")
        self._output_tensors = graph.flatten_tensors(outputs, f"Model '{self.name}' outputs")
        self._nodes = graph.trace(self._input_tensors, self._output_tensors, self.name)
        self.layers = graph.keras_layer_order(self._input_tensors, self._output_tensors)
        if self.seed is None:
            self.seed = utils.next_model_seed()
        self.rng = np.random.default_rng(self.seed)
        self._finish_build()

    @property
    def trainable(self):
        return self._trainable

    @trainable.setter
    def trainable(self, value):
        """As Keras: a model frozen (or unfrozen) freezes every layer in it; applied at the
        next compile."""
        self._trainable = bool(value)
        for layer in self._weight_layers():
            layer.trainable = self._trainable

    # -- the graph -----------------------------------------------------------------------
    @property
    def input_names(self):
        return [t.node.layer.name for t in self._input_tensors]

    @property
    def output_names(self):
        """Keras's: each output's layer name."""
        return [t.node.layer.name for t in self._output_tensors]

    def _output_keys(self):
        """The names compile, fit and the logs know the outputs by: the keys of outputs
        given as a dict (as Keras), else their layer names."""
        structure = getattr(self, "_outputs_structure", None)
        return list(structure) if isinstance(structure, dict) else self.output_names

    def _input_shapes(self):
        return [t.sample_shape for t in self._input_tensors]

    @property
    def input_shape(self):
        """Keras's: the input's shape with its batch axis, ``(None, 28, 28, 1)``; a list of
        them for several inputs; None while a Sequential has no known input."""
        if not self._input_tensors and self._known_input_shape() is None:
            return None
        shapes = [(None,) + tuple(shape) for shape in self._input_shapes()]
        single = isinstance(getattr(self, "_inputs_structure", None), graph.KerasTensor) or len(shapes) == 1
        return shapes[0] if single else shapes

    @property
    def output_shape(self):
        """Keras's: the output's shape with its batch axis; a list of them for several outputs."""
        shapes = [t.shape for t in self._output_tensors]
        return shapes[0] if len(shapes) == 1 else shapes

    @property
    def inputs(self):
        return list(self._input_tensors)

    @property
    def outputs(self):
        return list(self._output_tensors)

    @property
    def input(self):
        return self._inputs_structure

    @property
    def output(self):
        return self._outputs_structure

    def _finish_build(self):
        """Set the layers up for this model: its execution plan (which call needs input
        gradients, which conv runs its pool), the flat vectors. Run after a build, an add
        or pop, a trainable change, and when layers shared with another model come back
        (see _claim_layers)."""
        self._plan = Plan(self, fuse=self.fuse_layers)
        self._plan.bind()
        for layer in self._plan.layers:
            layer.owner = self
        for call in self._plan.call_objects():
            if getattr(call, "draws_from_model", False) and call.seed is None:
                call.rng = self.rng  # one Generator for shuffling, dropout, flips: one state to save
            call.set_device(self.ops if self._on_device_depth else cpu)
        self._gather_parameters()
        self.built = True
        if self._compile_args is not None and [h.name for h in self._heads] != self._output_keys():
            self._compile_heads()  # compiled before the outputs were known (an unbuilt Sequential)

    def _claim_layers(self):
        """Layers shared with another model are set up for whichever model ran last; set
        them up for this one again (the weights live in the layers: no value changes)."""
        if self.built and any(getattr(layer, "owner", None) is not self for layer in self._plan.layers):
            self._finish_build()

    def __call__(self, inputs, training=False):
        """On symbolic tensors: this model used as a layer of another (its layers shared).
        On arrays: the model's output for them (see TrainingLoop._call_on_arrays)."""
        if graph.is_symbolic(inputs):
            tensors = graph.flatten_tensors(inputs, f"Model '{self.name}'")
            if not self.built:
                self.build(tensors[0].sample_shape)
            expected = self._input_shapes()
            if [t.sample_shape for t in tensors] != expected:
                raise ShapeError(f"Model '{self.name}' takes inputs of shapes {[(None,) + s for s in expected]}, "
                                 f"but was called on {[t.shape for t in tensors]}.")
            node = graph.Node(self, tensors, [t.sample_shape for t in self._output_tensors])
            return node.outputs[0] if len(node.outputs) == 1 else node.outputs
        return self._call_on_arrays(inputs, training)

    def build(self, input_shape=None):
        """A functional model is built when it is made; this checks the shape asked for."""
        if input_shape is not None:
            shape = tuple(input_shape)
            shape = shape[1:] if shape and shape[0] is None else shape
            if len(self._input_tensors) == 1 and tuple(int(d) for d in shape) != self._input_shapes()[0]:
                raise ShapeError(f"Model '{self.name}' is built for input shape {self._input_tensors[0].shape}; "
                                 f"it cannot be rebuilt for {(None,) + tuple(shape)}.")

    # -- compile -------------------------------------------------------------------------
    def compile(self, optimizer="rmsprop", loss=None, loss_weights=None, metrics=None, device=None,
                steps_per_execution=None):
        """Keras's compile, plus ``device`` ('cpu', 'cuda' or 'auto'; see ``to``). With
        several outputs, ``loss``, ``loss_weights`` and ``metrics`` are lists (one entry per
        output) or dicts keyed by output name (one loss serves every output).
        ``steps_per_execution``: steps between reading the loss and metrics back (and
        calling the batch callbacks); default 1 on the CPU, GPU_STEPS_PER_EXECUTION on a GPU."""
        if loss is None:
            raise NbnetError(f"{type(self).__name__} '{self.name}': compile needs a loss, e.g. "
                             "loss='sparse_categorical_crossentropy'.")
        if steps_per_execution is not None and int(steps_per_execution) < 1:
            raise NbnetError(f"steps_per_execution must be at least 1, received {steps_per_execution!r}.")
        if device is not None:
            self.to(device)
        if metrics is None and _looks_like_metrics(loss_weights):
            # Keras 2's argument order (optimizer, loss, metrics): Keras 3 puts loss_weights third.
            loss_weights, metrics = None, loss_weights
        if not self.built and self._known_input_shape() is not None:
            self.build()
        elif self.built:
            self._apply_trainable()
        self._compile_args = (loss, loss_weights, metrics)
        self.optimizer = optimizers.get(optimizer)
        self.steps_per_execution = None if steps_per_execution is None else int(steps_per_execution)
        self._compile_heads()

    def _compile_heads(self):
        """The outputs' losses and metrics (see outputs.py), once the outputs are known."""
        loss, loss_weights, metrics = self._compile_args
        if not self.built:
            self._heads = compile_heads(["output"], [()], loss, loss_weights, metrics)
        else:
            self._heads = compile_heads(self._output_keys(), [t.sample_shape for t in self._output_tensors], loss,
                                        loss_weights, metrics)
        several = len(self._heads) > 1
        # Keras's attributes: the loss (one per output when several) and every metric.
        self.loss = [head.loss for head in self._heads] if several else self._heads[0].loss
        self.metrics = [metric for head in self._heads for metric in head.metrics]

    def _known_input_shape(self):
        return self._input_shapes()[0] if self._input_tensors else None

    def _apply_trainable(self):
        """Keras applies ``layer.trainable = False`` (or True) at the next compile: the
        flat vectors are gathered afresh when the set of trainable layers changed."""
        if [(id(layer), key) for layer, key in self._flat_entries] != [
                (id(layer), key) for layer in self._plan.layers if layer.trainable for key in layer.params]:
            self._finish_build()

    # -- weights -------------------------------------------------------------------------
    def _weight_layers(self):
        """The layers holding weights, in Keras's weights order (a nested model's in its place)."""
        found = []
        for layer in self.layers:
            found.extend(layer._weight_layers() if isinstance(layer, Model) else [layer])
        return list({id(layer): layer for layer in found}.values())

    @property
    def trainable_weights(self):
        """The trainable layers' weights (Keras's order), as arrays."""
        return [layer.params[key] for layer in self._weight_layers() if layer.trainable
                for key in layer.weight_order if key in layer.params]

    @property
    def non_trainable_weights(self):
        """Frozen layers' weights and every layer's state (BatchNormalization's moving statistics)."""
        return [layer.params[key] if key in layer.params else layer.state[key] for layer in self._weight_layers()
                for key in layer.weight_order if not (layer.trainable and key in layer.params)]

    @property
    def weights(self):
        return [w for layer in self._weight_layers() for w in (layer.params.get(k, layer.state.get(k))
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
        return [w for layer in self._weight_layers() for w in layer.get_weights()]

    def set_weights(self, weights):
        self._require_built()
        weights = list(weights)
        layers = self._weight_layers()
        expected = sum(len(layer.weight_order) for layer in layers)
        if len(weights) != expected:
            raise ShapeError(f"{type(self).__name__} '{self.name}' has {expected} weight arrays, but received "
                             f"{len(weights)}.")
        position = 0
        for layer in layers:
            count = len(layer.weight_order)
            layer.set_weights(weights[position:position + count])
            position += count

    def _require_built(self):
        if not self.built:
            raise NbnetError(f"{type(self).__name__} '{self.name}' is not built yet: give the first layer "
                             "input_shape=(...) or call model.build(input_shape).")

    def count_params(self):
        return sum(layer.count_params() for layer in self._weight_layers())

    # -- description and files --------------------------------------------------------------
    def summary(self, print_fn=None):
        from .summary import render_summary

        self._require_built()
        text = render_summary(self)
        (print_fn or print)(text)
        return text

    def get_config(self):
        from .functional_config import functional_config

        return functional_config(self)

    @classmethod
    def from_config(cls, config):
        from .functional_config import from_functional_config

        return from_functional_config(config)

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


class Sequential(Model):
    """Layers run in order: the chain case of Model, built as soon as its input shape is
    known (an ``Input`` first, or a first layer given ``input_shape``)."""

    def __init__(self, layers=None, name=None, seed=None, trainable=True):
        # Keras's names: sequential, sequential_1, ... (backend.clear_session starts them afresh).
        super().__init__(name=name or unique_name("sequential"), seed=seed, trainable=trainable)
        self._input_layer = None
        self.output_shapes = []
        for layer in layers or []:
            self.add(layer)

    # -- construction ----------------------------------------------------------------
    def add(self, layer):
        """Append ``layer``. As in Keras, once the input shape is known (an ``Input`` first,
        or a first layer given ``input_shape``) each added layer is built at once, so
        ``summary()`` works before ``compile``."""
        if isinstance(layer, graph.KerasTensor) and layer.node is not None and layer.node.is_input:
            layer = layer.node.layer  # keras.Input(...) given to a Sequential: its InputLayer
        if isinstance(layer, Model):
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
        self.layers.append(layer)
        if self.built or self._known_input_shape() is not None:
            try:
                self.build() if not self.built else self._link_layers()
            except NbnetError:
                self.layers.pop()  # nothing half-added: the model stays as it was
                if self.built:
                    self._link_layers()
                raise

    def pop(self):
        """Remove the last layer, as Keras's Sequential.pop (the others keep their weights)."""
        if not self.layers:
            raise NbnetError(f"Sequential '{self.name}' has no layer to pop.")
        layer = self.layers.pop()
        if self.built:
            if self.layers:
                self._link_layers()
            else:
                self.built, self.output_shapes = False, []
        return layer

    def _add_model(self, model):
        """A model used as a layer (Keras's ``Sequential([model, layers.Softmax()])``): its
        layers join this model, shared, so both see the same weights; whichever model runs
        next gathers them (see _claim_layers)."""
        inner = [layer for layer in model.layers if not isinstance(layer, InputLayer)]
        if not inner:
            raise NbnetError(f"Sequential '{self.name}': the model '{model.name}' added to it has no layers.")
        if not _is_chain(model):
            raise NbnetError(f"Sequential '{self.name}': the model '{model.name}' is not a chain of layers; call it "
                             "on a tensor in a functional Model instead.")
        if not self.layers and self._input_layer is None and model.built:
            self._input_layer = InputLayer(shape=model._input_shapes()[0])
        for layer in inner:
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
        if self.built and shape == self._sample_input_shape:
            self._finish_build()  # fuse_layers may have changed since
            return
        if self.built:
            raise ShapeError(f"Sequential '{self.name}' is built for input shape {self.input_shape}; it "
                             f"cannot be rebuilt for {(None,) + shape} (its weights have those shapes). Build a new "
                             "model for the other shape.")
        if self.seed is None:
            self.seed = utils.next_model_seed()
        self.rng = np.random.default_rng(self.seed)
        if self._input_layer is None or self._input_layer.shape != shape:
            self._input_layer = InputLayer(shape=shape)
        self._sample_input_shape = shape
        self._link_layers()

    def _link_layers(self):
        """The chain's graph: each layer called on the one before (new layers are built
        from the model's generator, so a seeded model draws the same weights)."""
        for node in self._nodes:  # this chain's earlier calls, replaced by the ones below
            calls = node.layer.__dict__.get("_inbound_nodes", [])
            if node in calls:
                calls.remove(node)
        tensor = graph.input_tensor(self._input_layer)
        inputs, nodes, shapes = [tensor], [], []
        for layer in self.layers:
            if layer.built and not isinstance(layer.built_input_shape, list) and \
                    tuple(layer.built_input_shape) != tensor.sample_shape:
                raise ShapeError(f"Layer '{layer.name}' was built for input shape "
                                 f"{(None,) + tuple(layer.built_input_shape)}, but in model '{self.name}' it "
                                 f"receives {tensor.shape}; use a new layer there.")
            tensor = graph.call_layer(layer, tensor, lambda: self.rng)
            nodes.append(tensor.node)
            shapes.append(tensor.sample_shape)
        self._input_tensors, self._output_tensors, self._nodes = inputs, [tensor], nodes
        self._inputs_structure, self._outputs_structure = inputs[0], tensor
        self.output_shapes = shapes
        self._finish_build()

    @property
    def input_names(self):
        return [self._input_layer.name] if self._input_layer is not None else ["input"]

    def _input_shapes(self):
        shape = self._sample_input_shape if self.built else self._known_input_shape()
        return [tuple(shape)] if shape is not None else []

    def get_config(self):
        return {"name": self.name, "seed": self.seed,
                "input_shape": list(self._sample_input_shape) if self.built else None,
                "layers": [{"class_name": type(layer).__name__, "config": layer.get_config()} for layer in self.layers]}


def _is_chain(model):
    """Whether ``model`` runs its layers one after another, each once, on one input."""
    previous = model._input_tensors[0] if len(model._input_tensors) == 1 else None
    for node in model._nodes:
        if node.inputs != [previous] or len(node.outputs) != 1:
            return False
        previous = node.outputs[0]
    return len(model._input_tensors) <= 1 and len({id(node.layer) for node in model._nodes}) == len(model._nodes)


def _looks_like_metrics(value):
    """Metric names or objects: never loss weights, which are numbers."""
    from .metrics import Metric

    items = list(value.values()) if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else []
    return bool(items) and all(isinstance(item, (str, Metric, list, tuple)) or callable(item) for item in items)


def load_model(path):
    from .saving import load_model as load

    return load(path)
