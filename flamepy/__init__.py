"""flamepy: a Python SDK and runtime for Flame-style elastic workloads.

``flamepy`` (this module) carries Flame's top-level names; ``flamepy.service`` the typed layer
(``FlameInstance``, ``Session``); ``flamepy.core`` the core API; ``flamepy.cache`` the object cache.
With nothing configured, a local server for ``FLAME_HOME`` (``~/.flame``) is started on first use.
"""

from importlib import metadata as _metadata

from flamepy import cache, service, util
from flamepy.core import *  # noqa: F403
from flamepy.core import __all__ as _core_all

try:
    # One source for the version: the installed distribution's metadata (pyproject.toml's ``version``).
    __version__ = _metadata.version("flamepy")
except _metadata.PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    name for name in _core_all if name not in ("ObjectKey", "WILDCARD_SESSION", "patch_object", "delete_objects")
]
__all__ += ["__version__", "cache", "service", "util"]
