"""The files of a server's home (``FLAME_HOME``) that its server and its clients both read.

One server runs per home. It holds an exclusive lock on :data:`LOCK_FILE` for its whole life (so "the
lock is held" means "a server is alive", even after a crash that left :data:`SERVER_FILE` behind) and
publishes where it listens in :data:`SERVER_FILE`. Clients read both to find it
(:mod:`flamepy_core.client.local`), the server writes them (:mod:`flamepy_core.engine.server`): this
module is the one place that knows the names and the formats, below both, so neither imports the other.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from pathlib import Path
from typing import IO, Any

from flamepy_core.contracts.errors import FlameError, FlameErrorCode
from flamepy_core.privacy import open_private, write_private_file

SERVER_FILE = "server.json"
"""What the live server publishes: ``pid``, ``endpoint``, ``transport``, ``cache_endpoint``, ``home``..."""
LOCK_FILE = "server.lock"
"""Held (``flock``) by the live server for its whole life."""
STARTUP_ERROR_PREFIX = "flamepy server: "
"""How ``python -m flamepy_core.engine`` prints the error that stopped it from starting (one line, ending
with ``(code: N)``), so whoever started it can relay it rather than a traceback."""
START_LOCK = "start.lock"
"""Held by a client while it starts a server, so two clients never start two."""
DB_FILE = "flame.db"
LOGS_DIR = "logs"
SERVER_LOG = "server.log"


def read_server_info(home: Path) -> dict[str, Any] | None:
    """What ``FLAME_HOME/server.json`` says, or None when it is missing or unreadable."""
    try:
        data = json.loads((Path(home) / SERVER_FILE).read_text())
    except (FileNotFoundError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def server_lock_held(home: Path) -> bool:
    """True when a server process holds the home's lock (so it is alive)."""
    path = Path(home) / LOCK_FILE
    if not path.exists():
        return False
    with os.fdopen(open_private(path, os.O_RDWR | os.O_APPEND), "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fh, fcntl.LOCK_UN)
        return False


def live_server(home: Path) -> dict[str, Any] | None:
    """The published info of a running server for ``home``, or None."""
    info = read_server_info(home)
    if info and server_lock_held(home):
        return info
    return None


def take_server_lock(home: Path) -> IO[str]:
    """The home's lock, held until the returned file is closed; ALREADY_EXISTS naming the live server if taken."""
    lock = os.fdopen(open_private(Path(home) / LOCK_FILE, os.O_RDWR | os.O_APPEND), "a+")  # held for its life
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        info = read_server_info(home)
        where = f" (pid {info.get('pid')}, {info.get('endpoint')})" if info else ""
        raise FlameError(
            FlameErrorCode.ALREADY_EXISTS,
            f"another flamepy server is already running for {home}{where}; "
            f"use it, or stop it with `flmctl server stop`",
        ) from None
    return lock


def publish_server_info(home: Path, info: dict[str, Any]) -> None:
    """Write ``server.json`` atomically (a reader never sees half of it), private to its owner (0600)."""
    write_private_file(Path(home) / SERVER_FILE, json.dumps(info).encode())


def withdraw_server_info(home: Path, pid: int) -> None:
    """Remove ``server.json`` if the server ``pid`` wrote it (a newer server's file is left alone)."""
    info = read_server_info(home)
    if info and info.get("pid") == pid:
        with contextlib.suppress(FileNotFoundError):
            (Path(home) / SERVER_FILE).unlink()
