"""kernels/few_rows.py: a product of a few rows by large weights, split on Numba's threads,
and a Dense layer's forward of a few rows in one kernel (a small predict)."""

import numba
import numpy as np
import pytest

from nbnet import layers
from nbnet.kernels import activations, dense, few_rows, matmul
from nbnet.kernels.activations import LEAKY_RELU, LINEAR, RELU, SIGMOID, SOFTMAX, TANH


@pytest.mark.parametrize("rows, inner, columns", [(1, 784, 512), (3, 515, 333), (1, 17, 8000), (1, 3136, 10),
                                                 (8, 37, 1000), (2, 9, 16), (1, 8, 5)])
def test_the_product_is_numpys_with_the_same_bits_on_any_threads(rows, inner, columns):
    """Each output is the sum of one chain of multiply-adds over each half of the inner
    axis (halves for large weights: many values or a long inner axis), whatever block of
    columns a thread takes: the bits of a predict do not depend on its threads. Inner
    sizes that are not a multiple of the eight-row pass, halves of unequal length, and
    columns that end in a part vector too."""
    rng = np.random.default_rng(rows * inner + columns)
    a = rng.standard_normal((rows, inner)).astype(np.float32)
    b = rng.standard_normal((inner, columns)).astype(np.float32)
    out = np.full((rows, columns), np.nan, np.float32)
    few_rows._serial_dense(a, b, few_rows._NO_BIAS, LINEAR, 0.0, out)
    exact = a.astype(np.float64) @ b.astype(np.float64)
    np.testing.assert_allclose(out, exact, rtol=1e-5, atol=1e-5 * np.sqrt(inner))
    for threads in (1, 2, 3, 5):
        split = np.full((rows, columns), np.nan, np.float32)
        few_rows._split_dense(a, b, few_rows._NO_BIAS, LINEAR, 0.0, split, threads)
        np.testing.assert_array_equal(split, out)


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


@pytest.mark.parametrize("code", [LINEAR, RELU, LEAKY_RELU, SIGMOID, TANH, SOFTMAX])
@pytest.mark.parametrize("inner, columns, biased", [(100, 37, True), (1000, 150, False), (515, 333, True),
                                                     (1100, 12, True)])
def test_a_dense_forward_of_few_rows_has_the_product_then_activation_bits_on_any_threads(code, inner, columns,
                                                                                          biased):
    """few_rows_dense (on this thread for weights that are not large, or on one thread,
    else split on every thread, the bias and activation in the same kernel) gives the
    bits of the product followed by bias_activation_forward, whatever the threads."""
    rng = np.random.default_rng(inner + columns + code)
    a = rng.standard_normal((3, inner)).astype(np.float32)
    b = (rng.standard_normal((inner, columns)) / np.sqrt(inner)).astype(np.float32)
    bias = rng.standard_normal(columns if biased else 0).astype(np.float32)
    expected = np.empty((3, columns), np.float32)
    few_rows._serial_dense(a, b, few_rows._NO_BIAS, LINEAR, 0.0, expected)
    activations.bias_activation_forward(expected, bias, code, 0.2, expected)
    before = numba.get_num_threads()
    try:
        for threads in sorted({1, before}):
            numba.set_num_threads(threads)
            out = np.full((3, columns), np.nan, np.float32)
            assert few_rows.few_rows_dense(a, b, bias, code, 0.2, out) is out
            np.testing.assert_array_equal(out, expected)
    finally:
        numba.set_num_threads(before)
    z = a.astype(np.float64) @ b + (bias if biased else 0)
    e = np.exp(z - z.max(1, keepdims=True))
    reference = {LINEAR: z, RELU: np.maximum(z, 0), LEAKY_RELU: np.where(z > 0, z, 0.2 * z),
                 SIGMOID: 1 / (1 + np.exp(-z)), TANH: np.tanh(z), SOFTMAX: e / e.sum(1, keepdims=True)}
    np.testing.assert_allclose(expected, reference[code], rtol=1e-4, atol=1e-5)


def test_dense_takes_it_for_few_float32_rows_only(monkeypatch):
    """A Dense layer's forward of up to FEW_ROWS_MAX float32 rows is one few_rows_dense
    call (training too: the backward reads its output); more rows, float64 (the gradient
    checks), or kept logits (a fused loss) take the product and the activation apart."""
    taken = []
    original = few_rows.dense_call
    monkeypatch.setattr(few_rows, "dense_call", lambda a, *rest: taken.append(a.shape) or original(a, *rest))
    layer = layers.Dense(7, activation="tanh")
    layer.build((20,), np.random.default_rng(0))
    layer.params["bias"][:] = 0.5
    rng = np.random.default_rng(1)
    for rows in (1, 8, 9):
        x = rng.standard_normal((rows, 20)).astype(np.float32)
        np.testing.assert_allclose(layer.forward(x), np.tanh(x @ layer.params["kernel"] + 0.5), rtol=1e-5, atol=1e-6)
    layer.keep_logits = True
    layer.forward(rng.standard_normal((2, 20)).astype(np.float32))
    layer.keep_logits = False
    layer.astype(np.float64)
    layer.forward(rng.standard_normal((2, 20)))
    assert taken == [(1, 20), (8, 20)]
    assert not few_rows.dense_applies(np.ones((2, 20), np.float32), np.ones((20, 7), np.float32),
                                      activations.ELU, np.ones((2, 7), np.float32))  # not one of its codes
    # A recorded inference program makes its call: the serial kernel for few weights, else
    # few_rows_dense (choosing by the threads of each run), or the product's and the pass's.
    x = np.ones((1, 20), np.float32)
    bias, kernel = np.ones(7, np.float32), np.ones((20, 7), np.float32)
    assert [call[0] for call in dense.dense_forward.replayed_as(x, kernel, bias, TANH, 0.0, np.ones((1, 7),
                                                                np.float32))] == [few_rows._serial_dense]
    large = np.ones((20, few_rows.FEW_ROWS_MIN_WEIGHTS // 20 + 1), np.float32)
    assert [call[0] for call in dense.dense_forward.replayed_as(x, large, large[0], TANH, 0.0, large[:1])] == [
        few_rows.few_rows_dense]
    long = np.ones((few_rows.FEW_ROWS_MIN_INNER, 7), np.float32)  # few weights, a long inner axis
    row = np.ones((1, few_rows.FEW_ROWS_MIN_INNER), np.float32)
    assert [call[0] for call in dense.dense_forward.replayed_as(row, long, long[0], TANH, 0.0, row[:, :7])] == [
        few_rows.few_rows_dense]
    x = np.ones((9, 20), np.float32)
    assert [call[0] for call in dense.dense_forward.replayed_as(x, kernel, bias, TANH, 0.0, np.ones((9, 7),
            np.float32))] == [np.matmul, activations._bias_activation_blocks]
    assert len(dense.dense_forward.replayed_as(x, kernel, bias[:0], LINEAR, 0.0, np.ones((9, 7), np.float32))) == 1
