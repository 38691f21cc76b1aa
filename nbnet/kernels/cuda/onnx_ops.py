"""CUDA twins of ``nbnet.kernels.onnx_ops`` (same names, same arguments; ``geometry`` a
device copy of the CPU's int64 geometry array). One thread per output element in
grid-stride loops (Permute, the broadcasting arithmetic, Clip), per (outer, inner) row
(LogSoftmax), and for a broadcast operand's gradient the project's two-pass reduction:
one thread per (operand element, chunk of the elements it was broadcast to) writes a
partial sum, then one thread per operand element adds its chunks in order (one pass when
a single chunk suffices). No atomics: the results do not vary between runs."""

import math

from numba import cuda

from . import as_scalar, chunking, launch_1d, workspace


@cuda.jit(device=True, inline=True)
def _apply(code, x, y):
    if code == 0:
        return x + y
    if code == 1:
        return x - y
    if code == 2:
        return y - x
    if code == 3:
        return x * y
    if code == 4:
        return x / y
    return y / x


@cuda.jit(device=True, inline=True)
def _gradient(code, which, av, bv, g):
    if code == 0:
        return g
    if code == 1:
        return g if which == 0 else -g
    if code == 2:
        return -g if which == 0 else g
    if code == 3:
        return g * bv if which == 0 else g * av
    if code == 4:
        return g / bv if which == 0 else -g * av / (bv * bv)
    return -g * bv / (av * av) if which == 0 else g / av


@cuda.jit
def _permute_forward_kernel(x, geometry, out):
    rank = geometry.shape[1]
    for idx in range(cuda.grid(1), out.shape[0], cuda.gridsize(1)):
        rest = idx
        offset = 0
        for k in range(rank - 1, -1, -1):
            d = geometry[0, k]
            q = rest // d
            offset += (rest - q * d) * geometry[1, k]
            rest = q
        out[idx] = x[offset]


@cuda.jit
def _binary_forward_kernel(code, a, b, geometry, out):
    rank = geometry.shape[1]
    for idx in range(cuda.grid(1), out.shape[0], cuda.gridsize(1)):
        rest = idx
        offset_a = 0
        offset_b = 0
        for k in range(rank - 1, -1, -1):
            d = geometry[0, k]
            q = rest // d
            i = rest - q * d
            offset_a += i * geometry[1, k]
            offset_b += i * geometry[2, k]
            rest = q
        out[idx] = _apply(code, a[offset_a], b[offset_b])


@cuda.jit
def _binary_gradient_partials_kernel(code, which, a, b, dy, geometry, n_kept, reduced, per_chunk, zero, partials):
    """partials[j, c] = the sum of operand element j's gradient terms over its broadcast
    elements c * per_chunk .. (c + 1) * per_chunk - 1 (in the order the CPU sums them)."""
    n, chunks = partials.shape
    rank = geometry.shape[1]
    for idx in range(cuda.grid(1), n * chunks, cuda.gridsize(1)):
        j = idx // chunks
        c = idx - j * chunks
        rest = j
        base_dy = 0
        base_other = 0
        for k in range(n_kept - 1, -1, -1):
            d = geometry[0, k]
            q = rest // d
            i = rest - q * d
            base_dy += i * geometry[1, k]
            base_other += i * geometry[2, k]
            rest = q
        if which == 0:
            tv = a[j]
        else:
            tv = b[j]
        total = zero
        start = c * per_chunk
        stop = start + per_chunk
        if stop > reduced:
            stop = reduced
        for r in range(start, stop):
            rest = r
            offset_dy = base_dy
            offset_other = base_other
            for k in range(rank - 1, n_kept - 1, -1):
                d = geometry[0, k]
                q = rest // d
                i = rest - q * d
                offset_dy += i * geometry[1, k]
                offset_other += i * geometry[2, k]
                rest = q
            g = dy[offset_dy]
            if which == 0:
                total += _gradient(code, 0, tv, b[offset_other], g)
            else:
                total += _gradient(code, 1, a[offset_other], tv, g)
        partials[j, c] = total


@cuda.jit
def _sum_chunks_kernel(partials, grad):
    n, chunks = partials.shape
    for j in range(cuda.grid(1), n, cuda.gridsize(1)):
        total = partials[j, 0]
        for c in range(1, chunks):
            total += partials[j, c]
        grad[j] = total


@cuda.jit
def _clip_forward_kernel(x, low, high, out):
    for i in range(cuda.grid(1), out.shape[0], cuda.gridsize(1)):
        v = x[i]
        if v < low:
            v = low
        if v > high:
            v = high
        out[i] = v


@cuda.jit
def _clip_backward_kernel(x, low, high, zero, dy, dx):
    for i in range(cuda.grid(1), dx.shape[0], cuda.gridsize(1)):
        v = x[i]
        g = dy[i]
        if v >= low and v <= high:
            dx[i] = g
        else:
            dx[i] = g * zero


@cuda.jit
def _log_softmax_forward_kernel(x, zero, out):
    outer, n, inner = x.shape
    for r in range(cuda.grid(1), outer * inner, cuda.gridsize(1)):
        o = r // inner
        c = r - o * inner
        top = x[o, 0, c]
        for i in range(1, n):
            v = x[o, i, c]
            if v > top or v != v:
                top = v
        total = zero
        for i in range(n):
            total += math.exp(x[o, i, c] - top)
        log_total = math.log(total)
        for i in range(n):
            out[o, i, c] = (x[o, i, c] - top) - log_total


@cuda.jit
def _log_softmax_backward_kernel(y, dy, dx):
    outer, n, inner = y.shape
    for r in range(cuda.grid(1), outer * inner, cuda.gridsize(1)):
        o = r // inner
        c = r - o * inner
        total = dy[o, 0, c]
        for i in range(1, n):
            total += dy[o, i, c]
        for i in range(n):
            dx[o, i, c] = dy[o, i, c] - math.exp(y[o, i, c]) * total


@cuda.jit
def _binary_backward_same_kernel(code, which, a, b, dy, geometry, grad):
    rank = geometry.shape[1]
    for idx in range(cuda.grid(1), grad.shape[0], cuda.gridsize(1)):
        rest = idx
        offset_a = 0
        offset_b = 0
        for k in range(rank - 1, -1, -1):
            d = geometry[0, k]
            q = rest // d
            i = rest - q * d
            offset_a += i * geometry[1, k]
            offset_b += i * geometry[2, k]
            rest = q
        grad[idx] = _gradient(code, which, a[offset_a], b[offset_b], dy[idx])


@cuda.jit
def _take_forward_kernel(x, indices, out):
    outer, n_out, inner = out.shape
    for idx in range(cuda.grid(1), outer * n_out * inner, cuda.gridsize(1)):
        r = idx // inner
        i = idx - r * inner
        o = r // n_out
        k = r - o * n_out
        out[o, k, i] = x[o, indices[k], i]


@cuda.jit
def _take_backward_kernel(dy, indices, zero, dx):
    # one thread per dx element, gathering the dy positions that read it: repeated
    # indices need no atomics, and the sum runs in the CPU kernel's order
    outer, n_in, inner = dx.shape
    n_out = dy.shape[1]
    for idx in range(cuda.grid(1), outer * n_in * inner, cuda.gridsize(1)):
        r = idx // inner
        i = idx - r * inner
        o = r // n_in
        j = r - o * n_in
        total = zero
        for k in range(n_out):
            if indices[k] == j:
                total += dy[o, k, i]
        dx[o, j, i] = total


def _launch(kernel, n, *args):
    if n:
        blocks, threads = launch_1d(n)
        kernel[blocks, threads](*args)


def permute_forward(x, geometry, out):
    """out = x transposed, over 1-D views (see the CPU kernel)."""
    _launch(_permute_forward_kernel, out.shape[0], x, geometry, out)


def binary_forward(code, a, b, geometry, out):
    """out = a (op) b with broadcasting, over 1-D views (see the CPU kernel)."""
    _launch(_binary_forward_kernel, out.shape[0], int(code), a, b, geometry, out)


def binary_backward(code, which, a, b, dy, geometry, n_kept, grad):
    """grad = operand ``which``'s gradient summed over its broadcast axes (see the CPU
    kernel), in two deterministic passes when more than one chunk is used."""
    n = grad.shape[0]
    if n == 0:
        return
    reduced = dy.shape[0] // n
    chunks = chunking(reduced)
    per_chunk = -(-reduced // chunks) if reduced else 0
    args = (int(code), int(which), a, b, dy, geometry, int(n_kept), int(reduced), int(per_chunk),
            as_scalar(0, grad.dtype))
    if chunks == 1:
        _launch(_binary_gradient_partials_kernel, n, *args, grad.reshape(n, 1))
        return
    partials = workspace("onnx_binary_partials", (n, chunks), grad.dtype)
    _launch(_binary_gradient_partials_kernel, n * chunks, *args, partials)
    _launch(_sum_chunks_kernel, n, partials, grad)


def clip_forward(x, low, high, out):
    """out = min(max(x, low), high) over 1-D views."""
    _launch(_clip_forward_kernel, out.shape[0], x, as_scalar(low, out.dtype), as_scalar(high, out.dtype), out)


def clip_backward(x, low, high, dy, dx):
    """dx = dy * (low <= x <= high) over 1-D views."""
    _launch(_clip_backward_kernel, dx.shape[0], x, as_scalar(low, dx.dtype), as_scalar(high, dx.dtype),
            as_scalar(0, dx.dtype), dy, dx)


def log_softmax_forward(x, out):
    """log_softmax along axis 1 of (outer, axis, inner) views."""
    if x.shape[1]:
        _launch(_log_softmax_forward_kernel, x.shape[0] * x.shape[2], x, as_scalar(0, out.dtype), out)


def log_softmax_backward(y, dy, dx):
    """dx = dy - exp(y) * sum(dy) along axis 1 of (outer, axis, inner) views."""
    if y.shape[1]:
        _launch(_log_softmax_backward_kernel, y.shape[0] * y.shape[2], y, dy, dx)


def take_forward(x, indices, out):
    """out[o, k, i] = x[o, indices[k], i] over (outer, axis, inner) views."""
    _launch(_take_forward_kernel, out.size, x, indices, out)


def take_backward(dy, indices, dx):
    """dx[o, j, i] = sum of dy[o, k, i] over indices[k] == j, over (outer, axis, inner) views."""
    _launch(_take_backward_kernel, dx.size, dy, indices, as_scalar(0, dx.dtype), dx)


def binary_backward_same(code, which, a, b, dy, geometry, grad):
    """The gradient of an operand with the output's shape, over 1-D views with the forward
    geometry (see the CPU kernel)."""
    _launch(_binary_backward_same_kernel, grad.shape[0], int(code), int(which), a, b, dy, geometry, grad)
