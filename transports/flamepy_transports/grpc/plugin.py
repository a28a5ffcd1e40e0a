"""The gRPC transport (``grpc://``, ``http://``, ``unix://``; TLS on ``grpcs://``, ``https://``): Flame's own
protocol. Declared once: the class carries its name, schemes, capabilities and options, and the
``flamepy.transports`` entry point names it (``flamepy_transports.grpc.plugin:GrpcTransport``). This module
imports no grpcio: listing the installed plugins stays cheap, and grpcio loads when a transport is built.

Capabilities worth knowing: ``bare_path_scheme="unix"`` (a bare socket path, what Flame's executors pass in
``FLAME_INSTANCE_ENDPOINT``, is served and dialled as ``unix://PATH``, so services written with Flame's
SDK run under our server); ``local_schemes=("unix",)``; TLS as its ``security``; ``async_calls`` (a
channel's ``unary_async`` is grpcio's own ``future()`` call, completed on grpcio's completion thread of
the channel, kept while the channel is open: no thread of ours waits for it); and *no*
``deferred_replies`` or ``deferred_streams``: gRPC's synchronous server runs each call on a pool thread until
the handler returns, so a deferred handler is served by the kit's adapter, which waits on that thread
(:func:`flamepy_core.transport_kit.adapt_handlers`). Its asyncio server would free the thread, but measured
it made every call slower (each completion wakes the event loop from grpcio's poller thread; the numbers
are in ``docs/benchmarks.md``, "gRPC's asyncio server: measured, not used"), and gRPC is the compatibility
path here, not the fast one.

What that costs: a deferred reply holds a server thread until it is sent, and an open deferred stream (the
runtime's watches: ``WatchTask``, ``WatchSession``, ``WatchOutcomes``) holds one for as long as it is open,
as a plain stream handler always did. The threads are the server's ``max_workers`` (default 32; the
runtime's server asks for 512): with that many open, further calls wait for one to end. A runtime that
watches many sessions at once runs its frontend on ZeroMQ (the default), where an open watch holds no
thread.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from flamepy_core.contracts.transport import Handler, SecuritySetting, TransportCapabilities, TransportSecurity
from flamepy_core.transport_kit import DEFAULT_CALL_TIMEOUT
from flamepy_transports.grpc.defaults import (
    DEFAULT_KEEPALIVE_TIME_MS,
    DEFAULT_KEEPALIVE_TIMEOUT_MS,
    DEFAULT_MAX_MESSAGE_SIZE,
    DEFAULT_MAX_WORKERS,
    GRPC_MAX_MESSAGE_SIZE,
    NAME,
    SCHEMES,
    TCP_SCHEME,
    TLS_SCHEMES,
    UNIX_PATH_MAX,
    UNIX_SCHEME,
)

if TYPE_CHECKING:
    from flamepy_transports.grpc.transport import GrpcChannel, GrpcServer, GrpcSettings

log = logging.getLogger(__name__)

_PAIR = "a TLS certificate needs its private key (cert_file and key_file go together)"

TLS = TransportSecurity(
    mechanism="TLS",
    schemes=TLS_SCHEMES,
    settings=(
        SecuritySetting(
            "ca_file",
            "client",
            env="FLAME_CA_FILE",
            config_key="tls.ca_file",
            config_first=True,
            help="the CA certificates (PEM) that verify the server; default: gRPC's default roots",
        ),
        SecuritySetting(
            "cert_file",
            "client",
            env="FLAME_CLIENT_CERT_FILE",
            pair="key_file",
            help="a client certificate for mutual TLS needs its private key",
        ),
        SecuritySetting(
            "key_file",
            "client",
            env="FLAME_CLIENT_KEY_FILE",
            pair="cert_file",
            help="a client certificate for mutual TLS needs its private key",
        ),
        SecuritySetting(
            "cert_file",
            "server",
            flag="--tls-cert",
            pair="key_file",
            required=True,
            help="the server's certificate (PEM); with --tls-key, serve TLS on an https:// or grpcs:// --listen",
        ),
        SecuritySetting(
            "key_file", "server", flag="--tls-key", pair="cert_file", required=True, help="its private key (PEM)"
        ),
        SecuritySetting(
            "client_ca_file",
            "server",
            flag="--tls-client-ca",
            help="mutual TLS: refuse clients without a certificate signed by this CA (PEM)",
        ),
        SecuritySetting(
            "ca_file",
            "server",
            flag="--tls-ca",
            help="the CA that signed --tls-cert, given to instances as FLAME_CA_FILE to reach the object cache "
            "(default: the server's own FLAME_CA_FILE)",
        ),
    ),
)
"""TLS and mutual TLS (see :mod:`flamepy_transports.grpc.tls`)."""


class GrpcTransport:
    """The gRPC transport: channels and servers for ``grpc://``, ``http://``, ``unix://`` and, with TLS,
    ``grpcs://`` and ``https://``.

    One transport serves and connects, so the TLS options cover both roles: ``cert_file``/``key_file`` are
    a server's certificate, and a client's certificate for mutual TLS; ``ca_file`` verifies servers;
    ``client_ca_file`` makes servers require client certificates; ``server_name_override`` is the name a
    client checks the server's certificate against. Plain endpoints ignore them. See
    :mod:`flamepy_transports.grpc.tls`.
    """

    name: ClassVar[str] = NAME
    schemes: ClassVar[tuple[str, ...]] = SCHEMES
    capabilities: TransportCapabilities = TransportCapabilities(
        max_message_size=DEFAULT_MAX_MESSAGE_SIZE,
        streaming=True,
        cross_process=True,
        tls=True,
        auth=True,
        local_schemes=(UNIX_SCHEME,),
        bare_path_scheme=UNIX_SCHEME,
        local_default_rank=10,
        security=TLS,
        async_calls=True,
    )
    options: ClassVar[frozenset[str]] = frozenset(
        {
            "max_message_size",
            "default_timeout",
            "max_workers",
            "keepalive_time_ms",
            "keepalive_timeout_ms",
            "ca_file",
            "cert_file",
            "key_file",
            "client_ca_file",
            "server_name_override",
        }
    )
    serve_modules: ClassVar[tuple[str, ...]] = ("flamepy_transports.grpc.tls", "flamepy_transports.grpc.transport")
    """What building and serving imports: a process about to serve may import them ahead (the runtime's
    generic instance process does, before it knows its application)."""
    requires: ClassVar[tuple[str, ...]] = ("grpcio",)
    description: ClassVar[str] = (
        "Flame's own gRPC protocol over TCP (grpc://, http://), TLS (grpcs://, https://; mutual TLS "
        "with client certificates) or a unix socket (unix://)"
    )

    def __init__(
        self,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        default_timeout: float | None = DEFAULT_CALL_TIMEOUT,
        max_workers: int = DEFAULT_MAX_WORKERS,
        keepalive_time_ms: int = DEFAULT_KEEPALIVE_TIME_MS,
        keepalive_timeout_ms: int = DEFAULT_KEEPALIVE_TIMEOUT_MS,
        ca_file: str | os.PathLike[str] | None = None,
        cert_file: str | os.PathLike[str] | None = None,
        key_file: str | os.PathLike[str] | None = None,
        client_ca_file: str | os.PathLike[str] | None = None,
        server_name_override: str | None = None,
    ) -> None:
        if not 0 < max_message_size <= GRPC_MAX_MESSAGE_SIZE:
            raise ValueError(
                f"max_message_size must be between 1 and {GRPC_MAX_MESSAGE_SIZE} bytes (gRPC's limit), "
                f"got {max_message_size}"
            )
        if default_timeout is not None and default_timeout <= 0:
            raise ValueError(f"default_timeout must be > 0 seconds or None, got {default_timeout}")
        if max_workers < 1:
            raise ValueError(f"max_workers must be >= 1, got {max_workers}")
        if keepalive_time_ms < 1 or keepalive_timeout_ms < 1:
            raise ValueError(
                f"keepalive_time_ms and keepalive_timeout_ms must be >= 1, "
                f"got {keepalive_time_ms} and {keepalive_timeout_ms}"
            )
        # grpcio: when a transport is built, not when plugins are listed.
        from flamepy_transports.grpc.tls import TlsOptions
        from flamepy_transports.grpc.transport import GrpcSettings

        tls = TlsOptions.create(
            ca_file=ca_file,
            cert_file=cert_file,
            key_file=key_file,
            client_ca_file=client_ca_file,
            server_name_override=server_name_override,
        )
        self._settings: GrpcSettings = GrpcSettings(
            max_message_size, default_timeout, max_workers, keepalive_time_ms, keepalive_timeout_ms, tls
        )
        self.capabilities = dataclasses.replace(type(self).capabilities, max_message_size=max_message_size)

    def connect(self, endpoint: str) -> GrpcChannel:
        """A channel to ``endpoint``; lazy: an absent server shows on the first call (or ``wait_ready``).

        A TLS endpoint's files (``ca_file``, ``cert_file``, ``key_file``) are read and checked now.
        """
        from flamepy_transports.grpc.transport import open_channel

        return open_channel(endpoint, self._settings)

    def serve(self, endpoint: str, handlers: Mapping[str, Handler]) -> GrpcServer:
        """Serve ``handlers`` on ``endpoint`` (port 0 picks a free port) and return once it accepts calls."""
        from flamepy_transports.grpc.transport import start_server

        return start_server(endpoint, handlers, self._settings)

    def local_endpoint(self, directory: str, name: str) -> str:
        """``unix://<directory>/<name>.sock``; a free loopback port when that path is too long for a socket."""
        path = os.path.join(directory, f"{name}.sock")
        if len(path.encode()) > UNIX_PATH_MAX:
            return f"{TCP_SCHEME}://127.0.0.1:0"
        return f"{UNIX_SCHEME}://{path}"

    def instance_credentials(
        self, server_options: Mapping[str, Any], directory: str
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """What the server's instances need to reach its TLS endpoint (the object cache is served there).

        The CA given with ``--tls-ca`` becomes their ``FLAME_CA_FILE``; without it they inherit the
        server's own. Under mutual TLS they present ``FLAME_CLIENT_CERT_FILE``/``FLAME_CLIENT_KEY_FILE``
        from the server's environment, which this says when they are missing.
        """
        client: dict[str, Any] = {}
        if server_options.get("ca_file"):
            client["ca_file"] = server_options["ca_file"]
        elif not os.environ.get("FLAME_CA_FILE"):
            log.warning(
                "instances will verify the object cache with gRPC's default roots: pass the CA that signed the "
                "server's certificate (--tls-ca, or FLAME_CA_FILE in the server's environment)"
            )
        if server_options.get("client_ca_file") and not (
            os.environ.get("FLAME_CLIENT_CERT_FILE") and os.environ.get("FLAME_CLIENT_KEY_FILE")
        ):
            log.warning(
                "mutual TLS: instances present no client certificate, so they cannot reach the object cache; "
                "set FLAME_CLIENT_CERT_FILE and FLAME_CLIENT_KEY_FILE in the server's environment"
            )
        return dict(server_options), client
