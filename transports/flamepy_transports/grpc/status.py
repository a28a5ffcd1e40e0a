"""The two-way mapping between :class:`FlameErrorCode` and gRPC status codes.

Server side, a handler's ``FlameError`` becomes the status Flame's own server sends for it (so a plain
gRPC client, Flame's included, sees what it expects) plus the trailing metadata ``flame-error-code``,
which lets *our* client restore the exact code: INVALID_STATE travels as gRPC INVALID_ARGUMENT, yet
comes back out as INVALID_STATE.

Client side, the trailer wins when present; otherwise every gRPC status code maps to a FlameErrorCode
(:data:`GRPC_TO_FLAME` lists all of them explicitly, and a test proves none is missing).
"""

from __future__ import annotations

from collections.abc import Iterable
from types import MappingProxyType
from typing import Any

import grpc

from flamepy_core.contracts.errors import FlameError, FlameErrorCode
from flamepy_core.transport_kit import RAISE_THE_LIMIT

ERROR_CODE_KEY = "flame-error-code"
"""Trailing-metadata key carrying ``int(FlameErrorCode)`` from our server to our client."""

FLAME_TO_GRPC: MappingProxyType[FlameErrorCode, grpc.StatusCode] = MappingProxyType(
    {
        # Flame's server mapping (what Flame's own clients see).
        FlameErrorCode.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
        FlameErrorCode.ALREADY_EXISTS: grpc.StatusCode.ALREADY_EXISTS,
        FlameErrorCode.INVALID_CONFIG: grpc.StatusCode.INVALID_ARGUMENT,
        FlameErrorCode.INVALID_STATE: grpc.StatusCode.INVALID_ARGUMENT,
        FlameErrorCode.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
        FlameErrorCode.INTERNAL: grpc.StatusCode.INTERNAL,
        # flamepy's transport codes: the natural status.
        FlameErrorCode.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
        FlameErrorCode.DEADLINE_EXCEEDED: grpc.StatusCode.DEADLINE_EXCEEDED,
        FlameErrorCode.UNIMPLEMENTED: grpc.StatusCode.UNIMPLEMENTED,
        FlameErrorCode.MESSAGE_TOO_LARGE: grpc.StatusCode.RESOURCE_EXHAUSTED,
        FlameErrorCode.CANCELLED: grpc.StatusCode.CANCELLED,
        FlameErrorCode.UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
        FlameErrorCode.PERMISSION_DENIED: grpc.StatusCode.PERMISSION_DENIED,
        FlameErrorCode.RESOURCE_EXHAUSTED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)
"""The status a handler's ``FlameError`` is sent with."""

GRPC_TO_FLAME: MappingProxyType[grpc.StatusCode, FlameErrorCode] = MappingProxyType(
    {
        grpc.StatusCode.OK: FlameErrorCode.INTERNAL,  # an RpcError that claims OK is a broken peer
        grpc.StatusCode.CANCELLED: FlameErrorCode.CANCELLED,
        grpc.StatusCode.UNKNOWN: FlameErrorCode.INTERNAL,
        grpc.StatusCode.INVALID_ARGUMENT: FlameErrorCode.INVALID_ARGUMENT,
        grpc.StatusCode.DEADLINE_EXCEEDED: FlameErrorCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.NOT_FOUND: FlameErrorCode.NOT_FOUND,
        grpc.StatusCode.ALREADY_EXISTS: FlameErrorCode.ALREADY_EXISTS,
        grpc.StatusCode.PERMISSION_DENIED: FlameErrorCode.PERMISSION_DENIED,
        grpc.StatusCode.RESOURCE_EXHAUSTED: FlameErrorCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.FAILED_PRECONDITION: FlameErrorCode.INVALID_STATE,
        grpc.StatusCode.ABORTED: FlameErrorCode.INTERNAL,
        grpc.StatusCode.OUT_OF_RANGE: FlameErrorCode.INTERNAL,
        grpc.StatusCode.UNIMPLEMENTED: FlameErrorCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL: FlameErrorCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE: FlameErrorCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS: FlameErrorCode.INTERNAL,
        grpc.StatusCode.UNAUTHENTICATED: FlameErrorCode.UNAUTHENTICATED,
    }
)
"""The FlameErrorCode for a status that arrived without our trailer (a foreign server, or the library)."""

_SIZE_LIMIT_MARKER = "message larger than max"
"""In gRPC's details when its own size limit refused a message ("Received message larger than max (N vs. M)")."""


MAX_METADATA_SIZE = 1024 * 1024
"""Bytes of headers/trailers our client and server accept (gRPC's default of 8 KiB cuts long messages)."""
MAX_MESSAGE_BYTES = MAX_METADATA_SIZE // 4
"""Longest error message (UTF-8 bytes) sent whole: gRPC percent-encodes non-ASCII bytes up to 3x."""


def wire_message(message: str) -> str:
    """``message`` as sent in the status details: whole, unless it could not fit in the trailers."""
    data = message.encode("utf-8", "surrogatepass")
    if len(data) <= MAX_MESSAGE_BYTES:
        return message
    kept = data[:MAX_MESSAGE_BYTES].decode("utf-8", "ignore")
    return f"{kept}... [error message truncated from {len(data)} bytes]"


def status_for(code: FlameErrorCode) -> grpc.StatusCode:
    """The gRPC status a ``FlameError`` of ``code`` is sent with."""
    return FLAME_TO_GRPC[code]


def trailer_for(code: FlameErrorCode) -> tuple[tuple[str, str], ...]:
    """The trailing metadata that carries ``code`` exactly."""
    return ((ERROR_CODE_KEY, str(int(code))),)


def code_from_trailer(metadata: Iterable[Any] | None) -> FlameErrorCode | None:
    """The FlameErrorCode our server put in the trailing metadata, or ``None`` when there is none."""
    for item in metadata or ():
        key, value = item[0], item[1]
        if key != ERROR_CODE_KEY:
            continue
        if isinstance(value, bytes):
            value = value.decode("ascii", "replace")
        try:
            return FlameErrorCode(int(value))
        except ValueError:  # not a number, or a code this version does not know
            return None
    return None


def flame_code_for(status: grpc.StatusCode | None, details: str = "") -> FlameErrorCode:
    """The FlameErrorCode for a gRPC status that carried no ``flame-error-code`` trailer."""
    if status is None:
        return FlameErrorCode.INTERNAL
    if status == grpc.StatusCode.RESOURCE_EXHAUSTED and _SIZE_LIMIT_MARKER in details:
        return FlameErrorCode.MESSAGE_TOO_LARGE  # the library's own size limit, on either side
    return GRPC_TO_FLAME.get(status, FlameErrorCode.INTERNAL)


def error_from_status(
    status: grpc.StatusCode | None,
    details: str | None,
    trailing_metadata: Iterable[Any] | None,
    *,
    endpoint: str,
    method: str,
    timeout: float | None = None,
    hint: str | None = None,
) -> FlameError:
    """The FlameError a failed call raises.

    With our trailer, the handler's own error comes back unchanged (code and message). Without it,
    the message names the endpoint, the method, the gRPC status and the server's details; ``hint`` (why
    the peer could not be reached, e.g. a TLS mismatch) goes before gRPC's own words.
    """
    text = details or ""
    exact = code_from_trailer(trailing_metadata)
    if exact is not None:
        return FlameError(exact, text)
    code = flame_code_for(status, text)
    status_name = status.name if status is not None else "no status"
    said = f": {text}" if text else ""
    if code == FlameErrorCode.UNAVAILABLE:
        why = f": {hint}" if hint else ""
        message = f"cannot reach {endpoint} for {method}{why} (gRPC {status_name}{said})"
    elif code == FlameErrorCode.DEADLINE_EXCEEDED:
        message = f"{method} on {endpoint} did not answer within its deadline of {timeout} s (gRPC {status_name}{said})"
    elif code == FlameErrorCode.UNIMPLEMENTED:
        message = f"the server at {endpoint} has no method {method} (gRPC {status_name}{said})"
    elif code == FlameErrorCode.MESSAGE_TOO_LARGE:
        # gRPC's own words carry both sizes ("Received message larger than max (N vs. M)").
        message = f"{method} on {endpoint}: a message is too large (gRPC {status_name}{said}); {RAISE_THE_LIMIT}"
    else:
        message = f"{method} on {endpoint} failed with gRPC {status_name}{said}"
    return FlameError(code, message)
