"""The envelope of an object-cache blob: which serializer wrote the value, so any reader can decode it.

A blob is ``FPY`` + one kind byte, then either the raw bytes (:data:`KIND_BYTES`: the value was bytes and
is stored as it is) or one length byte, the serializer's name and that serializer's bytes
(:data:`KIND_SERIALIZED`). The server never decodes a blob; the cache clients (ours and the Flight one)
and the Flight server's payload translation read the format from here.
"""

from __future__ import annotations

from typing import Any

from flamepy_core.contracts.errors import FlameError, FlameErrorCode
from flamepy_core.contracts.serializer import Serializer
from flamepy_core.plugins import get_registry

MAGIC = b"FPY"
KIND_BYTES = 0
KIND_SERIALIZED = 1


def serialized(name: str, payload: bytes) -> bytes:
    """The envelope around ``payload``, written by the serializer ``name``."""
    encoded = name.encode()
    return MAGIC + bytes([KIND_SERIALIZED, len(encoded)]) + encoded + payload


def parse(blob: bytes) -> tuple[int, str | None, bytes] | None:
    """``(kind, serializer name or None, payload)`` of an envelope, or None when ``blob`` is not one."""
    if not blob.startswith(MAGIC) or len(blob) < 4:
        return None
    kind = blob[3]
    if kind == KIND_BYTES:
        return kind, None, blob[4:]
    if kind == KIND_SERIALIZED and len(blob) >= 5:
        size = blob[4]
        name = blob[5 : 5 + size]
        if len(name) == size:
            try:
                return kind, name.decode(), blob[5 + size :]
            except UnicodeDecodeError:
                return None
    return None


def encode_value(obj: Any, serializer: Serializer) -> bytes:
    """The stored form of ``obj``: bytes as they are, anything else through ``serializer``."""
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return MAGIC + bytes([KIND_BYTES]) + bytes(obj)
    return serialized(serializer.name, serializer.dumps(obj))


def decode_value(blob: bytes, serializer: Serializer | None = None) -> Any:
    """Inverse of :func:`encode_value`; decodes with the serializer named in the blob."""
    if not blob.startswith(MAGIC) or len(blob) < 4:
        raise FlameError(
            FlameErrorCode.INVALID_ARGUMENT,
            f"cached object of {len(blob)} bytes (starting {blob[:8]!r}) was not written by flamepy's "
            f"cache client; read it with a deserializer that takes raw bytes",
        )
    kind = blob[3]
    if kind == KIND_BYTES:
        return blob[4:]
    if kind != KIND_SERIALIZED or len(blob) < 5:
        raise FlameError(FlameErrorCode.INVALID_ARGUMENT, f"cached object has an unknown envelope kind {kind}")
    size = blob[4]
    name = blob[5 : 5 + size].decode()
    payload = blob[5 + size :]
    chosen = serializer if serializer is not None and serializer.name == name else get_registry().serializer(name)
    return chosen.loads(payload)
