"""The ``uds`` transport's one class: its declaration, its endpoints, and how it opens links.

Everything else (call ids, deadlines, cancellation, stream windows, deferred replies, ``unary_async``,
host threads, reconnection, fork safety) is the framed kit's (:mod:`flamepy_core.kit.framed`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import tempfile
from typing import ClassVar

from flamepy_core.contracts.errors import FlameError, FlameErrorCode
from flamepy_core.contracts.transport import TransportCapabilities
from flamepy_core.kit.framed import FRAMED_OPTIONS, PEER_WATCH_OPTIONS, FramedTransport
from flamepy_core.kit.links import Link, Listener, SocketLink, SocketListener, dial_unix, listen_unix

SCHEME = "uds"
PREAMBLE = b"FLMUDS1\n"
"""The first bytes a client sends: the protocol's name and version. A stranger is hung up on."""
UNIX_PATH_MAX = 100
"""The longest socket path accepted (bytes): below the smallest ``sun_path`` of the systems we run on."""
DEFAULT_MAX_MESSAGE_SIZE = 256 * 1024 * 1024


def socket_path(endpoint: str) -> str:
    """The socket file of ``uds:///PATH``; anything else is ``INVALID_ARGUMENT`` naming the form."""
    scheme, sep, path = endpoint.partition("://")
    if not sep or scheme.lower() != SCHEME or not path.startswith("/"):
        raise FlameError(
            FlameErrorCode.INVALID_ARGUMENT,
            f"uds endpoints look like uds:///ABSOLUTE/PATH (a unix socket file), got '{endpoint}'",
        )
    if len(path.encode()) > UNIX_PATH_MAX:
        raise FlameError(
            FlameErrorCode.INVALID_ARGUMENT,
            f"the socket path of '{endpoint}' is {len(path.encode())} bytes, over the {UNIX_PATH_MAX} a unix "
            f"socket allows; choose a shorter directory (e.g. a shorter FLAME_HOME)",
        )
    return path


class UdsTransport(FramedTransport):
    """Length-prefixed frames over one unix-socket connection per channel (this machine only; no TLS needed).

    A server process that is stopped (``SIGSTOP``) keeps its socket open; while calls wait on it, a channel
    looks at its state in ``/proc`` every ``heartbeat_ivl_ms`` and fails them with ``UNAVAILABLE`` once it
    has been stopped for ``heartbeat_timeout_ms`` (1 s and 3 s, as ZeroMQ's heartbeats; Linux only).
    """

    name: ClassVar[str] = "uds"
    schemes: ClassVar[tuple[str, ...]] = (SCHEME,)
    capabilities = TransportCapabilities(
        max_message_size=DEFAULT_MAX_MESSAGE_SIZE,
        streaming=True,
        cross_process=True,
        deferred_replies=True,
        deferred_streams=True,
        async_calls=True,
        async_streams=True,
        local_schemes=(SCHEME,),
        local_default_rank=30,
    )
    options: ClassVar[frozenset[str]] = FRAMED_OPTIONS | PEER_WATCH_OPTIONS
    description: ClassVar[str] = "length-prefixed frames over a plain unix socket (this machine only)"

    def check_endpoint(self, endpoint: str) -> None:
        socket_path(endpoint)

    def dial(self, endpoint: str, timeout: float) -> Link:
        sock = dial_unix(socket_path(endpoint), endpoint, timeout)
        return SocketLink(sock, self.max_message_size, preamble=PREAMBLE, dialled=True)

    def listen(self, endpoint: str) -> Listener:
        path = socket_path(endpoint)
        sock = listen_unix(path, endpoint)
        return SocketListener(sock, endpoint, self.max_message_size, preamble=PREAMBLE, path=path)

    def local_endpoint(self, directory: str, name: str) -> str:
        """``uds://<directory>/<name>.sock``; when that path is too long for a unix socket, the same name in a
        private folder of this user's under the temporary directory, one per ``directory`` (so a server
        restarted for the same ``FLAME_HOME`` listens where its clients look)."""
        path = os.path.join(directory, f"{name}.sock")
        if len(path.encode()) > UNIX_PATH_MAX:
            path = os.path.join(_short_folder(directory), f"{name}.sock")
        return f"{SCHEME}://{path}"


def _short_folder(directory: str) -> str:
    """A private folder (0700, this user's, not a link) standing for ``directory``, where socket paths fit."""
    digest = hashlib.sha256(os.path.abspath(directory).encode()).hexdigest()[:16]
    folder = os.path.join(tempfile.gettempdir(), f"flame-uds-{os.getuid()}-{digest}")
    with contextlib.suppress(FileExistsError):
        os.mkdir(folder, 0o700)
    info = os.lstat(folder)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or stat.S_IMODE(info.st_mode) & 0o077:
        raise FlameError(
            FlameErrorCode.INVALID_CONFIG,
            f"the socket folder '{folder}' (used because the sockets of '{directory}' would have paths too long "
            f"for a unix socket) is not a private folder of this user's; remove it, or choose a shorter FLAME_HOME",
        )
    if len(os.path.join(folder, "x" * 24).encode()) > UNIX_PATH_MAX:
        raise FlameError(
            FlameErrorCode.INVALID_CONFIG,
            f"even the temporary folder '{folder}' gives socket paths too long for a unix socket; set TMPDIR "
            f"to a shorter folder, or choose a shorter FLAME_HOME",
        )
    return folder
