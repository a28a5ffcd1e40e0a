"""``flamepy.core.service``: the service side — ``FlameService``, its contexts, ``run`` and the servers.

Each name is imported on first use (PEP 562): a service process that calls ``flamepy.run`` never loads
``FlameInstanceServer`` and ``FlameInstanceServicer`` (they build their transport through the plugin
registry), which keeps its cold start short.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from flamepy_core.lazy_names import LazyNames

if TYPE_CHECKING:
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

_WHERE = {
    "ApplicationContext": "flamepy_core.instance.service",
    "FlameService": "flamepy_core.instance.service",
    "SessionContext": "flamepy_core.instance.service",
    "TaskContext": "flamepy_core.instance.service",
    "FlameInstanceServer": "flamepy_core.instance.servers",
    "FlameInstanceServicer": "flamepy_core.instance.servers",
    "run": "flamepy_core.instance.runtime",
}


_names = LazyNames(__name__, _WHERE, __all__)


def __getattr__(name: str) -> Any:
    return _names.load(name)


def __dir__() -> list[str]:
    return _names.listing()
