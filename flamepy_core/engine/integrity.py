"""Refuse to serve a damaged store: an integrity check at start, bounded in time, and a refusal that says
what to do.

A scribbled page in ``flame.db`` would otherwise pass start-up and surface later as INTERNAL errors on
whatever read touches it, possibly after new work was accepted on top of it; a broken header would
surface as a raw sqlite traceback naming no file. So the server runs sqlite's ``quick_check`` before it
opens the store for serving, and refuses with :func:`store_damaged`: the file, sqlite's own words, and
the next step. The check reads the whole file (about 200 MB/s), so it is bounded by the
``store_check_timeout`` setting: a store larger than that can be checked is checked that far, and the
server says so in its log.

The store is never replaced: a damaged file is left exactly as it was found, for the user to move aside,
salvage or restore.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
import urllib.parse
from pathlib import Path

from flamepy_core.contracts.errors import FlameError, FlameErrorCode
from flamepy_core.engine.payload_files import DIRECTORY_NAME as PAYLOADS_DIRECTORY

__all__ = ["check_store", "store_damaged"]

log = logging.getLogger(__name__)

PROGRESS_STEPS = 10_000
"""sqlite virtual-machine steps between two looks at the clock while checking."""
MAX_REPORTED = 5
"""Problems quoted from ``quick_check`` (it may find thousands)."""


def store_damaged(path: Path, detail: str) -> FlameError:
    """The refusal: which file, what sqlite says, and what to do next."""
    return FlameError(
        FlameErrorCode.INVALID_STATE,
        f"the store {path} is damaged, so the server will not serve it (sqlite: {detail}). Nothing was changed "
        f"in it. Stop anything using it; then move it aside together with its -wal and -shm files and the "
        f"folder of its large payloads (e.g. mv {path} {path}.damaged, and likewise {path}-wal, {path}-shm and "
        f"{Path(path).parent / PAYLOADS_DIRECTORY}) to start with an empty store, or "
        f"put back a copy you trust. `sqlite3 {path} .recover` can salvage the rows that are still readable.",
    )


def check_store(path: Path, time_budget: float) -> None:
    """Raise :func:`store_damaged` unless the sqlite file at ``path`` passes ``quick_check``.

    A missing file is fine (a new store is created), unless its write-ahead log is there without it: a
    new database next to an old log could take the log's pages. ``time_budget`` seconds bound the check
    (0 skips it); a check cut short by it is logged, and the store is served.
    """
    path = Path(path)
    wal = Path(f"{path}-wal")
    if not os.path.lexists(path):
        if wal.exists() and wal.stat().st_size > 0:
            raise store_damaged(
                path,
                f"the database file is missing but its write-ahead log {wal} is there; a new store must not "
                f"be created next to it",
            )
        return
    if not path.is_file():
        raise store_damaged(path, "it is not a regular file")
    if time_budget <= 0:
        return
    uri = f"file:{urllib.parse.quote(str(path))}?mode=rw"  # mode=rw: never create
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=10, isolation_level=None)
    except sqlite3.Error as exc:
        raise store_damaged(path, str(exc)) from None
    deadline = time.monotonic() + time_budget
    started = time.monotonic()
    conn.set_progress_handler(lambda: int(time.monotonic() > deadline), PROGRESS_STEPS)
    try:
        rows = conn.execute(f"PRAGMA quick_check({MAX_REPORTED})").fetchall()
    except sqlite3.OperationalError as exc:
        if "interrupted" not in str(exc):
            raise store_damaged(path, str(exc)) from None
        log.warning(
            "the integrity check of %s stopped after %.1f s (store_check_timeout): the store is larger than "
            "can be checked in that time, and is served checked only that far; raise FLAME_STORE_CHECK_TIMEOUT "
            "to check all of it",
            path,
            time.monotonic() - started,
        )
        return
    except sqlite3.DatabaseError as exc:
        raise store_damaged(path, str(exc)) from None
    finally:
        conn.close()
    problems = [str(row[0]) for row in rows]
    if problems != ["ok"]:
        raise store_damaged(path, "; ".join(problems))
    log.info("the store %s passed its integrity check in %.2f s", path, time.monotonic() - started)
