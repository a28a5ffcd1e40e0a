"""Payload retention: purge finished tasks' input and output after a while, and give the space back.

Every task's input and output are written to ``flame.db`` (large ones to files of their own, which its
rows name: see :mod:`.payload_files`). Once a task is final (SUCCEED, FAILED, CANCELLED) its client has
had its result; the payloads are kept ``payload_retention`` seconds after it finished (so a client that
reconnects, ``get_task`` and a session watcher's replay still see them), then purged: input and output
are removed (their files once the rows are committed gone), and the task keeps its state, times and
events plus one event (``flamepy_core.model.EVENT_PAYLOADS_PURGED``, 1005) that says why its payloads
are gone. Payload files that no row names (a crash between a file and its commit) are removed at
start and by ``collect``.

Nothing here stops the world. A background thread purges in small transactions (``PURGE_BATCH``
tasks each, found through an index of the finished tasks that still hold a payload, oldest first) and
gives free pages back to the file system in small steps (``PRAGMA incremental_vacuum``,
``COMPACT_STEP_PAGES`` pages each), pausing between steps so the engine's own writes go first. Some
free pages are kept for the next tasks to reuse (``KEEP_FREE_FRACTION`` of the file, at least
``KEEP_FREE_PAGES``), so a steady load does not shrink and regrow the file all the time.

``flmctl gc`` (:meth:`Retention.collect`, over ``flamepy.ext.v1.Runtime/CollectGarbage``) does the same
at once, with every free page given back, and converts a store created before incremental compaction
(``auto_vacuum=NONE``) with one full ``VACUUM``. The server converts such a store at start when it is
small (``CONVERT_AT_START_BYTES``); a larger one reuses its free pages but shrinks only after ``gc``.
All writes go through the store's group commit (:meth:`Store.write_wait`); ``VACUUM`` and the final
checkpoint through :meth:`Store.exclusive`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from flamepy_core.contracts.errors import FlameError
from flamepy_core.engine.ahead_log import SUFFIX as AHEAD_SUFFIX
from flamepy_core.engine.payload_files import DIRECTORY_NAME as PAYLOADS_DIRECTORY
from flamepy_core.engine.store import Op, Store
from flamepy_core.model import EVENT_PAYLOADS_PURGED
from flamepy_core.wire.proto import types_pb2 as pb

log = logging.getLogger(__name__)

PURGE_BATCH = 500
"""Tasks purged per transaction."""
COMPACT_STEP_PAGES = 256
"""Pages given back to the file system per transaction (1 MiB with sqlite's 4 KiB pages)."""
KEEP_FREE_FRACTION = 0.2
"""Free pages kept for reuse, as a fraction of the file's pages."""
KEEP_FREE_PAGES = 1024
"""Free pages always kept for reuse (4 MiB with 4 KiB pages)."""
STEP_PAUSE = 0.005
"""Seconds between two steps, so the engine's writes are not held up behind a long run of them."""
MAX_SWEEP_INTERVAL = 60.0
"""The longest pause between two sweeps (a sweep with nothing due costs one indexed query)."""
TRUNCATE_WAIT = 10.0
"""Seconds ``collect`` retries truncating the write-ahead log while another checkpoint holds it."""
CONVERT_AT_START_BYTES = 64 * 1024 * 1024
"""A store created before incremental compaction is converted at start (one VACUUM) up to this size."""

_DUE = (
    "SELECT t.session_id, t.id, t.status, t.finished, t.input IS NOT NULL OR t.output IS NOT NULL OR EXISTS "
    "(SELECT 1 FROM task_payloads p WHERE p.session_id = t.session_id AND p.id = t.id), "
    "(SELECT group_concat(f.file, '/') FROM task_payloads f "
    "WHERE f.session_id = t.session_id AND f.id = t.id AND f.file IS NOT NULL) "
    "FROM tasks t WHERE t.finished <= ? ORDER BY t.finished LIMIT ?"
)
"""Final tasks whose payloads are due, oldest first (the store's partial index on ``tasks.finished``),
whether they hold any (in ``task_payloads``, or in the columns of a store from before it), and the files
that hold the large ones (names joined by ``/``, which no name contains)."""
_DROP_PAYLOADS = "DELETE FROM task_payloads WHERE session_id = ? AND id = ?"
_PURGED = "UPDATE tasks SET input = NULL, output = NULL, status = ?, finished = NULL WHERE session_id = ? AND id = ?"
_NOTHING_HELD = "UPDATE tasks SET finished = NULL WHERE session_id = ? AND id = ?"
_AUTO_VACUUM_NONE = 0


@dataclass(frozen=True)
class CollectReport:
    """What one :meth:`Retention.collect` did."""

    tasks_purged: int
    bytes_before: int
    bytes_after: int
    seconds: float
    older_than: float
    rebuilt: bool
    """A full VACUUM converted a store from before incremental compaction."""


def store_bytes(path: str) -> int:
    """The store's size on disk: the database file, its write-ahead log, its ahead log and the payload
    files."""
    total = 0
    for name in (path, f"{path}-wal", path + AHEAD_SUFFIX):
        with contextlib.suppress(FileNotFoundError):
            total += os.path.getsize(name)
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(Path(path).parent / PAYLOADS_DIRECTORY):
            with contextlib.suppress(FileNotFoundError):
                total += entry.stat().st_size
    return total


def sweep_interval(retention: float) -> float:
    """How often the background sweep looks for due payloads: a tenth of the retention, 0.5 to 60 s."""
    return min(MAX_SWEEP_INTERVAL, max(0.5, retention / 10))


class Retention:
    """Purges due payloads and compacts the store, in the background and on demand. Thread-safe."""

    def __init__(self, store: Store, retention: float, *, convert_at_start_bytes: int = CONVERT_AT_START_BYTES) -> None:
        self.store = store
        self.retention = retention
        self.convert_at_start_bytes = convert_at_start_bytes
        self._work = threading.Lock()
        """One sweep or collect at a time."""
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the background sweep ------------------------------------------------------------------------

    def start(self) -> None:
        """Remove payload files no task names, convert a small store from before incremental compaction,
        then sweep in the background."""
        self.store.remove_orphan_payload_files()  # a crash between a payload's file and its commit
        if self._auto_vacuum() == _AUTO_VACUUM_NONE:
            size = store_bytes(self.store.path)
            if size <= self.convert_at_start_bytes:
                started = time.monotonic()
                self._rebuild()
                log.info(
                    "converted the store %s to incremental compaction (one VACUUM of %d bytes, %.2f s)",
                    self.store.path,
                    size,
                    time.monotonic() - started,
                )
            else:
                log.info(
                    "the store %s (%d bytes) was created before incremental compaction: its free pages are "
                    "reused, but it shrinks only after `flmctl gc`, which converts it with one VACUUM that "
                    "holds up the server meanwhile",
                    self.store.path,
                    size,
                )
        self._thread = threading.Thread(target=self._run, name="flame-retention", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Sweep now: a session closed, or sessions were deleted (their pages are free)."""
        self._wake.set()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the sweep (between two steps) and wait for it."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        interval = sweep_interval(self.retention)
        while not self._stopping.is_set():
            try:
                with self._work:
                    self._purge_due(self._cutoff(self.retention), f"payload_retention of {self.retention:g} s")
                    if self._compact(keep=self._keep_free()):
                        # The file shrinks when the log is copied back: now, not at some later write.
                        self.store.request_checkpoint()
            except FlameError as exc:  # the store cannot write now: try again at the next sweep
                log.warning("payload retention: %s", exc.message)
            except Exception:  # a bug must not end the sweeps for good
                log.exception("payload retention failed")
            self._wake.wait(interval)
            self._wake.clear()

    # -- on demand (flmctl gc) -----------------------------------------------------------------------

    def collect(self, older_than: float | None = None) -> CollectReport:
        """Purge every payload due (finished more than ``older_than`` s ago; default: the retention),
        give every free page back, and convert a store from before incremental compaction."""
        horizon = self.retention if older_than is None else older_than
        started = time.monotonic()
        before = store_bytes(self.store.path)
        with self._work:
            purged = self._purge_due(self._cutoff(horizon), f"flmctl gc (older than {horizon:g} s)")
            self.store.remove_orphan_payload_files()
            rebuilt = self._auto_vacuum() == _AUTO_VACUUM_NONE
            if rebuilt:
                self._rebuild()
            else:
                self._compact(keep=0)
                self._truncate_log()
        return CollectReport(
            tasks_purged=purged,
            bytes_before=before,
            bytes_after=store_bytes(self.store.path),
            seconds=time.monotonic() - started,
            older_than=horizon,
            rebuilt=rebuilt,
        )

    # -- steps -----------------------------------------------------------------------------------------

    @staticmethod
    def _cutoff(horizon: float) -> int:
        return int((time.time() - horizon) * 1000)

    def _purge_due(self, cutoff_ms: int, why: str) -> int:
        """Purge every task that finished at or before ``cutoff_ms``, a batch per transaction; how many had
        payloads to purge."""
        total = 0
        while not self._stopping.is_set():
            seen, purged = self._purge_batch(cutoff_ms, why, PURGE_BATCH)
            total += purged
            if seen < PURGE_BATCH:
                break
            time.sleep(STEP_PAUSE)
        if total:
            log.info("purged the payloads of %d finished tasks (%s)", total, why)
        return total

    def purge_step(self, cutoff_ms: int, why: str, limit: int = PURGE_BATCH) -> int:
        """Purge up to ``limit`` tasks that finished at or before ``cutoff_ms``; how many had payloads."""
        return self._purge_batch(cutoff_ms, why, limit)[1]

    def _purge_batch(self, cutoff_ms: int, why: str, limit: int) -> tuple[int, int]:
        """One transaction: the tasks due (at most ``limit``) lose their payloads; (seen, purged)."""
        rows = self.store.query(_DUE, cutoff_ms, limit)
        if not rows:
            return 0, 0
        now = int(time.time() * 1000)
        ops: list[Op] = []
        files: list[str] = []
        purged = 0
        for session_id, task_id, status_bytes, finished, holds_payload, in_files in rows:
            if not holds_payload:  # nothing to purge (no input, no output): it just leaves the index
                ops.append((_NOTHING_HELD, (session_id, task_id)))
                continue
            status = pb.TaskStatus.FromString(status_bytes)
            status.events.add(
                code=EVENT_PAYLOADS_PURGED,
                message=f"input and output purged: {why} (finished {_age(now - finished)} before)",
                creation_time=now,
            )
            ops.append((_DROP_PAYLOADS, (session_id, task_id)))
            ops.append((_PURGED, (status.SerializeToString(), session_id, task_id)))
            if in_files:
                files.extend(in_files.split("/"))
            purged += 1
        # A final task never changes again, so what was read is what is rewritten.
        self.store.write_wait(ops, durable=False)
        self.store.payloads.remove(files)  # after the commit: a row never names a removed file
        return len(rows), purged

    def _compact(self, keep: int) -> int:
        """Give free pages back, a step per transaction, until at most ``keep`` are left."""
        freed = 0
        while not self._stopping.is_set():
            excess = self._free_pages() - keep
            if excess <= 0:
                break
            step = min(excess, COMPACT_STEP_PAGES)
            # One page per statement: Python's sqlite3 runs a pragma for one step, and one step of
            # incremental_vacuum moves one page (so the count stays exact on any Python).
            self.store.write_wait([("PRAGMA incremental_vacuum(1)", ())] * step, durable=False)
            freed += step
            time.sleep(STEP_PAUSE)
        return freed

    def _keep_free(self) -> int:
        pages = self._pragma("page_count")
        return max(KEEP_FREE_PAGES, int(pages * KEEP_FREE_FRACTION))

    def _free_pages(self) -> int:
        return self._pragma("freelist_count")

    def _auto_vacuum(self) -> int:
        # Asked on the write connection: another connection keeps the mode it first read, even after a VACUUM.
        return int(self.store.exclusive(lambda conn: conn.execute("PRAGMA auto_vacuum").fetchone()[0]))

    def _pragma(self, name: str) -> int:
        return int(self.store.query(f"PRAGMA {name}")[0][0])

    def _rebuild(self) -> None:
        """One full VACUUM: the store's connection asks for incremental compaction, which it then has."""
        self.store.exclusive(_vacuum)
        self._truncate_log()

    def _truncate_log(self) -> None:
        """Copy the write-ahead log back and truncate it, retrying while the checkpointer thread is at it."""
        deadline = time.monotonic() + TRUNCATE_WAIT
        while not self.store.exclusive(_checkpoint) and time.monotonic() < deadline:
            time.sleep(0.05)


def _vacuum(conn: sqlite3.Connection) -> None:
    conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
    conn.execute("VACUUM")


def _checkpoint(conn: sqlite3.Connection) -> bool:
    """Copy the write-ahead log into the database and truncate both to what they hold; False when busy
    (another checkpoint runs, or a reader still needs the log)."""
    busy, _log, _copied = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    return not busy


def _age(ms: int) -> str:
    seconds = max(0, ms) / 1000
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
