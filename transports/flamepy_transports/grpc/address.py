"""Endpoint parsing for the gRPC transport.

Plain: ``grpc://HOST:PORT``, ``http://HOST:PORT``, ``unix:///PATH``. TLS: ``grpcs://HOST:PORT`` and
``https://HOST:PORT`` (Flame's rule: ``https://`` means TLS).
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
from dataclasses import dataclass
from urllib.parse import urlsplit

from flamepy_core.contracts.errors import FlameError, FlameErrorCode

DEFAULT_PORT = 8080
"""The port when an endpoint names none (Flame's default endpoint is ``http://127.0.0.1:8080``)."""

TLS_SCHEMES = ("grpcs", "https")
"""Schemes whose connections are TLS."""
TCP_SCHEMES = ("grpc", "http", *TLS_SCHEMES)
UNIX_SCHEME = "unix"
MAX_UNIX_PATH_BYTES = 107  # sun_path is 108 bytes on Linux, NUL included


@dataclass(frozen=True)
class Address:
    """One parsed endpoint: what gRPC dials or binds, and how we report it."""

    scheme: str
    host: str = ""
    port: int = 0
    path: str = ""

    @property
    def is_unix(self) -> bool:
        return self.scheme == UNIX_SCHEME

    @property
    def is_tls(self) -> bool:
        """Whether connections to this address use TLS (``grpcs://``, ``https://``)."""
        return self.scheme in TLS_SCHEMES

    @property
    def target(self) -> str:
        """The gRPC target: ``host:port`` (``[v6]:port``) or ``unix:///path``."""
        if self.is_unix:
            return f"unix://{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def endpoint(self) -> str:
        """The endpoint URL, in the scheme it was given with."""
        if self.is_unix:
            return f"unix://{self.path}"
        return f"{self.scheme}://{self.target}"

    def with_port(self, port: int) -> Address:
        return Address(self.scheme, self.host, port, self.path)


def _bad(endpoint: str, why: str) -> FlameError:
    return FlameError(
        FlameErrorCode.INVALID_ARGUMENT,
        f"gRPC endpoint '{endpoint}' is not valid: {why}; write grpc://HOST:PORT, http://HOST:PORT, "
        f"unix:///ABSOLUTE/PATH, or grpcs://HOST:PORT or https://HOST:PORT for TLS",
    )


def parse_endpoint(endpoint: str) -> Address:
    """Parse an endpoint URL, or raise ``FlameError(INVALID_ARGUMENT)`` saying what is wrong with it."""
    scheme, sep, rest = endpoint.partition("://")
    scheme = scheme.lower()
    if not sep:
        raise _bad(endpoint, "it has no URL scheme")
    if scheme == UNIX_SCHEME:
        if not rest.startswith("/"):
            raise _bad(endpoint, "a unix socket path must be absolute (three slashes: unix:///path)")
        size = len(os.fsencode(rest))
        if size > MAX_UNIX_PATH_BYTES:
            raise _bad(endpoint, f"the socket path is {size} bytes, longer than the limit of {MAX_UNIX_PATH_BYTES}")
        return Address(UNIX_SCHEME, path=rest)
    if scheme not in TCP_SCHEMES:
        raise _bad(endpoint, f"the gRPC transport does not handle the scheme '{scheme}'")
    try:
        parts = urlsplit(f"{scheme}://{rest}")
        port = parts.port
    except ValueError as exc:
        raise _bad(endpoint, str(exc)) from None
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise _bad(endpoint, "gRPC endpoints carry no path, query or fragment")
    if not parts.hostname:
        raise _bad(endpoint, "it names no host")
    return Address(scheme, host=parts.hostname, port=DEFAULT_PORT if port is None else port)


def _socket_in_use(path: str) -> bool:
    """True when something accepts connections on the unix socket ``path``."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except OSError as exc:
        if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
            return False
        return exc.errno in (errno.EAGAIN, errno.ETIMEDOUT)  # listening, backlog full: in use
    else:
        return True
    finally:
        probe.close()


def prepare_unix_path(address: Address) -> None:
    """Make ``address.path`` bindable: remove a stale socket file, refuse a live one or a non-socket."""
    path = address.path
    parent = os.path.dirname(path) or "/"
    if not os.path.isdir(parent):
        raise FlameError(
            FlameErrorCode.INVALID_ARGUMENT,
            f"cannot serve on {address.endpoint}: the directory {parent} does not exist",
        )
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise FlameError(
            FlameErrorCode.ALREADY_EXISTS,
            f"cannot serve on {address.endpoint}: {path} exists and is not a socket; refusing to remove it",
        )
    if _socket_in_use(path):
        raise FlameError(
            FlameErrorCode.ALREADY_EXISTS,
            f"cannot serve on {address.endpoint}: another server is already listening on {path}",
        )
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)  # a stale socket left by a server that died without cleaning up


def remove_socket_file(address: Address) -> None:
    """After a stop: remove our unix socket file if it is still there and nobody listens on it."""
    try:
        if stat.S_ISSOCK(os.lstat(address.path).st_mode) and not _socket_in_use(address.path):
            os.unlink(address.path)
    except OSError:
        pass


def diagnose_bind_failure(address: Address) -> tuple[FlameErrorCode, str]:
    """Why gRPC could not bind ``address`` (it only says "failed to bind"): the code and the reason."""
    if address.is_unix:
        return FlameErrorCode.INVALID_ARGUMENT, f"cannot bind the unix socket {address.path}"
    try:
        infos = socket.getaddrinfo(address.host, address.port, type=socket.SOCK_STREAM)
    except OSError as exc:
        return FlameErrorCode.INVALID_ARGUMENT, f"cannot resolve host '{address.host}': {exc}"
    for family, kind, proto, _, sockaddr in infos:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(sockaddr)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    return FlameErrorCode.ALREADY_EXISTS, f"the address {address.target} is already in use"
                if exc.errno == errno.EACCES:
                    return FlameErrorCode.PERMISSION_DENIED, f"not allowed to bind {address.target}: {exc}"
                return FlameErrorCode.INVALID_ARGUMENT, f"cannot bind {address.target}: {exc}"
    return FlameErrorCode.INVALID_ARGUMENT, f"gRPC could not bind {address.target}"
