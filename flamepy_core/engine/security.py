"""A server's security: authenticated or explicitly insecure, by what its transport declares.

A listen endpoint is *exposed* unless it is in-process, one of its transport's ``local_schemes`` (a
socket file), or a loopback address. An exposed listen must authenticate its clients: a scheme its
transport secures by itself (``https://``, ``grpcs://`` with TLS) or the transport's server settings given
(CURVE keys on ``zmq+tcp://``). Otherwise the server refuses to start, unless started with ``--insecure``,
which it then says loudly: anyone who reaches the port can submit payloads that run as code in the
service processes.

The server settings are declared by the transports (``TransportSecurity``), so the flags of
``python -m flamepy_core.engine`` and ``flmctl server start`` are made from the installed transports'
declarations (``--tls-cert``, ``--curve-secret-key``...), and each is also read from the environment
variable its setting declares.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
from collections.abc import Mapping
from urllib.parse import urlsplit

from flamepy_core.contracts.errors import FlameError, FlameErrorCode
from flamepy_core.contracts.transport import SecuritySetting
from flamepy_core.plugins import Chosen, PluginRegistry

log = logging.getLogger(__name__)

__all__ = [
    "INSECURE_WARNING",
    "add_security_arguments",
    "check_exposure",
    "check_listen",
    "exposure",
    "security_argv",
    "security_from_args",
    "server_security_options",
    "server_settings",
]

INSECURE_WARNING = (
    "WARNING: serving {endpoint} on the network WITHOUT authentication (--insecure): anyone who can reach it "
    "can register applications and submit tasks whose payloads run as code in the service processes. Use "
    "this only on a network you trust; otherwise {how}."
)


def server_settings(registry: PluginRegistry) -> list[tuple[Chosen, SecuritySetting]]:
    """Every server-side security setting the installed transports declare, with its transport."""
    found: list[tuple[Chosen, SecuritySetting]] = []
    for chosen in registry.transports():
        security = chosen.spec.capabilities.security
        if security is not None:
            found.extend((chosen, setting) for setting in security.for_role("server"))
    return found


def _dest(setting: SecuritySetting) -> str:
    return f"security_{(setting.flag or setting.option).lstrip('-').replace('-', '_')}"


def add_security_arguments(parser: argparse.ArgumentParser, registry: PluginRegistry) -> None:
    """The server security flags the installed transports declare, plus ``--insecure``."""
    seen: set[str] = set()
    for chosen, setting in server_settings(registry):
        if setting.flag is None or setting.flag in seen:
            continue
        seen.add(setting.flag)
        env = f"; default: ${setting.env}" if setting.env else ""
        security = chosen.spec.capabilities.security
        mechanism = security.mechanism if security is not None else chosen.spec.name
        parser.add_argument(
            setting.flag,
            dest=_dest(setting),
            default=None,
            metavar="FILE",
            help=f"{mechanism} ({chosen.spec.name}): {setting.help}{env}",
        )
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="allow a network listen (not loopback, not a local socket) without TLS or CURVE; prints a warning",
    )


def security_from_args(
    args: argparse.Namespace, registry: PluginRegistry, env: Mapping[str, str] | None = None
) -> dict[str, tuple[str, str]]:
    """``{flag or variable: (option, value)}`` given on the command line, else in the environment."""
    environ = os.environ if env is None else env
    given: dict[str, tuple[str, str]] = {}
    for _chosen, setting in server_settings(registry):
        name = setting.flag or setting.env or setting.option
        value = getattr(args, _dest(setting), None) if setting.flag else None
        if value is None and setting.env and environ.get(setting.env, "").strip():
            value, name = environ[setting.env].strip(), setting.env
        if value is not None:
            given[name] = (setting.option, str(value))
    return given


def security_argv(args: argparse.Namespace, registry: PluginRegistry) -> list[str]:
    """The security flags of ``args`` as command-line arguments again (to pass them on to the server)."""
    argv: list[str] = []
    seen: set[str] = set()
    for _chosen, setting in server_settings(registry):
        if setting.flag and setting.flag not in seen:
            seen.add(setting.flag)
            value = getattr(args, _dest(setting), None)
            if value is not None:
                argv += [setting.flag, str(value)]
    if getattr(args, "insecure", False):
        argv.append("--insecure")
    return argv


def exposure(listen: str, chosen: Chosen) -> str | None:
    """Why ``listen`` is reachable from the network (its host), or None when it is private to this machine."""
    caps = chosen.spec.capabilities
    scheme, _, rest = listen.partition("://")
    if caps.in_process or not caps.cross_process or scheme.lower() in caps.local_schemes or rest.startswith("/"):
        return None
    host = urlsplit(listen).hostname or ""
    if host == "localhost":
        return None
    try:
        if ipaddress.ip_address(host).is_loopback:
            return None
    except ValueError:
        pass  # a name (or "*"): it may resolve to anything
    return host or "every interface"


def check_listen(listen: str, chosen: Chosen, given: Mapping[str, tuple[str, str]], insecure: bool) -> dict[str, str]:
    """:func:`server_security_options`, then :func:`check_exposure`: the options to serve ``listen`` with."""
    options = server_security_options(listen, chosen, given)
    check_exposure(listen, chosen, options, insecure)
    return options


def server_security_options(listen: str, chosen: Chosen, given: Mapping[str, tuple[str, str]]) -> dict[str, str]:
    """The transport options of the server's security for ``listen``; refused when they do not fit.

    ``given`` is :func:`security_from_args`' answer (or the same shape built by a caller). Refused, each
    naming what to change: a setting of another transport; a secure scheme without its required settings;
    settings for a scheme they do not secure; one of a pair without the other.
    """
    name = chosen.spec.name
    security = chosen.spec.capabilities.security
    declared = {s.option: s for s in security.for_role("server")} if security is not None else {}
    foreign = [flag for flag, (option, _value) in given.items() if option not in declared]
    if foreign:
        raise FlameError(
            FlameErrorCode.INVALID_CONFIG,
            f"{', '.join(foreign)} {'is a setting' if len(foreign) == 1 else 'are settings'} of another transport, "
            f"but the listen endpoint {listen} uses transport '{name}'"
            + (f", whose security settings are {', '.join(_flag(s) for s in declared.values())}" if declared else ""),
        )
    options = {option: os.path.abspath(os.path.expanduser(value)) for option, value in given.values()}
    scheme = listen.partition("://")[0].lower()
    if security is not None:
        by_option = {s.option: s for s in security.for_role("server")}
        for option in options:
            pair = by_option[option].pair
            if pair is not None and pair not in options:
                raise FlameError(
                    FlameErrorCode.INVALID_CONFIG,
                    f"{_flag(by_option[option])} needs {_flag(by_option[pair])}: {by_option[option].help}",
                )
        required = [s for s in by_option.values() if s.required]
        if security.schemes and scheme in security.schemes:
            missing = [s for s in required if s.option not in options]
            if missing:
                raise FlameError(
                    FlameErrorCode.INVALID_CONFIG,
                    f"cannot serve {listen}: a {security.mechanism} endpoint needs "
                    f"{' '.join(_flag(s) + ' FILE' for s in missing)}",
                )
        elif security.schemes and options:
            raise FlameError(
                FlameErrorCode.INVALID_CONFIG,
                f"{security.mechanism} settings were given but the listen endpoint {listen} is not "
                f"{security.mechanism}; listen on {' or '.join(f'{s}://HOST:PORT' for s in security.schemes)}",
            )
        elif not security.schemes and options and not any(s.option in options for s in required):
            raise FlameError(
                FlameErrorCode.INVALID_CONFIG,
                f"{security.mechanism} settings were given without {' and '.join(_flag(s) for s in required)}",
            )
    return options


def check_exposure(listen: str, chosen: Chosen, options: Mapping[str, str], insecure: bool) -> None:
    """Refuse an exposed ``listen`` that authenticates nobody, unless ``insecure`` (then warn, naming the risk)."""
    security = chosen.spec.capabilities.security
    scheme = listen.partition("://")[0].lower()
    host = exposure(listen, chosen)
    secured = security is not None and security.secures(scheme, options)
    if host is not None and not secured:
        how = _how_to_secure(chosen)
        if not insecure:
            raise FlameError(
                FlameErrorCode.PERMISSION_DENIED,
                f"refusing to serve {listen} without authentication: it is reachable from the network ({host}), "
                f"and anyone who reaches it could submit payloads that run as code in the service processes. "
                f"{how[0].upper() + how[1:]}; or listen on a loopback address or a local socket; or, on a network "
                f"you trust, start the server with --insecure",
            )
        log.warning(INSECURE_WARNING.format(endpoint=listen, how=how))


def _flag(setting: SecuritySetting) -> str:
    if setting.flag:
        return setting.flag
    return f"${setting.env}" if setting.env else setting.option


def _how_to_secure(chosen: Chosen) -> str:
    security = chosen.spec.capabilities.security
    if security is None:
        return f"transport '{chosen.spec.name}' declares no authentication: serve with a transport that does"
    required = [s for s in security.for_role("server") if s.required]
    flags = " ".join(f"{_flag(s)} FILE" for s in required)
    if security.schemes:
        return f"serve {security.mechanism}: listen on {' or '.join(security.schemes)}:// with {flags}"
    return f"turn {security.mechanism} on with {flags}"
