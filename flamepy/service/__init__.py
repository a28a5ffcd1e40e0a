"""``flamepy.service``: typed services (``FlameInstance``) and their clients (``Session``).

Each name is imported on first use: a service process never loads the client ``Session``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from flamepy_core.lazy_names import LazyNames

if TYPE_CHECKING:
    from flamepy.service.client import Session
    from flamepy.service.instance import EntrypointError, FlameInstance

__all__ = ["EntrypointError", "FlameInstance", "Session"]

_WHERE = {
    "Session": "flamepy.service.client",
    "EntrypointError": "flamepy.service.instance",
    "FlameInstance": "flamepy.service.instance",
}


_names = LazyNames(__name__, _WHERE, __all__)


def __getattr__(name: str) -> Any:
    return _names.load(name)


def __dir__() -> list[str]:
    return _names.listing()
