"""CUDA twins of the CPU kernels in ``nbnet.kernels``: Numba ``@cuda.jit`` kernels plus
host-side launchers with the CPU kernels' names and argument order, over device arrays.

One module per CPU module, with the same file name (``activations``, ``conv``, ``dense``,
``pool``, ``normalization``, ``losses``, ``optim``, ``regularization``), plus ``gemm``:
a tiled shared-memory matmul, since Numba's CUDA target has no BLAS.

Conventions shared by every module:

* Launchers take device arrays (``numba.cuda`` device arrays, or anything exposing
  ``__cuda_array_interface__``), pick the grid and block, and launch on the default
  stream, so consecutive launches are ordered and scratch buffers can be reused.
* Each thread owns the output elements it writes (grid-stride loops over the output),
  so there are no races. Reductions (bias gradients, column sums, batch statistics, loss
  sums) are two-pass and deterministic: per-chunk partial sums over a fixed chunking of
  the rows (a function of the shape only), then one thread per output sums the chunks in
  order. No atomics anywhere.
* Nothing here imports ``numba.cuda`` at package import: ``import nbnet.kernels.cuda``
  works on a machine without numba-cuda, a driver or a GPU. The kernel modules import
  it when they are imported themselves; call :func:`available` first.
* Kernels compile lazily, per argument types, on first launch (no ``cache=True``).
"""

import math

# Threads per block of the 1-D launches (a multiple of the 32-thread warp).
THREADS = 256
# Most blocks a 1-D launch uses; past that, threads loop grid-stride over the output.
MAX_BLOCKS = 4096
# Most row chunks a two-pass column reduction uses (partials array: chunks x columns).
MAX_CHUNKS = 1024

_workspaces = {}
_empties = {}


def _cuda():
    from numba import cuda

    return cuda


def available():
    """(usable, reason): whether a real CUDA GPU can run these kernels, and if not, what is
    missing (numba-cuda, the driver, a GPU, or the CUDA toolkit's NVVM), for an error message."""
    try:
        from numba import config as numba_config
        from numba import cuda
    except Exception as exc:  # numba without a CUDA target (or a broken install)
        return False, f"numba-cuda is not installed ({exc}); install it with: pip install 'nbnet[cuda]'"
    if getattr(numba_config, "ENABLE_CUDASIM", False):
        return False, "NUMBA_ENABLE_CUDASIM=1 is set: numba.cuda is the CPU simulator, not a GPU"
    try:
        from numba.cuda.cudadrv import driver as cuda_driver

        count = cuda_driver.driver.get_device_count()
    except Exception as exc:
        message = " ".join(str(exc).split()) or type(exc).__name__
        return False, f"no usable CUDA driver: {message}"
    if count == 0:
        return False, "the CUDA driver found no GPU"
    try:
        usable = cuda.is_available()
    except Exception as exc:
        return False, f"CUDA is not usable: {exc}"
    if not usable:
        return False, "numba.cuda.is_available() is False (no supported GPU)"
    try:
        from numba.cuda.cudadrv import nvvm

        if not nvvm.is_available():
            return False, ("the CUDA toolkit's NVVM library was not found; install it with: "
                           "pip install 'numba-cuda[cu12]' (or a CUDA toolkit)")
    except Exception:
        pass
    try:
        name = cuda.get_current_device().name
        name = name.decode() if isinstance(name, bytes) else str(name)
    except Exception as exc:
        return False, f"the GPU could not be opened: {exc}"
    return True, f"CUDA GPU: {name} ({count} device{'s' if count != 1 else ''})"


def launch_1d(n, threads=None):
    """(blocks, threads) for ``n`` independent work items, grid-stride beyond MAX_BLOCKS."""
    threads = THREADS if threads is None else threads
    threads = max(1, min(threads, -(-max(n, 1) // 32) * 32))
    blocks = max(1, min(-(-n // threads), MAX_BLOCKS))
    return blocks, threads


def chunking(rows):
    """How many row chunks a two-pass column reduction uses: about sqrt(rows), so both
    passes are short; a function of ``rows`` only, so results do not vary between runs."""
    if rows <= 0:
        return 1
    return max(1, min(rows, math.isqrt(rows), MAX_CHUNKS))


def workspace(name, shape, dtype):
    """A device scratch array, one per (name, shape, dtype), reused across launches. Safe
    because every launch goes to the default stream (in order); never hand a workspace to a
    caller that keeps it. Memory grows with the number of distinct shapes (a few per layer);
    ``release_workspaces`` frees them."""
    shape = tuple(int(d) for d in (shape if isinstance(shape, tuple) else (shape,)))
    key = (name, shape, str(dtype))
    buf = _workspaces.get(key)
    if buf is None:
        buf = _cuda().device_array(shape, dtype=dtype)
        _workspaces[key] = buf
    return buf


def release_workspaces():
    """Drop the cached scratch arrays (their device memory is freed when unreferenced)."""
    _workspaces.clear()
    _empties.clear()


def empty(dtype):
    """A zero-length device array of ``dtype``: the 'no bias' / 'no labels' argument."""
    key = str(dtype)
    buf = _empties.get(key)
    if buf is None:
        buf = _empties[key] = _cuda().device_array(0, dtype=dtype)
    return buf


def as_scalar(value, dtype):
    """``value`` as a NumPy scalar of ``dtype`` (so a kernel specialises on it, as the CPU
    kernels' ``x.dtype.type(...)``)."""
    import numpy as np

    return np.dtype(dtype).type(value)
