"""Large task payloads in files of their own next to the store; the store's row names the file.

Why: a payload written into sqlite is copied three times (into the write-ahead log inside a group
commit, which delays every other acknowledgement of that group; into the database by the checkpointer,
with an fsync; then freed by the retention). Measured on a 2-core machine, a 16 MiB blob costs 55 ms to
insert and commit and 116-173 ms to checkpoint; a plain file write of the same bytes costs about 30 ms
and nothing after. So a payload of ``FILE_PAYLOAD_BYTES`` or more goes to a file under
``FLAME_HOME/payloads/`` and its ``task_payloads`` row holds the file's name and size instead of the
bytes; smaller payloads stay in sqlite, where a row is cheaper than a file.

Order. The file is written (by the thread that queues the row, outside the engine lock and the group
commit) before its row is queued, so a committed row never names a file that a crash of the server
process has not written yet. In ``strict`` durability the file and its directory entry are fsync-ed
before the row is queued too, so a row that survives a power loss names a file that survived it. In
``batched`` durability neither the file nor the row is fsync-ed at commit: a crash of the server keeps
both (they are in the operating system's hands), while a power loss may keep a recent row whose file
lost its contents; reading that task then fails with an error naming the file (see :meth:`read`).

Files without a row. A crash between the file write and its commit, a creation the store refused, or
rows deleted just before a late result was written, leave a file that no row names. They are removed at
start and by ``flmctl gc`` (:meth:`remove_orphans`); files written but not yet committed are known
(``pending``) and kept.

A file that cannot be written (the disk is full, a file size limit) is not an error: the payload is kept
inline in the row, and the store's own handling of a full disk applies (new work refused, finished work
retried until it is written).

Page cache. A payload file is read once, by the service or the server, and then kept only for the
record; its pages are dropped from the page cache once they are on the disk (see
:mod:`flamepy_core.wire.payload_handoff`): writing starts the writeback, a read drops what is clean,
and every file this server wrote or read back is dropped again ``DROP_CACHED_AFTER`` later, when its
writeback has ended (by the first :meth:`PayloadFiles.drop_due` after that, which the server calls once a
task went to its instance and once a result was answered: no thread, no timer).

Private: the directory is 0700 and each file is created 0600 (see :mod:`flamepy_core.privacy`).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import NamedTuple, TypeVar

from flamepy_core.contracts.errors import FlameError, FlameErrorCode
from flamepy_core.privacy import private_subdir
from flamepy_core.wire.payload_handoff import (
    TEMP_SUFFIX,
    Mapped,
    drop_cached,
    read_payload_file,
    write_payload_file,
)

log = logging.getLogger(__name__)

FILE_PAYLOAD_BYTES = 1 << 20
"""A payload this large or larger is stored in a file of its own rather than in sqlite."""
DIRECTORY_NAME = "payloads"
"""The folder, next to the store's file, that holds the payload files."""
_PREFIX = "p-"
DROP_CACHED_AFTER = (0.1, 1.0)
"""Seconds after a payload file was written or read back until its pages are dropped from the page cache,
then until they are dropped again. Pages still being written back stay at a drop: writing 16 MiB back
took under 20 ms on a 2-core virtual machine (a drop 2 ms after the write left 83% of the pages cached,
one 22 ms after it none); the second drop takes what a busy disk had not written by the first."""

E = TypeVar("E")


class PayloadFile(NamedTuple):
    """A payload written to a file of its own: the file's name (in the folder) and the payload's size."""

    name: str
    size: int


class PayloadFiles:
    """The payload files of one store: written, read, removed. Thread-safe."""

    def __init__(self, directory: Path, *, sync: bool, threshold: int = FILE_PAYLOAD_BYTES) -> None:
        self.directory = directory
        self._prefix_text = os.path.join(str(directory), "")
        self.sync = sync
        """fsync each file and its directory entry before its row is queued (``strict`` durability)."""
        self.threshold = threshold
        self._lock = threading.Lock()
        self._pending: set[str] = set()
        """Files written whose row is not committed (or given up) yet: never taken for orphans."""
        self._names_prefix = secrets.token_hex(8)
        self._names = itertools.count()
        """Reserved names: ``p-`` + this random prefix + a counter, 32 hex digits like a spilled file's."""
        self._made = False
        """The folder was made (by :meth:`reserve`)."""
        self._to_drop: tuple[deque[tuple[float, str]], ...] = tuple(deque() for _ in DROP_CACHED_AFTER)
        """Per drop (``DROP_CACHED_AFTER``): the files due, soonest first, with when (``time.monotonic``)."""
        self._writeback: list[str] = []
        """Files written here whose writeback the next :meth:`drop_due` starts (``batched`` durability)."""

    def path(self, name: str) -> Path:
        return self.directory / name

    def path_text(self, name: str) -> str:
        """``str(path(name))`` without building a ``Path``: every task sent to an instance names one."""
        return self._prefix_text + name

    # -- writing ---------------------------------------------------------------------------------------

    def spill(self, data: Mapped | memoryview | None) -> PayloadFile | None:
        """Write ``data`` to a new file when it is large; the file, or None to keep it inline.

        None too when the file cannot be written (full disk, file size limit): the row then holds the
        bytes and the store's handling of a full disk applies. The name stays ``pending`` until
        :meth:`settled` is called for it.
        """
        if data is None or len(data) < self.threshold:
            return None
        name = self.reserve()
        try:
            self._write(name, data)
        except OSError as exc:
            with self._lock:
                self._pending.discard(name)
            log.warning(
                "cannot write a payload of %d bytes to %s (%s); it is stored in the database instead",
                len(data),
                self.path(name),
                exc,
            )
            return None
        self.cached(name)
        return PayloadFile(name, len(data))

    def adopt(self, source: str, size: int) -> PayloadFile:
        """Take the finished file ``source`` of ``size`` bytes (a lane's payload file, written beside its
        lane's log by the lane's client or service process: :func:`flamepy_core.wire.lane_log.payload_path`)
        as a payload file, ``pending`` until settled.

        By a hard link: no byte is copied, and ``source`` keeps its own name until the lane lets it go
        (``engine.lanes``), so the server can take it again if the store refuses the row (:meth:`settled`
        with an error removes the link only). Copied where no link can be made (another file system, one
        without hard links). Raises OSError when ``source`` cannot be read, ValueError naming both sizes
        when it holds another size.
        """
        found = os.stat(source).st_size
        if found != size:
            raise ValueError(f"it holds {found} bytes where {size} were written")
        name = self.reserve(for_instance=True)
        try:
            try:
                os.link(source, self.path(name))
            except FileNotFoundError:
                if not os.path.exists(source):
                    raise
                private_subdir(self.directory)  # (the folder was removed meanwhile: made 0700 again)
                os.link(source, self.path(name))
            except OSError as exc:  # (no hard link here: EXDEV, EPERM, EMLINK)
                log.debug("cannot link %s into %s (%s): copied", source, self.directory, exc)
                self._write(name, read_payload_file(Path(source), size))
        except BaseException:
            self.release(name)
            raise
        self.cached(name)  # (its writer started the writeback: its pages leave the cache a little later)
        return PayloadFile(name, size)

    def reserve(self, *, for_instance: bool = False) -> str:
        """A new file name, ``pending`` until settled: for a file written here or by an instance.

        Every task offered to an instance gets one, whatever its output turns out to be, so this costs no
        system call: the name is this server's random prefix and a counter. ``for_instance``: the folder
        is made first if it was not yet (0700), as an instance writing the server's first large payload
        cannot make it private itself (one removed later makes that write fail: the output is then sent
        inline and written here)."""
        if for_instance and not self._made:
            private_subdir(self.directory)
            self._made = True
        name = f"{_PREFIX}{self._names_prefix}{next(self._names):016x}"
        with self._lock:
            self._pending.add(name)
        return name

    def release(self, name: str, *, written: bool = True) -> None:
        """A reserved name that was not used (or whose file is not taken): no longer pending, and whatever
        was written under it, whole or in part, removed. ``written=False``: nothing was (an instance that
        answered without using it cleans up its own failed writes), so nothing is looked for."""
        with self._lock:
            self._pending.discard(name)
        if written:
            self.remove([name, name + TEMP_SUFFIX])

    def cached(self, name: str) -> None:
        """File ``name`` was just written or read in full: its pages leave the page cache a little later, at
        a :meth:`drop_due` ``DROP_CACHED_AFTER`` from now."""
        with self._lock:
            self._to_drop[0].append((time.monotonic() + DROP_CACHED_AFTER[0], name))

    def drop_due(self) -> None:
        """Drop the files whose time came (``DROP_CACHED_AFTER``) from the page cache: by then their writeback
        has ended, unless the disk is very busy, which the second drop is for. Why: cached payload files
        nobody reads again make the cache grow by each payload, and a growing cache costs far more per page
        than one that reuses the pages it let go of (see :mod:`flamepy_core.wire.payload_handoff`).

        Also starts the writeback of the files written here since the last call (:meth:`spill`). Called where
        the server waits anyway, off the path of a call's answer (a task sent to its instance, a result
        answered): starting a 16 MiB file's writeback, or letting go of its pages, takes about half a
        millisecond, and two files per invoke are let go of twice. Nothing due costs a look under a lock.
        """
        if not (self._writeback or self._to_drop[0] or self._to_drop[1]):
            return  # (read without the lock: a file noted meanwhile is seen by the next call)
        now = time.monotonic()
        with self._lock:
            due, self._writeback = self._writeback, []
            for step, queue in enumerate(self._to_drop):
                while queue and queue[0][0] <= now:
                    old = queue.popleft()[1]
                    due.append(old)
                    if step + 1 < len(self._to_drop):
                        self._to_drop[step + 1].append((now + DROP_CACHED_AFTER[step + 1], old))
        for old in due:
            drop_cached(self.path(old))

    def _write(self, name: str, data: Mapped | memoryview) -> None:
        # Its writeback is started by the next drop_due (once its task went to the instance), not here on
        # the way there: about half a millisecond for 16 MiB.
        try:
            write_payload_file(self.path(name), data, sync=self.sync, start_writeback=False)
        except FileNotFoundError:  # the first large payload (or the folder was removed): made 0700
            private_subdir(self.directory)
            write_payload_file(self.path(name), data, sync=self.sync, start_writeback=False)
        if not self.sync:
            with self._lock:
                self._writeback.append(name)

    def settled(self, files: Iterable[PayloadFile | None], error: object | None) -> None:
        """The rows naming ``files`` were committed (``error`` None) or given up (their files go)."""
        taken = [file.name for file in files if file is not None]
        if not taken:
            return
        with self._lock:
            self._pending.difference_update(taken)
        if error is not None:
            self.remove(taken)

    def on_settled(self, files: list[PayloadFile | None], then: Callable[[E], None]) -> Callable[[E], None]:
        """A store commit callback: settle ``files`` with its outcome, then call ``then`` with it."""
        if not any(files):
            return then

        def settle(error: E) -> None:
            self.settled(files, error)
            then(error)

        return settle

    # -- reading and removing --------------------------------------------------------------------------

    def read(self, name: str, size: int, what: str) -> bytes:
        """The payload in file ``name`` (``size`` bytes); a clear FlameError when it is missing or short.

        ``what`` names the payload in that error (``the input of task 3 of session s1``).
        """
        path = self.path(name)
        try:
            return read_payload_file(path, size)
        except OSError as exc:
            raise self._unreadable(what, path, f"it cannot be read: {exc.strerror or exc}") from None
        except ValueError as exc:
            raise self._unreadable(what, path, str(exc)) from None

    def check(self, name: str, size: int, what: str) -> None:
        """That file ``name`` holds ``size`` bytes, without reading them; the FlameError of :meth:`read` if not."""
        path = self.path(name)
        try:
            found = os.stat(path).st_size
        except OSError as exc:
            raise self._unreadable(what, path, f"it cannot be read: {exc.strerror or exc}") from None
        if found != size:
            raise self._unreadable(what, path, f"it holds {found} bytes where {size} were written")

    @staticmethod
    def _unreadable(what: str, path: Path, why: str) -> FlameError:
        return FlameError(
            FlameErrorCode.INTERNAL,
            f"{what} is stored in the file {path}, but {why}: the file was removed or damaged outside "
            f"flamepy (or lost in a power loss before it reached the disk). That payload cannot be "
            f"recovered; the task's state and events are kept. Restore the file from a backup if you "
            f"have one, or delete the session to drop it",
        )

    def remove(self, names: Iterable[str]) -> None:
        """Remove payload files whose rows are gone (a file already gone is fine)."""
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path(name))

    def remove_orphans(self, named_by_rows: Callable[[], set[str]]) -> int:
        """Remove the files no row names and nobody is writing; how many were removed.

        ``named_by_rows`` reads the names in the store's rows. It is asked after the directory is
        listed and the pending names are taken, so a file whose row commits meanwhile is in one or the
        other (its name leaves ``pending`` only after its commit).
        """
        try:
            present = [entry.name for entry in os.scandir(self.directory) if entry.name.startswith(_PREFIX)]
        except FileNotFoundError:
            return 0
        if not present:
            return 0
        with self._lock:
            pending = set(self._pending)
        named = named_by_rows()
        orphans = []
        for name in present:
            base = name.removesuffix(TEMP_SUFFIX)
            if base in pending or (name == base and name in named):
                continue
            orphans.append(name)
        self.remove(orphans)
        if orphans:
            log.info("removed %d payload files that no task names (%s)", len(orphans), self.directory)
        return len(orphans)
