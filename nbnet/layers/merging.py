"""Keras's merge layers: Add, Subtract, Multiply, Average, Maximum, Minimum and Concatenate,
and the functions ``add``, ``subtract``, ... that build one and call it on a list of inputs.

A merge layer takes several inputs (``multiple_inputs``): ``build`` gets a list of shapes
(batch axis excluded), ``forward`` a list of arrays (batch first, one dtype) and returns
one array, ``backward(dy)`` returns a list with one gradient per input, in input order.
The gradients are distinct arrays that share no memory, so whoever receives one may
overwrite it: the first is ``dy``'s own memory (which the caller hands over), the others
buffers of the layer.

Unlike Keras, the elementwise merges do not broadcast: their inputs must have one shape.
Maximum and Minimum send the gradient of each element to the input that holds the maximum
(minimum); where several inputs tie, to the first of them (as TensorFlow's chained
``maximum`` does; JAX splits it between them).
"""

import operator

import numpy as np

from ..errors import NbnetError, ShapeError
from .base import Layer


class _Merge(Layer):
    """The shared lifecycle: shape validation (``_make_plan``, per subclass), the checks of
    the arrays ``forward`` receives, and the gradient list's shape."""

    multiple_inputs = True
    min_inputs, max_inputs = 1, None  # Keras takes a single input too (Subtract excepted)

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._plan_key = self._plan = None

    # -- shapes --------------------------------------------------------------------------
    def build(self, input_shapes, rng=None):
        shapes = self._shape_list(input_shapes)
        output_shape = self._plan_for(shapes)[0]
        self.built_input_shape = shapes
        self.built = True
        return output_shape

    def compute_output_shape(self, input_shapes):
        return self._plan_for(self._shape_list(input_shapes))[0]

    def _make_plan(self, shapes):
        """(output shape, what forward needs) for valid per-sample ``shapes``, else a ShapeError."""
        raise NotImplementedError

    def _plan_for(self, shapes):
        key = tuple(shapes)
        if key != self._plan_key:
            self._plan = self._make_plan(list(key))
            self._plan_key = key
        return self._plan

    def _shape_list(self, input_shapes):
        ok = isinstance(input_shapes, (list, tuple)) and all(isinstance(s, (list, tuple)) for s in input_shapes)
        try:
            shapes = [tuple(operator.index(d) for d in s) for s in input_shapes] if ok else None
        except TypeError:
            ok = False
        if not ok:
            raise ShapeError(f"{self._who()} expects a list of input shapes, one per input (batch axis "
                             f"excluded), but received {input_shapes!r}.")
        return shapes

    def _check_count(self, shapes):
        low, high = self.min_inputs, self.max_inputs
        if len(shapes) < low or (high is not None and len(shapes) > high):
            needs = f"exactly {low}" if low == high else f"at least {low}"
            raise self._shapes_error(f"needs {needs} inputs, but received {len(shapes)}, of", shapes)

    def _shapes_error(self, what, shapes):
        shown = [(None,) + tuple(s) for s in shapes]
        return ShapeError(f"{self._who()} {what} shapes {shown}.")

    def _who(self):
        return f"{type(self).__name__} '{self.name}'"

    def _check_inputs(self, inputs):
        """(batch size, plan) for the arrays ``forward`` received, after checking them."""
        if not isinstance(inputs, (list, tuple)):
            raise ShapeError(f"{self._who()} expects a list of inputs, but received one input of shape "
                             f"{getattr(inputs, 'shape', None)}.")
        shapes = [tuple(x.shape) for x in inputs]
        if any(not s for s in shapes) or len({s[0] for s in shapes}) > 1:
            raise ShapeError(f"{self._who()} needs inputs of one batch size, but received arrays of shapes "
                             f"{shapes}.")
        if len({np.dtype(x.dtype) for x in inputs}) > 1:
            raise ShapeError(f"{self._who()} needs inputs of one dtype, but received "
                             f"{', '.join(str(np.dtype(x.dtype)) for x in inputs)}.")
        plan = self._plan_for([s[1:] for s in shapes])
        return shapes[0][0], plan

    def _check_gradient(self, dy, shape):
        if tuple(dy.shape) != shape:
            raise ShapeError(f"{self._who()}: the gradient has shape {tuple(dy.shape)}, but the output "
                             f"of the last forward pass had shape {shape}.")


class _Elementwise(_Merge):
    """A merge of equal-shaped inputs, computed over 1-D views. Subclasses fold the inputs
    into the output (``_merge``), and write the gradients of inputs 1.. into their buffers
    and then that of input 0 over ``dy`` (``_gradients``, all 1-D views)."""

    def _make_plan(self, shapes):
        self._check_count(shapes)
        if any(s != shapes[0] for s in shapes):
            raise self._shapes_error("needs inputs of one shape, but received", shapes)
        return shapes[0], None

    def forward(self, inputs, training=False):
        self._check_inputs(inputs)
        x0 = inputs[0]
        size = x0.size
        y = self._buffer("y", x0.shape, x0.dtype)
        if len(inputs) == 1:  # Keras's merge of one tensor is that tensor
            self.ops.copy(x0, y)
        else:
            self._merge([x.reshape(size) for x in inputs], y.reshape(size))
        self._count, self._shape = len(inputs), tuple(x0.shape)
        return y

    def backward(self, dy):
        if not self.needs_input_grad:
            return [None] * self._count
        self._check_gradient(dy, self._shape)
        size = dy.size
        # Where dy is not contiguous the reshape copies: the result is then returned in its place.
        flat_dy = dy.reshape(size)
        dxs = [self._buffer(f"dx{i}", self._shape, dy.dtype) for i in range(1, self._count)]
        if self._count > 1:
            self._gradients(flat_dy, [dx.reshape(size) for dx in dxs])
        return [flat_dy.reshape(self._shape)] + dxs

    def _fold(self, kernel, xs, out, *args):
        """out = kernel(...kernel(kernel(x0, x1), x2)..., x_n-1), left to right as Keras."""
        kernel(xs[0], xs[1], *args, out)
        for x in xs[2:]:
            kernel(out, x, *args, out)


class Add(_Elementwise):
    """x0 + x1 + ...; every input's gradient is dy. A model's plan may give it the
    elementwise Activation layer that alone reads its output (``activation_after``, see
    executor.Plan._fuse_merge_activation): two inputs then run it in the add's own passes
    on the CPU (kernels/merging.py), otherwise it runs as a layer after the add."""

    activation_after = None
    _fused = False

    def forward(self, inputs, training=False):
        after = self.activation_after
        self._fused = (after is not None and isinstance(inputs, (list, tuple)) and len(inputs) == 2
                       and self.ops.merge_add_activation is not None)
        y = super().forward(inputs, training)
        return after.forward(y, training) if after is not None and not self._fused else y

    def backward(self, dy):
        after = self.activation_after
        if after is not None and not self._fused:
            dy = after.backward(dy)
        return super().backward(dy)

    def _merge(self, xs, out):
        if self._fused:
            self._y = out
            self.ops.merge_add_activation(xs[0], xs[1], self.activation_after._code, self.activation_after._slope, out)
        else:
            self._fold(self.ops.merge_add, xs, out, 1.0)

    def _gradients(self, dy, dxs):
        if self._fused:  # dy taken through the activation in place, and the same into the other input's
            self.ops.activation_gradient_copies(self._y, dy, self.activation_after._code,
                                                self.activation_after._slope, dxs[0])
            return
        for dx in dxs:
            self.ops.copy(dy, dx)


class Subtract(_Elementwise):
    """x0 - x1 (exactly two inputs); the gradients are dy and -dy."""

    min_inputs = max_inputs = 2

    def _merge(self, xs, out):
        self.ops.merge_subtract(xs[0], xs[1], out)

    def _gradients(self, dy, dxs):
        self.ops.merge_divide(dy, -1.0, dxs[0])


class Multiply(_Elementwise):
    """x0 * x1 * ...; input i's gradient is dy times the product of the others, so the
    inputs are kept (by reference, as Dense keeps its input) until ``backward``."""

    def _merge(self, xs, out):
        self._fold(self.ops.merge_multiply, xs, out)
        self._xs = xs

    def _gradients(self, dy, dxs):
        multiply, xs = self.ops.merge_multiply, self._xs
        for i, dx in enumerate(dxs, start=1):
            others = xs[:i] + xs[i + 1:]
            multiply(dy, others[0], dx)
            for x in others[1:]:
                multiply(dx, x, dx)
        for x in xs[1:]:
            multiply(dy, x, dy)


class Average(_Elementwise):
    """(x0 + x1 + ...) / n; every input's gradient is dy / n."""

    def _merge(self, xs, out):
        n = len(xs)
        self.ops.merge_add(xs[0], xs[1], float(n) if n == 2 else 1.0, out)
        for k in range(2, n):
            self.ops.merge_add(out, xs[k], float(n) if k == n - 1 else 1.0, out)

    def _gradients(self, dy, dxs):
        n = float(len(dxs) + 1)
        for dx in dxs:
            self.ops.merge_divide(dy, n, dx)
        self.ops.merge_divide(dy, n, dy)


class _Select(_Elementwise):
    """Maximum and Minimum: forward keeps which input won each element (the first of tied
    inputs), and the gradient goes there alone."""

    def _merge(self, xs, out):
        select = self._select_kernel()
        index = self._buffer("index", out.shape, np.int32)
        select(xs[0], xs[1], 1, out, index)
        for k in range(2, len(xs)):
            select(out, xs[k], k, out, index)
        self._index = index

    def _gradients(self, dy, dxs):
        for k, dx in enumerate(dxs, start=1):
            self.ops.merge_route(dy, self._index, k, dx)
        self.ops.merge_route(dy, self._index, 0, dy)


class Maximum(_Select):
    """max(x0, x1, ...) elementwise; the gradient goes to the (first) input holding it."""

    def _select_kernel(self):
        return self.ops.merge_maximum


class Minimum(_Select):
    """min(x0, x1, ...) elementwise; the gradient goes to the (first) input holding it."""

    def _select_kernel(self):
        return self.ops.merge_minimum


class Concatenate(_Merge):
    """The inputs side by side along ``axis`` (counting the batch axis, as Keras: -1 the
    last; the batch axis 0 is refused); all other axes must match. Computed as column
    blocks of 2-D views: (outer, size_i * inner) into (outer, total * inner)."""

    def __init__(self, axis=-1, **kwargs):
        super().__init__(**kwargs)
        try:
            self.axis = operator.index(axis)
        except TypeError:
            raise NbnetError(f"Concatenate '{self.name}': axis must be an integer, received {axis!r}.") from None

    def _make_plan(self, shapes):
        self._check_count(shapes)
        rank = len(shapes[0]) + 1  # with the batch axis
        if any(len(s) + 1 != rank for s in shapes):
            raise self._shapes_error("needs inputs of one rank, but received", shapes)
        if not -rank <= self.axis < rank:
            raise self._shapes_error(f"cannot concatenate along axis={self.axis}, out of range for inputs of "
                                     f"rank {rank} (batch axis included): received", shapes)
        axis = self.axis % rank
        if axis == 0:
            raise self._shapes_error(f"cannot concatenate along the batch axis (axis={self.axis}): received",
                                     shapes)
        if len({s[:axis - 1] + s[axis:] for s in shapes}) > 1:
            raise self._shapes_error(f"needs inputs that match in every axis but the concatenation axis "
                                     f"(axis={self.axis}), but received", shapes)
        sizes = [s[axis - 1] for s in shapes]
        first = shapes[0]
        output = first[:axis - 1] + (sum(sizes),) + first[axis:]
        outer, inner = int(np.prod(first[:axis - 1], dtype=np.int64)), int(np.prod(first[axis:], dtype=np.int64))
        return output, (outer, [size * inner for size in sizes])

    def forward(self, inputs, training=False):
        batch, (output, (outer, widths)) = self._check_inputs(inputs)
        y = self._buffer("y", (batch,) + output, inputs[0].dtype)
        rows = batch * outer
        y2d = y.reshape(rows, sum(widths))
        offset = 0
        for x, width in zip(inputs, widths):
            self.ops.concat_forward(x.reshape(rows, width), offset, y2d)
            offset += width
        self._x_shapes, self._rows, self._widths = [tuple(x.shape) for x in inputs], rows, widths
        self._shape = tuple(y.shape)
        return y

    def backward(self, dy):
        if not self.needs_input_grad:
            return [None] * len(self._x_shapes)
        self._check_gradient(dy, self._shape)
        dy2d = dy.reshape(self._rows, sum(self._widths))
        dxs, offset = [], 0
        for i, (shape, width) in enumerate(zip(self._x_shapes, self._widths)):
            dx = self._buffer(f"dx{i}", shape, dy.dtype)
            self.ops.concat_backward(dy2d, offset, dx.reshape(self._rows, width))
            dxs.append(dx)
            offset += width
        return dxs

    def get_config(self):
        return {**super().get_config(), "axis": self.axis}


# -- Keras's functional forms: build the layer and call it on the inputs -------------------
def add(inputs, **kwargs):
    return Add(**kwargs)(inputs)


def subtract(inputs, **kwargs):
    return Subtract(**kwargs)(inputs)


def multiply(inputs, **kwargs):
    return Multiply(**kwargs)(inputs)


def average(inputs, **kwargs):
    return Average(**kwargs)(inputs)


def maximum(inputs, **kwargs):
    return Maximum(**kwargs)(inputs)


def minimum(inputs, **kwargs):
    return Minimum(**kwargs)(inputs)


def concatenate(inputs, axis=-1, **kwargs):
    return Concatenate(axis=axis, **kwargs)(inputs)
