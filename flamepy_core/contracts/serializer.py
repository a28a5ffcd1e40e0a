"""The serializer contract: turn user values into bytes and back.

The runtime never calls ``loads`` on a client's payload; only the user's own processes (client and
service) do. ``domain`` names the family of values a serializer round-trips, so the conformance suite
knows which values to generate for it.

What a serializer keeps (the conformance suite checks each):

* every value of its domain comes back exactly (same types all the way down), whatever its size
  (documents of :data:`~flamepy_core.contracts.bounds.LARGE_DOCUMENT_BYTES` and more);
* one serializer object is shared by many threads: concurrent ``dumps`` and ``loads`` give the same bytes
  and values as one thread would;
* a value outside the domain, a subclass of a domain type included, is refused in ``dumps`` with
  ``FlameError(INVALID_ARGUMENT)`` naming its type and the serializer, the same error every time; it is
  never silently turned into a domain value (an ``IntEnum`` into an ``int``) unless it comes back as
  exactly what was sent;
* bytes it did not write give a ``FlameError`` naming it (or decode), never another exception or a hang.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class Serializer(Protocol):
    """Encodes and decodes values. Must be thread-safe and stateless between calls."""

    name: str
    domain: str
    """One of ``"python"`` (any picklable value), ``"json"``, ``"msgpack"``, ``"bytes"``."""

    def dumps(self, obj: Any) -> bytes: ...

    def loads(self, data: bytes) -> Any: ...


SerializerFactory = Callable[..., Serializer]


@dataclass(frozen=True)
class SerializerSpec:
    """What a serializer plugin declares; ``load`` is called only when the serializer is chosen."""

    name: str
    domain: str
    load: Callable[[], SerializerFactory]
    options: frozenset[str] = field(default_factory=frozenset)
    requires: tuple[str, ...] = ()
    description: str = ""
    factory_path: str = ""
    """``module:Class`` of what ``load`` returns, when it is known without importing it; empty when not.
    The runtime names it to a service process (``FLAMEPY_INSTANCE_SERIALIZER``), which then builds its
    serializer from that class alone, without scanning every installed plugin at its start."""
