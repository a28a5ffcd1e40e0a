"""Object-cache references and key rules.

:class:`ObjectRef` is the handle users pass around for a cached object. Its :meth:`ObjectRef.encode`
form is what travels as session common data and as Runner task outputs, so it must be byte-identical
to Flame's: a BSON document ``{endpoint: str, key: str, version: int}`` in exactly that key order,
with ``version`` as int32 when it fits and int64 otherwise. Decoding accepts both widths because
Flame's cache server writes int64 versions into its put results.

:class:`ObjectKey` implements Flame's key grammar. Keys are ``"<app>/<session>/<object-id>"``; the
object cache also takes the prefix ``"<app>/<session>"`` (put: "the server picks the id"; delete: "all
of this session's objects") and, only when deleting, ``"<app>/*"`` (every session of an app). The
parts may not contain ``/``, ``\\`` or ``..`` because the server maps keys onto directories: these rules
are what keeps a key from escaping its application's directory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from flamepy_core import bson
from flamepy_core.contracts.errors import FlameError, FlameErrorCode

if TYPE_CHECKING:
    from flamepy_core.wire.proto import cache_pb2

__all__ = [
    "WILDCARD_SESSION",
    "InvalidObjectRefError",
    "ObjectKey",
    "ObjectRef",
    "parse_delete_prefix",
    "parse_full_key",
    "parse_key_or_prefix",
    "parse_prefix",
]

WILDCARD_SESSION = "*"
"""Session part meaning "every session of the application"; only valid in ``"<app>/*"`` delete prefixes."""

_INT64_MAX = 2**63 - 1
_REF_FIELDS = ("endpoint", "key", "version")


class InvalidObjectRefError(FlameError, ValueError):
    """Bytes (or a document) that are not an encoded :class:`ObjectRef`.

    It is both a :class:`FlameError` with code ``INVALID_ARGUMENT`` (what flamepy's own layers catch)
    and a ``ValueError`` (what plain Python callers expect for bad input), so either ``except`` works.
    """


@dataclass
class ObjectRef:
    """A reference to version ``version`` of the cached object ``key`` held by the cache at ``endpoint``.

    ``version`` is 1 or more for a stored object; 0 means "I hold nothing, fetch the whole object".
    Mutable like Flame's dataclass, but the constructor checks field types so a bad ref fails where it
    is made rather than deep inside a cache call.
    """

    endpoint: str
    key: str
    version: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.endpoint, str):
            raise TypeError(f"ObjectRef.endpoint must be a str (cache URI), got {type(self.endpoint).__name__}")
        if not isinstance(self.key, str):
            raise TypeError(f"ObjectRef.key must be a str '<app>/<session>/<object-id>', got {type(self.key).__name__}")
        if isinstance(self.version, bool) or not isinstance(self.version, int):
            raise TypeError(f"ObjectRef.version must be an int, got {type(self.version).__name__}")
        if not 0 <= self.version <= _INT64_MAX:
            raise ValueError(
                f"ObjectRef.version must be between 0 and 2**63-1 (BSON int64), got {self.version}; "
                "use 0 to force a full fetch"
            )

    # -- BSON (Flame-compatible) --------------------------------------------------------------------

    def encode(self) -> bytes:
        """Encode as Flame does: BSON ``{endpoint, key, version}`` in that order."""
        return bson.encode({"endpoint": self.endpoint, "key": self.key, "version": self.version})

    @classmethod
    def decode(cls, data: bytes | bytearray | memoryview) -> ObjectRef:
        """Decode bytes produced by :meth:`encode` (or by Flame / Flame's cache server).

        ``version`` may be int32 or int64 and may be absent (it then defaults to 0, as constructing
        Flame's dataclass from such a document does). Anything else raises
        :class:`InvalidObjectRefError`: non-BSON bytes, missing ``endpoint``/``key``, extra keys, or
        fields of the wrong type.
        """
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"ObjectRef.decode() takes the bytes from ObjectRef.encode(), not {type(data).__name__}")
        raw = bytes(data)
        try:
            doc = bson.decode(raw)
        except bson.BSONDecodeError as exc:
            raise InvalidObjectRefError(
                FlameErrorCode.INVALID_ARGUMENT,
                f"these {len(raw)} bytes (starting {raw[:16]!r}) are not an encoded ObjectRef: {exc}; "
                "expected the output of ObjectRef.encode() (a BSON document with endpoint, key, version)",
            ) from exc
        return cls._from_document(doc)

    @classmethod
    def _from_document(cls, doc: dict[str, Any]) -> ObjectRef:
        extra = [k for k in doc if k not in _REF_FIELDS]
        if extra:
            raise InvalidObjectRefError(
                FlameErrorCode.INVALID_ARGUMENT,
                f"not an encoded ObjectRef: unexpected key(s) {extra}; an ObjectRef document has exactly "
                f"{list(_REF_FIELDS)}",
            )
        missing = [k for k in ("endpoint", "key") if k not in doc]
        if missing:
            raise InvalidObjectRefError(
                FlameErrorCode.INVALID_ARGUMENT,
                f"not an encoded ObjectRef: missing key(s) {missing}; an ObjectRef document has "
                f"{list(_REF_FIELDS)} (version optional)",
            )
        for name in ("endpoint", "key"):
            if not isinstance(doc[name], str):
                raise InvalidObjectRefError(
                    FlameErrorCode.INVALID_ARGUMENT,
                    f"not an encoded ObjectRef: {name} must be a BSON string, got {type(doc[name]).__name__}",
                )
        version = doc.get("version", 0)
        if isinstance(version, bool) or not isinstance(version, int) or version < 0:
            raise InvalidObjectRefError(
                FlameErrorCode.INVALID_ARGUMENT,
                f"not an encoded ObjectRef: version must be a non-negative BSON int32/int64, got {version!r}",
            )
        return cls(endpoint=doc["endpoint"], key=doc["key"], version=version)

    # -- flamepy.cache.v1 ---------------------------------------------------------------------------

    def to_proto(self) -> cache_pb2.ObjectRef:
        """The ``flamepy.cache.v1.ObjectRef`` message for this ref."""
        # protobuf only here: a service process decodes refs (BSON) and never needs it to start.
        from flamepy_core.wire.proto import cache_pb2

        return cache_pb2.ObjectRef(endpoint=self.endpoint, key=self.key, version=self.version)

    @classmethod
    def from_proto(cls, pb: cache_pb2.ObjectRef) -> ObjectRef:
        """Build from a ``flamepy.cache.v1.ObjectRef`` (a uint64 version above 2**63-1 is rejected)."""
        return cls(endpoint=pb.endpoint, key=pb.key, version=pb.version)


# --------------------------------------------------------------------------------------------------
# Keys

_FORM_PREFIX = "'<app>/<session>' (prefix)"
_FORM_FULL = "'<app>/<session>/<object-id>' (full key)"
_FORM_WILDCARD = "'<app>/*' (every session of an app)"


def _part_problem(value: str, what: str, *, star_ok: bool) -> str | None:
    """Why ``value`` is not a valid key part, or None when it is."""
    if value == "":
        return f"{what} is empty"
    if value == WILDCARD_SESSION and not star_ok:
        return f"{what} cannot be '*'"
    if "/" in value:
        return f"{what} {value!r} contains '/'"
    if "\\" in value:
        return f"{what} {value!r} contains '\\'"
    if ".." in value:
        return f"{what} {value!r} contains '..'"
    return None


def _key_problem(app: str, session: str, object_id: str | None) -> str | None:
    """The first rule ``app/session[/object_id]`` breaks, or None when it is a valid key or prefix."""
    problem = _part_problem(app, "application name", star_ok=False)
    if problem is None:
        problem = _part_problem(session, "session id", star_ok=True)
    if problem is None and object_id is not None:
        if session == WILDCARD_SESSION:
            problem = "session '*' (every session) is only allowed in the prefix '<app>/*', not in a full key"
        else:
            problem = _part_problem(object_id, "object id", star_ok=False)
    return problem


@dataclass(frozen=True)
class ObjectKey:
    """A parsed cache key: ``app/session`` (a prefix, ``object_id`` None) or ``app/session/object_id``.

    ``session`` may be :data:`WILDCARD_SESSION` only in a prefix. Construction validates the parts, so
    an ``ObjectKey`` in hand is always well formed; ``str(key)`` gives the wire string back.
    """

    app: str
    session: str
    object_id: str | None = None

    def __post_init__(self) -> None:
        for name in ("app", "session"):
            if not isinstance(getattr(self, name), str):
                raise TypeError(f"ObjectKey.{name} must be a str, got {type(getattr(self, name)).__name__}")
        if self.object_id is not None and not isinstance(self.object_id, str):
            raise TypeError(f"ObjectKey.object_id must be a str or None, got {type(self.object_id).__name__}")
        problem = _key_problem(self.app, self.session, self.object_id)
        if problem is not None:
            raise ValueError(f"invalid object key {str(self)!r}: {problem}")

    def __str__(self) -> str:
        if self.object_id is None:
            return f"{self.app}/{self.session}"
        return f"{self.app}/{self.session}/{self.object_id}"

    @property
    def is_prefix(self) -> bool:
        """True for ``app/session`` and ``app/*`` (no object id)."""
        return self.object_id is None

    @property
    def is_wildcard(self) -> bool:
        """True for ``app/*``."""
        return self.session == WILDCARD_SESSION

    @property
    def prefix(self) -> ObjectKey:
        """The ``app/session`` prefix this key lives under (itself for a prefix)."""
        return ObjectKey(self.app, self.session) if self.object_id is not None else self

    def covers(self, other: ObjectKey | str) -> bool:
        """Whether ``other`` (a key or prefix) falls under this key, as a delete with this key would remove.

        ``app/*`` covers everything of ``app``; ``app/ssn`` covers that session's keys and itself; a full
        key covers only itself.
        """
        target = other if isinstance(other, ObjectKey) else ObjectKey.parse(other, wildcard=True)
        if target.app != self.app:
            return False
        if self.is_wildcard:
            return True
        if self.object_id is None:
            return target.session == self.session
        return target == self

    @classmethod
    def parse(cls, text: str, *, prefix: bool = True, full: bool = True, wildcard: bool = False) -> ObjectKey:
        """Parse ``text`` accepting the forms switched on by the flags.

        ``prefix``: ``<app>/<session>``; ``full``: ``<app>/<session>/<object-id>``; ``wildcard``:
        ``<app>/*``. Every rejection is a ``ValueError`` naming the string, the part at fault and the
        accepted forms.
        """
        forms = [f for f, on in ((_FORM_PREFIX, prefix), (_FORM_FULL, full), (_FORM_WILDCARD, wildcard)) if on]
        accepted = "accepted: " + ", ".join(forms)
        if not isinstance(text, str):
            raise TypeError(f"object key must be a str, got {type(text).__name__}; {accepted}")
        parts = text.split("/")
        if len(parts) not in (2, 3):
            raise ValueError(
                f"invalid object key {text!r}: has {len(parts)} part(s) separated by '/', expected 2 or 3; {accepted}"
            )
        app, session = parts[0], parts[1]
        object_id = parts[2] if len(parts) == 3 else None
        key_problem = _key_problem(app, session, object_id)
        if key_problem is not None:
            raise ValueError(f"invalid object key {text!r}: {key_problem}; {accepted}")
        if object_id is not None and not full:
            raise ValueError(
                f"invalid object key {text!r}: a full key with an object id is not accepted here; {accepted}"
            )
        if object_id is None and session == WILDCARD_SESSION and not wildcard:
            raise ValueError(
                f"invalid object key {text!r}: session '*' (every session) is only accepted when deleting "
                f"objects; {accepted}"
            )
        if object_id is None and session != WILDCARD_SESSION and not prefix:
            raise ValueError(f"invalid object key {text!r}: the object id is missing; {accepted}")
        return cls(app, session, object_id)


def parse_prefix(text: str) -> ObjectKey:
    """Parse a put prefix ``"<app>/<session>"`` (no object id, no ``*``)."""
    return ObjectKey.parse(text, prefix=True, full=False, wildcard=False)


def parse_full_key(text: str) -> ObjectKey:
    """Parse a full object key ``"<app>/<session>/<object-id>"`` (get, update, patch, download)."""
    return ObjectKey.parse(text, prefix=False, full=True, wildcard=False)


def parse_key_or_prefix(text: str) -> ObjectKey:
    """Parse a full key or a prefix, but not ``"<app>/*"`` (upload takes either)."""
    return ObjectKey.parse(text, prefix=True, full=True, wildcard=False)


def parse_delete_prefix(text: str) -> ObjectKey:
    """Parse what delete accepts: a full key, ``"<app>/<session>"`` or ``"<app>/*"``."""
    return ObjectKey.parse(text, prefix=True, full=True, wildcard=True)
