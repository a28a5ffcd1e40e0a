"""Endpoint URLs of the zmq transport and their libzmq addresses.

* ``zmq+tcp://HOST:PORT`` -> ``tcp://HOST:PORT``. ``HOST`` is an IPv4 address, a name, ``*`` (serve on
  every interface) or a bracketed IPv6 address. Serving on port 0 binds a free port; the server reports it.
* ``zmq+ipc:///ABS/PATH`` -> ``ipc:///ABS/PATH`` (a unix socket file; at most 107 bytes on Linux), or
  ``zmq+ipc://@NAME`` for a Linux abstract socket.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass

from flamepy_core.contracts.errors import FlameError, FlameErrorCode
from flamepy_transports.zmq.defaults import IPC, IPC_PATH_MAX, SCHEMES, TCP

__all__ = ["IPC", "SCHEMES", "TCP", "Address", "check_ipc_free", "parse", "served"]


@dataclass(frozen=True)
class Address:
    """A parsed endpoint: the URL the user wrote and what libzmq needs."""

    url: str
    scheme: str
    zmq_address: str
    host: str = ""
    port: int = 0
    path: str = ""

    @property
    def ipv6(self) -> bool:
        return self.host.startswith("[")

    @property
    def is_ipc_file(self) -> bool:
        return self.scheme == IPC and not self.path.startswith("@")


def _bad(endpoint: str, why: str) -> FlameError:
    return FlameError(
        FlameErrorCode.INVALID_ARGUMENT,
        f"bad zmq endpoint '{endpoint}': {why}; write zmq+tcp://HOST:PORT or zmq+ipc:///ABSOLUTE/PATH",
    )


def parse(endpoint: str, *, serving: bool) -> Address:
    """Parse ``endpoint``; ``serving`` allows port 0 and the ``*`` host."""
    scheme, sep, rest = endpoint.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in SCHEMES:
        raise _bad(endpoint, f"the scheme must be one of {', '.join(SCHEMES)}")
    if scheme == IPC:
        if rest.startswith("@") and len(rest) > 1:
            return Address(endpoint, scheme, f"ipc://{rest}", path=rest)
        if not rest.startswith("/"):
            raise _bad(endpoint, "an ipc path must be absolute (three slashes) or @abstract")
        if len(rest.encode()) > IPC_PATH_MAX:
            raise _bad(endpoint, f"the ipc path is {len(rest.encode())} bytes, the OS allows {IPC_PATH_MAX}")
        return Address(endpoint, scheme, f"ipc://{rest}", path=rest)
    host, colon, port_text = rest.rpartition(":")
    if not colon or not host or "/" in port_text:
        raise _bad(endpoint, "a tcp endpoint needs HOST:PORT")
    try:
        port = int(port_text)
    except ValueError:
        raise _bad(endpoint, f"port '{port_text}' is not a number") from None
    if not 0 <= port <= 65535:
        raise _bad(endpoint, f"port {port} is out of range")
    if not serving and (port == 0 or host == "*"):
        raise _bad(endpoint, "a client needs a concrete host and port")
    if ":" in host and not host.startswith("["):
        raise _bad(endpoint, "write an IPv6 host in brackets, e.g. [::1]")
    return Address(endpoint, scheme, f"tcp://{host}:{port}", host=host, port=port)


def served(address: Address, last_endpoint: str) -> str:
    """The URL a server reports once bound: port 0 replaced by the real port."""
    if address.scheme == IPC:
        return f"{IPC}://{address.path}"
    port = int(last_endpoint.rsplit(":", 1)[1])
    host = address.host
    if host in ("*", "0.0.0.0"):
        host = last_endpoint[len("tcp://") :].rsplit(":", 1)[0]
    return f"{TCP}://{host}:{port}"


def check_ipc_free(address: Address) -> None:
    """Refuse to bind an ipc path another live server listens on (libzmq would silently steal it)."""
    if not address.is_ipc_file or not os.path.exists(address.path):
        return
    import socket  # only for a path already there: a service instance's start does without the module

    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(address.path)
    except OSError as exc:
        if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
            return  # a stale file left by a dead server: libzmq replaces it
        raise FlameError(FlameErrorCode.INVALID_ARGUMENT, f"cannot use ipc path {address.path}: {exc}") from exc
    finally:
        probe.close()
    raise FlameError(FlameErrorCode.ALREADY_EXISTS, f"{address.url} is already served by another process")
