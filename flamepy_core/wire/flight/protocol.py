"""The pieces of Flame's Flight cache protocol that client and server share (needs pyarrow).

The protocol, as Flame's cache server and SDK speak it:

* ``do_put``: descriptor *path* ``[prefix or full key]`` stores a base (a prefix gets a new object id),
  descriptor *command* ``PATCH:<full key>`` appends a patch. The upload is rows of ``version: uint64``
  (0) and ``data: binary`` whose ``data`` are concatenated; or, for tables, the table itself with schema
  metadata ``flame.cache.format = arrow-table-v1``. The answer is one ``PutResult`` whose
  ``app_metadata`` is the BSON document ``{endpoint, key, version: int64}``.
* ``do_get`` ticket ``"<key>[:<client version>]"``: rows ``version: uint64, kind: utf8, data: binary``
  — a ``base`` row then ``patch`` rows (full), ``patch`` rows only (the reader is behind by patches), or
  none at all (the reader is current). Native tables come back whole with their own schema.
* ``do_action("DELETE", key or prefix)`` answers ``"OK"``; ``get_flight_info`` and ``list_flights``
  describe objects.

Errors travel as gRPC statuses: not found as NOT_FOUND (``pyarrow.ArrowKeyError`` in Python), a bad
key as INVALID_ARGUMENT (``pyarrow.ArrowInvalid``). flamepy's server adds the exact
:class:`~flamepy_core.contracts.errors.FlameErrorCode` in a Flight error's ``extra_info`` where the
gRPC status has no room for it; :func:`flame_error` maps every pyarrow error back to a code.
"""

from __future__ import annotations

import struct
from typing import Any, NoReturn

import pyarrow as pa
import pyarrow.flight as flight

from flamepy_core.contracts.errors import FlameError, FlameErrorCode

__all__ = [
    "CACHE_FORMAT_KEY",
    "CACHE_VERSION_KEY",
    "DELETE_ACTION",
    "ERROR_CODES",
    "FLIGHT_ERRORS",
    "KIND_BASE",
    "KIND_PATCH",
    "LOGICAL_TYPE_KEY",
    "PATCH_COMMAND",
    "PUT_SCHEMA",
    "REPLY_SCHEMA",
    "encode_put_result",
    "flame_code",
    "flame_error",
    "flight_error",
    "is_native",
    "native_value",
    "parse_ticket",
]

FIELD_VERSION = "version"
FIELD_KIND = "kind"
FIELD_DATA = "data"
KIND_BASE = "base"
KIND_PATCH = "patch"
PATCH_COMMAND = b"PATCH:"
DELETE_ACTION = "DELETE"
OK = b"OK"

CACHE_FORMAT_KEY = b"flame.cache.format"
CACHE_VERSION_KEY = b"flame.cache.version"
LOGICAL_TYPE_KEY = b"flame.cache.logical_type"
FORMAT_ARROW_TABLE = b"arrow-table-v1"
_CACHE_METADATA_PREFIX = b"flame.cache."

PUT_SCHEMA = pa.schema([pa.field(FIELD_VERSION, pa.uint64()), pa.field(FIELD_DATA, pa.binary())])
"""What a client uploads: one row per chunk, ``data`` concatenated by the server."""
REPLY_SCHEMA = pa.schema(
    [pa.field(FIELD_VERSION, pa.uint64()), pa.field(FIELD_KIND, pa.utf8()), pa.field(FIELD_DATA, pa.binary())]
)
"""What ``do_get`` answers for an opaque (non-table) object."""

EXTRA_INFO_PREFIX = b"flamepy:"


def encode_put_result(endpoint: str, key: str, version: int) -> bytes:
    """The BSON ``{endpoint, key, version}`` of a ``PutResult``, with ``version`` always int64 as Flame's server.

    Written by hand because :mod:`flamepy_core.bson` (rightly, for ``ObjectRef.encode``) picks int32
    whenever a value fits; readers accept both widths.
    """
    body = bytearray()
    for name, text in (("endpoint", endpoint), ("key", key)):
        data = text.encode("utf-8")
        body += b"\x02" + name.encode() + b"\x00" + struct.pack("<i", len(data) + 1) + data + b"\x00"
    body += b"\x12version\x00" + struct.pack("<q", version)
    return struct.pack("<i", len(body) + 5) + bytes(body) + b"\x00"


def parse_ticket(ticket: bytes) -> tuple[str, int]:
    """``b"<key>:<version>"`` -> (key, version); no (numeric) suffix means version 0, a full fetch."""
    try:
        text = ticket.decode("utf-8")
    except UnicodeDecodeError:
        raise pa.ArrowInvalid("a do_get ticket is '<key>[:<version>]' in UTF-8") from None
    key, sep, version = text.rpartition(":")
    if sep and version.isdigit():
        return key, int(version)
    return text, 0


def is_native(schema: Any) -> bool:
    """Whether a schema carries a native Arrow table (Flame's ``arrow-table-v1`` format)."""
    return bool((schema.metadata or {}).get(CACHE_FORMAT_KEY) == FORMAT_ARROW_TABLE)


def native_version(schema: Any) -> int:
    """The server version Flame's server writes into a native table's schema (0 when absent)."""
    raw = (schema.metadata or {}).get(CACHE_VERSION_KEY, b"0")
    try:
        return int(raw.decode())
    except ValueError:
        return 0


def native_value(table: Any) -> Any:
    """The value a native table stands for, as Flame's SDK returns it.

    The ``flame.cache.*`` metadata is dropped; a pandas or polars DataFrame comes back as one when that
    library is installed, a record batch as a ``RecordBatch``, anything else as the ``Table``.
    """
    metadata = table.schema.metadata or {}
    logical = metadata.get(LOGICAL_TYPE_KEY, b"pyarrow.table").decode()
    kept = {k: v for k, v in metadata.items() if not k.startswith(_CACHE_METADATA_PREFIX)}
    table = table.replace_schema_metadata(kept or None)
    if logical == "pyarrow.record_batch":
        batches = table.to_batches()
        return batches[0] if len(batches) == 1 else table
    if logical == "pandas.dataframe":
        try:
            return table.to_pandas()
        except ImportError:
            return table
    if logical == "polars.dataframe":
        try:
            import polars

            return polars.from_arrow(table)
        except ImportError:
            return table
    return table


# -- errors --------------------------------------------------------------------------------------


def flight_error(exc: FlameError) -> NoReturn:
    """Raise the Flight error a Flame client expects for ``exc`` (a server handler's last step).

    NOT_FOUND and INVALID_ARGUMENT use the exceptions pyarrow turns into those gRPC statuses, which is what
    Flame's SDK sees from Flame's server; other codes ride in ``extra_info`` so a flamepy client keeps them.
    """
    message = exc.message
    if exc.code == FlameErrorCode.NOT_FOUND:
        raise pa.ArrowKeyError(message) from None
    if exc.code in (FlameErrorCode.INVALID_ARGUMENT, FlameErrorCode.INVALID_CONFIG):
        raise pa.ArrowInvalid(message) from None
    extra = EXTRA_INFO_PREFIX + exc.code.name.encode()
    if exc.code == FlameErrorCode.UNAVAILABLE:
        raise flight.FlightUnavailableError(message, extra_info=extra) from None
    if exc.code == FlameErrorCode.INTERNAL:
        raise flight.FlightInternalError(message, extra_info=extra) from None
    raise flight.FlightServerError(message, extra_info=extra) from None


# Most specific first: FlightError subclasses before the ArrowException family.
ERROR_CODES: tuple[tuple[type[BaseException], FlameErrorCode], ...] = (
    (flight.FlightUnavailableError, FlameErrorCode.UNAVAILABLE),
    (flight.FlightTimedOutError, FlameErrorCode.DEADLINE_EXCEEDED),
    (flight.FlightCancelledError, FlameErrorCode.CANCELLED),
    (flight.FlightUnauthenticatedError, FlameErrorCode.UNAUTHENTICATED),
    (flight.FlightUnauthorizedError, FlameErrorCode.PERMISSION_DENIED),
    (flight.FlightWriteSizeExceededError, FlameErrorCode.MESSAGE_TOO_LARGE),
    (flight.FlightInternalError, FlameErrorCode.INTERNAL),
    (flight.FlightServerError, FlameErrorCode.INTERNAL),
    (pa.ArrowKeyError, FlameErrorCode.NOT_FOUND),
    (pa.ArrowInvalid, FlameErrorCode.INVALID_ARGUMENT),
    (pa.ArrowTypeError, FlameErrorCode.INVALID_ARGUMENT),
    (pa.ArrowNotImplementedError, FlameErrorCode.UNIMPLEMENTED),
    (pa.ArrowCapacityError, FlameErrorCode.MESSAGE_TOO_LARGE),
    (pa.ArrowIndexError, FlameErrorCode.INVALID_ARGUMENT),
    (pa.ArrowMemoryError, FlameErrorCode.RESOURCE_EXHAUSTED),
    (pa.ArrowCancelled, FlameErrorCode.CANCELLED),
    (pa.ArrowSerializationError, FlameErrorCode.INTERNAL),
    (flight.FlightError, FlameErrorCode.INTERNAL),
    (pa.ArrowException, FlameErrorCode.INTERNAL),
    (OSError, FlameErrorCode.UNAVAILABLE),  # pyarrow.ArrowIOError is OSError: the connection failed
)
"""Every error pyarrow's Flight client raises, and its code; a test walks pyarrow's classes against it."""

FLIGHT_ERRORS: tuple[type[BaseException], ...] = (pa.ArrowException, flight.FlightError, OSError)
"""What a pyarrow Flight call can raise (``FlightError`` itself is not an ``ArrowException``)."""


def flame_code(exc: BaseException) -> FlameErrorCode:
    """The :class:`FlameErrorCode` for an error raised by a pyarrow Flight call."""
    extra = getattr(exc, "extra_info", None)
    if isinstance(extra, bytes) and extra.startswith(EXTRA_INFO_PREFIX):
        name = extra[len(EXTRA_INFO_PREFIX) :].decode(errors="replace")
        if name in FlameErrorCode.__members__:
            return FlameErrorCode[name]
    for cls, code in ERROR_CODES:
        if isinstance(exc, cls):
            return code
    return FlameErrorCode.INTERNAL


def _clean(message: str) -> str:
    """The server's message without pyarrow's transport detail (``. Detail: ...`` and the traceback)."""
    text = message.split(". Detail: ", 1)[0].split("\nDetail: ", 1)[0].strip()
    if len(text) >= 2 and text[0] == text[-1] == "'":  # a KeyError's repr quotes
        text = text[1:-1]
    return text or message.strip() or type(message).__name__


def flame_error(exc: BaseException, what: str) -> FlameError:
    """``FlameError(code, "failed to <what>: <server message>")`` for a pyarrow Flight error."""
    return FlameError(flame_code(exc), f"failed to {what}: {_clean(str(exc))}")
