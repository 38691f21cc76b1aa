"""BLAS's sgemm called from Numba kernels, so that a product split across the cores runs
on Numba's own threads.

Handing half a product to a sleeping worker thread (a queue and a futex wake-up) costs
50 us on this 2-core VM, 140 us after half a millisecond idle: more than a 128x128x128
product takes; Numba's threads spin between parallel regions and start one in 3-5 us.
Here a product is described as *jobs*, each one sgemm call on raw pointers (rows of a
row-major matrix, a transposed operand read in place, ``beta`` 0 or 1 to write or add),
spread over Numba's threads (parallel.parallel_ranges), each calling sgemm through its
address in the library NumPy itself uses, found through threadpoolctl. The address is an
argument, not a constant: the kernels stay cacheable.

Only an ILP64 OpenBLAS is called this way (NumPy's wheels bundle one as
``scipy_openblas64_``; a system OpenBLAS says so in its config). Elsewhere (Accelerate,
MKL, a 32-bit-integer build, NUMBA_DISABLE_JIT) ``address()`` is 0 and kernels/matmul.py
keeps its worker threads. A tiny product checks the call against NumPy once.
"""

import ctypes

import numba
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from .parallel import parallel_ranges, range_body

_ROW_MAJOR, PLAIN, TRANSPOSED = 101, 111, 112
# A job, one row of int64: op_a, op_b, m, n, k, a, lda, b, ldb, c, ldc, add (c = op(a) @
# op(b), or c += it with add 1); see job().
_ITEM = 4  # float32 only

_address = None


@intrinsic
def _sgemm(typingctx, address, op_a, op_b, m, n, k, a, lda, b, ldb, beta, c, ldc):
    """cblas_sgemm(RowMajor, op_a, op_b, m, n, k, 1, a, lda, b, ldb, beta, c, ldc) through
    its address; integers 64-bit (ILP64), pointers given as integers."""
    sig = types.void(*([types.int64] * 10), types.float32, types.int64, types.int64)

    def codegen(context, builder, signature, args):
        i32, i64, f32 = ir.IntType(32), ir.IntType(64), ir.FloatType()
        pointer = f32.as_pointer()
        function_type = ir.FunctionType(ir.VoidType(), [i32, i32, i32, i64, i64, i64, f32, pointer, i64, pointer,
                                                        i64, f32, pointer, i64])
        (address, op_a, op_b, m, n, k, a, lda, b, ldb, beta, c, ldc) = args
        function = builder.inttoptr(address, function_type.as_pointer())
        builder.call(function, [ir.Constant(i32, _ROW_MAJOR), builder.trunc(op_a, i32), builder.trunc(op_b, i32),
                                m, n, k, ir.Constant(f32, 1.0), builder.inttoptr(a, pointer), lda,
                                builder.inttoptr(b, pointer), ldb, beta, builder.inttoptr(c, pointer), ldc])
        return context.get_dummy_value()

    return sig, codegen


@njit(cache=True, nogil=True, inline="always")
def _run_job(address, jobs, j):
    q = jobs[j]
    _sgemm(address, q[0], q[1], q[2], q[3], q[4], q[5], q[6], q[7], q[8], np.float32(q[11]), q[9], q[10])


@range_body(nogil=True)
def _jobs(begin, end, address, jobs):
    for j in range(begin, end):
        _run_job(address, jobs, j)


@njit(cache=True, nogil=True)
def _run_jobs_parallel(address, jobs):
    parallel_ranges(_jobs, jobs.shape[0], (address, jobs))


def run(jobs):
    """Runs the jobs (an int64 array, one job a row) side by side on Numba's threads."""
    _run_jobs_parallel(_address, jobs)


def operand(x):
    """(pointer, op, leading dimension) of a float32 matrix sgemm can read where it lies
    (unit stride along one axis), or None."""
    rows, columns = x.shape
    if x.dtype != np.float32 or rows == 0 or columns == 0:
        return None
    row_stride, column_stride = x.strides
    pointer = x.ctypes.data
    if (column_stride == _ITEM or columns == 1) and row_stride % _ITEM == 0:
        lead = row_stride // _ITEM if rows > 1 else columns
        if lead >= columns:
            return pointer, PLAIN, lead
    if (row_stride == _ITEM or rows == 1) and column_stride % _ITEM == 0:
        lead = column_stride // _ITEM if columns > 1 else rows
        if lead >= rows:
            return pointer, TRANSPOSED, lead
    return None


def job(a, b, out, add):
    """The job out = a @ b (or out += a @ b with ``add``), or None where an operand is not
    float32 with a unit stride (``out`` must be row-major)."""
    left, right, result = operand(a), operand(b), operand(out)
    if left is None or right is None or result is None or result[1] != PLAIN:
        return None
    return (left[1], right[1], a.shape[0], b.shape[1], a.shape[1], left[0], left[2], right[0], right[2],
            result[0], result[2], int(add))


def address():
    """sgemm's address in NumPy's BLAS, or 0 where it cannot be called from a kernel."""
    global _address
    if _address is None:
        _address = 0
        found = _find_sgemm()
        if found:
            _address = found
            if not _agrees_with_numpy():
                _address = 0
    return _address


def _find_sgemm():
    if numba.config.DISABLE_JIT:
        return 0
    try:
        from threadpoolctl import ThreadpoolController
        libraries = ThreadpoolController().select(internal_api="openblas").lib_controllers
    except Exception:  # threadpoolctl could not inspect the process: keep the worker threads
        return 0
    for library in libraries:
        try:
            handle = ctypes.CDLL(library.filepath)
        except OSError:
            continue
        for name in ("scipy_cblas_sgemm64_", "cblas_sgemm64_"):
            function = getattr(handle, name, None)
            if function is not None:
                return ctypes.cast(function, ctypes.c_void_p).value
        if "USE64BITINT" in _openblas_config(handle):
            function = getattr(handle, "cblas_sgemm", None)
            if function is not None:
                return ctypes.cast(function, ctypes.c_void_p).value
    return 0


def _openblas_config(handle):
    function = getattr(handle, "openblas_get_config", None)
    if function is None:
        return ""
    function.restype = ctypes.c_char_p
    return (function() or b"").decode(errors="replace")


def _agrees_with_numpy():
    rng = np.random.default_rng(0)
    a, b = rng.random((5, 3), dtype=np.float32), rng.random((4, 3), dtype=np.float32)
    out = np.ones((5, 4), np.float32)
    run(np.array([job(a[:2], b.T, out[:2], True), job(a[2:], b.T, out[2:], False)], np.int64))
    return np.allclose(out, np.concatenate([1 + a[:2] @ b.T, a[2:] @ b.T]), rtol=1e-5)
