"""Dense backward pass: the bias gradient fused with the activation derivative, then BLAS.

The forward pass is one matmul plus ``bias_activation_forward`` (see layers/core.py)."""

from .activations import activation_backward
from .matmul import add_transposed_product, weight_and_input_gradients


def dense_backward(x, kernel, y, dy, code, alpha, dkernel, dbias, scratch, dx):
    """Adds the kernel and bias gradients; writes the input gradient into ``dx`` unless it
    is None. ``dy`` is overwritten with the gradient before the activation."""
    activation_backward(y, dy, code, alpha, dy, dbias)
    if dx is None:
        add_transposed_product(x, dy, dkernel, scratch)
    else:
        weight_and_input_gradients(x, dy, kernel, dkernel, scratch, dx)
