"""Declares the cloudpickle serializer (light: cloudpickle is imported only when it is chosen)."""

from __future__ import annotations

from collections.abc import Sequence

from flamepy_core.contracts import SerializerSpec, hookimpl
from flamepy_core.contracts.serializer import SerializerFactory


def _load() -> SerializerFactory:
    from flamepy_serializers.cloudpickle.serializer import CloudpickleSerializer

    return CloudpickleSerializer


@hookimpl
def flamepy_add_serializers() -> Sequence[SerializerSpec]:
    return [
        SerializerSpec(
            name="cloudpickle",
            domain="python",
            load=_load,
            factory_path="flamepy_serializers.cloudpickle.serializer:CloudpickleSerializer",
            options=frozenset({"protocol"}),
            requires=("cloudpickle",),
            description="any picklable Python value, functions and classes by value (the default)",
        )
    ]
