"""The implicit-GEMM convolution (nbnet/kernels/implicit_gemm.py) against a float64 NumPy
convolution and its adjoint, and a Conv2D layer on it against the same layer on the
planar pass."""

import os
import pathlib
import subprocess
import sys

import numba
import numpy as np
import pytest

from nbnet import layers, models, optimizers
from nbnet.kernels import conv, implicit_gemm, lane_maps, planar_blocks


def _random(rng):
    return lambda *shape: rng.standard_normal(shape).astype(np.float32)


def conv_reference(x, kernel, padding, dz, strides=(1, 1)):
    """(z, dkernel, dx) of a conv in float64 NumPy, tap by tap on a zero-padded copy;
    dz(pixels, filters) makes the output gradient. Returns them with the geometry
    (sh, sw, top, left, out_h, out_w)."""
    batch, height, width, channels = x.shape
    kh, kw, _, filters = kernel.shape
    sh, sw = strides
    out_h, out_w, top, left = conv.output_geometry(height, width, (kh, kw), strides, padding)
    padded = np.zeros((batch, (out_h - 1) * sh + kh, (out_w - 1) * sw + kw, channels))
    rows, cols = min(height, padded.shape[1] - top), min(width, padded.shape[2] - left)
    padded[:, top:top + rows, left:left + cols] = x[:, :rows, :cols]
    grads = dz(batch * out_h * out_w, filters)
    g = grads.reshape(batch, out_h, out_w, filters).astype(np.float64)
    z = np.zeros((batch, out_h, out_w, filters))
    dkernel = np.zeros(kernel.shape)
    dpadded = np.zeros_like(padded)
    for p in range(kh):
        for q in range(kw):
            window = padded[:, p:p + (out_h - 1) * sh + 1:sh, q:q + (out_w - 1) * sw + 1:sw]
            z += window @ kernel[p, q]
            dkernel[p, q] = np.einsum("nijc,nijf->cf", window, g)
            dpadded[:, p:p + (out_h - 1) * sh + 1:sh, q:q + (out_w - 1) * sw + 1:sw] += g @ kernel[p, q].T
    dx = np.zeros(x.shape)
    dx[:, :rows, :cols] = dpadded[:, top:top + rows, left:left + cols]
    return (z.reshape(-1, filters), dkernel, dx), grads, (sh, sw, top, left, out_h, out_w)


@pytest.mark.parametrize("batch, height, width, channels, filters, kernel_size, padding, strides", [
    (3, 14, 14, 16, 16, (3, 3), "same", (1, 1)),     # a small ResNet's block
    (2, 9, 7, 16, 32, (3, 3), "valid", (1, 1)),      # two vectors of filters; 35 pixels: a part block
    (2, 8, 8, 32, 16, (5, 5), "same", (1, 1)),
    (19, 5, 6, 16, 16, (3, 3), "same", (1, 1)),      # more images than chunks
    (2, 6, 5, 16, 16, (1, 1), "valid", (1, 1)),
    (1, 7, 9, 16, 16, (4, 2), "same", (1, 1)),       # an even, rectangular kernel: the extra pad at the end
    (2, 14, 14, 16, 32, (3, 3), "same", (2, 2)),     # strided: four phases of the input gradient
    (2, 11, 10, 16, 16, (3, 3), "valid", (2, 2)),    # odd sides: the last row of the input unread
    (2, 9, 13, 16, 16, (5, 4), "same", (3, 2)),
    (2, 8, 8, 16, 16, (1, 1), "valid", (2, 2)),      # a kernel smaller than its stride: pixels with no tap
    (2, 12, 12, 16, 16, (2, 2), "valid", (2, 2)),    # windows that tile the image
    (3, 12, 12, 1, 6, (5, 5), "same", (1, 1)),       # LeNet-5's first layer: 6 lanes, masked
    (2, 8, 8, 6, 16, (5, 5), "valid", (1, 1)),       # its second: the input gradient on 6 lanes
    (2, 7, 9, 8, 12, (3, 4), "same", (1, 1)),        # 8 lanes, an even rectangular kernel, odd sides
    (2, 6, 5, 2, 16, (1, 3), "valid", (1, 1)),       # one kernel row
    (2, 9, 9, 3, 20, (3, 3), "same", (2, 2)),        # a whole vector and 4 lanes; strided
    (2, 7, 7, 24, 40, (3, 3), "same", (1, 1)),       # 24 channels: a vector and 8 lanes of dx
    (2, 8, 8, 3, 16, (1, 1), "valid", (2, 2)),       # few channels, pixels with no tap
    (2, 11, 10, 4, 8, (3, 3), "valid", (2, 2)),      # few channels, the last row of the input unread
    (2, 12, 12, 20, 50, (5, 5), "valid", (1, 1)),    # Caffe LeNet's second layer: columns by the work ratio
])
@pytest.mark.parametrize("dx_route", ["columns", "phases"])
def test_implicit_gemm_matches_numpy(batch, height, width, channels, filters, kernel_size, padding, strides,
                                     dx_route, monkeypatch):
    """The input gradient both ways: as columns added back (below COLUMNS_BELOW_CHANNELS
    channels, or from COLUMNS_FROM_WORK_RATIO) and as the phase correlations."""
    monkeypatch.setattr(implicit_gemm, "COLUMNS_BELOW_CHANNELS", 1 << 20 if dx_route == "columns" else 0)
    monkeypatch.setattr(implicit_gemm, "COLUMNS_FROM_WORK_RATIO", 0.0 if dx_route == "columns" else float("inf"))
    rng = np.random.default_rng(channels + filters + kernel_size[0])
    x = rng.standard_normal((batch, height, width, channels)).astype(np.float32)
    kernel = rng.standard_normal(kernel_size + (channels, filters)).astype(np.float32)
    (z_expected, dkernel_expected, dx_expected), dz, geometry = conv_reference(
        x.astype(np.float64), kernel.astype(np.float64), padding, _random(rng), strides)
    dz = dz.astype(np.float32)

    def close(got, expected):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())

    z = np.full(z_expected.shape, np.nan, np.float32)
    implicit_gemm.implicit_conv_forward(x, kernel, *geometry, z)
    close(z, z_expected)

    dkernel = np.ones_like(kernel)  # added into
    dx = np.full_like(x, np.nan)
    implicit_gemm.implicit_conv_backward(x, kernel, dz, *geometry, dkernel, True, dx)
    close(dkernel - 1, dkernel_expected)
    close(dx, dx_expected)

    # A first layer: no input gradient, and dx is not touched.
    dkernel[:] = 0
    untouched = np.full_like(x, 7)
    implicit_gemm.implicit_conv_backward(x, kernel, dz, *geometry, dkernel, False, untouched)
    close(dkernel, dkernel_expected)
    assert (untouched == 7).all()


def test_a_pool_trimmed_output_reads_only_the_rows_it_needs():
    """With a 2x2 pool absorbed, an odd output loses its last row and column (see
    Conv2D._geometry): the padded buffer then holds fewer rows than the padded input."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 11, 11, 16)).astype(np.float32)
    kernel = rng.standard_normal((3, 3, 16, 16)).astype(np.float32)
    (z, _, _), dz, (_, _, top, left, out_h, out_w) = conv_reference(x, kernel.astype(np.float64), "same", _random(rng))
    got = np.empty((2 * 100, 16), np.float32)
    implicit_gemm.implicit_conv_forward(x, kernel, 1, 1, top, left, 10, 10, got)
    np.testing.assert_allclose(got.reshape(2, 10, 10, 16), z.reshape(2, out_h, out_w, 16)[:, :10, :10],
                               rtol=1e-5, atol=1e-4)
    dz_trimmed = dz.reshape(2, out_h, out_w, 16).copy()
    dz_trimmed[:, 10:], dz_trimmed[:, :, 10:] = 0, 0
    (_, expected, expected_dx), _, _ = conv_reference(x, kernel.astype(np.float64), "same",
                                                        lambda *shape: dz_trimmed.reshape(shape))
    dkernel, dx = np.zeros_like(kernel), np.empty_like(x)
    implicit_gemm.implicit_conv_backward(x, kernel, np.ascontiguousarray(dz_trimmed[:, :10, :10]).reshape(-1, 16),
                                         1, 1, top, left, 10, 10, dkernel, True, dx)
    np.testing.assert_allclose(dkernel, expected, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(dx, expected_dx, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("channels", [16, 6])  # the input gradient by phases, by columns
def test_the_same_bits_whatever_the_thread_count(channels):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((20, 8, 8, channels)).astype(np.float32)
    kernel = rng.standard_normal((3, 3, channels, 16)).astype(np.float32)
    dz = rng.standard_normal((20 * 64, 16)).astype(np.float32)
    results = []
    before = numba.get_num_threads()
    try:
        for threads in (1, before):
            numba.set_num_threads(threads)
            z, dkernel, dx = np.empty((20 * 64, 16), np.float32), np.zeros_like(kernel), np.empty_like(x)
            implicit_gemm.implicit_conv_forward(x, kernel, 1, 1, 1, 1, 8, 8, z)
            implicit_gemm.implicit_conv_backward(x, kernel, dz, 1, 1, 1, 1, 8, 8, dkernel, True, dx)
            results.append((z, dkernel, dx))
    finally:
        numba.set_num_threads(before)
    for one, many in zip(*results):
        np.testing.assert_array_equal(one, many)


@pytest.mark.parametrize("filters", [16, 20, 5])
def test_bias_and_relu_in_the_stores_equal_their_own_pass(filters):
    """The forward pass with its bias and rectifier fused gives bias_activation_forward's
    bits, lanes past a whole vector and NaN sums (relu passes 0) included."""
    from nbnet.kernels.activations import LINEAR, RELU, bias_activation_forward

    rng = np.random.default_rng(filters)
    x = rng.standard_normal((3, 6, 7, 4)).astype(np.float32)
    x[1, 2, 3, 0] = np.nan
    kernel = rng.standard_normal((3, 3, 4, filters)).astype(np.float32)
    bias = rng.standard_normal(filters).astype(np.float32)
    plain = np.empty((3 * 6 * 7, filters), np.float32)
    implicit_gemm.implicit_conv_forward(x, kernel, 1, 1, 1, 1, 6, 7, plain)
    assert np.isnan(plain).any()
    for code, use_bias in ((RELU, True), (RELU, False), (LINEAR, True)):
        expected = np.empty_like(plain)
        bias_activation_forward(plain, bias if use_bias else bias[:0], code, 0.0, expected)
        fused = np.full_like(plain, 7.0)
        implicit_gemm.implicit_conv_forward(x, kernel, 1, 1, 1, 1, 6, 7, fused, bias if use_bias else None, code)
        np.testing.assert_array_equal(fused, expected)
        assert np.isnan(fused).any() == (code == LINEAR)


def test_applies_to_float32_only():
    assert implicit_gemm.applies(np.float32)
    assert not implicit_gemm.applies(np.float64)   # the reference path keeps the other passes


def _both_ways(monkeypatch, layer_list, x, y, learning_rate):
    """The model of ``layer_list()`` with the implicit GEMM and with it kept out: per
    way its predictions before and after one SGD step, its weights after, the model."""
    from nbnet.layers import convolutional

    results = []
    for applies in (implicit_gemm.applies, lambda *args: False):
        monkeypatch.setattr(convolutional, "implicit_applies", applies)
        model = models.Sequential(layer_list(), seed=0)
        model.compile(optimizers.SGD(learning_rate), "mse")
        before = model.predict(x, verbose=0)
        model.train_on_batch(x, y)
        results.append((before, model.predict(x, verbose=0), model.get_weights(), model))
    (before_on, after_on, weights_on, on), (before_off, after_off, weights_off, off) = results
    for u, v in [(before_on, before_off), (after_on, after_off), *zip(weights_on, weights_off)]:
        np.testing.assert_allclose(u, v, rtol=1e-4, atol=1e-5)
    return on, off


@pytest.mark.parametrize("pool", [False, True])
def test_conv2d_on_the_implicit_gemm_trains_as_on_the_planar_pass(monkeypatch, pool):
    """A residual-style 16 -> 16 3x3 conv pair runs the implicit GEMM (where the planar
    pass, or Winograd with its fused max pool, ran before); predictions and one SGD
    step's weights equal theirs."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((6, 12, 12, 16)).astype(np.float32)
    y = rng.standard_normal((6, 3)).astype(np.float32)
    on, off = _both_ways(monkeypatch, lambda: [
        layers.Input((12, 12, 16)), layers.Conv2D(16, 3, padding="same", activation="relu"),
        layers.MaxPooling2D(2) if pool else layers.AveragePooling2D(2),
        layers.Conv2D(16, 3, padding="same", activation="tanh"), layers.Flatten(), layers.Dense(3)], x, y, 0.1)
    assert [(on.layers[i]._implicit, on.layers[i]._planar) for i in (0, 2)] == [(True, False), (True, False)]
    # Without the implicit GEMM both are the planar pass's (in float32 a 12x12 output
    # with its max pool would run Winograd F(4x4, 3x3) and the pool apart, see
    # winograd.pool_apart, but the planar pass comes first).
    assert [(off.layers[i]._implicit, off.layers[i]._planar) for i in (0, 2)] == [(False, True), (False, True)]


def test_thin_layers_run_it_and_train_as_on_their_own_passes(monkeypatch):
    """A first conv of 3 channels (the direct kernels' before), one of 32 -> 8 channels
    (Winograd's: it keeps its layers from 32 channels) and one of 8 -> 16 (the planar
    pass's) train as with neither on the implicit GEMM. (Five images: Winograd kept for them.)"""
    from nbnet.layers import convolutional

    monkeypatch.setattr(convolutional, "WINOGRAD_MIN_IMAGES", 1)
    rng = np.random.default_rng(6)
    x = rng.standard_normal((5, 10, 10, 3)).astype(np.float32)
    y = rng.standard_normal((5, 2)).astype(np.float32)
    on, off = _both_ways(monkeypatch, lambda: [
        layers.Input((10, 10, 3)), layers.Conv2D(32, 3, padding="same", activation="relu"),
        layers.Conv2D(8, 3, activation="relu"), layers.Conv2D(16, 3), layers.GlobalAveragePooling2D(),
        layers.Dense(2)], x, y, 0.05)
    assert [on.layers[i]._implicit for i in range(3)] == [True, False, True]
    assert [off.layers[i]._implicit for i in range(3)] == [False, False, False]


@pytest.mark.parametrize("activation", ["tanh", "sigmoid", "leaky_relu", "elu"])
def test_convs_add_the_bias_in_their_stores_for_any_activation(activation, monkeypatch):
    """Besides relu, a float32 conv on the implicit GEMM or Winograd adds its bias as it
    stores; the implicit GEMM runs leaky relu, sigmoid and tanh over each part of an image
    as it makes it, the others (Winograd's, ELU) run in place over the output in a pass
    given no bias: the bits of the conv, then bias_activation_forward with the bias."""
    from nbnet.devices import cpu
    from nbnet.kernels.activations import bias_activation_forward
    from nbnet.kernels.winograd import plain_positions

    passes = []
    monkeypatch.setattr(cpu, "bias_activation_forward", lambda z, bias, code, alpha, y: (
        passes.append((bias.size, z is y)), bias_activation_forward(z, bias, code, alpha, y)))
    rng = np.random.default_rng(11)
    for images, size, channels in ((3, 5, 4), (16, 3, 32)):  # the implicit GEMM; Winograd F(4x4)
        conv = layers.Conv2D(8, size, padding="same", activation=activation)
        conv.build((12, 12, channels), rng)
        conv.params["bias"][:] = rng.standard_normal(8)
        x = rng.standard_normal((images, 12, 12, channels)).astype(np.float32)
        x[0, 3, 4, 0] = np.nan
        passes.clear()
        got = conv.forward(x).reshape(-1, 8).copy()
        assert conv._implicit == (images == 3) and conv._winograd == (images == 16)
        in_stores = conv._implicit and activation != "elu"
        assert passes == ([] if in_stores else [(0, True)])  # else one pass, in place, without the bias
        z = np.empty_like(got)
        if conv._implicit:
            # 8 filters: the implicit GEMM's turned block (kernels/planar_blocks.py) makes them.
            assert conv._blocks_forward == (planar_blocks.LANES == 16)
            forward = planar_blocks.planar_block_forward if conv._blocks_forward else implicit_gemm.implicit_conv_forward
            forward(x, conv.params["kernel"], 1, 1, size // 2, size // 2, 12, 12, z)
        else:
            from nbnet.kernels.winograd import conv3x3_forward

            conv3x3_forward(x, conv.params["kernel"], 1, 1, np.empty((plain_positions(np.float32, 12, 12), channels, 8),
                                                                     np.float32), z.reshape(images, 12, 12, 8))
        expected = np.empty_like(z)
        bias_activation_forward(z, conv.params["bias"], conv._code, conv._slope, expected)
        assert np.isnan(expected).any()
        np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("code", ["tanh", "leaky_relu"])
def test_an_activation_over_each_part_of_an_image_gives_the_same_bits_at_any_split(code):
    """The implicit GEMM's activations run over each part of an image it makes (one image
    split across the threads): the same bits as one pass over the whole output."""
    from nbnet.kernels.activations import LEAKY_RELU, TANH, bias_activation_forward

    code = {"tanh": TANH, "leaky_relu": LEAKY_RELU}[code]
    rng = np.random.default_rng(12)
    x = rng.standard_normal((2, 13, 11, 32)).astype(np.float32)
    kernel2d = rng.standard_normal((3 * 3 * 32, 40)).astype(np.float32) * 0.1
    bias = rng.standard_normal(40).astype(np.float32)
    plain = np.empty((2, 11 * 9, 40), np.float32)
    implicit_gemm._forward(x, kernel2d, 3, 3, 1, 1, 0, 0, 11, 9, bias, 0, 0.0, plain, 1)
    expected = np.empty_like(plain)
    bias_activation_forward(plain.reshape(-1, 40), bias[:0], code, 0.3, expected.reshape(-1, 40))
    for parts in (1, 2, 3, 7):
        z = np.full_like(plain, np.nan)
        implicit_gemm._forward(x, kernel2d, 3, 3, 1, 1, 0, 0, 11, 9, bias, code, 0.3, z, parts)
        np.testing.assert_array_equal(z, expected)


@pytest.mark.parametrize("stride, pad_top, pad_left, out_h, out_w", [
    (1, 0, 0, 11, 9),  # 'valid'
    (1, 1, 1, 13, 11),  # 'same': a zero border all round
    (2, 0, 1, 7, 6),  # Keras's 'same' at stride 2: padding below and right only where needed
])
def test_an_images_pixels_split_across_threads_give_the_same_bits(stride, pad_top, pad_left, out_h, out_w):
    """Fewer images than threads: each image's pixels in parts (a one-image predict), each
    part copying only the rows its windows read into a buffer zeroed at its border only:
    the same bits at any split, and the convolution's values."""
    from nbnet.kernels.activations import RELU

    rng = np.random.default_rng(8)
    x = rng.standard_normal((2, 13, 11, 32)).astype(np.float32)
    kernel2d = rng.standard_normal((3 * 3 * 32, 40)).astype(np.float32)
    bias = rng.standard_normal(40).astype(np.float32)
    outputs = []
    for parts in (1, 2, 3, 7):
        z = np.full((2, out_h * out_w, 40), np.nan, np.float32)
        implicit_gemm._forward(x, kernel2d, 3, 3, stride, stride, pad_top, pad_left, out_h, out_w, bias, RELU, 0.0,
                               z, parts)
        outputs.append(z)
    for split in outputs[1:]:
        np.testing.assert_array_equal(split, outputs[0])
    padded = np.zeros((2, (out_h - 1) * stride + 3, (out_w - 1) * stride + 3, 32), np.float64)
    rows, cols = min(13, padded.shape[1] - pad_top), min(11, padded.shape[2] - pad_left)
    padded[:, pad_top:pad_top + rows, pad_left:pad_left + cols] = x[:, :rows, :cols]
    windows = np.stack([padded[:, p:p + (out_h - 1) * stride + 1:stride, q:q + (out_w - 1) * stride + 1:stride]
                        for p in range(3) for q in range(3)], axis=3)
    expected = np.maximum(windows.reshape(2, out_h * out_w, -1) @ kernel2d + bias, 0)
    np.testing.assert_allclose(outputs[0], expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("batch, size, channels, filters, kernel_size, strides, padding, pool", [
    (5, 28, 1, 32, 3, 1, "valid", 2), (3, 28, 1, 16, 3, 1, "same", 2), (1, 12, 1, 6, 3, 1, "valid", 2),
    (4, 13, 2, 20, 2, 1, "same", 3), (2, 15, 1, 40, 4, 2, "valid", 2), (3, 11, 16, 8, 1, 1, "valid", 2),
    (19, 10, 1, 8, 3, 1, "valid", 2)])  # more images than the backward's chunks
def test_a_conv_with_its_max_pool_has_the_direct_kernels_outputs(batch, size, channels, filters, kernel_size,
                                                                  strides, padding, pool):
    """implicit_conv_maxpool_forward gives direct_conv_maxpool_forward's outputs and argmax:
    bit for bit up to 9 values a window (each sum the same taps in the same order; the
    direct kernels sum larger fields in groups of 9, added after); one image (called
    without the parallel loop) and several, filters under, at and past a vector's LANES,
    windows of 2 and 3, strides, 'same' padding, fields of 1 to 16 values."""
    from nbnet.kernels.activations import RELU

    rng = np.random.default_rng(batch * size + filters)
    x = rng.standard_normal((batch, size, size, channels)).astype(np.float32)
    kernel = rng.standard_normal((kernel_size, kernel_size, channels, filters)).astype(np.float32)
    bias = rng.standard_normal(filters).astype(np.float32)
    out_h, out_w, top, left = conv.output_geometry(size, size, (kernel_size,) * 2, (strides,) * 2, padding)
    out_h, out_w = out_h // pool * pool, out_w // pool * pool
    results = []
    for forward in ("direct", "implicit"):
        y = np.full((batch, out_h // pool, out_w // pool, filters), np.nan, np.float32)
        argmax = np.full(y.shape, -1, np.int32)
        if forward == "direct":
            conv.direct_conv_maxpool_forward(x, kernel.reshape(-1, filters), bias, RELU, kernel_size, kernel_size,
                                             strides, strides, top, left, out_h, out_w, pool, pool, y, argmax)
        else:
            implicit_gemm.implicit_conv_maxpool_forward(x, kernel, bias, RELU, strides, strides, top, left, out_h,
                                                        out_w, pool, pool, y, argmax)
        results.append((y, argmax))
    if kernel_size * kernel_size * channels <= 9:
        np.testing.assert_array_equal(results[1][0], results[0][0])
    else:
        np.testing.assert_allclose(results[1][0], results[0][0], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(results[1][1], results[0][1])
    assert np.isfinite(results[1][0]).all() and (results[1][0] >= 0).all() and results[1][0].max() > 0
    # The backward (a first layer's: no input gradient) from the same pooled gradient: the
    # bias gradient bit for bit (the same unpooling, image after image), the kernel's to
    # float rounding (summed in another order).
    y, argmax = results[0]
    dy = rng.standard_normal(y.shape).astype(np.float32)
    grads = []
    for backward in ("direct", "implicit"):
        dkernel, dbias = np.full(kernel.shape, 0.5, np.float32), np.full(filters, 0.25, np.float32)
        if backward == "direct":
            conv.direct_conv_maxpool_backward(x, kernel.reshape(-1, filters), dy, argmax, y, RELU, kernel_size,
                                              kernel_size, strides, strides, top, left, out_h, out_w, pool, pool,
                                              dkernel.reshape(-1, filters), dbias, False, x[:0])
        else:
            implicit_gemm.implicit_conv_maxpool_backward(x, kernel, dy, argmax, y, RELU, strides, strides, top, left,
                                                         out_h, out_w, pool, pool, dkernel, dbias)
        grads.append((dkernel, dbias))
    np.testing.assert_array_equal(grads[1][1], grads[0][1])
    np.testing.assert_allclose(grads[1][0], grads[0][0], rtol=1e-5, atol=1e-5 * np.abs(grads[0][0]).max())
    assert np.abs(grads[1][0] - 0.5).max() > 0.1


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_a_float32_conv_with_a_fused_max_pool_runs_it(monkeypatch, activation):
    """A Conv2D whose max pool the direct kernels fused runs implicit_conv_maxpool_forward
    in float32 and, as a first layer, implicit_conv_maxpool_backward, and trains as on
    them: a relu in the pool's pass, a tanh on the pooled values after it."""
    from nbnet.devices import cpu

    taken = []
    for name in ("implicit_conv_maxpool_forward", "implicit_conv_maxpool_backward"):
        original = getattr(cpu, name)
        monkeypatch.setattr(cpu, name, lambda x, *rest, original=original, name=name:
                            taken.append((name, x.shape)) or original(x, *rest))
    rng = np.random.default_rng(8)
    x = rng.standard_normal((6, 12, 12, 1)).astype(np.float32)
    y = rng.standard_normal((6, 3)).astype(np.float32)
    model = lambda: [layers.Input((12, 12, 1)), layers.Conv2D(8, 3, activation=activation), layers.MaxPooling2D(2),
                     layers.Flatten(), layers.Dense(3)]
    on, _ = _both_ways(monkeypatch, model, x, y, 0.1)
    assert on.layers[0]._direct
    assert ("implicit_conv_maxpool_forward", (6, 12, 12, 1)) in taken
    assert ("implicit_conv_maxpool_backward", (6, 12, 12, 1)) in taken


def test_the_vector_width_follows_the_cpus_registers():
    """16 lanes with AVX-512's registers of 512 bits, 8 with AVX2's of 256 (or none): blocks
    sized for AVX-512 spilled on AVX2."""
    assert lane_maps.vector_lanes("+64bit,+avx,+avx2,+fma,-avx512f,-avx512bw") == 8
    assert lane_maps.vector_lanes("+avx2,+avx512f,+avx512bw,+avx512vl") == 16
    assert lane_maps.vector_lanes("") == 8


@pytest.mark.slow
def test_the_blocks_at_the_other_vector_width_match_numpy(tmp_path):
    """This module's, the Winograd lane maps' and the planar convs' tests (the turned block's
    at 16 lanes only), rerun with the width this CPU does not
    take (NBNET_VECTOR_LANES; a 16-lane vector is legal, if slower, on AVX2), in a Numba
    cache of their own: both block shapes stay proven whichever machine runs the suite."""
    other = 8 if lane_maps.LANES == 16 else 16
    root = pathlib.Path(__file__).resolve().parent.parent
    env = dict(os.environ, NBNET_VECTOR_LANES=str(other), NUMBA_CACHE_DIR=str(tmp_path))
    width = subprocess.run([sys.executable, "-c", "from nbnet.kernels import implicit_gemm; print(implicit_gemm.LANES)"],
                           cwd=root, env=env, capture_output=True, text=True, check=True)
    assert width.stdout.split() == [str(other)]
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_implicit_gemm.py",
                          "tests/test_winograd_tiles.py", "tests/test_planar_blocks.py", "-k", "not other_vector_width"],
                         cwd=root, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and " failed" not in run.stdout
