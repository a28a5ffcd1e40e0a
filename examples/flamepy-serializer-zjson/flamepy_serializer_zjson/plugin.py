"""Declares the serializer. Light on purpose: nothing is imported until ``zjson`` is chosen."""

from __future__ import annotations

from collections.abc import Sequence

from flamepy_core.contracts import SerializerSpec, hookimpl
from flamepy_core.contracts.serializer import SerializerFactory


def _load() -> SerializerFactory:
    from flamepy_serializer_zjson.serializer import ZjsonSerializer

    return ZjsonSerializer


@hookimpl
def flamepy_add_serializers() -> Sequence[SerializerSpec]:
    return [
        SerializerSpec(
            name="zjson",
            domain="json",
            load=_load,
            options=frozenset({"level"}),
            description="JSON values, zlib-compressed (large, repetitive documents)",
        )
    ]
