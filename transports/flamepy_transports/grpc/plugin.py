"""Declares the gRPC transport. Light: ``grpc`` is imported only inside :func:`_load`."""

from __future__ import annotations

from collections.abc import Sequence

from flamepy_core.contracts import TransportCapabilities, TransportSpec, hookimpl
from flamepy_core.contracts.transport import TransportFactory

DEFAULT_MAX_MESSAGE_SIZE = 256 * 1024 * 1024
SCHEMES = ("grpc", "http", "unix")
OPTIONS = frozenset({"max_message_size", "default_timeout", "max_workers", "keepalive_time_ms", "keepalive_timeout_ms"})


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
                tls=False,
                auth=False,
            ),
            load=_load,
            options=OPTIONS,
            requires=("grpcio",),
            description="Flame's own gRPC protocol over TCP (grpc://, http://) or a unix socket (unix://)",
        )
    ]
