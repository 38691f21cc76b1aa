"""The turned block (nbnet/kernels/planar_blocks.py) against im2col, the planar loops and
the implicit GEMM, and Conv2D layers of few filters on it against the implicit GEMM."""

import numpy as np
import pytest

from nbnet import layers, models, optimizers
from nbnet.kernels import conv, planar, planar_blocks

try:
    from .test_planar import im2col_reference
except ImportError:  # tests/ is not a package: pytest puts its folder on the path
    from test_planar import im2col_reference


# The turned block is AVX-512's: ROWS = 8 rows of filters by 16 lanes (on AVX2 the implicit
# GEMM keeps these convs; test_implicit_gemm's other-width test reruns this file at 16).
turned_block = pytest.mark.skipif(planar_blocks.LANES != 16, reason="the turned block needs 16-lane vectors (AVX-512)")


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
    planar_blocks.planar_block_forward(x, kernel, 1, 1, top, left, out_h, out_w, z, bias, TANH)
    np.testing.assert_allclose(z, expected, rtol=1e-5, atol=1e-5)
    dkernel = np.ones_like(kernel)  # added into
    planar_blocks.planar_block_kernel_gradient(x, kernel, dz, 1, 1, top, left, out_h, out_w, dkernel)
    np.testing.assert_allclose(dkernel - 1, dkernel_expected, rtol=1e-5, atol=1e-5 * np.abs(dkernel_expected).max())
    if channels <= planar_blocks.ROWS:  # (the input's channels are the turned block's rows there)
        dx = np.full_like(x, np.nan)
        planar_blocks.planar_block_input_gradient(dz, kernel, top, left, out_h, out_w, dx)
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
        planar_blocks._block_forward(x, kernel, 1, 1, 21, 19, bias, LEAKY_RELU, 0.3, z, parts)
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
    for applies in (planar_blocks.blocks_apply, lambda *args: False):
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
    assert planar_blocks.blocks_apply((3, 3), (1, 1), 8, 28, float32) == (planar_blocks.LANES == 16)
    assert planar_blocks.blocks_apply((5, 5), (1, 1), 6, 28, float32) == (planar_blocks.LANES == 16)
    assert not planar_blocks.blocks_apply((3, 3), (1, 1), 9, 28, float32)   # the implicit GEMM's: more than 8 rows
    assert not planar_blocks.blocks_apply((3, 3), (2, 2), 8, 28, float32)   # strided
    assert not planar_blocks.blocks_apply((3, 3), (1, 1), 8, 28, np.float64)
    assert not planar_blocks.blocks_apply((5, 5), (1, 1), 8, 10, float32)   # dropped positions too many


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
        planar_blocks._to_planes_fast(x, 1, top, left, rows, wide, fast)
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
    planar_blocks.planar_block_kernel_gradient(x, kernel, dz, stride, stride, top, left, out_h, out_w, got)
    np.testing.assert_array_equal(got, expected)
