"""Numba's threads running a compiled function over the pieces of a range, without prange.

``parallel_ranges(body, count, arguments)``, called inside a kernel, runs
``body(first, stop, *arguments)`` on each of Numba's threads, the pieces [first, stop)
contiguous and together range(count), as ``for i in prange(count)`` would split it (one
piece a thread; one call on the calling thread for a count of 1 or one thread).

Why: a ``parallel=True`` kernel goes through Numba's parfor passes and its loop body is
compiled again inside the generated gufunc, about 0.4-0.7 s of a cold start per kernel
(the implicit GEMM's forward 2.5 s with prange, 1.8 s this way; a prange over one call of
sgemm alone 0.37 s). Here the body is compiled once, as a function inside the kernel's
own code (_compiled_body), and the kernel calls it through the threading layer's
``numba_parallel_for`` (the entry point parfors call), the arguments passed as one tuple
in memory: no parfor pass, no second compile of the body, nothing per call that prange
does not do (the same threads, count from numba.set_num_threads, the GIL released while
they run).

Bodies are compiled with ``error_model="numpy"`` (a prange body is): with Python's, each
division checks for zero and no loop with one vectorises. An elementwise body indexes with
``range(np.uint64(begin), np.uint64(end))``: from a signed start LLVM cannot prove the index
is not negative, keeps Numba's wraparound for negative indices in every access and does not
vectorise (Adam over 700k values, one thread: 1.4 ms signed, 0.4 ms unsigned, as a prange
loop). Bodies must not raise: an exception inside a piece is lost, as it is in a prange.
"""

import numba
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic


@intrinsic
def _parallel_ranges(typingctx, body, count, arguments):
    def codegen(context, builder, signature, args):
        _, count, packed = args
        members = _borrowed(context, builder, arguments, packed)
        packed = context.make_tuple(builder, arguments, members)
        compiled = _compiled_body(context, builder, body.dispatcher, arguments)
        pieces = _pieces_function(context, builder.module, compiled, packed.type, len(arguments.types))
        i8p, i64 = ir.IntType(8).as_pointer(), ir.IntType(64)
        stored = cgutils.alloca_once_value(builder, packed)
        threads = builder.call(cgutils.get_or_insert_function(builder.module, ir.FunctionType(i64, []),
                                                              "get_num_threads"), [])
        threads = builder.select(builder.icmp_signed("<", count, threads), count, threads)
        with builder.if_else(builder.icmp_signed("<=", threads, ir.Constant(i64, 1))) as (alone, spread):
            with alone:
                with builder.if_then(builder.icmp_signed(">", count, ir.Constant(i64, 0))):
                    context.call_conv.call_function(builder, context.declare_function(builder.module, compiled.fndesc),
                                                    compiled.fndesc.restype, compiled.fndesc.argtypes,
                                                    [ir.Constant(i64, 0), count] + members, attrs=("noinline",))
            with spread:
                _call_parallel_for(context, builder, pieces, count, threads, builder.bitcast(stored, i8p))
        return context.get_dummy_value()

    return types.void(body, types.int64, arguments), codegen


def _compiled_body(context, builder, dispatcher, arguments):
    """The body compiled for (int64, int64, *arguments) into this kernel's own code, with
    its decorator's options (error model, fastmath...): as a subroutine, never emitted on
    its own. As the body's own dispatcher compiles it, it was emitted twice, once in its
    own library and again in every kernel that linked it (the kernels' own compile time,
    the bodies' excluded, summed to about 3.5 s of the small ResNet's 16.8 s)."""
    from numba.core import compiler

    flags = compiler.Flags()
    dispatcher.targetdescr.options.parse_as_flags(flags, dispatcher.targetoptions)
    signature = types.void(types.int64, types.int64, *arguments.types)
    return context.compile_subroutine(builder, dispatcher.py_func, signature, flags=flags)


def _borrowed(context, builder, arguments_type, packed):
    """The members of the arguments' tuple, each array's reference to its owner cut (meminfo
    and parent null, as a prange body gets them): the caller holds the arrays for the call,
    and every view a body takes would otherwise count references on its owner atomically,
    from every thread at once on one cache line (the batch norm + pool backward's partial
    sums over 32 x 28x28x32, two threads: 2.0 ms counted, 0.31 ms uncounted)."""
    members = cgutils.unpack_tuple(builder, packed, len(arguments_type.types))
    for index, member_type in enumerate(arguments_type.types):
        if isinstance(member_type, types.Array):
            array = context.make_array(member_type)(context, builder, value=members[index])
            array.meminfo = cgutils.get_null_value(array.meminfo.type)
            array.parent = cgutils.get_null_value(array.parent.type)
            members[index] = array._getvalue()
    return members


def _noalias_option():
    """Numba's ``noalias`` flag as a decorator option ({} where this Numba lacks the flag).
    A prange body gets it from the parfor pass; a plain function only through an option
    that Numba has but does not list, added here."""
    try:
        from numba.core import cpu, options
        from numba.core.compiler import Flags

        if not hasattr(Flags, "noalias"):
            return {}
        if not hasattr(cpu.CPUTargetOptions, "noalias"):
            cpu.CPUTargetOptions.noalias = options.TargetOptions.Mapping("noalias")
        return {"noalias": True}
    except (ImportError, AttributeError):
        return {}


_NOALIAS = _noalias_option()


def range_body(function=None, **options):
    """@njit(cache=True) for a body of parallel_ranges, compiled as a prange loop's body is:
    ``error_model="numpy"`` (see the module) and ``noalias``: each array argument's data
    taken not to overlap another's, so LLVM vectorises a loop over several arrays without
    run-time overlap checks, which fail for a kernel that writes in place (dz = dy: the
    activation gradient over 25088 x 32 values 0.11 ms vectorised, 0.45 ms when the check
    sends it to the scalar loop). Only for bodies whose element i is read and written at
    the same index where two arrays are one. ``options`` are Numba's others."""
    decorate = njit(cache=True, error_model="numpy", **_NOALIAS, **options)
    return decorate if function is None else decorate(function)


def _python_ranges(body, count, arguments):
    if count > 0:
        body(0, count, *arguments)


if numba.config.DISABLE_JIT:
    parallel_ranges = _python_ranges  # plain Python: one call over the whole range
else:
    from numba.np.ufunc.parallel import _launch_threads

    # The threading layer's symbols must exist before a cached kernel that calls them is
    # linked (prange kernels do the same when loaded from the cache).
    _launch_threads()
    parallel_ranges = _parallel_ranges


def _pieces_function(context, module, compiled, packed_type, members):
    """The gufunc-style function the threading layer calls: ``args[0]`` carries the first
    piece's index (its base address 0, its step 1: the layer offsets each call's pointers by
    its first item), ``args[1]`` the address of the arguments' tuple, ``args[2]`` that of
    (pieces in all, the range's length), ``dimensions[0]`` how many pieces this call
    makes; piece t of T covers [t * count // T, (t + 1) * count // T). The body is called,
    not inlined (here and on the calling thread): one copy of its code in the kernel, not
    three, for LLVM to optimise and emit."""
    i8p, i64 = ir.IntType(8).as_pointer(), ir.IntType(64)
    function_type = ir.FunctionType(ir.VoidType(), [i8p.as_pointer(), i64.as_pointer(), i64.as_pointer(), i8p])
    function = ir.Function(module, function_type, name=module.get_unique_name("nbnet_parallel_pieces"))
    function.linkage = "internal"
    builder = ir.IRBuilder(function.append_basic_block("entry"))
    pointers, dimensions, _, _ = function.args
    first_piece = builder.ptrtoint(builder.load(pointers), i64)
    piece_count = builder.load(dimensions)
    tuple_address = builder.load(builder.gep(pointers, [ir.Constant(i64, 1)]))
    values = cgutils.unpack_tuple(builder, builder.load(builder.bitcast(tuple_address, packed_type.as_pointer())),
                                  members)
    sizes = builder.bitcast(builder.load(builder.gep(pointers, [ir.Constant(i64, 2)])), i64.as_pointer())
    total, count = builder.load(sizes), builder.load(builder.gep(sizes, [ir.Constant(i64, 1)]))
    declared = context.declare_function(module, compiled.fndesc)
    with cgutils.for_range_slice(builder, first_piece, builder.add(first_piece, piece_count), ir.Constant(i64, 1),
                                 inc=True) as (piece, _):
        first = builder.sdiv(builder.mul(piece, count), total)
        stop = builder.sdiv(builder.mul(builder.add(piece, ir.Constant(i64, 1)), count), total)
        context.call_conv.call_function(builder, declared, compiled.fndesc.restype, compiled.fndesc.argtypes,
                                        [first, stop] + values, attrs=("noinline",))
    builder.ret_void()
    return function


def _call_parallel_for(context, builder, pieces, count, threads, tuple_address):
    """numba_parallel_for over ``threads`` pieces, the GIL released meanwhile."""
    i8p, i64 = ir.IntType(8).as_pointer(), ir.IntType(64)
    sizes = cgutils.alloca_once(builder, i64, size=2)
    builder.store(threads, sizes)
    builder.store(count, builder.gep(sizes, [ir.Constant(i64, 1)]))
    pointers = cgutils.alloca_once(builder, i8p, size=3)
    for index, value in enumerate((ir.Constant(i8p, None), tuple_address, builder.bitcast(sizes, i8p))):
        builder.store(value, builder.gep(pointers, [ir.Constant(i64, index)]))
    steps = cgutils.alloca_once(builder, i64, size=3)
    for index, step in enumerate((1, 0, 0)):
        builder.store(ir.Constant(i64, step), builder.gep(steps, [ir.Constant(i64, index)]))
    dimensions = cgutils.alloca_once_value(builder, threads)
    parallel_for = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [i8p] * 5 + [i64] * 3),
                                                  "numba_parallel_for")
    python = context.get_python_api(builder)
    gil = python.gil_ensure()
    state = python.save_thread()
    builder.call(parallel_for, [builder.bitcast(pieces, i8p), builder.bitcast(pointers, i8p),
                                builder.bitcast(dimensions, i8p), builder.bitcast(steps, i8p), ir.Constant(i8p, None),
                                ir.Constant(i64, 0), ir.Constant(i64, 3), threads])
    python.restore_thread(state)
    python.gil_release(gil)
