"""The tcp transport: flamepy's framed kit over plain sockets. ``tcp://HOST:PORT`` and ``tcp+unix:///PATH``.

All a transport built on :class:`~flamepy.plugin.FramedTransport` writes is what is its own: the
declaration (name, schemes, capabilities, options), its endpoints, and how to open a link (``dial``) and
accept links (``listen``). Call ids, deadlines, cancellation, stream windows, the error rules, size
limits, deferred replies, ``unary_async``, reconnection and fork safety are the kit's.

``tcp+unix://`` is the same protocol over a unix socket: the private local endpoint that lets this
transport carry the whole runtime (``FLAME_TRANSPORT=tcp``: the server's listen and its instance links).
"""

from __future__ import annotations

import os
import urllib.parse
from typing import ClassVar

from flamepy.plugin import (
    FRAMED_OPTIONS,
    FlameError,
    FlameErrorCode,
    FramedTransport,
    Link,
    Listener,
    SocketLink,
    SocketListener,
    TransportCapabilities,
    dial_tcp,
    dial_unix,
    listen_tcp,
    listen_unix,
)

TCP, UNIX = "tcp", "tcp+unix"
PREAMBLE = b"FLMTCP2\n"
"""The first bytes a client sends: the protocol's name and version. A stranger is hung up on."""
UNIX_PATH_MAX = 100


def _address(endpoint: str) -> tuple[str, str, int]:
    """``(scheme, host or path, port)``; anything malformed is ``INVALID_ARGUMENT`` naming the forms."""
    parts = urllib.parse.urlsplit(endpoint)
    scheme = parts.scheme.lower()
    if scheme == UNIX and parts.path.startswith("/") and not parts.netloc:
        return scheme, parts.path, 0
    try:
        port = parts.port
    except ValueError:
        port = None
    if scheme != TCP or not parts.hostname or port is None or parts.path not in ("", "/"):
        raise FlameError(
            FlameErrorCode.INVALID_ARGUMENT,
            f"tcp endpoints look like tcp://HOST:PORT (port 0 picks a free one) or tcp+unix:///PATH, got '{endpoint}'",
        )
    return scheme, parts.hostname, port


class TcpTransport(FramedTransport):
    """Length-prefixed frames over one plain TCP (or unix) connection per channel. No TLS, no auth."""

    name: ClassVar[str] = "tcp"
    schemes: ClassVar[tuple[str, ...]] = (TCP, UNIX)
    capabilities = TransportCapabilities(
        max_message_size=64 * 1024 * 1024,
        streaming=True,
        cross_process=True,
        deferred_replies=True,
        deferred_streams=True,
        async_calls=True,
        async_streams=True,
        local_schemes=(UNIX,),
    )
    options: ClassVar[frozenset[str]] = FRAMED_OPTIONS
    requires: ClassVar[tuple[str, ...]] = ("flamepy-transport-tcp",)
    description: ClassVar[str] = "length-prefixed frames over one plain TCP or unix connection (example plugin)"

    def check_endpoint(self, endpoint: str) -> None:
        _address(endpoint)

    def dial(self, endpoint: str, timeout: float) -> Link:
        scheme, where, port = _address(endpoint)
        sock = dial_unix(where, endpoint, timeout) if scheme == UNIX else dial_tcp(where, port, endpoint, timeout)
        return SocketLink(sock, self.max_message_size, preamble=PREAMBLE, dialled=True)

    def listen(self, endpoint: str) -> Listener:
        scheme, where, port = _address(endpoint)
        if scheme == UNIX:
            sock = listen_unix(where, endpoint)
            return SocketListener(sock, endpoint, self.max_message_size, preamble=PREAMBLE, path=where)
        sock = listen_tcp(where, port, endpoint)
        host = f"[{where}]" if ":" in where else where
        bound = f"{TCP}://{host}:{sock.getsockname()[1]}"
        return SocketListener(sock, bound, self.max_message_size, preamble=PREAMBLE)

    def local_endpoint(self, directory: str, name: str) -> str:
        """``tcp+unix://<directory>/<name>.sock``, or a free loopback port when that path is too long."""
        path = os.path.join(directory, f"{name}.sock")
        return f"{UNIX}://{path}" if len(path.encode()) <= UNIX_PATH_MAX else f"{TCP}://127.0.0.1:0"
