"""Activation kernels, fused with the bias add (forward) and the bias gradient (backward).

Arrays are viewed as 2-D (rows, channels): channels is the last axis of a Dense or
NHWC Conv2D output. Derivatives are computed from the activation's *output*, so the
forward pass needs to keep only one array per layer.
"""

import numpy as np
from numba import njit, types
from numba.extending import overload

from . import REDUCTION_CHUNKS
from .fast_math import expm1_below_zero, fast_softplus, sigmoid_float32, tanh_float32
from .parallel import parallel_ranges, range_body

LINEAR, RELU, SIGMOID, TANH, SOFTMAX, LEAKY_RELU, ELU, SELU, SOFTPLUS = 0, 1, 2, 3, 4, 5, 6, 7, 8
# The codes whose slope is a quadratic in the output (see slope_terms).
SLOPE_CODES = frozenset((LINEAR, RELU, LEAKY_RELU, SIGMOID, TANH))
# SELU's constants (Klambauer et al. 2017, as Keras): scale * x above 0, else
# scale * alpha * (exp(x) - 1).
SELU_ALPHA, SELU_SCALE = 1.6732632423543772848170429916717, 1.0507009873554804934193349852946


@njit(inline="always")
def exact_sigmoid(value):
    if value >= 0:
        return 1.0 / (1.0 + np.exp(-value))
    e = np.exp(value)
    return e / (1.0 + e)


@njit(inline="always")
def exponential_unit(value, alpha, scale):
    """scale * (value above 0, else alpha * (exp(value) - 1)): ELU (scale 1) and SELU, in
    float64 (expm1 keeps the digits of small negative values)."""
    x = np.float64(value)
    return scale * x if x > 0.0 else scale * alpha * np.expm1(x)


def exponential_units(values, alpha, scale):
    """values = exponential_unit(values), in place: for float32 in one loop of
    expm1_below_zero, which vectorises (libm's expm1, a call per value, took 2.7 ns a value
    on two cores: ELU's bias + activation pass 20 of a 70 ms training step); float64 (the
    gradient checks) keeps libm's. Chosen by the array's type when a kernel is compiled."""
    raise NotImplementedError("exponential_units runs inside Numba kernels only")


@njit(inline="always")
def _fast_exponential_unit(value, alpha, scale):
    x = np.float64(value)
    return scale * x if x > 0.0 else scale * alpha * expm1_below_zero(x)


@overload(exponential_units, inline="always")
def _exponential_units_for(values, alpha, scale):
    unit = exponential_unit if values.dtype == types.float64 else _fast_exponential_unit

    def loop(values, alpha, scale):
        dtype = values.dtype.type
        for k in range(values.shape[0]):
            values[k] = dtype(unit(values[k], alpha, scale))
    return loop


def softplus_units(values):
    """values = softplus(values), in place: for float32 in one loop of fast_softplus,
    which vectorises; float64 (the gradient checks) keeps libm's log1p and exp (as
    exponential_units)."""
    raise NotImplementedError("softplus_units runs inside Numba kernels only")


@overload(softplus_units, inline="always")
def _softplus_units_for(values):
    unit = softplus if values.dtype == types.float64 else fast_softplus

    def loop(values):
        dtype = values.dtype.type
        for k in range(values.shape[0]):
            values[k] = dtype(unit(values[k]))
    return loop


@njit(inline="always")
def softplus(value):
    """log(1 + exp(value)) without overflow: max(x, 0) + log1p(exp(-|x|)), in float64."""
    x = np.float64(value)
    return max(x, 0.0) + np.log1p(np.exp(-abs(x)))


@njit(inline="always")
def activate(code, alpha, values):
    """values = activation(values), in place (a 1-D slice from index 0: LLVM vectorises
    the loop); LINEAR and SOFTMAX leave them alone. ELU's ``alpha`` comes in as the
    layer's slope."""
    if code == ELU or code == SELU:
        unit_alpha = np.float64(alpha) if code == ELU else SELU_ALPHA
        unit_scale = 1.0 if code == ELU else SELU_SCALE
        exponential_units(values, unit_alpha, unit_scale)
    elif code == SOFTPLUS:
        softplus_units(values)
    else:
        activate_fusable(code, alpha, values)


# Compiled once and called, not inlined, by each kernel that takes it (the bias +
# activation pass, BatchNormalization's, the residual add's, the implicit GEMM's, the
# few-row Dense's), on blocks of values: a call per block costs nothing measurable, each
# inlined copy of the loops cost 0.4 s of its kernel's compile (the implicit GEMM's
# forward 1.2 -> 1.6 s). The same flags as those kernels: the same bits as when inlined.
@njit(cache=True, error_model="numpy", fastmath={"contract"})
def activate_fusable(code, alpha, values):
    """``activate`` for the codes a BatchNormalization runs inside its own pass (see
    executor.NORM_ACTIVATIONS) and LINEAR: its kernels take this one, as each vectorised
    loop costs compile time (the exponential ones 0.4 s in each); sigmoid and tanh are
    squash's, compiled once and called."""
    dtype = values.dtype.type
    zero = dtype(0.0)
    if code == RELU:
        for k in range(values.shape[0]):
            values[k] = values[k] if values[k] > zero else zero
    elif code == LEAKY_RELU:
        for k in range(values.shape[0]):
            values[k] = values[k] if values[k] > zero else alpha * values[k]
    elif code == SIGMOID or code == TANH:
        squash(code, values)


def squash(code, values):
    """values = sigmoid(values) or tanh(values) (``code``), in place: for float32 by
    fast_math's float32 functions; for float64 (the gradient checks) libm's exact
    functions. Chosen by the array's type when a kernel is compiled, so a float32 kernel
    does not also compile the float64 loop."""
    raise NotImplementedError("squash runs inside Numba kernels only")


# The loops are functions of their own, compiled once and called by every kernel that
# takes activate_fusable: inlined, each such kernel spent 0.5 s of its compile on the
# squash loop, in models that have no sigmoid or tanh as in those that do (a BatchNorm
# affine kernel with it 1.24 s, without 0.78; a call per block of values costs nothing
# measurable). The same flags as those kernels: the same bits as when inlined.
@njit(cache=True, error_model="numpy", fastmath={"contract"})
def _fast_squash(code, values):
    if code == SIGMOID:
        for k in range(values.shape[0]):
            values[k] = sigmoid_float32(values[k])
    else:
        for k in range(values.shape[0]):
            values[k] = tanh_float32(values[k])


@njit(cache=True, error_model="numpy", fastmath={"contract"})
def _exact_squash(code, values):
    for k in range(values.shape[0]):
        values[k] = exact_sigmoid(values[k]) if code == SIGMOID else np.tanh(values[k])


@overload(squash, inline="always")
def _squash_for(code, values):
    loop = _exact_squash if values.dtype == types.float64 else _fast_squash

    def call(code, values):
        loop(code, values)
    return call


# Values per parallel block: the bias add runs row by row, the activation over the
# block's flat values, so a conv with 6 filters still vectorises over long loops.
_BLOCK_VALUES = 4096


@njit(inline="always")
def _block_count(z):
    """Blocks of _BLOCK_VALUES values (whole rows, at least one) in z's rows."""
    rows, channels = z.shape
    block = max(1, _BLOCK_VALUES // max(channels, 1))
    return (rows + block - 1) // block


# error_model="numpy": a division never raises ZeroDivisionError, and without that check
# LLVM vectorises the loops.
@range_body(fastmath={"contract"})
def _softmax_rows_range(begin, end, z, bias, y):
    for i in range(begin, end):
        softmax_row(z, bias, y, i)


@njit(cache=True)
def _softmax_rows(z, bias, y):
    parallel_ranges(_softmax_rows_range, z.shape[0], (z, bias, y))


@njit(inline="always")
def softmax_row(z, bias, y, i):
    """y[i] = softmax(z[i] + bias) (``bias`` of length 0: none)."""
    channels = z.shape[1]
    has_bias = bias.shape[0] > 0
    one = z.dtype.type(1.0)
    peak = -np.inf
    for k in range(channels):
        value = z[i, k] + bias[k] if has_bias else z[i, k]
        y[i, k] = value
        peak = max(peak, value)
    total = 0.0
    for k in range(channels):
        e = np.exp(y[i, k] - peak)
        y[i, k] = e
        total += e
    inverse = one / total
    for k in range(channels):
        y[i, k] *= inverse


@njit(inline="always")
def _bias_rows(z, bias, y, first, stop):
    """y[i] = z[i] + bias (a copy without one; nothing when y is z), rows first..stop-1."""
    channels = z.shape[1]
    if bias.shape[0] == 0 and z.ctypes.data == y.ctypes.data:
        return
    for i in range(first, stop):
        if bias.shape[0] > 0:
            for k in range(channels):
                y[i, k] = z[i, k] + bias[k]
        else:
            for k in range(channels):
                y[i, k] = z[i, k]


# Two kernels: the common codes (activate_fusable's), and the exponential units in one of
# their own that only the models using them compile (their loops took 0.4 s each of the
# shared kernel's 2.2 s of compile time).
@range_body(fastmath={"contract"})
def _bias_activation_blocks_range(begin, end, z, bias, code, alpha, y):
    rows, channels = z.shape
    flat = y.reshape(-1)
    block = max(1, _BLOCK_VALUES // max(channels, 1))
    for index in range(begin, end):
        first = index * block
        stop = min(rows, first + block)
        _bias_rows(z, bias, y, first, stop)
        activate_fusable(code, alpha, flat[first * channels:stop * channels])


@njit(cache=True)
def _bias_activation_blocks(z, bias, code, alpha, y):
    parallel_ranges(_bias_activation_blocks_range, _block_count(z), (z, bias, code, alpha, y))


@range_body(fastmath={"contract"})
def _other_bias_activation_blocks_range(begin, end, z, bias, code, alpha, y):
    rows, channels = z.shape
    flat = y.reshape(-1)
    block = max(1, _BLOCK_VALUES // max(channels, 1))
    for index in range(begin, end):
        first = index * block
        stop = min(rows, first + block)
        _bias_rows(z, bias, y, first, stop)
        activate(code, alpha, flat[first * channels:stop * channels])


@njit(cache=True)
def _other_bias_activation_blocks(z, bias, code, alpha, y):
    parallel_ranges(_other_bias_activation_blocks_range, _block_count(z), (z, bias, code, alpha, y))


# Compile time: each kernel compiles every loop it holds, whether or not a call reaches it:
# softmax therefore has its own kernel, compiled only by the models that use it.
def bias_activation_forward(z, bias, code, alpha, y):
    """y = activation(z + bias), row by row; ``y`` (C-contiguous) may be ``z`` itself (in
    place). ``bias`` of length 0 means no bias. Softmax is taken over each row."""
    function, args, _ = _bias_activation_replayed_as(z, bias, code, alpha, y)
    function(*args)


def _bias_activation_replayed_as(z, bias, code, alpha, y):
    """The kernel call bias_activation_forward makes (a recorded inference program makes it
    directly, see inference_program)."""
    if code == SOFTMAX:
        return _softmax_rows, (z, bias, y), {}
    if code in SLOPE_CODES:
        return _bias_activation_blocks, (z, bias, code, alpha, y), {}
    return _other_bias_activation_blocks, (z, bias, code, alpha, y), {}


bias_activation_forward.replayed_as = _bias_activation_replayed_as


def softplus_slope_term(out):
    """expm1(-out) at a softplus output ``out`` (>= 0): minus its slope, sigmoid(x) =
    1 - exp(-softplus(x)). For float32 by expm1_below_zero, which vectorises; float64
    keeps libm's."""
    raise NotImplementedError("softplus_slope_term runs inside Numba kernels only")


@overload(softplus_slope_term, inline="always")
def _softplus_slope_term_for(out):
    if out == types.float64:
        return lambda out: np.expm1(-out)
    return lambda out: np.float32(expm1_below_zero(-np.float64(out)))


@njit(inline="always")
def slope_terms(code, alpha, dtype):
    """(above, below, linear, square): the slope of activation ``code`` at output y is
    (above if y > 0 else below) + y * (linear + square * y) for LINEAR, RELU, LEAKY_RELU,
    SIGMOID (y (1 - y)) and TANH (1 - y^2), the codes gradient_from_slope serves."""
    zero, one = dtype(0.0), dtype(1.0)
    if code == SIGMOID:
        return zero, zero, one, -one
    if code == TANH:
        return one, one, zero, -one
    return one, (zero if code == RELU else dtype(alpha) if code == LEAKY_RELU else one), zero, zero


@njit(inline="always")
def gradient_from_slope(out, grad, above, below, linear, square, zero):
    """grad times the slope at output ``out`` (see slope_terms), zero where the slope is:
    one expression for the common codes, so a loop over it vectorises (with the code
    tested inside, a branch per code, LLVM vectorised none: ReLU's gradient
    over 128x14x14x16 values took 0.21 ms, now 0.03-0.04)."""
    slope = (above if out > zero else below) + out * (linear + square * out)
    return grad * slope if slope != zero else zero


@range_body
def _activation_backward_chunks_range(begin, end, y, dy, code, alpha, dz, partial, sums):
    rows, channels = y.shape
    chunks = partial.shape[0]
    zero = y.dtype.type(0.0)
    above, below, linear, square = slope_terms(code, alpha, y.dtype.type)
    for chunk in range(begin, end):
        for i in range(chunk * rows // chunks, (chunk + 1) * rows // chunks):
            for k in range(channels):
                dz[i, k] = gradient_from_slope(y[i, k], dy[i, k], above, below, linear, square, zero)
            if sums:
                for k in range(channels):
                    partial[chunk, k] += dz[i, k]


@njit(cache=True)
def _activation_backward_chunks(y, dy, code, alpha, dz, partial, sums):
    parallel_ranges(_activation_backward_chunks_range, partial.shape[0], (y, dy, code, alpha, dz, partial, sums))


# The other codes (softmax and the exponential units) in a kernel of their own, compiled
# only by the models that use them (each loop costs compile time in every model).
@range_body
def _other_activation_backward_chunks_range(begin, end, y, dy, code, alpha, dz, partial, sums):
    rows, channels = y.shape
    chunks = partial.shape[0]
    dtype = y.dtype.type
    zero, one = dtype(0.0), dtype(1.0)
    for chunk in range(begin, end):
        for i in range(chunk * rows // chunks, (chunk + 1) * rows // chunks):
            if code == SOFTMAX:
                dot = 0.0
                for k in range(channels):
                    dot += dy[i, k] * y[i, k]
                for k in range(channels):
                    dz[i, k] = y[i, k] * (dy[i, k] - dot)
            elif code == ELU or code == SELU:
                # The code tested outside each loop, which then vectorises (with a function
                # of the code called inside, 14.5 of an ELU CNN's 70 ms training step).
                # The exponential units' slope below 0 is their output plus (scale *)
                # alpha, softplus's is sigmoid(x) = 1 - exp(-softplus(x)).
                above = one if code == ELU else dtype(SELU_SCALE)
                below = dtype(alpha) if code == ELU else dtype(SELU_SCALE * SELU_ALPHA)
                for k in range(channels):
                    dz[i, k] = dy[i, k] * above if y[i, k] > zero else dy[i, k] * (y[i, k] + below)
            else:  # SOFTPLUS, the one code left that is not in SLOPE_CODES
                for k in range(channels):
                    dz[i, k] = dy[i, k] * -softplus_slope_term(y[i, k])
            if sums:
                for k in range(channels):
                    partial[chunk, k] += dz[i, k]


@njit(cache=True)
def _other_activation_backward_chunks(y, dy, code, alpha, dz, partial, sums):
    parallel_ranges(_other_activation_backward_chunks_range, partial.shape[0], (y, dy, code, alpha, dz, partial, sums))


def activation_backward(y, dy, code, alpha, dz, dbias):
    """dz = dy * activation'(.) computed from the output ``y``; adds the bias gradient
    (column sums of dz, partial sums per fixed chunk of rows) into ``dbias`` unless it has
    length 0. ``dz`` may be ``dy``."""
    rows, channels = y.shape
    sums = dbias.shape[0] > 0
    partial = np.zeros((max(min(REDUCTION_CHUNKS, rows), 1), channels if sums else 0), dtype=y.dtype)
    kernel = _activation_backward_chunks if code in SLOPE_CODES else _other_activation_backward_chunks
    kernel(y, dy, code, alpha, dz, partial, sums)
    if sums:
        add_chunk_sums(partial, dbias)


@njit(cache=True)
def add_chunk_sums(partial, out):
    """out[k] += partial[0, k] + partial[1, k] + ..., in chunk order."""
    for chunk in range(partial.shape[0]):
        for k in range(partial.shape[1]):
            out[k] += partial[chunk, k]
