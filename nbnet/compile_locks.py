"""Each kernel compiled once across the processes of a cold start.

During a cold start a helper process compiles a model's later layers into Numba's disk
cache while this process compiles from the front (see warmup.py). Numba checks the disk
cache when a kernel is first needed, not while another process is still compiling it, so
where the two met, both compiled the same kernels (the Kaggle-style CNN's Winograd
transforms, 0.6-2.4 s each). While the helper runs, both processes take a file lock per
cached nbnet function before compiling it: the second to arrive waits for the first,
then finds its work in the cache (Numba reads the cache's index afresh on every lookup).
The same lock keeps the two from saving entries of one function's index at once (Numba
rewrites the whole index on each save).

Waits cannot go round in a circle: within a process, a file lock is only taken while
holding Numba's own compiler lock (so two threads never hold them in opposite orders);
across processes, a kernel's compile takes the locks of the functions it calls inside its
own, so locks are taken in call order, and nbnet's kernels do not call each other in a
cycle. A process that dies releases its locks (flock). Where ``fcntl`` does not exist
(Windows), nothing is locked.
"""

import hashlib
import os
import tempfile
import time

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

# No kernel compiles for anything near this long; past it the holder is taken to be stuck.
MAX_WAIT = 120.0
_POLL = 0.01
_held = set()  # the functions whose file lock this process holds
_active = False
_original_compile = None


def enable():
    """Lock nbnet's cached kernels' compiles from now on (until ``disable``)."""
    global _active, _original_compile
    if fcntl is None:
        return
    if _original_compile is None:
        from numba.core.dispatcher import Dispatcher

        _original_compile = Dispatcher.compile
        Dispatcher.compile = _compile
    _active = True


def disable():
    global _active
    _active = False


def _compile(self, sig):
    if not _active or not _locks_this(self):
        return _original_compile(self, sig)
    from numba.core.compiler_lock import global_compiler_lock

    key = self.py_func.__module__ + "." + self.py_func.__qualname__
    with global_compiler_lock:  # one thread at a time past here: _held needs no lock of its own
        held = _held
        if key in held:  # another signature of it, inside its own compile
            return _original_compile(self, sig)
        try:
            handle = open(_lock_path(key), "a+b")
        except OSError:  # no writable temporary folder: compile unlocked, as without a helper
            return _original_compile(self, sig)
        with handle:
            locked = _wait_for(handle)
            held.add(key)
            try:
                return _original_compile(self, sig)
            finally:
                held.discard(key)
                if locked:
                    fcntl.flock(handle, fcntl.LOCK_UN)


def _wait_for(handle):
    """Takes the lock; gives up after MAX_WAIT seconds (a helper that hangs must not hang
    this process: it then compiles the kernel itself). Returns whether it took it."""
    waited = 0.0
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if waited >= MAX_WAIT:
                return False
            time.sleep(_POLL)
            waited += _POLL


def _locks_this(dispatcher):
    from numba.core.caching import NullCache

    module = getattr(dispatcher.py_func, "__module__", "") or ""
    return module.startswith("nbnet.") and not isinstance(dispatcher._cache, NullCache)


def _lock_path(key):
    folder = os.path.join(tempfile.gettempdir(), f"nbnet-compile-locks-{os.getuid()}")
    os.makedirs(folder, exist_ok=True)
    return os.path.join(folder, hashlib.sha1(key.encode()).hexdigest()[:20])
