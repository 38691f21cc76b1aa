"""Loss kernels: each returns the batch's summed loss and writes the gradient of the
*mean* loss with respect to the predictions (or to the logits, for the fused forms).

``weights`` (float32, one per row, or empty for none) are Keras's sample weights: each
row's loss and gradient are multiplied by its weight, and the mean is still over the batch
(Keras's 'sum_over_batch_size'). Cross-entropy on probabilities follows Keras: categorical rows are divided by their sum,
then probabilities are clipped to [epsilon, 1 - epsilon]; the fused logit forms use
log-sum-exp and need no clipping. Sums run in float64.
"""

import numpy as np
from numba import njit


@njit(cache=True, inline="always")
def upper_clip(epsilon):
    """1 - epsilon rounded to float32, as Keras's clip computes it: 1 - 1.19e-7, not
    1 - 1e-7, which makes -log(1 - p) of a probability of 1 read 15.94, not 16.12."""
    return np.float64(np.float32(1.0 - epsilon))


@njit(cache=True, inline="always")
def row_weight(weights, i):
    return np.float64(weights[i]) if weights.shape[0] > 0 else 1.0


@njit(cache=True)
def softmax_crossentropy_from_logits(logits, targets, sparse_labels, weights, grad):
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
        w = row_weight(weights, i)
        for k in range(classes):
            target = (1.0 if sparse_labels[i] == k else 0.0) if sparse else np.float64(targets[i, k])
            total -= w * target * (logits[i, k] - log_norm)
            grad[i, k] = (np.exp(logits[i, k] - log_norm) - target) * scale * w
    return total


@njit(cache=True)
def crossentropy_from_probabilities(probs, targets, sparse_labels, weights, epsilon, grad):
    """Keras's categorical cross-entropy on probabilities: each row is first divided by its
    sum (a row that does not sum to 1 is rescaled, not penalised), then clipped to
    [epsilon, 1 - epsilon]; the gradient flows through both (none where clipped)."""
    rows, classes = probs.shape
    sparse = sparse_labels.shape[0] > 0
    scale = 1.0 / rows
    high = upper_clip(epsilon)
    total = 0.0
    for i in range(rows):
        row_sum = 0.0
        for k in range(classes):
            row_sum += np.float64(probs[i, k])
        # d(loss)/d(q_k) into grad, and its q-weighted sum for the normalisation's Jacobian.
        weighted = 0.0
        w = row_weight(weights, i)
        for k in range(classes):
            target = (1.0 if sparse_labels[i] == k else 0.0) if sparse else np.float64(targets[i, k])
            q = np.float64(probs[i, k]) / row_sum
            clipped = min(max(q, epsilon), high)
            total -= w * target * np.log(clipped)
            d_q = -target / q if epsilon <= q <= high else 0.0
            weighted += d_q * q
            grad[i, k] = d_q
        for k in range(classes):
            grad[i, k] = (grad[i, k] - weighted) / row_sum * scale * w
    return total


@njit(cache=True)
def sigmoid_crossentropy_from_logits(logits, targets, weights, grad):
    """Binary cross-entropy on logits, averaged over the last axis then the batch."""
    rows, width = logits.shape
    scale = 1.0 / (rows * width)
    total = 0.0
    for i in range(rows):
        w = row_weight(weights, i)
        for k in range(width):
            z = np.float64(logits[i, k])
            t = np.float64(targets[i, k])
            total += w * (max(z, 0.0) - z * t + np.log1p(np.exp(-abs(z)))) / width
            sig = 1.0 / (1.0 + np.exp(-z)) if z >= 0 else np.exp(z) / (1.0 + np.exp(z))
            grad[i, k] = (sig - t) * scale * w
    return total


@njit(cache=True)
def binary_crossentropy_from_probabilities(probs, targets, weights, epsilon, grad):
    rows, width = probs.shape
    scale = 1.0 / (rows * width)
    high = upper_clip(epsilon)
    total = 0.0
    for i in range(rows):
        w = row_weight(weights, i)
        for k in range(width):
            t = np.float64(targets[i, k])
            p = min(max(np.float64(probs[i, k]), epsilon), high)
            total -= w * (t * np.log(p) + (1.0 - t) * np.log(1.0 - p)) / width
            inside = epsilon <= probs[i, k] <= high
            grad[i, k] = (p - t) / (p * (1.0 - p)) * scale * w if inside else 0.0
    return total


# The regression losses, one value at a time: (loss term, its derivative in the
# prediction). ``setting`` is Huber's delta, or the epsilon MSLE and MAPE clip at.
MSE, MAE, HUBER, MSLE, MAPE = 0, 1, 2, 3, 4


@njit(inline="always")
def regression_term(kind, p, t, setting):
    """Keras's formulas; |x|'s derivative at 0 is 0, and MSLE has none where the prediction
    is clipped to epsilon."""
    diff = p - t
    if kind == MSE:
        return diff * diff, 2.0 * diff
    if kind == MAE:
        return abs(diff), np.sign(diff)
    if kind == HUBER:
        if abs(diff) <= setting:
            return 0.5 * diff * diff, diff
        return setting * (abs(diff) - 0.5 * setting), setting * np.sign(diff)
    if kind == MSLE:
        logs = np.log1p(max(p, setting)) - np.log1p(max(t, setting))
        return logs * logs, 2.0 * logs / (1.0 + p) if p > setting else 0.0
    inverse = 100.0 / max(abs(t), setting)  # MAPE
    return abs(diff) * inverse, np.sign(diff) * inverse


@njit(cache=True)
def regression_loss(preds, targets, weights, kind, setting, grad):
    """The summed loss ``kind`` (see regression_term) over the batch, each row's mean over
    its values; ``grad`` = the derivative of the batch's mean loss."""
    rows, width = preds.shape
    scale = 1.0 / (rows * width)
    total = 0.0
    for i in range(rows):
        w = row_weight(weights, i)
        for k in range(width):
            term, slope = regression_term(kind, np.float64(preds[i, k]), np.float64(targets[i, k]), setting)
            total += w * term / width
            grad[i, k] = slope * scale * w
    return total


def mean_squared_error(preds, targets, weights, grad):
    return regression_loss(preds, targets, weights, MSE, 0.0, grad)


def mean_absolute_error(preds, targets, weights, grad):
    return regression_loss(preds, targets, weights, MAE, 0.0, grad)


def huber(preds, targets, weights, delta, grad):
    return regression_loss(preds, targets, weights, HUBER, float(delta), grad)


def mean_squared_logarithmic_error(preds, targets, weights, epsilon, grad):
    return regression_loss(preds, targets, weights, MSLE, float(epsilon), grad)


def mean_absolute_percentage_error(preds, targets, weights, epsilon, grad):
    return regression_loss(preds, targets, weights, MAPE, float(epsilon), grad)
