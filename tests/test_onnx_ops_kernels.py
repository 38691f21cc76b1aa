"""The kernels of the layers ONNX import adds (nbnet/kernels/onnx_ops.py: Permute, the
broadcasting arithmetic of ConstantOperation and BroadcastOperation, Clip, LogSoftmax):
the CPU kernels against NumPy references over several ranks and broadcasts (rank-4
(1, C, 1, 1) operands, scalars, both operands broadcast), the geometry they take, and the
CUDA twins against the CPU kernels, directly and through the layers, under Numba's CUDA
simulator (see simulator.py: a plain run starts the simulated one in a subprocess). The
layers' gradients against finite differences are in test_onnx_import.py."""

import os
import sys

import numpy as np
import pytest

from nbnet import layers
from nbnet.kernels import onnx_ops as K

try:
    from .simulator import ON_CUDA, plain_only, run_under_simulator, sim_only, small_launches
except ImportError:  # tests/ is not a package
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from simulator import ON_CUDA, plain_only, run_under_simulator, sim_only, small_launches


def _numpy_forward(operation, a, b):
    return {"add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.divide,
            "rsub": lambda x, y: np.subtract(y, x), "rdiv": lambda x, y: np.divide(y, x)}[operation](a, b)


def _reduce_to(gradient, shape):
    """The NumPy reference's reduction: gradient summed over the axes broadcast expanded."""
    lead = gradient.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(lead + i for i, d in enumerate(shape) if d == 1 and gradient.shape[lead + i] != 1)
    return (gradient.sum(axis=axes, keepdims=True) if axes else gradient).reshape(shape)


def _numpy_backward(operation, a, b, dy):
    """The gradients of sum(dy * (a (op) b)) with respect to a and b (the former NumPy kernel)."""
    if operation in ("add", "sub", "rsub"):
        ga = -dy if operation == "rsub" else dy
        gb = -dy if operation == "sub" else dy
    elif operation == "mul":
        ga, gb = dy * b, dy * a
    elif operation == "div":
        ga, gb = dy / b, -dy * a / (b * b)
    else:
        ga, gb = -dy * b / (a * a), dy / a
    return (_reduce_to(np.broadcast_to(ga, dy.shape), a.shape), _reduce_to(np.broadcast_to(gb, dy.shape), b.shape))


# (a's shape, b's shape): NumPy broadcasting, leading axes of size 1 left out or not.
BROADCASTS = [
    ((2, 3, 4, 5), (1, 3, 1, 1)),  # a per-channel constant, NCHW
    ((2, 3, 4, 5), (3, 1, 1)),
    ((2, 4, 5, 3), (3,)),  # per-channel, channels last
    ((2, 3, 4, 5), ()),  # a scalar
    ((), (2, 3, 4)),
    ((2, 3, 4, 5), (2, 3, 4, 5)),  # no broadcast
    ((2, 1, 4, 1), (1, 3, 1, 5)),  # both broadcast
    ((4, 1, 3), (5, 1)),
    ((1,), (1,)),
    ((2, 1, 3, 1, 2, 1), (1, 2, 1, 3, 1, 2)),  # rank 6
    ((3, 9000), ()),  # one long merged axis, split into pieces across the cores
]


def _operands(rng, a_shape, b_shape, dtype=np.float32):
    # Away from zero, so the divisions stay well conditioned.
    sign = lambda s: np.where(rng.random(s) < 0.5, -1.0, 1.0)  # noqa: E731
    a = (rng.uniform(0.5, 2.0, a_shape) * sign(a_shape)).astype(dtype)
    b = (rng.uniform(0.5, 2.0, b_shape) * sign(b_shape)).astype(dtype)
    return a, b


def _flat(x):
    return np.ascontiguousarray(x).reshape(-1)


def cpu_binary(operation, a, b):
    out_shape = np.broadcast_shapes(a.shape, b.shape)
    out = np.empty(out_shape, a.dtype)
    K.binary_forward(K.CODES[operation], _flat(a), _flat(b), K.broadcast_geometry(out_shape, a.shape, b.shape),
                     out.reshape(-1))
    return out


def cpu_binary_backward(operation, a, b, dy):
    grads = []
    for which, x in enumerate((a, b)):
        grad = np.empty(x.shape, dy.dtype)
        geometry, kept = K.reduction_geometry(which, dy.shape, a.shape, b.shape)
        K.binary_backward(K.CODES[operation], which, _flat(a), _flat(b), _flat(dy), geometry, kept, grad.reshape(-1))
        grads.append(grad)
    return grads


# -- CPU ------------------------------------------------------------------------------------
@plain_only
@pytest.mark.parametrize("shape, axes", [((7,), (0,)), ((3, 5), (1, 0)), ((2, 3, 4), (0, 2, 1)),
                                         ((2, 3, 4, 5), (0, 2, 3, 1)), ((2, 3, 4, 5), (0, 3, 1, 2)),
                                         ((2, 3, 4, 5), (3, 2, 1, 0)), ((2, 3, 1, 5), (0, 2, 3, 1)),
                                         ((2, 3, 2, 2, 3), (4, 0, 3, 1, 2)), ((2, 1, 3, 2, 2, 3), (0, 5, 2, 4, 1, 3)),
                                         ((0, 3, 2), (0, 2, 1)), ((2, 2, 9000), (1, 0, 2)), ((2, 9000), (0, 1))])
def test_permute_matches_numpy(shape, axes):
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    out = np.empty(tuple(shape[a] for a in axes), np.float32)
    K.permute_forward(x.reshape(-1), K.permute_geometry(shape, axes), out.reshape(-1))
    np.testing.assert_array_equal(out, np.transpose(x, axes))


@plain_only
def test_geometry_merges_axes_and_drops_ones():
    # (N, C, H, W) (op) (1, C, 1, 1): H and W merge, the batch axis stays apart.
    np.testing.assert_array_equal(K.broadcast_geometry((2, 3, 4, 5), (2, 3, 4, 5), (1, 3, 1, 1)),
                                  [[2, 3, 20], [60, 20, 1], [0, 1, 0]])
    # Channels last: one axis of rows, one of channels.
    np.testing.assert_array_equal(K.broadcast_geometry((2, 4, 5, 3), (2, 4, 5, 3), (3,)),
                                  [[40, 3], [3, 1], [0, 1]])
    np.testing.assert_array_equal(K.broadcast_geometry((2, 3), (2, 3), (2, 3)), [[6], [1], [1]])
    np.testing.assert_array_equal(K.broadcast_geometry((), (), ()), [[1], [0], [0]])
    # The operand's axes first, then those it is summed over (dims, dy's strides, a's strides).
    geometry, kept = K.reduction_geometry(1, (2, 3, 4, 5), (2, 3, 4, 5), (1, 3, 1, 1))
    assert kept == 1
    np.testing.assert_array_equal(geometry, [[3, 2, 20], [20, 60, 1], [20, 60, 1]])
    geometry, kept = K.reduction_geometry(1, (2, 3, 4), (2, 3, 4), ())
    assert kept == 0
    np.testing.assert_array_equal(geometry, [[24], [1], [1]])
    # A transpose of the last two axes of (N, H, W, C): rows of C, stride along them.
    np.testing.assert_array_equal(K.permute_geometry((2, 4, 5, 3), (0, 3, 1, 2)), [[2, 3, 20], [60, 1, 3]])
    assert K.softmax_geometry((2, 3, 4, 5), -1) == (24, 5, 1)
    assert K.softmax_geometry((2, 3, 4, 5), 1) == (2, 3, 20)


@plain_only
@pytest.mark.parametrize("operation", K.OPERATIONS)
@pytest.mark.parametrize("a_shape, b_shape", BROADCASTS)
def test_binary_forward_and_backward_match_numpy(operation, a_shape, b_shape):
    rng = np.random.default_rng(1)
    a, b = _operands(rng, a_shape, b_shape)
    out = cpu_binary(operation, a, b)
    # The same float32 operation per element: bit for bit.
    np.testing.assert_array_equal(out, _numpy_forward(operation, a, b))
    dy = rng.standard_normal(out.shape).astype(np.float32)
    for grad, expected in zip(cpu_binary_backward(operation, a, b, dy), _numpy_backward(operation, a, b, dy)):
        assert grad.shape == expected.shape
        # Sums in another order than NumPy's pairwise ones.
        np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-5)


@plain_only
def test_binary_edge_values_follow_numpy():
    """Division by zero gives inf / NaN as NumPy does (no ZeroDivisionError), NaN propagates."""
    a = np.array([1.0, -1.0, 0.0, np.nan, np.inf, 2.0], np.float32)
    b = np.array([0.0, 0.0, 0.0, 1.0, 1.0, np.inf], np.float32)
    with np.errstate(all="ignore"):
        for operation in K.OPERATIONS:
            np.testing.assert_array_equal(cpu_binary(operation, a, b), _numpy_forward(operation, a, b))
            dy = np.ones_like(a)
            for grad, expected in zip(cpu_binary_backward(operation, a, b, dy), _numpy_backward(operation, a, b, dy)):
                np.testing.assert_array_equal(grad, expected)


@plain_only
@pytest.mark.parametrize("low, high", [(-0.3, 0.4), (-np.inf, 0.0), (0.0, np.inf), (0.5, -0.5), (0.0, 0.0)])
def test_clip_matches_numpy(low, high):
    rng = np.random.default_rng(2)
    x = rng.standard_normal(101).astype(np.float32)
    x[:4] = [np.nan, np.inf, -np.inf, 0.0]
    low, high = np.float32(low), np.float32(high)
    out = np.empty_like(x)
    K.clip_forward(x, low, high, out)
    np.testing.assert_array_equal(out, np.clip(x, low, high))
    dy = rng.standard_normal(101).astype(np.float32)
    dx = np.empty_like(x)
    K.clip_backward(x, low, high, dy, dx)
    np.testing.assert_array_equal(dx, np.multiply(dy, (x >= low) & (x <= high)))


@plain_only
@pytest.mark.parametrize("shape, axis", [((4, 10), -1), ((4, 10), 1), ((2, 3, 4, 5), 1), ((2, 3, 4, 5), 2),
                                         ((2, 3, 4, 5), -1), ((3, 1), -1), ((2, 7, 3), -2)])
def test_log_softmax_matches_numpy(shape, axis):
    rng = np.random.default_rng(3)
    x = (rng.standard_normal(shape) * 5).astype(np.float32)
    view = K.softmax_geometry(shape, axis)
    y = np.empty_like(x)
    K.log_softmax_forward(x.reshape(view), y.reshape(view))
    shifted = x - x.max(axis=axis, keepdims=True)
    expected = shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))
    np.testing.assert_allclose(y, expected, rtol=1e-6, atol=1e-6)
    dy = rng.standard_normal(shape).astype(np.float32)
    dx = np.empty_like(x)
    K.log_softmax_backward(y.reshape(view), dy.reshape(view), dx.reshape(view))
    np.testing.assert_allclose(dx, dy - np.exp(y) * dy.sum(axis=axis, keepdims=True), rtol=1e-5, atol=1e-6)
    # In place (dx = dy), as the kernel allows.
    K.log_softmax_backward(y.reshape(view), dy.reshape(view), dy.reshape(view))
    np.testing.assert_array_equal(dy, dx)


@plain_only
def test_log_softmax_propagates_nan_and_inf():
    x = np.array([[1.0, np.nan, 2.0], [1.0, -np.inf, 0.0], [np.inf, 1.0, 0.0]], np.float32)
    y = np.empty_like(x)
    K.log_softmax_forward(x.reshape(3, 3, 1), y.reshape(3, 3, 1))
    with np.errstate(all="ignore"):
        shifted = x - x.max(axis=-1, keepdims=True)
        expected = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    np.testing.assert_array_equal(y, expected)


@plain_only
def test_one_compiled_signature_per_dtype_across_ranks_and_broadcasts():
    """Flat views and an int64 geometry: one float32 signature serves every rank."""
    import numba

    rng = np.random.default_rng(4)
    for a_shape, b_shape in BROADCASTS[:4]:
        a, b = _operands(rng, a_shape, b_shape)
        cpu_binary_backward("mul", a, b, cpu_binary("mul", a, b))
    for shape in ((2, 3, 4), (2, 3, 4, 5)):
        x = rng.standard_normal(shape).astype(np.float32)
        layer = layers.Permute(tuple(range(len(shape) - 1, 0, -1)))
        layer.build(shape[1:])
        layer.backward(layer.forward(x).copy())
        for layer in (layers.LogSoftmax(), layers.Clip(), layers.Take(-1, [2, 0, 2]),
                      layers.ConstantOperation("mul", shape[2:])):
            layer.build(shape[1:])
            layer.backward(layer.forward(x).copy())
    for name in ("permute_forward", "binary_forward", "binary_backward", "clip_forward", "clip_backward",
                 "log_softmax_forward", "log_softmax_backward", "take_forward", "take_backward",
                 "binary_backward_same"):
        dispatcher = getattr(K, name)
        float32 = [sig for sig in dispatcher.signatures if any(getattr(t, "dtype", None) == numba.float32 for t in sig)]
        assert len(float32) == 1, (name, dispatcher.signatures)


@plain_only
def test_layers_broadcast_the_batch_axis_and_keep_the_operand_gradient():
    rng = np.random.default_rng(5)
    layer = layers.BroadcastOperation("mul")
    layer.build([(4, 3), (3,)])
    a, b = rng.standard_normal((2, 4, 3)).astype(np.float32), rng.standard_normal((1, 3)).astype(np.float32)
    np.testing.assert_array_equal(layer.forward([a, b]), a * b[:, None, :])
    dy = rng.standard_normal((2, 4, 3)).astype(np.float32)
    da, db = layer.backward(dy)
    assert da.shape == a.shape and db.shape == b.shape
    np.testing.assert_allclose(db, (dy * a).sum(axis=(0, 1))[None], rtol=1e-5)
    constant = layers.ConstantOperation("sub", (4, 1), trainable_operand=True)
    constant.build((4, 3))
    constant.forward(a)
    constant.grads["operand"][...] = 1.0
    constant.backward(dy)
    np.testing.assert_allclose(constant.grads["operand"], 1.0 - dy.sum(axis=(0, 2))[:, None], rtol=1e-5)


# -- CUDA -----------------------------------------------------------------------------------
@plain_only
def test_onnx_ops_cuda_under_simulator(request):
    run_under_simulator(request)


if ON_CUDA:
    from numba import cuda

    from nbnet.devices import cuda as cuda_ops
    from nbnet.kernels.cuda import onnx_ops as G

    @pytest.fixture(autouse=True, scope="module")
    def tiny_launches():
        """Fast under the simulator, and every grid-stride loop runs more than once
        (3 blocks of 32 threads against arrays of 100-200 elements)."""
        with small_launches():
            yield


def _host(array):
    return array.copy_to_host() if hasattr(array, "copy_to_host") else np.asarray(array)


@sim_only
@pytest.mark.parametrize("shape, axes", [((2, 3, 4, 5), (0, 2, 3, 1)), ((2, 3, 2, 2, 3), (4, 0, 3, 1, 2)),
                                         ((5, 31), (1, 0))])
def test_permute_on_cuda_matches_the_cpu(shape, axes):
    x = np.random.default_rng(6).standard_normal(shape).astype(np.float32)
    geometry = K.permute_geometry(shape, axes)
    out = np.empty(tuple(shape[a] for a in axes), np.float32)
    K.permute_forward(x.reshape(-1), geometry, out.reshape(-1))
    out_dev = cuda.device_array(out.size, np.float32)
    G.permute_forward(cuda.to_device(x.reshape(-1)), cuda.to_device(geometry), out_dev)
    np.testing.assert_array_equal(_host(out_dev), out.reshape(-1))


@sim_only
@pytest.mark.parametrize("operation", K.OPERATIONS)
@pytest.mark.parametrize("a_shape, b_shape", [((2, 3, 4, 5), (1, 3, 1, 1)), ((2, 3, 4, 5), ()), ((4, 1, 3), (5, 1)),
                                              ((3, 1, 5, 7), (3, 2, 5, 7))])
def test_binary_on_cuda_matches_the_cpu(operation, a_shape, b_shape):
    rng = np.random.default_rng(7)
    a, b = _operands(rng, a_shape, b_shape)
    out = cpu_binary(operation, a, b)
    dy = rng.standard_normal(out.shape).astype(np.float32)
    grads = cpu_binary_backward(operation, a, b, dy)
    code = K.CODES[operation]
    a_dev, b_dev, dy_dev = (cuda.to_device(_flat(v)) for v in (a, b, dy))
    out_dev = cuda.device_array(out.size, np.float32)
    G.binary_forward(code, a_dev, b_dev, cuda.to_device(K.broadcast_geometry(out.shape, a.shape, b.shape)), out_dev)
    np.testing.assert_array_equal(_host(out_dev), out.reshape(-1))
    for which, grad in enumerate(grads):
        geometry, kept = K.reduction_geometry(which, out.shape, a.shape, b.shape)
        grad_dev = cuda.device_array(grad.size, np.float32)
        G.binary_backward(code, which, a_dev, b_dev, dy_dev, cuda.to_device(geometry), kept, grad_dev)
        # Summed in chunks on the GPU: another order than the CPU's.
        np.testing.assert_allclose(_host(grad_dev), grad.reshape(-1), rtol=1e-5, atol=1e-5)


@sim_only
def test_clip_and_log_softmax_on_cuda_match_the_cpu():
    rng = np.random.default_rng(8)
    x = rng.standard_normal(150).astype(np.float32)
    x[:3] = [np.nan, np.inf, -np.inf]
    dy = rng.standard_normal(150).astype(np.float32)
    low, high = np.float32(-0.3), np.float32(0.4)
    out, dx = np.empty_like(x), np.empty_like(x)
    K.clip_forward(x, low, high, out)
    K.clip_backward(x, low, high, dy, dx)
    x_dev, dy_dev = cuda.to_device(x), cuda.to_device(dy)
    out_dev, dx_dev = cuda.device_array(150, np.float32), cuda.device_array(150, np.float32)
    G.clip_forward(x_dev, low, high, out_dev)
    G.clip_backward(x_dev, low, high, dy_dev, dx_dev)
    np.testing.assert_array_equal(_host(out_dev), out)
    np.testing.assert_array_equal(_host(dx_dev), dx)
    for view in ((5, 6, 5), (150, 1, 1), (1, 3, 50)):
        x3 = rng.standard_normal(view).astype(np.float32) * 4
        dy3 = rng.standard_normal(view).astype(np.float32)
        y, dx3 = np.empty_like(x3), np.empty_like(x3)
        K.log_softmax_forward(x3, y)
        K.log_softmax_backward(y, dy3, dx3)
        y_dev, dx_dev = cuda.device_array(view, np.float32), cuda.device_array(view, np.float32)
        G.log_softmax_forward(cuda.to_device(x3), y_dev)
        G.log_softmax_backward(y_dev, cuda.to_device(dy3), dx_dev)
        np.testing.assert_allclose(_host(y_dev), y, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(_host(dx_dev), dx3, rtol=1e-5, atol=1e-6)


@sim_only
@pytest.mark.parametrize("make, shapes", [
    (lambda: layers.Permute((3, 1, 2)), [(3, 4, 5)]),
    (lambda: layers.Clip(-0.3, 0.4), [(3, 4, 5)]),
    (lambda: layers.LogSoftmax(axis=1), [(3, 4, 5)]),
    (lambda: layers.ConstantOperation("rdiv", (3, 1, 1), trainable_operand=True), [(3, 4, 5)]),
    (lambda: layers.BroadcastOperation("div"), [(3, 4, 5), (1, 5)]),
], ids=["permute", "clip", "log_softmax", "constant", "broadcast"])
def test_layers_on_cuda_match_the_cpu(make, shapes):
    rng = np.random.default_rng(9)
    xs = [_operands(rng, (2,) + s, ())[0] for s in shapes]
    cpu_layer, gpu_layer = make(), make()
    for layer in (cpu_layer, gpu_layer):
        layer.build(shapes if len(shapes) > 1 else shapes[0], np.random.default_rng(0))
    if "operand" in cpu_layer.params:
        operand = rng.uniform(0.5, 1.5, cpu_layer.params["operand"].shape).astype(np.float32)
        cpu_layer.set_weights([operand])
        gpu_layer.set_weights([operand])
        cpu_layer.grads["operand"][...] = 0
        gpu_layer.params["operand"] = cuda.to_device(operand)
        gpu_layer.grads["operand"] = cuda.to_device(np.zeros_like(operand))
    gpu_layer.set_device(cuda_ops)
    inputs = xs if len(xs) > 1 else xs[0]
    y = cpu_layer.forward(inputs)
    y_dev = gpu_layer.forward([cuda.to_device(x) for x in xs] if len(xs) > 1 else cuda.to_device(xs[0]))
    np.testing.assert_allclose(_host(y_dev), y, rtol=1e-6, atol=1e-6)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dxs = cpu_layer.backward(dy.copy())
    dxs_dev = gpu_layer.backward(cuda.to_device(dy))
    dxs, dxs_dev = (d if isinstance(d, list) else [d] for d in (dxs, dxs_dev))
    for dx_dev, dx in zip(dxs_dev, dxs):
        assert tuple(dx_dev.shape) == dx.shape
        np.testing.assert_allclose(_host(dx_dev), dx, rtol=1e-5, atol=1e-6)
    if "operand" in cpu_layer.grads:
        np.testing.assert_allclose(_host(gpu_layer.grads["operand"]), cpu_layer.grads["operand"], rtol=1e-5, atol=1e-5)


def _take_reference(x, indices, dy):
    """np.take and its gradient (np.add.at: repeated indices add up)."""
    dx = np.zeros_like(x)
    np.add.at(dx, (slice(None), indices), dy)
    return np.take(x, indices, axis=1), dx


@pytest.mark.parametrize("view, indices", [((3, 5, 4), [4, 0, 0, 2]), ((1, 7, 1), [6, 5, 4, 3, 2, 1, 0]),
                                           ((6, 2, 9), [1])])
def test_take_matches_numpy_with_repeated_indices(view, indices):
    rng = np.random.default_rng(9)
    x = rng.standard_normal(view).astype(np.float32)
    indices = np.array(indices, np.int64)
    dy = rng.standard_normal((view[0], len(indices), view[2])).astype(np.float32)
    y, dx = np.empty_like(dy), np.full_like(x, np.nan)  # stale values must be overwritten
    K.take_forward(x, indices, y)
    K.take_backward(dy, indices, dx)
    want_y, want_dx = _take_reference(x, indices, dy)
    np.testing.assert_array_equal(y, want_y)
    np.testing.assert_allclose(dx, want_dx, rtol=1e-6)


@sim_only
def test_take_on_cuda_matches_the_cpu():
    rng = np.random.default_rng(10)
    for view, indices in (((3, 5, 4), [4, 0, 0, 2]), ((2, 9, 7), [8, 6, 4, 2, 0])):
        x = rng.standard_normal(view).astype(np.float32)
        indices = np.array(indices, np.int64)
        dy = rng.standard_normal((view[0], len(indices), view[2])).astype(np.float32)
        y, dx = np.empty_like(dy), np.empty_like(x)
        K.take_forward(x, indices, y)
        K.take_backward(dy, indices, dx)
        y_dev, dx_dev = cuda.device_array(y.shape, np.float32), cuda.device_array(x.shape, np.float32)
        G.take_forward(cuda.to_device(x), cuda.to_device(indices), y_dev)
        G.take_backward(cuda.to_device(dy), cuda.to_device(indices), dx_dev)
        np.testing.assert_array_equal(_host(y_dev), y)
        np.testing.assert_array_equal(_host(dx_dev), dx)  # one sum per element, in the CPU's order


@pytest.mark.parametrize("operation", K.OPERATIONS)
@pytest.mark.parametrize("a_shape, b_shape", [((2, 3, 4, 5), (1, 3, 1, 1)), ((2, 3, 4, 5), ()),
                                              ((2, 3, 4, 5), (4, 5)), ((3, 7), (3, 7))])
def test_gradient_of_an_operand_not_broadcast_matches_the_reduction(operation, a_shape, b_shape):
    """binary_backward_same (ConstantOperation's input gradient) against binary_backward."""
    rng = np.random.default_rng(13)
    a, b = _operands(rng, a_shape, b_shape)
    dy = rng.standard_normal(a_shape).astype(np.float32)
    code = K.CODES[operation]
    want = cpu_binary_backward(operation, a, b, dy)[0]
    got = np.full(a.size, np.nan, np.float32)
    geometry = K.broadcast_geometry(a_shape, a_shape, b_shape)
    K.binary_backward_same(code, 0, _flat(a), _flat(b), _flat(dy), geometry, got)
    np.testing.assert_array_equal(got, want.reshape(-1))
    if ON_CUDA:
        got_dev = cuda.device_array(a.size, np.float32)
        G.binary_backward_same(code, 0, *(cuda.to_device(_flat(v)) for v in (a, b, dy)), cuda.to_device(geometry),
                               got_dev)
        np.testing.assert_array_equal(_host(got_dev), want.reshape(-1))
