"""Running the CUDA tests without a GPU, under Numba's CUDA simulator.

The simulator must be switched on before numba.cuda is first imported, so a plain
``pytest`` run cannot use it in-process: each CUDA test module has one wrapper test that
re-runs the module in a subprocess with NUMBA_ENABLE_CUDASIM=1 (``run_under_simulator``);
there the module's real tests run (``sim_only``) and the wrapper skips itself; back here
the wrapper checks the subprocess's JUnit report test by test, so a simulated test that
starts skipping, or is no longer collected, fails it. On a
machine with a GPU, ``NBNET_TEST_GPU=1 pytest tests/test_cuda_*.py`` runs the same tests on
the real device instead (the wrappers then skip). The
simulator runs every CUDA thread as a Python thread, so shapes are tiny and launches
small (``small_launches``), which also makes every grid-stride loop run more than once.
"""

import os
import subprocess
import sys
import tempfile
import threading
import xml.etree.ElementTree as ET
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

# The reason plain_only's tests give for skipping in the simulator run: the wrapper
# (run_under_simulator) expects exactly those, and the tests it is told of, to skip there.
PLAIN_ONLY_REASON = "already inside the CUDA run"

sim_only = pytest.mark.skipif(not ON_CUDA, reason="runs in the simulator subprocess started by the module's "
                                                   "*_under_simulator test (or set NBNET_TEST_GPU=1 on a GPU)")
plain_only = pytest.mark.skipif(ON_CUDA, reason=PLAIN_ONLY_REASON)


def _module_items(node):
    """Every test item under a collector node (its module, classes included), freshly collected."""
    for child in node.collect():
        if isinstance(child, pytest.Item):
            yield child
        else:
            yield from _module_items(child)


def _junit_outcomes(path):
    """{test name: (outcome, detail)} from a pytest JUnit XML report; outcome is 'passed',
    'skipped' (detail: the reason) or 'failed' (a failure or error in any phase)."""
    outcomes = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        name = case.get("name")
        failed = [child for child in case if child.tag in ("failure", "error")]
        skipped = [child for child in case if child.tag == "skipped"]
        if failed or name in outcomes:  # a name reported twice: a teardown error after the call
            outcomes[name] = ("failed", "; ".join((c.get("message") or c.tag) for c in failed) or "reported twice")
        elif skipped:
            outcomes[name] = ("skipped", skipped[0].get("message") or "")
        else:
            outcomes[name] = ("passed", "")
    return outcomes


def run_under_simulator(request, not_simulated=(), timeout_s=300):
    """Run the calling test's module in a subprocess with the simulator on, and check what
    ran there against what this process expects from the module's own collection: every
    test passes except those marked ``plain_only`` and those named in ``not_simulated``
    (tests skipped under the simulator on purpose), which must skip. A test that starts
    skipping, goes missing, appears only there, or fails, fails the wrapper with the
    subprocess's report; so does a run with no test at all to pass."""
    module = request.node.parent
    items = list(_module_items(module))
    expected = {}
    for item in items:
        if item.get_closest_marker("slow"):
            continue  # the subprocess runs with the project's addopts: -m 'not slow'
        plain = any(m.kwargs.get("reason") == PLAIN_ONLY_REASON for m in item.iter_markers("skipif"))
        expected[item.name] = "skipped" if plain or item.originalname in not_simulated else "passed"
    unknown = set(not_simulated) - {item.originalname for item in items}
    assert not unknown, f"not_simulated names tests that {module.path.name} does not have: {sorted(unknown)}"
    to_pass = sorted(name for name, outcome in expected.items() if outcome == "passed")
    assert to_pass, f"{module.path.name} has no test to run under the simulator"

    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    with tempfile.TemporaryDirectory(prefix="nbnet-cudasim-") as tmp:
        junit = Path(tmp) / "report.xml"
        proc = subprocess.run([sys.executable, "-m", "pytest", str(module.path), "-q", "-rs", "-p", "no:cacheprovider",
                               f"--junitxml={junit}"], cwd=root, env=env, capture_output=True, text=True,
                              timeout=timeout_s)
        report = proc.stdout[-20000:] + proc.stderr[-5000:]
        assert junit.is_file(), f"the simulated run wrote no report (exit status {proc.returncode}):\n{report}"
        ran = _junit_outcomes(junit)

    problems = [f"{name}: failed ({detail})" for name, (outcome, detail) in sorted(ran.items()) if outcome == "failed"]
    problems += [f"{name}: skipped under the simulator ({ran[name][1]}), expected to pass"
                 for name in to_pass if name in ran and ran[name][0] == "skipped"]
    problems += [f"{name}: expected to skip under the simulator, but it {ran[name][0]}"
                 for name, outcome in sorted(expected.items())
                 if outcome == "skipped" and name in ran and ran[name][0] != "skipped"]
    problems += [f"{name}: not run under the simulator" for name in sorted(set(expected) - set(ran))]
    problems += [f"{name}: ran under the simulator, but is not in this module's collection"
                 for name in sorted(set(ran) - set(expected))]
    passed = sum(outcome == "passed" for outcome, _ in ran.values())
    assert not problems and proc.returncode == 0 and passed == len(to_pass), (
        f"simulated CUDA tests: {passed} passed of the {len(to_pass)} expected to (exit status {proc.returncode})\n"
        + "\n".join(problems) + f"\n\n{report}")


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
