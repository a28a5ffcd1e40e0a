"""flamepy: a Python SDK and runtime for Flame-style elastic workloads.

``flamepy`` (this module) carries Flame's top-level names; ``flamepy.service`` the typed layer
(``FlameInstance``, ``Session``); ``flamepy.core`` the core API; ``flamepy.cache`` the object cache.
With nothing configured, a local server for ``FLAME_HOME`` (``~/.flame``) is started on first use.
"""

from flamepy import cache, service, util
from flamepy.core import *  # noqa: F403
from flamepy.core import __all__ as _core_all
from flamepy_core.client.embedded import provide_inprocess_servers
from flamepy_core.engine import IN_PROCESS_SERVERS

# The process is assembled here: the client gets the engine's in-process servers (``inmem://``) injected,
# and never imports the engine itself. The engine loads only when such an endpoint is used.
provide_inprocess_servers(IN_PROCESS_SERVERS)

__version__ = "0.1.0"

__all__ = [
    name for name in _core_all if name not in ("ObjectKey", "WILDCARD_SESSION", "patch_object", "delete_objects")
]
__all__ += ["__version__", "cache", "service", "util"]
