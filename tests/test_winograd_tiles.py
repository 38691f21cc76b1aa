"""The lane maps (kernels/lane_maps.py) against NumPy, and the float32 Winograd passes of
kernels/winograd_tiles.py (F(2x2, 3x3), F(4x4, 3x3), F(2x2, 5x5)) against a float64
convolution by im2col: forward, kernel and input gradients, on outputs whose sides are
not multiples of the block, channels and filters past whole vectors, chunks of one image."""

import numpy as np
import pytest
from numba import njit

from nbnet.kernels import winograd_tiles
from nbnet.kernels.conv import col2im, im2col, output_geometry
from nbnet.kernels.lane_maps import LANES, lane_map, masked_lane_map

_LEFT = np.array([[1.0, 0.0, -2.0], [0.5, 1.0, 1.0]])
_RIGHT = np.array([[0.0, -1.0, 1.0], [4.0, 0.0, 1.0], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0]])
_set = lane_map(_LEFT, _RIGHT)
_add = lane_map(_LEFT, _RIGHT, accumulate=True)
_set_masked = masked_lane_map(_LEFT, _RIGHT)


@njit
def _apply(source, target, add, lanes):
    # Grids of vectors LANES apart along a row, 5 * LANES apart down a column; the result's
    # rows 7 * LANES apart.
    if lanes < LANES:
        _set_masked(source.ctypes.data, 5 * LANES, LANES, target.ctypes.data, 7 * LANES, LANES, lanes)
    elif add:
        _add(source.ctypes.data, 5 * LANES, LANES, target.ctypes.data, 7 * LANES, LANES, lanes)
    else:
        _set(source.ctypes.data, 5 * LANES, LANES, target.ctypes.data, 7 * LANES, LANES, lanes)


@pytest.mark.parametrize("add, lanes", [(False, LANES), (True, LANES), (False, 5)])
def test_lane_map_is_left_grid_right_transposed(add, lanes):
    rng = np.random.default_rng(lanes)
    source = rng.standard_normal((3, 5, LANES)).astype(np.float32)
    target = rng.standard_normal((2, 7, LANES)).astype(np.float32)
    before = target.copy()
    _apply(source, target, add, lanes)
    grid = source[:, :3].astype(np.float64)  # (3, 3, LANES): X[r, s] per lane
    expected = np.einsum("ir,rsl,js->ijl", _LEFT, grid, _RIGHT) + (before[:, :4] if add else 0)
    np.testing.assert_allclose(target[:, :4, :lanes], expected[..., :lanes], rtol=1e-6, atol=1e-6)
    # Lanes past ``lanes`` and grid positions past the result are neither read nor written.
    np.testing.assert_array_equal(target[:, :4, lanes:], before[:, :4, lanes:])
    np.testing.assert_array_equal(target[:, 4:], before[:, 4:])


def _convolution(x, kernel, padding):
    """Forward output, and a function of dz giving (dkernel, dx), in float64 by im2col."""
    batch, height, width, channels = x.shape
    size, filters = kernel.shape[0], kernel.shape[3]
    out_h, out_w, top, left = output_geometry(height, width, (size, size), (1, 1), padding)
    geometry = (size, size, 1, 1, top, left, out_h, out_w)
    cols = np.empty((batch * out_h * out_w, size * size * channels))
    im2col(x.astype(np.float64), *geometry, cols)
    kernel2d = kernel.reshape(-1, filters).astype(np.float64)

    def gradients(dz):
        rows = dz.reshape(-1, filters).astype(np.float64)
        dx = np.empty(x.shape)
        col2im(rows @ kernel2d.T, *geometry, dx)
        return (cols.T @ rows).reshape(kernel.shape), dx

    return (cols @ kernel2d).reshape(batch, out_h, out_w, filters), (top, left), gradients


@pytest.mark.parametrize("variant, batch, height, width, channels, filters, padding", [
    (winograd_tiles.F4_3, 3, 9, 14, 40, 20, "same"),    # 9x14 output: edge blocks on both sides
    (winograd_tiles.F4_3, 2, 18, 18, 16, 33, "valid"),  # 16x16 output: whole blocks only
    (winograd_tiles.F4_3, 2, 5, 6, 3, 7, "same"),       # every block partly outside, masked lanes only
    (winograd_tiles.F2_3, 3, 7, 9, 17, 16, "same"),
    (winograd_tiles.F2_5, 2, 11, 10, 32, 24, "valid"),
    (winograd_tiles.F2_5, 2, 9, 9, 20, 48, "same"),
])
def test_passes_match_a_float64_convolution(monkeypatch, variant, batch, height, width, channels, filters, padding):
    monkeypatch.setattr(winograd_tiles, "CHUNK_VALUES", 1)  # one image a chunk
    size = winograd_tiles.SIZES[variant][1]
    rng = np.random.default_rng(channels)
    x = rng.standard_normal((batch, height, width, channels)).astype(np.float32)
    kernel = (rng.standard_normal((size, size, channels, filters)) / np.sqrt(size * size * channels)).astype(np.float32)
    expected, (top, left), gradients = _convolution(x, kernel, padding)
    u = np.empty((winograd_tiles.positions(variant), channels, filters), np.float32)
    z = np.full(expected.shape, np.nan, np.float32)
    winograd_tiles.forward(variant, x, kernel, top, left, u, z)
    # Float32 through transforms whose coefficients reach 8 (A^T of F(4x4, 3x3)).
    assert np.abs(z - expected).max() <= 3e-5 * np.abs(expected).max()

    dz = rng.standard_normal(expected.shape).astype(np.float32)
    expected_dkernel, expected_dx = gradients(dz)
    dkernel = np.ones_like(kernel)  # added into
    dx = np.full_like(x, np.nan)
    winograd_tiles.backward(variant, x, kernel, dz, top, left, u, dkernel, True, dx)
    assert np.abs(dkernel - 1 - expected_dkernel).max() <= 3e-5 * np.abs(expected_dkernel).max()
    assert np.abs(dx - expected_dx).max() <= 3e-5 * np.abs(expected_dx).max()

    # Without the input gradient: the kernel gradient, dx untouched; one thread running both
    # workers' parts in turn (each part's sum lives in that thread's scratch).
    again, untouched = np.zeros_like(kernel), np.full_like(x, 7)
    monkeypatch.setattr(winograd_tiles, "for_each_worker", lambda task, count: [task(0, 1), task(1, count)])
    winograd_tiles.backward(variant, x, kernel, dz, top, left, u, again, False, untouched)
    assert np.abs(again - expected_dkernel).max() <= 3e-5 * np.abs(expected_dkernel).max()
    assert (untouched == 7).all()


@pytest.mark.parametrize("variant", [winograd_tiles.F2_3, winograd_tiles.F4_3, winograd_tiles.F2_5])
def test_bias_and_relu_in_the_stores_equal_their_own_pass(variant):
    """forward with a bias and relu gives bias_activation_forward's bits on its plain
    output: edge blocks (9x7), filters past whole vectors (20), a NaN (relu passes 0)."""
    from nbnet.kernels.activations import LINEAR, RELU, bias_activation_forward

    size = winograd_tiles.SIZES[variant][1]
    rng = np.random.default_rng(variant)
    x = rng.standard_normal((2, 9, 7, 17)).astype(np.float32)
    x[1, 4, 3, 2] = np.nan
    kernel = rng.standard_normal((size, size, 17, 20)).astype(np.float32)
    bias = rng.standard_normal(20).astype(np.float32)
    u = np.empty((winograd_tiles.positions(variant), 17, 20), np.float32)
    plain = np.empty((2, 9, 7, 20), np.float32)
    winograd_tiles.forward(variant, x, kernel, size // 2, size // 2, u, plain)
    assert np.isnan(plain).any()
    for code, use_bias in ((RELU, True), (RELU, False), (LINEAR, True)):
        expected = np.empty_like(plain)
        bias_activation_forward(plain.reshape(-1, 20), bias if use_bias else bias[:0], code, 0.0,
                                expected.reshape(-1, 20))
        fused = np.full_like(plain, 7.0)
        winograd_tiles.forward(variant, x, kernel, size // 2, size // 2, u, fused, bias if use_bias else None,
                               code == RELU)
        np.testing.assert_array_equal(fused, expected)


def test_the_backward_scratch_image_is_as_large_as_each_pass_pads(monkeypatch):
    """Two 5x5 passes, 16 -> 32 channels, whose chunks have one shape (197 blocks: 4 images
    of 14x14 or one of 28x28) but pad images of different sizes: each backward gets a
    scratch image of its own size. Sharing the 14x14 one, the 28x28 adjoint wrote past its
    end (heap corruption; the gradients still came out right)."""
    variant = winograd_tiles.F2_5
    monkeypatch.setattr(winograd_tiles, "for_each_worker", lambda task, count: [task(0, count)])
    monkeypatch.setattr(winograd_tiles, "CHUNK_VALUES", 400_000)  # 231 blocks a chunk at most, 197 here
    rng = np.random.default_rng(3)
    kernel = rng.standard_normal((5, 5, 16, 32)).astype(np.float32)
    u = np.empty((winograd_tiles.positions(variant), 16, 32), np.float32)
    padded = {}
    for batch, side in ((4, 14), (1, 28)):
        x = rng.standard_normal((batch, side, side, 16)).astype(np.float32)
        dz = rng.standard_normal((batch, side, side, 32)).astype(np.float32)
        winograd_tiles.backward(variant, x, kernel, dz, 2, 2, u, np.zeros_like(kernel), True, np.empty_like(x))
        tiles = -(-side // 2)
        rows, columns = winograd_tiles.padded_size(variant, tiles, tiles)
        padded[rows * columns * 16] = side
    scratch = [buffers[3] for key, buffers in winograd_tiles._scratch.buffers.items()
               if key[0] == "winograd backward" and key[2] == (36, 197, 16)]
    assert sorted(image.size for image in scratch) == sorted(padded)


def test_layers_of_one_block_grid_but_other_paddings_keep_their_own_zero_borders():
    """A 'same' conv and a 'valid' one with the same output size share every chunk shape:
    each keeps its own zero-bordered image buffer (the 'valid' one's pixels read as the
    'same' one's padding made its output wrong by up to 39), in the unpooled float32
    pass and in winograd.py's pooled one."""
    from nbnet.kernels import winograd
    from nbnet.kernels.activations import LINEAR

    rng = np.random.default_rng(0)
    kernel = rng.standard_normal((3, 3, 32, 32)).astype(np.float32)
    same = rng.standard_normal((2, 16, 16, 32)).astype(np.float32)
    valid = rng.standard_normal((2, 18, 18, 32)).astype(np.float32)
    u = np.empty((winograd_tiles.positions(winograd_tiles.F4_3), 32, 32), np.float32)
    before, other, after = (np.empty((2, 16, 16, 32), np.float32) for _ in range(3))
    winograd_tiles.forward(winograd_tiles.F4_3, same, kernel, 1, 1, u, before)
    winograd_tiles.forward(winograd_tiles.F4_3, valid, kernel, 0, 0, u, other)
    winograd_tiles.forward(winograd_tiles.F4_3, same, kernel, 1, 1, u, after)
    np.testing.assert_array_equal(after, before)

    u16, bias = np.empty((16, 32, 32), np.float32), np.zeros(0, np.float32)
    pooled = [np.empty((2, 8, 8, 32), np.float32) for _ in range(3)]
    argmax = np.empty((2, 8, 8, 32), np.int32)
    for image, pad, y in ((same, 1, pooled[0]), (valid, 0, pooled[1]), (same, 1, pooled[2])):
        winograd.conv3x3_maxpool_forward(image, kernel, bias, LINEAR, pad, pad, u16, y, argmax)
    np.testing.assert_array_equal(pooled[2], pooled[0])


def test_chunks_scale_with_the_l2_cache_read_from_sysfs(tmp_path):
    """The chunk size follows the core's L2 (Linux's sysfs cache folders; 1 MiB where
    there are none): 1 MiB, measured best on an AMD EPYC, gives about its 400k values."""
    from nbnet.kernels import l2_cache_bytes

    for name, level, kind, size in (("index0", 1, "Data", "48K"), ("index1", 1, "Instruction", "64K"),
                                    ("index2", 2, "Unified", "2048K"), ("index3", 3, "Unified", "480M")):
        (tmp_path / name).mkdir()
        for field, value in (("level", level), ("type", kind), ("size", size)):
            (tmp_path / name / field).write_text(f"{value}\n")
    assert l2_cache_bytes(tmp_path) == 2 << 20
    assert l2_cache_bytes(tmp_path / "missing") == 1 << 20
    assert winograd_tiles.chunk_values(512 << 10) == 800_000  # Zen 3: not the L2's 210k, measured slower
    assert winograd_tiles.chunk_values(1 << 20) == 800_000
    assert winograd_tiles.chunk_values(2 << 20) > 800_000  # measured faster on the Xeon's 2 MB
    assert winograd_tiles.chunk_values(8 << 20) > 3_000_000
    assert winograd_tiles.CHUNK_VALUES == winograd_tiles.chunk_values(l2_cache_bytes())
