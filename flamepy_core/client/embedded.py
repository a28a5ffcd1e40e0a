"""``inmem://NAME``: the same engine inside the calling process (tests, notebooks).

Its instances are still processes; they reach the object cache through a socket the in-process server
also serves. The server lives until the process exits.
"""

from __future__ import annotations

import atexit
import threading
from pathlib import Path

from flamepy_core.client.transports import shared_transport
from flamepy_core.engine.server import SERVER_WORKERS, FlameServer

_lock = threading.Lock()
_servers: dict[str, FlameServer] = {}


def ensure_inprocess_server(endpoint: str, home: Path) -> FlameServer:
    """The in-process server for ``endpoint``, started on first use."""
    with _lock:
        server = _servers.get(endpoint)
        if server is None:
            home.mkdir(parents=True, exist_ok=True)
            name = endpoint[len("inmem://") :].replace("/", "_") or "default"
            server = FlameServer(
                home,
                endpoint,
                publish=False,
                frontend_transport=shared_transport(endpoint, max_workers=SERVER_WORKERS),
                db_path=home / f"inmem-{name}.db",
            )
            server.start()
            _servers[endpoint] = server
            atexit.register(server.stop)
        return server
