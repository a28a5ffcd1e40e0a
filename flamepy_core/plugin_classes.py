"""A plugin's declaration read from its class, and a transport or serializer built from ``module:Class`` alone.

A plugin declares itself once, on its class (``name``, ``schemes``, ``capabilities``, ``options``...).
The registry (:mod:`flamepy_core.plugins`) reads these declarations for every installed plugin, through
pluggy and the entry points. A process told which class serves its endpoint needs only that one class:
a service process is (the server names the classes in ``FLAMEPY_INSTANCE_TRANSPORTS``, and its
serializer's in ``FLAMEPY_INSTANCE_SERIALIZER``), and with :func:`build_transport_of_class` and
:func:`serializer_of_class` it starts and answers its first task without the registry, pluggy or the
entry-point scan, which are a noticeable part of an instance's cold start.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from flamepy_core.contracts.errors import FlameError, FlameErrorCode
from flamepy_core.contracts.transport import Transport, TransportCapabilities, TransportSpec

if TYPE_CHECKING:  # imported when a serializer is built: a core service's start path has no serializer
    from flamepy_core.contracts.serializer import Serializer, SerializerSpec

__all__ = [
    "MAX_MESSAGE_SIZE_ENV",
    "SERIALIZER_HINT_ENV",
    "build_plugin",
    "build_transport_of_class",
    "owned_endpoint",
    "serializer_of_class",
    "serializer_spec_of",
    "spec_of_class",
    "transport_spec_of",
    "with_configured_max_message_size",
]

log = logging.getLogger(__name__)

MAX_MESSAGE_SIZE_ENV = "FLAME_MAX_MESSAGE_SIZE"
"""The runtime's one message-size limit (``RuntimeSettings.max_message_size``; a test keeps the names equal)."""
SERIALIZER_HINT_ENV = "FLAMEPY_INSTANCE_SERIALIZER"
"""``module:Class`` of the serializer the runtime expects a service process to use (the one its
configuration names): a ``FlameInstance`` builds it from that class alone when it is the serializer it
chose, and asks the plugin registry otherwise."""


def transport_spec_of(cls: type) -> TransportSpec:
    """The declaration a transport class carries: ``name``, ``schemes``, ``capabilities``, ``options``.

    A plugin declares itself once, on its class, and its entry point names the class (``module:Class``).
    Optional: ``requires`` (distributions to install when importing it fails) and ``description`` (else
    the first line of its docstring). The class itself is the factory the registry builds with options.
    """
    name = getattr(cls, "name", None)
    schemes = getattr(cls, "schemes", None)
    capabilities = getattr(cls, "capabilities", None)
    problems = []
    if not isinstance(name, str) or not name:
        problems.append("a class attribute `name` (str)")
    if not isinstance(schemes, (tuple, list)) or not schemes or not all(isinstance(x, str) for x in schemes):
        problems.append("a class attribute `schemes` (a tuple of URL schemes)")
    if not isinstance(capabilities, TransportCapabilities):
        problems.append("a class attribute `capabilities` (TransportCapabilities)")
    if problems:
        raise TypeError(f"transport class {cls.__module__}.{cls.__qualname__} lacks {', '.join(problems)}")
    doc = (cls.__doc__ or "").strip().splitlines()
    return TransportSpec(
        name=str(name),
        schemes=tuple(str(x).lower() for x in schemes),  # type: ignore[union-attr]
        capabilities=capabilities,  # type: ignore[arg-type]
        load=lambda: cls,
        options=frozenset(getattr(cls, "options", ())),
        requires=tuple(getattr(cls, "requires", ())),
        description=str(getattr(cls, "description", "") or (doc[0] if doc else "")),
    )


def serializer_spec_of(cls: type) -> SerializerSpec:
    """The declaration a serializer class carries: ``name``, ``domain`` and optionally ``options``."""
    from flamepy_core.contracts.serializer import SerializerSpec

    name, domain = getattr(cls, "name", None), getattr(cls, "domain", None)
    if not isinstance(name, str) or not name or not isinstance(domain, str) or not domain:
        raise TypeError(f"serializer class {cls.__module__}.{cls.__qualname__} lacks `name` and `domain` (str)")
    doc = (cls.__doc__ or "").strip().splitlines()
    return SerializerSpec(
        name=name,
        domain=domain,
        load=lambda: cls,
        options=frozenset(getattr(cls, "options", ())),
        requires=tuple(getattr(cls, "requires", ())),
        description=str(getattr(cls, "description", "") or (doc[0] if doc else "")),
        factory_path=f"{cls.__module__}:{cls.__qualname__}",
    )


def spec_of_class(class_path: str) -> TransportSpec | None:
    """The declaration of the transport class ``module:Class``; None when it cannot be imported or is no
    transport class (moved, broken: the caller then asks the registry, which explains what is wrong)."""
    module_name, _, attribute = class_path.partition(":")
    try:
        return transport_spec_of(getattr(importlib.import_module(module_name), attribute))
    except Exception as exc:
        log.debug("transport class %s is not usable here (%s)", class_path, exc)
        return None


def owned_endpoint(spec: TransportSpec, endpoint: str) -> str | None:
    """``endpoint`` as a URL of ``spec``'s transport, or None when it is not one of its endpoints (its
    schemes; for a bare socket path, its ``bare_path_scheme``)."""
    if endpoint.startswith("/"):
        scheme = spec.capabilities.bare_path_scheme
        return None if scheme is None else f"{scheme}://{endpoint}"
    if endpoint.partition("://")[0].lower() not in spec.schemes:
        return None
    return endpoint


def with_configured_max_message_size(spec: TransportSpec, options: Mapping[str, Any] | None) -> Mapping[str, Any]:
    """``options`` plus ``FLAME_MAX_MESSAGE_SIZE`` as ``max_message_size`` when the transport accepts it and
    none was given: the one limit of the runtime, its instances and its clients."""
    options = options or {}
    if "max_message_size" not in spec.options or "max_message_size" in options:
        return options
    if not os.environ.get(MAX_MESSAGE_SIZE_ENV, "").strip():
        return options  # not set: the configuration module (which parses it) is not even imported
    from flamepy_core.config import configured_max_message_size

    configured = configured_max_message_size()
    return options if configured is None else {**options, "max_message_size": configured}


def build_plugin(
    kind: str, name: str, plugin: str, factory: Callable[..., Any], accepted: frozenset[str], options: Mapping[str, Any]
) -> Any:
    """``factory(**options)``, with an option it does not accept, or one it rejects, as ``INVALID_ARGUMENT``."""
    options = dict(options)
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise FlameError(
            FlameErrorCode.INVALID_ARGUMENT,
            f"{kind} '{name}' (plugin {plugin}) does not accept the option(s) "
            f"{', '.join(repr(u) for u in unknown)}; it accepts: {', '.join(sorted(accepted)) or 'none'}",
        )
    try:
        return factory(**options)
    except (TypeError, ValueError) as exc:
        raise FlameError(
            FlameErrorCode.INVALID_ARGUMENT,
            f"{kind} '{name}' (plugin {plugin}) rejected its options {options!r}: {exc}",
        ) from exc


def build_transport_of_class(class_path: str, endpoint: str) -> tuple[Transport, str] | None:
    """The transport class ``module:Class`` built for ``endpoint``, and the endpoint as its URL, without the
    registry; None when the class is not usable here or does not own the endpoint."""
    spec = spec_of_class(class_path)
    url = None if spec is None else owned_endpoint(spec, endpoint)
    if spec is None or url is None:
        return None
    options = with_configured_max_message_size(spec, None)
    transport = build_plugin("transport", spec.name, class_path, spec.load(), spec.options, options)
    return transport, url


def serializer_of_class(class_path: str, name: str) -> Serializer | None:
    """The serializer ``name`` built from its class ``module:Class`` (``FLAMEPY_INSTANCE_SERIALIZER``),
    without the registry; None when that module is not installed here or the class is another serializer
    (the caller then asks the registry, which finds ``name`` among the installed plugins or says why not).

    A value that is not ``module:Class``, or names something that is not a serializer class, is a
    mistake in the environment, not a plugin missing here: ``INVALID_CONFIG``, naming it.
    """
    module_name, colon, qualname = class_path.strip().partition(":")
    fix = (
        f"the runtime sets {SERIALIZER_HINT_ENV} for the service processes it starts; unset it (the service then "
        f"finds its serializer among the installed plugins) or name a serializer class"
    )
    if not colon or not module_name or not all(part.isidentifier() for part in qualname.split(".")):
        raise FlameError(
            FlameErrorCode.INVALID_CONFIG,
            f"{SERIALIZER_HINT_ENV}={class_path!r} is not a class as module:Class "
            f"(e.g. flamepy_serializers.json.serializer:JsonSerializer); {fix}",
        )
    try:
        found: Any = importlib.import_module(module_name)
    except ImportError as exc:  # not installed where this service runs: the installed plugins decide
        log.debug("serializer class %s is not importable here (%s)", class_path, exc)
        return None
    try:
        for part in qualname.split("."):
            found = getattr(found, part)
        spec = serializer_spec_of(found) if isinstance(found, type) else None
    except (AttributeError, TypeError) as exc:
        raise FlameError(FlameErrorCode.INVALID_CONFIG, f"{SERIALIZER_HINT_ENV}={class_path!r}: {exc}; {fix}") from exc
    if spec is None:
        raise FlameError(
            FlameErrorCode.INVALID_CONFIG,
            f"{SERIALIZER_HINT_ENV}={class_path!r} names a {type(found).__name__}, not a serializer class; {fix}",
        )
    if spec.name != name:
        return None
    return build_plugin("serializer", name, class_path, found, spec.options, {})  # type: ignore[no-any-return]
