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


# The turned block is AVX-512's: ROWS = 8 rows of filters by 16 lanes (on AVX2 the implicit
# GEMM keeps these convs; test_implicit_gemm's other-width test reruns this file at 16).
turned_block = pytest.mark.skipif(planar.LANES != 16, reason="the turned block needs 16-lane vectors (AVX-512)")


@turned_block
@pytest.mark.parametrize("batch, height, width, channels, filters, kernel_size, padding", [
    (5, 28, 28, 1, 6, (5, 5), "same"),     # LeNet-5's first layer
    (3, 14, 14, 6, 8, (5, 5), "valid"),
    (2, 13, 11, 3, 7, (7, 7), "same"),     # odd sides
    (4, 9, 12, 8, 8, (3, 3), "same"),      # a thin 3x3 stack's
    (2, 10, 9, 2, 3, (4, 4), "same"),      # an even kernel: the extra pad at the end
    (1, 8, 12, 3, 5, (3, 5), "valid"),     # a rectangular kernel, one image
    (2, 12, 45, 2, 1, (3, 3), "same"),     # one filter, rows of more than one block
    (2, 11, 37, 8, 8, (3, 3), "same"),     # 8 channels: the planes copied by runs of 16 pixels
    (2, 6, 20, 16, 5, (3, 3), "valid"),    # two groups of 8 channels, a row's runs overlapping
    (2, 9, 21, 4, 8, (3, 3), "same"),      # an output gradient of 8 channels copied by runs
])
def test_the_turned_block_matches_im2col(batch, height, width, channels, filters, kernel_size, padding):
    """planar_block_forward (the implicit GEMM's block, rows turned to filters, its sums
    stored turned: implicit_gemm._store_transposed) with a bias and an activation,
    planar_block_kernel_gradient and planar_block_input_gradient (the same block over the
    output gradient) against im2col."""
    from nbnet.kernels.activations import TANH, bias_activation_forward

    rng = np.random.default_rng(channels * filters + width)
    x = rng.standard_normal((batch, height, width, channels)).astype(np.float32)
    kernel = rng.standard_normal(kernel_size + (channels, filters)).astype(np.float32)
    bias = rng.standard_normal(filters).astype(np.float32)
    (z_expected, dkernel_expected, dx_expected), dz, (top, left, out_h, out_w) = im2col_reference(
        x, kernel, padding, lambda *shape: rng.standard_normal(shape).astype(np.float32))
    expected = np.empty_like(z_expected)
    bias_activation_forward(z_expected, bias, TANH, 0.0, expected)

    z = np.full(z_expected.shape, np.nan, np.float32)
    planar.planar_block_forward(x, kernel, 1, 1, top, left, out_h, out_w, z, bias, TANH)
    np.testing.assert_allclose(z, expected, rtol=1e-5, atol=1e-5)
    dkernel = np.ones_like(kernel)  # added into
    planar.planar_block_kernel_gradient(x, kernel, dz, 1, 1, top, left, out_h, out_w, dkernel)
    np.testing.assert_allclose(dkernel - 1, dkernel_expected, rtol=1e-5, atol=1e-5 * np.abs(dkernel_expected).max())
    if channels <= planar.ROWS:  # (the input's channels are the turned block's rows there)
        dx = np.full_like(x, np.nan)
        planar.planar_block_input_gradient(dz, kernel, top, left, out_h, out_w, dx)
        np.testing.assert_allclose(dx, dx_expected, rtol=1e-5, atol=1e-5 * np.abs(dx_expected).max())


@turned_block
def test_the_turned_block_gives_the_same_bits_at_any_split():
    """One image's positions in parts (a one-image predict on several threads): the same
    bits whatever the parts, the activation run over each part's pixels."""
    from nbnet.kernels.activations import LEAKY_RELU

    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 21, 19, 4)).astype(np.float32)
    kernel = rng.standard_normal((3, 3, 4, 8)).astype(np.float32)
    bias = rng.standard_normal(8).astype(np.float32)
    outputs = []
    for parts in (1, 2, 3, 7, 40):
        z = np.full((1, 21 * 19, 8), np.nan, np.float32)
        planar._block_forward(x, kernel, 1, 1, 21, 19, bias, LEAKY_RELU, 0.3, z, parts)
        outputs.append(z)
    assert not np.isnan(outputs[0]).any()
    for split in outputs[1:]:
        np.testing.assert_array_equal(split, outputs[0])


@turned_block
def test_a_conv_of_few_filters_takes_the_turned_block_and_trains_as_on_the_implicit_gemm(monkeypatch):
    """Conv2D layers of at most 8 filters run their forward and kernel gradient on the
    turned block, and of 8 channels in their input gradient; predictions and one SGD
    step's weights equal the implicit GEMM's."""
    from nbnet.layers import convolutional

    rng = np.random.default_rng(6)
    x = rng.standard_normal((6, 16, 16, 1)).astype(np.float32)
    y = rng.standard_normal((6, 3)).astype(np.float32)
    results = []
    for applies in (planar.blocks_apply, lambda *args: False):
        monkeypatch.setattr(convolutional, "planar_blocks_apply", applies)
        model = models.Sequential(
            [layers.Input((16, 16, 1)), layers.Conv2D(8, 3, padding="same", activation="relu"),
             layers.Conv2D(8, 3, padding="same", activation="tanh"), layers.Conv2D(6, 3, padding="same"),
             layers.Conv2D(4, 5, activation="relu"), layers.Flatten(), layers.Dense(3)], seed=0)
        model.compile(optimizers.SGD(0.1), "mse")
        before = model.predict(x, verbose=0)
        model.train_on_batch(x, y)
        results.append((before, model.get_weights(),
                        [(layer._blocks_forward, layer._blocks_input_gradient, layer._blocks_kernel_gradient)
                         for layer in model.layers[:4]]))
    (a, weights_a, used), (b, weights_b, unused) = results
    # The first conv's kernel gradient (a window row of 3 values) and the last conv's input
    # gradient (6 channels, a 'valid' 5x5: the implicit GEMM's columns, which make its
    # kernel gradient in the same pass) stay the implicit GEMM's.
    assert used == [(True, False, False), (True, True, True), (True, True, True), (True, False, True)]
    assert unused == [(False, False, False)] + [(False, False, True)] * 3  # (the input gradient's then: no use)
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    for u, v in zip(weights_a, weights_b):
        np.testing.assert_allclose(u, v, rtol=1e-4, atol=1e-5)


def test_the_turned_block_applies_to_few_filters_at_stride_1():
    float32 = np.float32
    assert planar.blocks_apply((3, 3), (1, 1), 8, 28, float32) == (planar.LANES == 16)
    assert planar.blocks_apply((5, 5), (1, 1), 6, 28, float32) == (planar.LANES == 16)
    assert not planar.blocks_apply((3, 3), (1, 1), 9, 28, float32)   # the implicit GEMM's: more than 8 rows
    assert not planar.blocks_apply((3, 3), (2, 2), 8, 28, float32)   # strided
    assert not planar.blocks_apply((3, 3), (1, 1), 8, 28, np.float64)
    assert not planar.blocks_apply((5, 5), (1, 1), 8, 10, float32)   # dropped positions too many


@pytest.mark.parametrize("height, width, channels, top, left, rows, wide", [
    (28, 28, 8, 1, 1, 30, 30),   # 'same' 3x3
    (13, 37, 16, 2, 0, 17, 39),  # two groups of channels
    (20, 20, 8, -1, -2, 18, 17),  # the image cut off on every side
    (6, 9, 8, 1, 1, 8, 11),  # rows shorter than a run: the loop
    (4, 17, 24, 0, -3, 4, 12),  # three groups, 12 pixels kept
])
def test_the_planes_copied_by_runs_of_16_pixels_are_the_loops(height, width, channels, top, left, rows, wide):
    """_to_planes_fast (16 x 8 transposes in registers, _pixels_to_planes) writes the
    values _to_planes' loop writes, and nothing else."""
    from numba import njit

    @njit
    def both(x, top, left, rows, wide):
        slow = np.full(x.shape[3] * rows * wide + 64, -7.0, np.float32)
        fast = slow.copy()
        planar._to_planes(x, 1, top, left, rows, wide, slow)
        planar._to_planes_fast(x, 1, top, left, rows, wide, fast)
        return slow, fast

    x = np.random.default_rng(channels).standard_normal((2, height, width, channels)).astype(np.float32)
    slow, fast = both(x, top, left, rows, wide)
    np.testing.assert_array_equal(fast, slow)


@turned_block
@pytest.mark.parametrize("stride, padding", [(1, "same"), (2, "same"), (2, "valid")])
def test_the_turned_blocks_kernel_gradient_has_the_implicit_gemms_bits(stride, padding):
    """The same products summed in the same order (each image's pixels in turn, the images
    of a chunk after one another): the implicit GEMM's kernel gradient, bit for bit, at any
    stride."""
    from nbnet.kernels import implicit_gemm

    rng = np.random.default_rng(stride)
    x = rng.standard_normal((19, 15, 17, 8)).astype(np.float32)
    kernel = rng.standard_normal((3, 3, 8, 7)).astype(np.float32)
    out_h, out_w, top, left = conv.output_geometry(15, 17, (3, 3), (stride, stride), padding)
    dz = rng.standard_normal((19 * out_h * out_w, 7)).astype(np.float32)
    expected, got = np.full_like(kernel, 0.5), np.full_like(kernel, 0.5)
    implicit_gemm.implicit_conv_backward(x, kernel, dz, stride, stride, top, left, out_h, out_w, expected, False, x[:0])
    planar.planar_block_kernel_gradient(x, kernel, dz, stride, stride, top, left, out_h, out_w, got)
    np.testing.assert_array_equal(got, expected)
