"""The IDX file format of MNIST and its relatives (Fashion-MNIST, KMNIST, EMNIST), plain or gzipped.

An IDX file is a 4-byte magic ``00 00 <dtype code> <ndim>``, ``ndim`` big-endian uint32 sizes,
then the values in C order, big-endian.  http://yann.lecun.com/exdb/mnist/ describes it.
"""

import gzip
import math
import zlib
from pathlib import Path

import numpy as np

from ..errors import DatasetError
from ..paths import atomic_write

# dtype code -> big-endian numpy dtype, as the IDX spec lists them.
_DTYPES = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODES = {dtype.newbyteorder("="): code for code, dtype in _DTYPES.items()}

_GZIP_MAGIC = b"\x1f\x8b"

# The standard MNIST-format file names, in the order load_dir returns them.
STANDARD_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def read_idx(path) -> np.ndarray:
    """Read an IDX file (gzipped or not) into a native-endian array of its stored shape and dtype."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        # Sniff the content, not the name: mirrors and browsers disagree on whether ".gz" survives.
        if raw[:2] == _GZIP_MAGIC:
            raw = gzip.decompress(raw)
    except FileNotFoundError:
        raise DatasetError(f"{path}: no such file") from None
    except (OSError, EOFError, zlib.error) as exc:
        raise DatasetError(f"{path}: cannot read or decompress it: {exc}") from exc

    if len(raw) < 4 or raw[:2] != b"\0\0":
        raise DatasetError(
            f"{path}: not an IDX file: expected the magic 00 00 <dtype> <ndim>, found {raw[:4].hex(' ') or 'an empty file'}"
        )
    code, ndim = raw[2], raw[3]
    if code not in _DTYPES:
        known = ", ".join(f"0x{c:02X}" for c in _DTYPES)
        raise DatasetError(f"{path}: unknown IDX dtype code 0x{code:02X}, expected one of {known}")
    if ndim == 0:
        raise DatasetError(f"{path}: IDX header declares 0 dimensions, expected at least 1")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetError(f"{path}: truncated IDX header: expected {header} bytes for {ndim} dimensions, found {len(raw)}")

    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    dtype = _DTYPES[code]
    expected = math.prod(shape) * dtype.itemsize
    found = len(raw) - header
    if found != expected:
        problem = "truncated" if found < expected else "has trailing bytes"
        raise DatasetError(
            f"{path}: {problem}: shape {shape} of {dtype.newbyteorder('=').name} needs {expected} data bytes, found {found}"
        )
    array = np.frombuffer(raw, dtype, offset=header).reshape(shape)
    return array.astype(dtype.newbyteorder("="))  # a native, writable copy


def write_idx(path, array, compress=False) -> None:
    """Write ``array`` as an IDX file (gzipped if ``compress``), atomically."""
    array = np.asarray(array)
    native = array.dtype.newbyteorder("=")
    if native not in _CODES:
        raise DatasetError(f"{path}: IDX cannot store dtype {array.dtype}, expected one of {sorted(d.name for d in _CODES)}")
    if not 1 <= array.ndim <= 255:
        raise DatasetError(f"{path}: IDX stores 1 to 255 dimensions, found {array.ndim}")
    code = _CODES[native]
    data = (
        bytes([0, 0, code, array.ndim])
        + np.asarray(array.shape, ">u4").tobytes()
        + np.ascontiguousarray(array, _DTYPES[code]).tobytes()
    )
    if compress:
        data = gzip.compress(data, mtime=0)  # mtime=0 makes the output reproducible
    with atomic_write(path) as handle:
        handle.write(data)


def _find(directory: Path, stem: str):
    """The first existing spelling of a standard file: as named, dotted (``train-images.idx3-ubyte``), each maybe ``.gz``."""
    dotted = stem.replace("-idx", ".idx", 1)
    for name in (stem, stem + ".gz", dotted, dotted + ".gz"):
        if (directory / name).is_file():
            return directory / name
    return None


def load_dir(path):
    """Load the four standard MNIST-format files from a directory as ``((x_train, y_train), (x_test, y_test))``."""
    directory = Path(path)
    if not directory.is_dir():
        raise DatasetError(f"{directory}: not a directory (expected one holding {', '.join(STANDARD_FILES)})")
    found = {stem: _find(directory, stem) for stem in STANDARD_FILES}
    missing = [stem for stem, file in found.items() if file is None]
    if missing:
        raise DatasetError(
            f"{directory}: missing {', '.join(missing)} (each may also end in .gz, or be spelled like train-images.idx3-ubyte)"
        )
    x_train, y_train, x_test, y_test = (read_idx(found[stem]) for stem in STANDARD_FILES)
    for images, labels, images_file, labels_file in (
        (x_train, y_train, found[STANDARD_FILES[0]], found[STANDARD_FILES[1]]),
        (x_test, y_test, found[STANDARD_FILES[2]], found[STANDARD_FILES[3]]),
    ):
        if images.ndim != 3:
            raise DatasetError(f"{images_file}: expected images of shape (count, rows, cols), found shape {images.shape}")
        if labels.ndim != 1:
            raise DatasetError(f"{labels_file}: expected labels of shape (count,), found shape {labels.shape}")
        if len(images) != len(labels):
            raise DatasetError(
                f"{directory}: {images_file.name} holds {len(images)} images but {labels_file.name} holds {len(labels)} labels"
            )
    return (x_train, y_train), (x_test, y_test)
