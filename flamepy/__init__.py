"""flamepy: a Python SDK and runtime for Flame-style elastic workloads.

``flamepy`` (this module) carries Flame's top-level names; ``flamepy.service`` the typed layer
(``FlameInstance``, ``Session``); ``flamepy.core`` the core API; ``flamepy.cache`` the object cache;
``flamepy.runner`` (``Runner``) and ``flamepy.tools`` (``Sandbox``), loaded on first use.
With nothing configured, a local server for ``FLAME_HOME`` (``~/.flame``) is started on first use.
"""

from importlib import metadata as _metadata
from typing import TYPE_CHECKING, Any

from flamepy import cache, service, util
from flamepy.core import *  # noqa: F403
from flamepy.core import __all__ as _core_all
from flamepy_core.client.embedded import provide_inprocess_servers
from flamepy_core.engine import IN_PROCESS_SERVERS

# The process is assembled here: the client gets the engine's in-process servers (``inmem://``) injected,
# and never imports the engine itself. The engine loads only when such an endpoint is used.
provide_inprocess_servers(IN_PROCESS_SERVERS)

if TYPE_CHECKING:  # loaded on first use, see __getattr__
    from flamepy import proto as proto
    from flamepy import runner, tools

try:
    # One source for the version: the installed distribution's metadata (pyproject.toml's ``version``).
    __version__ = _metadata.version("flamepy")
except _metadata.PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"

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
_LAZY_SUBMODULES = ("proto", "runner", "tools")

__all__ = [name for name in _core_all if name not in _CORE_ONLY]
__all__ += ["__version__", "cache", "runner", "service", "tools", "util"]


def __getattr__(name: str) -> Any:
    """``flamepy.runner``, ``flamepy.tools`` and ``flamepy.proto`` are imported when first used."""
    if name in _LAZY_SUBMODULES:
        import importlib

        return importlib.import_module(f"flamepy.{name}")
    raise AttributeError(f"module 'flamepy' has no attribute {name!r}")
