"""Refuse to serve a damaged store: an integrity check at start, bounded in time, and a refusal that says
what to do.

A scribbled page in ``flame.db`` would otherwise pass start-up and surface later as INTERNAL errors on
whatever read touches it, possibly after new work was accepted on top of it; a broken header would
surface as a raw sqlite traceback naming no file. So the server runs sqlite's ``quick_check`` before it
opens the store for serving, and refuses with :func:`store_damaged`: the file, sqlite's own words, and
the next step. The check reads the whole file (about 200 MB/s), so it is bounded by the
``store_check_timeout`` setting: a store larger than that can be checked is checked that far, and the
server says so in its log.

What the check is for. sqlite itself does not damage its file, not even when the server is killed or the
machine loses power (the write-ahead log and its checksums see to that), as long as the file is written
by sqlite alone and the disk keeps what it was given. Damage comes from outside: another program writing
into the file, a partial copy or restore put in its place, a file system or disk that changed it. So a
store that is exactly as the last server left it at a clean stop, after a start that had checked it whole
(or had itself found it so), is not read again: at a clean stop the server writes a seal next to the
store (:func:`seal_store`: the identity, size and modification and change times of the file and of its
log), and the next start compares the seal with the files (an ``os.stat`` each). Any write since, by
anyone, moves the times; a file put in its place has another inode: either way the whole check runs. A
start after a crash finds no seal (it is removed at start, before the store is opened) and checks. What
the seal does not catch is a disk that changes bits on its own, which sqlite then reports as an error on
the read that meets them (the server turns that into the same refusal at load).

The store is never replaced: a damaged file is left exactly as it was found, for the user to move aside,
salvage or restore.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
import urllib.parse
from pathlib import Path

from flamepy_core.contracts.errors import FlameError, FlameErrorCode
from flamepy_core.engine.payload_files import DIRECTORY_NAME as PAYLOADS_DIRECTORY
from flamepy_core.privacy import write_private_file

__all__ = ["check_store", "seal_store", "store_damaged"]

log = logging.getLogger(__name__)

PROGRESS_STEPS = 10_000
"""sqlite virtual-machine steps between two looks at the clock while checking."""
MAX_REPORTED = 5
"""Problems quoted from ``quick_check`` (it may find thousands)."""
SEAL_SUFFIX = "-sealed"
"""The seal's file is the store's name with this added (next to sqlite's own ``-wal`` and ``-shm``)."""


def store_damaged(path: Path, detail: str) -> FlameError:
    """The refusal: which file, what sqlite says, and what to do next."""
    return FlameError(
        FlameErrorCode.INVALID_STATE,
        f"the store {path} is damaged, so the server will not serve it (sqlite: {detail}). Nothing was changed "
        f"in it. Stop anything using it; then move it aside together with its -wal, -shm and -ahead files and "
        f"the folder of its large payloads (e.g. mv {path} {path}.damaged, and likewise {path}-wal, {path}-shm, "
        f"{path}-ahead and {Path(path).parent / PAYLOADS_DIRECTORY}) to start with an empty store, or "
        f"put back a copy you trust. `sqlite3 {path} .recover` can salvage the rows that are still readable.",
    )


def seal_path(path: Path) -> Path:
    return Path(f"{path}{SEAL_SUFFIX}")


def _fingerprint(path: Path) -> dict[str, list[int] | None]:
    """What changes when anyone writes or replaces the store or its log: each file's device, inode,
    size, modification and change times (None: the file is not there)."""
    found: dict[str, list[int] | None] = {}
    for name in (str(path), f"{path}-wal"):
        try:
            st = os.stat(name)
        except FileNotFoundError:
            found[name] = None
            continue
        found[name] = [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]
    return found


def seal_store(path: Path) -> None:
    """Record that the store at ``path`` is sound as it is now: call it after a clean close, and only
    when the start had found the store sound (a whole check, or a seal of its own)."""
    path = Path(path)
    try:
        write_private_file(seal_path(path), json.dumps(_fingerprint(path)).encode())
    except OSError as exc:  # the next start checks the whole store, as without a seal
        log.warning("cannot seal the store %s (%s): the next start checks it whole", path, exc)


def _take_seal(path: Path) -> bool:
    """Whether a seal matches the store as it is now; the seal is removed either way (this run's writes
    are only vouched for by the next clean stop)."""
    seal = seal_path(path)
    try:
        recorded = json.loads(seal.read_bytes())
    except FileNotFoundError:
        return False
    except (OSError, ValueError) as exc:
        log.warning("the store's seal %s cannot be read (%s): the store is checked", seal, exc)
        recorded = None
    try:
        seal.unlink()
    except OSError as exc:  # it would vouch for the store after this run's writes: check every time then
        log.warning("the store's seal %s cannot be removed (%s): the store is checked", seal, exc)
        return False
    return recorded is not None and recorded == _fingerprint(path)


def check_store(path: Path, time_budget: float) -> bool:
    """Raise :func:`store_damaged` unless the sqlite file at ``path`` is sound; whether it was found so.

    True: a new store (a missing file), a seal (:func:`seal_store`) that matches the files, or a whole
    ``quick_check`` that found nothing. False: not checked (``time_budget`` 0), or a check cut short by
    ``time_budget`` seconds (logged; the store is served). A missing file is refused when its
    write-ahead log is there without it: a new database next to an old log could take the log's pages.
    """
    path = Path(path)
    wal = Path(f"{path}-wal")
    sealed = _take_seal(path)
    if not os.path.lexists(path):
        if wal.exists() and wal.stat().st_size > 0:
            raise store_damaged(
                path,
                f"the database file is missing but its write-ahead log {wal} is there; a new store must not "
                f"be created next to it",
            )
        return True
    if not path.is_file():
        raise store_damaged(path, "it is not a regular file")
    if time_budget <= 0:
        return False
    if sealed:
        log.info("the store %s is as the server left it at its last clean stop: not checked again", path)
        return True
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
        return False
    except sqlite3.DatabaseError as exc:
        raise store_damaged(path, str(exc)) from None
    finally:
        conn.close()
    problems = [str(row[0]) for row in rows]
    if problems != ["ok"]:
        raise store_damaged(path, "; ".join(problems))
    log.info("the store %s passed its integrity check in %.2f s", path, time.monotonic() - started)
    return True
