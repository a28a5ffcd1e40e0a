"""Declares the pickle serializer (light: the implementation module is imported only when it is chosen)."""

from __future__ import annotations

from collections.abc import Sequence

from flamepy_core.contracts import SerializerSpec, hookimpl
from flamepy_core.contracts.serializer import SerializerFactory


def _load() -> SerializerFactory:
    from flamepy_serializers.pickle.serializer import PickleSerializer

    return PickleSerializer


@hookimpl
def flamepy_add_serializers() -> Sequence[SerializerSpec]:
    return [
        SerializerSpec(
            name="pickle",
            domain="python",
            load=_load,
            factory_path="flamepy_serializers.pickle.serializer:PickleSerializer",
            options=frozenset({"protocol"}),
            requires=(),
            description="any picklable Python value; classes and functions by reference (importable on both sides)",
        )
    ]
