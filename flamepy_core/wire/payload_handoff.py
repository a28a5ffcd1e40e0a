"""A large task payload handed between the server and its own service process as a file, not as bytes.

Why: a 16 MiB input sent over the instance link is copied into the message, through the socket, out of
the receiving transport and out of the message again, on both processes, although the server has just
written the very same bytes to their payload file (see ``flamepy_core.engine.payload_files``). The
instance always runs on the server's machine, as the server's user: it can read that file itself, and
write a large output straight into a new payload file that the server then adopts. Measured on a 2-core
machine, each 16 MiB copy into fresh memory costs 2-5 ms, and the link carried eight of them per task.

Only flamepy's own instance runtime takes part, and only when both sides said so: an instance answers
``OnSessionEnter`` with ``HANDOFF`` set in its ``flame.v1.Result`` (an unknown field to everyone else),
and the server then names files in the ``TaskContext`` of that binding. Flame's executors, and services
written with Flame's SDK, never see these fields (a server never sends them to an instance that did not
offer), and skip them if they ever do (protobuf skips unknown fields). The numbers are far above
``flame.v1``'s own.

Files are written as the server writes its own: to ``<name>.part`` (0600, in the 0700 folder), fsync-ed
when the server's durability asks, then renamed, so a file under its final name is never one a crash
left half written.

Page cache. A payload file is written once and read once; after that it is kept only for the record (a
later ``get_task``, a restart). Its pages are let go of as soon as the disk holds them (``POSIX_FADV_DONTNEED``:
a clean page is dropped, the file stays): writing starts the writeback at once, reading drops what is
clean, and the server drops the rest a little later (``engine.payload_files``). Why: a page cache that
grows by 32 MiB per 16 MiB invoke needs memory nobody touched recently, and on a virtual machine whose
host backs guest memory lazily (this project's 2-core machines) each such 4 KiB page costs about 10 us
of CPU to fault in: a 16 MiB file write took 45 ms instead of 3 once about 350 MiB of payload files were
cached. Pages that are dropped go back to the free lists and are reused while still backed.
"""

from __future__ import annotations

import contextlib
import mmap
import os
from pathlib import Path

__all__ = [
    "FILE_MODE",
    "HANDOFF",
    "INPUT_FILE",
    "INPUT_SIZE",
    "OUTPUT_FILE",
    "OUTPUT_MAX",
    "OUTPUT_MIN",
    "OUTPUT_SIZE",
    "OUTPUT_SYNC",
    "REPLY_ROOM",
    "TEMP_SUFFIX",
    "WRITE_CHUNK",
    "Mapped",
    "drop_cached",
    "map_payload_file",
    "read_payload_file",
    "write_payload_file",
]

HANDOFF = 1001
"""``flame.v1.Result`` of OnSessionEnter, varint: 1 = this instance reads and writes payload files."""
INPUT_FILE = 1001
"""``flame.v1.TaskContext``, string: the path of the file holding the task's input (``input`` is then unset)."""
INPUT_SIZE = 1002
"""``flame.v1.TaskContext``, varint: the size of that input, checked when it is read."""
OUTPUT_FILE = 1003
"""``flame.v1.TaskContext``, string: the path where an output of ``OUTPUT_MIN`` bytes or more is written."""
OUTPUT_MIN = 1004
"""``flame.v1.TaskContext``, varint: the smallest output written to ``OUTPUT_FILE`` (smaller ones travel inline)."""
OUTPUT_SYNC = 1005
"""``flame.v1.TaskContext``, varint: 1 = fsync the output file and its folder before answering."""
OUTPUT_MAX = 1006
"""``flame.v1.TaskContext``, varint: the server's largest message. A larger output is not written to the
file but sent inline, where the message limit refuses it as it refuses any answer that large (the task
fails with MESSAGE_TOO_LARGE): the client could not receive it either."""
REPLY_ROOM = 64 * 1024
"""Bytes of a message left for what surrounds an output (the reply's other fields): an output that
close to the largest message is sent inline too, and the transport decides."""
OUTPUT_SIZE = 1001
"""``flame.v1.TaskResult``, varint: the output was written to ``OUTPUT_FILE`` and holds this many bytes."""
TEMP_SUFFIX = ".part"
"""A file being written; renamed to its final name once complete."""
WRITE_CHUNK = 1 << 20
"""Bytes per write(2). Measured on a 2-core machine (ext4, others writing too), alternating in one run:
a 16 MiB payload written in one call took a median of 27 ms (often 40 ms: the kernel pauses a writer
that dirties many pages in one call), in 1 MiB calls 5 ms; in 4 MiB calls no better than one call."""
FILE_MODE = 0o600
"""Owner only: ``flamepy_core.privacy.PRIVATE_FILE_MODE`` (a sibling layer this one may not import; a test
keeps them equal)."""


def write_payload_file(
    path: Path, data: bytes | bytearray | memoryview | mmap.mmap, *, sync: bool, start_writeback: bool = True
) -> None:
    """Write ``data`` to a new file ``path`` (0600), whole or not at all: through ``<path>.part``.

    With ``sync`` the file and then its folder's entry are fsync-ed. Otherwise its writeback is started
    (see :func:`drop_cached`), unless ``start_writeback`` is False: the writer then does it itself soon
    after, off the way of whoever waits for the file (the server, once the file's task went to its
    instance). Raises OSError (a missing folder: FileNotFoundError; a full disk) with no file left behind
    under either name.
    """
    temp = path.with_name(path.name + TEMP_SUFFIX)
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
    try:
        try:
            view = memoryview(data)
            while view:  # a write may be short (a file size limit reached part way)
                view = view[os.write(fd, view[:WRITE_CHUNK]) :]
            if sync:
                os.fsync(fd)
            elif start_writeback:
                _drop_clean_pages(fd)  # starts the writeback now, so the pages are clean once it is read
        finally:
            os.close(fd)
        os.rename(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    if sync:
        folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)


def read_payload_file(path: Path, size: int) -> bytes:
    """The ``size`` bytes of the payload file ``path``, read in one buffer.

    Raises OSError when it cannot be read, ValueError naming both sizes when it holds another size.
    """
    with open(path, "rb", buffering=0) as fh:
        data = fh.readall()  # one buffer of the file's size (FileIO sizes it with fstat)
        _drop_clean_pages(fh.fileno())  # read once: what is on the disk already leaves the cache
    if len(data) != size:
        raise ValueError(f"it holds {len(data)} bytes where {size} were written")
    return data


Mapped = bytes | mmap.mmap
"""A payload as :func:`map_payload_file` gives it: ``bytes``, or a read-only mapping of its file."""


def map_payload_file(path: Path, size: int, *, populate: bool = True) -> Mapped:
    """The ``size`` bytes of the payload file ``path``, mapped read-only rather than read (``bytes`` where
    mapping is not possible: an empty file, a system without ``mmap``).

    For a payload read to be sent on at once (the server's reply with an output its service process wrote):
    the pages are the page cache's, so no copy is made and no memory is faulted in, and a transport that
    sends a buffer as it is (``kit.send_parts``) writes them to the socket straight from the cache. A
    payload file is never written again once renamed into place, so the mapping's contents do not change;
    removing the file meanwhile leaves them readable. The mapping is released with its last reference.
    Raises OSError when it cannot be read, ValueError naming both sizes when it holds another size.

    ``populate=False`` for a payload that may never be read (a lane's output, kept for a watcher that may
    come): its pages are faulted in only if it is (mapping 16 MiB at once takes milliseconds).
    """
    with open(path, "rb", buffering=0) as fh:
        found = os.fstat(fh.fileno()).st_size
        if found != size:
            raise ValueError(f"it holds {found} bytes where {size} were written")
        if not size:
            return b""
        try:
            # MAP_POPULATE (Linux): the cached pages are mapped at once rather than faulted in one by one.
            flags = mmap.MAP_SHARED | (getattr(mmap, "MAP_POPULATE", 0) if populate else 0)
            return mmap.mmap(fh.fileno(), size, flags=flags, prot=mmap.PROT_READ)
        except (OSError, ValueError, AttributeError):  # (no MAP_SHARED/PROT_READ: Windows)
            return read_payload_file(path, size)


def drop_cached(path: Path) -> None:
    """Drop the pages of payload file ``path`` that are on the disk from the page cache (the file stays), and
    start the writeback of those that are not.

    Pages still being written back stay: call it once the writeback had time to end. A file removed
    meanwhile is fine.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        _drop_clean_pages(fd)
    finally:
        os.close(fd)


def _drop_clean_pages(fd: int) -> None:
    """``POSIX_FADV_DONTNEED`` on the whole file: clean pages are dropped, dirty ones start their writeback.

    Only a hint: where the call does not exist (macOS) or fails, the pages stay cached as before.
    """
    advise = getattr(os, "posix_fadvise", None)
    if advise is not None:
        with contextlib.suppress(OSError):
            advise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
