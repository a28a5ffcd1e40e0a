"""``FlameError`` and its codes: the one error type that crosses every layer and every transport.

The first six codes are Flame's own, with Flame's numbers, so code written against Flame's SDK that
compares ``err.code`` keeps working. The codes after them are what a transport needs to say precisely
what went wrong on the way (unavailable peer, missed deadline, unknown method, oversized message...),
instead of folding everything into INTERNAL as Flame 0.6 does.
"""

from __future__ import annotations

from enum import IntEnum


class FlameErrorCode(IntEnum):
    """Error codes. 0-5 are Flame's published values; 6 and up are flamepy's transport codes."""

    INVALID_CONFIG = 0
    INVALID_STATE = 1
    INVALID_ARGUMENT = 2
    INTERNAL = 3
    ALREADY_EXISTS = 4
    NOT_FOUND = 5
    # Transport-level codes (flamepy).
    UNAVAILABLE = 6
    """The peer cannot be reached: nothing listens, or it went away mid-call."""
    DEADLINE_EXCEEDED = 7
    """The call's deadline passed before an answer arrived."""
    UNIMPLEMENTED = 8
    """The server has no handler for the method."""
    MESSAGE_TOO_LARGE = 9
    """A message is larger than the transport (or the peer) accepts; refused before sending."""
    CANCELLED = 10
    """The call was cancelled (by the caller, or the server shut down while serving it)."""
    UNAUTHENTICATED = 11
    """The peer did not prove who it is (TLS client certificate, CURVE key...)."""
    PERMISSION_DENIED = 12
    """The peer is known but not allowed to do this."""
    RESOURCE_EXHAUSTED = 13
    """The server is overloaded and refused the request (backpressure); retrying later may succeed."""


class FlameError(Exception):
    """An error with a :class:`FlameErrorCode`. ``str(e)`` reads ``"<message> (code: <n>)"`` as Flame's does."""

    def __init__(self, code: FlameErrorCode | int, message: str) -> None:
        self.code = FlameErrorCode(code)
        self.message = message
        super().__init__(code, message)

    def __str__(self) -> str:
        return f"{self.message} (code: {int(self.code)})"

    def __repr__(self) -> str:
        return f"FlameError({self.code.name}, {self.message!r})"

    def __reduce__(self) -> tuple[type[FlameError], tuple[int, str]]:
        # Keep the (code, message) constructor when pickled across processes.
        return (type(self), (int(self.code), self.message))
