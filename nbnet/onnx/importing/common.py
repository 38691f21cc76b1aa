"""Helpers every converter module shares."""

import numpy as np

from .values import Const, identity

ONNX_DTYPES = {1: np.float32, 2: np.uint8, 3: np.int8, 4: np.uint16, 5: np.int16, 6: np.int32, 7: np.int64,
                9: np.bool_, 10: np.float16, 11: np.float64, 12: np.uint32, 13: np.uint64}


def plain(ctx, x):
    """``x`` without a pending Flatten order (only Gemm and MatMul fold ``rows``)."""
    return ctx.relayout(x, identity(x.rank)) if x.rows is not None else x


def all_const(inputs):
    return all(item is None or isinstance(item, Const) for item in inputs)


def checked_axis(ctx, axis, rank, what="axis"):
    axis = int(axis)
    if not -rank <= axis < rank:
        raise ctx.error(f"{what} {axis} is outside a tensor of rank {rank}")
    return axis % rank

