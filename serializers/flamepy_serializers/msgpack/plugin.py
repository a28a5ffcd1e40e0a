"""Declares the msgpack serializer.

Light: msgpack is not a dependency of flamepy, so this module imports nothing from it. When msgpack is
missing the serializer is still listed, and choosing it gives the registry's "installed but cannot be
imported; pip install msgpack" error instead of breaking discovery.
"""

from __future__ import annotations

from collections.abc import Sequence

from flamepy_core.contracts import SerializerSpec, hookimpl
from flamepy_core.contracts.serializer import SerializerFactory


def _load() -> SerializerFactory:
    from flamepy_serializers.msgpack.serializer import MsgpackSerializer

    return MsgpackSerializer


@hookimpl
def flamepy_add_serializers() -> Sequence[SerializerSpec]:
    return [
        SerializerSpec(
            name="msgpack",
            domain="msgpack",
            load=_load,
            factory_path="flamepy_serializers.msgpack.serializer:MsgpackSerializer",
            requires=("msgpack",),
            description="None, bool, 64-bit int, float, str, bytes, list, dict with scalar keys",
        )
    ]
