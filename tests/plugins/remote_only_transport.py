"""A transport plugin for tests: it declares no local schemes, so it cannot carry the local runtime.

Loaded with ``FLAMEPY_PLUGINS=remote_only_transport`` (this folder on ``PYTHONPATH``); it is never built,
because the runtime refuses it before that.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from flamepy_core.contracts import Handler, TransportCapabilities


class RemoteOnlyTransport:
    """Reaches servers elsewhere only: no ``local_schemes``, no ``in_process``."""

    name: ClassVar[str] = "remoteonly"
    schemes: ClassVar[tuple[str, ...]] = ("remoteonly",)
    capabilities: ClassVar[TransportCapabilities] = TransportCapabilities(max_message_size=1 << 20)

    def connect(self, endpoint: str) -> Any:
        raise AssertionError("the runtime must refuse this transport before using it")

    def serve(self, endpoint: str, handlers: Mapping[str, Handler]) -> Any:
        raise AssertionError("the runtime must refuse this transport before using it")
