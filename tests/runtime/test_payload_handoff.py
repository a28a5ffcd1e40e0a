"""Large payloads handed to and from flamepy's own service processes as payload files (wire.payload_handoff):
on each bundled transport the service process itself reads and writes a large invoke's files (the bytes
cross no instance link); byte for byte at the threshold's edges and after a restart; a service that fails
after reading a file input; an input file gone before the service read it fails that task with a clear
error, and the next task runs; the service side writes a large output into the file it is given, and a
writer killed part way leaves no file under the final name; payload files leave the page cache once read
and on the disk.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import wait_for

import flamepy
from flamepy_core.client.connection import reset_default_connection
from flamepy_core.contracts.transport import UnaryHandler
from flamepy_core.engine.payload_files import DROP_CACHED_AFTER, PayloadFiles
from flamepy_core.instance.runtime import instance_handlers
from flamepy_core.instance.service import FlameService, TaskContext
from flamepy_core.kit.basics import SimpleCallContext
from flamepy_core.privacy import PRIVATE_FILE_MODE
from flamepy_core.wire import payload_handoff
from flamepy_core.wire.payload_messages import ON_TASK_INVOKE, read_task_result, task_context

MIB = 1 << 20

SERVICE = """
import os, time
import flamepy
from flamepy.core import FlameService


class Handoff(FlameService):
    def on_task_invoke(self, context):
        data = context.input
        if data == b"pid":
            return str(os.getpid()).encode()
        if data.startswith(b"wait:"):  # hold the instance until the file named in the input exists
            marker = data[5:100].split(b"|")[0].decode()
            deadline = time.monotonic() + 60
            while not os.path.exists(marker) and time.monotonic() < deadline:
                time.sleep(0.02)
            return b"waited"
        if data.startswith(b"big:"):
            return b"o" * int(data[4:])
        if data.startswith(b"fail"):
            raise ValueError(f"refused an input of {len(data)} bytes ending {data[-4:].hex()}")
        return data[::-1]


if __name__ == "__main__":
    flamepy.run(Handoff())
"""


def payload_names(home: Path) -> set[str]:
    directory = home / "payloads"
    return {p.name for p in directory.iterdir()} if directory.exists() else set()


def file_io(pid: int) -> tuple[int, int]:
    """Bytes process ``pid`` moved with read(2) and write(2) so far (``rchar``, ``wchar``).

    Why these: the kernel counts a file's read and write there, and not a socket's recv or send, which
    both bundled transports use: so a payload that came by its file shows, one that came over the
    instance link does not."""
    fields = dict(line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())
    return int(fields["rchar"]), int(fields["wchar"])


@pytest.mark.skipif(not Path("/proc/self/io").exists(), reason="reads the service process's I/O counters in /proc")
@pytest.mark.parametrize("flame_env", ["zmq", "grpc"], indirect=True)
def test_a_large_invoke_goes_by_payload_files_the_service_process_reads_and_writes(flame_env) -> None:
    """Fails when the handoff silently stops (an instance that did not offer it, a server that stopped
    naming files): the 16 MiB would then cross the instance link both ways, still correct, but slower."""
    flame_env.write_service("handoff", SERVICE)
    session = flamepy.create_session("handoff", min_instances=1, max_instances=1)
    pid = int(session.invoke(b"pid"))
    data = os.urandom(16 * MIB)
    read_before, written_before = file_io(pid)
    assert session.invoke(data) == data[::-1]
    read, written = file_io(pid)
    assert read - read_before >= len(data), "the service process read the input from its payload file"
    assert written - written_before >= len(data), "the service process wrote the output to a payload file"
    assert session.invoke(b"small") == b"llams"
    assert file_io(pid)[0] - read < MIB and file_io(pid)[1] - written < MIB, "a small payload travels inline"


@pytest.mark.parametrize("size", [MIB - 1, MIB, 16 * MIB])
def test_a_payload_round_trips_byte_for_byte_and_reads_back_after_a_restart(flame_env, size: int) -> None:
    flame_env.write_service("handoff", SERVICE)
    session = flamepy.create_session("handoff")
    data = os.urandom(size)
    assert session.invoke(data) == data[::-1]
    files = payload_names(flame_env.home)
    # Below the threshold both stay in the database; at it, input and output have a file each (the
    # output's written by the service process), and nothing half written or reserved is left over.
    assert len(files) == (0 if size < MIB else 2), files
    assert not [name for name in files if name.endswith(".part")]

    flame_env.flmctl("server", "stop")
    reset_default_connection()
    (task,) = flamepy.get_session(session.id).list_tasks()
    assert (task.input, task.output) == (data, data[::-1])


def test_large_invokes_one_after_another_and_at_once_each_get_their_own_output(flame_env) -> None:
    """Large inputs and outputs, all distinct, through the whole path on the local default (uds): each
    process reads a large message into a buffer its link keeps for the next one, and the client reads its
    answer there and the server its request (neither copied into ``bytes`` first). Every output is kept
    and compared after the others went through the same buffers: a view kept past its message, in any
    process, would read another task's bytes. Sizes around the thresholds: a view into the request
    (64 KiB), a payload file (1 MiB)."""
    flame_env.write_service("handoff", SERVICE)
    session = flamepy.create_session("handoff", min_instances=2, max_instances=2)
    sizes = [64 * 1024 - 1, 64 * 1024, 200_000, MIB - 1, MIB, 3 * MIB + 7, 16 * MIB]
    inputs = [os.urandom(size) for size in sizes]
    outputs = [session.invoke(data) for data in inputs]
    assert outputs == [data[::-1] for data in inputs]
    with ThreadPoolExecutor(4) as pool:  # one connection: some answers read by their caller, some for it
        at_once = list(pool.map(session.invoke, inputs * 2))
    assert at_once == [data[::-1] for data in inputs * 2]
    # Through run(): the outputs go to the session's watchers too (copied out of the mapped files).
    futures = [session.run(data) for data in inputs]
    assert [f.result(timeout=120) for f in futures] == [data[::-1] for data in inputs]
    for task in session.list_tasks():  # what was stored is what was sent and answered
        assert task.input is not None and task.output == task.input[::-1]


def test_a_large_output_of_a_small_input_is_written_by_the_service_in_a_folder_made_private(flame_env) -> None:
    """The server's first payload file is the service's: the server makes the folder (0700) before it
    names a file in it, so the service writes there and does not fall back to sending the bytes."""
    flame_env.write_service("handoff", SERVICE)
    session = flamepy.create_session("handoff")
    assert not (flame_env.home / "payloads").exists()
    assert session.invoke(b"big:%d" % (2 * MIB)) == b"o" * (2 * MIB)
    assert (flame_env.home / "payloads").stat().st_mode & 0o777 == 0o700
    assert len(payload_names(flame_env.home)) == 1, "the output's file"
    errors = "".join(p.read_text() for p in (flame_env.home / "logs" / "instances").glob("*.err"))
    assert "cannot write the output" not in errors, errors


def test_a_service_that_fails_after_reading_a_file_input_fails_the_task_and_keeps_the_input(flame_env) -> None:
    flame_env.write_service("handoff", SERVICE)
    session = flamepy.create_session("handoff")
    data = b"fail" + os.urandom(16 * MIB)
    with pytest.raises(flamepy.FlameError) as failed:
        session.invoke(data)
    # The service read all of it: its size and last bytes are in the service's error.
    assert f"refused an input of {len(data)} bytes ending {data[-4:].hex()}" in str(failed.value)
    (task,) = session.list_tasks()
    assert task.state == flamepy.TaskState.FAILED and task.input == data
    assert len(payload_names(flame_env.home)) == 1, "the input's file only: the unused output name is released"
    assert session.invoke(b"ok" * MIB) == (b"ok" * MIB)[::-1], "the instance keeps serving"


def test_an_input_file_gone_before_the_service_reads_it_fails_that_task_saying_which_file(flame_env, tmp_path) -> None:
    flame_env.write_service("handoff", SERVICE)
    session = flamepy.create_session("handoff", min_instances=1, max_instances=1)
    marker = tmp_path / "go"
    holding = session.create_task(f"wait:{marker}|".encode())
    wait_for(lambda: session.get_task(holding.id).state == flamepy.TaskState.RUNNING, 60, "the first task to run")
    before = payload_names(flame_env.home)
    with ThreadPoolExecutor(1) as pool:
        # invoke's answer is the final task itself (a watch would read the task back with its input).
        queued = pool.submit(session.invoke, os.urandom(2 * MIB))  # pending behind the running one
        written = lambda: {n for n in payload_names(flame_env.home) - before if not n.endswith(".part")}  # noqa: E731
        (name,) = wait_for(written, 60, "the input's file")
        (flame_env.home / "payloads" / name).unlink()
        marker.touch()
        error = queued.exception(timeout=60)
    assert isinstance(error, flamepy.FlameError)
    assert f"could not be read from its payload file {flame_env.home / 'payloads' / name}" in str(error), error
    assert "the service did not run" in str(error)
    data = os.urandom(3 * MIB)
    assert session.invoke(data) == data[::-1], "the next task runs"


CONTEXT = SimpleCallContext(ON_TASK_INVOKE, None)


class _Echo(FlameService):
    def on_task_invoke(self, context: TaskContext) -> bytes | None:
        return context.input


def test_the_service_side_writes_a_large_output_into_the_file_it_is_given(tmp_path: Path) -> None:
    handler = instance_handlers(_Echo())[ON_TASK_INVOKE]
    assert isinstance(handler, UnaryHandler)
    source = tmp_path / "p-in"
    data = os.urandom(MIB + 7)
    source.write_bytes(data)
    target = tmp_path / "p-out"
    request = task_context(
        "1", "s", None, input_file=(str(source), len(data)), output_file=(str(target), MIB, 64 * MIB, True)
    )

    return_code, output, message, output_size = read_task_result(handler.fn(request, CONTEXT))
    assert (return_code, output, message, output_size) == (0, None, None, len(data)), "no bytes on the link"
    assert target.read_bytes() == data
    assert target.stat().st_mode & 0o777 == PRIVATE_FILE_MODE == payload_handoff.FILE_MODE

    # An output below the threshold travels inline, and the file is not made.
    small = tmp_path / "p-small"
    reply = handler.fn(task_context("2", "s", b"tiny", output_file=(str(small), MIB, 64 * MIB, False)), CONTEXT)
    assert read_task_result(reply) == (0, b"tiny", None, None)
    assert not small.exists()

    # One too large to be answered at all is sent inline, where the message limit refuses it (not here).
    over = tmp_path / "p-over"
    reply = handler.fn(task_context("4", "s", data, output_file=(str(over), MIB, len(data), False)), CONTEXT)
    assert read_task_result(reply) == (0, data, None, None)
    assert not over.exists()

    # A short input file is refused before the service runs, naming the file and both sizes.
    reply = handler.fn(task_context("3", "s", None, input_file=(str(source), len(data) + 1)), CONTEXT)
    return_code, _output, message, _size = read_task_result(reply)
    assert return_code == -1 and message is not None
    assert f"{source} (it holds {len(data)} bytes where {len(data) + 1} were written)" in message


KILLED_WRITER = """
import resource, signal, sys
from pathlib import Path
from flamepy_core.wire.payload_handoff import write_payload_file

signal.signal(signal.SIGXFSZ, signal.SIG_DFL)  # Python ignores it: restore the kill it is by default
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))  # killed at the first write past 1 MiB
write_payload_file(Path(sys.argv[1]), b"z" * (8 << 20), sync=False)
"""


def test_a_writer_killed_part_way_leaves_no_file_under_the_final_name(tmp_path: Path) -> None:
    folder = tmp_path / "payloads"
    folder.mkdir()
    target = folder / "p-0123"
    child = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(target)], timeout=60, check=False)
    assert child.returncode == -signal.SIGXFSZ, "killed in the middle of its write, by a signal nothing handles"
    assert not target.exists()
    assert (folder / "p-0123.part").stat().st_size == 1 << 20, "the half-written file is the .part"
    assert PayloadFiles(folder, sync=False).remove_orphans(set) == 1
    assert list(folder.iterdir()) == []


PAGE = mmap.PAGESIZE


def cached_pages(path: Path) -> int:
    """How many of the file's pages are in the page cache (mincore(2) on a mapping of it)."""
    size = path.stat().st_size
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    pages = (ctypes.c_ubyte * ((size + PAGE - 1) // PAGE))()
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), size, access=mmap.ACCESS_COPY) as mapped:
        start = ctypes.c_char.from_buffer(mapped)
        try:
            if libc.mincore(ctypes.addressof(start), size, pages) != 0:
                raise OSError(ctypes.get_errno(), "mincore")
        finally:
            del start  # the mapping cannot close while a buffer points into it
    return sum(page & 1 for page in pages)


def on_the_disk(path: Path) -> None:
    """Wait until the file's pages are written back (clean), as they are some milliseconds after a write."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fdatasync(fd)
    finally:
        os.close(fd)


def drops_clean_pages(folder: Path) -> bool:
    """Whether this file system lets a clean page go on POSIX_FADV_DONTNEED (tmpfs, for one, cannot)."""
    probe = folder / "probe"
    probe.write_bytes(b"p" * (64 * PAGE))
    on_the_disk(probe)
    payload_handoff.drop_cached(probe)
    dropped = cached_pages(probe) == 0
    probe.unlink()
    return dropped


def test_a_payload_file_mapped_reads_as_written_even_once_removed(tmp_path: Path) -> None:
    """The server maps an output its service process wrote (for a reply written from the page cache): the
    mapping holds the file's bytes, a size other than the one written is refused naming both, and removing
    the file (a purge, a deleted session) leaves a mapping being sent readable."""
    path = tmp_path / "p-out"
    data = os.urandom(3 * MIB + 5)
    payload_handoff.write_payload_file(path, data, sync=False)
    mapped = payload_handoff.map_payload_file(path, len(data))
    assert isinstance(mapped, mmap.mmap) and len(mapped) == len(data)
    assert memoryview(mapped).readonly, "a mapping the server could write through"
    path.unlink()
    assert bytes(mapped) == data
    with pytest.raises(ValueError, match=f"it holds {len(data)} bytes where {len(data) + 1} were written"):
        payload_handoff.write_payload_file(path, data, sync=False)
        payload_handoff.map_payload_file(path, len(data) + 1)
    empty = tmp_path / "p-empty"
    payload_handoff.write_payload_file(empty, b"", sync=False)
    assert payload_handoff.map_payload_file(empty, 0) == b""
    with pytest.raises(OSError):
        payload_handoff.map_payload_file(tmp_path / "p-gone", 1)


needs_fadvise = pytest.mark.skipif(not hasattr(os, "posix_fadvise"), reason="posix_fadvise and mincore: Linux")


@needs_fadvise
def test_a_payload_file_read_once_leaves_the_page_cache_when_it_is_on_the_disk(tmp_path: Path) -> None:
    if not drops_clean_pages(tmp_path):
        pytest.skip("this file system keeps clean pages cached")
    path = tmp_path / "p-read"
    data = os.urandom(4 * MIB)
    payload_handoff.write_payload_file(path, data, sync=True)
    assert cached_pages(path) > 0, "written, and still cached: nobody has read it yet"
    assert payload_handoff.read_payload_file(path, len(data)) == data
    assert cached_pages(path) == 0
    assert payload_handoff.read_payload_file(path, len(data)) == data, "read back from the disk"


@needs_fadvise
@pytest.mark.parametrize("flame_env", ["zmq"], indirect=True)
def test_the_files_of_a_large_invoke_leave_the_page_cache_by_a_later_one(flame_env) -> None:
    """The server drops a payload file it wrote or read back at its next payload file after
    ``DROP_CACHED_AFTER``: without it, each 16 MiB invoke grew the page cache by 32 MiB (the reads alone
    leave what was still being written back)."""
    flame_env.write_service("handoff", SERVICE)
    session = flamepy.create_session("handoff", min_instances=1, max_instances=1)
    data = os.urandom(4 * MIB)
    assert session.invoke(data) == data[::-1]
    first = sorted(flame_env.home / "payloads" / name for name in payload_names(flame_env.home))
    assert len(first) == 2, first
    if not drops_clean_pages(flame_env.home):
        pytest.skip("this file system keeps clean pages cached")
    for path in first:
        on_the_disk(path)  # as a quiet disk has them by the time of the next invoke
        assert path.read_bytes() in (data, data[::-1])  # and cached again, whatever the reads dropped
    assert all(cached_pages(path) > 0 for path in first)
    time.sleep(DROP_CACHED_AFTER[-1])  # each file's next drop has come due (a slow first invoke took one)
    assert session.invoke(data) == data[::-1]
    # Dropped by the server at the next invoke, off its answer's path: once the task went to the instance
    # (so by the time the answer comes, unless this machine is very busy) and after the answer.
    wait_for(lambda: [cached_pages(path) for path in first] == [0, 0], 10, "the first invoke's files to be dropped")
