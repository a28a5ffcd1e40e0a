"""Transports that get sizes and names wrong, each the way a real one might (see ``broken_transports.py``).

* ``broken-wirelimit`` - declares the largest message it is asked for, but leaves its library's own
  default limit of 4 MiB in place on the wire (as gRPC's receive limit is, unless raised);
* ``broken-kibround``  - hands the ``max_message_size`` option to a library that takes the limit in KiB,
  rounded down: a limit that is not a multiple of 1024 refuses messages it declares it carries;
* ``broken-methodcut`` - sends the method path with a one-byte length, so paths over 255 bytes are cut
  (and reach no handler);
* ``broken-errorcut``  - carries error messages in a fixed 1 KiB slot, cut at 1,024 characters.
"""

from __future__ import annotations

from collections.abc import Iterator

from broken_transports import InmemWithFlaw, _Wrapped, channel_flaw

from flamepy_core.contracts.errors import FlameError
from flamepy_core.contracts.transport import DEFAULT_TIMEOUT, Timeout

LIBRARY_DEFAULT_LIMIT = 4 * 1024 * 1024


class WireLimitTransport(InmemWithFlaw):
    name = "broken-wirelimit"
    fault = "declares the largest message asked for, but its wire keeps a library default of 4 MiB"

    def wire_limit(self, declared: int) -> int:
        return min(declared, LIBRARY_DEFAULT_LIMIT)


class KibRoundTransport(InmemWithFlaw):
    name = "broken-kibround"
    fault = "passes max_message_size to its wire in whole KiB, rounded down"

    def wire_limit(self, declared: int) -> int:
        return max(1024, declared // 1024 * 1024)


class CutMethodChannel(_Wrapped):
    """Sends method paths with a one-byte length: anything past 255 bytes is cut."""

    def unary(self, method: str, request: bytes, timeout: Timeout = DEFAULT_TIMEOUT) -> bytes:
        return self._inner.unary(method.encode()[:255].decode(), request, timeout)

    def stream(self, method: str, request: bytes, timeout: Timeout = DEFAULT_TIMEOUT) -> Iterator[bytes]:
        return self._inner.stream(method.encode()[:255].decode(), request, timeout)


def _cut(err: FlameError) -> FlameError:
    return FlameError(err.code, err.message[:1024])


class CutErrorChannel(_Wrapped):
    """Carries error messages in a fixed 1 KiB slot: cut at 1,024 characters."""

    def unary(self, method: str, request: bytes, timeout: Timeout = DEFAULT_TIMEOUT) -> bytes:
        try:
            return self._inner.unary(method, request, timeout)
        except FlameError as err:
            raise _cut(err) from err

    def stream(self, method: str, request: bytes, timeout: Timeout = DEFAULT_TIMEOUT) -> Iterator[bytes]:
        try:
            items = self._inner.stream(method, request, timeout)
        except FlameError as err:
            raise _cut(err) from err

        def cutting() -> Iterator[bytes]:
            try:
                yield from items
            except FlameError as err:
                raise _cut(err) from err

        return cutting()


BROKEN = [
    WireLimitTransport,
    KibRoundTransport,
    channel_flaw("methodcut", CutMethodChannel),
    channel_flaw("errorcut", CutErrorChannel),
]
