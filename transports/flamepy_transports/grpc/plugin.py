"""Declares the gRPC transport. Light: ``grpc`` is imported only inside :func:`_load`."""

from __future__ import annotations

from collections.abc import Sequence

from flamepy_core.contracts import TransportCapabilities, TransportSpec, hookimpl
from flamepy_core.contracts.transport import TransportFactory

DEFAULT_MAX_MESSAGE_SIZE = 256 * 1024 * 1024
SCHEMES = ("grpc", "http", "unix", "grpcs", "https")
"""``grpcs://`` and ``https://`` are TLS; the others are plain."""
TLS_OPTIONS = frozenset({"ca_file", "cert_file", "key_file", "client_ca_file", "server_name_override"})
"""Options that only TLS endpoints use (see :mod:`flamepy_transports.grpc.tls`)."""
OPTIONS = (
    frozenset({"max_message_size", "default_timeout", "max_workers", "keepalive_time_ms", "keepalive_timeout_ms"})
    | TLS_OPTIONS
)


def _load() -> TransportFactory:
    from flamepy_transports.grpc.transport import GrpcTransport

    return GrpcTransport


@hookimpl
def flamepy_add_transports() -> Sequence[TransportSpec]:
    return [
        TransportSpec(
            name="grpc",
            schemes=SCHEMES,
            capabilities=TransportCapabilities(
                max_message_size=DEFAULT_MAX_MESSAGE_SIZE,
                streaming=True,
                cross_process=True,
                tls=True,
                auth=True,
            ),
            load=_load,
            options=OPTIONS,
            requires=("grpcio",),
            description=(
                "Flame's own gRPC protocol over TCP (grpc://, http://), TLS (grpcs://, https://; mutual TLS "
                "with client certificates) or a unix socket (unix://)"
            ),
        )
    ]
