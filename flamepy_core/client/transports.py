"""The client's transport for an endpoint: the registry's shared one, with the client's security options.

The registry keeps one transport object per transport and security settings
(:meth:`~flamepy_core.plugins.PluginRegistry.shared_transport`): an in-process server and its clients
must use the same in-memory transport object to see each other, and it saves building the same thing
twice. TLS endpoints (``https://``, ``grpcs://``) get the client TLS options (:data:`TLS_OPTIONS`), and
those are part of the sharing key: two connections with different CA files or client certificates get
different transport objects.
"""

from __future__ import annotations

import os
from typing import Any

from flamepy_core.config import ENV_CLIENT_CERT_FILE, ENV_CLIENT_KEY_FILE, ClientConfig, resolve_config
from flamepy_core.contracts.errors import FlameError, FlameErrorCode
from flamepy_core.contracts.transport import Transport
from flamepy_core.plugins import PluginRegistry, get_registry

TLS_SCHEMES = frozenset({"https", "grpcs"})
"""Endpoint schemes that mean TLS (Flame's rule: ``https://`` => TLS)."""
TLS_OPTIONS = ("ca_file", "cert_file", "key_file", "client_ca_file", "server_name_override")
"""Transport options that configure TLS (the gRPC transport's names)."""


def is_tls_endpoint(endpoint: str) -> bool:
    """Whether ``endpoint``'s scheme means TLS."""
    scheme, sep, _ = endpoint.partition("://")
    return bool(sep) and scheme.lower() in TLS_SCHEMES


def _path(value: str | os.PathLike[str]) -> str:
    # Absolute now: a relative path must not change meaning after a chdir, and it keys the shared transport.
    return os.path.abspath(os.path.expanduser(os.fspath(value)))


def _pair(
    cert: str | None, key: str | None, names: tuple[str, str], sources: tuple[str, str] = ("", "")
) -> dict[str, str]:
    if cert is None and key is None:
        return {}
    if cert is None or key is None:
        given, missing = (0, 1) if key is None else (1, 0)
        origin = f" ({sources[given]})" if sources[given] else ""
        raise FlameError(
            FlameErrorCode.INVALID_CONFIG,
            f"{names[given]} is set{origin} but {names[missing]} is not: a client certificate for mutual TLS "
            f"needs its private key (set both, or neither)",
        )
    return {"cert_file": _path(cert), "key_file": _path(key)}


def client_tls_options(
    endpoint: str,
    config: ClientConfig | None = None,
    *,
    ca_file: str | os.PathLike[str] | None = None,
    cert_file: str | os.PathLike[str] | None = None,
    key_file: str | os.PathLike[str] | None = None,
) -> dict[str, str]:
    """The client TLS options for ``endpoint``: ``{}`` unless it is ``https://`` or ``grpcs://``.

    Explicit arguments win. What they leave unset comes from ``config`` (resolved now when not given):
    the CA is the context's ``tls.ca_file`` (the cache section's for the cache endpoint), else
    ``FLAME_CA_FILE``, else none (gRPC's default roots); the client certificate and key (mutual TLS) are
    ``FLAME_CLIENT_CERT_FILE`` and ``FLAME_CLIENT_KEY_FILE``. A certificate without its key, or the
    reverse, is ``FlameError(INVALID_CONFIG)`` naming both.
    """
    if not is_tls_endpoint(endpoint):
        return {}
    options: dict[str, str] = {}
    if cert_file is not None or key_file is not None:
        options.update(
            _pair(
                None if cert_file is None else os.fspath(cert_file),
                None if key_file is None else os.fspath(key_file),
                ("the TLS cert_file", "key_file"),
            )
        )
    if ca_file is None or not options:
        cfg = config if config is not None else resolve_config()
        if ca_file is None:
            if endpoint == cfg.cache_endpoint and endpoint != cfg.endpoint:
                ca_file = cfg.cache_ca_file or cfg.ca_file
            else:
                ca_file = cfg.ca_file or cfg.cache_ca_file
        if not options:
            options.update(
                _pair(
                    cfg.client_cert_file,
                    cfg.client_key_file,
                    (ENV_CLIENT_CERT_FILE, ENV_CLIENT_KEY_FILE),
                    (cfg.source.get("client_cert_file", ""), cfg.source.get("client_key_file", "")),
                )
            )
    if ca_file is not None:
        options["ca_file"] = _path(ca_file)
    return options


def shared_transport(endpoint: str, registry: PluginRegistry | None = None, **options: Any) -> Transport:
    """The process's transport for ``endpoint``'s scheme (created on first use, with ``options``).

    For a TLS endpoint given no TLS option, the configured ones apply (:func:`client_tls_options`), so a
    caller that only knows an endpoint (the object cache client, say) still verifies the server with
    ``FLAME_CA_FILE`` and presents ``FLAME_CLIENT_CERT_FILE``. TLS options set to ``None`` are dropped.
    """
    reg = registry or get_registry()
    options = {name: value for name, value in options.items() if not (name in TLS_OPTIONS and value is None)}
    if is_tls_endpoint(endpoint) and not any(name in options for name in TLS_OPTIONS):
        options.update(client_tls_options(endpoint))
    identity = {name: value for name, value in options.items() if name in TLS_OPTIONS}
    rest = {name: value for name, value in options.items() if name not in TLS_OPTIONS}
    return reg.shared_transport(endpoint, rest, identity)
