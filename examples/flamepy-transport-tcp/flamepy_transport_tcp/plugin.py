"""Declares the tcp transport to flamepy. Imports only :mod:`flamepy_core.contracts`, so scanning is cheap."""

from __future__ import annotations

from collections.abc import Sequence

from flamepy_core.contracts import TransportCapabilities, TransportSpec, hookimpl
from flamepy_core.contracts.transport import TransportFactory

NAME = "tcp"
SCHEMES = ("tcp",)
DEFAULT_MAX_MESSAGE_SIZE = 64 * 1024 * 1024
OPTIONS = frozenset({"max_message_size", "default_timeout", "max_workers", "connect_timeout"})


def _load() -> TransportFactory:
    # Imported here, not at the top: the implementation loads only when a tcp:// endpoint is used.
    from flamepy_transport_tcp.transport import TcpTransport

    return TcpTransport


@hookimpl
def flamepy_add_transports() -> Sequence[TransportSpec]:
    return [
        TransportSpec(
            name=NAME,
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
            requires=("flamepy-transport-tcp",),
            description="length-prefixed frames over one plain TCP connection per channel (example plugin)",
        )
    ]
