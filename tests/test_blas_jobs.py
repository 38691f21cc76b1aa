"""kernels/blas.py: sgemm called from Numba kernels on raw pointers, against NumPy."""

import numpy as np
import pytest

from nbnet.kernels import blas


@pytest.fixture(autouse=True)
def needs_sgemm():
    if not blas.address():
        pytest.skip("NumPy's BLAS is not an ILP64 OpenBLAS here")


LAYOUTS = ["row-major", "transposed", "rows of a wider matrix", "columns of a transposed one"]


def _matrix(rng, layout, rows, columns):
    """A (rows, columns) float32 matrix laid out as a layer may hand one over: the first
    and third read by sgemm as they are, the second and fourth as transposes."""
    base = rng.random((rows + columns + 4, rows + columns + 4), dtype=np.float32)
    matrix = {"row-major": lambda: np.ascontiguousarray(base[:rows, :columns]),
              "transposed": lambda: np.ascontiguousarray(base[:columns, :rows]).T,
              "rows of a wider matrix": lambda: base[2:2 + rows, 3:3 + columns],
              "columns of a transposed one": lambda: base[1:1 + columns, 2:2 + rows].T}[layout]()
    assert matrix.shape == (rows, columns)
    return matrix


@pytest.mark.parametrize("left", LAYOUTS)
@pytest.mark.parametrize("right", LAYOUTS)
@pytest.mark.parametrize("add", [False, True])
def test_a_job_computes_numpys_product_on_any_unit_stride_layout(left, right, add):
    rng = np.random.default_rng(1)
    a, b = _matrix(rng, left, 6, 4), _matrix(rng, right, 4, 5)
    assert blas.operand(a)[1] == (blas.PLAIN if LAYOUTS.index(left) % 2 == 0 else blas.TRANSPOSED)
    assert blas.operand(b)[1] == (blas.PLAIN if LAYOUTS.index(right) % 2 == 0 else blas.TRANSPOSED)
    start = rng.random((6, 8), dtype=np.float32)
    out = start.copy()
    target = out[:, 1:6]  # a block of a wider result: its rows are strided
    job = blas.job(a, b, target, add)
    assert job is not None
    blas.run(np.array([job], np.int64))
    expected = start.copy()
    expected[:, 1:6] = expected[:, 1:6] + a @ b if add else a @ b
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    np.testing.assert_array_equal(out[:, [0, 6, 7]], start[:, [0, 6, 7]])  # nothing outside the block written


def test_jobs_side_by_side_write_their_own_blocks():
    """Several jobs in one parallel kernel (a product split into row blocks): NumPy's
    result (not to the bit: sgemm's edge blocks add in another order where a block starts
    off its register tiling)."""
    rng = np.random.default_rng(2)
    a, b = rng.random((37, 50), dtype=np.float32), rng.random((50, 23), dtype=np.float32)
    out = np.full((37, 23), np.nan, np.float32)
    bounds = [0, 9, 20, 37]
    blas.run(np.array([blas.job(a[lo:hi], b, out[lo:hi], False) for lo, hi in zip(bounds, bounds[1:])], np.int64))
    np.testing.assert_allclose(out, a @ b, rtol=1e-6)


@pytest.mark.parametrize("matrix", [
    np.ones((4, 6), np.float64),                      # not float32
    np.ones((8, 12), np.float32)[::2, ::2],           # no unit stride
    np.ones((0, 3), np.float32),                      # empty
])
def test_matrices_sgemm_cannot_read_in_place_are_refused(matrix):
    assert blas.operand(matrix) is None
    assert blas.job(matrix, np.ones((matrix.shape[1], 2), np.float32), np.ones((matrix.shape[0], 2), np.float32),
                    False) is None


def test_a_result_not_row_major_is_refused():
    a, b = np.ones((3, 4), np.float32), np.ones((4, 5), np.float32)
    assert blas.job(a, b, np.ones((5, 3), np.float32).T, False) is None
