"""One transport object per transport name in a process, shared by every connection.

Sharing matters for ``inmem://``: an in-process server and its clients must use the same in-memory
transport object to see each other. For the others it saves building the same thing twice.
"""

from __future__ import annotations

import threading
from typing import Any

from flamepy_core.contracts.transport import Transport
from flamepy_core.plugins import PluginRegistry, get_registry

_lock = threading.Lock()
_shared: dict[tuple[int, str], Transport] = {}


def shared_transport(endpoint: str, registry: PluginRegistry | None = None, **options: Any) -> Transport:
    """The process's transport for ``endpoint``'s scheme (created on first use, with ``options``)."""
    reg = registry or get_registry()
    chosen = reg.transport_spec_for_endpoint(endpoint)
    key = (id(reg), chosen.spec.name)
    with _lock:
        transport = _shared.get(key)
        if transport is None:
            transport = reg.create_transport(chosen, options)
            _shared[key] = transport
        return transport
