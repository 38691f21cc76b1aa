"""CUDA twin of ``nbnet.kernels.dense``: the Dense backward pass as the fused activation
derivative + bias gradient, then x.T @ dy and dy @ W.T as tiled matmuls. (The forward is
the layer's matmul + bias_activation_forward here: devices/cuda.py has no dense_forward.)"""

from .activations import activation_backward
from .gemm import matmul


def dense_backward(x, kernel, y, dy, code, alpha, dkernel, dbias, scratch, dx):
    """Adds the kernel and bias gradients; writes the input gradient into ``dx`` unless it
    is None. ``dy`` is overwritten with the gradient before the activation. ``scratch`` is
    unused (the kernel gradient accumulates straight into ``dkernel``); kept for the CPU
    signature, so it may be None."""
    activation_backward(y, dy, code, alpha, dy, dbias)
    matmul(x, dy, dkernel, trans_a=True, accumulate=True)
    if dx is not None:
        matmul(dy, kernel, dx, trans_b=True)
