"""A compiled kernel as a first-class function, for parallel loops that call it by address.

Numba links every function a kernel calls into the kernel's own machine code and runs
LLVM's optimiser over the whole again. A ``parallel=True`` kernel whose prange loop calls
a large per-chunk body therefore compiles the body once on its own and optimises it
again inside the loop: the direct convolution's forward took 5.5 s to compile, 2.2 s of
it the body. Passed in as a first-class function (the address of the body compiled for
these arguments, with its type attached so Numba types it without a lookup), the body is
compiled once and the loop around it in 0.65 s. A call costs about 6 us more (a
one-image direct conv 10.6 -> 16.8 us: 4.8 us Numba's unboxing of the function, which
reads its address through a Python call, and 1.4 us the lookup here).

The parallel kernel takes the entry as its first argument and calls it like the body;
``launch`` makes the call.
"""

import numpy as np
from numba import typeof
from numba.core import types
from numba.core.errors import TypingError
from numba.core.types.function_type import CompileResultWAP

_entries = {}


class _Entry(CompileResultWAP):
    def __init__(self, compiled):
        super().__init__(compiled)
        # What numba.typeof returns for an object that carries it: no type inference
        # of the entry on each call.
        self._numba_type_ = types.FunctionType(compiled.signature)


def entry(body, leading, args):
    """``body`` compiled for ``leading`` (Numba types of the arguments the parallel loop
    supplies, e.g. a chunk's bounds) followed by the types of ``args``, as a first-class
    function. Looked up by the first array's dtype and contiguity only (typing every
    argument on each call took 13-22 us); ``launch`` retypes when that was not enough."""
    key = _key(body, leading, args)
    found = _entries.get(key)
    if found is None:
        found = _entries[key] = _compiled(body, leading, args)
    return found


def launch(kernel, body, leading, args, alone=None):
    """kernel(entry of ``body`` for ``args``, *args). Where some other argument's type
    differs from the one the entry was compiled for (an array of another layout), Numba
    cannot type the call, and the kernel has not run: the body is compiled for these exact
    types, kept for the next calls, and the call made again. Any other error is raised as
    it is (a kernel that ran part way must not run twice: it may have added into sums).

    ``alone``: where the parallel loop would make a single call of the body (one image),
    that call's leading values: the body is then called directly, through its own
    dispatcher (typed as any Numba call), without the parallel region and the first-class
    function's unboxing (a one-image 3x3 direct conv 16.1 -> 8.8 us)."""
    if alone is not None:
        body(*alone, *args)
        return
    try:
        kernel(entry(body, leading, args), *args)
    except (TypingError, ValueError) as error:
        # Numba's first-class function type reports the mismatch as a ValueError.
        if isinstance(error, ValueError) and "mismatch of argument types" not in str(error):
            raise
        exact = _entries[_key(body, leading, args)] = _compiled(body, leading, args)
        kernel(exact, *args)


def _key(body, leading, args):
    first = next(a for a in args if isinstance(a, np.ndarray))
    return body, leading, first.dtype.num, first.flags.c_contiguous


def _compiled(body, leading, args):
    signature = tuple(leading) + tuple(typeof(a) for a in args)
    body.compile(signature)
    return _Entry(body.overloads[signature])


CHUNK_BOUNDS = (types.int64, types.int64)
