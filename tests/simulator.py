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
from contextlib import contextmanager
from pathlib import Path

import pytest

SIMULATED = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
# The CUDA tests run in this process: under the simulator, or on a real GPU when asked.
ON_CUDA = SIMULATED or os.environ.get("NBNET_TEST_GPU") == "1"

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
