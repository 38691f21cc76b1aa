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


def test_launch_alone_calls_the_body_directly_with_the_same_result():
    x = np.arange(6, dtype=np.float32).reshape(1, 6)
    out = np.zeros((1, 6), np.float32)
    entry.launch(_in_chunks, _scaled_rows, entry.CHUNK_BOUNDS, (x, 2.0, out), alone=(0, 1))
    np.testing.assert_array_equal(out, 2 * x)


def test_one_image_convs_equal_that_image_in_a_batch():
    """A one-image batch runs the direct and planar bodies without the parallel loop
    (entry.launch's ``alone``): the same bits as the image's rows in a larger batch."""
    from nbnet.kernels import conv

    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 9, 9, 2)).astype(np.float32)
    kernel = rng.standard_normal((5, 5, 2, 4)).astype(np.float32)
    batch_z, one_z = np.empty((3 * 81, 4), np.float32), np.empty((81, 4), np.float32)
    planar.planar_conv_forward(x, kernel, 2, 2, 9, 9, batch_z)
    planar.planar_conv_forward(x[1:2], kernel, 2, 2, 9, 9, one_z)
    np.testing.assert_array_equal(one_z, batch_z[81:162])
    kernel2d = kernel[:3, :3].reshape(-1, 4)
    batch_z, one_z = np.empty((3 * 49, 4), np.float32), np.empty((49, 4), np.float32)
    conv.direct_conv_forward(x, kernel2d, 3, 3, 1, 1, 0, 0, 7, 7, batch_z)
    conv.direct_conv_forward(x[1:2], kernel2d, 3, 3, 1, 1, 0, 0, 7, 7, one_z)
    np.testing.assert_array_equal(one_z, batch_z[49:98])


def test_one_image_conv_gradients_equal_that_image_alone_in_a_batch():
    """The backward bodies called directly for one image (one chunk) give the kernel and
    input gradients of a batch whose other images have zero output gradients."""
    from nbnet.kernels import conv

    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 9, 9, 2)).astype(np.float32)
    kernel = rng.standard_normal((5, 5, 2, 4)).astype(np.float32)
    dz = np.zeros((3, 9, 9, 4), np.float32)
    dz[1] = rng.standard_normal((9, 9, 4))
    batch_dk, one_dk = np.zeros_like(kernel), np.zeros_like(kernel)
    batch_dx, one_dx = np.empty_like(x), np.empty_like(x[1:2])
    planar.planar_conv_backward(x, kernel, dz.reshape(-1, 4), 2, 2, 9, 9, batch_dk, True, batch_dx)
    planar.planar_conv_backward(x[1:2], kernel, dz[1:2].reshape(-1, 4), 2, 2, 9, 9, one_dk, True, one_dx)
    np.testing.assert_array_equal(one_dk, batch_dk)
    np.testing.assert_array_equal(one_dx[0], batch_dx[1])
    kernel2d = kernel[:3, :3].reshape(-1, 4)
    dz = np.ascontiguousarray(dz[:, :7, :7])
    batch_dk, one_dk = np.zeros_like(kernel2d), np.zeros_like(kernel2d)
    conv.direct_conv_backward(x, kernel2d, dz.reshape(-1, 4), 3, 3, 1, 1, 0, 0, 7, 7, batch_dk, True, batch_dx)
    conv.direct_conv_backward(x[1:2], kernel2d, dz[1:2].reshape(-1, 4), 3, 3, 1, 1, 0, 0, 7, 7, one_dk, True, one_dx)
    np.testing.assert_array_equal(one_dk, batch_dk)
    np.testing.assert_array_equal(one_dx[0], batch_dx[1])
