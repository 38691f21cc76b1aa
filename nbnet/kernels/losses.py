"""Loss kernels: each returns the batch's summed loss and writes the gradient of the
*mean* loss with respect to the predictions (or to the logits, for the fused forms).

Cross-entropy on probabilities clips them to [epsilon, 1 - epsilon] as Keras does; the
fused logit forms use log-sum-exp and need no clipping. Sums run in float64.
"""

import numpy as np
from numba import njit


@njit(cache=True)
def softmax_crossentropy_from_logits(logits, targets, sparse_labels, grad):
    """Softmax + categorical cross-entropy, fused. Targets are ``sparse_labels`` (int
    class ids) when it is non-empty, else the rows of ``targets``."""
    rows, classes = logits.shape
    sparse = sparse_labels.shape[0] > 0
    scale = 1.0 / rows
    total = 0.0
    for i in range(rows):
        peak = logits[i, 0]
        for k in range(1, classes):
            peak = max(peak, logits[i, k])
        norm = 0.0
        for k in range(classes):
            norm += np.exp(np.float64(logits[i, k]) - peak)
        log_norm = np.log(norm) + peak
        for k in range(classes):
            target = (1.0 if sparse_labels[i] == k else 0.0) if sparse else np.float64(targets[i, k])
            total -= target * (logits[i, k] - log_norm)
            grad[i, k] = (np.exp(logits[i, k] - log_norm) - target) * scale
    return total


@njit(cache=True)
def crossentropy_from_probabilities(probs, targets, sparse_labels, epsilon, grad):
    rows, classes = probs.shape
    sparse = sparse_labels.shape[0] > 0
    scale = 1.0 / rows
    total = 0.0
    for i in range(rows):
        for k in range(classes):
            target = (1.0 if sparse_labels[i] == k else 0.0) if sparse else np.float64(targets[i, k])
            p = min(max(np.float64(probs[i, k]), epsilon), 1.0 - epsilon)
            total -= target * np.log(p)
            grad[i, k] = -target / p * scale if epsilon < probs[i, k] < 1.0 - epsilon else 0.0
    return total


@njit(cache=True)
def sigmoid_crossentropy_from_logits(logits, targets, grad):
    """Binary cross-entropy on logits, averaged over the last axis then the batch."""
    rows, width = logits.shape
    scale = 1.0 / (rows * width)
    total = 0.0
    for i in range(rows):
        for k in range(width):
            z = np.float64(logits[i, k])
            t = np.float64(targets[i, k])
            total += (max(z, 0.0) - z * t + np.log1p(np.exp(-abs(z)))) / width
            sig = 1.0 / (1.0 + np.exp(-z)) if z >= 0 else np.exp(z) / (1.0 + np.exp(z))
            grad[i, k] = (sig - t) * scale
    return total


@njit(cache=True)
def binary_crossentropy_from_probabilities(probs, targets, epsilon, grad):
    rows, width = probs.shape
    scale = 1.0 / (rows * width)
    total = 0.0
    for i in range(rows):
        for k in range(width):
            t = np.float64(targets[i, k])
            p = min(max(np.float64(probs[i, k]), epsilon), 1.0 - epsilon)
            total -= (t * np.log(p) + (1.0 - t) * np.log(1.0 - p)) / width
            inside = epsilon < probs[i, k] < 1.0 - epsilon
            grad[i, k] = (p - t) / (p * (1.0 - p)) * scale if inside else 0.0
    return total


@njit(cache=True)
def mean_squared_error(preds, targets, grad):
    rows, width = preds.shape
    scale = 2.0 / (rows * width)
    total = 0.0
    for i in range(rows):
        for k in range(width):
            diff = np.float64(preds[i, k]) - targets[i, k]
            total += diff * diff / width
            grad[i, k] = diff * scale
    return total
