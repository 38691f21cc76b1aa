"""CUDA twins of ``nbnet.kernels.losses``: each writes the gradient of the *mean* loss with
respect to the predictions (or the logits, for the fused forms) and returns the batch's
summed loss.

One thread per element writes the gradient and that element's loss term (float64) into a
scratch array; the terms are then summed by a deterministic two-pass reduction (chunk
partials, then one thread adds them in order) into a float64 device scalar. The launchers
return that sum as a Python float (one 8-byte copy to the host, which waits for the
kernels); pass ``total_out`` (a float64 device array of shape (1,)) to keep it on the
device instead, and the launcher returns ``total_out`` without waiting.
The softmax form first computes each row's log-sum-exp with one thread per row.
"""

import math

import numpy as np
from numba import cuda, float32, float64

from . import chunking, launch_1d, workspace
from ..losses import HUBER, MAE, MAPE, MSE, MSLE


@cuda.jit(device=True)
def _max(a, b):
    """Python's max(a, b), spelled out: with Numba 0.68's CUDA target the two-argument
    builtin failed to compile in the offline PTX check (tests/test_cuda_kernels.py)."""
    return b if b > a else a


@cuda.jit(device=True)
def _min(a, b):
    """Python's min(a, b), for the same reason as _max."""
    return b if b < a else a


@cuda.jit(device=True)
def _upper_clip(epsilon):
    """1 - epsilon rounded to float32, as Keras clips (the CPU kernels' upper_clip)."""
    return float64(float32(1.0 - epsilon))


@cuda.jit(device=True)
def _row_weight(weights, i):
    """The CPU kernels' row_weight: a sample's weight, 1 when none are given."""
    return weights[i] + 0.0 if weights.shape[0] > 0 else 1.0


@cuda.jit
def _sum_partials_kernel(values, partial):
    n = values.shape[0]
    chunks = partial.shape[0]
    for chunk in range(cuda.grid(1), chunks, cuda.gridsize(1)):
        total = 0.0
        for i in range(chunk * n // chunks, (chunk + 1) * n // chunks):
            total += values[i]
        partial[chunk] = total


@cuda.jit
def _sum_finish_kernel(partial, out):
    if cuda.grid(1) == 0:
        total = 0.0
        for chunk in range(partial.shape[0]):
            total += partial[chunk]
        out[0] = total


def sum_float64(values, total_out=None):
    """Deterministic sum of a 1-D float64 device array: a Python float, or written into
    ``total_out`` (shape (1,), float64, on the device) which is then returned."""
    n = values.shape[0]
    out = total_out if total_out is not None else workspace("losses.total", 1, np.float64)
    chunks = chunking(n)
    partial = workspace("losses.partial", chunks, np.float64)
    blocks, threads = launch_1d(chunks)
    _sum_partials_kernel[blocks, threads](values, partial)
    _sum_finish_kernel[1, 1](partial, out)
    if total_out is not None:
        return total_out
    return float(out.copy_to_host()[0])


def _terms(size):
    return workspace("losses.terms", max(size, 0), np.float64)


@cuda.jit
def _log_norm_kernel(logits, log_norm):
    rows, classes = logits.shape
    for i in range(cuda.grid(1), rows, cuda.gridsize(1)):
        peak = logits[i, 0]
        for k in range(1, classes):
            peak = _max(peak, logits[i, k])
        norm = 0.0
        for k in range(classes):
            norm += math.exp((logits[i, k] + 0.0) - peak)
        log_norm[i] = math.log(norm) + peak


@cuda.jit
def _softmax_crossentropy_kernel(logits, targets, sparse_labels, weights, log_norm, scale, terms, grad):
    rows, classes = logits.shape
    sparse = sparse_labels.shape[0] > 0
    for idx in range(cuda.grid(1), rows * classes, cuda.gridsize(1)):
        i = idx // classes
        k = idx - i * classes
        if sparse:
            target = 1.0 if sparse_labels[i] == k else 0.0
        else:
            target = targets[i, k] + 0.0
        w = _row_weight(weights, i)
        terms[idx] = -w * target * (logits[i, k] - log_norm[i])
        grad[i, k] = (math.exp(logits[i, k] - log_norm[i]) - target) * scale * w


def softmax_crossentropy_from_logits(logits, targets, sparse_labels, weights, grad, total_out=None):
    """Softmax + categorical cross-entropy, fused. Targets are ``sparse_labels`` (int
    class ids) when it is non-empty, else the rows of ``targets``."""
    rows, classes = logits.shape
    terms = _terms(rows * classes)
    if rows * classes:
        log_norm = workspace("losses.log_norm", rows, np.float64)
        blocks, threads = launch_1d(rows)
        _log_norm_kernel[blocks, threads](logits, log_norm)
        blocks, threads = launch_1d(rows * classes)
        _softmax_crossentropy_kernel[blocks, threads](logits, targets, sparse_labels, weights, log_norm,
                                                      1.0 / max(rows, 1), terms, grad)
    return sum_float64(terms, total_out)


@cuda.jit
def _crossentropy_probabilities_kernel(probs, targets, sparse_labels, weights, epsilon, scale, terms, grad):
    """One thread per row: the row is divided by its sum, clipped, and the gradient taken
    through both (the CPU kernel's formula)."""
    rows, classes = probs.shape
    sparse = sparse_labels.shape[0] > 0
    high = _upper_clip(epsilon)
    for i in range(cuda.grid(1), rows, cuda.gridsize(1)):
        row_sum = 0.0
        for k in range(classes):
            row_sum += probs[i, k]
        weighted = 0.0
        w = _row_weight(weights, i)
        for k in range(classes):
            if sparse:
                target = 1.0 if sparse_labels[i] == k else 0.0
            else:
                target = targets[i, k] + 0.0
            q = (probs[i, k] + 0.0) / row_sum
            clipped = _min(_max(q, epsilon), high)
            terms[i * classes + k] = -w * target * math.log(clipped)
            d_q = -target / q if epsilon <= q <= high else 0.0
            weighted += d_q * q
            grad[i, k] = d_q
        for k in range(classes):
            grad[i, k] = (grad[i, k] - weighted) / row_sum * scale * w


def crossentropy_from_probabilities(probs, targets, sparse_labels, weights, epsilon, grad, total_out=None):
    rows, classes = probs.shape
    terms = _terms(rows * classes)
    if rows * classes:
        blocks, threads = launch_1d(rows)
        _crossentropy_probabilities_kernel[blocks, threads](probs, targets, sparse_labels, weights, float(epsilon),
                                                            1.0 / max(rows, 1), terms, grad)
    return sum_float64(terms, total_out)


@cuda.jit
def _sigmoid_crossentropy_kernel(logits, targets, weights, scale, terms, grad):
    rows, width = logits.shape
    for idx in range(cuda.grid(1), rows * width, cuda.gridsize(1)):
        i = idx // width
        k = idx - i * width
        z = logits[i, k] + 0.0
        t = targets[i, k] + 0.0
        w = _row_weight(weights, i)
        terms[idx] = w * (_max(z, 0.0) - z * t + math.log1p(math.exp(-abs(z)))) / width
        sig = 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))
        grad[i, k] = (sig - t) * scale * w


def sigmoid_crossentropy_from_logits(logits, targets, weights, grad, total_out=None):
    """Binary cross-entropy on logits, averaged over the last axis then the batch."""
    rows, width = logits.shape
    terms = _terms(rows * width)
    if rows * width:
        blocks, threads = launch_1d(rows * width)
        _sigmoid_crossentropy_kernel[blocks, threads](logits, targets, weights, 1.0 / (rows * width), terms, grad)
    return sum_float64(terms, total_out)


@cuda.jit
def _binary_crossentropy_kernel(probs, targets, weights, epsilon, scale, terms, grad):
    rows, width = probs.shape
    high = _upper_clip(epsilon)
    for idx in range(cuda.grid(1), rows * width, cuda.gridsize(1)):
        i = idx // width
        k = idx - i * width
        t = targets[i, k] + 0.0
        p = _min(_max(probs[i, k] + 0.0, epsilon), high)
        w = _row_weight(weights, i)
        terms[idx] = -w * (t * math.log(p) + (1.0 - t) * math.log(1.0 - p)) / width
        inside = epsilon <= probs[i, k] <= high
        grad[i, k] = (p - t) / (p * (1.0 - p)) * scale * w if inside else 0.0


def binary_crossentropy_from_probabilities(probs, targets, weights, epsilon, grad, total_out=None):
    rows, width = probs.shape
    terms = _terms(rows * width)
    if rows * width:
        blocks, threads = launch_1d(rows * width)
        _binary_crossentropy_kernel[blocks, threads](probs, targets, weights, float(epsilon), 1.0 / (rows * width),
                                                     terms, grad)
    return sum_float64(terms, total_out)


@cuda.jit(device=True)
def _sign(x):
    return 1.0 if x > 0.0 else (-1.0 if x < 0.0 else 0.0)


@cuda.jit(device=True)
def _regression_term(kind, p, t, setting):
    """The CPU's regression_term: (loss term, its derivative in the prediction)."""
    diff = p - t
    if kind == MSE:
        return diff * diff, 2.0 * diff
    if kind == MAE:
        return abs(diff), _sign(diff)
    if kind == HUBER:
        if abs(diff) <= setting:
            return 0.5 * diff * diff, diff
        return setting * (abs(diff) - 0.5 * setting), setting * _sign(diff)
    if kind == MSLE:
        logs = math.log1p(_max(p, setting)) - math.log1p(_max(t, setting))
        return logs * logs, 2.0 * logs / (1.0 + p) if p > setting else 0.0
    inverse = 100.0 / _max(abs(t), setting)  # MAPE
    return abs(diff) * inverse, _sign(diff) * inverse


@cuda.jit
def _regression_kernel(preds, targets, weights, kind, setting, scale, terms, grad):
    rows, width = preds.shape
    for idx in range(cuda.grid(1), rows * width, cuda.gridsize(1)):
        i = idx // width
        k = idx - i * width
        term, slope = _regression_term(kind, preds[i, k] + 0.0, targets[i, k] + 0.0, setting)
        w = _row_weight(weights, i)
        terms[idx] = w * term / width
        grad[i, k] = slope * scale * w


def _regression_loss(kind, preds, targets, weights, setting, grad, total_out):
    """One thread per value; returns the terms' sum (see the CPU's regression_loss)."""
    rows, width = preds.shape
    terms = _terms(rows * width)
    if rows * width:
        blocks, threads = launch_1d(rows * width)
        _regression_kernel[blocks, threads](preds, targets, weights, kind, float(setting), 1.0 / (rows * width),
                                            terms, grad)
    return sum_float64(terms, total_out)


def mean_squared_error(preds, targets, weights, grad, total_out=None):
    return _regression_loss(MSE, preds, targets, weights, 0.0, grad, total_out)


def mean_absolute_error(preds, targets, weights, grad, total_out=None):
    return _regression_loss(MAE, preds, targets, weights, 0.0, grad, total_out)


def huber(preds, targets, weights, delta, grad, total_out=None):
    return _regression_loss(HUBER, preds, targets, weights, delta, grad, total_out)


def mean_squared_logarithmic_error(preds, targets, weights, epsilon, grad, total_out=None):
    return _regression_loss(MSLE, preds, targets, weights, epsilon, grad, total_out)


def mean_absolute_percentage_error(preds, targets, weights, epsilon, grad, total_out=None):
    return _regression_loss(MAPE, preds, targets, weights, epsilon, grad, total_out)
