"""BatchNormalization kernels over (rows, channels) views: statistics per channel.

Statistics accumulate in float64 per fixed chunk of rows, so a float32 batch of
hundreds of thousands of rows keeps its precision and the result does not depend on
the thread count.

Each kernel also runs the elementwise activation of an Activation layer that follows the
normalisation (``code``, ``alpha`` as in activations.py; LINEAR for none): forward applies
it to each row as it is written, backward takes the gradient through it from the output
``y`` on the fly, so neither the activation's output nor its gradient is a pass of its own.

Compile time: the passes run on the threads through parallel.parallel_ranges, not
``prange`` (a ``parallel=True`` function turned every array expression, ``np.zeros`` and
``.sum(axis=...)`` into a parallel loop of its own: the statistics function with its two
allocations and three array expressions took 3.1 s to compile, its loop alone 1.1 s). The
entry points below are Python functions that allocate the partial sums, run one parallel
pass, combine the chunks in a serial kernel, and run the second pass.
"""

import numpy as np
from numba import njit
from numba.extending import overload

from . import REDUCTION_CHUNKS
from .parallel import parallel_ranges, range_body
from .activations import SIGMOID, TANH, activate_fusable, gradient_from_slope, slope_terms


def _partials(rows, channels):
    """Zeroed float64 partial sums, one row per fixed chunk of rows (two arrays)."""
    chunks = max(min(REDUCTION_CHUNKS, rows), 1)
    return np.zeros((chunks, channels)), np.zeros((chunks, channels))


@range_body
def _column_chunks(first, stop, x, sums, squares):
    rows, channels = x.shape
    chunks = sums.shape[0]
    for chunk in range(first, stop):
        for i in range(chunk * rows // chunks, (chunk + 1) * rows // chunks):
            for k in range(channels):
                value = np.float64(x[i, k])
                sums[chunk, k] += value
                squares[chunk, k] += value * value


@njit(cache=True)
def _column_partials(x, sums, squares):
    parallel_ranges(_column_chunks, sums.shape[0], (x, sums, squares))


@njit(cache=True)
def _statistics(sums, squares, rows, epsilon, mean_out, variance_out):
    """The batch's mean and (biased) variance from the chunks' sums, into the outputs;
    returns (mean, 1/std) in float64."""
    chunks, channels = sums.shape
    mean = np.empty(channels)
    inv_std = np.empty(channels)
    for k in range(channels):
        total = 0.0
        total_squares = 0.0
        for chunk in range(chunks):
            total += sums[chunk, k]
            total_squares += squares[chunk, k]
        mean[k] = total / rows
        variance = max(total_squares / rows - mean[k] * mean[k], 0.0)
        mean_out[k] = mean[k]
        variance_out[k] = variance
        inv_std[k] = 1.0 / np.sqrt(variance + epsilon)
    return mean, inv_std


# Rows a parallel block of the elementwise passes holds at least: the activation runs over
# the block's values as one flat loop (16 channels a row: a loop per row in float64 ran the
# training forward of 25088 x 16 values in 0.55 ms, blocks with float32 coefficients in 0.17).
_BLOCK_VALUES = 4096


@njit(inline="always")
def _block_rows(rows, channels):
    """(rows a block, blocks) of the elementwise passes (see _BLOCK_VALUES)."""
    block = max(1, _BLOCK_VALUES // max(channels, 1))
    return block, (rows + block - 1) // block


@range_body(fastmath={"contract"})
def _affine_rows(first_block, stop_block, x, center, scale, shift, code, alpha, y):
    rows, channels = x.shape
    flat = y.reshape(-1)
    block, _ = _block_rows(rows, channels)
    for index in range(first_block, stop_block):
        first = index * block
        stop = min(rows, first + block)
        for i in range(first, stop):
            for k in range(channels):
                y[i, k] = (x[i, k] - center[k]) * scale[k] + shift[k]
        activate_fusable(code, alpha, flat[first * channels:stop * channels])


@njit(cache=True)
def _affine_blocks(x, center, scale, shift, code, alpha, y):
    """y = activation((x - center) * scale + shift), per channel, over blocks of rows."""
    parallel_ranges(_affine_rows, _block_rows(x.shape[0], x.shape[1])[1], (x, center, scale, shift, code, alpha, y))


def batchnorm_train_forward(x, gamma, beta, epsilon, code, alpha, y, mean_out, variance_out):
    """y = activation(gamma * x_hat + beta), x_hat = (x - mean) / std with the batch's own
    mean and (biased) variance, written into mean_out / variance_out. x_hat is not kept:
    backward takes it again from x (a write of the whole batch fewer, and no slower a
    backward, which is bound by memory either way). Returns the per-channel 1/std
    (float64)."""
    mean, inv_std = batch_statistics(x, epsilon, mean_out, variance_out)
    dtype = x.dtype
    _affine_blocks(x, mean.astype(dtype), (gamma * inv_std).astype(dtype), beta, code, alpha, y)
    return inv_std


# The passes' coefficients, shared with normalization_pool.py (its kernels must make the
# same values).
def batch_statistics(x, epsilon, mean_out, variance_out):
    """The (rows, channels) batch's mean and 1/std per channel in float64, its mean and
    (biased) variance also written into mean_out / variance_out."""
    sums, squares = _partials(*x.shape)
    _column_partials(x, sums, squares)
    return _statistics(sums, squares, x.shape[0], float(epsilon), mean_out, variance_out)


def moving_scale(gamma, moving_variance, epsilon):
    """The inference transform's scale, gamma / sqrt(moving_variance + epsilon), in float64."""
    return gamma / np.sqrt(moving_variance.astype(np.float64) + epsilon)


def input_gradient_terms(gamma, inv_std, mean_dy, mean_dy_xhat, dtype):
    """(g_scale, x_scale, g_shift) of the training backward's dx = g_scale * g + x_scale *
    (x - mean) + g_shift, that is gamma * inv_std * (g - mean(g) - x_hat * mean(g * x_hat))."""
    g_scale = gamma * inv_std
    return g_scale.astype(dtype), (-g_scale * inv_std * mean_dy_xhat).astype(dtype), (-g_scale * mean_dy).astype(dtype)


@njit(cache=True)
def update_moving_averages(moving_mean, moving_variance, mean, variance, momentum):
    """moving = momentum * moving + (1 - momentum) * batch statistic (Keras's rule)."""
    keep = moving_mean.dtype.type(momentum)
    take = moving_mean.dtype.type(1.0 - momentum)
    for k in range(moving_mean.shape[0]):
        moving_mean[k] = keep * moving_mean[k] + take * mean[k]
        moving_variance[k] = keep * moving_variance[k] + take * variance[k]


def batchnorm_infer(x, gamma, beta, moving_mean, moving_variance, epsilon, code, alpha, y):
    """y = activation(gamma * (x - moving_mean) / sqrt(moving_variance + epsilon) + beta)."""
    for function, args, _ in _batchnorm_infer_calls(x, gamma, beta, moving_mean, moving_variance, epsilon, code,
                                                    alpha, y):
        function(*args)


def _batchnorm_infer_calls(x, gamma, beta, moving_mean, moving_variance, epsilon, code, alpha, y):
    """The kernel calls batchnorm_infer makes, the scale into a buffer of their own (a
    recorded inference program makes them directly, the scale made again from the weights
    on each run: a one-image predict's norm 13.5 -> 8 us, see inference_program)."""
    scale = np.empty(gamma.shape, x.dtype)
    return [(moving_scale_into, (gamma, moving_variance, float(epsilon), scale), {}),
            (_affine_blocks, (x, moving_mean, scale, beta, code, alpha, y), {})]


batchnorm_infer.replayed_as = _batchnorm_infer_calls


@njit(cache=True, error_model="numpy")
def moving_scale_into(gamma, moving_variance, epsilon, scale):
    """scale = moving_scale(...) in scale's type: the same float64 operations (a zero
    variance with epsilon 0 gives inf, as NumPy's, not an exception), one kernel where
    NumPy made four arrays."""
    for c in range(scale.shape[0]):
        scale[c] = np.float64(gamma[c]) / np.sqrt(np.float64(moving_variance[c]) + epsilon)


def fold_norm(kernel, bias, gamma, beta, moving_mean, moving_variance, epsilon, folded_kernel, folded_bias):
    """A BatchNormalization folded into the conv or Dense layer before it, for inference:
    folded_kernel = kernel * scale, folded_bias = (bias - moving_mean) * scale + beta, with
    scale = gamma / sqrt(moving_variance + epsilon) in float64; ``bias`` of length 0: none."""
    function, args, _ = _fold_norm_call(kernel, bias, gamma, beta, moving_mean, moving_variance, epsilon,
                                        folded_kernel, folded_bias)
    function(*args)


def _fold_norm_call(kernel, bias, gamma, beta, moving_mean, moving_variance, epsilon, folded_kernel, folded_bias):
    """The kernel call fold_norm makes (a recorded inference program makes it directly, see
    inference_program: a one-image predict folds on every run)."""
    filters = kernel.shape[-1]
    return _fold_rows, (kernel.reshape(-1, filters), bias, gamma, beta, moving_mean, moving_variance, float(epsilon),
                        folded_kernel.reshape(-1, filters), folded_bias), {}


def _fold_norm_replayed_as(kernel, bias, gamma, beta, moving_mean, moving_variance, epsilon, folded_kernel,
                           folded_bias):
    # A kernel that is not contiguous would reshape into a copy made now.
    if not (kernel.flags.c_contiguous and folded_kernel.flags.c_contiguous):
        return None
    return _fold_norm_call(kernel, bias, gamma, beta, moving_mean, moving_variance, epsilon, folded_kernel,
                           folded_bias)


fold_norm.replayed_as = _fold_norm_replayed_as


# One kernel for what were ten NumPy calls: a predict folds on every chunk (and a recorded
# one-image program on every run). 3x3x16x16, warm: 7.0 -> 1.8 us; in the small ResNet's
# predicts (tools/profile_step.py --zoo resnet_small --predict 5000) 10.0 -> 1.7 ms of ~220.
@njit(cache=True)
def _fold_rows(kernel, bias, gamma, beta, moving_mean, moving_variance, epsilon, folded_kernel, folded_bias):
    rows, filters = kernel.shape
    scales = np.empty(filters, kernel.dtype)
    for f in range(filters):
        scale = np.float64(gamma[f]) / np.sqrt(np.float64(moving_variance[f]) + epsilon)
        shift = bias[f] - moving_mean[f] if bias.shape[0] > 0 else -moving_mean[f]
        folded_bias[f] = np.float64(shift) * scale + np.float64(beta[f])
        scales[f] = scale
    for r in range(rows):
        for f in range(filters):
            folded_kernel[r, f] = kernel[r, f] * scales[f]


def _activation_gradient(y, i, k, centered, scale, shift, grad, above, below, linear, square, zero):
    """grad * activation'(.) at row i, channel k: from the output ``y`` for sigmoid and
    tanh, whose slope is a function of it; for the others, whose slope is only which side
    of 0 the value lies, from the pre-activation the forward computed, ``centered`` *
    scale + shift, made again from the input (the same float32 operations as
    _affine_blocks: the same side), so the output is not read at all. Which one is chosen
    when a kernel compiles, by ``y``: the output (2-D), or an empty 1-D array where it is
    not read (see _output_for_slope): each model compiles the kernels of one."""
    raise NotImplementedError("_activation_gradient runs inside Numba kernels only")


@overload(_activation_gradient, inline="always")
def _activation_gradient_for(y, i, k, centered, scale, shift, grad, above, below, linear, square, zero):
    if y.ndim == 2:
        def from_output(y, i, k, centered, scale, shift, grad, above, below, linear, square, zero):
            return gradient_from_slope(y[i, k], grad, above, below, linear, square, zero)
        return from_output

    def from_side(y, i, k, centered, scale, shift, grad, above, below, linear, square, zero):
        slope = above if centered * scale + shift > zero else below
        return grad * slope if slope != zero else zero
    return from_side


def _output_for_slope(y, code):
    """What the backward kernels get as ``y`` (see _activation_gradient)."""
    return y if code in (SIGMOID, TANH) else y.reshape(-1)[:0]


@range_body(fastmath={"contract"})
def _gradient_chunks(first, stop, dy, y, code, alpha, x, center, scale, shift, inv_std, sum_dy, sum_dy_xhat):
    rows, channels = dy.shape
    chunks = sum_dy.shape[0]
    zero = dy.dtype.type(0.0)
    above, below, linear, square = slope_terms(code, alpha, dy.dtype.type)
    for chunk in range(first, stop):
        for i in range(chunk * rows // chunks, (chunk + 1) * rows // chunks):
            for k in range(channels):
                centered = x[i, k] - center[k]
                grad = _activation_gradient(y, i, k, centered, scale[k], shift[k], dy[i, k], above, below, linear,
                                            square, zero)
                sum_dy[chunk, k] += grad
                sum_dy_xhat[chunk, k] += grad * (centered * inv_std[k])


@njit(cache=True)
def _gradient_partials(dy, y, code, alpha, x, center, scale, shift, inv_std, sum_dy, sum_dy_xhat):
    """Per chunk: the sums of g = dy * activation'(.) and of g * x_hat, per channel, with
    x_hat = (x - center) * inv_std (activation'(.) as _activation_gradient)."""
    parallel_ranges(_gradient_chunks, sum_dy.shape[0],
                    (dy, y, code, alpha, x, center, scale, shift, inv_std, sum_dy, sum_dy_xhat))


@njit(cache=True)
def _parameter_gradients(sum_dy, sum_dy_xhat, rows, dgamma, dbeta):
    """Adds the chunks' totals into dgamma/dbeta; returns the means of g and g * x_hat."""
    chunks, channels = sum_dy.shape
    mean_dy = np.empty(channels)
    mean_dy_xhat = np.empty(channels)
    for k in range(channels):
        total_dy = 0.0
        total_dy_xhat = 0.0
        for chunk in range(chunks):
            total_dy += sum_dy[chunk, k]
            total_dy_xhat += sum_dy_xhat[chunk, k]
        dbeta[k] += total_dy
        dgamma[k] += total_dy_xhat
        mean_dy[k] = total_dy / max(rows, 1)
        mean_dy_xhat[k] = total_dy_xhat / max(rows, 1)
    return mean_dy, mean_dy_xhat


@range_body(fastmath={"contract"})
def _input_gradient_rows(first_block, stop_block, dy, y, code, alpha, x, center, scale, shift, g_scale, x_scale,
                         g_shift, dx):
    rows, channels = dy.shape
    zero = dy.dtype.type(0.0)
    above, below, linear, square = slope_terms(code, alpha, dy.dtype.type)
    block, _ = _block_rows(rows, channels)
    for index in range(first_block, stop_block):
        for i in range(index * block, min(rows, (index + 1) * block)):
            for k in range(channels):
                centered = x[i, k] - center[k]
                grad = _activation_gradient(y, i, k, centered, scale[k], shift[k], dy[i, k], above, below, linear,
                                            square, zero)
                dx[i, k] = g_scale[k] * grad + x_scale[k] * centered + g_shift[k]


@njit(cache=True)
def _input_gradient(dy, y, code, alpha, x, center, scale, shift, g_scale, x_scale, g_shift, dx):
    """dx = g_scale * g + x_scale * (x - center) + g_shift, per channel, with g = dy *
    activation'(.) (as _activation_gradient), over blocks of rows."""
    parallel_ranges(_input_gradient_rows, _block_rows(dy.shape[0], dy.shape[1])[1],
                    (dy, y, code, alpha, x, center, scale, shift, g_scale, x_scale, g_shift, dx))


def batchnorm_backward(dy, y, code, alpha, x, mean, gamma, beta, inv_std, dgamma, dbeta, dx):
    """With g = dy * activation'(.) and x_hat = (x - mean) * inv_std (the forward's input
    and batch statistics): adds into dgamma/dbeta; dx = gamma*inv_std*(g - mean(g) -
    x_hat*mean(g*x_hat)). The output ``y`` is read for sigmoid and tanh only (see
    _activation_gradient): two reads of the batch fewer, the Kaggle-style CNN's 100352 x 32
    relu norm 3.3-3.9 -> 2.9-3.3 ms after a 64 MB sweep."""
    dtype = dy.dtype
    scale = (gamma * inv_std).astype(dtype)  # the forward's (batchnorm_train_forward)
    sum_dy, sum_dy_xhat = _partials(*dy.shape)
    y = _output_for_slope(y, code)
    _gradient_partials(dy, y, code, alpha, x, mean, scale, beta, inv_std.astype(dtype), sum_dy, sum_dy_xhat)
    mean_dy, mean_dy_xhat = _parameter_gradients(sum_dy, sum_dy_xhat, dy.shape[0], dgamma, dbeta)
    _input_gradient(dy, y, code, alpha, x, mean, scale, beta, *input_gradient_terms(gamma, inv_std, mean_dy,
                                                                                    mean_dy_xhat, dtype), dx)


def batchnorm_infer_backward(dy, y, code, alpha, x, gamma, beta, moving_mean, moving_variance, epsilon, dgamma, dbeta,
                             dx):
    """Backward of the inference transform (moving statistics held fixed), with g = dy *
    activation'(.) (as batchnorm_backward): adds into dgamma/dbeta; dx = gamma * g /
    sqrt(moving_variance + epsilon)."""
    dtype = dy.dtype
    inv_std = 1.0 / np.sqrt(moving_variance.astype(np.float64) + epsilon)
    scale = moving_scale(gamma, moving_variance, epsilon).astype(dtype)  # batchnorm_infer's
    sum_dy, sum_dy_xhat = _partials(*dy.shape)
    y = _output_for_slope(y, code)
    _gradient_partials(dy, y, code, alpha, x, moving_mean, scale, beta, inv_std.astype(dtype), sum_dy, sum_dy_xhat)
    _parameter_gradients(sum_dy, sum_dy_xhat, dy.shape[0], dgamma, dbeta)
    nothing = np.zeros(dy.shape[1], dtype)
    _input_gradient(dy, y, code, alpha, x, moving_mean, scale, beta, (gamma * inv_std).astype(dtype), nothing,
                    nothing, dx)
