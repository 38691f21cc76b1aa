"""The planar convolution (nbnet/kernels/planar.py) against im2col + matmul and its adjoint
(the matmuls and col2im), and a Conv2D layer on it against the same layer on im2col."""

import numpy as np
import pytest

from nbnet import layers, models, optimizers
from nbnet.kernels import conv, planar


def im2col_reference(x, kernel, padding, dz):
    """(z, dkernel, dx) of a stride-1 conv by im2col, its matmuls and col2im."""
    batch, height, width, channels = x.shape
    kh, kw, _, filters = kernel.shape
    out_h, out_w, top, left = conv.output_geometry(height, width, (kh, kw), (1, 1), padding)
    geometry = (kh, kw, 1, 1, top, left, out_h, out_w)
    cols = np.empty((batch * out_h * out_w, kh * kw * channels), x.dtype)
    conv.im2col(x, *geometry, cols)
    kernel2d = kernel.reshape(-1, filters)
    dz = dz(batch * out_h * out_w, filters)
    dx = np.empty_like(x)
    conv.col2im(dz @ kernel2d.T, *geometry, dx)
    return (cols @ kernel2d, (cols.T @ dz).reshape(kernel.shape), dx), dz, (top, left, out_h, out_w)


@pytest.mark.parametrize("batch, height, width, channels, filters, kernel_size, padding, dtype", [
    (5, 28, 28, 1, 6, (5, 5), "same", np.float32),     # LeNet-5's first layer
    (3, 14, 14, 6, 16, (5, 5), "valid", np.float32),   # its second
    (2, 13, 11, 3, 7, (7, 7), "same", np.float32),     # odd sides, filters not a multiple of 4
    (17, 9, 12, 5, 4, (3, 3), "same", np.float32),     # more images than chunks
    (2, 10, 9, 2, 3, (4, 4), "same", np.float32),      # an even kernel: the extra pad at the end
    (1, 8, 12, 3, 5, (3, 5), "valid", np.float32),     # a rectangular kernel, one image
    (2, 7, 9, 4, 6, (5, 3), "same", np.float64),
])
def test_planar_matches_im2col(batch, height, width, channels, filters, kernel_size, padding, dtype):
    rng = np.random.default_rng(channels * filters)
    x = rng.standard_normal((batch, height, width, channels)).astype(dtype)
    kernel = rng.standard_normal(kernel_size + (channels, filters)).astype(dtype)
    (z_expected, dkernel_expected, dx_expected), dz, geometry = im2col_reference(
        x, kernel, padding, lambda *shape: rng.standard_normal(shape).astype(dtype))
    rounding = 1e-5 if dtype == np.float32 else 1e-12

    z = np.full(z_expected.shape, np.nan, dtype)
    planar.planar_conv_forward(x, kernel, *geometry, z)
    np.testing.assert_allclose(z, z_expected, rtol=rounding, atol=rounding * np.abs(z_expected).max())

    dkernel = np.ones_like(kernel)  # added into
    dx = np.full_like(x, np.nan)
    planar.planar_conv_backward(x, kernel, dz, *geometry, dkernel, True, dx)
    np.testing.assert_allclose(dkernel - 1, dkernel_expected, rtol=rounding,
                               atol=rounding * np.abs(dkernel_expected).max())
    np.testing.assert_allclose(dx, dx_expected, rtol=rounding, atol=rounding * np.abs(dx_expected).max())

    # A first layer: no input gradient, and dx is not touched.
    dkernel[:] = 0
    untouched = np.full_like(x, 7)
    planar.planar_conv_backward(x, kernel, dz, *geometry, dkernel, False, untouched)
    np.testing.assert_allclose(dkernel, dkernel_expected, rtol=rounding, atol=rounding * np.abs(dkernel_expected).max())
    assert (untouched == 7).all()


def test_a_pool_trimmed_output_reads_only_the_rows_it_needs():
    """With a 2x2 pool absorbed, an odd output loses its last row and column (see
    Conv2D._geometry): the planes then hold fewer rows than the padded input has."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 11, 11, 2)).astype(np.float32)
    kernel = rng.standard_normal((5, 5, 2, 3)).astype(np.float32)
    (z, dkernel_expected, _), dz, (top, left, out_h, out_w) = im2col_reference(
        x, kernel, "same", lambda *shape: rng.standard_normal(shape).astype(np.float32))
    trimmed = z.reshape(2, out_h, out_w, 3)[:, :10, :10]
    got = np.empty((2 * 100, 3), np.float32)
    planar.planar_conv_forward(x, kernel, top, left, 10, 10, got)
    np.testing.assert_allclose(got.reshape(trimmed.shape), trimmed, rtol=1e-5, atol=1e-5)
    # The kernel gradient of the trimmed output equals im2col's with the dropped pixels' gradient zero.
    dz_trimmed = dz.reshape(2, out_h, out_w, 3).copy()
    dz_trimmed[:, 10:], dz_trimmed[:, :, 10:] = 0, 0
    (_, expected, expected_dx), _, _ = im2col_reference(x, kernel, "same", lambda *shape: dz_trimmed.reshape(shape))
    dkernel, dx = np.zeros_like(kernel), np.empty_like(x)
    planar.planar_conv_backward(x, kernel, np.ascontiguousarray(dz_trimmed[:, :10, :10]).reshape(-1, 3), top, left,
                                10, 10, dkernel, True, dx)
    np.testing.assert_allclose(dkernel, expected, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(dx, expected_dx, rtol=1e-5, atol=1e-5)


def test_applies_to_thin_stride_1_convs_only():
    assert planar.applies((5, 5), (1, 1), 1, 6, 28, False)           # LeNet-5
    assert planar.applies((7, 7), (1, 1), 1, 16, 28, True)
    assert planar.applies((3, 3), (1, 1), 6, 16, 14, False)          # below Winograd's channels
    assert not planar.applies((3, 3), (1, 1), 6, 16, 14, True)       # ... but Winograd fuses the pool
    assert not planar.applies((5, 5), (2, 2), 1, 6, 14, False)       # strided
    assert not planar.applies((5, 5), (1, 1), 16, 64, 14, False)     # wide: im2col + BLAS
    assert not planar.applies((5, 5), (1, 1), 32, 32, 14, False)
    assert not planar.applies((5, 5), (1, 1), 16, 32, 10, False)     # narrow: dropped positions too many
    assert planar.applies((5, 5), (1, 1), 6, 16, 10, False)          # ... unless thin (LeNet-5's second conv)
    assert not planar.applies((3, 3), (1, 1), 1, 32, 26, False)      # the direct kernels' case
    assert planar.applies((3, 3), (1, 1), 16, 16, 14, False)         # a residual block's, ahead of Winograd
    assert not planar.applies((3, 3), (1, 1), 16, 32, 14, False)     # Winograd's


@pytest.mark.parametrize("pool", [False, True])
def test_conv2d_on_the_planar_path_trains_as_on_im2col(monkeypatch, pool):
    """LeNet-5's convs (5x5, 1 and 6 channels, tanh; with a max pool fused, relu) run the
    planar pass; predictions and one SGD step's weights equal im2col's. (In float32 the
    implicit GEMM would take both: kept out here.)"""
    from nbnet.layers import convolutional

    monkeypatch.setattr(convolutional, "implicit_applies", lambda *args: False)

    rng = np.random.default_rng(5)
    x = rng.standard_normal((6, 32, 32, 1)).astype(np.float32)
    y = rng.standard_normal((6, 3)).astype(np.float32)
    activation = "relu" if pool else "tanh"
    results = []
    for applies in (planar.applies, lambda *args: False):
        monkeypatch.setattr(convolutional, "planar_applies", applies)
        model = models.Sequential(
            [layers.Input((32, 32, 1)), layers.Conv2D(6, 5, padding="same", activation=activation),
             layers.MaxPooling2D(2) if pool else layers.AveragePooling2D(2),
             layers.Conv2D(5, 5, activation=activation), layers.Flatten(), layers.Dense(3)], seed=0)
        model.compile(optimizers.SGD(0.1), "mse")
        before = model.predict(x, verbose=0)
        model.train_on_batch(x, y)
        results.append((before, model.get_weights(), [model.layers[i]._planar for i in (0, 2)]))
    (a, weights_a, used), (b, weights_b, unused) = results
    assert used == [True, True] and unused == [False, False]
    assert model.layers[0].pool is (model.layers[1] if pool else None)
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    for u, v in zip(weights_a, weights_b):
        np.testing.assert_allclose(u, v, rtol=1e-4, atol=1e-5)
