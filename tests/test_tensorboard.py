"""The TensorBoard callback's event files: framing and CRCs checked by a decoder written
here from the TFRecord and Event definitions, and, where the tensorboard package is
installed, read back by TensorBoard's own EventAccumulator."""

import struct

import numpy as np
import pytest

from nbnet import callbacks, layers, models
from nbnet.errors import NbnetError


def crc32c_bitwise(data):
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 * (crc & 1))
    return crc ^ 0xFFFFFFFF


def masked(data):
    crc = crc32c_bitwise(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def read_varint(data, at):
    value = shift = 0
    while True:
        byte = data[at]
        value |= (byte & 0x7F) << shift
        at, shift = at + 1, shift + 7
        if not byte & 0x80:
            return value, at


def fields(data):
    """(field number, value) of a protobuf message: bytes for length-delimited fields."""
    at, out = 0, []
    while at < len(data):
        key, at = read_varint(data, at)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, at = read_varint(data, at)
        elif wire == 1:
            value, at = struct.unpack("<d", data[at:at + 8])[0], at + 8
        elif wire == 5:
            value, at = struct.unpack("<f", data[at:at + 4])[0], at + 4
        else:
            length, at = read_varint(data, at)
            value, at = data[at:at + length], at + length
        out.append((number, value))
    return out


def read_events(path):
    data, at, events = path.read_bytes(), 0, []
    while at < len(data):
        header = data[at:at + 8]
        (length,) = struct.unpack("<Q", header)
        assert struct.unpack("<I", data[at + 8:at + 12])[0] == masked(header)
        payload = data[at + 12:at + 12 + length]
        assert struct.unpack("<I", data[at + 12 + length:at + 16 + length])[0] == masked(payload)
        events.append(dict(fields(payload)))
        at += 16 + length
    return events


def scalars(events):
    """{tag: [(step, value)]} from the events' summaries."""
    out = {}
    for event in events:
        if 5 in event:
            for number, value in fields(event[5]):
                tag_value = dict(fields(value))
                out.setdefault(tag_value[1].decode(), []).append((event[2], tag_value[2]))
    return out


def trained(tmp_path):
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((40, 4)).astype(np.float32), rng.integers(0, 3, 40)
    model = models.Sequential([layers.Dense(3, activation="softmax", input_shape=(4,))], seed=0)
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(x, y, epochs=3, batch_size=10, verbose=0, validation_split=0.25,
                        callbacks=[callbacks.TensorBoard(log_dir=tmp_path / "logs")])
    return history.history


def test_event_files_hold_each_epochs_scalars(tmp_path):
    history = trained(tmp_path)
    (train_file,) = (tmp_path / "logs" / "train").glob("events.out.tfevents.*")
    (val_file,) = (tmp_path / "logs" / "validation").glob("events.out.tfevents.*")
    events = read_events(train_file)
    assert events[0][3] == b"brain.Event:2"  # the file version record TensorBoard expects first
    train = scalars(events)
    assert sorted(train) == ["epoch_accuracy", "epoch_learning_rate", "epoch_loss"]
    assert [step for step, _ in train["epoch_loss"]] == [0, 1, 2]
    np.testing.assert_allclose([v for _, v in train["epoch_loss"]], history["loss"], rtol=1e-6)
    np.testing.assert_allclose([v for _, v in train["epoch_learning_rate"]], 0.001, rtol=1e-6)
    validation = scalars(read_events(val_file))
    assert sorted(validation) == ["epoch_accuracy", "epoch_loss"]
    np.testing.assert_allclose([v for _, v in validation["epoch_accuracy"]], history["val_accuracy"], rtol=1e-6)


def test_tensorboard_itself_reads_them(tmp_path):
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    history = trained(tmp_path)
    reader = accumulator.EventAccumulator(str(tmp_path / "logs" / "validation"))
    reader.Reload()
    assert sorted(reader.Tags()["scalars"]) == ["epoch_accuracy", "epoch_loss"]
    np.testing.assert_allclose([e.value for e in reader.Scalars("epoch_loss")], history["val_loss"], rtol=1e-6)


def test_unsupported_options_are_refused():
    with pytest.raises(NbnetError, match="histogram_freq"):
        callbacks.TensorBoard(histogram_freq=1)
