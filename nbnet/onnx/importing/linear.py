"""Gemm and MatMul, as Dense layers where the second operand is a constant."""

import numpy as np

from .common import all_const
from .registry import converter
from .values import Value, identity


def _dense(ctx, node, x, kernel, bias, output_name):
    """Dense over the last ONNX axis of ``x`` with an ONNX (K, N) ``kernel``; binds the output."""
    from ...layers import Dense

    if x.rank < 2:
        raise ctx.error(f"an input of rank {x.rank}", "inputs (batch, ..., features) to Gemm and MatMul")
    kernel = np.asarray(kernel, np.float32)
    if x.rows is not None:
        kernel = kernel[x.rows]
    elif x.rank > 2:  # Dense works on nbnet's last axis: bring the ONNX one there
        x = ctx.relayout(x, identity(x.rank))
    units = kernel.shape[1]
    extra, output_name = ctx.absorb_bias(output_name, x.rank - 1, x.rank, units)
    if extra is not None:
        bias = extra if bias is None else bias + extra
    layer = ctx.named(Dense, units, use_bias=bias is not None)
    weights = [kernel] + ([bias] if bias is not None else [])
    ctx.bind(output_name, Value(ctx.call(layer, x.tensor, weights), identity(x.rank)))
    return output_name


def _gemm(ctx, node, inputs, broadcast_attr):
    a, b = inputs[0], inputs[1]
    c = inputs[2] if len(inputs) > 2 else None
    attrs = ctx.attributes(node)
    alpha, beta = float(attrs.get("alpha", 1.0)), float(attrs.get("beta", 1.0))
    trans_a, trans_b = int(attrs.get("transA", 0)), int(attrs.get("transB", 0))
    if all_const(inputs):
        def gemm(a, b, c=None):
            a, b = (a.T if trans_a else a), (b.T if trans_b else b)
            y = alpha * (a @ b)
            return y if c is None else y + beta * c
        return ctx.fold(gemm, [a, b, c])
    ctx.dynamic(a, "input A")
    if trans_a:
        raise ctx.error("transA=1 on a computed input", "transA=0 for the computed input A")
    kernel = ctx.constant(b, "input B (the weights)").astype(np.float32)
    kernel = alpha * (kernel.T if trans_b else kernel)
    bias = None
    if c is not None:
        carray = beta * np.asarray(ctx.constant(c, "input C (the bias)"), np.float32)
        units = kernel.shape[1]
        if carray.ndim > 2 or (carray.ndim == 2 and carray.shape[0] != 1) or carray.size not in (1, units):
            raise ctx.error(f"C of shape {carray.shape}", "C of shape (), (N,), (1, N) or (1, 1)")
        bias = np.broadcast_to(carray.reshape(-1), (units,)).astype(np.float32)
    _dense(ctx, node, a, kernel, bias, node.output[0])
    return None


@converter("Gemm", since=1)
def gemm(ctx, node, inputs):
    return _gemm(ctx, node, inputs, True)


@converter("MatMul", since=1)
def matmul(ctx, node, inputs):
    a, b = inputs
    if all_const(inputs):
        return ctx.fold(np.matmul, inputs)
    ctx.dynamic(a, "input A")
    kernel = ctx.constant(b, "input B (the weights)")
    if kernel.ndim != 2:  # a stack of weight matrices would mix samples' positions with matrices
        raise ctx.error(f"a weight of rank {kernel.ndim}", "2-D weights (K, N)")
    _dense(ctx, node, a, kernel, None, node.output[0])
    return None
