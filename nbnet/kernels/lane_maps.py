"""Small fixed linear maps over grids of float32 vectors, written in LLVM IR.

A Winograd transform maps a grid X of values (a 4x4 input patch, say) to L X R^T with
small constant matrices L and R, the same map for every channel. ``lane_map(L, R)`` gives
an intrinsic that applies it to LANES channels at once: it loads the grid's vectors (one
per grid position, from a base address and row / column strides), combines them (entries
of +-1 become additions and subtractions, others multiplications) and stores or adds the
result grid. Numba's own loops over channels (four or more input rows a pass) stayed
scalar or vectorised only past 64 channels: the F(2x2, 3x3) input transform ran at 3.2G
values a second on one core. ``masked_lane_map`` covers fewer lanes (channels past the
last whole LANES) with masked loads and stores.

Float32 only; the float64 reference path keeps Numba's loops.
"""

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

LANES = 16


def _emit_map(builder, args, left, right, accumulate, masked):
    """The IR of a lane map (see lane_map)."""
    source, source_row, source_column, target, target_row, target_column, lanes = args
    i1, i32, i64, f32 = ir.IntType(1), ir.IntType(32), ir.IntType(64), ir.FloatType()
    vector = ir.VectorType(f32, LANES)
    pointer = vector.as_pointer()
    zero = ir.Constant(vector, [0.0] * LANES)
    if masked:
        mask_type = ir.VectorType(i1, LANES)
        masked_load = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(vector, [pointer, i32, mask_type, vector]), f"llvm.masked.load.v{LANES}f32.p0")
        masked_store = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [vector, pointer, i32, mask_type]),
            f"llvm.masked.store.v{LANES}f32.p0")
        wide = ir.VectorType(i64, LANES)
        limit = builder.shuffle_vector(builder.insert_element(ir.Constant(wide, ir.Undefined), lanes, ir.Constant(i32, 0)),
                                       ir.Constant(wide, ir.Undefined), ir.Constant(ir.VectorType(i32, LANES), [0] * LANES))
        mask = builder.icmp_unsigned("<", ir.Constant(wide, list(range(LANES))), limit)

        def load(at):
            return builder.call(masked_load, [at, ir.Constant(i32, 4), mask, zero])

        def store(value, at):
            builder.call(masked_store, [value, at, ir.Constant(i32, 4), mask])
    else:
        def load(at):
            return builder.load(at, align=4)

        def store(value, at):
            builder.store(value, at, align=4)

    source = builder.inttoptr(source, f32.as_pointer())
    target = builder.inttoptr(target, f32.as_pointer())

    def address(base, row_stride, column_stride, row, column):
        offset = builder.add(builder.mul(row_stride, ir.Constant(i64, row)),
                             builder.mul(column_stride, ir.Constant(i64, column)))
        return builder.bitcast(builder.gep(base, [offset]), pointer)

    def combine(weights, values):
        total = None
        for weight, value in zip(weights, values):
            if weight == 0:
                continue
            if weight not in (1, -1):
                value = builder.fmul(value, ir.Constant(vector, [float(abs(weight))] * LANES))
            if total is None:
                total = value if weight > 0 else builder.fsub(zero, value)
            else:
                total = builder.fadd(total, value) if weight > 0 else builder.fsub(total, value)
        return zero if total is None else total

    rows_in, columns_in = left.shape[1], right.shape[1]
    grid = [[load(address(source, source_row, source_column, r, s)) for s in range(columns_in)]
            for r in range(rows_in)]
    # X R^T along each row, then L (.) down each column.
    half = [[combine(right[j], grid[r]) for j in range(right.shape[0])] for r in range(rows_in)]
    for i in range(left.shape[0]):
        for j in range(right.shape[0]):
            value = combine(left[i], [half[r][j] for r in range(rows_in)])
            at = address(target, target_row, target_column, i, j)
            store(builder.fadd(load(at), value) if accumulate else value, at)


def _make(left, right, accumulate, masked):
    left, right = np.asarray(left, np.float64), np.asarray(right, np.float64)

    @intrinsic
    def lane_map_intrinsic(typingctx, source, source_row, source_column, target, target_row, target_column, lanes):
        def codegen(context, builder, signature, args):
            _emit_map(builder, args, left, right, accumulate, masked)
            return context.get_dummy_value()

        return types.void(*([types.int64] * 7)), codegen

    return lane_map_intrinsic


def lane_map(left, right, accumulate=False):
    """An intrinsic ``(source, source_row, source_column, target, target_row,
    target_column, lanes)`` that sets (or with ``accumulate`` adds to) the grid at
    ``target`` the map L X R^T of the grid X at ``source``, LANES float32 values a
    position: X[r, s] is the vector at address source + 4 * (r * source_row + s *
    source_column), and likewise the result's positions (strides in elements, addresses
    as integers). ``lanes`` must be LANES (see masked_lane_map)."""
    return _make(left, right, accumulate, masked=False)


def masked_lane_map(left, right, accumulate=False):
    """lane_map over the first ``lanes`` lanes only (fewer than LANES): the rest of every
    vector is neither read nor written."""
    return _make(left, right, accumulate, masked=True)
