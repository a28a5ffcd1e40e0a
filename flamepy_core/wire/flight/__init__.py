"""Flame's object-cache protocol (Arrow Flight), as the optional extra ``pip install 'flamepy[flight]'``.

Flame's own cache server speaks Arrow Flight; flamepy's runtime speaks ``flamepy.cache.v1`` over its
pluggable transports. This package bridges the two in both directions:

* :mod:`flamepy_core.client.flight` — a cache client that talks to a Flight cache (a real Flame
  cluster's, or ours) behind the same interface as flamepy's own ``CacheClient``;
* :mod:`flamepy_core.engine.flight` — a Flight server in front of the runtime's ``ObjectCache``, so code
  written against Flame's SDK (``flamepy==0.6.0``) can use a flamepy runtime's cache.

This module itself must stay importable without pyarrow: ``flamepy_core.client.objects`` consults
:func:`uses_flight` for every cache endpoint, and ``import flamepy`` must never pull pyarrow in.

Which endpoints speak Flight (the rule, kept explicit on purpose):

* ``flight://host:port`` and ``flights://host:port`` (TLS) always do;
* ``grpc://``, ``grpcs://`` and ``grpc+tls://`` do only when ``FLAME_CACHE_PROTOCOL=flight`` — the switch
  that points flamepy at a real Flame cluster's cache, whose address is written ``grpc://host:9090`` —
  and only for a *configured* cache endpoint (``FLAME_CACHE_ENDPOINT`` or ``flame.yaml``), never for the
  local runtime's own endpoint, which is ``grpc://`` too when the runtime runs on the gRPC transport.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from urllib.parse import urlsplit

from flamepy_core.contracts.errors import FlameError, FlameErrorCode

__all__ = [
    "ENV_CACHE_PROTOCOL",
    "FLIGHT_SCHEMES",
    "PROTOCOL_FLAMEPY",
    "PROTOCOL_FLIGHT",
    "cache_protocol",
    "flight_location",
    "require_pyarrow",
    "uses_flight",
]

ENV_CACHE_PROTOCOL = "FLAME_CACHE_PROTOCOL"
"""Which protocol a ``grpc://`` cache endpoint speaks: ``flight`` (Flame's) or ``flamepy`` (the default)."""
PROTOCOL_FLIGHT = "flight"
PROTOCOL_FLAMEPY = "flamepy"
PROTOCOLS = (PROTOCOL_FLAMEPY, PROTOCOL_FLIGHT)

FLIGHT_SCHEMES: Mapping[str, str] = {"flight": "grpc", "flights": "grpc+tls"}
"""Our explicit Flight schemes and the Arrow Flight location scheme each stands for."""
_SWITCHABLE: Mapping[str, str] = {"grpc": "grpc", "grpcs": "grpc+tls", "grpc+tls": "grpc+tls", "grpc+tcp": "grpc"}
"""Schemes Flame writes for its cache; Flight only under ``FLAME_CACHE_PROTOCOL=flight``."""

INSTALL_HINT = "pip install 'flamepy[flight]'"


def cache_protocol(env: Mapping[str, str] | None = None) -> str:
    """The value of ``FLAME_CACHE_PROTOCOL`` (``flamepy`` when unset); anything else is a config error."""
    value = (os.environ if env is None else env).get(ENV_CACHE_PROTOCOL, "").strip().lower()
    if not value:
        return PROTOCOL_FLAMEPY
    if value not in PROTOCOLS:
        raise FlameError(
            FlameErrorCode.INVALID_CONFIG,
            f"{ENV_CACHE_PROTOCOL}={value!r} is not a cache protocol; use one of {', '.join(PROTOCOLS)}",
        )
    return value


def _scheme(endpoint: str) -> str:
    return urlsplit(endpoint).scheme.lower() if "://" in endpoint else ""


def uses_flight(endpoint: str, *, configured: bool = True, env: Mapping[str, str] | None = None) -> bool:
    """Whether the cache at ``endpoint`` is to be spoken to with Arrow Flight (see the module doc).

    ``configured`` says the endpoint came from the user's configuration rather than from the local
    runtime; only then does ``FLAME_CACHE_PROTOCOL=flight`` turn a ``grpc://`` endpoint into Flight.
    """
    scheme = _scheme(endpoint)
    if scheme in FLIGHT_SCHEMES:
        return True
    return configured and scheme in _SWITCHABLE and cache_protocol(env) == PROTOCOL_FLIGHT


def flight_location(endpoint: str) -> str:
    """The Arrow Flight location for a cache endpoint: ``flight://h:p`` -> ``grpc://h:p``, TLS -> ``grpc+tls``.

    ``grpcs://`` becomes ``grpc+tls://`` as Flame's SDK rewrites it; other schemes are refused with a
    message naming the accepted ones.
    """
    scheme = _scheme(endpoint)
    table = {**_SWITCHABLE, **FLIGHT_SCHEMES}
    if scheme not in table:
        raise FlameError(
            FlameErrorCode.INVALID_CONFIG,
            f"cache endpoint {endpoint!r} is not an Arrow Flight address; use flight://host:port, "
            f"flights://host:port, or grpc://host:port with {ENV_CACHE_PROTOCOL}=flight",
        )
    rest = endpoint.split("://", 1)[1].rstrip("/")
    return f"{table[scheme]}://{rest}"


def require_pyarrow(what: str) -> None:
    """Fail with an install hint, not a bare ``ModuleNotFoundError``, when the extra is missing."""
    try:
        import pyarrow.flight  # noqa: F401
    except ImportError as exc:
        raise FlameError(
            FlameErrorCode.INVALID_CONFIG,
            f"{what} speaks Arrow Flight (Flame's object-cache protocol), which needs pyarrow: {INSTALL_HINT}",
        ) from exc
