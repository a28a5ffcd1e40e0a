"""``FLAME_HOME`` is private to its user: directories 0700, files 0600, sockets unreachable by others.

Why: the store holds every task's input and output (cloudpickle payloads, which run as code in the
service), the logs hold what services print, and the sockets accept calls that start processes. Another
user of the machine must be able to read none of it, and connect to none of it.

How: everything is *created* with its final mode (``os.mkdir``/``os.open`` with a mode, ``mkstemp``),
never chmod-ed afterwards, so there is no moment when a file exists with a looser mode. sqlite gives its
``-wal`` and ``-shm`` files the mode of the database file, so creating ``flame.db`` 0600 first covers
them. A socket gets no mode when it is bound: it is bound under :func:`private_umask`, and it lives in a
private directory anyway.

An existing directory that others can enter (a ``FLAME_HOME`` made by an older version, or by hand) is
tightened to owner-only with a warning when it belongs to the current user, since everything inside it
is then protected by it; one that belongs to someone else is left alone, with a warning.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

from flamepy_core.contracts.errors import FlameError, FlameErrorCode

__all__ = [
    "PRIVATE_DIR_MODE",
    "PRIVATE_FILE_MODE",
    "create_private_file",
    "open_private",
    "private_dir",
    "private_subdir",
    "private_umask",
    "write_private_file",
]

log = logging.getLogger(__name__)

PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600
_GROUP_OTHER = 0o077

_umask_lock = threading.Lock()


def _make_dirs(path: Path) -> None:
    """Create ``path`` and any missing parent, each 0700 (``mkdir -p`` would leave parents 0755)."""
    missing: list[Path] = []
    p = path
    while not os.path.lexists(p):
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):  # made by another process in the meantime
            os.mkdir(directory, PRIVATE_DIR_MODE)


def private_dir(path: Path, what: str = "FLAME_HOME") -> Path:
    """Make sure ``path`` is a directory only its owner can enter; return it.

    Missing, it is created 0700 (with any missing parent). Existing and open to group or others, it is
    tightened to owner-only with a warning if the current user owns it, else left as it is with a warning.
    ``what`` names it in messages (``FLAME_HOME``, ``FLAME_SOCKET_DIR``).
    """
    path = Path(path)
    _make_dirs(path)
    try:
        st = os.stat(path)
    except OSError as exc:
        raise FlameError(FlameErrorCode.INVALID_CONFIG, f"{what} {path} cannot be used: {exc}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise FlameError(
            FlameErrorCode.INVALID_CONFIG, f"{what} {path} is not a directory; point {what} at a directory"
        )
    mode = stat.S_IMODE(st.st_mode)
    if mode & _GROUP_OTHER:
        if st.st_uid == os.geteuid():
            os.chmod(path, mode & ~_GROUP_OTHER)
            log.warning(
                "%s %s was open to other users (mode %04o); it is now private (mode %04o), which protects "
                "everything in it (store, logs, sockets)",
                what,
                path,
                mode,
                mode & ~_GROUP_OTHER,
            )
        else:
            log.warning(
                "%s %s belongs to another user (uid %d) and is open to others (mode %04o): the store, logs and "
                "sockets in it are not private; use a %s of your own",
                what,
                path,
                st.st_uid,
                mode,
                what,
            )
    return path


def private_subdir(path: Path) -> Path:
    """A directory inside a private one: created 0700 when missing (an existing one is left as it is)."""
    _make_dirs(Path(path))
    return Path(path)


def open_private(path: Path | str, flags: int) -> int:
    """``os.open`` that creates the file 0600 (an existing file keeps its mode); returns the descriptor."""
    return os.open(path, flags | os.O_CREAT | os.O_CLOEXEC, PRIVATE_FILE_MODE)


def create_private_file(path: Path | str) -> bool:
    """Create ``path`` empty and 0600 unless it exists (never truncates); True when it was created."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, PRIVATE_FILE_MODE)
    except FileExistsError:
        return False
    os.close(fd)
    return True


def write_private_file(path: Path, data: bytes) -> None:
    """Replace ``path`` atomically with ``data``, the new file 0600 from the start (``mkstemp``)."""
    import tempfile  # here, not at import: a service process (which only needs private_umask) skips it

    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def private_umask() -> Iterator[None]:
    """Run the block with group and other bits masked, for what cannot be given a mode (bound sockets).

    The umask is per process: other threads creating files meanwhile get owner-only files too (never
    looser). The lock keeps two such blocks from restoring each other's value.
    """
    with _umask_lock:
        old = os.umask(_GROUP_OTHER)
        os.umask(old | _GROUP_OTHER)
        try:
            yield
        finally:
            os.umask(old)
