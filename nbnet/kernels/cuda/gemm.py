"""A tiled shared-memory matmul for the CUDA path (Numba's CUDA target has no BLAS).

``matmul(a, b, out, trans_a, trans_b)``: out = op(a) @ op(b), op(m) = m.T when flagged,
for 2-D C-contiguous device arrays of one float dtype (``out`` must not alias an input).
Each TILE x TILE block of threads computes a TILE x TILE tile of ``out`` (several, in turn,
when the grid is capped at MAX_GRID), stepping along the shared dimension one tile at a
time through shared memory; edges are zero-filled so any shape works. A transposed operand is read
row-wise and transposed on its way into shared memory, so global loads stay coalesced.
It serves Dense (x @ W), the im2col convolution (cols @ K2d) and their backward passes
(x.T @ dy, dy @ W.T).
"""

from numba import cuda
from numba.np import numpy_support

TILE = 16
# Most blocks along each grid axis; past that, blocks loop over the remaining tiles.
MAX_GRID = 65535

_kernels = {}


def _make_kernel(tile, trans_a, trans_b, accumulate, nbtype):
    # Shared-array shapes must be compile-time constants: computed here, captured below.
    # One padding column keeps the transposed stores free of bank conflicts.
    shape = (tile, tile + 1)

    @cuda.jit
    def kernel(a, b, out, m, n, depth):
        sa = cuda.shared.array(shape, nbtype)
        sb = cuda.shared.array(shape, nbtype)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        row_tiles = (m + tile - 1) // tile
        col_tiles = (n + tile - 1) // tile
        depth_tiles = (depth + tile - 1) // tile
        # Loop bounds depend on the block only, so every thread of a block reaches the
        # same syncthreads.
        for tr in range(cuda.blockIdx.y, row_tiles, cuda.gridDim.y):
            for tc in range(cuda.blockIdx.x, col_tiles, cuda.gridDim.x):
                row = tr * tile + ty
                col = tc * tile + tx
                acc = nbtype(0.0)
                for kt in range(depth_tiles):
                    k0 = kt * tile
                    # sa[r, c] = op(a)[tr*tile + r, k0 + c]
                    if trans_a:  # a is (depth, m): consecutive tx read consecutive m
                        kk = k0 + ty
                        mm = tr * tile + tx
                        if kk < depth and mm < m:
                            sa[tx, ty] = a[kk, mm]
                        else:
                            sa[tx, ty] = 0.0
                    else:
                        mm = tr * tile + ty
                        kk = k0 + tx
                        if kk < depth and mm < m:
                            sa[ty, tx] = a[mm, kk]
                        else:
                            sa[ty, tx] = 0.0
                    # sb[r, c] = op(b)[k0 + r, tc*tile + c]
                    if trans_b:  # b is (n, depth): consecutive tx read consecutive depth
                        nn = tc * tile + ty
                        kk = k0 + tx
                        if kk < depth and nn < n:
                            sb[tx, ty] = b[nn, kk]
                        else:
                            sb[tx, ty] = 0.0
                    else:
                        kk = k0 + ty
                        nn = tc * tile + tx
                        if kk < depth and nn < n:
                            sb[ty, tx] = b[kk, nn]
                        else:
                            sb[ty, tx] = 0.0
                    cuda.syncthreads()
                    for q in range(tile):
                        acc += sa[ty, q] * sb[q, tx]
                    cuda.syncthreads()
                if row < m and col < n:
                    if accumulate:
                        out[row, col] += acc
                    else:
                        out[row, col] = acc

    return kernel


def _kernel(tile, trans_a, trans_b, accumulate, dtype):
    key = (tile, bool(trans_a), bool(trans_b), bool(accumulate), str(dtype))
    kernel = _kernels.get(key)
    if kernel is None:
        nbtype = numpy_support.from_dtype(dtype)
        kernel = _kernels[key] = _make_kernel(tile, bool(trans_a), bool(trans_b), bool(accumulate), nbtype)
    return kernel


def matmul(a, b, out, trans_a=False, trans_b=False, accumulate=False, tile=None):
    """out = op(a) @ op(b) (``out += ...`` with ``accumulate``, which spares the CPU path's
    scratch-then-add for weight gradients). ``tile`` defaults to the module's TILE."""
    tile = TILE if tile is None else int(tile)
    m, depth = (a.shape[1], a.shape[0]) if trans_a else (a.shape[0], a.shape[1])
    depth_b, n = (b.shape[1], b.shape[0]) if trans_b else (b.shape[0], b.shape[1])
    if depth != depth_b or tuple(out.shape) != (m, n):
        raise ValueError(f"matmul: shapes {tuple(a.shape)}{'.T' if trans_a else ''} @ "
                         f"{tuple(b.shape)}{'.T' if trans_b else ''} -> {tuple(out.shape)} do not agree")
    if a.dtype != out.dtype or b.dtype != out.dtype:
        raise TypeError(f"matmul: dtypes {a.dtype}, {b.dtype} -> {out.dtype} must all be the same")
    if m == 0 or n == 0:
        return out
    grid = (max(1, min(-(-n // tile), MAX_GRID)), max(1, min(-(-m // tile), MAX_GRID)))
    _kernel(tile, trans_a, trans_b, accumulate, out.dtype)[grid, (tile, tile)](a, b, out, m, n, depth)
    return out

