"""An in-process endpoint (``inmem://NAME``): the same engine inside the calling process (tests, notebooks).

Its instances are still processes; they reach the object cache through a socket the in-process server
also serves. With ``FLAME_INSTANCE_MODE=inprocess`` they run in this process too (the service file is
loaded, see :mod:`flamepy_core.engine.inprocess`): no process at all, for unit tests of services.
The server lives until the process exits, or until :func:`stop_inprocess_server`.

The client never imports this module: ``flamepy`` hands ``flamepy_core.engine.IN_PROCESS_SERVERS`` to
:func:`flamepy_core.client.embedded.provide_inprocess_servers` (the embedded server is injected).
"""

from __future__ import annotations

import atexit
import os
import threading
from pathlib import Path

from flamepy_core.engine.server import SERVER_WORKERS, FlameServer
from flamepy_core.plugins import get_registry
from flamepy_core.privacy import private_dir

INSTANCE_MODE_ENV = "FLAME_INSTANCE_MODE"
"""``process`` (default) or ``inprocess``: how an in-process server runs its instances."""

_lock = threading.Lock()
_servers: dict[str, FlameServer] = {}


def ensure_inprocess_server(endpoint: str, home: Path, *, instance_mode: str | None = None) -> FlameServer:
    """The in-process server for ``endpoint``, started on first use.

    ``instance_mode`` (default ``$FLAME_INSTANCE_MODE``, else ``process``) applies when it is started.
    """
    with _lock:
        server = _servers.get(endpoint)
        if server is None:
            private_dir(home)
            scheme, _, rest = endpoint.partition("://")
            name = rest.replace("/", "_") or "default"
            server = FlameServer(
                home,
                endpoint,
                publish=False,
                # The registry's shared transport object: this process's clients reach the server through it.
                frontend_transport=get_registry().shared_transport(endpoint, {"max_workers": SERVER_WORKERS}),
                db_path=home / f"{scheme}-{name}.db",
                instance_mode=instance_mode or os.environ.get(INSTANCE_MODE_ENV, "").strip() or "process",
            )
            server.start()
            _servers[endpoint] = server
            atexit.register(server.stop)
        return server


def stop_inprocess_server(endpoint: str) -> bool:
    """Stop the in-process server for ``endpoint`` and forget it (a test's runtime); False if none ran."""
    with _lock:
        server = _servers.pop(endpoint, None)
    if server is None:
        return False
    server.stop()
    atexit.unregister(server.stop)
    return True
