"""``flamepy.core.service``: the service side — ``FlameService``, its contexts, ``run`` and the servers."""

from flamepy_core.instance.runtime import run
from flamepy_core.instance.servers import FlameInstanceServer, FlameInstanceServicer
from flamepy_core.instance.service import ApplicationContext, FlameService, SessionContext, TaskContext

__all__ = [
    "ApplicationContext",
    "FlameInstanceServer",
    "FlameInstanceServicer",
    "FlameService",
    "SessionContext",
    "TaskContext",
    "run",
]
