"""Transports that get deadlines wrong, each the way a real one might (see ``broken_transports.py``).

* ``broken-itemdeadline`` - times out each item of a stream, as a per-receive socket timeout does,
  instead of the stream as a whole: a stream whose items keep coming never ends;
* ``broken-nodefault``    - takes an omitted timeout for "no deadline" (``timeout=None`` as the
  parameter's default), so calls made without one can wait forever;
* ``broken-roundup``      - sends the deadline to the server in whole seconds, rounded up (an integer
  header field): the handler believes it has more time than its caller will wait;
* ``broken-noneisdefault`` - treats ``timeout=None`` like an omitted timeout (``timeout or default``),
  so a call that asked for no deadline is cut at the channel's default;
* ``broken-idlecut``      - watches streams without a deadline for a dead peer: a stream silent for the
  channel's default timeout is cut with ``UNAVAILABLE``, so a stream idle for long never survives (its
  calls, and streams with a deadline, are untouched).
"""

from __future__ import annotations

import math
import queue
import threading
from collections.abc import Callable, Iterator

from broken_transports import InmemWithFlaw, _Wrapped, channel_flaw

from flamepy_core.contracts.errors import FlameError
from flamepy_core.contracts.transport import DEFAULT_TIMEOUT, Channel, Timeout
from flamepy_core.transport_kit import DEFAULT_CALL_TIMEOUT, deadline_exceeded, resolve_timeout, unavailable

_END = object()


def _each_item_within(inner: Iterator[bytes], seconds: float, silence: Callable[[], FlameError]) -> Iterator[bytes]:
    """``inner``'s items, read on a pump thread; no item for ``seconds`` raises ``silence()``."""
    arrived: queue.SimpleQueue[object] = queue.SimpleQueue()

    def pump() -> None:
        try:
            for item in inner:
                arrived.put(item)
            arrived.put(_END)
        except FlameError as err:
            arrived.put(err)

    threading.Thread(target=pump, name="broken-per-item-pump", daemon=True).start()
    while True:
        try:
            item = arrived.get(timeout=seconds)  # a fresh timeout for every item
        except queue.Empty:
            raise silence() from None
        if item is _END:
            return
        if isinstance(item, FlameError):
            raise item
        assert isinstance(item, bytes)
        yield item


class PerItemDeadlineChannel(_Wrapped):
    """Times out each stream item (a per-receive timeout), not the whole stream."""

    def stream(self, method: str, request: bytes, timeout: Timeout = DEFAULT_TIMEOUT) -> Iterator[bytes]:
        seconds = resolve_timeout(timeout, DEFAULT_CALL_TIMEOUT)
        inner = self._inner.stream(method, request, None)  # the deadline is enforced here, per item
        if seconds is None:
            return inner
        return _each_item_within(inner, seconds, lambda: deadline_exceeded(method, self.endpoint, seconds))


class DefaultIsNoneChannel(_Wrapped):
    """Takes an omitted timeout for no deadline at all."""

    def unary(self, method: str, request: bytes, timeout: Timeout = DEFAULT_TIMEOUT) -> bytes:
        return self._inner.unary(method, request, None if timeout is DEFAULT_TIMEOUT else timeout)

    def stream(self, method: str, request: bytes, timeout: Timeout = DEFAULT_TIMEOUT) -> Iterator[bytes]:
        return self._inner.stream(method, request, None if timeout is DEFAULT_TIMEOUT else timeout)


def _whole_seconds(timeout: Timeout) -> Timeout:
    if timeout is None or timeout is DEFAULT_TIMEOUT:
        return timeout
    return float(math.ceil(float(timeout)))  # type: ignore[arg-type]


class WholeSecondsChannel(_Wrapped):
    """Sends the deadline in whole seconds, rounded up."""

    def unary(self, method: str, request: bytes, timeout: Timeout = DEFAULT_TIMEOUT) -> bytes:
        return self._inner.unary(method, request, _whole_seconds(timeout))

    def stream(self, method: str, request: bytes, timeout: Timeout = DEFAULT_TIMEOUT) -> Iterator[bytes]:
        return self._inner.stream(method, request, _whole_seconds(timeout))


class NoneIsDefaultChannel(_Wrapped):
    """Treats timeout=None like an omitted timeout: the channel's default deadline applies."""

    def unary(self, method: str, request: bytes, timeout: Timeout = DEFAULT_TIMEOUT) -> bytes:
        return self._inner.unary(method, request, timeout or DEFAULT_TIMEOUT)

    def stream(self, method: str, request: bytes, timeout: Timeout = DEFAULT_TIMEOUT) -> Iterator[bytes]:
        return self._inner.stream(method, request, timeout or DEFAULT_TIMEOUT)


class IdleWatchdogChannel(_Wrapped):
    """Cuts a stream without a deadline once it has been silent for the channel's default timeout."""

    def __init__(self, inner: Channel, idle_s: float | None) -> None:
        super().__init__(inner)
        self._idle_s = idle_s

    def stream(self, method: str, request: bytes, timeout: Timeout = DEFAULT_TIMEOUT) -> Iterator[bytes]:
        inner = self._inner.stream(method, request, timeout)
        idle_s = self._idle_s
        if timeout is not None or idle_s is None:
            return inner  # a deadline ends a dead stream anyway: only deadline-less ones are watched
        detail = f"stream {method} silent for {idle_s} s, the peer is presumed gone"
        return _each_item_within(inner, idle_s, lambda: unavailable(self.endpoint, detail))


class IdleCutTransport(InmemWithFlaw):
    name = "broken-idlecut"
    fault = "cuts a stream without a deadline after the default timeout of silence (a dead-peer watchdog)"

    def wrap(self, channel: Channel) -> Channel:
        return IdleWatchdogChannel(channel, self.default_timeout)


BROKEN = [
    channel_flaw("itemdeadline", PerItemDeadlineChannel),
    channel_flaw("nodefault", DefaultIsNoneChannel),
    channel_flaw("roundup", WholeSecondsChannel),
    channel_flaw("noneisdefault", NoneIsDefaultChannel),
    IdleCutTransport,
]
