"""Dense passes. Forward: a product of a few rows in one kernel with the bias and
activation (kernels/few_rows.py), else the product (BLAS) then ``bias_activation_forward``;
backward: the bias gradient fused with the activation derivative, then BLAS."""

from . import few_rows
from .activations import LINEAR, activation_backward, bias_activation_forward
from .matmul import add_transposed_product, matmul, weight_and_input_gradients


def dense_forward(x, kernel, bias, code, alpha, y):
    """y = activation ``code`` (slope ``alpha``) of x @ kernel + bias (``bias`` of length
    0: none); returns y."""
    for function, args, kwargs in _dense_forward_calls(x, kernel, bias, code, alpha, y):
        function(*args, **kwargs)
    return y


def _dense_forward_calls(x, kernel, bias, code, alpha, y):
    """The calls dense_forward makes (a recorded inference program makes them directly, see
    inference_program): (function, args, kwargs) each."""
    if few_rows.dense_applies(x, kernel, code, y):
        return [few_rows.dense_call(x, kernel, bias, code, alpha, y)]
    calls = [matmul.replayed_as(x, kernel, y) or (matmul, (x, kernel, y), {})]
    # No bias, no activation (a Dense before BatchNormalization): nothing more to do.
    if code != LINEAR or bias.shape[0]:
        calls.append(bias_activation_forward.replayed_as(y, bias, code, alpha, y))
    return calls


dense_forward.replayed_as = _dense_forward_calls


def dense_backward(x, kernel, y, dy, code, alpha, dkernel, dbias, scratch, dx):
    """Adds the kernel and bias gradients; writes the input gradient into ``dx`` unless it
    is None. ``dy`` is overwritten with the gradient before the activation."""
    activation_backward(y, dy, code, alpha, dy, dbias)
    if dx is None:
        add_transposed_product(x, dy, dkernel, scratch)
    else:
        weight_and_input_gradients(x, dy, kernel, dkernel, scratch, dx)
