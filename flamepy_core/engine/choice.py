"""Which transports a server uses, chosen by what they declare, never by their names.

* the **listen** endpoint by default: a private local endpoint in ``FLAME_HOME`` of the configured
  transport, or of the local default (the installed transport with ``local_schemes`` and the highest
  ``local_default_rank``);
* the **instance links**: with one transport configured, that transport alone; otherwise (``auto``) the
  transport that speaks Flame's protocol on a bare socket path (``bare_path_scheme``), for services
  written with Flame's SDK, plus the local default offered to services written with this SDK. A
  configured transport that *is* Flame's bare-path transport (gRPC) gets ``auto`` too, since that link
  already is it for Flame's services, and services written with this SDK get the faster one
  (:func:`instance_link_choice`);
* the **in-process** transport (``in_process``) for instances run inside the server.

A transport that lacks what a role needs is refused up front, naming the transport, the capability and
what to choose instead (:meth:`~flamepy_core.plugins.PluginRegistry.require`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flamepy_core.contracts.errors import FlameError, FlameErrorCode
from flamepy_core.contracts.transport import Transport
from flamepy_core.plugins import Chosen, PluginRegistry, get_registry, local_endpoint

__all__ = [
    "accepted_options",
    "default_listen",
    "in_process_transport",
    "instance_link_choice",
    "instance_link_transports",
    "local_endpoint",
    "runtime_transport",
    "socket_path",
]


def runtime_transport(registry: PluginRegistry, name: str | None) -> Chosen:
    """The transport named ``name`` (the registry's error for an unknown one), or the local default."""
    return registry.transport_spec(name) if name else registry.local_default()


def accepted_options(chosen: Chosen, options: Mapping[str, Any]) -> dict[str, Any]:
    """The runtime's own options (a size limit, a worker count) that this transport accepts."""
    return {name: value for name, value in options.items() if name in chosen.spec.options}


def socket_path(transport: Transport, url: str) -> str | None:
    """The socket file of a local endpoint (``<local scheme>://<absolute path>``), or None for another kind."""
    scheme, sep, rest = url.partition("://")
    if sep and scheme.lower() in transport.capabilities.local_schemes and rest.startswith("/"):
        return rest
    return None


def default_listen(home: Path, transport: str | None = None, registry: PluginRegistry | None = None) -> str:
    """Where a server for ``home`` listens when not told: a private local endpoint of its transport."""
    reg = registry or get_registry()
    chosen = runtime_transport(reg, transport)
    if chosen.spec.capabilities.in_process:
        raise FlameError(
            FlameErrorCode.INVALID_CONFIG,
            f"transport '{chosen.spec.name}' runs in-process (capability in_process): a server process of its own "
            f"could not be reached by any other process. Clients run the runtime inside themselves with "
            f"FLAME_TRANSPORT={chosen.spec.name}; to run a shared server, choose a transport that declares "
            f"local_schemes: {', '.join(c.spec.name for c in reg.with_capability('local_schemes')) or 'none'}",
        )
    reg.require(chosen, "local_schemes", "for the server's default listen endpoint (a private socket in FLAME_HOME)")
    return local_endpoint(reg.create_transport(chosen), home, "flame")


def instance_link_choice(registry: PluginRegistry, transport: str | None, instance_transport: str | None) -> str:
    """What links a server's instances when ``--instance-transport`` is ``instance_transport`` (None: not
    given) and the runtime's transport is ``transport`` (None: the local default): ``auto`` or a name.

    A named runtime transport links the instances alone (a third party's carries the whole runtime), except
    the one that declares ``bare_path_scheme``: ``auto`` links Flame's services with that very transport
    already, and offers services written with this SDK the local default beside it: a warm invoke then
    costs about a fifth less than over a second gRPC hop (see docs/benchmarks.md).
    """
    if instance_transport:
        if instance_transport != "auto":
            try:
                registry.transport_spec(instance_transport)
            except FlameError as exc:  # say which setting named it: it may come from the environment
                raise FlameError(
                    exc.code, f"the instance link (--instance-transport, or FLAME_INSTANCE_TRANSPORT): {exc.message}"
                ) from exc
        return instance_transport
    if not transport:
        return "auto"
    chosen = registry.transport_spec(transport)
    bare = registry.bare_path_transport()
    return "auto" if bare is not None and bare.spec.name == chosen.spec.name else transport


def instance_link_transports(
    registry: PluginRegistry, link: str, options: Mapping[str, Any]
) -> tuple[Transport | None, Transport | None]:
    """``(compat, fast)`` for instance links: ``link`` is ``auto`` or a transport name.

    ``compat`` is named by ``FLAME_INSTANCE_ENDPOINT`` (a bare path when it declares ``bare_path_scheme``,
    which a service written with Flame's SDK serves); ``fast`` (or None) is offered to services written
    with this SDK through ``FLAMEPY_INSTANCE_ENDPOINT``.
    """
    purpose = "for instance links (the server must name each instance's endpoint before it starts)"
    if link != "auto":
        chosen = registry.require(registry.transport_spec(link), "local_schemes", purpose)
        return registry.create_transport(chosen, accepted_options(chosen, options)), None
    compat_spec = registry.bare_path_transport()
    try:
        fast_spec: Chosen | None = registry.instance_link_default()
    except FlameError:
        fast_spec = None
    if compat_spec is None and fast_spec is None:
        raise FlameError(
            FlameErrorCode.INVALID_CONFIG,
            f"no installed transport can link instances: one needs local_schemes (and bare_path_scheme for "
            f"services written with Flame's SDK); installed transports: "
            f"{', '.join(c.spec.name for c in registry.transports()) or 'none'}",
        )
    if compat_spec is not None:
        registry.require(compat_spec, "local_schemes", purpose)
    compat = None
    if compat_spec is not None:
        compat = registry.create_transport(compat_spec, accepted_options(compat_spec, options))
    if fast_spec is None or (compat_spec is not None and fast_spec.spec.name == compat_spec.spec.name):
        return compat, None
    fast = registry.create_transport(fast_spec, accepted_options(fast_spec, options))
    return (compat, fast) if compat is not None else (fast, None)


def in_process_transport(registry: PluginRegistry, frontend: Transport) -> Transport:
    """The in-process transport that runs instances inside the server: the frontend's when it is one."""
    if frontend.capabilities.in_process:
        return frontend
    found = registry.with_capability("in_process")
    if not found:
        raise FlameError(
            FlameErrorCode.INVALID_CONFIG,
            "in-process instances need a transport that declares the capability 'in_process', and none is "
            "installed; run instances as processes (FLAME_INSTANCE_MODE=process)",
        )
    return registry.create_transport(found[-1])
