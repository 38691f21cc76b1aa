"""The CUDA kernels (nbnet.kernels.cuda) against their CPU twins, under Numba's CUDA
simulator, so no GPU is needed.

The simulator must be switched on before numba.cuda is first imported, so a plain
``pytest`` run (no NUMBA_ENABLE_CUDASIM) runs only ``test_cuda_kernels_under_simulator``,
which re-runs this file in a subprocess with NUMBA_ENABLE_CUDASIM=1; there the kernel tests
run and the wrapper skips itself. The simulator runs every CUDA thread as a Python thread,
so shapes are tiny, blocks small (32 threads, 4x4 matmul tiles but one 16x16 check) and
the grids capped at a few blocks, which also exercises the kernels' grid-stride loops.
"""

import os
import subprocess
import sys

import numpy as np
import pytest

from nbnet.kernels.activations import LEAKY_RELU, LINEAR, RELU, SIGMOID, TANH

try:
    from .simulator import ON_CUDA, SIMULATED, plain_only, run_under_simulator, sim_only, small_launches
except ImportError:  # tests/ is not a package
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from simulator import ON_CUDA, SIMULATED, plain_only, run_under_simulator, sim_only, small_launches

# Elementwise results computed by the same expressions (float32 rounding only).
RTOL, ATOL = 1e-5, 1e-6
# Sums taken in another order than the CPU (matmuls, bias gradients, col2im, statistics).
SUM_RTOL, SUM_ATOL = 1e-4, 1e-5
# Loss and penalty totals: float64 sums of float64 terms, in another order.
TOTAL_RTOL = 1e-7
# Compute capability the PTX check compiles for (CUDA 13's NVVM needs 7.5 or newer).
PTX_CC = (7, 5)

@plain_only
def test_cuda_kernels_under_simulator(request):
    # The PTX check needs Numba's real CUDA compiler: it skips under the simulator on purpose.
    run_under_simulator(request, not_simulated=("test_kernels_compile_for_a_real_gpu",))


@plain_only
def test_import_needs_no_cuda():
    """Importing the package touches neither numba.cuda nor a GPU; available() explains."""
    code = ("import sys; import nbnet.kernels.cuda as kc; "
            "assert 'numba.cuda' not in sys.modules, 'numba.cuda imported eagerly'; "
            "ok, reason = kc.available(); assert isinstance(ok, bool) and isinstance(reason, str) and reason; "
            "print(ok, reason)")
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _ptx_signatures():
    """{kernel: argument types} for every @cuda.jit kernel, float32 data, as the launchers
    call them (NumPy float32 scalars, Python ints/floats/bools as int64/float64/boolean)."""
    from numba import boolean, float32, float64, int32, int64, uint8, uint32, uint64

    from nbnet.kernels.cuda import activations as A
    from nbnet.kernels.cuda import conv as C
    from nbnet.kernels.cuda import depthwise as W
    from nbnet.kernels.cuda import dropout as D
    from nbnet.kernels.cuda import flip as F
    from nbnet.kernels.cuda import losses as L
    from nbnet.kernels.cuda import merging as M
    from nbnet.kernels.cuda import normalization as N
    from nbnet.kernels.cuda import onnx_ops as X
    from nbnet.kernels.cuda import optim as O
    from nbnet.kernels.cuda import padding as Z
    from nbnet.kernels.cuda import pool as P
    from nbnet.kernels.cuda import regularization as R
    from nbnet.kernels.cuda import rescaling as S
    from nbnet.kernels.cuda import training as T
    from nbnet.kernels.cuda import upsampling as U

    f, i = float32, int64
    a1, a2, a4 = float32[::1], float32[:, ::1], float32[:, :, :, ::1]
    d1, d2, i4 = float64[::1], float64[:, ::1], int32[:, :, :, ::1]
    h1 = int32[::1]  # the optimizer kernels' halt flag
    i1 = int32[::1]  # Maximum's and Minimum's winners
    a3, g2 = float32[:, :, ::1], int64[:, ::1]  # LogSoftmax's (outer, axis, inner) views; geometry
    modules = (A, C, D, F, L, M, N, O, P, R, S, T, U, W, X, Z)
    return modules, {
        A._bias_activation_kernel: (a2, a1, i, f, f, f, a2),
        A._softmax_rows_kernel: (a2, a1, f, a2),
        A._activation_backward_kernel: (a2, a2, i, f, f, a2),
        A._activation_backward_partials_kernel: (a2, a2, i, f, f, a2, a2),
        A._softmax_backward_kernel: (a2, a2, a2),
        A._column_partials_kernel: (a2, f, a2),
        A._add_partials_kernel: (a2, a1),
        C._im2col_kernel: (a4,) + (i,) * 8 + (f, a2),
        C._col2im_kernel: (a2,) + (i,) * 8 + (f, a4),
        C._direct_conv_forward_kernel: (a4, a2) + (i,) * 8 + (f, a2),
        C._direct_conv_dkernel_partials_kernel: (a4, a2) + (i,) * 8 + (f, a2),
        C._direct_conv_dx_kernel: (a2, a2) + (i,) * 8 + (f, a4),
        W._depthwise_forward_kernel: (a4, a3) + (i,) * 10 + (f, a2),
        W._depthwise_dkernel_partials_kernel: (a4, a2) + (i,) * 10 + (f, a2),
        W._depthwise_dx_kernel: (a2, a3) + (i,) * 10 + (f, a4),
        W._grouped_im2col_kernel: (a4,) + (i,) * 10 + (f, a3),
        W._grouped_col2im_kernel: (a3,) + (i,) * 10 + (f, a4),
        P._maxpool_forward_kernel: (a4,) + (i,) * 6 + (a4, i4),
        P._maxpool_backward_kernel: (a4, i4) + (i,) * 6 + (f, a4),
        P._bias_activation_maxpool_kernel: (a4, a1, boolean, i, i, f, a4, i4),
        P._maxpool_activation_backward_kernel: (a4, i4, a4, boolean, i, i, f, a4),
        P._avgpool_forward_kernel: (a4,) + (i,) * 6 + (f, f, a4),
        P._avgpool_backward_kernel: (a4,) + (i,) * 6 + (f, f, a4),
        N._moment_partials_kernel: (a2, d2, d2),
        N._moments_finish_kernel: (d2, d2, i, float64, a1, a1, d1, d1),
        N._normalise_kernel: (a2, a1, a1, d1, d1, a2),
        N._infer_coefficients_kernel: (a1, a1, a1, a1, float64, a1, a1),
        N._affine_kernel: (a2, a1, a1, a2),
        N._backward_partials_kernel: (a2, a2, a1, d1, d2, d2),
        N._backward_finish_kernel: (d2, d2, i, a1, a1, d2),
        N._backward_dx_kernel: (a2, a2, a1, a1, d1, d2, a2),
        N._inv_std_kernel: (a1, float64, d1),
        N._scale_kernel: (a2, a1, d1, a2),
        L._sum_partials_kernel: (d1, d1),
        L._sum_finish_kernel: (d1, d1),
        L._log_norm_kernel: (a2, d1),
        L._softmax_crossentropy_kernel: (a2, a2, int64[::1], a1, d1, float64, d1, a2),
        L._crossentropy_probabilities_kernel: (a2, a2, int64[::1], a1, float64, float64, d1, a2),
        L._sigmoid_crossentropy_kernel: (a2, a2, a1, float64, d1, a2),
        L._binary_crossentropy_kernel: (a2, a2, a1, float64, float64, d1, a2),
        L._regression_kernel: (a2, a2, a1, i, float64, float64, d1, a2),
        R._penalty_kernel: (a1, float64, float64, f, f, f, d1, a1),
        N._moving_averages_kernel: (a1, a1, a1, a1, f, f),
        O._sgd_kernel: (a1, a1, a1, f, f, boolean, boolean, h1),
        O._adam_kernel: (a1, a1, a1, a1) + (f,) * 6 + (h1,),
        O._rmsprop_kernel: (a1, a1, a1, a1, a1, f, f, f, boolean, f, boolean, f, h1),
        O._adagrad_kernel: (a1, a1, a1, f, f, h1),
        O._adadelta_kernel: (a1, a1, a1, a1, f, f, f, f, h1),
        O._adamax_kernel: (a1, a1, a1, a1) + (f,) * 5 + (h1,),
        O._nadam_kernel: (a1, a1, a1, a1) + (f,) * 8 + (h1,),
        O._clip_by_value_kernel: (a1, f),
        O._clip_segments_kernel: (a1, int64[::1], float64),
        O._decay_weights_kernel: (a1, f, h1),
        D._apply_mask_kernel: (a1, uint64, uint64, f, f, a1),
        S._scale_shift_kernel: (a1, f, f, a1),
        F._flip_kernel: (a4, uint8[::1], boolean, boolean, a4),
        U._upsample_forward_kernel: (a4, i, i, a4),
        U._upsample_backward_kernel: (a4, i, i, f, a4),
        T._fill_zero_kernel: (a1, f),
        T._add_into_kernel: (a1, a1),
        T._gather_rows_kernel: (a2, int64[::1], i, a2),
        T._check_finite_kernel: (a1, d1, i, h1),
        T._correct_rows_kernel: (a2, int64[::1], a2, float64, d1),
        Z._zero_pad_forward_kernel: (a4, i, i, a4),
        Z._zero_pad_backward_kernel: (a4, i, i, a4),
        M._merge_add_kernel: (a1, a1, f, a1),
        M._merge_subtract_kernel: (a1, a1, a1),
        M._merge_multiply_kernel: (a1, a1, a1),
        M._merge_divide_kernel: (a1, f, a1),
        M._merge_select_kernel: (a1, a1, i, boolean, a1, i1),
        M._merge_route_kernel: (a1, i1, i, a1),
        M._concat_forward_kernel: (a2, i, a2),
        M._concat_backward_kernel: (a2, i, a2),
        X._permute_forward_kernel: (a1, g2, a1),
        X._binary_forward_kernel: (i, a1, a1, g2, a1),
        X._binary_gradient_partials_kernel: (i, i, a1, a1, a1, g2, i, i, i, f, a2),
        X._sum_chunks_kernel: (a2, a1),
        X._clip_forward_kernel: (a1, f, f, a1),
        X._clip_backward_kernel: (a1, f, f, f, a1, a1),
        X._log_softmax_forward_kernel: (a3, f, a3),
        X._log_softmax_backward_kernel: (a3, a3, a3),
        X._binary_backward_same_kernel: (i, i, a1, a1, a1, g2, a1),
        X._take_forward_kernel: (a3, int64[::1], a3),
        X._take_backward_kernel: (a3, int64[::1], f, a3),
    }


@pytest.mark.skipif(SIMULATED, reason="needs the real numba.cuda compiler, not the simulator")
def test_kernels_compile_for_a_real_gpu(monkeypatch):
    """The simulator runs kernels as Python, so it cannot catch what Numba's CUDA compiler
    rejects; where the CUDA toolkit's NVVM is installed (no GPU or driver needed), compile
    every kernel to PTX with the argument types the launchers pass."""
    cuda = pytest.importorskip("numba.cuda")
    try:
        from numba.cuda.cudadrv import nvvm

        have_nvvm = nvvm.is_available()
    except Exception:
        have_nvvm = False
    if not have_nvvm:
        pytest.skip("no NVVM (CUDA toolkit) here: the kernels' PTX compilation is not checked")
    import types

    import numba.cuda.dispatcher as dispatcher
    from numba import float32, int64

    from nbnet.kernels.cuda import gemm

    # Device functions called from a kernel ask the current GPU for its compute capability.
    monkeypatch.setattr(dispatcher, "get_current_device", lambda: types.SimpleNamespace(compute_capability=PTX_CC),
                        raising=False)
    modules, signatures = _ptx_signatures()
    kernels = {getattr(m, name) for m in modules for name in dir(m)
               if name.endswith("_kernel") and isinstance(getattr(m, name), dispatcher.CUDADispatcher)
               and not getattr(m, name).targetoptions.get("device")}
    assert kernels == set(signatures), "every kernel needs a signature here"
    failures = []
    for kernel, signature in signatures.items():
        try:
            cuda.compile_ptx(kernel.py_func, signature, cc=PTX_CC)
        except Exception as exc:
            failures.append(f"{kernel.py_func.__qualname__}: {str(exc)[-800:]}")
    matrix = float32[:, ::1]
    for trans_a in (False, True):
        for trans_b in (False, True):
            for accumulate in (False, True):
                kernel = gemm._kernel(gemm.TILE, trans_a, trans_b, accumulate, np.dtype(np.float32))
                try:
                    cuda.compile_ptx(kernel.py_func, (matrix, matrix, matrix, int64, int64, int64), cc=PTX_CC)
                except Exception as exc:
                    failures.append(f"matmul {trans_a=} {trans_b=} {accumulate=}: {str(exc)[-800:]}")
    assert not failures, "\n\n".join(failures)


if ON_CUDA:
    from numba import cuda

    import nbnet.kernels.cuda as kc
    from nbnet.kernels import activations as cpu_act
    from nbnet.kernels import conv as cpu_conv
    from nbnet.kernels import dense as cpu_dense
    from nbnet.kernels import dropout as cpu_dropout
    from nbnet.kernels import flip as cpu_flip
    from nbnet.kernels import losses as cpu_losses
    from nbnet.kernels import matmul as cpu_matmul
    from nbnet.kernels import normalization as cpu_norm
    from nbnet.kernels import optim as cpu_optim
    from nbnet.kernels import padding as cpu_padding
    from nbnet.kernels import pool as cpu_pool
    from nbnet.kernels import regularization as cpu_reg
    from nbnet.kernels import rescaling as cpu_rescaling
    from nbnet.kernels import training as cpu_training
    from nbnet.kernels import upsampling as cpu_upsampling
    from nbnet.kernels.cuda import activations as gpu_act
    from nbnet.kernels.cuda import conv as gpu_conv
    from nbnet.kernels.cuda import dense as gpu_dense
    from nbnet.kernels.cuda import dropout as gpu_dropout
    from nbnet.kernels.cuda import flip as gpu_flip
    from nbnet.kernels.cuda import gemm
    from nbnet.kernels.cuda import losses as gpu_losses
    from nbnet.kernels.cuda import normalization as gpu_norm
    from nbnet.kernels.cuda import optim as gpu_optim
    from nbnet.kernels.cuda import padding as gpu_padding
    from nbnet.kernels.cuda import pool as gpu_pool
    from nbnet.kernels.cuda import regularization as gpu_reg
    from nbnet.kernels.cuda import rescaling as gpu_rescaling
    from nbnet.kernels.cuda import training as gpu_training
    from nbnet.kernels.cuda import upsampling as gpu_upsampling

    @pytest.fixture(autouse=True, scope="module")
    def tiny_launches():
        """Fast under the simulator, and every grid-stride loop and the matmul's tile loop
        run more than once."""
        with small_launches():
            yield


def dev(a):
    return cuda.to_device(np.ascontiguousarray(a))


def close(actual, expected, rtol=RTOL, atol=ATOL):
    actual = actual.copy_to_host() if hasattr(actual, "copy_to_host") else actual
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol)


def cpu_scratch(shape, dtype=np.float32):
    """The CPU backward passes' weight-gradient scratch (see kernels/matmul.py)."""
    return np.empty((cpu_matmul.workers(), *shape), dtype)


def rand(rng, *shape, dtype=np.float32):
    return rng.standard_normal(shape).astype(dtype)


ALL_CODES = ["LINEAR", "RELU", "SIGMOID", "TANH", "SOFTMAX", "LEAKY_RELU", "ELU", "SELU", "SOFTPLUS"]


@sim_only
def test_available_reports_the_simulator():
    ok, reason = kc.available()
    assert ok is False and "simulator" in reason


@sim_only
@pytest.mark.parametrize("trans_a, trans_b, accumulate",
                         [(False, False, False), (True, False, True), (False, True, False), (True, True, True)])
def test_matmul(trans_a, trans_b, accumulate):
    rng = np.random.default_rng(1)
    m, k, n = 9, 6, 7  # not multiples of the 4x4 tile; 3x2 tiles on a 2x2 grid
    a = rand(rng, *((k, m) if trans_a else (m, k)))
    b = rand(rng, *((n, k) if trans_b else (k, n)))
    start = rand(rng, m, n)
    expected = (a.T if trans_a else a) @ (b.T if trans_b else b) + (start if accumulate else 0)
    out = dev(start)
    gemm.matmul(dev(a), dev(b), out, trans_a=trans_a, trans_b=trans_b, accumulate=accumulate)
    close(out, expected, SUM_RTOL, SUM_ATOL)


@sim_only
def test_matmul_full_tile():
    """The production 16x16 tile, with ragged edges in every dimension."""
    rng = np.random.default_rng(2)
    a, b = rand(rng, 18, 17), rand(rng, 17, 5)
    out = cuda.device_array((18, 5), np.float32)
    gemm.matmul(dev(a), dev(b), out, tile=16)
    close(out, a @ b, SUM_RTOL, SUM_ATOL)



@pytest.mark.skipif(not SIMULATED, reason="checks the simulator's shared arrays (simulator.py)")
def test_simulated_block_shares_one_shared_array(monkeypatch):
    """Every thread of a block gets the same cuda.shared.array even when the allocation
    is slow enough for the others to reach it meanwhile (the race simulator.py closes)."""
    import time

    slow_empty = np.empty

    def empty(*args, **kwargs):
        time.sleep(0.002)  # gives the GIL to the other threads mid-allocation
        return slow_empty(*args, **kwargs)

    @cuda.jit
    def kernel(out):
        shared = cuda.shared.array(8, np.float32)
        shared[cuda.threadIdx.x] = cuda.threadIdx.x + 1
        cuda.syncthreads()
        total = 0.0
        for i in range(8):
            total += shared[i]
        out[cuda.threadIdx.x] = total

    out = cuda.device_array(8, np.float32)
    monkeypatch.setattr(np, "empty", empty)
    kernel[1, 8](out)
    monkeypatch.undo()
    np.testing.assert_array_equal(out.copy_to_host(), np.full(8, 36.0, np.float32))

@sim_only
@pytest.mark.parametrize("code_name", ALL_CODES)
def test_bias_activation_forward(code_name):
    code = getattr(cpu_act, code_name)
    rng = np.random.default_rng(3)
    z, bias = rand(rng, 7, 3), rand(rng, 3)
    expected = np.empty_like(z)
    cpu_act.bias_activation_forward(z, bias, code, 0.2, expected)
    y = cuda.device_array_like(z)
    gpu_act.bias_activation_forward(dev(z), dev(bias), code, 0.2, y)
    close(y, expected)
    # In place, without a bias.
    cpu_act.bias_activation_forward(z, np.zeros(0, np.float32), code, 0.2, expected)
    z_dev = dev(z)
    gpu_act.bias_activation_forward(z_dev, kc.empty(np.float32), code, 0.2, z_dev)
    close(z_dev, expected)


@sim_only
@pytest.mark.parametrize("code_name", ALL_CODES)
def test_activation_backward(code_name):
    code = getattr(cpu_act, code_name)
    rng = np.random.default_rng(4)
    z, dy, dbias = rand(rng, 11, 3), rand(rng, 11, 3), rand(rng, 3)
    y = np.empty_like(z)
    cpu_act.bias_activation_forward(z, np.zeros(0, np.float32), code, 0.2, y)
    dz, expected_dbias = np.empty_like(dy), dbias.copy()
    cpu_act.activation_backward(y, dy, code, 0.2, dz, expected_dbias)
    # In place (dz is dy), adding into a non-zero dbias.
    dy_dev, dbias_dev = dev(dy), dev(dbias)
    gpu_act.activation_backward(dev(y), dy_dev, code, 0.2, dy_dev, dbias_dev)
    close(dy_dev, dz)
    close(dbias_dev, expected_dbias, SUM_RTOL, SUM_ATOL)
    # Without a bias gradient.
    dz_dev = cuda.device_array_like(dy)
    gpu_act.activation_backward(dev(y), dev(dy), code, 0.2, dz_dev, kc.empty(np.float32))
    close(dz_dev, dz)


@sim_only
def test_column_sums_into():
    rng = np.random.default_rng(5)
    dz, dbias = rand(rng, 10, 4), rand(rng, 4)
    expected = dbias + dz.sum(axis=0)
    dbias_dev = dev(dbias)
    gpu_act.column_sums_into(dev(dz), dbias_dev)
    close(dbias_dev, expected, SUM_RTOL, SUM_ATOL)


# (window, strides, padding) on 5x6 images: plain, padded and strided, asymmetric.
CONV_CASES = [((3, 3), (1, 1), "valid"), ((3, 3), (2, 2), "same"), ((2, 3), (2, 1), "same")]


@sim_only
@pytest.mark.parametrize("window, strides, padding", CONV_CASES)
def test_im2col_and_col2im(window, strides, padding):
    rng = np.random.default_rng(6)
    x = rand(rng, 2, 5, 6, 2)
    out_h, out_w, top, left = cpu_conv.output_geometry(5, 6, window, strides, padding)
    geometry = (*window, *strides, top, left, out_h, out_w)
    cols = np.empty((2 * out_h * out_w, window[0] * window[1] * 2), np.float32)
    cpu_conv.im2col(x, *geometry, cols)
    cols_dev = cuda.device_array_like(cols)
    gpu_conv.im2col(dev(x), *geometry, cols_dev)
    close(cols_dev, cols, 0, 0)  # a copy: exact
    dcols = rand(rng, *cols.shape)
    dx = np.empty_like(x)
    cpu_conv.col2im(dcols, *geometry, dx)
    dx_dev = dev(np.full_like(x, np.nan))  # overwritten, not added to
    gpu_conv.col2im(dev(dcols), *geometry, dx_dev)
    close(dx_dev, dx)  # gathered in the CPU's order


@sim_only
@pytest.mark.parametrize("window, strides, padding, code_name",
                         [(CONV_CASES[1] + ("RELU",)), (CONV_CASES[2] + ("TANH",))])
def test_conv2d_forward_backward(window, strides, padding, code_name):
    code = getattr(cpu_act, code_name)
    rng = np.random.default_rng(7)
    x, kernel, bias = rand(rng, 2, 5, 6, 2), rand(rng, *window, 2, 3), rand(rng, 3)
    out_h, out_w, top, left = cpu_conv.output_geometry(5, 6, window, strides, padding)
    geometry = (*window, *strides, top, left, out_h, out_w)
    kernel2d = kernel.reshape(-1, 3)
    rows = 2 * out_h * out_w
    # CPU, as layers/convolutional.py runs it.
    cols = np.empty((rows, kernel2d.shape[0]), np.float32)
    cpu_conv.im2col(x, *geometry, cols)
    y = cols @ kernel2d
    cpu_act.bias_activation_forward(y, bias, code, 0.0, y)
    dy = rand(rng, rows, 3)
    dkernel, dbias = rand(rng, *kernel2d.shape), rand(rng, 3)
    dkernel_dev, dbias_dev = dev(dkernel), dev(dbias)
    dx, dcols, dy_cpu = np.empty_like(x), np.empty_like(cols), dy.copy()
    cpu_act.activation_backward(y, dy_cpu, code, 0.0, dy_cpu, dbias)
    cpu_conv.conv2d_backward(cols, kernel2d, dy_cpu, geometry, dkernel, cpu_scratch(kernel2d.shape), dcols, dx)
    # GPU.
    cols_dev, y_dev, kernel2d_dev = cuda.device_array_like(cols), cuda.device_array((rows, 3), np.float32), dev(kernel2d)
    gpu_conv.im2col(dev(x), *geometry, cols_dev)  # as the layer runs it on the device
    gemm.matmul(cols_dev, kernel2d_dev, y_dev)
    gpu_act.bias_activation_forward(y_dev, dev(bias), code, 0.0, y_dev)
    close(y_dev, y, SUM_RTOL, SUM_ATOL)
    dy_dev, dx_dev = dev(dy), cuda.device_array_like(x)
    gpu_act.activation_backward(y_dev, dy_dev, code, 0.0, dy_dev, dbias_dev)
    gpu_conv.conv2d_backward(cols_dev, kernel2d_dev, dy_dev, geometry, dkernel_dev, None, cuda.device_array_like(cols),
                             dx_dev)
    close(dy_dev, dy_cpu, SUM_RTOL, SUM_ATOL)
    close(dkernel_dev, dkernel, SUM_RTOL, SUM_ATOL)
    close(dbias_dev, dbias, SUM_RTOL, SUM_ATOL)
    close(dx_dev, dx, SUM_RTOL, SUM_ATOL)


@sim_only
@pytest.mark.parametrize("dtype, code_name, with_dx", [(np.float32, "SIGMOID", True), (np.float64, "LINEAR", False)])
def test_dense_forward_backward(dtype, code_name, with_dx):
    code = getattr(cpu_act, code_name)
    rng = np.random.default_rng(8)
    x, kernel, bias = rand(rng, 5, 6, dtype=dtype), rand(rng, 6, 3, dtype=dtype), rand(rng, 3, dtype=dtype)
    y = x @ kernel
    cpu_act.bias_activation_forward(y, bias, code, 0.0, y)
    dy = rand(rng, 5, 3, dtype=dtype)
    dkernel, dbias = rand(rng, 6, 3, dtype=dtype), rand(rng, 3, dtype=dtype)
    dkernel_dev, dbias_dev = dev(dkernel), dev(dbias)
    dx, dy_cpu = (np.empty_like(x) if with_dx else None), dy.copy()
    cpu_dense.dense_backward(x, kernel, y, dy_cpu, code, 0.0, dkernel, dbias, cpu_scratch(kernel.shape, dtype), dx)
    x_dev, kernel_dev, y_dev = dev(x), dev(kernel), cuda.device_array((5, 3), dtype)
    gemm.matmul(x_dev, kernel_dev, y_dev)  # as the layer runs it on the device
    gpu_act.bias_activation_forward(y_dev, dev(bias), code, 0.0, y_dev)
    close(y_dev, y, SUM_RTOL, SUM_ATOL)
    dy_dev = dev(dy)
    dx_dev = cuda.device_array_like(x) if with_dx else None
    gpu_dense.dense_backward(x_dev, kernel_dev, y_dev, dy_dev, code, 0.0, dkernel_dev, dbias_dev, None, dx_dev)
    close(dy_dev, dy_cpu, SUM_RTOL, SUM_ATOL)
    close(dkernel_dev, dkernel, SUM_RTOL, SUM_ATOL)
    close(dbias_dev, dbias, SUM_RTOL, SUM_ATOL)
    if with_dx:
        close(dx_dev, dx, SUM_RTOL, SUM_ATOL)


@sim_only
@pytest.mark.parametrize("window, strides, padding, need_dx", [(CONV_CASES[0] + (True,)), (CONV_CASES[1] + (True,)),
                                                               (CONV_CASES[2] + (False,))])
def test_direct_conv(window, strides, padding, need_dx):
    rng = np.random.default_rng(16)
    x, kernel = rand(rng, 2, 5, 6, 2), rand(rng, *window, 2, 3)
    out_h, out_w, top, left = cpu_conv.output_geometry(5, 6, window, strides, padding)
    geometry = (*window, *strides, top, left, out_h, out_w)
    kernel2d = kernel.reshape(-1, 3)
    rows = 2 * out_h * out_w
    z = np.empty((rows, 3), np.float32)
    cpu_conv.direct_conv_forward(x, kernel2d, *geometry, z)
    x_dev, kernel2d_dev, z_dev = dev(x), dev(kernel2d), cuda.device_array((rows, 3), np.float32)
    gpu_conv.direct_conv_forward(x_dev, kernel2d_dev, *geometry, z_dev)
    close(z_dev, z)  # summed in the CPU's order
    dz, dkernel = rand(rng, rows, 3), rand(rng, *kernel2d.shape)
    dkernel_dev = dev(dkernel)
    dx = np.empty_like(x) if need_dx else x[:0]
    cpu_conv.direct_conv_backward(x, kernel2d, dz, *geometry, dkernel, need_dx, dx)
    dx_dev = dev(np.full_like(x, np.nan)) if need_dx else None
    gpu_conv.direct_conv_backward(x_dev, kernel2d_dev, dev(dz), *geometry, dkernel_dev, need_dx, dx_dev)
    close(dkernel_dev, dkernel, SUM_RTOL, SUM_ATOL)
    if need_dx:
        close(dx_dev, dx)


# (pool, strides, padding) on 5x6 images: Keras's default, overlapping windows, padded.
POOL_CASES = [((2, 2), (2, 2), "valid"), ((3, 3), (2, 2), "same"), ((2, 2), (1, 1), "valid")]


@sim_only
@pytest.mark.parametrize("pool, strides, padding", POOL_CASES)
def test_maxpool(pool, strides, padding):
    rng = np.random.default_rng(9)
    x = rng.integers(0, 4, (2, 5, 6, 2)).astype(np.float32)  # ties: the first maximum wins on both
    out_h, out_w, top, left = cpu_conv.output_geometry(5, 6, pool, strides, padding)
    window = (*pool, *strides, top, left)
    y, argmax = np.empty((2, out_h, out_w, 2), np.float32), np.empty((2, out_h, out_w, 2), np.int32)
    cpu_pool.maxpool_forward(x, *window, y, argmax)
    y_dev, argmax_dev = cuda.device_array_like(y), cuda.device_array_like(argmax)
    gpu_pool.maxpool_forward(dev(x), *window, y_dev, argmax_dev)
    close(y_dev, y, 0, 0)
    np.testing.assert_array_equal(argmax_dev.copy_to_host(), argmax)
    dy, dx = rand(rng, *y.shape), np.empty_like(x)
    cpu_pool.maxpool_backward(dy, argmax, dx)
    dx_dev = dev(np.full_like(x, np.nan))
    gpu_pool.maxpool_backward(dev(dy), argmax_dev, *window, dx_dev)
    close(dx_dev, dx)


@sim_only
@pytest.mark.parametrize("code_name, with_bias, height", [("RELU", True, 5), ("LINEAR", False, 4)])
def test_conv_maxpool_fusion(code_name, with_bias, height):
    """The fused conv + activation + max pool kernels (an odd height leaves a row outside
    every window) against the CPU's."""
    code = getattr(cpu_act, code_name)
    rng = np.random.default_rng(17)
    # Halves: every sum is exact in any order, so ties (the first maximum wins) match exactly.
    halves = lambda *shape: (rng.integers(-4, 5, shape) / 2).astype(np.float32)  # noqa: E731
    x, kernel = halves(2, height + 2, 8, 1), halves(3, 3, 1, 3)
    bias = halves(3) if with_bias else np.zeros(0, np.float32)
    geometry = (3, 3, 1, 1, 0, 0, height, 6)
    kernel2d = kernel.reshape(-1, 3)
    y, argmax = np.empty((2, height // 2, 3, 3), np.float32), np.empty((2, height // 2, 3, 3), np.int32)
    cpu_conv.direct_conv_maxpool_forward(x, kernel2d, bias, code, *geometry, 2, 2, y, argmax)
    x_dev, kernel2d_dev = dev(x), dev(kernel2d)
    y_dev, argmax_dev = cuda.device_array_like(y), cuda.device_array_like(argmax)
    gpu_conv.direct_conv_maxpool_forward(x_dev, kernel2d_dev, dev(bias), code, *geometry, 2, 2, y_dev, argmax_dev)
    close(y_dev, y)
    np.testing.assert_array_equal(argmax_dev.copy_to_host(), argmax)
    dy, dkernel, dbias = rand(rng, *y.shape), rand(rng, *kernel2d.shape), rand(rng, 3) if with_bias else bias
    dkernel_dev, dbias_dev, dx = dev(dkernel), dev(dbias), np.empty_like(x)
    cpu_conv.direct_conv_maxpool_backward(x, kernel2d, dy, argmax, y, code, *geometry, 2, 2, dkernel, dbias, True, dx)
    dx_dev = dev(np.full_like(x, np.nan))
    gpu_conv.direct_conv_maxpool_backward(x_dev, kernel2d_dev, dev(dy), argmax_dev, y_dev, code, *geometry, 2, 2,
                                          dkernel_dev, dbias_dev, True, dx_dev)
    close(dkernel_dev, dkernel, SUM_RTOL, SUM_ATOL)
    close(dbias_dev, dbias, SUM_RTOL, SUM_ATOL)
    close(dx_dev, dx, SUM_RTOL, SUM_ATOL)
    # The pool-only pair, as the im2col path runs it.
    z = rand(rng, 2, height, 6, 3)
    cpu_pool.bias_activation_maxpool(z, bias, code, 2, 2, y, argmax)
    gpu_pool.bias_activation_maxpool(dev(z), dev(bias), code, 2, 2, y_dev, argmax_dev)
    close(y_dev, y)
    np.testing.assert_array_equal(argmax_dev.copy_to_host(), argmax)
    dz, dz_dev = np.empty_like(z), dev(np.full_like(z, np.nan))
    cpu_pool.maxpool_activation_backward(dy, argmax, y, code, 2, 2, dz, dbias)
    gpu_pool.maxpool_activation_backward(dev(dy), argmax_dev, y_dev, code, 2, 2, dz_dev, dbias_dev)
    close(dz_dev, dz)
    close(dbias_dev, dbias, SUM_RTOL, SUM_ATOL)


@sim_only
@pytest.mark.parametrize("pool, strides, padding", POOL_CASES)
def test_avgpool(pool, strides, padding):
    rng = np.random.default_rng(10)
    x = rand(rng, 2, 5, 6, 2)
    out_h, out_w, top, left = cpu_conv.output_geometry(5, 6, pool, strides, padding)
    window = (*pool, *strides, top, left)
    y = np.empty((2, out_h, out_w, 2), np.float32)
    cpu_pool.avgpool_forward(x, *window, y)
    y_dev = cuda.device_array_like(y)
    gpu_pool.avgpool_forward(dev(x), *window, y_dev)
    close(y_dev, y)
    dy, dx = rand(rng, *y.shape), np.empty_like(x)
    cpu_pool.avgpool_backward(dy, *window, dx)
    dx_dev = dev(np.full_like(x, np.nan))
    gpu_pool.avgpool_backward(dev(dy), *window, dx_dev)
    close(dx_dev, dx)


@sim_only
@pytest.mark.parametrize("code, alpha", [(LINEAR, 0.0), (RELU, 0.0), (LEAKY_RELU, 0.2), (TANH, 0.0)])
def test_batchnorm_train_forward_and_backward(code, alpha):
    """With the activation of an Activation layer after it (run in the same kernels)."""
    rng = np.random.default_rng(11)
    rows, channels, eps = 13, 3, 1e-3
    x = rand(rng, rows, channels) * 2 + 1
    gamma, beta = rand(rng, channels), rand(rng, channels)
    y = np.empty_like(x)
    mean, variance = np.empty(channels, np.float32), np.empty(channels, np.float32)
    inv_std = cpu_norm.batchnorm_train_forward(x, gamma, beta, eps, code, alpha, y, mean, variance)
    x_dev, y_dev = dev(x), cuda.device_array_like(x)
    mean_dev, variance_dev = cuda.device_array(channels, np.float32), cuda.device_array(channels, np.float32)
    gamma_dev = dev(gamma)
    inv_std_dev = gpu_norm.batchnorm_train_forward(x_dev, gamma_dev, dev(beta), eps, code, alpha, y_dev,
                                                   mean_dev, variance_dev)
    close(mean_dev, mean, SUM_RTOL, SUM_ATOL)
    close(variance_dev, variance, SUM_RTOL, SUM_ATOL)
    close(inv_std_dev, inv_std, SUM_RTOL, SUM_ATOL)
    close(y_dev, y, SUM_RTOL, SUM_ATOL)

    dy, dgamma, dbeta = rand(rng, rows, channels), rand(rng, channels), rand(rng, channels)
    dgamma_dev, dbeta_dev, dx_dev = dev(dgamma), dev(dbeta), cuda.device_array_like(x)
    dx = np.empty_like(x)
    cpu_norm.batchnorm_backward(dy, y, code, alpha, x, mean, gamma, beta, inv_std, dgamma, dbeta, dx)
    gpu_norm.batchnorm_backward(dev(dy), y_dev, code, alpha, x_dev, mean_dev, gamma_dev, dev(beta), inv_std_dev,
                                dgamma_dev, dbeta_dev, dx_dev)
    close(dgamma_dev, dgamma, SUM_RTOL, SUM_ATOL)
    close(dbeta_dev, dbeta, SUM_RTOL, SUM_ATOL)
    close(dx_dev, dx, SUM_RTOL, SUM_ATOL)


@sim_only
@pytest.mark.parametrize("code, alpha", [(LINEAR, 0.0), (RELU, 0.0), (SIGMOID, 0.0)])
def test_batchnorm_infer_forward_and_backward(code, alpha):
    rng = np.random.default_rng(12)
    rows, channels, eps = 13, 3, 1e-3
    x, gamma, beta = rand(rng, rows, channels), rand(rng, channels), rand(rng, channels)
    moving_mean, moving_variance = rand(rng, channels), rng.uniform(0.5, 2.0, channels).astype(np.float32)
    stats = [dev(a) for a in (gamma, beta, moving_mean, moving_variance)]
    y = np.empty_like(x)
    cpu_norm.batchnorm_infer(x, gamma, beta, moving_mean, moving_variance, eps, code, alpha, y)
    y_dev = cuda.device_array_like(x)
    gpu_norm.batchnorm_infer(dev(x), *stats, eps, code, alpha, y_dev)
    close(y_dev, y)

    dy, dgamma, dbeta = rand(rng, rows, channels), rand(rng, channels), rand(rng, channels)
    dgamma_dev, dbeta_dev, dx_dev = dev(dgamma), dev(dbeta), cuda.device_array_like(x)
    dx = np.empty_like(x)
    cpu_norm.batchnorm_infer_backward(dy, y, code, alpha, x, gamma, beta, moving_mean, moving_variance, eps, dgamma,
                                      dbeta, dx)
    gpu_norm.batchnorm_infer_backward(dev(dy), y_dev, code, alpha, dev(x), stats[0], stats[1], stats[2], stats[3],
                                      eps, dgamma_dev, dbeta_dev, dx_dev)
    close(dgamma_dev, dgamma, SUM_RTOL, SUM_ATOL)
    close(dbeta_dev, dbeta, SUM_RTOL, SUM_ATOL)
    close(dx_dev, dx)


NO_LABELS, NO_TARGETS, EPSILON = np.zeros(0, np.int64), np.zeros((0, 0), np.float32), 1e-7


def _loss_case(name, sparse, weighted=False):
    """(CPU kernel, GPU launcher, CPU args, with the grad array last)."""
    rng = np.random.default_rng(13)
    rows, classes = 5, 4
    logits = rand(rng, rows, classes)
    probs = rng.uniform(0.02, 0.98, (rows, classes)).astype(np.float32)
    probs[0, 0], probs[1, 1] = 0.0, 1.0  # clipped: zero gradient
    labels = rng.integers(0, classes, rows).astype(np.int64)
    onehot = np.eye(classes, dtype=np.float32)[labels]
    binary = rng.integers(0, 2, (rows, classes)).astype(np.float32)
    grad = np.empty((rows, classes), np.float32)
    weights = rng.uniform(0.0, 2.0, rows).astype(np.float32) if weighted else np.zeros(0, np.float32)
    tied = probs.copy()
    tied[0] = logits[0]  # zero differences: a zero gradient
    args = {
        "softmax_crossentropy_from_logits": (logits, NO_TARGETS, labels, weights, grad) if sparse
        else (logits, onehot, NO_LABELS, weights, grad),
        "crossentropy_from_probabilities": (probs, NO_TARGETS, labels, weights, EPSILON, grad) if sparse
        else (probs, onehot, NO_LABELS, weights, EPSILON, grad),
        "sigmoid_crossentropy_from_logits": (logits, binary, weights, grad),
        "binary_crossentropy_from_probabilities": (probs, binary, weights, EPSILON, grad),
        "mean_squared_error": (logits, probs, weights, grad),
        "mean_absolute_error": (logits, tied, weights, grad),
        "huber": (logits, tied, weights, 1.5, grad),
        "mean_squared_logarithmic_error": (logits, tied, weights, EPSILON, grad),
        "mean_absolute_percentage_error": (logits, tied, weights, EPSILON, grad),
    }[name]
    return getattr(cpu_losses, name), getattr(gpu_losses, name), args


@sim_only
@pytest.mark.parametrize("name, sparse", [("softmax_crossentropy_from_logits", True),
                                          ("softmax_crossentropy_from_logits", False),
                                          ("crossentropy_from_probabilities", True),
                                          ("crossentropy_from_probabilities", False),
                                          ("sigmoid_crossentropy_from_logits", False),
                                          ("binary_crossentropy_from_probabilities", False),
                                          ("mean_squared_error", False),
                                          ("mean_absolute_error", False), ("huber", False),
                                          ("mean_squared_logarithmic_error", False),
                                          ("mean_absolute_percentage_error", False)])
@pytest.mark.parametrize("weighted", [False, True])
def test_losses(name, sparse, weighted):
    cpu_kernel, gpu_kernel, args = _loss_case(name, sparse, weighted)
    total = cpu_kernel(*args)
    gpu_args = [a if np.isscalar(a) else dev(a) for a in args]
    gpu_args[-1] = cuda.device_array_like(args[-1])
    gpu_total = gpu_kernel(*gpu_args)
    assert isinstance(gpu_total, float)
    np.testing.assert_allclose(gpu_total, total, rtol=TOTAL_RTOL)
    close(gpu_args[-1], args[-1])
    # Kept on the device when asked.
    total_out = cuda.device_array(1, np.float64)
    assert gpu_kernel(*gpu_args, total_out=total_out) is total_out
    np.testing.assert_allclose(total_out.copy_to_host()[0], total, rtol=TOTAL_RTOL)


@sim_only
def test_penalty_and_gradient():
    rng = np.random.default_rng(14)
    weights, grads = rand(rng, 37), rand(rng, 37)
    weights[[3, 10]] = 0.0  # sign(0) = 0
    expected_grads = grads.copy()
    total = cpu_reg.penalty_and_gradient(weights, 0.01, 0.02, expected_grads)
    grads_dev = dev(grads)
    gpu_total = gpu_reg.penalty_and_gradient(dev(weights), 0.01, 0.02, grads_dev)
    np.testing.assert_allclose(gpu_total, total, rtol=TOTAL_RTOL)
    close(grads_dev, expected_grads)


def _optimizer_cases():
    return [
        ("sgd_update", 1, (0.1, 0.0, False)),
        ("sgd_update", 1, (0.1, 0.9, False)),
        ("sgd_update", 1, (0.1, 0.9, True)),
        ("adam_update", 2, (0.01, 0.9, 0.999, 1e-7, 0.0)),
        ("adam_update", 2, (0.01, 0.9, 0.999, 1e-7, 4e-5)),
        ("rmsprop_update", 3, (0.01, 0.9, 0.0, 1e-7, False)),
        ("rmsprop_update", 3, (0.01, 0.9, 0.5, 1e-7, False)),
        ("rmsprop_update", 3, (0.01, 0.8, 0.5, 1e-5, True)),
        ("adagrad_update", 1, (0.01, 1e-7)),
        ("adadelta_update", 2, (1.0, 0.95, 1e-7)),
        ("adamax_update", 2, (0.01, 0.9, 0.999, 1e-7)),
        ("nadam_update", 2, (0.01, 0.9, 0.999, 0.5, 0.1, 1.2, 1e-7)),
    ]


@sim_only
@pytest.mark.parametrize("name, slots, hyper", _optimizer_cases())
def test_optimizers(name, slots, hyper):
    rng = np.random.default_rng(15)
    n = 101
    params, grads = rand(rng, n), rand(rng, n)
    state = [np.abs(rand(rng, n)) * 0.1 for _ in range(slots)]
    if name == "rmsprop_update":
        state[1][:] = 0.0  # the gradient's running mean from zero, so mean square >= its square (centered)
    devs = [dev(a) for a in (params, grads, *state)]
    for _ in range(2):  # two steps, so the slots' updates matter
        getattr(cpu_optim, name)(params, grads, *state, *hyper)
        getattr(gpu_optim, name)(*devs, *hyper)
    for got, expected in zip([devs[0]] + devs[2:], [params] + state):
        close(got, expected)


@sim_only
@pytest.mark.parametrize("name, slots, hyper", _optimizer_cases())
def test_optimizers_change_nothing_while_halted(name, slots, hyper):
    rng = np.random.default_rng(16)
    params, grads = rand(rng, 37), rand(rng, 37)
    state = [np.abs(rand(rng, 37)) for _ in range(slots)]
    devs = [dev(a) for a in (params, grads, *state)]
    getattr(gpu_optim, name)(*devs, *hyper, halt=dev(np.array([3], np.int32)))
    for got, expected in zip([devs[0]] + devs[2:], [params] + state):
        close(got, expected, rtol=0, atol=0)


@sim_only
# The mask's hash wraps around by design; the simulator runs it in NumPy scalars, which warn.
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
def test_moving_averages_dropout_mask_and_rescaling():
    rng = np.random.default_rng(17)
    moving = [np.abs(rand(rng, 5)) for _ in range(2)]
    batch = [np.abs(rand(rng, 5)) for _ in range(2)]
    moving_dev = [dev(a) for a in moving]
    cpu_norm.update_moving_averages(*moving, *batch, 0.9)
    gpu_norm.update_moving_averages(*moving_dev, *(dev(a) for a in batch), 0.9)
    for got, expected in zip(moving_dev, moving):
        close(got, expected)
    values, key = rand(rng, 70), np.uint64(0xDEADBEEF12345678)
    threshold, scale = np.uint32(0.4 * 2 ** 32), np.float32(1 / 0.6)
    out = np.empty_like(values)
    out_dev = dev(out)
    cpu_dropout.apply_mask(values, key, threshold, scale, out)
    gpu_dropout.apply_mask(dev(values), key, threshold, scale, out_dev)
    # SplitMix64's finaliser, written out in Python integers: the kernels' bits exactly.
    full = (1 << 64) - 1
    bits = []
    for i in range(len(values)):
        z = (int(key) + (i + 1) * 0x9E3779B97F4A7C15) & full
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & full
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & full
        bits.append((z ^ (z >> 31)) >> 32)
    kept = np.array(bits) >= int(threshold)
    assert 0 < kept.sum() < len(values)
    np.testing.assert_array_equal(out, np.where(kept, values * scale, 0))
    close(out_dev, out, rtol=0, atol=0)
    cpu_rescaling.scale_shift(values, 1 / 255, -0.5, out)
    gpu_rescaling.scale_shift(dev(values), 1 / 255, -0.5, out_dev)
    close(out_dev, out, rtol=0, atol=0)


@sim_only
@pytest.mark.parametrize("horizontal, vertical", [(True, False), (False, True), (True, True)])
def test_flip_images(horizontal, vertical):
    rng = np.random.default_rng(19)
    x, flips = rand(rng, 4, 3, 5, 2), np.array([1, 0, 1, 1], np.uint8)
    expected = np.empty_like(x)
    cpu_flip.flip_images(x, flips, horizontal, vertical, expected)
    out_dev = cuda.device_array_like(x)
    gpu_flip.flip_images(dev(x), dev(flips), horizontal, vertical, out_dev)
    close(out_dev, expected, rtol=0, atol=0)


@sim_only
def test_upsampling():
    rng = np.random.default_rng(20)
    x = rand(rng, 2, 3, 4, 5)
    y, y_dev = np.empty((2, 6, 12, 5), np.float32), cuda.device_array((2, 6, 12, 5), np.float32)
    cpu_upsampling.upsample_forward(x, 2, 3, y)
    gpu_upsampling.upsample_forward(dev(x), 2, 3, y_dev)
    close(y_dev, y, rtol=0, atol=0)
    dy = rand(rng, 2, 6, 12, 5)
    dx, dx_dev = np.empty_like(x), cuda.device_array_like(x)
    cpu_upsampling.upsample_backward(dy, 2, 3, dx)
    gpu_upsampling.upsample_backward(dev(dy), 2, 3, dx_dev)
    close(dx_dev, dx, rtol=0, atol=0)  # the same sum in the same order


@sim_only
def test_gather_rows_and_fill_zero():
    rng = np.random.default_rng(18)
    source = rand(rng, 9, 7)
    order = rng.permutation(9).astype(np.int64)
    out, out_dev = np.empty((4, 7), np.float32), dev(np.empty((4, 7), np.float32))
    cpu_training.gather_rows(source, order, 3, out)
    gpu_training.gather_rows(dev(source), dev(order), 3, out_dev)
    np.testing.assert_array_equal(out, source[order[3:7]])
    close(out_dev, out, rtol=0, atol=0)
    values = dev(rand(rng, 75))
    gpu_training.fill_zero(values)
    close(values, np.zeros(75, np.float32), rtol=0, atol=0)


@sim_only
def test_add_into():
    rng = np.random.default_rng(19)
    total, values = rand(rng, 75), rand(rng, 75)
    total_dev = dev(total)
    expected = total + values
    cpu_training.add_into(total, values)
    gpu_training.add_into(total_dev, dev(values))
    np.testing.assert_array_equal(total, expected)
    close(total_dev, expected, rtol=0, atol=0)


@sim_only
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # inf * 0, on purpose
@pytest.mark.parametrize("bad_at", [None, "total", 0, 40, 99])
def test_check_finite(bad_at):
    values, total = np.ones(100, np.float32), np.array([2.5])
    if bad_at == "total":
        total[0] = np.nan
    elif bad_at is not None:
        values[bad_at] = np.inf if bad_at % 2 else np.nan
    expected = 0 if bad_at is None else 7
    for kernel, to in ((cpu_training.check_finite, np.asarray), (gpu_training.check_finite, dev)):
        halt = to(np.zeros(1, np.int32))
        kernel(to(values), to(total), 7, halt)
        kernel(to(values), to(total), 8, halt)  # an earlier halt is never overwritten
        close(halt, np.array([expected], np.int32), rtol=0, atol=0)


@sim_only
@pytest.mark.parametrize("case", ["sparse", "one_hot", "single_unit"])
def test_count_correct(case):
    from nbnet.metrics import correct_count

    rng = np.random.default_rng(19)
    width = 1 if case == "single_unit" else 4
    outputs = rng.random((37, width)).astype(np.float32)
    if case == "sparse":
        targets = rng.integers(0, width, 37)
    else:
        targets = (rng.random((37, width)) > 0.5).astype(np.float32)
    sparse = case == "sparse"
    if width > 1:  # an independent reference for the argmax cases
        expected_rows = targets if sparse else targets.argmax(axis=1)
        assert correct_count(outputs, targets, sparse) == np.count_nonzero(outputs.argmax(axis=1) == expected_rows)
    else:
        assert correct_count(outputs, targets, sparse) == np.count_nonzero((outputs > 0.5) == (targets > 0.5))
    labels = dev(targets) if sparse else dev(np.zeros(0, np.int64))
    rows = dev(np.zeros((0, 0), np.float32)) if sparse else dev(targets)
    out = dev(np.zeros(1))
    gpu_training.count_correct(dev(outputs), labels, rows, 0.5, out)
    close(out, np.array([correct_count(outputs, targets, sparse)]), rtol=0, atol=0)


@sim_only
def test_zero_padding_forward_and_backward():
    rng = np.random.default_rng(31)
    x = rand(rng, 2, 3, 4, 5)
    y, y_dev = np.empty((2, 6, 5, 5), np.float32), dev(np.full((2, 6, 5, 5), 7.0, np.float32))
    cpu_padding.zero_pad_forward(x, 2, 1, y)
    gpu_padding.zero_pad_forward(dev(x), 2, 1, y_dev)
    close(y_dev, y, rtol=0, atol=0)
    dy = rand(rng, 2, 6, 5, 5)
    dx, dx_dev = np.empty_like(x), dev(np.zeros_like(x))
    cpu_padding.zero_pad_backward(dy, 2, 1, dx)
    gpu_padding.zero_pad_backward(dev(dy), 2, 1, dx_dev)
    close(dx_dev, dx, rtol=0, atol=0)


@sim_only
def test_gradient_clipping_and_weight_decay():
    rng = np.random.default_rng(32)
    grads = rand(rng, 30) * 3
    offsets = np.array([0, 7, 7, 30], np.int64)  # an empty weight array too
    for clip in ("value", "norm"):
        expected, got = grads.copy(), dev(grads)
        if clip == "value":
            cpu_optim.clip_by_value(expected, 0.5)
            gpu_optim.clip_by_value(got, 0.5)
        else:
            cpu_optim.clip_segments_by_norm(expected, offsets, 2.0)
            gpu_optim.clip_segments_by_norm(got, offsets, 2.0)
        close(got, expected)
    params = rand(rng, 30)
    expected, got = params.copy(), dev(params)
    cpu_optim.decay_weights(expected, 0.01)
    gpu_optim.decay_weights(got, 0.01)
    close(got, expected)
    gpu_optim.decay_weights(got, 0.5, halt=dev(np.array([1], np.int32)))
    close(got, expected, rtol=0, atol=0)
