"""The lane log: what a service process appended whole is read back, in order, once; nothing else is.

The rules (``flamepy_core.wire.lane_log``):

* the file's bytes are exactly the documented format (the server and the service process may be
  different versions of this code, and the format is the contract between them);
* every result the format carries is read back as it was appended, in order, and a read from the offset
  a read returned gives only the records appended since;
* a record not whole (a writer in the middle of it, or stopped there) or not sound ends what is read, and
  the offset returned is its start; a writer that opens such a file cuts it there first;
* a failed append leaves no part of its record in the file;
* a log of another session or grant is refused, and left as it is; a file that is not a lane log too;
* an append that returned survives the crash of its process; the file is owner-only.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import signal
import stat
import struct
import subprocess
import sys
import textwrap
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flamepy_core.privacy import PRIVATE_FILE_MODE
from flamepy_core.wire.lane_log import (
    FILE_BYTES,
    FILE_MODE,
    MAGIC,
    ForeignLaneLog,
    IncompleteLaneLog,
    LaneLogHeader,
    LaneLogWriter,
    LaneResult,
    decode_body,
    encode_result,
    payload_path,
    read_lane_log,
)

REPO = Path(__file__).resolve().parents[2]
SESSION = "ssn-1"
TOKEN = bytes(range(32))
OS_WRITE = "flamepy_core.wire.lane_log.os.write"
OS_FTRUNCATE = "flamepy_core.wire.lane_log.os.ftruncate"
"""Patched for a failing disk (the module's ``os`` is the process's: the fakes touch the writer's file only)."""

payloads = st.one_of(
    st.none().map(lambda _: (None, None)),
    st.binary(max_size=300).map(lambda data: (data, None)),  # in the record
    st.integers(0, (1 << 64) - 1).map(lambda size: (None, size)),  # in its file, named by its size
)
results = st.builds(
    lambda inp, out, **fields: LaneResult(input=inp[0], input_size=inp[1], output=out[0], output_size=out[1], **fields),
    inp=payloads,
    out=payloads,
    task_id=st.integers(0, (1 << 64) - 1),
    start_ms=st.integers(-(1 << 63), (1 << 63) - 1),
    end_ms=st.integers(-(1 << 63), (1 << 63) - 1),
    succeeded=st.booleans(),
    message=st.none() | st.text(max_size=100),
    started=st.booleans(),
).map(lambda r: dataclasses.replace(r, succeeded=False) if r.started else r)  # (a start has no outcome)


def result(task_id: int, *, size: int = 10) -> LaneResult:
    """A result with every field, ``size`` bytes of input and output."""
    return LaneResult(task_id, 1000 + task_id, 2000 + task_id, task_id % 2 == 0, b"i" * size, b"o" * size, "ü")


def header_bytes(session_id: str, token: bytes) -> bytes:
    """A header built from the spec, not from the module."""
    session = session_id.encode()
    return MAGIC + struct.pack("<H", len(session)) + session + struct.pack("<H", len(token)) + token


def write_log(path: Path, items: list[LaneResult], session_id: str = SESSION, token: bytes = TOKEN) -> list[int]:
    """Append ``items`` with a writer; the offset each record starts at, then the file's end."""
    offsets = []
    with LaneLogWriter(path, session_id, token) as writer:
        for item in items:
            offsets.append(writer.size)
            writer.append(item)
        offsets.append(writer.size)
    assert offsets[-1] == path.stat().st_size
    return offsets


@pytest.fixture
def open_umask() -> Iterator[None]:
    """No umask: a file's mode is the one it was created with, nothing taken away."""
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


# -- the format ------------------------------------------------------------------------------------------


def test_a_record_is_exactly_the_documented_bytes() -> None:
    item = LaneResult(0x0102030405060708, -2, 1 << 40, False, b"in", None, "né")
    body = (
        bytes.fromhex("0807060504030201")  # task_id, u64 little-endian
        + (-2).to_bytes(8, "little", signed=True)
        + (1 << 40).to_bytes(8, "little", signed=True)
        + b"\x01"  # failed
        + b"\x05"  # input and message present, no output
        + b"\x02\x00\x00\x00in"
        + b"\x03\x00\x00\x00n\xc3\xa9"
    )
    assert encode_result(item) == len(body).to_bytes(4, "little") + zlib.crc32(body).to_bytes(4, "little") + body
    assert decode_body(body) == item


def test_a_record_of_payloads_in_their_files_is_exactly_the_documented_bytes() -> None:
    item = LaneResult(7, 1, 2, True, None, None, None, input_size=1 << 24, output_size=3)
    body = (
        (7).to_bytes(8, "little")
        + (1).to_bytes(8, "little", signed=True)
        + (2).to_bytes(8, "little", signed=True)
        + b"\x00"  # succeeded
        + b"\x18"  # input and output in their files
        + (1 << 24).to_bytes(8, "little")  # the input's size, u64
        + (3).to_bytes(8, "little")
    )
    assert encode_result(item) == len(body).to_bytes(4, "little") + zlib.crc32(body).to_bytes(4, "little") + body
    assert decode_body(body) == item
    assert payload_path("d/a.lane", 7, "input") == "d/a.lane.7.input"


def test_a_payload_in_the_record_and_in_its_file_at_once_is_refused() -> None:
    with pytest.raises(ValueError, match="not both"):
        encode_result(LaneResult(1, 2, 3, True, b"in", None, None, input_size=2))
    with pytest.raises(ValueError, match="not both"):
        encode_result(LaneResult(1, 2, 3, True, None, b"out", None, output_size=3))


def test_a_new_log_starts_with_the_documented_header(tmp_path: Path) -> None:
    path = tmp_path / "lane"
    with LaneLogWriter(path, "séance", b"\x00\xfftok") as writer:
        assert writer.size == len(header_bytes("séance", b"\x00\xfftok"))
    assert path.read_bytes() == b"flamepy lane log 1\n" + b"\x07\x00s\xc3\xa9ance" + b"\x05\x00\x00\xfftok"
    header, items, end = read_lane_log(path)
    assert header == LaneLogHeader("séance", b"\x00\xfftok", end)
    assert items == [] and end == path.stat().st_size


@given(results)
def test_every_result_round_trips(item: LaneResult) -> None:
    record = encode_result(item)
    size, crc = struct.unpack_from("<II", record)
    body = record[8:]
    assert size == len(body) and crc == zlib.crc32(body)
    assert decode_body(body) == item
    assert decode_body(memoryview(body)) == item


@pytest.mark.parametrize(
    "item",
    [
        LaneResult(-1, 0, 0, True, None, None, None),
        LaneResult(1 << 64, 0, 0, True, None, None, None),
        LaneResult(0, 1 << 63, 0, True, None, None, None),
        LaneResult(0, 0, -(1 << 63) - 1, True, None, None, None),
    ],
)
def test_a_value_out_of_the_formats_range_is_refused(item: LaneResult) -> None:
    with pytest.raises(ValueError):
        encode_result(item)


def test_a_body_no_writer_wrote_is_refused() -> None:
    body = encode_result(LaneResult(1, 2, 3, True, b"abc", None, None))[8:]
    fixed = struct.calcsize("<QqqBB")
    bad_state = body[: fixed - 2] + b"\x03" + body[fixed - 1 :]
    both = body[: fixed - 1] + b"\x09" + body[fixed:]  # the input in the record and in its file
    unknown = body[: fixed - 1] + b"\x21" + body[fixed:]
    bad_text = encode_result(LaneResult(1, 2, 3, True, None, None, "x"))[8:-1] + b"\xff"
    for bad in (body + b"\x00", body[:-1], body[: fixed - 1], bad_state, both, unknown, bad_text, b""):
        with pytest.raises(ValueError):
            decode_body(bad)


# -- reading what was appended ---------------------------------------------------------------------------


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=50)
@given(items=st.lists(results, max_size=12), data=st.data())
def test_appended_results_are_read_back_in_order_and_from_any_returned_offset(
    tmp_path: Path, items: list[LaneResult], data: st.DataObject
) -> None:
    path = tmp_path / "lane"
    path.unlink(missing_ok=True)
    offsets = write_log(path, items)
    header, read, end = read_lane_log(path)
    assert header == LaneLogHeader(SESSION, TOKEN, offsets[0])
    assert read == items and end == offsets[-1]
    at = data.draw(st.integers(0, len(items)))
    assert read_lane_log(path, offsets[at]) == (header, items[at:], offsets[-1])


def test_a_read_from_the_offset_it_returned_gives_only_the_later_records(tmp_path: Path) -> None:
    path = tmp_path / "lane"
    with LaneLogWriter(path, SESSION, TOKEN) as writer:
        header, read, first = read_lane_log(path)
        assert read == [] and first == header.records_start
        assert read_lane_log(path, header.records_start) == (header, [], first)
        for task_id in range(3):
            writer.append(result(task_id))
        _, read, second = read_lane_log(path, first)
        assert [item.task_id for item in read] == [0, 1, 2]
        writer.append(result(3))
        writer.append(result(4))
        _, read, third = read_lane_log(path, second)
        assert [item.task_id for item in read] == [3, 4]
        assert read_lane_log(path, third)[1:] == ([], third)
        assert third == writer.size == path.stat().st_size


def test_an_offset_inside_the_header_or_past_the_end_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "lane"
    offsets = write_log(path, [result(1)])
    for offset in (1, offsets[0] - 1, offsets[-1] + 1):
        with pytest.raises(ValueError, match="offset"):
            read_lane_log(path, offset)


# -- records not whole, records not sound ----------------------------------------------------------------


def test_a_torn_tail_ends_the_read_and_a_new_writer_cuts_it(tmp_path: Path) -> None:
    whole = tmp_path / "whole"
    offsets = write_log(whole, [result(1), result(2), result(3)])
    data = whole.read_bytes()
    last = offsets[-2]
    for cut in range(last, len(data)):
        path = tmp_path / f"cut{cut}"
        path.write_bytes(data[:cut])
        _, read, end = read_lane_log(path)
        assert [item.task_id for item in read] == [1, 2] and end == last, cut
        with LaneLogWriter(path, SESSION, TOKEN) as writer:
            assert path.stat().st_size == writer.size == last, cut
            writer.append(result(9))
        _, read, end = read_lane_log(path)
        assert [item.task_id for item in read] == [1, 2, 9] and end == path.stat().st_size, cut


def test_a_record_being_written_is_read_once_its_writer_finishes_it(tmp_path: Path) -> None:
    path = tmp_path / "lane"
    offsets = write_log(path, [result(1)])
    record = encode_result(result(2))
    with path.open("ab") as file:
        file.write(record[:5])
    _, read, end = read_lane_log(path)
    assert [item.task_id for item in read] == [1] and end == offsets[-1]
    with path.open("ab") as file:
        file.write(record[5:])
    _, read, end = read_lane_log(path, end)
    assert [item.task_id for item in read] == [2] and end == path.stat().st_size


def test_a_flipped_byte_in_a_record_stops_the_read_there(tmp_path: Path) -> None:
    whole = tmp_path / "whole"
    offsets = write_log(whole, [result(1), result(2), result(3)])
    data = whole.read_bytes()
    middle, after = offsets[1], offsets[2]
    for at in range(middle + 4, after):  # its checksum and its body
        path = tmp_path / "flipped"
        flipped = bytearray(data)
        flipped[at] ^= 0x10
        path.write_bytes(bytes(flipped))
        _, read, end = read_lane_log(path)
        assert [item.task_id for item in read] == [1] and end == middle, at


def test_a_sound_checksum_over_a_body_no_writer_wrote_stops_the_read(tmp_path: Path) -> None:
    path = tmp_path / "lane"
    write_log(path, [result(1)])
    good_end = path.stat().st_size
    body = encode_result(result(2))[8:] + b"\x00"  # a byte after the fields
    with path.open("ab") as file:
        file.write(struct.pack("<II", len(body), zlib.crc32(body)) + body)
        file.write(encode_result(result(3)))
    _, read, end = read_lane_log(path)
    assert [item.task_id for item in read] == [1] and end == good_end


# -- failed appends --------------------------------------------------------------------------------------


def test_a_large_payload_goes_to_a_file_of_its_own_which_its_record_names_by_size(
    tmp_path: Path, open_umask: None
) -> None:
    path = tmp_path / "lane"
    large, small = os.urandom(FILE_BYTES), b"s" * (FILE_BYTES - 1)
    with LaneLogWriter(path, SESSION, TOKEN) as writer:
        began = writer.append(LaneResult(5, 1, 1, False, large, None, None, started=True))
        ended = writer.append(LaneResult(5, 1, 2, True, None, large[::-1], None))
        inline = writer.append(LaneResult(6, 3, 4, True, small, small, None))
    assert (began.input, began.input_size) == (None, FILE_BYTES)
    assert (ended.output, ended.output_size) == (None, FILE_BYTES)
    assert inline == LaneResult(6, 3, 4, True, small, small, None), "under FILE_BYTES stays in the record"
    assert read_lane_log(path)[1] == [began, ended, inline]
    assert Path(payload_path(path, 5, "input")).read_bytes() == large
    assert Path(payload_path(path, 5, "output")).read_bytes() == large[::-1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lane", "lane.5.input", "lane.5.output"]
    assert {stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()} == {PRIVATE_FILE_MODE}


def test_a_payload_file_that_cannot_be_written_appends_nothing(tmp_path: Path) -> None:
    path = tmp_path / "lane"
    writer = LaneLogWriter(path, SESSION, TOKEN)
    before = writer.size
    Path(payload_path(path, 9, "input") + ".part").mkdir()  # (its file cannot be created)
    with pytest.raises(OSError):
        writer.append(LaneResult(9, 1, 1, False, b"x" * FILE_BYTES, None, None, started=True))
    assert path.stat().st_size == writer.size == before
    assert not Path(payload_path(path, 9, "input")).exists()
    writer.append(result(10))
    writer.close()
    assert [item.task_id for item in read_lane_log(path)[1]] == [10]


@pytest.mark.parametrize("failure", ["short", "error"])
def test_a_failed_append_leaves_no_part_of_its_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failure: str
) -> None:
    path = tmp_path / "lane"
    writer = LaneLogWriter(path, SESSION, TOKEN)
    writer.append(result(1))
    before = path.stat().st_size
    real_write = os.write

    def partial_write(fd: int, data: bytes) -> int:
        if fd != writer._fd:
            return real_write(fd, data)
        written = real_write(fd, data[: len(data) // 2])
        if failure == "error":
            raise OSError(errno.ENOSPC, "No space left on device")
        return written

    monkeypatch.setattr(OS_WRITE, partial_write)
    with pytest.raises(OSError):
        writer.append(result(2, size=1000))
    assert path.stat().st_size == writer.size == before
    monkeypatch.setattr(OS_WRITE, real_write)
    writer.append(result(3))
    writer.close()
    _, read, end = read_lane_log(path)
    assert [item.task_id for item in read] == [1, 3] and end == path.stat().st_size


def test_an_append_that_could_not_be_cut_back_refuses_the_next_until_it_can(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "lane"
    writer = LaneLogWriter(path, SESSION, TOKEN)
    writer.append(result(1))
    real_write, real_truncate = os.write, os.ftruncate

    def partial_write(fd: int, data: bytes) -> int:
        return real_write(fd, data[:3] if fd == writer._fd else data)

    def failing_truncate(fd: int, size: int) -> None:
        if fd != writer._fd:
            return real_truncate(fd, size)
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(OS_WRITE, partial_write)
    monkeypatch.setattr(OS_FTRUNCATE, failing_truncate)
    with pytest.raises(OSError):
        writer.append(result(2))
    assert writer.broken
    monkeypatch.setattr(OS_WRITE, real_write)
    with pytest.raises(OSError):
        writer.append(result(3))  # behind 3 bytes of a record: it would never be read back
    monkeypatch.setattr(OS_FTRUNCATE, real_truncate)
    writer.append(result(4))
    writer.close()
    assert not writer.broken
    assert [item.task_id for item in read_lane_log(path)[1]] == [1, 4]


def test_a_file_size_limit_refuses_appends_and_keeps_the_acknowledged_ones(tmp_path: Path) -> None:
    """A real short write: the process may not grow the file past a limit (``RLIMIT_FSIZE``)."""
    path = tmp_path / "lane"
    code = textwrap.dedent(
        f"""
        import resource
        from flamepy_core.wire.lane_log import LaneLogWriter, LaneResult
        resource.setrlimit(resource.RLIMIT_FSIZE, (1500, 1500))
        writer = LaneLogWriter({str(path)!r}, {SESSION!r}, {TOKEN!r})
        for task_id in range(10):
            try:
                writer.append(LaneResult(task_id, 0, 1, True, b"x" * 200, b"y" * 200, None))
            except OSError:
                print("refused", task_id, writer.size, flush=True)
            else:
                print("acknowledged", task_id, flush=True)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.split("\n")
    acknowledged = [int(line.split()[1]) for line in out if line.startswith("acknowledged")]
    refused = [line.split() for line in out if line.startswith("refused")]
    assert acknowledged == [0, 1, 2] and len(refused) == 7
    _, read, end = read_lane_log(path)
    assert [item.task_id for item in read] == acknowledged
    assert end == path.stat().st_size == int(refused[0][2]) == int(refused[-1][2])


def test_an_append_that_returned_survives_the_crash_of_its_process(tmp_path: Path) -> None:
    path = tmp_path / "lane"
    code = textwrap.dedent(
        f"""
        import os, signal
        from flamepy_core.wire.lane_log import LaneLogWriter, LaneResult
        writer = LaneLogWriter({str(path)!r}, {SESSION!r}, {TOKEN!r})
        for task_id in range(5):
            writer.append(LaneResult(task_id, 0, 1, True, b"in", b"out", None))
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    process = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=60
    )
    assert process.returncode == -signal.SIGKILL
    assert [item.task_id for item in read_lane_log(path)[1]] == [0, 1, 2, 3, 4]


# -- whose log it is -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("session_id", "token", "named"), [(SESSION, b"another grant", "token"), ("ssn-2", TOKEN, "ssn-2")]
)
def test_a_writer_refuses_the_log_of_another_lane_and_leaves_it_as_it_is(
    tmp_path: Path, session_id: str, token: bytes, named: str
) -> None:
    path = tmp_path / "lane"
    write_log(path, [result(1)])
    with path.open("ab") as file:
        file.write(b"\x01\x02")  # a torn tail, which its own writer would cut
    before = path.read_bytes()
    with pytest.raises(ForeignLaneLog) as refused:
        LaneLogWriter(path, session_id, token)
    assert str(path) in str(refused.value) and named in str(refused.value)
    assert path.read_bytes() == before


def test_a_file_that_is_not_a_lane_log_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "lane"
    write_log(path, [result(1)])
    data = path.read_bytes()
    path.write_bytes(b"flamepy lane log 2\n" + data[len(MAGIC) :])
    with pytest.raises(ForeignLaneLog, match="lane"):
        read_lane_log(path)
    with pytest.raises(ForeignLaneLog):
        LaneLogWriter(path, SESSION, TOKEN)
    assert path.read_bytes() == b"flamepy lane log 2\n" + data[len(MAGIC) :]
    path.write_bytes(b"{}")  # shorter than the magic, and not its start either
    with pytest.raises(ForeignLaneLog):
        read_lane_log(path)


def test_a_header_not_whole_yet_is_incomplete_and_a_missing_file_is_not_found(tmp_path: Path) -> None:
    whole = header_bytes(SESSION, TOKEN)
    path = tmp_path / "lane"
    for size in range(len(whole)):
        path.write_bytes(whole[:size])
        with pytest.raises(IncompleteLaneLog):
            read_lane_log(path)
    with pytest.raises(FileNotFoundError):
        read_lane_log(tmp_path / "missing")


def test_a_writer_finishes_its_own_header_cut_short_and_refuses_another_lanes(tmp_path: Path) -> None:
    path = tmp_path / "lane"
    mine = header_bytes(SESSION, TOKEN)
    path.write_bytes(mine[: len(mine) - 3])
    with LaneLogWriter(path, SESSION, TOKEN) as writer:
        writer.append(result(1))
    assert path.read_bytes()[: len(mine)] == mine
    assert [item.task_id for item in read_lane_log(path)[1]] == [1]
    theirs = header_bytes(SESSION, b"another grant")
    path.write_bytes(theirs[: len(theirs) - 3])
    with pytest.raises(ForeignLaneLog):
        LaneLogWriter(path, SESSION, TOKEN)
    assert path.read_bytes() == theirs[: len(theirs) - 3]


def test_a_writer_keeps_the_records_of_its_own_log(tmp_path: Path) -> None:
    path = tmp_path / "lane"
    write_log(path, [result(1), result(2)])
    write_log(path, [result(3)])
    assert [item.task_id for item in read_lane_log(path)[1]] == [1, 2, 3]


# -- the file --------------------------------------------------------------------------------------------


@pytest.mark.usefixtures("open_umask")
def test_the_log_is_private_to_its_user(tmp_path: Path) -> None:
    assert FILE_MODE == PRIVATE_FILE_MODE
    with LaneLogWriter(tmp_path / "lane", SESSION, TOKEN):
        assert (tmp_path / "lane").stat().st_mode & 0o777 == 0o600


def test_a_closed_writer_appends_nothing_and_closes_its_file(tmp_path: Path) -> None:
    path = tmp_path / "lane"
    with LaneLogWriter(path, SESSION, TOKEN) as writer:
        fd = writer._fd
    with pytest.raises(OSError):
        os.fstat(fd)
    with pytest.raises(ValueError, match="closed"):
        writer.append(result(1))
    writer.close()
    assert read_lane_log(path)[1] == []
