"""Task payloads on the wire: which serializer wrote them, and which serializer a client or service uses.

**Framing.** A payload is what ``flamepy.service`` sends as a task's input or output. The default
serializer, cloudpickle, writes *plain* cloudpickle bytes: that is what Flame's own service layer sends and
expects, so a default client or service interoperates with Flame's unchanged. Every other serializer's
payload starts with a short header, ``b"\\x00FPS"`` + one byte *n* + the serializer's name (*n* bytes of
UTF-8), followed by that serializer's bytes. The header costs a few bytes and buys the one thing the
payload alone cannot say: who wrote it. ``\\x00`` is not a pickle opcode and cloudpickle output starts with
the ``PROTO`` opcode ``\\x80``, so a framed payload is never mistaken for a plain one, and vice versa.

**Mismatch.** :func:`decode_payload` compares the writer's serializer with the reader's *before* decoding:
a payload framed with another name, or a plain (cloudpickle) payload reaching a side that uses another
serializer, is a ``FlameError(INVALID_ARGUMENT)`` naming both serializers and where to choose them, never
an attempt to read one format with the other (which at best fails obscurely and at worst returns a wrong
value: most bytes are valid msgpack).

**Encoding errors** surface in the caller's process, before anything is sent: :func:`encode_payload` runs
the serializer first, and every failure becomes ``FlameError(INVALID_ARGUMENT)`` naming the value's type
and the serializer (the bundled serializers already say so; a third-party one that raises something else
is wrapped here).

**Choosing** (:func:`flamepy_core.client.serializers.session_serializer`, in the client because it asks
the server): explicit ``Session(serializer=...)`` > the serializer the
application was registered with > the configuration (``FLAME_SERIALIZER``, then ``flame.yaml``'s
``serializer``) > ``cloudpickle``. An application carries its serializer as the environment variable
``FLAME_SERIALIZER`` in its ``environments``: the executor passes ``environments`` to every instance it
starts, so ``FlameInstance()`` (explicit > ``FLAME_SERIALIZER`` > configuration > default) picks it up
with no new field in Flame's ``ApplicationSpec``, and the same registration works on a Flame cluster. A
client reads it back with ``get_application`` the first time it opens a session of that application, and
keeps the answer for the life of the process (:func:`forget_application_serializers` drops it).
``flmctl register``'s ``spec.serializer`` writes the variable (:func:`application_environments`); from
Python, pass ``environments={"FLAME_SERIALIZER": "json"}`` to ``register_application``.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from flamepy_core.config import DEFAULT_SERIALIZER, ENV_SERIALIZER
from flamepy_core.contracts.errors import FlameError, FlameErrorCode
from flamepy_core.contracts.serializer import Serializer

__all__ = [
    "FRAME_MAGIC",
    "PLAIN_SERIALIZER",
    "application_environments",
    "decode_context",
    "decode_payload",
    "encode_payload",
    "frame_header",
    "payload_serializer",
]

FRAME_MAGIC = b"\x00FPS"
"""First bytes of a framed payload. NUL is no pickle opcode, so plain cloudpickle bytes never start so."""
PLAIN_SERIALIZER = DEFAULT_SERIALIZER
"""The serializer whose payloads travel unframed (Flame's): ``"cloudpickle"``."""
_CHOOSE = (
    "choose the same serializer on both sides (Session(serializer=...), FlameInstance(serializer=...), "
    "FLAME_SERIALIZER or the application's `serializer`)"
)
_OTHER_SIDE = {"client": "service", "service": "client"}


@functools.lru_cache(maxsize=64)
def frame_header(name: str) -> bytes:
    """The header that precedes a payload written by serializer ``name``."""
    encoded = name.encode("utf-8")
    if not 0 < len(encoded) < 256:
        raise FlameError(
            FlameErrorCode.INVALID_CONFIG,
            f"serializer name {name!r} cannot be framed: a name must be 1 to 255 bytes of UTF-8",
        )
    return FRAME_MAGIC + bytes([len(encoded)]) + encoded


def payload_serializer(data: bytes) -> tuple[str, int]:
    """``(name, offset)``: the serializer that wrote ``data`` and where its bytes start.

    Unframed bytes are Flame's plain cloudpickle: ``("cloudpickle", 0)``. A payload that starts like a
    frame but is cut short is a ``FlameError(INVALID_ARGUMENT)``.
    """
    if not data.startswith(FRAME_MAGIC):
        return PLAIN_SERIALIZER, 0
    start = len(FRAME_MAGIC) + 1
    size = data[start - 1] if len(data) >= start else 0
    try:
        if size == 0 or len(data) < start + size:
            raise ValueError("the header is cut short")
        return bytes(data[start : start + size]).decode("utf-8"), start + size
    except ValueError as exc:  # UnicodeDecodeError is a ValueError
        raise FlameError(
            FlameErrorCode.INVALID_ARGUMENT,
            f"malformed flamepy payload of {len(data)} bytes (starting {bytes(data[:12])!r}): it begins with "
            f"the serializer frame but the serializer name cannot be read ({exc})",
        ) from None


def encode_payload(obj: Any, serializer: Serializer) -> bytes:
    """``obj`` as a task payload: plain bytes for cloudpickle, framed for every other serializer.

    Raises ``FlameError(INVALID_ARGUMENT)`` naming the value's type and the serializer when it cannot be
    encoded; called before anything is sent, so the failure is the caller's, not the peer's.
    """
    try:
        body = serializer.dumps(obj)
    except FlameError:
        raise
    except Exception as exc:  # a third-party serializer that does not map its own errors
        raise FlameError(
            FlameErrorCode.INVALID_ARGUMENT,
            f"serializer {serializer.name!r} cannot encode a value of type {type(obj).__qualname__}: "
            f"{type(exc).__name__}: {exc}",
        ) from exc
    if type(body) is not bytes:
        if not isinstance(body, (bytearray, memoryview)):
            raise FlameError(
                FlameErrorCode.INTERNAL,
                f"serializer {serializer.name!r} returned {type(body).__qualname__} from dumps(); it must return bytes",
            )
        body = bytes(body)
    if serializer.name == PLAIN_SERIALIZER:
        return body
    return frame_header(serializer.name) + body


def decode_payload(
    data: bytes,
    serializer: Serializer,
    *,
    peer: str,
    what: str = "payload",
    chosen_by: str | None = None,
) -> Any:
    """Decode a payload the ``peer`` (``"client"`` or ``"service"``) sent, with this side's ``serializer``.

    ``what`` names the payload in messages (``"request"``, ``"result"``); ``chosen_by`` says where this
    side's serializer came from (``"argument"``, ``"env:FLAME_SERIALIZER"``...), so the user knows which
    setting to change. A payload written by another serializer is refused, naming both; a payload the
    serializer cannot read is a ``FlameError(INVALID_ARGUMENT)`` naming the serializer.
    """
    raw = data if type(data) is bytes else bytes(data)
    writer, offset = payload_serializer(raw)
    if writer != serializer.name:
        side = _OTHER_SIDE.get(peer, "process")
        theirs = f"'{writer}' (plain bytes, Flame's default)" if offset == 0 else f"'{writer}'"
        ours = f"'{serializer.name}'" + (f" (from {chosen_by})" if chosen_by else "")
        raise FlameError(
            FlameErrorCode.INVALID_ARGUMENT,
            f"the {peer}'s {what} was encoded with {theirs} but this {side} uses {ours}; {_CHOOSE}",
        )
    body = raw[offset:] if offset else raw
    try:
        return serializer.loads(body)
    except FlameError:
        raise
    except Exception as exc:
        raise FlameError(
            FlameErrorCode.INVALID_ARGUMENT,
            f"serializer {serializer.name!r} cannot decode the {peer}'s {what} ({len(body)} bytes): "
            f"{type(exc).__name__}: {exc}",
        ) from exc


# ---------------------------------------------------------------------------------------------------
# Which serializer a session uses


def decode_context(stored: Any, serializer: Serializer, *, peer: str) -> Any:
    """A session context as read from the cache.

    Contexts are stored as the serializer's payload bytes (what Flame's SDK does: ``cloudpickle.dumps(ctx)``
    through ``put_object``), so services and clients written with either SDK read each other's. A value
    that is not bytes was stored as an object by an older writer and is returned as it is.
    """
    if isinstance(stored, (bytes, bytearray, memoryview)):
        return decode_payload(bytes(stored), serializer, peer=peer, what="session context")
    return stored


def application_environments(
    environments: Mapping[str, str] | None, serializer: str | None, *, source: str = "the application"
) -> dict[str, str] | None:
    """``environments`` with ``FLAME_SERIALIZER=<serializer>`` added: how an application carries its choice.

    ``serializer`` None leaves ``environments`` as is. An ``environments`` that already sets
    ``FLAME_SERIALIZER`` to another name is a ``FlameError(INVALID_ARGUMENT)`` naming both (``source``
    says which file or call), since either could be the one meant.
    """
    if serializer is None:
        return None if environments is None else dict(environments)
    name = serializer.strip()
    merged = dict(environments or {})
    already = merged.get(ENV_SERIALIZER)
    if already is not None and already.strip() != name:
        raise FlameError(
            FlameErrorCode.INVALID_ARGUMENT,
            f"{source}: serializer {name!r} contradicts environments {ENV_SERIALIZER}={already!r}; "
            f"set one of them (the serializer is passed to instances as {ENV_SERIALIZER})",
        )
    merged[ENV_SERIALIZER] = name
    return merged
