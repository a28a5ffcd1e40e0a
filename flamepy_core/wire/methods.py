"""Method tables: every rpc of every service we speak, by name and by gRPC path.

Transports move opaque bytes for a method named by its gRPC path (``/flame.v1.Frontend/CreateTask``
on every transport, so the gRPC transport speaks Flame's own protocol unchanged).  Whoever sends or
serves a call needs to know, for that path, which message class to serialize and parse and whether
the response is a stream; these tables give exactly that.

The tables are read from the compiled service descriptors rather than typed by hand, so they cannot
drift from the ``.proto`` files: adding an rpc to a proto and regenerating is enough.

Each table is built on first use, from its own ``.proto`` module only: a service process, which needs
``INSTANCE``, does not load the descriptors of the Frontend, the cache and the extensions.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from types import MappingProxyType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from google.protobuf.descriptor import FileDescriptor, MethodDescriptor
    from google.protobuf.message import Message

__all__ = [
    "ALL_METHODS",
    "CONTROL",
    "EXT",
    "FRONTEND",
    "INSTANCE",
    "INSTANCE_TASKS",
    "OBJECT_CACHE",
    "RUNTIME",
    "Method",
]


@dataclass(frozen=True)
class Method:
    """One rpc: where it lives, what it carries, and whether its answer is a stream.

    ``service`` is the fully qualified service name (``flame.v1.Frontend``), because that, not the
    bare name, is what appears in the gRPC path and keeps services of different packages apart.
    Client streaming is deliberately absent: no rpc we speak has it and the transport contract
    (unary and server-streaming calls) could not carry it.
    """

    service: str
    name: str
    request: type[Message]
    response: type[Message]
    server_streaming: bool

    @cached_property
    def path(self) -> str:
        """The gRPC method path, ``/<package>.<Service>/<Rpc>``: the method's name on every transport (built
        once: every call asks)."""
        return f"/{self.service}/{self.name}"


def _method(descriptor: MethodDescriptor) -> Method:
    """Build a `Method` from its descriptor, refusing what the transports cannot carry."""
    from google.protobuf.message_factory import GetMessageClass

    if descriptor.client_streaming:
        raise TypeError(f"{descriptor.full_name} is client-streaming, which the transport contract does not support")
    return Method(
        service=descriptor.containing_service.full_name,
        name=descriptor.name,
        request=GetMessageClass(descriptor.input_type),
        response=GetMessageClass(descriptor.output_type),
        server_streaming=descriptor.server_streaming,
    )


def _service_table(file: FileDescriptor, service: str) -> Mapping[str, Method]:
    """The read-only table of one service's rpcs, keyed by rpc name, in declaration order."""
    methods = file.services_by_name[service].methods
    return MappingProxyType({m.name: _method(m) for m in methods})


FRONTEND: Mapping[str, Method]
"""Flame's client API (``flame.v1.Frontend``), served by the session manager."""

INSTANCE: Mapping[str, Method]
"""Flame's service callbacks (``flame.v1.Instance``), served by a service process."""

OBJECT_CACHE: Mapping[str, Method]
"""flamepy's object cache (``flamepy.cache.v1.ObjectCache``)."""

EXT: Mapping[str, Method]
"""flamepy's Frontend extensions (``flamepy.ext.v1.Tasks``): served by flamepy's server only."""

RUNTIME: Mapping[str, Method]
"""flamepy's view of what a server runs (``flamepy.ext.v1.Runtime``): served by flamepy's server only."""

CONTROL: Mapping[str, Method]
"""flamepy's cancel and forced close (``flamepy.ext.v1.Control``): served by flamepy's server only."""

INSTANCE_TASKS: Mapping[str, Method]
"""Tasks in batches (``flamepy.ext.v1.InstanceTasks``): between flamepy's server and its own instance
runtime only, never a Flame executor or a service written with Flame's SDK."""

ALL_METHODS: Mapping[str, Method]
"""Every method above keyed by its gRPC path: what a server dispatches on."""

_SOURCES = {
    "FRONTEND": ("frontend_pb2", "Frontend"),
    "INSTANCE": ("shim_pb2", "Instance"),
    "OBJECT_CACHE": ("cache_pb2", "ObjectCache"),
    "EXT": ("ext_pb2", "Tasks"),
    "RUNTIME": ("ext_pb2", "Runtime"),
    "CONTROL": ("ext_pb2", "Control"),
    "INSTANCE_TASKS": ("ext_pb2", "InstanceTasks"),
}
"""Each table's generated module (in ``flamepy_core.wire.proto``) and service name."""


def _by_path(*tables: Mapping[str, Method]) -> Mapping[str, Method]:
    """Merge tables into one keyed by gRPC path; a duplicate path would be a routing bug, so refuse it."""
    merged: dict[str, Method] = {}
    for table in tables:
        for method in table.values():
            if method.path in merged:
                raise ValueError(f"duplicate gRPC method path {method.path}")
            merged[method.path] = method
    return MappingProxyType(merged)


def __getattr__(name: str) -> Mapping[str, Method]:
    """Build a table on first use and keep it (a module attribute from then on)."""
    if name == "ALL_METHODS":
        table = _by_path(*(__getattr__(table_name) for table_name in _SOURCES))
    elif name in _SOURCES:
        module_name, service = _SOURCES[name]
        module = importlib.import_module(f"flamepy_core.wire.proto.{module_name}")
        table = _service_table(module.DESCRIPTOR, service)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = table
    return table
