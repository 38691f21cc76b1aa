"""The Winograd F(2x2, 3x3) conv + max pool forward pass against im2col + matmul + the
fused bias/activation/pool kernel it replaces on the CPU."""

import numpy as np
import pytest

from nbnet.kernels import conv, pool, winograd
from nbnet.kernels.activations import LINEAR, RELU


def reference(x, kernel, bias, code, padding):
    batch, height, width, channels = x.shape
    filters = kernel.shape[3]
    out_h, out_w, top, left = conv.output_geometry(height, width, (3, 3), (1, 1), padding)
    out_h, out_w = out_h // 2 * 2, out_w // 2 * 2  # the pixels the pool's windows cover
    cols = np.empty((batch * out_h * out_w, 9 * channels), x.dtype)
    conv.im2col(x, 3, 3, 1, 1, top, left, out_h, out_w, cols)
    z = (cols @ kernel.reshape(-1, filters)).reshape(batch, out_h, out_w, filters)
    y = np.empty((batch, out_h // 2, out_w // 2, filters), x.dtype)
    argmax = np.empty(y.shape, np.int32)
    pool.bias_activation_maxpool(z, bias, code, 2, 2, y, argmax)
    return y, argmax, (top, left)


@pytest.mark.parametrize("batch, size, channels, filters, padding, code, use_bias, dtype", [
    (6, 13, 32, 64, "valid", RELU, True, np.float32),    # the MNIST CNN's second layer
    (3, 9, 3, 5, "same", RELU, True, np.float32),        # padding, odd batch over two workers
    (2, 8, 2, 3, "valid", LINEAR, False, np.float32),
    (1, 7, 4, 2, "same", LINEAR, True, np.float64),
])
def test_winograd_matches_im2col(batch, size, channels, filters, padding, code, use_bias, dtype):
    rng = np.random.default_rng(batch)
    x = rng.standard_normal((batch, size, size + 1, channels)).astype(dtype)
    kernel = rng.standard_normal((3, 3, channels, filters)).astype(dtype)
    bias = rng.standard_normal(filters).astype(dtype) if use_bias else np.zeros(0, dtype)
    expected, expected_argmax, (top, left) = reference(x, kernel, bias, code, padding)
    y = np.full(expected.shape, np.nan, dtype)
    argmax = np.full(expected.shape, -1, np.int32)
    winograd.conv3x3_maxpool_forward(x, kernel, bias, code, top, left, np.empty((16, channels, filters), dtype),
                                     y, argmax)
    rounding = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(y, expected, rtol=rounding, atol=rounding * np.abs(expected).max())
    # The same window position wins, but where two are within rounding of each other.
    assert (argmax == expected_argmax).mean() > 0.99
    if code == RELU:
        assert (y == 0).sum() == (expected == 0).sum()


def test_chunks_cover_every_image(monkeypatch):
    """Batches split into workers' parts and each part into chunks: every image once."""
    monkeypatch.setattr(winograd, "CHUNK_TILES", 7)  # 2 images of 3x3 blocks a chunk
    rng = np.random.default_rng(0)
    x = rng.standard_normal((9, 7, 7, 2)).astype(np.float32)
    kernel = rng.standard_normal((3, 3, 2, 4)).astype(np.float32)
    bias = np.zeros(4, np.float32)
    expected, _, _ = reference(x, kernel, bias, LINEAR, "same")
    y = np.full(expected.shape, np.nan, np.float32)
    winograd.conv3x3_maxpool_forward(x, kernel, bias, LINEAR, 1, 1, np.empty((16, 2, 4), np.float32), y,
                                     np.empty(expected.shape, np.int32))
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


def test_applies_only_to_3x3_stride_1_with_2x2_pool():
    assert winograd.applies((3, 3), (1, 1), (2, 2))
    assert not winograd.applies((5, 5), (1, 1), (2, 2))
    assert not winograd.applies((3, 3), (2, 2), (2, 2))
    assert not winograd.applies((3, 3), (1, 1), (3, 3))
