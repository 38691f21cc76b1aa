"""CUDA twins of ``nbnet.kernels.merging``: one thread per output element (elementwise
kernels, over 1-D views) or per element of the input block copied (Concatenate, over 2-D
views), in grid-stride loops."""

from numba import cuda

from . import as_scalar, launch_1d


@cuda.jit
def _merge_add_kernel(a, b, divisor, out):
    for i in range(cuda.grid(1), out.shape[0], cuda.gridsize(1)):
        out[i] = (a[i] + b[i]) / divisor


@cuda.jit
def _merge_subtract_kernel(a, b, out):
    for i in range(cuda.grid(1), out.shape[0], cuda.gridsize(1)):
        out[i] = a[i] - b[i]


@cuda.jit
def _merge_multiply_kernel(a, b, out):
    for i in range(cuda.grid(1), out.shape[0], cuda.gridsize(1)):
        out[i] = a[i] * b[i]


@cuda.jit
def _merge_divide_kernel(values, divisor, out):
    for i in range(cuda.grid(1), out.shape[0], cuda.gridsize(1)):
        out[i] = values[i] / divisor


@cuda.jit
def _merge_select_kernel(a, b, k, minimum, out, index):
    for i in range(cuda.grid(1), out.shape[0], cuda.gridsize(1)):
        ai = a[i]
        bi = b[i]
        take = ((bi < ai) if minimum else (bi > ai)) | (bi != bi)
        if take:
            out[i] = bi
            index[i] = k
        else:
            out[i] = ai
            if k == 1:
                index[i] = 0


@cuda.jit
def _merge_route_kernel(dy, index, k, dx):
    for i in range(cuda.grid(1), dx.shape[0], cuda.gridsize(1)):
        if index[i] == k:
            dx[i] = dy[i]
        else:
            dx[i] = 0


@cuda.jit
def _concat_forward_kernel(x, offset, out):
    rows, cols = x.shape
    for idx in range(cuda.grid(1), rows * cols, cuda.gridsize(1)):
        r = idx // cols
        c = idx - r * cols
        out[r, offset + c] = x[r, c]


@cuda.jit
def _concat_backward_kernel(dy, offset, dx):
    rows, cols = dx.shape
    for idx in range(cuda.grid(1), rows * cols, cuda.gridsize(1)):
        r = idx // cols
        c = idx - r * cols
        dx[r, c] = dy[r, offset + c]


def _launch(kernel, n, *args):
    if n:
        blocks, threads = launch_1d(n)
        kernel[blocks, threads](*args)


def merge_add(a, b, divisor, out):
    """out = (a + b) / divisor over 1-D views (``out`` may be ``a`` or ``b``)."""
    _launch(_merge_add_kernel, out.shape[0], a, b, as_scalar(divisor, out.dtype), out)


def merge_subtract(a, b, out):
    """out = a - b over 1-D views."""
    _launch(_merge_subtract_kernel, out.shape[0], a, b, out)


def merge_multiply(a, b, out):
    """out = a * b over 1-D views (``out`` may be ``a`` or ``b``)."""
    _launch(_merge_multiply_kernel, out.shape[0], a, b, out)


def merge_divide(values, divisor, out):
    """out = values / divisor over 1-D views (``out`` may be ``values``)."""
    _launch(_merge_divide_kernel, out.shape[0], values, as_scalar(divisor, out.dtype), out)


def merge_maximum(a, b, k, out, index):
    """out = max(a, b); index = k where b (input k) wins strictly (see the CPU kernel)."""
    _launch(_merge_select_kernel, out.shape[0], a, b, int(k), False, out, index)


def merge_minimum(a, b, k, out, index):
    """out = min(a, b); index = k where b (input k) wins strictly (see the CPU kernel)."""
    _launch(_merge_select_kernel, out.shape[0], a, b, int(k), True, out, index)


def merge_route(dy, index, k, dx):
    """dx = dy where index == k, else 0, over 1-D views (``dx`` may be ``dy``)."""
    _launch(_merge_route_kernel, dx.shape[0], dy, index, int(k), dx)


def concat_forward(x, offset, out):
    """out[:, offset:offset + cols] = x over 2-D views."""
    _launch(_concat_forward_kernel, x.shape[0] * x.shape[1], x, int(offset), out)


def concat_backward(dy, offset, dx):
    """dx = dy[:, offset:offset + cols] over 2-D views."""
    _launch(_concat_backward_kernel, dx.shape[0] * dx.shape[1], dy, int(offset), dx)
