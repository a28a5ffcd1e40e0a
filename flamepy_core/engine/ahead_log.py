"""The ahead log: a group of writes made durable by one append, applied to sqlite later in bigger groups.

Why. A warm invoke's answer waits for its result's commit, and in the server that commit was the
largest single step of the path: 60 to 70 µs of CPU per invoke measured in place (sqlite's statement,
the task-count trigger and the retention index, four WAL pages, its file locks), where the same statement
in a tight loop takes 24. Appending the same statements to a file of their own is one ``write(2)``, and
it is as durable as the commit it stands for: the store runs ``synchronous=NORMAL``, where a commit is a
write into the WAL that survives a crash of the server process (the data is in the operating system's
hands) and not a power loss; an append survives and does not survive the same. So the store answers as
soon as the append returns, and applies what the log holds to sqlite in one transaction for many
results, off the answer's path (see :class:`flamepy_core.engine.store.Store`).

The file. A header, ``MAGIC`` and the 16 bytes that name the store it belongs to (a random id kept in the
store's ``ahead_applied`` row): a log is applied to its own store only, never to a new one created where
its store was moved aside. Then the records.

A record: one write's statements (a write's are applied together, or, should one of them fail for a
reason of its own, dropped together: see ``Store._isolate_ahead``). ``length (u32) | crc32 (u32) |
seq (u64)``, then ``length`` bytes: the statements, in order:
``count (u16)``, then per statement its SQL (``u32`` length + UTF-8) and its parameters (``u16`` count,
then per parameter a tag byte and its value: ``N`` None, ``i`` a signed 64-bit integer, ``f`` a double,
``s`` ``u32`` length + UTF-8, ``b`` ``u32`` length + bytes). The checksum covers the sequence number and
the statements. All little-endian. Parameters are data only: reading a record runs nothing, so a log
altered by someone else can at worst carry statements into the store, as the database file itself can.

Recovery. Every sqlite transaction that applies records also writes the last one's ``seq`` (the store's
``ahead_applied`` row), so at start the records above it are exactly those acknowledged and not applied:
they are applied in one transaction before the store serves anything. Reading stops at the first record
that is not whole or whose checksum fails (a write cut short by a full disk, or a machine that stopped
mid-write): what follows it was never acknowledged (an append that failed is cut back and its writes go
to sqlite instead).
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
import zlib
from collections.abc import Sequence
from typing import Any

from flamepy_core.privacy import open_private
from flamepy_core.wire.appends import NotCutBack, append_whole

__all__ = ["AheadLog", "ForeignLog", "NotLoggable", "decode_ops", "encode_ops", "read_records"]

log = logging.getLogger(__name__)

Op = tuple[str, tuple[Any, ...]]

SUFFIX = "-ahead"
"""The log's file is the store's name with this added (next to sqlite's own ``-wal`` and ``-shm``)."""

MAGIC = b"flamepy ahead log 1\n"
STORE_ID_BYTES = 16
_FILE_HEADER = len(MAGIC) + STORE_ID_BYTES
_HEADER = struct.Struct("<IIQ")
_SEQ = struct.Struct("<Q")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_INT = struct.Struct("<cq")
_FLOAT = struct.Struct("<cd")
_STR = struct.Struct("<cI")
_NONE = b"N"
_INT_MIN, _INT_MAX = -(1 << 63), (1 << 63) - 1


class ForeignLog(ValueError):
    """The log belongs to another store (or is not an ahead log): it must not be applied to this one."""


class NotLoggable(ValueError):
    """A statement's parameter the log does not carry (sqlite's own types only): commit it instead."""


_sql_prefixes: dict[str, bytes] = {}
"""Each statement's encoded SQL: a store runs a handful of statements, each many times."""


def _sql_prefix(sql: str) -> bytes:
    encoded = _sql_prefixes.get(sql)
    if encoded is None:
        data = sql.encode()
        encoded = _U32.pack(len(data)) + data
        if len(_sql_prefixes) < 1024:  # (statements built with values inside would not repeat)
            _sql_prefixes[sql] = encoded
    return encoded


def encode_ops(ops: Sequence[tuple[str, Sequence[Any]]]) -> bytes:
    """The statements as a record's body; :class:`NotLoggable` for a parameter of another type."""
    parts = [_U16.pack(len(ops))]
    append = parts.append
    for sql, params in ops:
        append(_sql_prefix(sql))
        append(_U16.pack(len(params)))
        for value in params:
            kind = type(value)
            if value is None:
                append(_NONE)
            elif kind is bytes:
                append(_STR.pack(b"b", len(value)))
                append(value)
            elif kind is int or kind is bool:
                if not _INT_MIN <= value <= _INT_MAX:
                    raise NotLoggable(f"an integer parameter out of sqlite's range: {value}")
                append(_INT.pack(b"i", value))
            elif kind is str:
                data = value.encode()
                append(_STR.pack(b"s", len(data)))
                append(data)
            elif kind is float:
                append(_FLOAT.pack(b"f", value))
            elif isinstance(value, (bytearray, memoryview)):
                data = bytes(value)
                append(_STR.pack(b"b", len(data)))
                append(data)
            else:
                raise NotLoggable(f"a parameter of type {kind.__name__} (sqlite's own types only)")
    return b"".join(parts)


def decode_ops(body: bytes | memoryview) -> list[Op]:
    """A record's statements; ``ValueError`` when the body is not one :func:`encode_ops` wrote."""
    view = memoryview(body)
    try:
        (count,), at = _U16.unpack_from(view, 0), _U16.size
        ops: list[Op] = []
        for _ in range(count):
            (size,) = _U32.unpack_from(view, at)
            at += _U32.size
            sql = bytes(view[at : at + size]).decode()
            at += size
            (nparams,) = _U16.unpack_from(view, at)
            at += _U16.size
            params: list[Any] = []
            for _ in range(nparams):
                tag = view[at : at + 1].tobytes()
                if tag == _NONE:
                    params.append(None)
                    at += 1
                elif tag == b"i":
                    params.append(_INT.unpack_from(view, at)[1])
                    at += _INT.size
                elif tag == b"f":
                    params.append(_FLOAT.unpack_from(view, at)[1])
                    at += _FLOAT.size
                elif tag in (b"s", b"b"):
                    size = _STR.unpack_from(view, at)[1]
                    at += _STR.size
                    if at + size > len(view):
                        raise ValueError("a parameter runs past the record")
                    data = bytes(view[at : at + size])
                    at += size
                    params.append(data.decode() if tag == b"s" else data)
                else:
                    raise ValueError(f"unknown parameter tag {tag!r}")
            ops.append((sql, tuple(params)))
    except (struct.error, UnicodeDecodeError) as exc:
        raise ValueError(f"not a record's statements: {exc}") from exc
    if at != len(view):
        raise ValueError(f"{len(view) - at} bytes after a record's statements")
    return ops


def _checksum(seq: int, body: bytes | memoryview) -> int:
    return zlib.crc32(body, zlib.crc32(_SEQ.pack(seq)))


def read_records(path: str, store_id: bytes) -> tuple[list[tuple[int, list[Op]]], int]:
    """The whole records of the log at ``path`` in order, and the bytes after the last of them that are
    not one (0 when the file ends with a whole record; no file: no records). :class:`ForeignLog` when
    the file holds records and is not the log of the store ``store_id``."""
    try:
        with open(path, "rb") as file:
            data = file.read()
    except FileNotFoundError:
        return [], 0
    if len(data) < _FILE_HEADER:  # a header cut short: nothing was appended after it
        if not MAGIC.startswith(data[: len(MAGIC)]):
            raise ForeignLog(f"{path} does not start as an ahead log does")
        return [], len(data)
    if data[: len(MAGIC)] != MAGIC:
        raise ForeignLog(f"{path} does not start as an ahead log does")
    if data[len(MAGIC) : _FILE_HEADER] != store_id and len(data) > _FILE_HEADER:
        raise ForeignLog(f"{path} holds the writes of another store")
    view = memoryview(data)
    records: list[tuple[int, list[Op]]] = []
    at, last_seq = _FILE_HEADER, 0
    while at + _HEADER.size <= len(view):
        size, crc, seq = _HEADER.unpack_from(view, at)
        body = view[at + _HEADER.size : at + _HEADER.size + size]
        if len(body) < size or seq <= last_seq or _checksum(seq, body) != crc:
            break
        try:
            ops = decode_ops(body)
        except ValueError:
            break
        records.append((seq, ops))
        last_seq = seq
        at += _HEADER.size + size
    return records, len(view) - at


class AheadLog:
    """The log's file, appended to by one thread at a time (the store's committing leader)."""

    def __init__(self, path: str, store_id: bytes) -> None:
        """A new log (the store applied and removed the one a previous server left)."""
        if len(store_id) != STORE_ID_BYTES:
            raise ValueError(f"a store id is {STORE_ID_BYTES} bytes, got {len(store_id)}")
        self.path = path
        self._header = MAGIC + store_id
        # 0600 from its creation: it holds tasks' inputs and outputs, as the store does.
        self._fd = open_private(path, os.O_WRONLY | os.O_TRUNC | os.O_APPEND)
        self.size = 0
        """Bytes in the file: its header and what was appended since it was last emptied."""
        self.broken = False
        """An append failed and could not be cut back: a part of a record ends the file, so records
        appended after it would not be read back. The store stops appending."""
        try:
            self._write_header()
        except OSError:
            os.close(self._fd)
            raise

    def _write_header(self) -> None:
        written = os.write(self._fd, self._header)
        self.size = written
        if written != len(self._header):
            raise OSError(f"only {written} of {len(self._header)} bytes of the header were written to {self.path}")

    def append(self, first_seq: int, bodies: Sequence[bytes]) -> None:
        """Append records numbered from ``first_seq``, in one write; once this returns they survive a crash
        of this process.

        ``OSError`` when they could not be written whole (the disk is full): the file is cut back to where
        it was, so no part of them stays to stop the reading of records appended later."""
        parts: list[bytes] = []
        for seq, body in enumerate(bodies, first_seq):
            parts += (_HEADER.pack(len(body), _checksum(seq, body), seq), body)
        record = b"".join(parts)
        try:
            self.size = append_whole(self._fd, record, self.size, str(self.path))
        except NotCutBack:
            self.broken = True
            raise

    def reset(self) -> None:
        """Empty the file but for its header: every record in it is applied (the store's marker says so)."""
        os.ftruncate(self._fd, 0)
        self.size = 0
        try:
            self._write_header()
        except OSError:
            self.broken = True  # (a header cut short reads as no records: nothing acknowledged is lost)
            raise

    def close(self, *, remove: bool) -> None:
        """Close the file; ``remove``: and delete it (everything in it is applied)."""
        os.close(self._fd)
        if remove:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
