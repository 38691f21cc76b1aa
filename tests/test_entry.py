"""Parallel kernels that call their chunk body by address (nbnet/kernels/entry.py)."""

import numpy as np
from numba import njit, prange

from nbnet.kernels import entry, planar


@njit(cache=True)
def _scaled_rows(first, stop, x, factor, out):
    for n in range(first, stop):
        for k in range(x.shape[1]):
            out[n, k] = x[n, k] * factor


@njit(parallel=True, cache=True)
def _in_chunks(rows_body, x, factor, out):
    for chunk in prange(4):
        rows_body(chunk * x.shape[0] // 4, (chunk + 1) * x.shape[0] // 4, x, factor, out)


def test_launch_compiles_the_body_once_per_type_and_retypes_on_a_new_layout():
    x = np.arange(24, dtype=np.float32).reshape(8, 3)
    out = np.zeros((8, 3), np.float32)
    entry.launch(_in_chunks, _scaled_rows, entry.CHUNK_BOUNDS, (x, 2.0, out))
    np.testing.assert_array_equal(out, 2 * x)
    wider = np.zeros((8, 6), np.float32)
    strided = wider[:, ::2]  # same first array, an output of another layout: the entry is retyped
    entry.launch(_in_chunks, _scaled_rows, entry.CHUNK_BOUNDS, (x, 3.0, strided))
    np.testing.assert_array_equal(wider[:, ::2], 3 * x)
    assert not wider[:, 1::2].any()
    entry.launch(_in_chunks, _scaled_rows, entry.CHUNK_BOUNDS, (x.astype(np.float64), 0.5, np.zeros((8, 3))))
    assert len(_scaled_rows.signatures) == 3


def test_planar_conv_takes_inputs_of_any_layout():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 9, 9, 2)).astype(np.float32)
    kernel = rng.standard_normal((5, 5, 2, 4)).astype(np.float32)
    z = np.empty((3 * 9 * 9, 4), np.float32)
    planar.planar_conv_forward(x, kernel, 2, 2, 9, 9, z)
    wide = np.zeros((3, 9, 9, 4), np.float32)
    wide[..., ::2] = x  # the same values, not contiguous
    z_strided = np.empty_like(z)
    planar.planar_conv_forward(wide[..., ::2], kernel, 2, 2, 9, 9, z_strided)
    np.testing.assert_array_equal(z_strided, z)
