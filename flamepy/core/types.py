"""``flamepy.core.types``: Flame's types module — enums, errors, dataclasses, configuration, aliases."""

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
    "Application",
    "ApplicationAttributes",
    "ApplicationID",
    "ApplicationSchema",
    "ApplicationState",
    "CommonData",
    "Event",
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
]
