"""Kernels that run a compiled body over pieces of a range on Numba's threads
(nbnet/kernels/parallel.py), and the convolutions built on it."""

import os
import subprocess
import sys

import numba
import numpy as np
import pytest
from numba import njit

from nbnet.kernels import planar
from nbnet.kernels.parallel import _python_ranges, parallel_ranges


@njit(cache=True)
def _mark(first, stop, visits, threads, pieces):
    pieces[numba.get_thread_id()] += 1
    for i in range(first, stop):
        visits[i] += 1
        threads[i] = numba.get_thread_id()


@njit(cache=True)
def _marked(visits, threads, pieces):
    parallel_ranges(_mark, visits.shape[0], (visits, threads, pieces))


@pytest.mark.parametrize("count", [0, 1, 2, 3, 7, 100])
@pytest.mark.parametrize("thread_count", [1, 2])
def test_pieces_cover_the_range_once_one_contiguous_piece_a_thread(count, thread_count):
    if thread_count > numba.config.NUMBA_NUM_THREADS:
        pytest.skip("fewer threads than that")
    before = numba.get_num_threads()
    numba.set_num_threads(thread_count)
    try:
        visits, threads = np.zeros(count, np.int64), np.full(count, -1, np.int64)
        pieces = np.zeros(numba.config.NUMBA_NUM_THREADS, np.int64)
        _marked(visits, threads, pieces)
    finally:
        numba.set_num_threads(before)
    assert (visits == 1).all()
    expected = min(count, thread_count)
    assert pieces.sum() == expected and (pieces <= 1).all()
    assert len(set(threads.tolist())) == expected
    if count:
        assert (np.diff(threads) >= 0).all() or (np.diff(threads) <= 0).all()  # contiguous pieces


_CACHED_RUN = """
import numpy as np
from nbnet.kernels.optim import adam_update
params = np.ones(1000, np.float32)
adam_update(params, np.ones(1000, np.float32), np.zeros(1000, np.float32), np.zeros(1000, np.float32), 0.1, 0.9, 0.999,
            1e-7, 0.0)
print(adam_update.stats.cache_hits.most_common(1)[0][1] if adam_update.stats.cache_hits else 0, float(params[0]))
"""


def test_a_kernel_that_spreads_a_body_is_loaded_from_the_disk_cache(tmp_path):
    """The body reaches the threads by name inside the kernel's own compiled code, no
    Python object held: Numba writes the kernel to its disk cache (a dynamic global would
    make it refuse), and a later process loads it instead of compiling."""
    environment = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    runs = [subprocess.run([sys.executable, "-c", _CACHED_RUN], env=environment, capture_output=True, text=True,
                           check=True, timeout=300) for _ in range(2)]
    assert "Cannot cache" not in runs[0].stderr
    (first_hits, first_value), (second_hits, second_value) = (run.stdout.split() for run in runs)
    assert (first_hits, second_hits) == ("0", "1")
    assert first_value == second_value and float(first_value) < 1.0


def test_plain_python_runs_the_body_over_the_whole_range():
    calls = []
    _python_ranges(lambda first, stop, tag: calls.append((first, stop, tag)), 5, ("x",))
    _python_ranges(lambda first, stop: calls.append((first, stop)), 0, ())
    assert calls == [(0, 5, "x")]


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


def test_one_image_convs_equal_that_image_in_a_batch():
    """A one-image batch runs the direct and planar bodies on the calling thread, without
    the threads: the same bits as the image's rows in a larger batch."""
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
