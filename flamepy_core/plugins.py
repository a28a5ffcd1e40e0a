"""The one plugin manager: entry-point discovery, runtime registration, selection by name or URL scheme.

Discovery survives a broken plugin: entry points are loaded one by one and a failure becomes a
:class:`PluginLoadWarning` (and an entry in :attr:`PluginRegistry.failures`) naming the entry point, its
distribution and the cause, instead of breaking ``import flamepy``. Switches, read from the environment
when not given explicitly:

* ``FLAMEPY_DISABLE_PLUGIN_AUTOLOAD=1`` - do not scan entry points at all; only plugins named in
  ``FLAMEPY_PLUGINS`` (comma-separated ``module`` or ``module:Class`` names, like entry points) or
  registered at run time are used;
* ``FLAMEPY_STRICT_PLUGINS=1`` - a plugin that fails to load is an error, not a warning.

Plugin modules are light: they declare specs whose ``load`` imports the implementation only when that
transport or serializer is chosen, so an installed-but-broken dependency shows up as a clear error at
the point of use ("installed but cannot be imported; install X").
"""

from __future__ import annotations

import difflib
import importlib
import logging
import os
import threading
import traceback
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pluggy

from flamepy_core.contracts import hookspecs
from flamepy_core.contracts.errors import FlameError, FlameErrorCode
from flamepy_core.contracts.hookspecs import PROJECT_NAME, hookimpl
from flamepy_core.contracts.serializer import Serializer, SerializerSpec
from flamepy_core.contracts.transport import LocalTransport, Transport, TransportSpec
from flamepy_core.plugin_classes import (
    build_plugin,
    owned_endpoint,
    spec_of_class,
    with_configured_max_message_size,
)
from flamepy_core.plugin_classes import serializer_spec_of as serializer_spec_of
from flamepy_core.plugin_classes import transport_spec_of as transport_spec_of

if TYPE_CHECKING:
    from importlib import metadata

log = logging.getLogger(__name__)

TRANSPORT_GROUP = "flamepy.transports"
SERIALIZER_GROUP = "flamepy.serializers"
GROUPS = (TRANSPORT_GROUP, SERIALIZER_GROUP)

ENV_DISABLE_AUTOLOAD = "FLAMEPY_DISABLE_PLUGIN_AUTOLOAD"
ENV_STRICT = "FLAMEPY_STRICT_PLUGINS"
ENV_PLUGINS = "FLAMEPY_PLUGINS"


class PluginLoadWarning(UserWarning):
    """A plugin could not be loaded; flamepy goes on without it."""


@dataclass(frozen=True)
class PluginOrigin:
    """Where a plugin came from: its registration name and, for entry points, its distribution."""

    plugin: str
    distribution: str | None = None
    version: str | None = None


@dataclass(frozen=True)
class LoadFailure:
    """A plugin that failed to load (or whose declaration hook raised)."""

    group: str
    entry_point: str
    distribution: str | None
    version: str | None
    cause: str
    traceback: str

    def describe(self) -> str:
        where = f" from distribution {self.distribution} {self.version or ''}".rstrip()
        return f"plugin entry point '{self.entry_point}' (group {self.group}){where} failed to load: {self.cause}"


@dataclass(frozen=True)
class Chosen:
    """A declaration together with the plugin that declared it."""

    spec: Any
    origin: PluginOrigin


class _Declared:
    """A class-declared plugin, seen by pluggy as the hook implementation that returns its one spec."""

    def __init__(self, transports: Sequence[TransportSpec] = (), serializers: Sequence[SerializerSpec] = ()) -> None:
        self._transports = list(transports)
        self._serializers = list(serializers)

    @hookimpl
    def flamepy_add_transports(self) -> Sequence[TransportSpec]:
        return self._transports

    @hookimpl
    def flamepy_add_serializers(self) -> Sequence[SerializerSpec]:
        return self._serializers


def _as_plugin(plugin: object, group: str | None) -> object:
    """A class named by an entry point (or registered) becomes its declaration; anything else is a pluggy
    plugin of hook implementations (the older way, still loaded)."""
    if not isinstance(plugin, type):
        return plugin
    if group == SERIALIZER_GROUP or (group is None and hasattr(plugin, "domain") and not hasattr(plugin, "schemes")):
        return _Declared(serializers=[serializer_spec_of(plugin)])
    return _Declared(transports=[transport_spec_of(plugin)])


class _CoreRules:
    """The core's own selection rule, consulted last so any plugin can override it."""

    @hookimpl(trylast=True)
    def flamepy_choose_transport(self, scheme: str, candidates: Sequence[TransportSpec]) -> TransportSpec | None:
        return candidates[-1] if candidates else None


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def _near(word: str, choices: Iterable[str]) -> str:
    match = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{match[0]}'?)" if match else ""


class PluginRegistry:
    """Finds, loads and selects flamepy plugins. Each instance is independent (tests make their own)."""

    def __init__(self, *, autoload: bool | None = None, strict: bool | None = None) -> None:
        self.autoload = (not _env_flag(ENV_DISABLE_AUTOLOAD)) if autoload is None else autoload
        self.strict = _env_flag(ENV_STRICT) if strict is None else strict
        self._pm = pluggy.PluginManager(PROJECT_NAME)
        self._pm.add_hookspecs(hookspecs)
        self._pm.register(_CoreRules(), name="flamepy-core-rules")
        self._origins: dict[str, PluginOrigin] = {}
        self._failures: list[LoadFailure] = []
        self._lock = threading.RLock()
        self._loaded = False
        self._transports: list[Chosen] | None = None
        self._serializers: list[Chosen] | None = None
        self._shared: dict[tuple[str, tuple[tuple[str, str], ...]], Transport] = {}
        self._classes: dict[int, tuple[object, object]] = {}

    # -- loading -------------------------------------------------------------------------------------

    def _ensure_loaded(self) -> None:
        if self._loaded:
            return
        with self._lock:
            if self._loaded:
                return
            if self.autoload:
                from importlib import metadata  # the scan is the only user: a process that never scans skips it

                for group in GROUPS:
                    for ep in metadata.entry_points(group=group):
                        self._load_entry_point(group, ep)
            for module_name in filter(None, (m.strip() for m in os.environ.get(ENV_PLUGINS, "").split(","))):
                self._load_module(module_name)
            self._pm.check_pending()
            self._loaded = True

    def _record_failure(self, failure: LoadFailure, exc: BaseException) -> None:
        if self.strict:
            raise FlameError(
                FlameErrorCode.INVALID_CONFIG, f"{failure.describe()} (strict plugin loading is on)"
            ) from exc
        self._failures.append(failure)
        warnings.warn(failure.describe(), PluginLoadWarning, stacklevel=4)

    def _load_entry_point(self, group: str, ep: metadata.EntryPoint) -> None:
        dist = getattr(ep, "dist", None)
        origin = PluginOrigin(
            plugin=f"{ep.name}", distribution=dist.name if dist else None, version=dist.version if dist else None
        )
        try:
            plugin = _as_plugin(ep.load(), group)
            self._register(plugin, f"{group}:{ep.name}", origin)
        except Exception as exc:  # a broken plugin must never break discovery
            self._record_failure(
                LoadFailure(
                    group=group,
                    entry_point=f"{ep.name} = {ep.value}",
                    distribution=origin.distribution,
                    version=origin.version,
                    cause=f"{type(exc).__name__}: {exc}",
                    traceback=traceback.format_exc(),
                ),
                exc,
            )

    def _load_module(self, module_name: str) -> None:
        """``module`` (hook implementations) or ``module:Class`` (a class that declares itself)."""
        try:
            module, _, attribute = module_name.partition(":")
            plugin: object = importlib.import_module(module)
            if attribute:
                plugin = _as_plugin(getattr(plugin, attribute), None)
            self._register(plugin, module_name, PluginOrigin(plugin=module_name))
        except Exception as exc:
            self._record_failure(
                LoadFailure(
                    group=ENV_PLUGINS,
                    entry_point=module_name,
                    distribution=None,
                    version=None,
                    cause=f"{type(exc).__name__}: {exc}",
                    traceback=traceback.format_exc(),
                ),
                exc,
            )

    def _register(self, plugin: object, name: str, origin: PluginOrigin) -> None:
        if self._pm.is_registered(plugin):
            return
        self._pm.register(plugin, name=name)
        self._origins[name] = origin
        self._transports = self._serializers = None

    def register(self, plugin: object, name: str | None = None) -> None:
        """Register a plugin at run time (tests, notebooks). It takes precedence over earlier ones.

        ``plugin`` is a transport or serializer class (it carries its declaration) or an object with hook
        implementations."""
        with self._lock:
            self._ensure_loaded()
            plugin_name = name or getattr(plugin, "__name__", None) or f"runtime-{id(plugin)}"
            declared = _as_plugin(plugin, None)
            if declared is not plugin:
                self._classes[id(plugin)] = (plugin, declared)  # so unregister(cls) finds its declaration
            self._register(declared, plugin_name, PluginOrigin(plugin=plugin_name))
            self._pm.check_pending()

    def unregister(self, plugin: object) -> None:
        """Remove a plugin registered earlier."""
        with self._lock:
            known = self._classes.pop(id(plugin), None)
            if known is not None and known[0] is plugin:
                plugin = known[1]
            name = self._pm.get_name(plugin)
            self._pm.unregister(plugin)
            if name:
                self._origins.pop(name, None)
            self._transports = self._serializers = None

    @property
    def failures(self) -> list[LoadFailure]:
        """Plugins that failed to load, with their causes."""
        self._ensure_loaded()
        return list(self._failures)

    # -- declarations --------------------------------------------------------------------------------

    def _collect(self, hook_name: str, group: str) -> list[Chosen]:
        chosen: list[Chosen] = []
        hook = getattr(self._pm.hook, hook_name)
        # pluggy returns implementations oldest first; keep that order so "registered last" is last.
        for impl in hook.get_hookimpls():
            origin = self._origins.get(impl.plugin_name, PluginOrigin(plugin=impl.plugin_name))
            try:
                specs = impl.function()
            except Exception as exc:
                self._record_failure(
                    LoadFailure(
                        group=group,
                        entry_point=impl.plugin_name,
                        distribution=origin.distribution,
                        version=origin.version,
                        cause=f"{hook_name}() raised {type(exc).__name__}: {exc}",
                        traceback=traceback.format_exc(),
                    ),
                    exc,
                )
                continue
            chosen.extend(Chosen(spec, origin) for spec in specs or ())
        return chosen

    def transports(self) -> list[Chosen]:
        """Every declared transport (``Chosen.spec`` is a :class:`TransportSpec`), in registration order."""
        with self._lock:
            self._ensure_loaded()
            if self._transports is None:
                self._transports = self._collect("flamepy_add_transports", TRANSPORT_GROUP)
            return list(self._transports)

    def serializers(self) -> list[Chosen]:
        """Every declared serializer (``Chosen.spec`` is a :class:`SerializerSpec`)."""
        with self._lock:
            self._ensure_loaded()
            if self._serializers is None:
                self._serializers = self._collect("flamepy_add_serializers", SERIALIZER_GROUP)
            return list(self._serializers)

    # -- selection -----------------------------------------------------------------------------------

    def _installed_transports(self) -> str:
        items = [f"{c.spec.name} ({', '.join(c.spec.schemes)})" for c in self.transports()]
        return ", ".join(items) or "none"

    def transport_spec(self, name: str) -> Chosen:
        """The transport declared under ``name`` (the last one registered wins)."""
        found = [c for c in self.transports() if c.spec.name == name]
        if not found:
            raise FlameError(
                FlameErrorCode.INVALID_CONFIG,
                f"unknown transport '{name}'{_near(name, (c.spec.name for c in self.transports()))}. "
                f"Installed transports: {self._installed_transports()}. "
                f"To add one, install a package that declares a '{TRANSPORT_GROUP}' entry point.",
            )
        return found[-1]

    # -- what the runtime needs, by capability -------------------------------------------------------

    def with_capability(self, capability: str) -> list[Chosen]:
        """The declared transports whose capability ``capability`` is set (truthy), in registration order."""
        return [c for c in self.transports() if getattr(c.spec.capabilities, capability)]

    def local_default(self) -> Chosen:
        """The runtime's transport when none is configured: the highest ``local_default_rank`` among the
        cross-process transports that declare ``local_schemes`` (the first registered wins a tie)."""
        candidates = [
            c
            for c in self.transports()
            if c.spec.capabilities.local_schemes and c.spec.capabilities.cross_process
            if c.spec.capabilities.local_default_rank > 0
        ]
        if not candidates:
            raise FlameError(
                FlameErrorCode.INVALID_CONFIG,
                f"no installed transport can be the local default (one that declares local_schemes and a "
                f"local_default_rank above 0); installed transports: {self._installed_transports()}. "
                f"Set FLAME_TRANSPORT, or FLAME_ENDPOINT to a server that runs elsewhere",
            )
        return max(candidates, key=lambda c: c.spec.capabilities.local_default_rank)

    def instance_link_default(self) -> Chosen:
        """What links the service processes written with this SDK when nothing is configured: the highest
        ``instance_link_rank`` among the cross-process transports that declare ``local_schemes``, else the
        local default (:meth:`local_default`, whose error says what is missing)."""
        candidates = [
            c
            for c in self.transports()
            if c.spec.capabilities.local_schemes and c.spec.capabilities.cross_process
            if c.spec.capabilities.instance_link_rank > 0
        ]
        if not candidates:
            return self.local_default()
        return max(candidates, key=lambda c: c.spec.capabilities.instance_link_rank)

    def require(self, chosen: Chosen, capability: str, purpose: str) -> Chosen:
        """``chosen``, or INVALID_CONFIG naming the transport, the missing capability and what to choose instead."""
        if getattr(chosen.spec.capabilities, capability):
            return chosen
        others = ", ".join(c.spec.name for c in self.with_capability(capability)) or "none is installed"
        raise FlameError(
            FlameErrorCode.INVALID_CONFIG,
            f"transport '{chosen.spec.name}' cannot be used {purpose}: it does not declare the capability "
            f"'{capability}'. Choose a transport that does (FLAME_TRANSPORT, flame.yaml `transport:`, or "
            f"--transport): {others}",
        )

    def in_process_endpoint(self, directory: str | os.PathLike[str], name: str) -> str:
        """An endpoint ``name`` of the in-process transport (the last registered that declares ``in_process``)."""
        found = self.with_capability("in_process")
        if not found:
            raise FlameError(
                FlameErrorCode.INVALID_CONFIG,
                f"no installed transport runs in-process (capability in_process); installed transports: "
                f"{self._installed_transports()}",
            )
        return local_endpoint(self.create_transport(found[-1]), directory, name)

    def bare_path_transport(self) -> Chosen | None:
        """The transport that serves Flame's protocol on a bare unix-socket path (the last registered), or None."""
        found = self.with_capability("bare_path_scheme")
        return found[-1] if found else None

    def endpoint_url(self, endpoint: str) -> str:
        """``endpoint`` as a URL: a bare absolute path (Flame's ``FLAME_INSTANCE_ENDPOINT``) becomes the URL
        of the transport that declares ``bare_path_scheme``; a URL is returned unchanged."""
        if not endpoint.startswith("/"):
            return endpoint
        chosen = self.bare_path_transport()
        if chosen is None:
            raise FlameError(
                FlameErrorCode.INVALID_CONFIG,
                f"'{endpoint}' is a bare socket path (what Flame's executors pass), but no installed transport "
                f"speaks Flame's protocol on one (capability bare_path_scheme); installed transports: "
                f"{self._installed_transports()}. Give a URL with a scheme instead",
            )
        return f"{chosen.spec.capabilities.bare_path_scheme}://{endpoint}"

    def transport_spec_for_endpoint(self, endpoint: str) -> Chosen:
        """The transport that owns ``endpoint``'s URL scheme (a bare path: see :meth:`endpoint_url`)."""
        endpoint = self.endpoint_url(endpoint)
        scheme, sep, _ = endpoint.partition("://")
        if not sep or not scheme:
            examples = " or ".join(f"{c.spec.schemes[0]}://..." for c in self.transports()[:2] if c.spec.schemes)
            raise FlameError(
                FlameErrorCode.INVALID_CONFIG,
                f"endpoint '{endpoint}' has no URL scheme; write it as SCHEME://ADDRESS"
                f"{', e.g. ' + examples if examples else ''}. "
                f"Installed transports: {self._installed_transports()}.",
            )
        scheme = scheme.lower()
        chosen = self.transports()
        candidates = [c for c in chosen if scheme in c.spec.schemes]
        if not candidates:
            all_schemes = {s for c in chosen for s in c.spec.schemes}
            raise FlameError(
                FlameErrorCode.INVALID_CONFIG,
                f"no transport handles the scheme '{scheme}' of endpoint '{endpoint}'"
                f"{_near(scheme, all_schemes)}. Installed transports: {self._installed_transports()}. "
                f"To add one, install a package that declares a '{TRANSPORT_GROUP}' entry point.",
            )
        winner = self._pm.hook.flamepy_choose_transport(scheme=scheme, candidates=[c.spec for c in candidates])
        for c in candidates:
            if c.spec is winner:
                log.debug("scheme %r -> transport %r from plugin %s", scheme, c.spec.name, c.origin.plugin)
                return c
        raise FlameError(  # a plugin's chooser returned something that was not a candidate
            FlameErrorCode.INVALID_CONFIG,
            f"flamepy_choose_transport returned {winner!r} for scheme '{scheme}', which is not one of the "
            f"transports that declare it ({', '.join(c.spec.name for c in candidates)})",
        )

    def create_transport(self, chosen: Chosen, options: Mapping[str, Any] | None = None) -> Transport:
        """Import the chosen transport's implementation and build it with ``options``.

        A transport that accepts ``max_message_size`` and is given none gets ``FLAME_MAX_MESSAGE_SIZE``
        when it is set: the one limit of the runtime, its instances and its clients.
        """
        spec: TransportSpec = chosen.spec
        options = with_configured_max_message_size(spec, options)
        factory = self._load_factory("transport", chosen)
        return self._build("transport", chosen, factory, spec.options, options)  # type: ignore[no-any-return]

    def transport_of_class(self, class_path: str, endpoint: str) -> tuple[Transport, str] | None:
        """The transport class ``module:Class`` built for ``endpoint``, and the endpoint as its URL, without
        scanning entry points; None when the class cannot be imported or does not own the endpoint (its
        scheme, or for a bare socket path its ``bare_path_scheme``): then ask :meth:`transport`.

        For a process told which classes serve its endpoints by the one that started it (the server tells
        its instances: ``FLAMEPY_INSTANCE_TRANSPORTS``), so it starts without reading every installed
        distribution's metadata and importing every plugin. (A service process does the same without a
        registry at all: :func:`flamepy_core.plugin_classes.build_transport_of_class`.)
        """
        spec = spec_of_class(class_path)
        url = None if spec is None else owned_endpoint(spec, endpoint)
        if spec is None or url is None:
            return None
        return self.create_transport(Chosen(spec, PluginOrigin(plugin=class_path))), url

    def transport(self, name_or_endpoint: str, **options: Any) -> Transport:
        """A transport by name or by an endpoint's scheme (``"SCHEME://ADDRESS"``, or a bare socket path)."""
        if "://" in name_or_endpoint or name_or_endpoint.startswith("/"):
            chosen = self.transport_spec_for_endpoint(name_or_endpoint)
        else:
            chosen = self.transport_spec(name_or_endpoint)
        return self.create_transport(chosen, options)

    def shared_transport(
        self, endpoint: str, options: Mapping[str, Any] | None = None, identity: Mapping[str, Any] | None = None
    ) -> Transport:
        """This registry's one transport object for ``endpoint``'s transport, made on first use.

        Sharing is what lets an in-process server and its clients meet (they must use the same in-memory
        transport object), and it saves building the same transport twice. ``identity`` are options that
        make a different transport (security settings: two clients with different CA files get two
        objects); ``options`` only apply when this call is the one that builds it (a server's worker
        count, say). Both go to the factory.
        """
        chosen = self.transport_spec_for_endpoint(endpoint)
        key = (chosen.spec.name, tuple(sorted((name, str(value)) for name, value in (identity or {}).items())))
        with self._lock:
            transport = self._shared.get(key)
            if transport is None:
                transport = self.create_transport(chosen, {**(options or {}), **(identity or {})})
                self._shared[key] = transport
            return transport

    def serializer(self, name: str, **options: Any) -> Serializer:
        """A serializer by name (``"cloudpickle"``)."""
        found = [c for c in self.serializers() if c.spec.name == name]
        if not found:
            installed = ", ".join(c.spec.name for c in self.serializers()) or "none"
            raise FlameError(
                FlameErrorCode.INVALID_CONFIG,
                f"unknown serializer '{name}'{_near(name, (c.spec.name for c in self.serializers()))}. "
                f"Installed serializers: {installed}. "
                f"To add one, install a package that declares a '{SERIALIZER_GROUP}' entry point.",
            )
        chosen = found[-1]
        spec: SerializerSpec = chosen.spec
        factory = self._load_factory("serializer", chosen)
        return self._build("serializer", chosen, factory, spec.options, options)  # type: ignore[no-any-return]

    @staticmethod
    def _load_factory(kind: str, chosen: Chosen) -> Any:
        spec = chosen.spec
        try:
            return spec.load()
        except ImportError as exc:
            hint = f"pip install {' '.join(spec.requires)}" if spec.requires else "reinstall the plugin"
            dist = f" (distribution {chosen.origin.distribution})" if chosen.origin.distribution else ""
            raise FlameError(
                FlameErrorCode.INVALID_CONFIG,
                f"{kind} '{spec.name}' from plugin {chosen.origin.plugin}{dist} is installed but cannot be "
                f"imported: {type(exc).__name__}: {exc}. Install what it needs: {hint}",
            ) from exc

    @staticmethod
    def _build(
        kind: str, chosen: Chosen, factory: Any, accepted: frozenset[str], options: Mapping[str, Any] | None
    ) -> Any:
        return build_plugin(kind, chosen.spec.name, chosen.origin.plugin, factory, accepted, options or {})


def local_endpoint(transport: Transport, directory: str | os.PathLike[str], name: str) -> str:
    """``transport``'s private endpoint ``name`` in ``directory`` (it declared ``local_schemes`` or ``in_process``).

    See :meth:`flamepy_core.contracts.transport.LocalTransport.local_endpoint`.
    """
    if not isinstance(transport, LocalTransport):
        raise FlameError(
            FlameErrorCode.INVALID_CONFIG,
            f"transport '{transport.name}' has no local_endpoint() method, so the runtime cannot make a private "
            f"endpoint on it; a plugin that declares local_schemes or in_process must implement it "
            f"(see docs/plugin-authors.md)",
        )
    return transport.local_endpoint(os.fspath(directory), name)


_default: PluginRegistry | None = None
_default_lock = threading.Lock()


def get_registry() -> PluginRegistry:
    """The process's registry, created on first use (entry points are scanned once)."""
    global _default
    if _default is None:
        with _default_lock:
            if _default is None:
                _default = PluginRegistry()
    return _default
