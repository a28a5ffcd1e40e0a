"""Declares the in-memory transport."""

from __future__ import annotations

from collections.abc import Sequence

from flamepy_core.contracts import TransportCapabilities, TransportSpec, hookimpl
from flamepy_core.contracts.transport import TransportFactory

DEFAULT_MAX_MESSAGE_SIZE = 256 * 1024 * 1024


def _load() -> TransportFactory:
    from flamepy_transports.inmem.transport import InMemoryTransport

    return InMemoryTransport  # type: ignore[return-value]


@hookimpl
def flamepy_add_transports() -> Sequence[TransportSpec]:
    return [
        TransportSpec(
            name="inmem",
            schemes=("inmem",),
            capabilities=TransportCapabilities(
                max_message_size=DEFAULT_MAX_MESSAGE_SIZE, streaming=True, cross_process=False
            ),
            load=_load,
            options=frozenset({"max_message_size", "default_timeout", "max_workers"}),
            description="in-process calls between threads; each transport object is its own namespace",
        )
    ]
