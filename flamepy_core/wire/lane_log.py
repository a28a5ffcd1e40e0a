"""The lane log: a service process's own record of the lane tasks it answered, read by the server later.

Why. A lane lets a client send its warm tasks straight to its session's service process (its instance),
past the server. The server must still record those tasks in its store, and it must not lose one whose
result a client was told: so the service process appends each lane task's result to a file of its own
*before* it answers the client, and the server reads the file afterwards (the records new since an
offset it keeps, at any time while the file is still being written to; and at its start, to recover the
tasks a crash kept it from recording), then records the tasks in its store.

Durability. An append is one ``write(2)``: once it returns, the record is in the operating system's hands.
It survives a crash of the service process and a crash of the server, not a power loss; the same as a
commit of the store, which runs ``synchronous=NORMAL`` (a commit is a write into sqlite's WAL), and the
same as the server's own ahead log (``flamepy_core.engine.ahead_log``). So a result the client was
told of is one the server will find. An append that failed, or was written only in part (a full disk, a
file size limit), is cut back to where the file ended before it, and the service process does not answer
"done": a part of a record never stays in front of records appended later.

The file. A header, then the records. The header: ``MAGIC``, the session's id (``u16`` length + UTF-8)
and the lane's grant token (``u16`` length + bytes: random bytes the server gave when it granted the
lane). The token ties the file to one grant: the server reads a log as the record of the lane it granted
only when it names that grant, and a service process refuses to append to a log another lane left
(:class:`ForeignLaneLog`).

A record: ``length (u32) | crc32 (u32)``, then ``length`` bytes of body; the checksum (``zlib.crc32``)
covers the body. The body: ``task_id (u64) | start_ms (i64) | end_ms (i64) | state (u8: 0 succeeded,
1 failed, 2 started: the task began, its result follows in a later record) | flags (u8: bit 0 input
present, bit 1 output present, bit 2 message present, bit 3 the input is in its payload file, bit 4 the
output is)``, then, for each field present, in the order input, output, message, ``u32`` length + bytes
(the message is UTF-8 text); an input or output in its payload file is a ``u64`` size instead. All
integers are little-endian. Reading a record runs nothing: its fields are data only.

Payload files. An input or output of ``FILE_BYTES`` or more is not copied into the record: it is in a
file of its own beside the log (:func:`payload_path`: the log's name, the task id, ``input`` or
``output``), written whole under its final name (to ``<name>.part``, then renamed) *before* its record is
appended, so a record never names a file that is not there. The lane's client writes a large input's file
itself and sends only its size (``LaneTask.input_size``), and reads a large output from its file (the
answer names its size); :meth:`LaneLogWriter.append` writes the file of a large payload it is given as
bytes. So a 16 MiB input crosses no socket and is copied into no message, and the server takes the very
file as its own payload file by a hard link (``flamepy_core.engine.payload_files``), where it would
otherwise read the bytes from the log and write them out again. Measured on a 2-core machine, a 16 MiB
invoke each way on a lane took about the raw two-hop floor's time this way (docs/benchmarks.md), against
1.5-1.6x through the server. The checksum covers the size, not the file; the file's size is checked when
it is taken.

Recovery. Reading stops at the first record that is not whole (a writer may be in the middle of it, or
was cut short by a full disk or a machine that stopped mid-write) or whose checksum fails: what follows
it was never acknowledged. The offset returned is that record's start, so the next read retries there
and takes the record once its writer has finished it. A service process that opens a log a crashed one
left first cuts it after its last whole record (:class:`LaneLogWriter`), so the records it appends are
read back.

The file is created owner-only (``FILE_MODE``), as everything in ``FLAME_HOME`` is: it holds the tasks'
inputs and outputs.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from flamepy_core.wire.appends import NotCutBack, append_whole
from flamepy_core.wire.payload_handoff import write_payload_file

__all__ = [
    "FILE_BYTES",
    "FILE_MODE",
    "MAGIC",
    "ForeignLaneLog",
    "IncompleteLaneLog",
    "LaneLogHeader",
    "LaneLogWriter",
    "LaneResult",
    "decode_body",
    "encode_result",
    "payload_path",
    "read_lane_log",
]

log = logging.getLogger(__name__)

MAGIC = b"flamepy lane log 1\n"
FILE_MODE = 0o600
"""Owner only: ``flamepy_core.privacy.PRIVATE_FILE_MODE`` (a sibling layer this one may not import; a test
keeps them equal)."""

_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_RECORD = struct.Struct("<II")
"""A record's header: the body's length and its crc32."""
_FIXED = struct.Struct("<QqqBB")
"""A body's fixed part: task id, start and end (ms), state, flags."""

FILE_BYTES = 1 << 20
"""An input or output this large or larger goes to a payload file of its own beside the log."""

_U64 = struct.Struct("<Q")
_SUCCEEDED, _FAILED, _STARTED = 0, 1, 2
_INPUT, _OUTPUT, _MESSAGE, _INPUT_FILE, _OUTPUT_FILE = 0x01, 0x02, 0x04, 0x08, 0x10
_FLAGS = _INPUT | _OUTPUT | _MESSAGE | _INPUT_FILE | _OUTPUT_FILE
_INPUT_BOTH, _OUTPUT_BOTH = _INPUT | _INPUT_FILE, _OUTPUT | _OUTPUT_FILE
_U16_MAX = (1 << 16) - 1
_U32_MAX = (1 << 32) - 1


class ForeignLaneLog(ValueError):
    """The file is not a lane log, or is the log of another session or another lane's grant."""


class IncompleteLaneLog(ValueError):
    """The file's header is not whole yet (a file just created): it holds no record."""


@dataclass(slots=True)
class LaneResult:
    """One lane task's result, as the service process answered it; or, with ``started``, the record that it
    began (appended before the service runs it, so the server sees it running: its input, no result)."""

    task_id: int
    start_ms: int
    end_ms: int
    succeeded: bool
    input: bytes | None
    output: bytes | None
    message: str | None
    started: bool = False
    input_size: int | None = None
    """Set when the input is in its payload file (:func:`payload_path`, ``"input"``): its size (``input`` is
    None). :meth:`LaneLogWriter.append` puts a large input there."""
    output_size: int | None = None
    """The same for the output."""


def payload_path(log_path: str | os.PathLike[str], task_id: int, field: str) -> str:
    """The payload file of task ``task_id``'s ``field`` (``"input"`` or ``"output"``) beside the log at
    ``log_path``: what a record whose payload is in its file names, implicitly."""
    return f"{os.fspath(log_path)}.{task_id}.{field}"


@dataclass(frozen=True, slots=True)
class LaneLogHeader:
    """What a lane log's header says, and where its first record starts."""

    session_id: str
    token: bytes
    records_start: int


def _encode_header(session_id: str, token: bytes) -> bytes:
    session = session_id.encode()
    if len(session) > _U16_MAX or len(token) > _U16_MAX:
        raise ValueError(f"a lane log's session id and token are at most {_U16_MAX} bytes each")
    return b"".join((MAGIC, _U16.pack(len(session)), session, _U16.pack(len(token)), bytes(token)))


def encode_result(result: LaneResult) -> bytes:
    """A whole record (its length and checksum, then its body) for ``result``; ``ValueError`` for a value
    the format does not carry (an id or a time out of range, a field of 4 GiB or more)."""
    flags = 0
    fields: list[bytes] = []
    """Each field present, as it is in the body (its length first, or the size of its file)."""
    try:
        for name, data, size, bits in (
            ("input", result.input, result.input_size, (_INPUT, _INPUT_FILE)),
            ("output", result.output, result.output_size, (_OUTPUT, _OUTPUT_FILE)),
        ):
            if data is not None and size is not None:
                raise ValueError(f"a lane result's {name} is in the record or in its file, not both")
            if data is not None:
                flags |= bits[0]
                fields += _sized(bytes(data))
            elif size is not None:
                flags |= bits[1]
                fields.append(_U64.pack(size))
        if result.message is not None:
            flags |= _MESSAGE
            fields += _sized(result.message.encode())
        state = _STARTED if result.started else _SUCCEEDED if result.succeeded else _FAILED
        fixed = _FIXED.pack(result.task_id, result.start_ms, result.end_ms, state, flags)
    except struct.error as exc:
        raise ValueError(f"a lane result the log cannot carry: {exc}") from None
    body = b"".join((fixed, *fields))
    if len(body) > _U32_MAX:
        raise ValueError(f"a lane result of {len(body)} bytes (at most {_U32_MAX})")
    return _RECORD.pack(len(body), zlib.crc32(body)) + body


def _sized(field: bytes) -> tuple[bytes, bytes]:
    """A field in the record: its ``u32`` length, then its bytes."""
    if len(field) > _U32_MAX:
        raise ValueError(f"a lane result's field of {len(field)} bytes (at most {_U32_MAX})")
    return _U32.pack(len(field)), field


def decode_body(body: bytes | memoryview) -> LaneResult:
    """The result a record's body holds; ``ValueError`` when the body is not one :func:`encode_result` wrote.

    Written out field by field: the server decodes two records per lane task (its start, its result)."""
    view = memoryview(body)
    end = len(view)
    try:
        task_id, start_ms, end_ms, state, flags = _FIXED.unpack_from(view, 0)
        if state not in (_SUCCEEDED, _FAILED, _STARTED):
            raise ValueError(f"unknown state {state}")
        if flags & ~_FLAGS:
            raise ValueError(f"unknown flags {flags:#04x}")
        if flags & _INPUT_BOTH == _INPUT_BOTH or flags & _OUTPUT_BOTH == _OUTPUT_BOTH:
            raise ValueError(f"a field both in the record and in its file (flags {flags:#04x})")
        at = _FIXED.size
        task_input = output = message = None
        input_size = output_size = None
        if flags & _INPUT_FILE:
            (input_size,) = _U64.unpack_from(view, at)
            at += 8
        if flags & _INPUT:
            task_input, at = _field(view, at, end)
        if flags & _OUTPUT_FILE:
            (output_size,) = _U64.unpack_from(view, at)
            at += 8
        if flags & _OUTPUT:
            output, at = _field(view, at, end)
        if flags & _MESSAGE:
            text, at = _field(view, at, end)
            message = text.decode()
    except (struct.error, UnicodeDecodeError) as exc:
        raise ValueError(f"not a lane result: {exc}") from exc
    if at != end:
        raise ValueError(f"{end - at} bytes after a lane result")
    return LaneResult(
        task_id,
        start_ms,
        end_ms,
        state == _SUCCEEDED,
        task_input,
        output,
        message,
        state == _STARTED,
        input_size,
        output_size,
    )


def _field(view: memoryview, at: int, end: int) -> tuple[bytes, int]:
    """A ``u32`` length and that many bytes at ``at``: the bytes, and where the next field starts."""
    (size,) = _U32.unpack_from(view, at)
    at += 4
    if at + size > end:
        raise ValueError("a field runs past the record")
    return bytes(view[at : at + size]), at + size


def _pread(fd: int, size: int, offset: int) -> bytes:
    """Up to ``size`` bytes at ``offset``: fewer only at the end of the file."""
    parts: list[bytes] = []
    while size > 0:
        chunk = os.pread(fd, size, offset)
        if not chunk:
            break
        parts.append(chunk)
        size -= len(chunk)
        offset += len(chunk)
    return b"".join(parts)


def _read_header(fd: int, path: str) -> LaneLogHeader:
    """The header of the open log ``fd``; :class:`IncompleteLaneLog`, :class:`ForeignLaneLog`."""
    head = _pread(fd, len(MAGIC) + _U16.size, 0)
    if not MAGIC.startswith(head[: len(MAGIC)]):
        raise ForeignLaneLog(f"{path} is not a lane log (it does not start with {MAGIC!r})")
    if len(head) < len(MAGIC) + _U16.size:
        raise IncompleteLaneLog(f"{path}: the lane log's header is not whole yet")
    at = len(head)
    (size,) = _U16.unpack_from(head, len(MAGIC))
    session = _pread(fd, size + _U16.size, at)
    if len(session) < size + _U16.size:
        raise IncompleteLaneLog(f"{path}: the lane log's header is not whole yet")
    at += len(session)
    (size,) = _U16.unpack_from(session, size)
    token = _pread(fd, size, at)
    if len(token) < size:
        raise IncompleteLaneLog(f"{path}: the lane log's header is not whole yet")
    try:
        session_id = session[: -_U16.size].decode()
    except UnicodeDecodeError:
        raise ForeignLaneLog(f"{path} is not a lane log (its session id is not UTF-8)") from None
    return LaneLogHeader(session_id, token, at + size)


def _scan(data: bytes) -> tuple[list[LaneResult], int]:
    """The whole, sound records at the start of ``data`` and the bytes they take."""
    view = memoryview(data)
    results: list[LaneResult] = []
    at = 0
    while at + _RECORD.size <= len(view):
        size, crc = _RECORD.unpack_from(view, at)
        body = view[at + _RECORD.size : at + _RECORD.size + size]
        if len(body) < size or zlib.crc32(body) != crc:
            break
        try:
            results.append(decode_body(body))
        except ValueError:  # (a sound checksum over a body no writer wrote: stop as for a bad one)
            break
        at += _RECORD.size + size
    return results, at


def _read_records(fd: int, header: LaneLogHeader, offset: int, path: str) -> tuple[list[LaneResult], int]:
    start = header.records_start if offset == 0 else offset
    if start < header.records_start:
        raise ValueError(f"{path}: offset {offset} is inside the lane log's header")
    size = os.fstat(fd).st_size
    if start > size:
        raise ValueError(f"{path}: offset {offset} is past the lane log's end ({size} bytes)")
    results, used = _scan(_pread(fd, size - start, start))
    return results, start + used


def read_lane_log(path: str | os.PathLike[str], offset: int = 0) -> tuple[LaneLogHeader, list[LaneResult], int]:
    """The header of the lane log at ``path``, its whole and sound records from ``offset`` on, in order, and
    the offset after the last of them (where the next read starts).

    ``offset`` 0 reads from the first record; otherwise it is an offset a read returned. Reading stops at
    the first record that is not whole or whose checksum fails (the offset returned is its start).
    ``FileNotFoundError`` when there is no file, :class:`IncompleteLaneLog` when its header is not whole,
    :class:`ForeignLaneLog` when it is not a lane log, ``ValueError`` for an offset inside the header or
    past the end of the file. The caller compares the header's session id and token with its own.
    """
    name = os.fspath(path)
    fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC)
    try:
        header = _read_header(fd, name)
        results, end = _read_records(fd, header, offset, name)
    finally:
        os.close(fd)
    return header, results, end


class LaneLogWriter:
    """The service process's side of one lane's log: appends one result at a time (one thread at a time)."""

    def __init__(self, path: str | os.PathLike[str], session_id: str, token: bytes) -> None:
        """Open the log at ``path`` for the lane ``(session_id, token)``, creating it (owner-only) if need be.

        An empty file gets the header. A file that holds one keeps its records: it must be this lane's
        (:class:`ForeignLaneLog` otherwise, the file left as it is), and it is cut after its last whole
        record (what follows was left by a writer that stopped mid-write, and was never acknowledged).
        """
        self.path = os.fspath(path)
        self.session_id = session_id
        self.token = bytes(token)
        header = _encode_header(session_id, self.token)
        self.header = LaneLogHeader(session_id, self.token, len(header))
        self.size = 0
        """Bytes in the file: its header and the records appended whole."""
        self.broken = False
        """An append failed and could not be cut back: a part of a record ends the file. Appends are
        refused until a cut succeeds."""
        # Read and write: the writer checks the very file it appends to.
        self._fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
        try:
            self._open(header)
        except BaseException:
            os.close(self._fd)
            self._fd = -1
            raise

    def _open(self, header: bytes) -> None:
        size = os.fstat(self._fd).st_size
        if size:
            try:
                found = _read_header(self._fd, self.path)
            except IncompleteLaneLog:
                if not header.startswith(_pread(self._fd, size, 0)):
                    raise ForeignLaneLog(f"{self.path} holds the start of another lane's log header") from None
                log.warning("%s: the lane log's header was cut short; writing it again", self.path)
                os.ftruncate(self._fd, 0)
            else:
                if found.session_id != self.session_id:
                    raise ForeignLaneLog(
                        f"{self.path} is the lane log of session {found.session_id!r}, not {self.session_id!r}"
                    )
                if found.token != self.token:
                    raise ForeignLaneLog(f"{self.path} is the lane log of another grant (its token differs)")
                _, end = _read_records(self._fd, found, 0, self.path)
                if end < size:
                    log.warning(
                        "%s: cutting %d bytes after the lane log's last whole record (a writer stopped mid-write)",
                        self.path,
                        size - end,
                    )
                    os.ftruncate(self._fd, end)
                self.size = end
                return
        written = os.write(self._fd, header)
        if written != len(header):
            os.ftruncate(self._fd, 0)
            raise OSError(f"only {written} of {len(header)} bytes of the lane log's header were written to {self.path}")
        self.size = written

    def append(self, result: LaneResult) -> LaneResult:
        """Append ``result`` in one ``write(2)``; once this returns it survives a crash of this process. Returns
        the result as appended (a large payload named by its size, in its file).

        ``OSError`` when it could not be written whole: the file is cut back to where it was (and the caller
        must not answer the task as done). ``ValueError`` for a result the format does not carry, or a
        closed writer.

        An input or output of ``FILE_BYTES`` or more is first written to its payload file
        (:func:`payload_path`), whole; the record then holds its size. ``OSError`` too when that file cannot
        be written (nothing is appended then, and no part of the file is left)."""
        return self.append_many([result])[0]

    def append_many(self, results: list[LaneResult]) -> list[LaneResult]:
        """Append ``results`` in one ``write(2)``, all or none, as :meth:`append` does one: a lane batch's
        result of one task and the record that the next began go together."""
        if self._fd < 0:
            raise ValueError(f"{self.path}: the lane log is closed")
        results = [self._in_files(result) for result in results]
        records = b"".join([encode_result(result) for result in results])
        if self.broken:
            os.ftruncate(self._fd, self.size)  # (raises while it still cannot be cut)
            self.broken = False
        try:
            self.size = append_whole(self._fd, records, self.size, str(self.path))
        except NotCutBack:
            self.broken = True
            raise
        return results

    def _in_files(self, result: LaneResult) -> LaneResult:
        """``result`` with its large input and output written to their payload files, and named by size."""
        moved: dict[str, Any] = {}
        for field, data in (("input", result.input), ("output", result.output)):
            if data is not None and len(data) >= FILE_BYTES:  # (rare: a task's path checks two lengths)
                path = Path(payload_path(self.path, result.task_id, field))
                # Its writeback starts at once (the server drops its pages from the cache once adopted).
                write_payload_file(path, data, sync=False)
                moved[field] = None
                moved[f"{field}_size"] = len(data)
        return dataclasses.replace(result, **moved) if moved else result

    def close(self) -> None:
        """Close the file (again: nothing)."""
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)

    def __enter__(self) -> LaneLogWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()
