"""TensorBoard event files, written without TensorFlow: the record framing (length, data,
each with a masked CRC-32C) and the few protobuf fields of an Event holding scalar
summaries (wall_time, step, file_version, summary.value{tag, simple_value}), encoded by hand.
"""

import os
import socket
import struct
import time

_CRC32C_TABLE = []
for _byte in range(256):
    _crc = _byte
    for _ in range(8):
        _crc = (_crc >> 1) ^ 0x82F63B78 if _crc & 1 else _crc >> 1
    _CRC32C_TABLE.append(_crc)


def crc32c(data):
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC32C_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data):
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(value):
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number, wire_type):
    return _varint((number << 3) | wire_type)


def _length_delimited(number, payload):
    return _field(number, 2) + _varint(len(payload)) + payload


def event(step, wall_time, scalars=None, file_version=None):
    """An Event message: fields 1 wall_time (double), 2 step (int64), 3 file_version,
    5 summary (Summary: repeated field 1 Value {1 tag, 2 simple_value (float)})."""
    body = _field(1, 1) + struct.pack("<d", wall_time) + _field(2, 0) + _varint(int(step) & (2**64 - 1))
    if file_version is not None:
        body += _length_delimited(3, file_version.encode())
    if scalars:
        values = b"".join(_length_delimited(1, _length_delimited(1, tag.encode()) + _field(2, 5)
                                            + struct.pack("<f", float(value)))
                          for tag, value in scalars.items())
        body += _length_delimited(5, values)
    return body


def record(data):
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", masked_crc32c(length)) + data + struct.pack("<I", masked_crc32c(data))


class EventFileWriter:
    """One events.out.tfevents.* file in ``log_dir``, flushed after every write so a
    TensorBoard watching the folder sees each epoch as it ends."""

    def __init__(self, log_dir):
        os.makedirs(log_dir, exist_ok=True)
        now = time.time()
        self.path = os.path.join(log_dir, f"events.out.tfevents.{int(now)}.{socket.gethostname()}.{os.getpid()}.nbnet")
        self._file = open(self.path, "ab")
        self._write(event(0, now, file_version="brain.Event:2"))

    def _write(self, data):
        self._file.write(record(data))
        self._file.flush()

    def scalars(self, step, values):
        self._write(event(step, time.time(), scalars=values))

    def close(self):
        if not self._file.closed:
            self._file.close()
