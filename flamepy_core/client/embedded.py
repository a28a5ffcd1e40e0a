"""Where the client gets an in-process server from: injected, so the client never imports the engine.

An endpoint of an in-process transport (``inmem://NAME``) names a server that runs inside the calling
process. The client does not know how to build one; whoever assembles the process hands it a provider
(:func:`provide_inprocess_servers`): ``import flamepy`` provides the engine's, so user code that imports
``flamepy`` (every service and client) has it, and ``flmctl`` does the same.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Protocol

from flamepy_core.contracts.errors import FlameError, FlameErrorCode


class InProcessServers(Protocol):
    """Starts (once) the server for an in-process endpoint in this process."""

    def ensure(self, endpoint: str, home: Path) -> None:
        """Make sure a server listens on ``endpoint`` in this process, with its state in ``home``."""
        ...


_lock = threading.Lock()
_provider: InProcessServers | None = None


def provide_inprocess_servers(provider: InProcessServers | None) -> None:
    """Set what starts in-process servers for this process's clients (None: none can be started)."""
    global _provider
    with _lock:
        _provider = provider


def ensure_inprocess_server(endpoint: str, home: Path) -> None:
    """Start the in-process server for ``endpoint`` through the provider, or say how to get one."""
    provider = _provider
    if provider is None:
        raise FlameError(
            FlameErrorCode.INVALID_CONFIG,
            f"{endpoint} names a server inside this process, but nothing here can start one: `import flamepy` "
            f"first (it provides the runtime's in-process server), or connect to a server that runs elsewhere",
        )
    provider.ensure(endpoint, home)
