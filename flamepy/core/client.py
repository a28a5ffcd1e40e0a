"""``flamepy.core.client``: the client — ``Connection``, ``Session`` and the module-level calls."""

from __future__ import annotations

from flamepy_core.client.api import (
    close_session,
    create_session,
    get_application,
    get_session,
    list_applications,
    list_executors,
    list_nodes,
    list_sessions,
    open_session,
    register_application,
    unregister_application,
    update_application,
)
from flamepy_core.client.connection import Connection, connect, default_connection, reset_default_connection
from flamepy_core.client.session import Session, TaskFailedError, TaskWatcher


class ConnectionInstance:
    """The process-wide connection every module-level call uses (Flame's name for it).

    ``ConnectionInstance.instance()`` connects on first use: to the configured endpoint, or with nothing
    configured to the local server for ``FLAME_HOME`` (started if needed) — where Flame's 0.6 client
    fails with "address cannot be empty". A failed connect is not kept; a connection is rebuilt after
    ``fork()``.
    """

    @classmethod
    def instance(cls) -> Connection:
        return default_connection()

    @classmethod
    def reset(cls) -> None:
        """Forget the connection, e.g. after changing ``FLAME_*`` variables; the next call reconnects."""
        reset_default_connection()


__all__ = [
    "Connection",
    "ConnectionInstance",
    "Session",
    "TaskFailedError",
    "TaskWatcher",
    "close_session",
    "connect",
    "create_session",
    "get_application",
    "get_session",
    "list_applications",
    "list_executors",
    "list_nodes",
    "list_sessions",
    "open_session",
    "register_application",
    "unregister_application",
    "update_application",
]
