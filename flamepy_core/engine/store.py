"""Persistence in sqlite (WAL) under ``FLAME_HOME/flame.db``, with commit callbacks.

The engine keeps live state in memory and tells a client something (a task accepted, a task done, a
session created, an object stored) only once it is committed. So every write carries a callback that
fires after its COMMIT, or with the error that stopped it.

Group commit. Writes are queued (:meth:`Store.enqueue`); :meth:`Store.commit` then commits everything
queued, in one transaction, on the calling thread, unless another thread is committing right now, in
which case that thread takes the new writes into its next round. Under load many writes share one
transaction; a lone write costs one commit and no thread hand-off. Writes marked ``lazy`` (state that
nobody is told about, such as a task becoming RUNNING) wait for the next commit, or at most
``LAZY_DELAY`` seconds for the writer thread. One connection writes; reads use another and never wait
for writes (WAL).

When a write fails. The transaction is rolled back and the writer thread retries with back-off:

* a *withdrawable* write (what a client asked for and waits on: create a task, a session, store an
  object) fails after ``retry_window`` seconds, or at its first failure while the store is already
  failing; its callback receives the error and the engine withdraws the change, so a call that was
  told "failed" never takes effect later;
* a *durable* write (the result of work that was done, an event) stays queued and is retried until it
  is committed; its callback then fires as usual.

Errors are ``FlameError``: ``RESOURCE_EXHAUSTED`` when the disk is full or the file cannot grow (naming
the file and sqlite's error), ``UNAVAILABLE`` when the database is locked or cannot be opened. When
space returns, the next attempt succeeds and the store is healthy again, without a restart.

Checkpoints. sqlite would copy the WAL into the database file (and fsync both) inside whichever commit
crosses its threshold, stalling that caller for as long as the copy takes (a second for a few large
payloads on a busy disk). Here commits never checkpoint: a checkpointer thread with a connection of its
own copies the WAL in the background (``PASSIVE``: it never blocks a writer) once it holds more than
``CHECKPOINT_BYTES`` (read from the WAL index's header: the frames written since the log was last
started over), and truncates it when the store is quiet. sqlite starts the WAL over from its beginning
after a complete checkpoint without shrinking the file, and the file is kept so: commits then write
into blocks the file already has. Cutting it back there (``journal_size_limit``) made the commit that
started the log over drop ~32 MiB of it, 8 to 11 ms during which every other commit waited, and every
later commit grow the file again. ``WAL_SIZE_LIMIT`` cuts back only a log that a burst grew far past
the threshold.

Durability (``synchronous``): ``"batched"`` (default) runs with ``synchronous=NORMAL``: a commit
survives a crash of the server process (the WAL is in the operating system's hands), while a power
loss may drop the last transactions before the next checkpoint (the file stays consistent). ``"strict"``
runs with ``synchronous=FULL``: every commit is fsync-ed, so it survives a power loss too, at the cost
of an fsync per group commit.

The ahead log (``ahead_log=True``, the server's store in ``"batched"`` mode). A group that would be
committed on a caller's thread is appended to a log file of its own instead (:mod:`.ahead_log`: one
``write``, as durable as the commit at ``synchronous=NORMAL``), and its callbacks run at once; a fold
thread applies what the log holds to sqlite ``FOLD_DELAY`` later, in one transaction for all of it (its
rows in slices of ``FOLD_SLICE_ROWS`` with ``FOLD_PAUSE`` between them: see ``Store._run_folder``), and
every transaction applies it first, so the order of writes is the order they were queued. A read
(:meth:`Store.query`) applies it before it reads: what was acknowledged is what a read sees. A start
applies what a crash left in the log before anything is served. While the store is failing, and in
``"strict"`` mode, commits go to sqlite as before.

Large payloads. A task's input or output of ``FILE_PAYLOAD_BYTES`` (1 MiB) or more is kept in a file of
its own under ``payloads/`` next to the database, written before the row that names it is committed;
the row holds the file's name and size. See :mod:`.payload_files` for why, and for what survives what.

Task counts. ``task_counts`` holds each session's number of tasks in every state, kept by triggers on
``tasks`` inside the statement that inserts, updates or deletes a task row, so the counts are exact in
every committed transaction whoever writes (the engine, the retention, a migration) and a start reads one
row per session instead of counting its tasks. A store from before gets the table, its triggers and its
counts once, at the first start of this version (:func:`_add_task_counts`).

Rows hold the flame.v1 protobuf messages as blobs next to the columns we query by, so the on-disk
format is the wire format and needs no second schema.

Space. A new store is created with ``auto_vacuum=INCREMENTAL``, so pages freed by purging finished
tasks' payloads can be given back to the file system a few at a time (see :mod:`.retention`); the
write-ahead log is truncated when the store is quiet. A store created before
(``auto_vacuum=NONE``) reuses its free pages but shrinks only after one full ``VACUUM``
(:meth:`Store.exclusive`), which converts it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

from flamepy_core.contracts.errors import FlameError, FlameErrorCode
from flamepy_core.engine.ahead_log import (
    STORE_ID_BYTES,
    AheadLog,
    ForeignLog,
    NotLoggable,
    encode_ops,
    read_records,
)
from flamepy_core.engine.ahead_log import SUFFIX as AHEAD_SUFFIX
from flamepy_core.engine.payload_files import DIRECTORY_NAME as PAYLOADS_DIRECTORY
from flamepy_core.engine.payload_files import PayloadFiles
from flamepy_core.engine.statements import merged_statements

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS applications (
    name TEXT PRIMARY KEY,
    data BLOB NOT NULL                      -- flame.v1.Application
);
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    application TEXT NOT NULL,
    state INTEGER NOT NULL,
    data BLOB NOT NULL                      -- flame.v1.Session (spec + status)
);
CREATE INDEX IF NOT EXISTS sessions_by_app ON sessions(application);
CREATE TABLE IF NOT EXISTS tasks (
    session_id TEXT NOT NULL,
    id INTEGER NOT NULL,
    state INTEGER NOT NULL,
    input BLOB,                             -- a payload of at most INLINE_PAYLOAD_BYTES (engine.state),
    output BLOB,                            -- else NULL and in task_payloads
    status BLOB NOT NULL,                   -- flame.v1.TaskStatus (times, events)
    finished INTEGER,                       -- completion time (epoch ms) of a final task whose payloads are
                                            -- kept; NULL before it is final and once they are purged
    PRIMARY KEY (session_id, id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS task_payloads (
    session_id TEXT NOT NULL,
    id INTEGER NOT NULL,
    kind INTEGER NOT NULL,                  -- 0 input, 1 output (see engine.state)
    file TEXT,                              -- a large payload's file in payloads/ (engine.payload_files),
    file_size INTEGER,                      -- and its size; NULL: the payload is ``data``
    data BLOB NOT NULL,                     -- empty when ``file`` holds the payload
    PRIMARY KEY (session_id, id, kind)
);
CREATE TABLE IF NOT EXISTS objects (
    key TEXT PRIMARY KEY,
    version INTEGER NOT NULL,
    base_version INTEGER NOT NULL,
    base BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS ahead_applied (
    id INTEGER PRIMARY KEY CHECK (id = 0),
    seq INTEGER NOT NULL,                   -- the last ahead-log record applied (engine.ahead_log)
    log_id BLOB NOT NULL                    -- the id in the header of this store's ahead log
);
CREATE TABLE IF NOT EXISTS object_patches (
    key TEXT NOT NULL,
    version INTEGER NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (key, version)
) WITHOUT ROWID;
"""

PAYLOADS_DUE_INDEX = """
CREATE INDEX IF NOT EXISTS tasks_by_finish ON tasks(finished) WHERE finished IS NOT NULL;
"""
"""Final tasks whose payloads are kept, oldest first: what the retention purges next (a task leaves the
index once purged, so the purge never scans what it already did)."""
PAYLOAD_FILES_INDEX = """
CREATE INDEX IF NOT EXISTS task_payload_files ON task_payloads(session_id, id, file) WHERE file IS NOT NULL;
"""
"""The payloads held in files, by task: what a purge or a delete removes, and what an orphan is not
(reading ``file`` from the table itself would walk the overflow pages of every large inline payload)."""

TASK_COUNTS = [
    """
    CREATE TABLE task_counts (
        session_id TEXT PRIMARY KEY,
        pending INTEGER NOT NULL,
        running INTEGER NOT NULL,
        succeed INTEGER NOT NULL,
        failed INTEGER NOT NULL,
        cancelled INTEGER NOT NULL
    ) WITHOUT ROWID
    """,
    """
    CREATE TRIGGER task_counts_insert AFTER INSERT ON tasks BEGIN
        INSERT INTO task_counts VALUES
            (new.session_id, new.state = 0, new.state = 1, new.state = 2, new.state = 3, new.state = 4)
        ON CONFLICT (session_id) DO UPDATE SET
            pending = pending + excluded.pending, running = running + excluded.running,
            succeed = succeed + excluded.succeed, failed = failed + excluded.failed,
            cancelled = cancelled + excluded.cancelled;
    END
    """,
    """
    CREATE TRIGGER task_counts_update AFTER UPDATE OF state ON tasks WHEN old.state IS NOT new.state BEGIN
        UPDATE task_counts SET
            pending = pending - (old.state = 0) + (new.state = 0),
            running = running - (old.state = 1) + (new.state = 1),
            succeed = succeed - (old.state = 2) + (new.state = 2),
            failed = failed - (old.state = 3) + (new.state = 3),
            cancelled = cancelled - (old.state = 4) + (new.state = 4)
        WHERE session_id = new.session_id;
    END
    """,
    """
    CREATE TRIGGER task_counts_delete AFTER DELETE ON tasks BEGIN
        UPDATE task_counts SET
            pending = pending - (old.state = 0), running = running - (old.state = 1),
            succeed = succeed - (old.state = 2), failed = failed - (old.state = 3),
            cancelled = cancelled - (old.state = 4)
        WHERE session_id = old.session_id;
    END
    """,
]
"""Each session's tasks by state (Pending 0, Running 1, Succeed 2, Failed 3, Cancelled 4), kept by triggers.

One row per session, one column per state: a change of state is one update of one row. A task never
moves to another session (``session_id`` is part of its key), so the update trigger watches ``state``
only. ``INSERT OR REPLACE`` deletes the row it replaces without firing delete triggers unless
``recursive_triggers`` is on, which every connection of the store turns on. Deleting a session's tasks
leaves its row at zeros: the engine deletes the row with the session."""
TASK_COUNTS_COLUMNS = ("pending", "running", "succeed", "failed", "cancelled")
"""``task_counts``' columns after ``session_id``, in the order of the task states."""
_BACKFILL_TASK_COUNTS = (
    "INSERT INTO task_counts SELECT session_id, SUM(state = 0), SUM(state = 1), SUM(state = 2), "
    "SUM(state = 3), SUM(state = 4) FROM tasks GROUP BY session_id"
)

Op = tuple[str, tuple[Any, ...]]
T = TypeVar("T")
OnDone = Callable[[FlameError | None], None]
DURABILITY = ("batched", "strict")

LAZY_DELAY = 0.02
"""Seconds a lazy write may wait for another write's commit before the writer thread commits it."""
MAX_INLINE_ROUNDS = 4
"""Group commits one caller runs in a row before it leaves the rest to the writer thread."""
CHECKPOINT_BYTES = 32 << 20
"""The WAL is copied into the database (in the background) once it is larger than this."""
CHECKPOINT_IDLE = 5.0
"""Seconds without a commit after which the checkpointer also truncates the WAL."""
WAL_SIZE_LIMIT = 4 * CHECKPOINT_BYTES
"""A WAL file larger than this is cut back to it when sqlite starts the log over (``journal_size_limit``):
only after a burst (a reader kept checkpoints from finishing); a steady load keeps its log under it."""
WAL_INDEX_MX_FRAME = 16
"""Byte offset of ``mxFrame`` (u32, native byte order) in the WAL index's header (``-shm``): the frames in
the log since it was last started over (sqlite's file format, walformat.html)."""
WAL_FRAME_HEADER = 24
"""Bytes of a WAL frame's header, before its page."""
CHECKPOINT_MIN_INTERVAL = 0.5
"""Seconds between two checkpoints asked for by size (a reader can keep one from completing)."""
BACKOFF_FIRST = 0.02
BACKOFF_MAX = 1.0
BUSY_TIMEOUT = 30
"""Seconds a connection waits for sqlite's lock (another process's transaction) before its statement fails."""
READ_WAIT = 1.0
"""Seconds a read waits for what the ahead log holds to be applied before it reads without it."""
FOLD_DELAY = 0.01
"""Seconds a write acknowledged by the ahead log may wait before the fold thread applies it to sqlite
(with every other one logged meanwhile: one transaction for all of them). Short: a fold of 10 ms of warm
invokes (~25 rows) takes a few hundred µs, where 50 ms of them held a CPU long enough to show in the p99
(see ``Store._run_folder``)."""
FOLD_CHUNK = 256
"""Logged writes the fold thread applies in one transaction at most (the rest at once, in the next): what
a commit or a read waiting for the connection waits behind, at the fold thread's priority, is bounded."""
FOLD_NICE = 10
"""How much the fold thread lowers its own scheduling priority (a nice increment; Linux, where a thread has
its own): see :meth:`Store._run_folder`."""
FOLD_SLICE_ROWS = 8
"""Rows the fold thread applies per statement at most: its transaction is cut into slices of this many
rows, with a pause (``FOLD_PAUSE``) between them (see :meth:`Store._run_folder`)."""
FOLD_PAUSE = 0.0005
"""Seconds the fold thread pauses between two slices of its transaction, unless a thread waits for the
connection, and for at most ``FOLD_DELAY / 2`` per transaction (so a fold keeps up with any load)."""
AHEAD_MAX = 4096
"""Logged writes not yet applied beyond which a commit goes to sqlite (applying them all with it): the
memory they hold stays bounded when the fold thread falls behind."""
AHEAD_LOG_LIMIT = 16 << 20
"""Bytes of ahead log beyond which a commit goes to sqlite, which applies everything logged, and the log
is emptied (the fold thread applies records while others are appended, so it does not empty it)."""
AHEAD_RECORD_MAX = 64 << 10
"""A group of writes whose records are larger than this is committed to sqlite directly: a large payload
is written once."""
_MARK_APPLIED = "UPDATE ahead_applied SET seq = ? WHERE id = 0"

_DISK_ERRORS = frozenset({"SQLITE_FULL", "SQLITE_NOMEM"})
"""sqlite errors (besides every SQLITE_IOERR_*) that mean "no room": RESOURCE_EXHAUSTED."""
_UNAVAILABLE_ERRORS = frozenset(
    {"SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_CANTOPEN", "SQLITE_READONLY", "SQLITE_PROTOCOL"}
)


class _Write:
    """Queued changes, their callback, and how a failure treats them."""

    __slots__ = ("deadline", "durable", "lazy", "make", "on_done", "ops", "seq")

    def __init__(
        self,
        ops: list[Op],
        on_done: OnDone | None,
        durable: bool,
        lazy: bool = False,
        make: Callable[[], list[Op]] | None = None,
    ) -> None:
        self.ops = ops
        self.make = make
        """Makes ``ops`` when a commit takes the write (see :meth:`Store.enqueue_rows`); None once made."""
        self.on_done = on_done
        self.durable = durable
        self.lazy = lazy
        self.deadline: float | None = None
        self.seq = 0
        """Its place in the order of writes queued (see :meth:`Store.drop`)."""
        """For a withdrawable write that failed: when it stops being retried."""


QueuedWrite = _Write
"""A queued write, as :meth:`Store.enqueue` returns it (for :meth:`Store.drop`)."""


def store_error(path: str, exc: BaseException) -> FlameError:
    """A failed sqlite write as the error a caller sees: the file, sqlite's words and what to do."""
    name = str(getattr(exc, "sqlite_errorname", "") or type(exc).__name__)
    text = f"cannot write the store {path}: {exc} ({name})"
    if name in _DISK_ERRORS or name.startswith("SQLITE_IOERR"):
        return FlameError(
            FlameErrorCode.RESOURCE_EXHAUSTED,
            f"{text}; the disk is full or the file cannot grow: free space (or raise the file size limit), "
            f"then retry. Work already done is kept in memory and written once space returns",
        )
    if name in _UNAVAILABLE_ERRORS:
        return FlameError(FlameErrorCode.UNAVAILABLE, f"{text}; retry shortly")
    return FlameError(FlameErrorCode.INTERNAL, text)


def _is_transient(exc: BaseException) -> bool:
    """Failures of the disk or of locking, which may pass: not a bad statement (which is a bug)."""
    name = str(getattr(exc, "sqlite_errorname", "") or "")
    if name:
        return name in _DISK_ERRORS or name in _UNAVAILABLE_ERRORS or name.startswith("SQLITE_IOERR")
    # Python < 3.11 has no error names: an OperationalError is about the database, not the statement.
    return isinstance(exc, sqlite3.OperationalError) and "syntax" not in str(exc) and "no such" not in str(exc)


def _open_wal_index(path: str) -> int | None:
    """A descriptor of the WAL index (``-shm``), to read how much the log holds; None if it cannot be opened
    (then the log's file size stands in)."""
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None


def _single_statement(batch: list[_Write]) -> Op | None:
    """The one statement of a batch that has exactly one (a warm invoke's usual commit), else None."""
    if len(batch) > 2:
        return None
    ops = [op for item in batch for op in item.ops]
    return ops[0] if len(ops) == 1 else None


class Store:
    """sqlite persistence with group commit and commit callbacks. Thread-safe.

    Never call :meth:`commit` (or :meth:`write_wait`) while holding a lock that a commit callback may
    need: callbacks run on the committing thread.
    """

    def __init__(
        self,
        path: Path | str,
        *,
        durability: str = "batched",
        retry_window: float = 2.0,
        ahead_log: bool = False,
    ) -> None:
        if durability not in DURABILITY:
            raise ValueError(f"durability must be one of {', '.join(DURABILITY)}, got {durability!r}")
        self.path = str(path)
        self.durability = durability
        self.retry_window = retry_window
        self._write = self._connect()
        self._write.executescript(SCHEMA)
        _add_finished_column(self._write, self.path)
        _add_payload_file_columns(self._write, self.path)
        _add_task_counts(self._write, self.path)
        self._write.executescript(PAYLOADS_DUE_INDEX + PAYLOAD_FILES_INDEX)
        self._write.execute("PRAGMA wal_autocheckpoint=0")  # the checkpointer thread does it, off the commit
        self._write.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
        self._frame_bytes = int(self._write.execute("PRAGMA page_size").fetchone()[0]) + WAL_FRAME_HEADER
        self._read = self._connect()
        self._read_lock = threading.Lock()
        self.payloads = PayloadFiles(Path(self.path).parent / PAYLOADS_DIRECTORY, sync=durability == "strict")
        """Large task payloads, in files of their own (see :mod:`.payload_files`)."""
        self.after_callbacks: Callable[[], None] | None = None
        """Called on the committing thread after the callbacks of each batch: work they queued that is
        cheaper done once for all of them (the engine feeds its watchers there)."""
        self._mutex = threading.Lock()
        self._cond = threading.Condition(self._mutex)
        """Waits and wake-ups of the writer and of exclusive(); the hot paths (enqueue, drop, commit) take
        ``_mutex``, the same lock, directly: a Condition's ``with`` is two Python calls more each time."""
        self._queue: deque[_Write] = deque()
        self._seq = 0
        self._taken_seq = 0
        """Every write with a ``seq`` up to this was taken by a commit (see :meth:`drop`)."""
        self._urgent = 0
        """Writes in the queue that are not lazy (someone waits for their commit)."""
        self._leader = False
        """A thread is committing: writes queued now go into its next round."""
        self._exclusive_waiting = 0
        """Threads waiting in :meth:`exclusive`: no new commit round starts before they had their turn."""
        self._lazy_due: float | None = None
        self._writer_wakes_at: float | None = None
        """When the writer thread is to look at the queue next by itself (None: only when notified). Kept
        until then even if the queue empties meanwhile: lazy writes due later need no wake-up."""
        self.writer_wakeups = 0
        """Times the writer thread was notified of a lazy write (diagnostics and tests)."""
        self._failure: FlameError | None = None
        self._backoff = BACKOFF_FIRST
        self._retry_at = 0.0
        self._untried = False
        """Writes arrived that were never attempted (while failing, they are attempted at once)."""
        self._closing = False
        self._closed = False
        self.damage_seen = False
        """sqlite said the file is damaged, on a read or a write (see :meth:`_note_damage`)."""
        self.commits = 0
        self.checkpoints = 0
        """Checkpoints run by the checkpointer thread (diagnostics and tests)."""
        self._conn_lock = threading.RLock()
        """One transaction at a time on the write connection: a leader's, a fold's, ``exclusive``'s."""
        self._conn_waiting = 0
        """Threads waiting for ``_conn_lock`` (under ``_mutex``): a paced fold stops pausing for them."""
        self._log_lock = threading.Lock()
        """Appending to the ahead log, and emptying it."""
        self._ahead: list[tuple[int, list[Op]]] = []
        """Writes the ahead log acknowledged and sqlite does not hold yet, oldest first: (record seq, ops)."""
        self._ahead_due: float | None = None
        """When the fold thread applies ``_ahead`` (FOLD_DELAY after the first of them was logged)."""
        self._fold_cond = threading.Condition(self._mutex)
        self._folder_wakes_at: float | None = None
        """When the fold thread looks next by itself (None: only when notified)."""
        self._applied_seq = self._logged_seq = self._recover_ahead()
        """The last record applied to sqlite; the last appended. A read finding them apart applies the rest."""
        self._ahead_log: AheadLog | None = None
        if ahead_log and durability == "batched":
            self._ahead_log = AheadLog(self.path + AHEAD_SUFFIX, self._log_id)
        # Connected here, before any write: a connection's set-up (its PRAGMAs) waits for the write lock,
        # which writes that never pause kept from it for its whole busy timeout (30 s), while the log grew.
        checkpoint_conn = self._connect()
        self._wal = self.path + "-wal"
        self._wal_index = _open_wal_index(self.path + "-shm")  # (read by every commit: before any thread runs)
        self._writer = threading.Thread(target=self._run_writer, name="flame-store-writer", daemon=True)
        self._writer.start()
        self._folder: threading.Thread | None = None
        if self._ahead_log is not None:
            self._folder = threading.Thread(target=self._run_folder, name="flame-store-fold", daemon=True)
            self._folder.start()
        self._last_commit = time.monotonic()
        self._checkpoint_wanted = threading.Event()
        self._checkpointer = threading.Thread(
            target=self._run_checkpointer, args=(checkpoint_conn,), name="flame-store-checkpoint", daemon=True
        )
        self._checkpointer.start()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=BUSY_TIMEOUT)
        # Takes effect on a new file only (before WAL and the first table), or at the next VACUUM.
        conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={'FULL' if self.durability == 'strict' else 'NORMAL'}")
        conn.execute("PRAGMA foreign_keys=OFF")
        conn.execute("PRAGMA recursive_triggers=ON")  # a task row that INSERT OR REPLACE replaces is uncounted
        return conn

    # -- writes --------------------------------------------------------------------------------------

    @property
    def failure(self) -> FlameError | None:
        """The last write error while the store cannot write; None when it is healthy."""
        return self._failure

    def enqueue(
        self,
        ops: list[Op],
        on_done: OnDone | None = None,
        *,
        durable: bool = True,
        lazy: bool = False,
        within: float | None = None,
        make: Callable[[], list[Op]] | None = None,
    ) -> QueuedWrite:
        """Queue ``ops`` as one unit; ``on_done(None)`` after their commit, ``on_done(error)`` if withdrawn.

        Nothing is written until :meth:`commit` runs (here or on another thread), or, for a ``lazy``
        write, at most ``LAZY_DELAY`` seconds later (``within`` seconds, when given: a write someone will
        be told of, which may wait that long for others to share its transaction). Writes are committed
        in the order they were queued. ``make``: see :meth:`enqueue_rows`.
        """
        with self._mutex:
            if self._closed or self._closing:
                raise FlameError(FlameErrorCode.UNAVAILABLE, f"the store {self.path} is closed: the server is stopping")
            write = _Write(ops, on_done, durable, lazy, make)
            self._seq += 1
            write.seq = self._seq
            self._queue.append(write)
            self._untried = True
            if not lazy:
                self._urgent += 1
            if lazy and (self._lazy_due is None or within is not None):
                due = time.monotonic() + (LAZY_DELAY if within is None else within)
                if self._lazy_due is not None and self._lazy_due <= due:
                    return write
                self._lazy_due = due
                wakes_at = self._writer_wakes_at
                if wakes_at is None or wakes_at > self._lazy_due:
                    # Only when the writer would sleep past the deadline: on a busy server the lazy writes
                    # go out with the next commit, and waking the writer for each would cost a thread
                    # switch per task. A writer that looks earlier by itself just waits again.
                    self._writer_wakes_at = self._lazy_due
                    self.writer_wakeups += 1
                    self._cond.notify()
        return write

    def enqueue_rows(self, make: Callable[[], list[Op]]) -> QueuedWrite:
        """Queue a durable, lazy write whose statements ``make()`` gives when a commit takes it (once, with the
        store's lock held: it may take a lock of its own, never this store's).

        For statements that may become needless while they wait: the RUNNING rows of a batch of tasks sent
        to an instance, less those whose final row is queued by then (see ``engine.state.RunningRows``).
        One write for the batch, where a write per task cost a queued write and a :meth:`drop` each.
        """
        return self.enqueue([], durable=True, lazy=True, make=make)

    def _take_queue(self) -> list[_Write]:
        """Everything queued, for a commit (called with the lock held): deferred statements made now."""
        batch = list(self._queue)
        self._queue.clear()
        self._taken_seq = self._seq
        self._urgent = 0
        self._untried = False
        self._lazy_due = None
        for item in batch:
            if item.make is not None:
                item.ops, item.make = item.make(), None
        return batch

    def drop(self, write: QueuedWrite) -> bool:
        """Empty a queued lazy write that no commit has taken yet and nobody awaits: a write queued after
        it makes it redundant (a task's RUNNING row, overwritten by its final state in the same group).
        False when it was taken already (it is committed, or being committed, as it was)."""
        with self._mutex:
            if write.seq <= self._taken_seq or not write.lazy or write.on_done is not None:
                return False
            write.ops = []
            return True

    def refill(self, write: QueuedWrite, ops: list[Op], on_done: OnDone) -> bool:
        """Replace the statements and the callback of a queued write that no commit has taken yet and after
        which nothing was queued (a warm task's creation, which then writes its final row, and tells of it:
        ``SessionEntry.creations``); False when it was taken already, or another write came after it (which
        may be about the same row). Someone waits for it now: a lazy write is committed by the next commit."""
        with self._mutex:
            if write.seq != self._seq or write.seq <= self._taken_seq:
                return False
            write.ops = ops
            write.on_done = on_done
            if write.lazy:
                write.lazy = False
                self._urgent += 1
            return True

    def commit(self, *, lazy: bool = True) -> None:
        """Commit what is queued, on this thread, unless another thread is at it (it takes ours too).

        Callbacks of the committed writes run here, before this returns. While the store is failing,
        or in strict mode, the writer thread does the work instead. With ``lazy=False`` a queue that
        holds only lazy writes is left for the next commit (or the writer, ``LAZY_DELAY`` later): a
        caller that wrote only those saves a transaction.
        """
        with self._mutex:
            if self._leader or self._exclusive_waiting or not self._queue or (not lazy and not self._urgent):
                return
            if self._failure is not None or self.durability == "strict":
                self._cond.notify()
                return
            self._leader = True
        for _ in range(MAX_INLINE_ROUNDS):
            with self._mutex:
                batch = self._take_queue()
            error = None if self._log_ahead(batch) else self._attempt(batch)
            if error is not None:
                with self._mutex:
                    self._queue.extendleft(reversed(batch))  # the writer retries them, in order
                    self._urgent += sum(1 for item in batch if not item.lazy)
                    self._untried = True
                    self._leader = False
                    self._cond.notify_all()
                return
            self._done(batch, None)
            with self._mutex:
                # Lazy writes queued meanwhile (by the callbacks just run: a task sent to its instance
                # became RUNNING) are nobody's acknowledgement: they wait for the next commit, or the writer
                # thread's LAZY_DELAY (see enqueue), rather than cost a transaction of their own now.
                if not self._urgent or self._exclusive_waiting:
                    self._leader = False
                    if self._exclusive_waiting:
                        self._cond.notify_all()  # an exclusive() waiting, then the writer for what is queued
                    return
        with self._mutex:
            self._leader = False
            self._cond.notify_all()  # more keeps coming: the writer thread takes over

    def write(self, ops: list[Op], on_done: OnDone | None = None, *, durable: bool = True) -> None:
        """:meth:`enqueue` + :meth:`commit`."""
        self.enqueue(ops, on_done, durable=durable)
        self.commit()

    def write_wait(self, ops: list[Op], *, durable: bool = False, timeout: float | None = None) -> None:
        """Write and return once committed; raise the store's ``FlameError`` when it was withdrawn."""
        done: Future[None] = Future()

        def settle(error: FlameError | None) -> None:
            if error is None:
                done.set_result(None)
            else:
                done.set_exception(error)

        self.write(ops, settle, durable=durable)
        done.result(timeout=timeout)

    def execute(self, sql: str, *params: Any) -> None:
        """One durable statement, committed with the next group (nobody waits for it)."""
        self.enqueue([(sql, params)], durable=True, lazy=True)

    def flush(self, timeout: float = 30.0) -> None:
        """Wait until everything queued so far is committed (or withdrawn)."""
        if self._closed:
            return
        done = threading.Event()
        try:
            self.enqueue([], lambda _error: done.set(), durable=False)
        except FlameError:
            return  # closing: the final commit happens in close()
        self.commit()
        if not done.wait(timeout):
            raise FlameError(
                FlameErrorCode.UNAVAILABLE,
                f"the store {self.path} did not finish writing within {timeout} s"
                + (f": {self._failure.message}" if self._failure else ""),
            )

    # -- the ahead log ---------------------------------------------------------------------------------

    def _log_ahead(self, batch: list[_Write]) -> bool:
        """Make ``batch`` durable with one append to the ahead log (its callbacks may run as soon as this
        returns True); False: commit it to sqlite instead (no log, a full one, a large group, a failed
        append)."""
        ahead_log = self._ahead_log
        if ahead_log is None or ahead_log.size >= AHEAD_LOG_LIMIT or len(self._ahead) >= AHEAD_MAX:
            return False
        writes: list[list[Op]] = []
        bodies: list[bytes] = []
        try:
            for item in batch:  # (a loop, not two comprehensions: two calls fewer on every warm invoke's commit)
                if item.ops:
                    writes.append(item.ops)
                    bodies.append(encode_ops(item.ops))
        except NotLoggable:
            return False
        if not writes:
            return True  # nothing to store: what was queued before is logged or committed already
        if sum(map(len, bodies)) > AHEAD_RECORD_MAX:
            return False
        with self._log_lock:
            first = self._logged_seq + 1
            try:
                ahead_log.append(first, bodies)
            except OSError as exc:
                if ahead_log.broken:
                    self._ahead_log = None
                    log.error("the ahead log %s cannot be appended to (%s): commits go to sqlite", ahead_log.path, exc)
                else:
                    log.warning("an append to the ahead log %s failed (%s): committed to sqlite", ahead_log.path, exc)
                return False
            self._logged_seq = first + len(writes) - 1
        due = time.monotonic() + FOLD_DELAY
        with self._mutex:
            self._ahead += enumerate(writes, first)
            if self._ahead_due is None:
                self._ahead_due = due
                wakes_at = self._folder_wakes_at
                if wakes_at is None or wakes_at > due:
                    self._folder_wakes_at = due
                    self._fold_cond.notify()
        return True

    def _take_ahead(self, limit: int | None = None) -> list[tuple[int, list[Op]]]:
        """The logged writes to apply (the oldest ``limit`` of them, when given: the rest are due at once)."""
        with self._mutex:
            if limit is None or len(self._ahead) <= limit:
                ahead, self._ahead = self._ahead, []
                self._ahead_due = None
            else:
                ahead, self._ahead = self._ahead[:limit], self._ahead[limit:]
                self._ahead_due = time.monotonic()
        return ahead

    def _give_back(self, ahead: list[tuple[int, list[Op]]]) -> None:
        """Logged writes a transaction could not apply: first in line again (nobody waits for them)."""
        with self._mutex:
            self._ahead[:0] = ahead
            if self._ahead_due is None:
                self._ahead_due = time.monotonic() + FOLD_DELAY

    def _fold_ahead(self, limit: int | None = None, *, paced: bool = False) -> BaseException | None:
        """Apply what the ahead log acknowledged to sqlite now, in one transaction (the fold thread,
        ``FOLD_DELAY`` after it was logged, without holding up the commits meanwhile, ``limit`` writes at
        most and ``paced``; a read, before it reads); the exception if it could not."""
        with self._connection():
            with self._mutex:
                if not self._ahead:
                    return None
            exc = self._attempt([], limit, paced=paced)
            if exc is not None and not _is_transient(exc):
                self._isolate_ahead()
                return exc if self._ahead else None
            return exc

    def _isolate_ahead(self) -> None:
        """A logged statement failed for a reason of its own (a bug): apply the others, drop that one."""
        with self._connection():
            ahead = self._take_ahead()
            for index, record in enumerate(ahead):
                exc = self._transaction([record], [])
                if exc is not None and _is_transient(exc):
                    self._give_back(ahead[index:])
                    return
                if exc is not None:
                    log.error("an acknowledged store write was dropped: %r failed: %s", record[1][:1], exc)
                    self._transaction([(record[0], [])], [])  # past it (if this fails, a start drops it again)
                self._applied_seq = record[0]

    def _recover_ahead(self) -> int:
        """Apply what a previous server's ahead log acknowledged and sqlite does not hold (it stopped
        before its fold thread applied it), before anything is served; the last record's seq."""
        path = self.path + AHEAD_SUFFIX
        self._write.execute(
            "INSERT OR IGNORE INTO ahead_applied (id, seq, log_id) VALUES (0, 0, randomblob(?))", (STORE_ID_BYTES,)
        )
        seq, log_id = self._write.execute("SELECT seq, log_id FROM ahead_applied WHERE id = 0").fetchone()
        applied = int(seq)
        self._log_id = bytes(log_id)
        try:
            records, torn = read_records(path, self._log_id)
        except ForeignLog as foreign:
            raise FlameError(
                FlameErrorCode.INVALID_STATE,
                f"{foreign}, not of the store {self.path} (the store was moved aside or replaced without its ahead "
                f"log), so it is not applied. Nothing was changed in either. Move {path} aside too (or put back "
                f"the store it belongs to), then start the server again",
            ) from None
        if torn:
            log.warning(
                "the last %d bytes of %s are not a whole record (an append cut short, never acknowledged): ignored",
                torn,
                path,
            )
        pending = [record for record in records if record[0] > applied]
        if pending:
            exc = self._transaction(pending, [])
            if exc is not None and not _is_transient(exc):
                with self._mutex:
                    self._ahead = pending
                self._isolate_ahead()
                exc = None if not self._ahead else exc
            if exc is not None:
                name = str(getattr(exc, "sqlite_errorname", "") or type(exc).__name__)
                raise FlameError(
                    FlameErrorCode.RESOURCE_EXHAUSTED if _is_transient(exc) else FlameErrorCode.INTERNAL,
                    f"cannot apply {path} (writes the last server acknowledged) to the store {self.path}: {exc} "
                    f"({name}). Nothing is lost: the file is kept and applied at the next start; free space "
                    f"(or fix what the error names) and start the server again",
                ) from exc
            log.info("applied %d writes from %s (the last server stopped before it applied them)", len(pending), path)
            applied = pending[-1][0]
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # all of it applied (a new log starts empty)
        return applied

    def _maybe_reset_log(self) -> None:
        """Empty a large ahead log once everything appended to it is applied (a commit to sqlite by the
        leader: nobody appends meanwhile)."""
        ahead_log = self._ahead_log
        if ahead_log is not None and ahead_log.size >= AHEAD_LOG_LIMIT:
            with self._log_lock:
                if self._logged_seq == self._applied_seq:
                    try:
                        ahead_log.reset()
                    except OSError as exc:  # it stays full: commits go to sqlite, as without a log
                        log.warning("cannot empty the ahead log %s: %s", ahead_log.path, exc)

    # -- transactions -----------------------------------------------------------------------------------

    def _take_connection(self, timeout: float = -1) -> bool:
        """Acquire ``_conn_lock`` (within ``timeout`` s; -1: however long it takes), counted in
        ``_conn_waiting`` while it waits, so that a paced fold holding it stops pausing."""
        if self._conn_lock.acquire(blocking=False):
            return True
        with self._mutex:
            self._conn_waiting += 1
        try:
            return self._conn_lock.acquire(timeout=timeout)
        finally:
            with self._mutex:
                self._conn_waiting -= 1

    @contextlib.contextmanager
    def _connection(self) -> Iterator[None]:
        """The write connection's lock, held for a transaction (see :meth:`_take_connection`)."""
        self._take_connection()
        try:
            yield
        finally:
            self._conn_lock.release()

    def _transaction(
        self, ahead: list[tuple[int, list[Op]]], batch: list[_Write], paced: bool = False
    ) -> BaseException | None:
        """One transaction: the logged writes ``ahead`` (oldest first) and their mark, then ``batch``;
        the exception if it failed (rolled back). ``paced``: the logged writes in slices with pauses
        between them (the fold thread, see :meth:`_run_folder`)."""
        conn = self._write
        single = None if ahead else _single_statement(batch)
        try:
            if single is not None:
                conn.execute(*single)  # sqlite's own transaction for one statement: as atomic, two calls fewer
            else:
                conn.execute("BEGIN")
                # The statements in order, each run of one insert or update as a few (see
                # merged_statements: the GIL is let go of and taken back once per statement).
                logged = [op for _seq, ops in ahead for op in ops]
                pauses = int(FOLD_DELAY / 2 / FOLD_PAUSE) if paced and FOLD_PAUSE > 0 else 0
                for index, (sql, params) in enumerate(merged_statements(logged, FOLD_SLICE_ROWS if paced else None)):
                    if index and pauses and not self._conn_waiting:
                        pauses -= 1
                        time.sleep(FOLD_PAUSE)
                    conn.execute(sql, params)
                if ahead:
                    conn.execute(_MARK_APPLIED, (ahead[-1][0],))
                for sql, params in merged_statements([op for item in batch for op in item.ops]):
                    conn.execute(sql, params)
                conn.execute("COMMIT")
        except BaseException as exc:  # sqlite errors, and anything else: never leave a transaction open
            try:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            except sqlite3.Error:
                log.debug("rollback failed", exc_info=True)
            return exc
        return None

    def _attempt(self, batch: list[_Write], limit: int | None = None, *, paced: bool = False) -> BaseException | None:
        """One transaction for ``batch``, after what the ahead log holds (the order they were queued in; its
        oldest ``limit`` writes, when given); the exception if it failed (rolled back)."""
        with self._connection():
            ahead = self._take_ahead(limit) if self._ahead else []
            exc = self._transaction(ahead, batch, paced)
            if exc is not None:
                self._note_damage(exc)
                if ahead:
                    self._give_back(ahead)
                return exc
            if ahead:
                self._applied_seq = ahead[-1][0]
            self._maybe_reset_log()
        self.commits += 1
        self._last_commit = time.monotonic()
        if self.log_bytes() > CHECKPOINT_BYTES:
            self._checkpoint_wanted.set()
        return None

    def log_bytes(self) -> int:
        """Bytes written to the WAL since sqlite last started it over (its file keeps its largest size).

        Read from the WAL index's header; from the file's size where that cannot be read (an over-estimate,
        which at worst asks for a checkpoint more often)."""
        if self._wal_index is not None:
            with contextlib.suppress(OSError):
                header = os.pread(self._wal_index, 4, WAL_INDEX_MX_FRAME)
                if len(header) == 4:
                    return int.from_bytes(header, sys.byteorder) * self._frame_bytes
        try:
            return os.stat(self._wal).st_size
        except OSError:
            return 0

    def _done(self, batch: list[_Write], error: FlameError | None) -> None:
        if not batch:
            return  # (a fold of the ahead log: its callbacks ran when it was logged)
        for item in batch:
            if item.on_done is not None:
                try:
                    item.on_done(error)
                except Exception:  # one callback's bug must not stop the others, nor the writer
                    log.exception("a store commit callback failed")
        if self.after_callbacks is not None:
            try:
                self.after_callbacks()
            except Exception:
                log.exception("a store's after-callbacks hook failed")

    # -- the writer thread: lazy writes, and retries while the store cannot write ---------------------

    def _run_writer(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._closing and not self._leader:
                        return
                    now = time.monotonic()
                    due = self._next_due(now)
                    if due is not None and due <= now and not self._leader and not self._exclusive_waiting:
                        break
                    kept = self._writer_wakes_at
                    if due is None and kept is not None and kept > now:
                        due = kept  # the queue emptied, but lazy writes queued until then count on this
                    self._writer_wakes_at = None if due is None else max(now + 0.001, due)
                    self._cond.wait(None if due is None else max(0.001, due - now))
                self._leader = True
                batch = self._take_queue()
            try:
                self._writer_round(batch)
            finally:
                with self._cond:
                    self._leader = False
                    self._cond.notify_all()

    # -- the fold thread: the ahead log into sqlite ---------------------------------------------------------

    def _run_folder(self) -> None:
        """Apply what the ahead log holds, ``FOLD_DELAY`` after the first of it was appended.

        Not as the leader: commits meanwhile are logged, not held up by this transaction. Often and small
        (``FOLD_DELAY``): a warm invoke woken on the CPU a fold runs on waits for the fold's time slice,
        and with 50 ms folds the p99 of a loop of warm invokes went from 0.9-1.0 ms (no ahead log) to
        1.3-1.4 ms, where 10 ms folds kept it at 1.0 (runs alternated, 2 CPUs). The lowest priority
        (``SCHED_IDLE``) kept it at 0.7-0.8 ms, but a thread of that priority waits for as long as every
        CPU is busy, holding the connection a commit to sqlite then waits for: during a ``run()`` of
        CPU-bound tasks, every acknowledgement would wait for the end of the burst.

        So it runs at a priority lowered by ``FOLD_NICE`` (nice 10 from 0: a tenth of the CPU share of a
        thread at 0 when they compete, all of an idle CPU otherwise), and applies ``FOLD_CHUNK`` writes per
        transaction at most: a commit or a read that needs the connection meanwhile waits for one chunk
        at that share. On 2 CPUs, over four alternated rounds of 5,000 warm invokes, the p99 went from
        0.79-0.90 ms (nice 0) to 0.66-0.76 ms (nice 10), the median unchanged; nice 19 gave 0.72-0.81.

        Paced. A fold of 10 ms of warm invokes (~40 rows) is still ~600 µs of CPU, and that burst is what
        the slow invokes of a loop wait for: one invoke in 30-40 took 2-5 times the median, one per fold.
        The same CPU spread thin hurts far less (a process burning 60 µs every 1 ms beside a loop of warm
        invokes: p99 1.9-2.1 times the median; 600 µs every 10 ms: 2.9-3.9 times). So the transaction
        applies ``FOLD_SLICE_ROWS`` rows per statement and pauses ``FOLD_PAUSE`` between them: one
        commit as before (its cost, ~30 µs, is paid once), its work in slices of ~60 µs. A thread that
        waits for the connection meanwhile (a read, a commit to sqlite) ends the pauses, and they take
        ``FOLD_DELAY / 2`` per transaction at most, so a fold keeps up under load. Measured by switching
        it on and off in the running server, blocks of 500-2,000 warm invokes alternated (2 CPUs, eight
        runs): the p99 lower in all eight, by 14 to 811 µs (535 -> 416, 803 -> 473), the p99.9 too, the
        median level (-23 to +23 µs). Slices of 16 or 32 rows did no better (docs/benchmarks.md)."""
        _lower_priority(FOLD_NICE)
        while True:
            with self._mutex:
                while True:
                    if self._closing:
                        return
                    due = self._ahead_due if self._ahead and self._failure is None else None
                    now = time.monotonic()
                    if due is not None and due <= now:
                        break
                    self._folder_wakes_at = due
                    self._fold_cond.wait(None if due is None else due - now)
                self._folder_wakes_at = None
            exc = self._fold_ahead(FOLD_CHUNK, paced=True)
            if exc is not None:  # the store cannot write: the writer thread retries it all, as the leader
                self._note_failure(exc)
                with self._cond:
                    self._retry_later(time.monotonic())
                    self._cond.notify_all()

    def _next_due(self, now: float) -> float | None:
        """When the writer should commit next (called with the condition's lock held)."""
        if not self._queue:
            # While failing, what the ahead log holds is retried as the queue would be (as the leader).
            return self._retry_at if self._ahead and self._failure is not None else None
        if self._failure is not None:
            return now if self._untried else self._retry_at
        if self.durability == "strict" or (self._untried and self._lazy_due is None):
            return now  # handed over by commit(), or queued by someone who did not commit
        return self._lazy_due if self._lazy_due is not None else now

    def _writer_round(self, batch: list[_Write]) -> None:
        exc = self._attempt(batch)
        if exc is None:
            if self._failure is not None:
                log.warning("the store %s is writable again", self.path)
            self._failure = None
            self._backoff = BACKOFF_FIRST
            self._done(batch, None)
            return
        if not _is_transient(exc):
            self._isolate(batch)
            return
        now = time.monotonic()
        error, was_failing = self._note_failure(exc)
        keep: list[_Write] = []
        give_up: list[_Write] = []
        for item in batch:
            if not item.durable and item.deadline is None:
                item.deadline = now if was_failing else now + self.retry_window
            if item.durable or (item.deadline is not None and item.deadline > now):
                keep.append(item)
            else:
                give_up.append(item)
        with self._cond:
            self._queue.extendleft(reversed(keep))
            self._urgent += sum(1 for item in keep if not item.lazy)
            self._retry_later(now)
        self._done(give_up, error)

    def _note_failure(self, exc: BaseException) -> tuple[FlameError, bool]:
        """The store cannot write: its error (logged when it starts failing), and whether it was failing."""
        error = store_error(self.path, exc)
        was_failing = self._failure is not None
        if not was_failing:
            log.error("%s", error.message)
        self._failure = error
        return error, was_failing

    def _retry_later(self, now: float) -> None:
        """When the writer thread tries again, with back-off (called with the condition's lock held)."""
        self._retry_at = now + self._backoff
        self._backoff = min(BACKOFF_MAX, self._backoff * 2)

    def _isolate(self, batch: list[_Write]) -> None:
        """A statement failed for a reason of its own (a bug): commit the others, fail that one."""
        self._isolate_ahead()
        for item in batch:
            exc = self._attempt([item])
            if exc is None:
                self._done([item], None)
                continue
            log.error("store write dropped: %r failed: %s", item.ops[:1], exc)
            self._done([item], store_error(self.path, exc))

    # -- the checkpointer thread ------------------------------------------------------------------------

    def _run_checkpointer(self, conn: sqlite3.Connection) -> None:
        truncated_at = 0  # the count of this store's commits when the log was last copied back and truncated
        try:
            while not self._closing:
                wanted = self._checkpoint_wanted.wait(timeout=1.0)
                self._checkpoint_wanted.clear()
                if self._closing:
                    return
                commits = self.commits
                idle = time.monotonic() - self._last_commit > CHECKPOINT_IDLE
                mode = "TRUNCATE" if idle and commits != truncated_at else "PASSIVE" if wanted else None
                if mode is None:
                    continue
                try:
                    busy = conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()[0]
                    self.checkpoints += 1
                    if mode == "TRUNCATE" and not busy:
                        truncated_at = commits
                    elif mode == "PASSIVE":
                        self._catch_up()
                except sqlite3.Error as exc:  # busy, or the disk is failing: the next round tries again
                    log.debug("checkpoint of %s failed: %s", self.path, exc)
                if wanted:  # the WAL may stay large a while (a reader kept it): not a checkpoint per commit
                    time.sleep(CHECKPOINT_MIN_INTERVAL)
        finally:
            conn.close()

    def _catch_up(self) -> None:
        """Copy back what was committed during a checkpoint, with writes held for that moment.

        sqlite starts the log over only at a write that finds it
        wholly copied back. Under a steady load commits land while the checkpointer copies, so that
        never happens and the log grows without bound; copying the last few frames between two group
        commits lets the next write start it over.
        """
        with contextlib.suppress(FlameError):  # closing: the last connection's close copies the log back
            self.exclusive(lambda write: write.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall())

    # -- reads ---------------------------------------------------------------------------------------

    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        """Rows of a read, which sees every write acknowledged before it (the ahead log's included)."""
        if self._applied_seq != self._logged_seq:
            self._apply_for_read()
        with self._read_lock:
            try:
                return list(self._read.execute(sql, params))
            except sqlite3.DatabaseError as exc:
                self._note_damage(exc)
                raise

    def _note_damage(self, exc: BaseException) -> None:
        """Remember an error that says the file is damaged: the store is then not sealed at close."""
        name = str(getattr(exc, "sqlite_errorname", "") or "")  # SQLITE_CORRUPT_INDEX, ... too
        if name == "SQLITE_NOTADB" or name.startswith("SQLITE_CORRUPT") or "malformed" in str(exc):
            self.damage_seen = True

    def task_counts(self) -> dict[str, tuple[int, ...]]:
        """Each session's number of tasks per state (see ``TASK_COUNTS``); a session without tasks may be
        missing. One row per session: nothing proportional to the tasks is read."""
        columns = ", ".join(TASK_COUNTS_COLUMNS)
        return {row[0]: row[1:] for row in self.query(f"SELECT session_id, {columns} FROM task_counts")}

    def payload_file_names(self) -> set[str]:
        """The payload files the store's rows name (from the partial index: no payload is read)."""
        return {name for (name,) in self.query("SELECT file FROM task_payloads WHERE file IS NOT NULL")}

    def remove_orphan_payload_files(self) -> int:
        """Remove the payload files no row names (a crash between a file and its commit left them)."""
        return self.payloads.remove_orphans(self.payload_file_names)

    def _apply_for_read(self) -> None:
        """Apply what the ahead log holds before a read, waiting at most ``READ_WAIT`` for it: reads keep
        working while the store cannot write (they then miss what the log holds, which is not lost)."""
        if not self._take_connection(READ_WAIT):
            log.warning("a read of %s does not see the writes the ahead log holds: the store is busy", self.path)
            return
        try:
            self._write.execute(f"PRAGMA busy_timeout = {int(READ_WAIT * 1000)}")
            try:
                exc = self._fold_ahead()
            finally:
                self._write.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT * 1000}")
        finally:
            self._conn_lock.release()
        if exc is not None:  # kept, and applied when the store can write again
            log.warning("a read of %s does not see the writes the ahead log holds: %s", self.path, exc)

    def iter_query(self, sql: str, *params: Any, batch: int = 500) -> Iterator[tuple[Any, ...]]:
        """Stream rows in batches without holding the read lock between batches."""
        offset = 0
        while True:
            rows = self.query(f"{sql} LIMIT ? OFFSET ?", *params, batch, offset)
            yield from rows
            if len(rows) < batch:
                return
            offset += batch

    def request_checkpoint(self) -> None:
        """Have the checkpointer thread copy the WAL back now (a compacted file shrinks only then)."""
        self._checkpoint_wanted.set()

    def exclusive(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` on the write connection between group commits, outside any transaction.

        For what cannot run inside one (``VACUUM``, a ``wal_checkpoint``): writes queued meanwhile wait,
        and are committed as soon as ``fn`` returns.
        """
        with self._cond:
            if self._closed or self._closing:
                raise FlameError(FlameErrorCode.UNAVAILABLE, f"the store {self.path} is closed: the server is stopping")
            self._exclusive_waiting += 1
            try:
                while self._leader:
                    self._cond.wait()
            finally:
                self._exclusive_waiting -= 1
            self._leader = True
        try:
            with self._connection():
                return fn(self._write)
        finally:
            with self._cond:
                self._leader = False
                self._cond.notify_all()
            self.commit()

    def close(self, timeout: float = 10.0) -> bool:
        """Commit what is queued (retrying for up to ``timeout`` s if the store is failing), then close.

        True: a clean close (everything committed, every connection closed, no damage met): the file is
        as sqlite left it, which is what sealing it means (see engine.integrity).
        """
        if self._closed:
            return False
        clean = True
        deadline = time.monotonic() + timeout
        while True:
            self.commit()
            if self._ahead:
                self._fold_ahead()
            with self._cond:
                if not self._queue and not self._leader and not self._ahead:
                    self._closing = True
                    self._cond.notify_all()
                    break
                if time.monotonic() >= deadline:
                    clean = False
                    lost = len(self._queue)
                    self._closing = True
                    self._cond.notify_all()
                    log.error(
                        "closing the store %s with %d writes it could not commit: %s", self.path, lost, self._failure
                    )
                    if self._ahead:
                        log.error(
                            "%d writes it acknowledged stay in %s, applied at the next start",
                            len(self._ahead),
                            self.path + AHEAD_SUFFIX,
                        )
                    break
                self._cond.wait(0.05)
        with self._mutex:
            self._fold_cond.notify_all()
        self._writer.join(timeout=timeout)
        if self._folder is not None:
            self._folder.join(timeout=timeout)
        self._checkpoint_wanted.set()
        self._checkpointer.join(timeout=timeout)
        self._closed = True
        applied = not self._ahead and self._applied_seq == self._logged_seq
        if self._ahead_log is not None:
            self._ahead_log.close(remove=applied)
        elif applied:  # (one that broke, its records all applied since)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path + AHEAD_SUFFIX)
        clean = clean and applied
        self._write.close()
        self._read.close()
        if self._wal_index is not None:
            os.close(self._wal_index)
            self._wal_index = None
        threads_left = self._writer.is_alive() or self._checkpointer.is_alive()
        threads_left = threads_left or (self._folder is not None and self._folder.is_alive())
        return clean and not threads_left and not self.damage_seen


def _add_finished_column(conn: sqlite3.Connection, path: str) -> None:
    """Give a store from before payload retention its ``tasks.finished`` column.

    The completion time of the tasks it already holds is inside their status blobs; rather than decode
    every one at start, they count as finished now, so they keep their payloads one retention longer.
    """
    columns = {row[1] for row in conn.execute("PRAGMA table_info(tasks)")}
    if "finished" in columns:
        return
    now_ms = int(time.time() * 1000)
    conn.execute("BEGIN")
    conn.execute("ALTER TABLE tasks ADD COLUMN finished INTEGER")
    conn.execute("UPDATE tasks SET finished = ? WHERE state IN (2, 3, 4)", (now_ms,))  # SUCCEED, FAILED, CANCELLED
    conn.execute("COMMIT")
    log.info("the store %s now records when tasks finish (for payload retention)", path)


def _add_payload_file_columns(conn: sqlite3.Connection, path: str) -> None:
    """Give a store from before payload files the ``task_payloads.file`` and ``file_size`` columns."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(task_payloads)")}
    if "file" in columns:
        return
    conn.execute("BEGIN")
    conn.execute("ALTER TABLE task_payloads ADD COLUMN file TEXT")
    conn.execute("ALTER TABLE task_payloads ADD COLUMN file_size INTEGER")
    conn.execute("COMMIT")
    log.info("the store %s can now keep large payloads in files of their own", path)


def _add_task_counts(conn: sqlite3.Connection, path: str) -> None:
    """Give a store from before stored task counts its ``task_counts`` table and triggers, counted once.

    The table, its triggers and the counts are made in one transaction, so no write lands between the
    count and the first trigger; a start that dies half-way leaves the store as it was, and the next
    start does it again.
    """
    if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'task_counts'").fetchone():
        return
    started = time.monotonic()
    conn.execute("BEGIN IMMEDIATE")
    try:
        for statement in TASK_COUNTS:
            conn.execute(statement)
        conn.execute(_BACKFILL_TASK_COUNTS)
        sessions, tasks = conn.execute(
            f"SELECT COUNT(*), COALESCE(SUM({' + '.join(TASK_COUNTS_COLUMNS)}), 0) FROM task_counts"
        ).fetchone()
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    if tasks:
        log.info(
            "the store %s now keeps each session's task counts: counted %d tasks of %d sessions once, in %.1f s "
            "(a start no longer counts them)",
            path,
            tasks,
            sessions,
            time.monotonic() - started,
        )


def session_deletion(session_id: str) -> list[Op]:
    """The statements that delete a session and all its task rows: its counts first, so the triggers of the
    tasks' deletion find no row to update."""
    return [
        ("DELETE FROM task_counts WHERE session_id = ?", (session_id,)),
        ("DELETE FROM tasks WHERE session_id = ?", (session_id,)),
        ("DELETE FROM task_payloads WHERE session_id = ?", (session_id,)),
        ("DELETE FROM sessions WHERE id = ?", (session_id,)),
    ]


def upsert_many(table: str, columns: Iterable[str]) -> str:
    cols = list(columns)
    return f"INSERT OR REPLACE INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' for _ in cols)})"


def _lower_priority(increment: int) -> None:
    """Lower the calling thread's scheduling priority by ``increment`` (nice), where threads have their own
    (Linux: ``setpriority`` on a thread id); elsewhere, or when refused, it stays as it is."""
    if not sys.platform.startswith("linux"):
        return  # (a thread id is not a process id there: the whole process would be lowered)
    with contextlib.suppress(OSError, AttributeError):
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + increment))
