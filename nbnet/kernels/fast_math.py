"""Elementary functions that a loop of them vectorises: no libm call (LLVM calls libm's
exp, expm1, log1p and tanh once a value: one core, 32k values in cache, ns a value, ELU
6.5 with libm's expm1 -> 0.54, softplus 10.6 with exp and log1p -> 1.4). The activation
kernels take them for float32 arrays: ELU's and softplus's in float64, rounded as from
libm's, sigmoid's and tanh's in float32 within a few ulp (float64 arrays, the gradient
checks, keep libm's own).
"""

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic


# Sigmoid and tanh of float32 values are computed in float32 (16 lanes a vector where
# float64 has 8, and a float32 division): both from exp(y) = 2^n exp(r), y = n ln2 + r,
# |r| <= ln2 / 2, exp(r) = 1 + r + r^2 q(r); tanh from x + x^3 p(x^2) below |x| = 0.625,
# where 1 - exp(-2|x|) would lose digits, and (1 - e) / (1 + e), e = exp(-2|x|), above.
# q and p are fits made for nbnet (tools/fit_float32_functions.py: least squares on the
# relative error, reweighted toward the largest; 9.4e-9 and 1.7e-8). On a sweep of 16M
# float32 values in +-20 and down to 1e-38, exp (below 80) is within 1.32 ulp of the exact
# value, tanh within 1.50, sigmoid within 3.18 (libm's tanhf within 1.6e-7, 2.7 ulp); one
# core, 128k values in cache, ns a value, against the float64 rational fit they replace
# (0.52 ulp): tanh 0.53 -> 0.43, sigmoid 0.53 -> 0.28.
_EXP_Q = tuple(np.float32(c) for c in (0.49999999549148466, 0.16666577322957749, 0.041666855828926014,
                                        0.008363140042086235, 0.0013901078002395032))
_TANH_P = tuple(np.float32(c) for c in (-0.33333328943215595, 0.13332769704939793, -0.053850906585406214,
                                         0.020997168685487438, -0.006096702349641244))
_TANH_SMALL = np.float32(0.625)
_LOG2E32 = np.float32(1.4426950408889634)
# ln 2 in two parts, the high one with 12 trailing zero bits: n * high is exact.
_LN2_HIGH32, _LN2_LOW32 = np.float32(0.693145751953125), np.float32(1.428606765330187e-06)
_SHIFT32 = np.float32(12582912.0)  # 1.5 * 2^23: adding it rounds to an integer in the low bits
# exp's argument is held to +-87: 2^n stays a normal float32 (n in -126..126).
_EXP32_MAX = np.float32(87.0)
_ONE32, _TWO32, _ZERO32 = np.float32(1.0), np.float32(2.0), np.float32(0.0)


@intrinsic
def _power_of_two(typingctx, shifted):
    """2^n as a float32, for ``shifted`` = n + 1.5 * 2^23 (n in -126..127): its low bits hold
    n, and 2^n's exponent bits are n + 127. In 32-bit integers (Numba's own integer
    arithmetic would widen them to 64 bits, half the lanes)."""
    def codegen(context, builder, signature, args):
        i32 = ir.IntType(32)
        n = builder.sub(builder.bitcast(args[0], i32), ir.Constant(i32, 0x4B400000 - 127))
        return builder.bitcast(builder.shl(n, ir.Constant(i32, 23)), ir.FloatType())
    return types.float32(types.float32), codegen


@njit(inline="always")
def exp_float32(value):
    """exp(value) in float32, within 1.32 ulp; arguments held to +-87; NaN for NaN (the
    comparisons of the clamp are false for it). No call and no float-to-integer
    conversion (of a NaN, undefined in LLVM): a loop of it vectorises."""
    y = _EXP32_MAX if value > _EXP32_MAX else value
    y = -_EXP32_MAX if y < -_EXP32_MAX else y
    shifted = y * _LOG2E32 + _SHIFT32
    n = shifted - _SHIFT32
    r = (y - n * _LN2_HIGH32) - n * _LN2_LOW32
    q0, q1, q2, q3, q4 = _EXP_Q
    q = (((q4 * r + q3) * r + q2) * r + q1) * r + q0
    return (_ONE32 + r + r * r * q) * _power_of_two(shifted)


@njit(inline="always")
def tanh_float32(value):
    """tanh(value) in float32 (see the constants above); NaN for NaN."""
    x = np.float32(value)
    a = abs(x)
    s = x * x
    p0, p1, p2, p3, p4 = _TANH_P
    small = x + x * s * ((((p4 * s + p3) * s + p2) * s + p1) * s + p0)
    e = exp_float32(-_TWO32 * a)
    large = (_ONE32 - e) / (_ONE32 + e)
    large = -large if x < _ZERO32 else large
    return small if a < _TANH_SMALL else large


@njit(inline="always")
def sigmoid_float32(value):
    """1 / (1 + exp(-value)) in float32; NaN for NaN."""
    return _ONE32 / (_ONE32 + exp_float32(-np.float32(value)))


@intrinsic
def _bits_of(typingctx, value):
    """A float64's bits as an int64 (a bitcast: LLVM vectorises it, as it cannot a libm call)."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(64))
    return types.int64(types.float64), codegen


@intrinsic
def _float_of(typingctx, bits):
    """The float64 whose bits are the int64 ``bits``."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.DoubleType())
    return types.float64(types.int64), codegen


# expm1(x) = 2^n (expm1(r) + 1) - 1 with x = n ln2 + r, |r| <= ln2 / 2; expm1(r) by its
# Taylor series to r^10 (relative error at most 7.2e-13 on a sweep: float32 results round
# as from libm's, but for ties). n comes from the rounding of x / ln2 + 1.5 * 2^52, whose
# low bits then hold it, and 2^n from its exponent bits: no float-to-int conversion (of
# a NaN, undefined in LLVM) and no call, so a loop of it vectorises.
_ROUNDING_SHIFT = 6755399441055744.0  # 1.5 * 2^52
_LN2_HIGH, _LN2_LOW = 0.6931471803691238, 1.9082149292705877e-10  # high part exact in 32 bits
_EXPM1_TERMS = tuple(1.0 / np.prod(np.arange(1.0, k + 1)) for k in range(10, 1, -1))  # 1/10! .. 1/2!


@njit(inline="always")
def _exp_parts(value):
    """(2^n, expm1(r)) with exp(value) = 2^n (expm1(r) + 1), for value <= 0 (or NaN):
    values below -700 taken as -700, above 0 as 0 (a vectorised loop computes it for
    every value, positive too)."""
    x = np.float64(value)
    x = -700.0 if x < -700.0 else x
    x = 0.0 if x > 0.0 else x
    shifted = x * 1.4426950408889634 + _ROUNDING_SHIFT
    n = shifted - _ROUNDING_SHIFT
    r = (x - n * _LN2_HIGH) - n * _LN2_LOW
    t10, t9, t8, t7, t6, t5, t4, t3, t2 = _EXPM1_TERMS
    series = ((((((((((t10 * r + t9) * r + t8) * r + t7) * r + t6) * r + t5) * r + t4) * r + t3) * r + t2) * r
               + 1.0) * r)
    return _float_of((_bits_of(shifted) - _bits_of(_ROUNDING_SHIFT) + 1023) << 52), series


@njit(inline="always")
def expm1_below_zero(value):
    """exp(value) - 1 for value <= 0 (or NaN, which it returns) in float64, within 7.2e-13
    relative: -1 far below zero, 0 above 0."""
    power, series = _exp_parts(value)
    return power * series + (power - 1.0)


# log1p(t) = 2 atanh(s), s = t / (2 + t), by atanh's series to s^23: for t in [0, 1]
# (s <= 1/3) relative error at most 1.5e-13, and no 1 + t that would lose a small t's digits.
# (To s^21, one of 180k float32 softplus values rounded otherwise than from libm's.)
_ATANH_TERMS = tuple(1.0 / k for k in range(23, 1, -2))  # 1/23, 1/21 .. 1/3


@njit(inline="always")
def fast_softplus(value):
    """log(1 + exp(value)) in float64 as softplus computes it (max(x, 0) + log1p(exp(-|x|))),
    with exp and log1p by series that a loop vectorises; NaN for NaN."""
    x = np.float64(value)
    power, series = _exp_parts(-abs(x))
    t = power * series + power  # exp(-|x|), its relative digits kept down to exp(-700)
    s = t / (2.0 + t)
    q = s * s
    odd = 0.0
    for term in _ATANH_TERMS:  # Horner's rule, highest power first
        odd = (odd + term) * q
    return (x if x > 0.0 else 0.0) + 2.0 * (s + s * odd)
