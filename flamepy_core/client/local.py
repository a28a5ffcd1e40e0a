"""Find the local server for a FLAME_HOME, or start one: the embedded default.

The first client (or ``flmctl``) that finds no live server starts ``python -m flamepy_core.engine`` for
that home in its own session (it outlives the client and exits after its idle timeout), guarded by
``FLAME_HOME/start.lock`` so two clients never start two servers, and waits until it publishes its
endpoint. A server that fails to start is reported with its own start-up error (a damaged store, a bad
setting), or else with what it wrote to its log while starting.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from flamepy_core.contracts.errors import FlameError, FlameErrorCode
from flamepy_core.home import (
    SERVER_LOG,
    START_LOCK,
    STARTUP_ERROR_PREFIX,
    live_server,
    read_server_info,
    server_lock_held,
)
from flamepy_core.privacy import open_private, private_dir, private_subdir
from flamepy_core.progress import Waiting

__all__ = ["ensure_local_server", "live_server", "start_server", "stop_server"]

log = logging.getLogger(__name__)


def _log_since(path: Path, offset: int, limit: int = 64 * 1024) -> str:
    """What the server wrote to its log from ``offset`` on (this start only), at most ``limit`` bytes."""
    try:
        with open(path, "rb") as fh:
            fh.seek(max(offset, fh.seek(0, os.SEEK_END) - limit))
            return fh.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _log_tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:]) or "(nothing)"


_CODE = re.compile(r" \(code: (\d+)\)\s*$")


def _startup_failure(home: Path, output: str, log_path: Path, how: str) -> FlameError:
    """The error of a server that did not start: its own start-up error when it printed one, so the user
    reads "the store ... is damaged" rather than a traceback; otherwise what it wrote while starting."""
    for i, line in enumerate(output.splitlines()):
        if line.startswith(STARTUP_ERROR_PREFIX):
            text = "\n".join([line[len(STARTUP_ERROR_PREFIX) :], *output.splitlines()[i + 1 :]]).rstrip()
            match = _CODE.search(text)
            code = FlameErrorCode.UNAVAILABLE
            if match:
                with contextlib.suppress(ValueError):
                    code = FlameErrorCode(int(match.group(1)))
                text = text[: match.start()]
            return FlameError(code, f"the local flamepy server for {home} could not start: {text}")
    return FlameError(
        FlameErrorCode.UNAVAILABLE,
        f"the local flamepy server for {home} {how}; its log ({log_path}) ends with:\n{_log_tail(output)}",
    )


def start_server(
    home: Path,
    *,
    transport: str | None = None,
    timeout: float = 30.0,
    idle_exit: float | None = None,
    extra_argv: list[str] | None = None,
) -> dict[str, object]:
    """Start a detached server for ``home`` and wait until it is ready (or fail with its log).

    ``extra_argv`` are more arguments of ``python -m flamepy_core.engine`` (``--listen``, security flags).
    """
    private_dir(home)
    log_path = private_subdir(home / "logs") / SERVER_LOG
    argv = [sys.executable, "-m", "flamepy_core.engine", "--home", str(home)]
    if transport:
        argv += ["--transport", transport]
    if idle_exit is not None:
        argv += ["--idle-exit", str(idle_exit)]
    argv += extra_argv or []
    with os.fdopen(open_private(log_path, os.O_WRONLY | os.O_APPEND), "ab") as log:
        started_at = log.seek(0, os.SEEK_END)  # what this server writes comes after this
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True, close_fds=True
        )
    deadline = time.monotonic() + timeout
    # On a terminal, a start that takes a moment says so (a first start imports grpc, zmq, sqlite...).
    with Waiting(lambda t: f"flamepy: starting the local server for {home} ({t:.1f} s)", delay=0.3, interval=0.1):
        while time.monotonic() < deadline:
            info = read_server_info(home)
            if info and info.get("pid") == proc.pid:
                return info
            if proc.poll() is not None:
                how = f"exited with code {proc.returncode} while starting"
                raise _startup_failure(home, _log_since(log_path, started_at), log_path, how)
            time.sleep(0.02)
    proc.kill()
    proc.wait(timeout=10)
    how = f"did not become ready within {timeout} s"
    raise _startup_failure(home, _log_since(log_path, started_at), log_path, how)


_told: set[tuple[str, str, str]] = set()
"""(home, transport asked for, transport of the live server) already reported: say it once per process."""


def _say_transport(home: Path, info: dict[str, object], transport: str | None, asked_by: str | None) -> None:
    running = str(info.get("transport") or "")
    if not transport or not running or running == transport:
        return
    key = (str(home), transport, running)
    if key in _told:
        return
    _told.add(key)
    log.info(
        "%s asks for transport %s, but the server for %s already runs with %s (pid %s, %s): connecting with %s. "
        "To switch, stop it (`flmctl server stop`); the next client starts one with %s",
        asked_by or "the configuration",
        transport,
        home,
        running,
        info.get("pid"),
        info.get("endpoint"),
        running,
        transport,
    )


def ensure_local_server(
    home: Path, *, transport: str | None = None, timeout: float = 30.0, asked_by: str | None = None
) -> str:
    """The endpoint of the live server for ``home``, starting one (with ``transport``) if there is none.

    A live server on another transport than ``transport`` is used as it is: its clients connect with its
    transport (the endpoint says which), and this is logged once at INFO, naming both.
    """
    info = live_server(home)
    if info:
        _say_transport(home, info, transport, asked_by)
        return str(info["endpoint"])
    private_dir(home)
    deadline = time.monotonic() + timeout
    with os.fdopen(open_private(home / START_LOCK, os.O_RDWR | os.O_APPEND), "a+") as lock:
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise FlameError(
                        FlameErrorCode.UNAVAILABLE,
                        f"another process has been starting the local server for {home} for {timeout} s; "
                        f"see {home / 'logs' / SERVER_LOG}",
                    ) from None
                time.sleep(0.02)
        try:
            info = live_server(home)  # someone else may have started it while we waited
            if info:
                _say_transport(home, info, transport, asked_by)
                return str(info["endpoint"])
            return str(
                start_server(home, transport=transport, timeout=max(1.0, deadline - time.monotonic()))["endpoint"]
            )
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def stop_server(home: Path, timeout: float = 30.0) -> bool:
    """Stop the server for ``home`` (SIGTERM, then SIGKILL). False when none was running."""
    info = live_server(home)
    if not info:
        return False
    pid = int(str(info["pid"]))
    try:
        os.kill(pid, 15)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not server_lock_held(home):
            return True
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, 9)
    deadline = time.monotonic() + 5
    while server_lock_held(home) and time.monotonic() < deadline:
        time.sleep(0.05)
    return True
