"""kernels/few_rows.py: a product of a few rows by large weights, split by columns on
Numba's threads (a Dense layer's forward in a small predict)."""

import numba
import numpy as np
import pytest

from nbnet.kernels import few_rows, matmul


@pytest.mark.parametrize("rows, inner, columns", [(1, 784, 512), (3, 515, 333), (8, 37, 1000), (2, 9, 16), (1, 8, 5)])
def test_the_product_is_numpys_with_the_same_bits_at_any_split(rows, inner, columns):
    """Each output's sum runs over the inner axis in one order, whatever block of columns
    a thread takes: the bits of a predict do not depend on its threads. Inner sizes that
    are not a multiple of the eight-row pass and columns that end in a part vector too."""
    rng = np.random.default_rng(rows * inner + columns)
    a = rng.standard_normal((rows, inner)).astype(np.float32)
    b = rng.standard_normal((inner, columns)).astype(np.float32)
    results = []
    for parts in (1, 2, 3, 5):
        out = np.full((rows, columns), np.nan, np.float32)
        few_rows._product(a, b, out, parts)
        results.append(out)
    exact = a.astype(np.float64) @ b.astype(np.float64)
    np.testing.assert_allclose(results[0], exact, rtol=1e-5, atol=1e-5 * np.sqrt(inner))
    for other in results[1:]:
        np.testing.assert_array_equal(other, results[0])


def test_matmul_takes_it_for_few_rows_by_large_weights_only(monkeypatch):
    taken = []
    original = few_rows.few_rows_matmul
    monkeypatch.setattr(few_rows, "few_rows_matmul", lambda a, b, out: taken.append(a.shape) or original(a, b, out))
    rng = np.random.default_rng(0)
    b = rng.standard_normal((784, 256)).astype(np.float32)  # 200k weights
    for rows in (1, 8, 9):
        a = rng.standard_normal((rows, 784)).astype(np.float32)
        out = np.empty((rows, 256), np.float32)
        np.testing.assert_allclose(matmul.matmul(a, b, out), a @ b, rtol=1e-4, atol=1e-4)
    small = rng.standard_normal((100, 256)).astype(np.float32)
    matmul.matmul(np.ones((1, 100), np.float32), small, np.empty((1, 256), np.float32))
    transposed = np.ascontiguousarray(b.T).T  # a layer's kernel.T in backward: not row-major
    matmul.matmul(np.ones((1, 784), np.float32), transposed, np.empty((1, 256), np.float32))
    assert taken == [(1, 784), (8, 784)]
    # A recorded inference program makes the call itself, on the threads of each run.
    a = np.ones((1, 784), np.float32)
    assert matmul.matmul.replayed_as(a, b, np.empty((1, 256), np.float32))[0] is few_rows.few_rows_matmul


def test_one_thread_or_all_give_the_same_bits():
    rng = np.random.default_rng(1)
    a = rng.standard_normal((2, 1000)).astype(np.float32)
    b = rng.standard_normal((1000, 300)).astype(np.float32)
    before = numba.get_num_threads()
    outputs = []
    try:
        for threads in sorted({1, before}):
            numba.set_num_threads(threads)
            outputs.append(few_rows.few_rows_matmul(a, b, np.empty((2, 300), np.float32)).copy())
    finally:
        numba.set_num_threads(before)
    for other in outputs[1:]:
        np.testing.assert_array_equal(other, outputs[0])
