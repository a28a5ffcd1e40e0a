"""``normalize_endpoint``: an address brought into URL form, in a module that imports almost nothing.

It lives apart from :mod:`flamepy_core.config` (which re-exports it) because a service process needs it
to read ``FLAME_INSTANCE_ENDPOINT`` and nothing else of the configuration: the configuration module, its
settings classes and their validation are a noticeable part of an instance's cold start.
"""

from __future__ import annotations

import functools
import re

from flamepy_core.contracts.errors import FlameError, FlameErrorCode

__all__ = ["normalize_endpoint", "this_machine"]

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")
_HOST_PORT = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.\-]+):[0-9]{1,5}$")


def normalize_endpoint(value: str) -> str:
    """Bring an address into URL form, as Flame's client does.

    * ``host:port`` without a scheme -> ``http://host:port`` (Flame's default scheme);
    * a bare absolute path (how Flame's executors pass ``FLAME_INSTANCE_ENDPOINT``) is kept as it is: the
      transport that declares ``bare_path_scheme`` serves it
      (:meth:`flamepy_core.plugins.PluginRegistry.endpoint_url` gives its URL);
    * anything else is returned unchanged (the transport registry judges the scheme);
    * an empty or blank value -> ``FlameError(INVALID_CONFIG, "address cannot be empty")``.

    Surrounding whitespace is dropped: it is never part of an address and often comes from YAML or env.
    """
    if not isinstance(value, str):
        raise FlameError(FlameErrorCode.INVALID_CONFIG, f"address must be a string, got {value!r}")
    v = value.strip()
    if not v:
        raise FlameError(FlameErrorCode.INVALID_CONFIG, "address cannot be empty")
    if _SCHEME.match(v) or v.startswith("/"):
        return v
    if _HOST_PORT.match(v):
        return f"http://{v}"
    return v


@functools.cache
def this_machine() -> str:
    """A name of this machine as it runs now: its boot's id where the kernel gives one (Linux), else its host
    name. Two processes that read the same name can reach each other's local endpoints (unix sockets,
    loopback ports); a lane's endpoint is only used by a client that reads the name its server read."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as boot:
            return "boot:" + boot.read().strip()
    except OSError:
        import socket  # (here: a service process imports this module, and need not load socket to start)

        return "host:" + socket.gethostname()
