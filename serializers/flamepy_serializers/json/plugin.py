"""Declares the json serializer (light: the implementation module is imported only when it is chosen)."""

from __future__ import annotations

from collections.abc import Sequence

from flamepy_core.contracts import SerializerSpec, hookimpl
from flamepy_core.contracts.serializer import SerializerFactory


def _load() -> SerializerFactory:
    from flamepy_serializers.json.serializer import JsonSerializer

    return JsonSerializer


@hookimpl
def flamepy_add_serializers() -> Sequence[SerializerSpec]:
    return [
        SerializerSpec(
            name="json",
            domain="json",
            load=_load,
            factory_path="flamepy_serializers.json.serializer:JsonSerializer",
            requires=(),
            description="None, bool, int, finite float, str, list, dict with str keys; anything else is refused",
        )
    ]
