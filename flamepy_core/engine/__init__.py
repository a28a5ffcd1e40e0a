"""The runtime: store (sqlite), session/task state, scheduler, executor (instance processes), object cache,
and the server that exposes them over any transport.

The engine never deserializes a user payload: task inputs, outputs, session common data and cached objects
are opaque bytes here.
"""

from __future__ import annotations

from pathlib import Path


class InProcessServers:
    """The engine's in-process servers, for :func:`flamepy_core.client.embedded.provide_inprocess_servers`.

    Light on purpose: ``import flamepy`` hands it to the client, and the engine itself (sqlite, the
    scheduler) is imported only when an in-process endpoint is first used.
    """

    def ensure(self, endpoint: str, home: Path) -> None:
        from flamepy_core.engine.embedded import ensure_inprocess_server

        ensure_inprocess_server(endpoint, home)


IN_PROCESS_SERVERS = InProcessServers()
