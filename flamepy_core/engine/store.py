"""Persistence in sqlite (WAL) under ``FLAME_HOME/flame.db``.

The engine keeps live state in memory and writes it behind through one writer thread that group-commits,
so a task costs no fsync and no commit of its own. Durability is a setting:

* ``"batched"`` (default): changes are committed by the writer thread as soon as it gets to them, many
  per transaction under load, with ``synchronous=NORMAL`` (WAL: durable across a process crash; a power
  loss may drop the last few milliseconds of changes).
* ``"strict"``: every change is committed, with ``synchronous=FULL``, before the call that made it returns.

Rows hold the flame.v1 protobuf messages as blobs next to the columns we query by, so the on-disk
format is the wire format and needs no second schema.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

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
    input BLOB,
    output BLOB,
    status BLOB NOT NULL,                   -- flame.v1.TaskStatus (times, events)
    PRIMARY KEY (session_id, id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS objects (
    key TEXT PRIMARY KEY,
    version INTEGER NOT NULL,
    base_version INTEGER NOT NULL,
    base BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS object_patches (
    key TEXT NOT NULL,
    version INTEGER NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (key, version)
) WITHOUT ROWID;
"""

Op = tuple[str, tuple[Any, ...]]
DURABILITY = ("batched", "strict")


class Store:
    """sqlite persistence with a group-committing writer thread. Thread-safe."""

    def __init__(self, path: Path | str, *, durability: str = "batched") -> None:
        if durability not in DURABILITY:
            raise ValueError(f"durability must be one of {', '.join(DURABILITY)}, got {durability!r}")
        self.path = str(path)
        self.durability = durability
        self._queue: queue.Queue[list[Op] | Future[None] | None] = queue.Queue()
        self._write = self._connect()
        self._write.executescript(SCHEMA)
        self._write.commit()
        self._read = self._connect()
        self._read_lock = threading.Lock()
        self._closed = False
        self._writer = threading.Thread(target=self._run_writer, name="flame-store-writer", daemon=True)
        self._writer.start()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={'FULL' if self.durability == 'strict' else 'NORMAL'}")
        conn.execute("PRAGMA foreign_keys=OFF")
        return conn

    # -- writes --------------------------------------------------------------------------------------

    def submit(self, ops: list[Op]) -> None:
        """Queue changes; in strict mode, return only once they are committed."""
        if self._closed:
            raise RuntimeError("the store is closed")
        self._queue.put(ops)
        if self.durability == "strict":
            self.flush()

    def execute(self, sql: str, *params: Any) -> None:
        self.submit([(sql, params)])

    def flush(self, timeout: float = 30.0) -> None:
        """Wait until everything submitted so far is committed."""
        if self._closed:
            return
        done: Future[None] = Future()
        self._queue.put(done)
        done.result(timeout=timeout)

    def _run_writer(self) -> None:
        # Group commit: block for the first change, then take everything queued meanwhile in the same
        # transaction. Under load the queue fills while a commit runs, so batches grow by themselves.
        while True:
            items = [self._queue.get()]
            while True:
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            batch = [i for i in items if isinstance(i, list)]
            waiters = [i for i in items if isinstance(i, Future)]
            error: BaseException | None = None
            if batch:
                try:
                    self._write.execute("BEGIN")
                    for ops in batch:
                        for sql, params in ops:
                            self._write.execute(sql, params)
                    self._write.execute("COMMIT")
                except BaseException as exc:  # keep the writer alive; report to flushers
                    log.exception("store write failed")
                    error = exc
                    if self._write.in_transaction:
                        self._write.execute("ROLLBACK")
            for waiter in waiters:
                if error is None:
                    waiter.set_result(None)
                else:
                    waiter.set_exception(error)
            if any(i is None for i in items):
                return

    # -- reads ---------------------------------------------------------------------------------------

    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        with self._read_lock:
            return list(self._read.execute(sql, params))

    def iter_query(self, sql: str, *params: Any, batch: int = 500) -> Iterator[tuple[Any, ...]]:
        """Stream rows in batches without holding the read lock between batches."""
        offset = 0
        while True:
            rows = self.query(f"{sql} LIMIT ? OFFSET ?", *params, batch, offset)
            yield from rows
            if len(rows) < batch:
                return
            offset += batch

    def close(self) -> None:
        if self._closed:
            return
        self._queue.put(None)
        self._writer.join(timeout=30)
        self._closed = True
        self._write.close()
        self._read.close()


def upsert_many(table: str, columns: Iterable[str]) -> str:
    cols = list(columns)
    return f"INSERT OR REPLACE INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' for _ in cols)})"
