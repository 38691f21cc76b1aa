"""Running the CUDA tests without a GPU, under Numba's CUDA simulator.

The simulator must be switched on before numba.cuda is first imported, so a plain
``pytest`` run cannot use it in-process: each CUDA test module has one wrapper test that
re-runs the module in a subprocess with NUMBA_ENABLE_CUDASIM=1 (``run_under_simulator``);
there the module's real tests run (``sim_only``) and the wrapper skips itself. On a
machine with a GPU, ``NBNET_TEST_GPU=1 pytest tests/test_cuda_*.py`` runs the same tests on
the real device instead (the wrappers then skip). The
simulator runs every CUDA thread as a Python thread, so shapes are tiny and launches
small (``small_launches``), which also makes every grid-stride loop run more than once.
"""

import os
import subprocess
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

import pytest

SIMULATED = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
# The CUDA tests run in this process: under the simulator, or on a real GPU when asked.
ON_CUDA = SIMULATED or os.environ.get("NBNET_TEST_GPU") == "1"


def _allocate_shared_arrays_under_a_lock():
    """Numba's simulator (0.68) gives a block's threads one ``cuda.shared.array`` per call
    site by check-then-set on a dict with no lock: two threads that both find the site
    empty each allocate, and one of them then works on a private array, so the tiled
    matmul reads garbage. It shows as rare wrong results: a CI run's Conv2D weights off by
    1e-4; with ``sys.setswitchinterval(1e-6)``, 2 of 9 small trainings here. The same
    allocation, keyed the same way by the caller's file and line, under a lock."""
    import numpy as np
    from numba.core import types
    from numba.cuda.simulator import kernelapi
    from numba.np import numpy_support

    lock = threading.Lock()
    dynamic = kernelapi.FakeCUDAShared.array

    def array(self, shape, dtype):
        if shape == 0:  # dynamic shared memory: one buffer, no per-site allocation
            return dynamic(self, shape, dtype)
        if isinstance(dtype, types.Type):
            dtype = numpy_support.as_dtype(dtype)
        caller = sys._getframe(1)
        site = (caller.f_code.co_filename, caller.f_lineno)
        with lock:
            allocated = self._allocations.get(site)
            if allocated is None:
                allocated = self._allocations[site] = np.empty(shape, dtype)
        return allocated

    kernelapi.FakeCUDAShared.array = array


if SIMULATED:
    _allocate_shared_arrays_under_a_lock()

sim_only = pytest.mark.skipif(not ON_CUDA, reason="runs in the simulator subprocess started by the module's "
                                                   "*_under_simulator test (or set NBNET_TEST_GPU=1 on a GPU)")
plain_only = pytest.mark.skipif(ON_CUDA, reason="already inside the CUDA run")


def run_under_simulator(test_file, timeout_s=300):
    """Run ``test_file``'s tests in a subprocess with the simulator on; fail with its report."""
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    proc = subprocess.run([sys.executable, "-m", "pytest", str(Path(test_file).resolve()), "-q", "-p",
                           "no:cacheprovider"], cwd=root, env=env, capture_output=True, text=True, timeout=timeout_s)
    report = proc.stdout[-20000:] + proc.stderr[-5000:]
    assert proc.returncode == 0 and " passed" in proc.stdout, f"simulated CUDA tests failed:\n{report}"


@contextmanager
def small_launches():
    """Tiny blocks and grids (32 threads, at most 3 blocks, 4x4 matmul tiles on a 2x2 grid)."""
    import nbnet.kernels.cuda as kc
    from nbnet.kernels.cuda import gemm

    saved = (kc.THREADS, kc.MAX_BLOCKS, kc.MAX_CHUNKS, gemm.TILE, gemm.MAX_GRID, sys.getswitchinterval())
    kc.THREADS, kc.MAX_BLOCKS, kc.MAX_CHUNKS, gemm.TILE, gemm.MAX_GRID = 32, 3, 3, 4, 2
    # The simulator's scheduler polls its threads; a short GIL interval speeds syncthreads.
    sys.setswitchinterval(1e-4)
    try:
        yield
    finally:
        kc.THREADS, kc.MAX_BLOCKS, kc.MAX_CHUNKS, gemm.TILE, gemm.MAX_GRID = saved[:5]
        sys.setswitchinterval(saved[5])
        kc.release_workspaces()
