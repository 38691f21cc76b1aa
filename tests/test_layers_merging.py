"""The merge layers (Add, Subtract, Multiply, Average, Maximum, Minimum, Concatenate):
forward against NumPy (bit for bit in float32, where the fold order is NumPy's), backward
against central finite differences in float64, the gradient list's contract (one array per
input, no two sharing memory), Maximum's and Minimum's tie rule, the shape errors, the
config, and the CUDA twins against the CPU kernels through the layers, under Numba's CUDA
simulator (see simulator.py: a plain run starts the simulated one in a subprocess)."""

import os
import sys

import numpy as np
import pytest

from nbnet import layers
from nbnet.errors import NbnetError, ShapeError
from nbnet.layers import merging

try:
    from .simulator import ON_CUDA, plain_only, run_under_simulator, sim_only, small_launches
except ImportError:  # tests/ is not a package
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from simulator import ON_CUDA, plain_only, run_under_simulator, sim_only, small_launches


def _numpy_merge(cls, xs):
    """Keras's merge on NumPy arrays, folding left to right as Keras does."""
    fold = {layers.Add: np.add, layers.Subtract: np.subtract, layers.Multiply: np.multiply,
            layers.Average: np.add, layers.Maximum: np.maximum, layers.Minimum: np.minimum}[cls]
    out = xs[0]
    for x in xs[1:]:
        out = fold(out, x)
    return out / out.dtype.type(len(xs)) if cls is layers.Average else out


ELEMENTWISE = [layers.Add, layers.Subtract, layers.Multiply, layers.Average, layers.Maximum, layers.Minimum]
# (class, number of inputs): Subtract takes exactly two.
ELEMENTWISE_CASES = [(cls, n) for cls in ELEMENTWISE for n in (2, 3) if not (cls is layers.Subtract and n == 3)]


def built(layer, shapes):
    out = layer.build(shapes)
    assert layer.built and layer.built_input_shape == [tuple(s) for s in shapes]
    assert out == layer.compute_output_shape(shapes)
    return layer


def inputs(rng, shapes, batch, dtype=np.float32):
    return [rng.standard_normal((batch,) + tuple(s)).astype(dtype) for s in shapes]


# -- CPU ------------------------------------------------------------------------------------
@plain_only
@pytest.mark.parametrize("cls, n", ELEMENTWISE_CASES)
@pytest.mark.parametrize("shape", [(6,), (3, 4, 5)])
def test_elementwise_forward_matches_numpy(cls, n, shape):
    rng = np.random.default_rng(1)
    layer = built(cls(), [shape] * n)
    assert layer.compute_output_shape([shape] * n) == shape
    for batch in (4, 2):  # a second batch size: the output buffer is remade
        xs = inputs(rng, [shape] * n, batch)
        y = layer.forward(xs)
        assert y.shape == (batch,) + shape and y.dtype == np.float32
        np.testing.assert_array_equal(y, _numpy_merge(cls, xs))


@plain_only
@pytest.mark.parametrize("axis", [-1, 1, 2, 3, -3])
def test_concatenate_forward_matches_numpy(axis):
    rng = np.random.default_rng(2)
    base = [3, 4, 5]
    shapes = []
    for size in (2, 1, 3):
        shape = list(base)
        shape[axis % 4 - 1] = size
        shapes.append(tuple(shape))
    layer = built(layers.Concatenate(axis=axis), shapes)
    xs = inputs(rng, shapes, 2)
    expected = np.concatenate(xs, axis=axis)
    assert layer.compute_output_shape(shapes) == expected.shape[1:]
    np.testing.assert_array_equal(layer.forward(xs), expected)
    two = built(layers.Concatenate(axis=axis), shapes[:2])
    np.testing.assert_array_equal(two.forward(xs[:2]), np.concatenate(xs[:2], axis=axis))


@plain_only
def test_concatenate_two_dimensional_inputs():
    rng = np.random.default_rng(3)
    shapes = [(4,), (1,), (3,)]
    layer = built(layers.Concatenate(), shapes)
    xs = inputs(rng, shapes, 5)
    np.testing.assert_array_equal(layer.forward(xs), np.concatenate(xs, axis=1))
    dy = rng.standard_normal((5, 8)).astype(np.float32)
    dxs = layer.backward(dy)
    for dx, expected in zip(dxs, np.split(dy, [4, 5], axis=1)):
        np.testing.assert_array_equal(dx, expected)


def _finite_difference_check(layer, xs, rng, eps=1e-6):
    """The layer's gradients of sum(proj * y) against central differences (float64)."""
    y = layer.forward(xs)
    proj = rng.standard_normal(y.shape)
    dxs = layer.backward(proj.copy())  # the layer may overwrite what it is handed
    assert len(dxs) == len(xs)
    for x, dx in zip(xs, dxs):
        assert dx.shape == x.shape and dx.dtype == np.float64
        numeric = np.empty_like(x)
        for idx in np.ndindex(x.shape):
            old = x[idx]
            x[idx] = old + eps
            plus = float((layer.forward(xs) * proj).sum())
            x[idx] = old - eps
            minus = float((layer.forward(xs) * proj).sum())
            x[idx] = old
            numeric[idx] = (plus - minus) / (2 * eps)
        np.testing.assert_allclose(dx, numeric, rtol=1e-6, atol=1e-8)


@plain_only
@pytest.mark.parametrize("cls, n", ELEMENTWISE_CASES)
def test_elementwise_backward_matches_finite_differences(cls, n):
    rng = np.random.default_rng(4)
    shape = (3, 4)
    layer = built(cls(), [shape] * n).astype(np.float64)
    _finite_difference_check(layer, inputs(rng, [shape] * n, 2, np.float64), rng)


@plain_only
@pytest.mark.parametrize("axis, shapes", [(-1, [(3, 2), (3, 1), (3, 3)]), (1, [(2, 4), (1, 4)]),
                                          (2, [(2, 3, 1), (2, 1, 1), (2, 2, 1)]), (-3, [(1, 2, 3), (2, 2, 3)])])
def test_concatenate_backward_matches_finite_differences(axis, shapes):
    rng = np.random.default_rng(5)
    layer = built(layers.Concatenate(axis=axis), shapes).astype(np.float64)
    _finite_difference_check(layer, inputs(rng, shapes, 2, np.float64), rng)


def _all_cases():
    return ([(cls, [(3, 4)] * n) for cls, n in ELEMENTWISE_CASES]
            + [(layers.Concatenate, [(3, 4), (3, 2), (3, 1)])])


@plain_only
@pytest.mark.parametrize("cls, shapes", _all_cases())
def test_gradients_are_distinct_arrays(cls, shapes):
    """Each gradient may be overwritten by whoever receives it: no two share memory, and
    none shares the layer's output or (for Multiply) an input it still reads."""
    rng = np.random.default_rng(6)
    layer = built(cls(), shapes)
    xs = inputs(rng, shapes, 2)
    y = layer.forward(xs)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    first = [dx.copy() for dx in layer.backward(dy.copy())]
    dxs = layer.backward(dy.copy())
    assert len(dxs) == len(xs)
    for i, dx in enumerate(dxs):
        assert dx.shape == xs[i].shape and dx.dtype == np.float32
        assert not np.shares_memory(dx, y) and not any(np.shares_memory(dx, x) for x in xs)
        for other in dxs[i + 1:]:
            assert not np.shares_memory(dx, other)
    # A second backward gives the same (nothing it reads was overwritten by the first).
    for dx, again in zip(first, dxs):
        np.testing.assert_array_equal(dx, again)
    layer.needs_input_grad = False
    assert layer.backward(dy) == [None] * len(xs)


@plain_only
@pytest.mark.parametrize("cls, pick", [(layers.Maximum, np.argmax), (layers.Minimum, np.argmin)])
def test_maximum_and_minimum_send_the_gradient_to_the_first_winner(cls, pick):
    rng = np.random.default_rng(7)
    # Small integers: many ties, two-way and three-way.
    xs = [rng.integers(-1, 2, (6, 10)).astype(np.float32) for _ in range(3)]
    layer = built(cls(), [(10,)] * 3)
    np.testing.assert_array_equal(layer.forward(xs), _numpy_merge(cls, xs))
    dy = rng.standard_normal((6, 10)).astype(np.float32) + 5  # no zero gradients
    dxs = layer.backward(dy.copy())
    winner = pick(np.stack(xs), axis=0)  # NumPy's argmax/argmin: the first of tied inputs
    for k, dx in enumerate(dxs):
        np.testing.assert_array_equal(dx, np.where(winner == k, dy, 0))
    # NaN propagates, as np.maximum does, and its input takes the gradient.
    xs[1][0, 0], xs[0][1, 1] = np.nan, np.nan
    y = layer.forward(xs)
    assert np.isnan(y[0, 0]) and np.isnan(y[1, 1])
    dxs = layer.backward(dy.copy())
    assert dxs[1][0, 0] == dy[0, 0] and dxs[0][1, 1] == dy[1, 1]


@plain_only
def test_subtract_and_average_gradients_are_exact():
    rng = np.random.default_rng(8)
    xs = inputs(rng, [(5,)] * 3, 4)
    dy = rng.standard_normal((4, 5)).astype(np.float32)
    sub = built(layers.Subtract(), [(5,)] * 2)
    sub.forward(xs[:2])
    dx0, dx1 = sub.backward(dy.copy())
    np.testing.assert_array_equal(dx0, dy)
    np.testing.assert_array_equal(dx1, -dy)
    avg = built(layers.Average(), [(5,)] * 3)
    avg.forward(xs)
    for dx in avg.backward(dy.copy()):
        np.testing.assert_array_equal(dx, dy / np.float32(3))


@plain_only
def test_shape_errors_name_the_layer_and_every_shape():
    with pytest.raises(ShapeError, match=r"^Add 'add_3' needs inputs of one shape, but received shapes "
                                         r"\[\(None, 8\), \(None, 4\)\]"):
        layers.Add(name="add_3").build([(8,), (4,)])
    with pytest.raises(ShapeError, match=r"Multiply 'm' needs inputs of one shape.*\[\(None, 2, 3\), "
                                         r"\(None, 2, 3\), \(None, 3, 2\)\]"):
        layers.Multiply(name="m").compute_output_shape([(2, 3), (2, 3), (3, 2)])
    with pytest.raises(ShapeError, match=r"Subtract 's' needs exactly 2 inputs, but received 3.*"
                                         r"\[\(None, 4\), \(None, 4\), \(None, 4\)\]"):
        layers.Subtract(name="s").build([(4,)] * 3)
    with pytest.raises(ShapeError, match=r"needs exactly 2 inputs, but received 1, of shapes \[\(None, 4\)\]"):
        layers.Subtract().build([(4,)])
    with pytest.raises(ShapeError, match=r"needs at least 1 inputs, but received 0"):
        layers.Maximum().build([])


@pytest.mark.parametrize("cls", [c for c in ELEMENTWISE if c is not layers.Subtract] + [layers.Concatenate])
def test_a_merge_of_one_input_is_that_input(cls):
    """As Keras 3 (checked in the benchmark virtualenv: Add, Concatenate and Maximum of
    [x] give x's shape): one input passes through, and so does its gradient."""
    rng = np.random.default_rng(12)
    x, dy = rng.standard_normal((3, 4)).astype(np.float32), rng.standard_normal((3, 4)).astype(np.float32)
    layer = built(cls(), [(4,)])
    np.testing.assert_array_equal(layer.forward([x]), x)
    (dx,) = layer.backward(dy.copy())
    np.testing.assert_array_equal(dx, dy)
    with pytest.raises(ShapeError, match=r"expects a list of input shapes.*received \(8,\)"):
        layers.Add().build((8,))
    with pytest.raises(ShapeError, match=r"^Concatenate 'c' needs inputs that match in every axis but the "
                                         r"concatenation axis \(axis=-1\), but received shapes "
                                         r"\[\(None, 3, 4\), \(None, 2, 5\)\]"):
        layers.Concatenate(name="c").build([(3, 4), (2, 5)])
    assert layers.Concatenate(axis=2).build([(3, 4), (3, 5)]) == (3, 9)
    assert layers.Concatenate(axis=1).build([(3, 4), (2, 4)]) == (5, 4)
    for axis in (0, -3):
        with pytest.raises(ShapeError, match=rf"batch axis \(axis={axis}\).*\[\(None, 3, 4\), \(None, 2, 4\)\]"):
            layers.Concatenate(axis=axis).build([(3, 4), (2, 4)])
    for axis in (3, -4):
        with pytest.raises(ShapeError, match=rf"axis={axis}, out of range for inputs of rank 3"):
            layers.Concatenate(axis=axis).build([(3, 4), (2, 4)])
    with pytest.raises(ShapeError, match=r"one rank.*\[\(None, 3, 4\), \(None, 12\)\]"):
        layers.Concatenate().build([(3, 4), (12,)])
    with pytest.raises(NbnetError, match="axis must be an integer"):
        layers.Concatenate(axis=1.0)


@plain_only
def test_forward_checks_the_arrays():
    rng = np.random.default_rng(9)
    add = built(layers.Add(name="a"), [(4,), (4,)])
    with pytest.raises(ShapeError, match=r"one batch size.*\[\(3, 4\), \(2, 4\)\]"):
        add.forward(inputs(rng, [(4,)], 3) + inputs(rng, [(4,)], 2))
    with pytest.raises(ShapeError, match="one dtype, but received float32, float64"):
        add.forward([np.zeros((2, 4), np.float32), np.zeros((2, 4))])
    with pytest.raises(ShapeError, match=r"one shape.*\[\(None, 4\), \(None, 5\)\]"):
        add.forward(inputs(rng, [(4,), (5,)], 2))
    with pytest.raises(ShapeError, match="expects a list of inputs, but received one input of shape"):
        add.forward(np.zeros((2, 4), np.float32))
    y = add.forward(inputs(rng, [(4,), (4,)], 2))
    with pytest.raises(ShapeError, match=r"gradient has shape \(3, 4\).*\(2, 4\)"):
        add.backward(np.zeros((3, 4), np.float32))
    assert y.shape == (2, 4)


@plain_only
def test_config_and_names():
    for cls in ELEMENTWISE:
        layer = cls(name="merge_me", trainable=False)
        config = layer.get_config()
        assert config == {"name": "merge_me", "trainable": False}
        assert cls(**config).get_config() == config
        assert layer.multiple_inputs and layer.weight_order == () and layer.count_params() == 0
        assert layer.get_weights() == []
    assert layers.Add().name.startswith("add") and layers.Concatenate().name.startswith("concatenate")
    config = layers.Concatenate(axis=2, name="cat").get_config()
    assert config == {"name": "cat", "trainable": True, "axis": 2}
    assert layers.Concatenate(**config).axis == 2 and layers.Concatenate().axis == -1
    for fn in ("add", "subtract", "multiply", "average", "maximum", "minimum", "concatenate"):
        assert callable(getattr(merging, fn))


@plain_only
def test_one_compiled_signature_per_dtype_across_ranks_and_batches():
    """The kernels run on flattened views: one float32 signature serves every rank, batch
    size and concatenation axis."""
    import numba

    from nbnet.kernels import merging as kernels

    rng = np.random.default_rng(10)
    for shape, batch in (((5,), 3), ((2, 3, 4), 2), ((2, 3, 4), 5)):
        for cls in ELEMENTWISE:
            layer = built(cls(), [shape] * 2)
            layer.backward(layer.forward(inputs(rng, [shape] * 2, batch)).copy())
        cat = built(layers.Concatenate(axis=1), [shape, shape])
        cat.backward(cat.forward(inputs(rng, [shape] * 2, batch)).copy())
    for name in ("merge_add", "merge_subtract", "merge_multiply", "merge_divide", "merge_maximum",
                 "merge_minimum", "merge_route", "concat_forward", "concat_backward"):
        dispatcher = getattr(kernels, name)
        float32 = [sig for sig in dispatcher.signatures if sig[0].dtype == numba.float32]
        assert len(float32) == 1, (name, dispatcher.signatures)


# -- CUDA -----------------------------------------------------------------------------------
@plain_only
def test_merging_cuda_under_simulator(request):
    # The kernels' PTX check is test_cuda_kernels.py's test_kernels_compile_for_a_real_gpu.
    run_under_simulator(request)


if ON_CUDA:
    from numba import cuda

    from nbnet.devices import cuda as cuda_ops

    @pytest.fixture(autouse=True, scope="module")
    def tiny_launches():
        """Fast under the simulator, and every grid-stride loop runs more than once
        (3 blocks of 32 threads against 112-element arrays)."""
        with small_launches():
            yield


def _host(array):
    return array.copy_to_host() if hasattr(array, "copy_to_host") else np.asarray(array)


@sim_only
@pytest.mark.parametrize("cls, shapes, kwargs", [(cls, [(7, 8)] * n, {}) for cls, n in ELEMENTWISE_CASES]
                         + [(layers.Concatenate, [(7, 8), (7, 3), (7, 5)], {}),
                            (layers.Concatenate, [(2, 8), (5, 8)], {"axis": 1})])
def test_layers_on_cuda_match_the_cpu(cls, shapes, kwargs):
    rng = np.random.default_rng(11)
    # Small integers, so Maximum and Minimum meet two- and three-way ties.
    xs = [rng.integers(-2, 3, (2,) + s).astype(np.float32) for s in shapes]
    cpu_layer = built(cls(**kwargs), shapes)
    gpu_layer = built(cls(**kwargs), shapes)
    gpu_layer.set_device(cuda_ops)
    y = cpu_layer.forward(xs)
    y_dev = gpu_layer.forward([cuda.to_device(x) for x in xs])
    np.testing.assert_allclose(_host(y_dev), y, rtol=1e-6, atol=0)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dxs = cpu_layer.backward(dy.copy())
    dxs_dev = gpu_layer.backward(cuda.to_device(dy))
    assert len(dxs_dev) == len(xs)
    for dx_dev, dx in zip(dxs_dev, dxs):
        assert tuple(dx_dev.shape) == dx.shape
        np.testing.assert_allclose(_host(dx_dev), dx, rtol=1e-6, atol=0)
