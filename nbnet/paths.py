"""Where nbnet keeps its caches, and how files are written without ever leaving half a file."""

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path


def nbnet_home() -> Path:
    """The cache directory: ``$NBNET_HOME``, else ``~/.cache/nbnet``."""
    return Path(os.environ.get("NBNET_HOME") or Path.home() / ".cache" / "nbnet")


@contextmanager
def atomic_write(path, mode="wb"):
    """Yield a temporary file beside ``path``; on success fsync it and rename it over ``path``.

    On any exception the temporary file is removed and ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        # mkstemp creates 0600; give the file the permissions a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
