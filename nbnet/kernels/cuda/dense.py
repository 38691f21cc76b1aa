"""CUDA twin of ``nbnet.kernels.dense``: the Dense passes as tiled matmuls plus the fused
bias/activation kernels (forward: x @ W then bias + activation; backward: activation
derivative + bias gradient, then x.T @ dy and dy @ W.T)."""

from .activations import activation_backward, bias_activation_forward
from .gemm import matmul


def dense_forward(x, kernel, bias, code, alpha, y):
    """y = activation(x @ kernel + bias); ``bias`` of length 0 (or None) means no bias."""
    matmul(x, kernel, y)
    bias_activation_forward(y, bias, code, alpha, y)


def dense_backward(x, kernel, y, dy, code, alpha, dkernel, dbias, scratch, dx):
    """Adds the kernel and bias gradients; writes the input gradient into ``dx`` unless it
    is None. ``dy`` is overwritten with the gradient before the activation. ``scratch`` is
    unused (the kernel gradient accumulates straight into ``dkernel``); kept for the CPU
    signature, so it may be None."""
    activation_backward(y, dy, code, alpha, dy, dbias)
    matmul(x, dy, dkernel, trans_a=True, accumulate=True)
    if dx is not None:
        matmul(dy, kernel, dx, trans_b=True)
