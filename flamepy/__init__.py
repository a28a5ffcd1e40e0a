"""flamepy: a Python SDK and runtime for Flame-style elastic workloads.

``flamepy`` (this module) carries Flame's top-level names; ``flamepy.service`` the typed layer
(``FlameInstance``, ``Session``); ``flamepy.core`` the core API; ``flamepy.cache`` the object cache;
``flamepy.runner`` (``Runner``) and ``flamepy.tools`` (``Sandbox``).
With nothing configured, a local server for ``FLAME_HOME`` (``~/.flame``) is started on first use.

Every name and submodule is imported on first use (PEP 562): a service process that only needs
``FlameService`` and ``run`` starts without the client, the object cache, PyYAML or asyncio.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from flamepy.core import __all__ as _core_all
from flamepy_core.client.embedded import provide_inprocess_servers
from flamepy_core.engine import IN_PROCESS_SERVERS

# The process is assembled here: the client gets the engine's in-process servers (``inmem://``) injected,
# and never imports the engine itself. The engine loads only when such an endpoint is used.
provide_inprocess_servers(IN_PROCESS_SERVERS)

if TYPE_CHECKING:
    from flamepy import cache, runner, service, tools, util
    from flamepy import proto as proto
    from flamepy.core import *  # noqa: F403

    __version__: str

_CORE_ONLY = frozenset(
    {
        "ObjectKey",
        "WILDCARD_SESSION",
        "patch_object",
        "delete_objects",
        "upload_object",
        "download_object",
        "ConnectionInstance",
        "FlameInstanceServer",
        "FlameInstanceServicer",
    }
)
_SUBMODULES = frozenset({"cache", "core", "proto", "runner", "service", "tools", "util"})

__all__ = [name for name in _core_all if name not in _CORE_ONLY]
__all__ += ["__version__", "cache", "runner", "service", "tools", "util"]


def _version() -> str:
    from importlib import metadata

    try:
        # One source for the version: the installed distribution's metadata (pyproject.toml's ``version``).
        return metadata.version("flamepy")
    except metadata.PackageNotFoundError:  # imported from a source tree that was never installed
        return "0+unknown"


def __getattr__(name: str) -> Any:
    """Submodules, ``__version__`` and the names of ``flamepy.core`` are imported when first used."""
    if name in _SUBMODULES:
        value: Any = importlib.import_module(f"flamepy.{name}")
    elif name == "__version__":
        value = _version()
    elif name in _core_all and name not in _CORE_ONLY:
        value = getattr(importlib.import_module("flamepy.core"), name)
    else:
        raise AttributeError(f"module 'flamepy' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__, *_SUBMODULES})
