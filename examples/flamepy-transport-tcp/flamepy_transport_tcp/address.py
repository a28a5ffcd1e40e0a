"""``tcp://HOST:PORT`` endpoints: parsing, listening and dialling, each failure a clear FlameError."""

from __future__ import annotations

import errno
import socket
import urllib.parse
from dataclasses import dataclass

from flamepy_core.contracts.errors import FlameError, FlameErrorCode
from flamepy_core.transport_kit import unavailable


@dataclass(frozen=True)
class Address:
    host: str
    port: int

    @property
    def endpoint(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"tcp://{host}:{self.port}"


def parse_endpoint(endpoint: str) -> Address:
    """``tcp://127.0.0.1:8080`` or ``tcp://[::1]:0`` -> Address; anything else is INVALID_ARGUMENT."""
    parts = urllib.parse.urlsplit(endpoint)
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme.lower() != "tcp" or not parts.hostname or port is None or parts.path not in ("", "/"):
        raise FlameError(
            FlameErrorCode.INVALID_ARGUMENT,
            f"tcp endpoints look like tcp://HOST:PORT (port 0 picks a free one), got '{endpoint}'",
        )
    return Address(parts.hostname, port)


def listen(address: Address, backlog: int = 128) -> socket.socket:
    """A listening socket on ``address``. SO_REUSEADDR, so a stopped server's port can be bound again at once
    (its closed connections linger in TIME_WAIT); never SO_REUSEPORT, so a port in use fails to bind."""
    try:
        family, kind, proto, _, sockaddr = socket.getaddrinfo(
            address.host, address.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except OSError as exc:
        raise FlameError(FlameErrorCode.INVALID_ARGUMENT, f"cannot resolve host '{address.host}': {exc}") from exc
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(sockaddr)
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise FlameError(FlameErrorCode.ALREADY_EXISTS, f"{address.endpoint} is already in use") from exc
        if exc.errno == errno.EACCES:
            raise FlameError(FlameErrorCode.PERMISSION_DENIED, f"not allowed to bind {address.endpoint}") from exc
        raise FlameError(FlameErrorCode.INVALID_ARGUMENT, f"cannot listen on {address.endpoint}: {exc}") from exc
    return sock


def dial(address: Address, endpoint: str, timeout: float) -> socket.socket:
    """A connected, blocking socket, or UNAVAILABLE (refused, unresolvable, or silent for ``timeout`` s)."""
    try:
        sock = socket.create_connection((address.host, address.port), timeout=timeout)
    except TimeoutError as exc:
        raise unavailable(endpoint, f"no answer to connect within {timeout:.3g} s") from exc
    except OSError as exc:
        reason = "nothing listens there" if isinstance(exc, ConnectionRefusedError) else str(exc)
        raise unavailable(endpoint, reason) from exc
    sock.settimeout(None)
    return sock
