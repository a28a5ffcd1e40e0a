"""The client's transport for an endpoint: the registry's shared one, with the client's security settings.

The registry keeps one transport object per transport and security settings
(:meth:`~flamepy_core.plugins.PluginRegistry.shared_transport`): an in-process server and its clients
must use the same in-process transport object to see each other, and it saves building the same thing
twice. Which security options a connection needs is what the endpoint's transport declares
(``capabilities.security``, see :class:`~flamepy_core.contracts.transport.TransportSecurity`): each
client setting is read from an explicit argument, the environment and ``flame.yaml``, as declared. Those
options are part of the sharing key: two connections with different CA files or keys get different
transport objects.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from flamepy_core.config import ClientConfig, resolve_config
from flamepy_core.contracts.errors import FlameError, FlameErrorCode
from flamepy_core.contracts.transport import SecuritySetting, Transport, TransportSecurity
from flamepy_core.plugins import PluginRegistry, get_registry

__all__ = ["client_security_options", "client_tls_options", "security_of", "shared_transport"]


def security_of(endpoint: str, registry: PluginRegistry | None = None) -> TransportSecurity | None:
    """The security ``endpoint`` speaks: its transport's, when its scheme is secured by it; else None."""
    reg = registry or get_registry()
    url = reg.endpoint_url(endpoint)
    security: TransportSecurity | None = reg.transport_spec_for_endpoint(url).spec.capabilities.security
    if security is None:
        return None
    if security.schemes and url.partition("://")[0].lower() not in security.schemes:
        return None  # a plain scheme of a transport that has secure ones (http:// beside https://)
    return security


def _path(value: Any) -> str:
    # Absolute now: a relative path must not change meaning after a chdir, and it keys the shared transport.
    return str(os.path.abspath(os.path.expanduser(os.fspath(value))))


def _lookup(section: Mapping[str, Any], dotted: str) -> str | None:
    value: Any = section
    for part in dotted.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value if isinstance(value, str) and value.strip() else None


def _from_file(config: ClientConfig, setting: SecuritySetting, section: str) -> tuple[str, str] | None:
    """The setting from one section (``cluster`` or ``cache``) of the flame.yaml context, with its origin."""
    ctx = config.context
    if ctx is None or setting.config_key is None:
        return None
    value = _lookup(ctx.sections.get(section, {}), setting.config_key)
    return None if value is None else (value, f"{ctx.source} ({section}.{setting.config_key})")


def _name(setting: SecuritySetting) -> str:
    return setting.env or setting.option


def client_security_options(
    endpoint: str,
    config: ClientConfig | None = None,
    explicit: Mapping[str, Any] | None = None,
    registry: PluginRegistry | None = None,
) -> dict[str, Any]:
    """The client security options for a connection to ``endpoint``: ``{}`` when it speaks no security.

    Per declared client setting: the ``explicit`` value, else the environment and the endpoint's own
    section of the ``flame.yaml`` context in the declared order (the file first when ``config_first``),
    else the context's other section (from ``config``, resolved now when not given). The own section is
    ``cache`` for the configured cache endpoint, else ``cluster``. A setting
    given without its ``pair`` is ``FlameError(INVALID_CONFIG)`` naming both and where the one came from.
    """
    security = security_of(endpoint, registry)
    if security is None:
        return {}
    given = {name: value for name, value in (explicit or {}).items() if value is not None}
    settings = security.for_role("client")
    cfg: ClientConfig | None = config
    values: dict[str, Any] = {}
    origins: dict[str, str] = {}
    for setting in settings:
        if setting.option in given:
            values[setting.option], origins[setting.option] = given[setting.option], "argument"
            continue
        if setting.pair is not None and setting.pair in given:
            continue  # a pair given explicitly is taken whole, never half from elsewhere
        if cfg is None:
            cfg = resolve_config()
        cache = cfg.cache_endpoint is not None and endpoint == cfg.cache_endpoint and endpoint != cfg.endpoint
        own, other = ("cache", "cluster") if cache else ("cluster", "cache")
        env = cfg.env.get(setting.env) if setting.env else None
        from_env = (env, f"env:{setting.env}") if env else None
        own_file, other_file = _from_file(cfg, setting, own), _from_file(cfg, setting, other)
        order = (own_file, from_env, other_file) if setting.config_first else (from_env, own_file, other_file)
        for found in order:
            if found is not None:
                values[setting.option], origins[setting.option] = found
                break
    for setting in settings:
        partner = next((s for s in settings if s.option == setting.pair), None)
        if partner is not None and setting.option in values and partner.option not in values:
            explicit_pair = origins[setting.option] == "argument"
            one, other = (setting.option, partner.option) if explicit_pair else (_name(setting), _name(partner))
            where = "" if explicit_pair else f" ({origins[setting.option]})"
            raise FlameError(
                FlameErrorCode.INVALID_CONFIG,
                f"{'the ' + security.mechanism + ' ' if explicit_pair else ''}{one} is set{where} but {other} is "
                f"not: {setting.help or 'they go together'} (set both, or neither)",
            )
    return {name: _path(value) if isinstance(value, (str, os.PathLike)) else value for name, value in values.items()}


def client_tls_options(
    endpoint: str,
    config: ClientConfig | None = None,
    *,
    ca_file: str | os.PathLike[str] | None = None,
    cert_file: str | os.PathLike[str] | None = None,
    key_file: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """:func:`client_security_options` with Flame's ``FlameClientTls`` fields as the explicit values.

    Flame's TLS configuration names its files ``ca_file``, ``cert_file`` and ``key_file``; they fill the
    client security settings of those option names when the endpoint's transport declares them.
    """
    explicit = {"ca_file": ca_file, "cert_file": cert_file, "key_file": key_file}
    return client_security_options(endpoint, config, explicit)


def shared_transport(endpoint: str, registry: PluginRegistry | None = None, **options: Any) -> Transport:
    """The process's transport for ``endpoint``'s scheme (created on first use, with ``options``).

    For an endpoint whose transport declares security, given none of its client options, the configured
    ones apply (:func:`client_security_options`), so a caller that only knows an endpoint (the object
    cache client, say) still verifies the server with ``FLAME_CA_FILE`` or presents its CURVE key.
    Security options set to ``None`` are dropped.
    """
    reg = registry or get_registry()
    security = security_of(endpoint, reg)
    names = {s.option for s in security.for_role("client")} if security is not None else set()
    options = {name: value for name, value in options.items() if not (name in names and value is None)}
    if security is not None and not names & set(options):
        options.update(client_security_options(endpoint, registry=reg))
    identity = {name: value for name, value in options.items() if name in names}
    rest = {name: value for name, value in options.items() if name not in names}
    return reg.shared_transport(endpoint, rest, identity)
