"""``flamepy.service``: typed services (``FlameInstance``) and their clients (``Session``).

Each name is imported on first use: a service process never loads the client ``Session``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flamepy.service.client import Session
    from flamepy.service.instance import EntrypointError, FlameInstance

__all__ = ["EntrypointError", "FlameInstance", "Session"]

_WHERE = {
    "Session": "flamepy.service.client",
    "EntrypointError": "flamepy.service.instance",
    "FlameInstance": "flamepy.service.instance",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
