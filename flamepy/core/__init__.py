"""``flamepy.core``: Flame's core API (client, service base classes, object cache, types).

Thin: it re-exports the implementation modules ``flamepy.core.client``, ``.types``, ``.service`` and
``.cache`` (Flame's module names), which re-export from :mod:`flamepy_core`, where the machinery is.

Every name is imported on first use (PEP 562): ``import flamepy`` in a service process, which needs
``FlameService`` and ``run``, does not load the client, the object cache or their dependencies.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from flamepy_core.lazy_names import LazyNames

if TYPE_CHECKING:
    from flamepy.core.cache import (
        WILDCARD_SESSION,
        ObjectKey,
        ObjectRef,
        delete_objects,
        download_object,
        get_object,
        patch_object,
        put_object,
        update_object,
        upload_object,
    )
    from flamepy.core.client import (
        Connection,
        ConnectionInstance,
        Session,
        TaskFailedError,
        TaskWatcher,
        close_session,
        connect,
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
    from flamepy.core.service import (
        ApplicationContext,
        FlameInstanceServer,
        FlameInstanceServicer,
        FlameService,
        SessionContext,
        TaskContext,
        run,
    )
    from flamepy.core.types import (
        DEFAULT_FLAME_CACHE_ENDPOINT,
        DEFAULT_FLAME_CONF,
        DEFAULT_FLAME_ENDPOINT,
        FLAME_INSTANCE_ENDPOINT,
        Application,
        ApplicationAttributes,
        ApplicationID,
        ApplicationSchema,
        ApplicationState,
        CommonData,
        Event,
        FlameContext,
        FlameContextRunner,
        FlameError,
        FlameErrorCode,
        FlamePackage,
        Message,
        ResourceRequirement,
        SessionAttributes,
        SessionID,
        SessionState,
        Shim,
        Task,
        TaskID,
        TaskInformer,
        TaskInput,
        TaskOutput,
        TaskState,
        short_name,
    )
    from flamepy.core.types import (
        FlameClientCache as FlameClientCache,
    )
    from flamepy.core.types import (
        FlameClientTls as FlameClientTls,
    )
    from flamepy.core.types import (
        FlameClusterConfig as FlameClusterConfig,
    )

# FlameClientCache, FlameClientTls and FlameClusterConfig are importable here but, as in Flame, live in
# flamepy.core.types and are not part of __all__.
__all__ = [
    "DEFAULT_FLAME_CACHE_ENDPOINT",
    "DEFAULT_FLAME_CONF",
    "DEFAULT_FLAME_ENDPOINT",
    "FLAME_INSTANCE_ENDPOINT",
    "WILDCARD_SESSION",
    "Application",
    "ApplicationAttributes",
    "ApplicationContext",
    "ApplicationID",
    "ApplicationSchema",
    "ApplicationState",
    "CommonData",
    "Connection",
    "ConnectionInstance",
    "Event",
    "FlameContext",
    "FlameContextRunner",
    "FlameError",
    "FlameErrorCode",
    "FlameInstanceServer",
    "FlameInstanceServicer",
    "FlamePackage",
    "FlameService",
    "Message",
    "ObjectKey",
    "ObjectRef",
    "ResourceRequirement",
    "Session",
    "SessionAttributes",
    "SessionContext",
    "SessionID",
    "SessionState",
    "Shim",
    "Task",
    "TaskContext",
    "TaskFailedError",
    "TaskID",
    "TaskInformer",
    "TaskInput",
    "TaskOutput",
    "TaskState",
    "TaskWatcher",
    "close_session",
    "connect",
    "create_session",
    "delete_objects",
    "download_object",
    "get_application",
    "get_object",
    "get_session",
    "list_applications",
    "list_executors",
    "list_nodes",
    "list_sessions",
    "open_session",
    "patch_object",
    "put_object",
    "register_application",
    "run",
    "short_name",
    "unregister_application",
    "update_application",
    "update_object",
    "upload_object",
]

_WHERE: dict[str, str] = {
    **dict.fromkeys(
        (
            "ObjectKey",
            "ObjectRef",
            "WILDCARD_SESSION",
            "delete_objects",
            "download_object",
            "get_object",
            "patch_object",
            "put_object",
            "update_object",
            "upload_object",
        ),
        "flamepy.core.cache",
    ),
    **dict.fromkeys(
        (
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
        ),
        "flamepy.core.client",
    ),
    **dict.fromkeys(
        ("ApplicationContext", "FlameService", "SessionContext", "TaskContext"), "flamepy_core.instance.service"
    ),
    **dict.fromkeys(("FlameInstanceServer", "FlameInstanceServicer"), "flamepy.core.service"),
    **dict.fromkeys(("run",), "flamepy_core.instance.runtime"),
    **dict.fromkeys(
        (
            "Application",
            "ApplicationAttributes",
            "ApplicationID",
            "ApplicationSchema",
            "ApplicationState",
            "CommonData",
            "DEFAULT_FLAME_CACHE_ENDPOINT",
            "DEFAULT_FLAME_CONF",
            "DEFAULT_FLAME_ENDPOINT",
            "Event",
            "FLAME_INSTANCE_ENDPOINT",
            "FlameClientCache",
            "FlameClientTls",
            "FlameClusterConfig",
            "FlameContext",
            "FlameContextRunner",
            "FlameError",
            "FlameErrorCode",
            "FlamePackage",
            "Message",
            "ResourceRequirement",
            "SessionAttributes",
            "SessionID",
            "SessionState",
            "Shim",
            "Task",
            "TaskID",
            "TaskInformer",
            "TaskInput",
            "TaskOutput",
            "TaskState",
            "short_name",
        ),
        "flamepy.core.types",
    ),
}
"""Each name and the module it is imported from: ``flamepy.core``'s own modules, or for the service
side the implementation modules themselves (``flamepy.core.service`` also loads the gRPC-style servers)."""


_names = LazyNames(__name__, _WHERE)


def __getattr__(name: str) -> Any:
    return _names.load(name)


def __dir__() -> list[str]:
    return _names.listing()
