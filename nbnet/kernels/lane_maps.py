"""Small fixed linear maps over grids of float32 vectors, written in LLVM IR.

A Winograd transform maps a grid X of values (a 4x4 input patch, say) to L X R^T with
small constant matrices L and R, the same map for every channel. ``lane_map(L, R)`` gives
an intrinsic that applies it to LANES channels at once: it loads the grid's vectors (one
per grid position, from a base address and row / column strides), combines them (entries
of +-1 become additions and subtractions, others multiplications) and stores or adds the
result grid. Numba's own loops over channels (four or more input rows a pass) stayed
scalar or vectorised only past 64 channels: the F(2x2, 3x3) input transform ran at 3.2G
values a second on one core. Pairs of inputs that several outputs combine alike are
added once (see _plan), weighted terms are fused multiply-adds. ``masked_lane_map`` covers fewer lanes (channels past the
last whole LANES) with masked loads and stores.

Float32 only; the float64 reference path keeps Numba's loops.

LANES is the float32 width of the CPU's vector registers (see vector_lanes), which
implicit_gemm's register blocks share.
"""

import os

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils, config
from numba.extending import intrinsic


def vector_lanes(features):
    """float32 lanes of a vector register on a CPU with LLVM's ``features`` ("+avx2,...",
    as NUMBA_CPU_FEATURES spells them): 16 with AVX-512's 512-bit registers, 8 with
    AVX2's 256-bit ones (or none: LLVM splits the vectors). A 16-lane vector on AVX2 is
    two registers, so blocks sized for AVX-512's 32 registers spilled on the 16 of an AMD
    EPYC (Zen 3): there the implicit GEMM ran 1.7-4.7x slower (see implicit_gemm.ROWS)."""
    return 16 if "+avx512f" in features.split(",") else 8


def _target_features():
    """The features Numba compiles for: NUMBA_CPU_FEATURES where set, else the host's."""
    if config.CPU_FEATURES:
        return config.CPU_FEATURES
    from llvmlite import binding

    return binding.get_host_cpu_features().flatten()


# NBNET_VECTOR_LANES (8 or 16) overrides the choice: the tests run the blocks at the
# width the host does not take (a 16-lane block is legal, if slower, on AVX2).
LANES = int(os.environ.get("NBNET_VECTOR_LANES") or vector_lanes(_target_features()))
if LANES not in (8, 16):
    raise ValueError(f"NBNET_VECTOR_LANES must be 8 or 16, got {LANES}")


def vector_access(builder, masked, lanes):
    """(vector type, its pointer type, zero vector, load(at), store(value, at)) for LANES
    float32 values at a time; with ``masked`` the loads and stores cover only the first
    ``lanes`` (an IR integer) lanes: the rest is neither read nor written."""
    i1, i32, i64 = ir.IntType(1), ir.IntType(32), ir.IntType(64)
    vector = ir.VectorType(ir.FloatType(), LANES)
    pointer = vector.as_pointer()
    zero = ir.Constant(vector, [0.0] * LANES)
    if not masked:
        return (vector, pointer, zero, lambda at: builder.load(at, align=4),
                lambda value, at: builder.store(value, at, align=4))
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
    return (vector, pointer, zero, lambda at: builder.call(masked_load, [at, ir.Constant(i32, 4), mask, zero]),
            lambda value, at: builder.call(masked_store, [value, at, ir.Constant(i32, 4), mask]))


def bias_and_relu(builder, load, zero, bias, relu):
    """A function of a vector: + bias[:LANES] where ``bias`` (an address) is not 0, then
    the rectifier (x if x > 0 else 0, NaN -> 0) where ``relu`` is not 0: what
    bias_activation_forward computes for LINEAR and RELU, in registers before a store."""
    i64 = ir.IntType(64)
    has_bias = builder.icmp_unsigned("!=", bias, ir.Constant(i64, 0))
    with builder.if_else(has_bias) as (then, otherwise):
        with then:
            loaded = load(builder.inttoptr(bias, zero.type.as_pointer()))
            with_bias = builder.block
        with otherwise:
            without_bias = builder.block
    shift = builder.phi(zero.type)
    shift.add_incoming(loaded, with_bias)
    shift.add_incoming(zero, without_bias)
    rectify = builder.icmp_signed("!=", relu, ir.Constant(i64, 0))

    def finish(value):
        value = builder.select(has_bias, builder.fadd(value, shift), value)
        return builder.select(rectify, builder.select(builder.fcmp_ordered(">", value, zero), value, zero), value)

    return finish


def _emit_map(builder, args, left, right, accumulate, masked, finished):
    """The IR of a lane map (see lane_map)."""
    source, source_row, source_column, target, target_row, target_column, lanes = args[:7]
    i64, f32 = ir.IntType(64), ir.FloatType()
    vector, pointer, zero, load, store = vector_access(builder, masked, lanes)
    finish = bias_and_relu(builder, load, zero, *args[7:]) if finished else (lambda value: value)
    source = builder.inttoptr(source, f32.as_pointer())
    target = builder.inttoptr(target, f32.as_pointer())

    def address(base, row_stride, column_stride, row, column):
        offset = builder.add(builder.mul(row_stride, ir.Constant(i64, row)),
                             builder.mul(column_stride, ir.Constant(i64, column)))
        return builder.bitcast(builder.gep(base, [offset]), pointer)

    fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vector, [vector] * 3), f"llvm.fma.v{LANES}f32")

    def constant(weight):
        return ir.Constant(vector, [float(weight)] * LANES)

    def apply(matrix, values):
        """matrix @ values through the shared pairs of _plan."""
        pairs, rows = _plan(matrix)
        values = list(values)
        for i, j, ratio in pairs:
            if ratio in (1, -1):
                values.append(builder.fadd(values[i], values[j]) if ratio > 0 else builder.fsub(values[i], values[j]))
            else:
                values.append(builder.call(fma, [values[j], constant(ratio), values[i]]))
        results = []
        for terms in rows:
            total = None
            for index, weight in terms.items():
                value = values[index]
                if total is None:
                    total = (value if weight == 1 else builder.fsub(zero, value) if weight == -1
                             else builder.fmul(value, constant(weight)))
                elif weight in (1, -1):
                    total = builder.fadd(total, value) if weight > 0 else builder.fsub(total, value)
                else:
                    total = builder.call(fma, [value, constant(weight), total])
            results.append(zero if total is None else total)
        return results

    rows_in, columns_in = left.shape[1], right.shape[1]
    grid = [[load(address(source, source_row, source_column, r, s)) for s in range(columns_in)]
            for r in range(rows_in)]
    # X R^T along each row, then L (.) down each column.
    half = [apply(right, grid[r]) for r in range(rows_in)]
    for j in range(right.shape[0]):
        column = apply(left, [half[r][j] for r in range(rows_in)])
        for i, value in enumerate(column):
            at = address(target, target_row, target_column, i, j)
            store(builder.fadd(load(at), value) if accumulate else finish(value), at)


def _plan(matrix):
    """matrix @ values as ``pairs`` (i, j, ratio), each a new value values[i] + ratio *
    values[j] appended to the values, and ``rows``, each {value index: weight}: pairs
    shared by two or more rows, found greedily, are computed once (F(4x4, 3x3)'s B^T: 22
    terms in 6 rows become 4 pairs and 14 terms: 12 operations instead of 16 and the
    multiplications)."""
    rows = [{j: float(w) for j, w in enumerate(row) if w != 0} for row in matrix]
    pairs = []
    while True:
        counts = {}
        for terms in rows:
            keys = sorted(terms)
            for a, i in enumerate(keys):
                for j in keys[a + 1:]:
                    key = (i, j, terms[j] / terms[i])
                    counts[key] = counts.get(key, 0) + 1
        best = max(counts, key=lambda key: (counts[key], -key[0], -key[1]), default=None)
        if best is None or counts[best] < 2:
            return pairs, rows
        i, j, ratio = best
        index = matrix.shape[1] + len(pairs)
        pairs.append(best)
        for terms in rows:
            if i in terms and j in terms and terms[j] / terms[i] == ratio:
                terms[index] = terms.pop(i)
                del terms[j]


def _make(left, right, accumulate, masked, finished):
    left, right = np.asarray(left, np.float64), np.asarray(right, np.float64)

    def codegen(context, builder, signature, args):
        _emit_map(builder, args, left, right, accumulate, masked, finished)
        return context.get_dummy_value()

    if finished:
        @intrinsic
        def finished_lane_map(typingctx, source, source_row, source_column, target, target_row, target_column, lanes,
                              bias, relu):
            return types.void(*([types.int64] * 9)), codegen

        return finished_lane_map

    @intrinsic
    def lane_map_intrinsic(typingctx, source, source_row, source_column, target, target_row, target_column, lanes):
        return types.void(*([types.int64] * 7)), codegen

    return lane_map_intrinsic


def lane_map(left, right, accumulate=False, finished=False):
    """An intrinsic ``(source, source_row, source_column, target, target_row,
    target_column, lanes)`` that sets (or with ``accumulate`` adds to) the grid at
    ``target`` the map L X R^T of the grid X at ``source``, LANES float32 values a
    position: X[r, s] is the vector at address source + 4 * (r * source_row + s *
    source_column), and likewise the result's positions (strides in elements, addresses
    as integers). ``lanes`` must be LANES (see masked_lane_map). With ``finished`` it
    takes two more arguments, ``bias`` and ``relu`` (see bias_and_relu), applied to the
    result before it is stored."""
    return _make(left, right, accumulate, False, finished)


def masked_lane_map(left, right, accumulate=False, finished=False):
    """lane_map over the first ``lanes`` lanes only (fewer than LANES): the rest of every
    vector is neither read nor written."""
    return _make(left, right, accumulate, True, finished)
