"""``flamepy.core``: Flame's core API (client, service base classes, object cache, types).

Thin: it re-exports from :mod:`flamepy_core`, which holds the machinery.
"""

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
from flamepy_core.client.connection import Connection, connect
from flamepy_core.client.objects import delete_objects, get_object, patch_object, put_object, update_object
from flamepy_core.client.session import Session, TaskFailedError, TaskWatcher
from flamepy_core.config import (
    DEFAULT_FLAME_CACHE_ENDPOINT,
    DEFAULT_FLAME_CONF,
    DEFAULT_FLAME_ENDPOINT,
    FLAME_INSTANCE_ENDPOINT,
    FlameClientCache,
    FlameClientTls,
    FlameClusterConfig,
    FlameContext,
    FlameContextRunner,
    FlamePackage,
)
from flamepy_core.contracts.errors import FlameError, FlameErrorCode
from flamepy_core.instance.runtime import run
from flamepy_core.instance.service import ApplicationContext, FlameService, SessionContext, TaskContext
from flamepy_core.model import (
    Application,
    ApplicationAttributes,
    ApplicationSchema,
    ApplicationState,
    Event,
    ResourceRequirement,
    SessionAttributes,
    SessionState,
    Shim,
    Task,
    TaskInformer,
    TaskState,
    short_name,
)
from flamepy_core.objref import WILDCARD_SESSION, ObjectKey, ObjectRef

TaskID = str
SessionID = str
ApplicationID = str
Message = bytes
TaskInput = bytes
TaskOutput = bytes
CommonData = bytes

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
    "Event",
    "FlameClientCache",
    "FlameClientTls",
    "FlameClusterConfig",
    "FlameContext",
    "FlameContextRunner",
    "FlameError",
    "FlameErrorCode",
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
]
