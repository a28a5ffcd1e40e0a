"""Deadlines, as a caller sets them and as a handler sees them (a mixin of ``TransportTests``).

What the contract says and this module checks:

* a stream's deadline covers the whole stream, not each item: a stream whose items keep coming, each well
  within the deadline, still ends with ``DEADLINE_EXCEEDED`` when the deadline passes;
* a call made with the default timeout (``DEFAULT_TIMEOUT``, what a caller gets by passing nothing) has
  the transport's documented default deadline (the kit's 60 s unless the ``default_timeout`` option says
  otherwise), never none;
* the handler sees the deadline the caller set: ``ctx.time_remaining()`` is the caller's timeout less the
  time the request took to arrive, give or take :data:`~flamepy_core.contracts.bounds.DEADLINE_ROUND_UP`;
* ``timeout=None`` is no deadline at all: a call or a stream that stays idle for longer than the channel's
  default deadline is not cut.
"""

from __future__ import annotations

import json
import struct
import threading
import time
from collections.abc import Iterator
from typing import ClassVar

from hypothesis import example, given
from hypothesis import strategies as st

from flamepy_conformance.capabilities import Capability
from flamepy_conformance.probe import PROBE_SERVICE, probe_handlers
from flamepy_conformance.transport_base import TransportSuiteBase, _show, expect_error
from flamepy_core.contracts.bounds import DEADLINE_RESOLUTION_S, DEADLINE_ROUND_UP
from flamepy_core.contracts.errors import FlameError, FlameErrorCode
from flamepy_core.contracts.transport import (
    DEFAULT_TIMEOUT,
    CallContext,
    Channel,
    Handler,
    StreamHandler,
    UnaryHandler,
)

_STEADY = f"{PROBE_SERVICE}/SteadyStream"
_INSPECT = f"{PROBE_SERVICE}/InspectDeadline"
_INSPECT_STREAM = f"{PROBE_SERVICE}/InspectDeadlineStream"
_IDLE = f"{PROBE_SERVICE}/Idle"
_IDLE_STREAM = f"{PROBE_SERVICE}/IdleStream"
_INDEX = struct.Struct(">I")


def _remaining(ctx: CallContext) -> bytes:
    return json.dumps({"remaining": ctx.time_remaining()}).encode()


def _inspect(request: bytes, ctx: CallContext) -> bytes:
    return _remaining(ctx)


def _inspect_stream(request: bytes, ctx: CallContext) -> Iterator[bytes]:
    yield _remaining(ctx)


def _inspect_handlers() -> dict[str, Handler]:
    return {_INSPECT: UnaryHandler(_inspect), _INSPECT_STREAM: StreamHandler(_inspect_stream)}


def assert_deadline_seen(seen: object, timeout: float, elapsed: float, what: str) -> None:
    """A handler's ``time_remaining()`` agrees with the caller's ``timeout`` (``elapsed``: the call's duration).

    The handler ran somewhere inside the call, so the caller had between ``timeout - elapsed`` and
    ``timeout`` seconds left then; the handler may see up to :data:`DEADLINE_ROUND_UP` more (gRPC rounds
    deadlines up), and :data:`DEADLINE_RESOLUTION_S` either way.
    """
    assert seen is not None, f"{what}: the handler's ctx.time_remaining() is None, but the caller set {timeout} s"
    assert isinstance(seen, (int, float)), f"{what}: ctx.time_remaining() returned {seen!r}"
    low = timeout - elapsed - DEADLINE_RESOLUTION_S
    high = timeout * (1 + DEADLINE_ROUND_UP) + DEADLINE_RESOLUTION_S
    assert low <= seen <= high, (
        f"{what}: the handler saw {seen:.6f} s remaining; the caller set {timeout} s and the call took "
        f"{elapsed:.4f} s, so it must be within [{low:.6f}, {high:.6f}]"
    )


class DeadlineTests(TransportSuiteBase):
    """Deadlines: whole-stream deadlines, the default deadline, the handler's view of it, and no deadline."""

    stream_deadline_s: ClassVar[float] = 0.6
    """The deadline of the whole-stream test; its handler yields an item every quarter of it."""
    short_default_timeout_s: ClassVar[float] = 0.3
    """The ``default_timeout`` the no-deadline test sets; its calls then stay idle three times as long."""

    def _timed(self, channel: Channel, method: str, timeout: object, stream: bool) -> tuple[object, float]:
        """Call ``method`` (unary, or a stream of one item) and return (the item's ``remaining``, seconds taken)."""
        start = time.monotonic()
        if stream:
            items = list(channel.stream(method, b"", timeout=timeout))  # type: ignore[arg-type]
            assert len(items) == 1, f"the stream of {method} gave {len(items)} items, expected one"
            raw = items[0]
        else:
            raw = channel.unary(method, b"", timeout=timeout)  # type: ignore[arg-type]
        return json.loads(raw)["remaining"], time.monotonic() - start

    # -- the tests -------------------------------------------------------------------------------------

    def test_stream_deadline_covers_the_whole_stream(self) -> None:
        """Items a quarter-deadline apart, forever: the stream still ends with DEADLINE_EXCEEDED at its deadline."""
        self.require(Capability.STREAMING)
        deadline = self.stream_deadline_s
        gap = deadline / 4
        pace = threading.Event()  # never set: a wait that the test can cut short at the end
        cap = 20  # five deadlines' worth of items, so a stream that a transport never stops still ends

        def steady(request: bytes, ctx: CallContext) -> Iterator[bytes]:
            # It never ends by itself before the cap (it does not look at ctx): only the deadline can end
            # the stream early, and only with DEADLINE_EXCEEDED. The transport stops pulling items.
            for index in range(cap):
                yield _INDEX.pack(index)
                pace.wait(gap)

        with self.served({_STEADY: StreamHandler(steady), **probe_handlers()}) as (_server, channel):
            self.echo(channel, b"warm-up")
            received: list[bytes] = []
            started = time.monotonic()

            def consume() -> None:
                for item in channel.stream(_STEADY, b"", timeout=deadline):
                    received.append(item)
                ended = time.monotonic() - started
                raise AssertionError(
                    f"the stream ended normally after {ended:.2f} s with {len(received)} items; its deadline of "
                    f"{deadline} s covers the whole stream, not each item"
                )

            try:
                expect_error(
                    FlameErrorCode.DEADLINE_EXCEEDED,
                    consume,
                    f"a stream with a {deadline} s deadline whose items come every {gap:.2f} s",
                    within=deadline + self.prompt_deadline_s,
                )
            finally:
                pace.set()
            most = int(deadline / gap) + 1
            assert len(received) <= most, (
                f"{len(received)} items arrived within a {deadline} s deadline at one per {gap:.2f} s (at most "
                f"{most} can): items after the deadline were delivered"
            )
            assert [_INDEX.unpack(i)[0] for i in received] == list(range(len(received))), _show(received)
            self.echo(channel, b"after the deadline")

    def test_default_timeout_is_the_documented_default(self) -> None:
        """No timeout passed: the handler sees the documented default deadline (60 s), not none."""
        handlers: dict[str, Handler] = {
            _INSPECT: UnaryHandler(_inspect),
            _INSPECT_STREAM: StreamHandler(_inspect_stream),
        }
        default = self.documented_default_timeout
        with self.served(handlers) as (_server, channel):
            kinds = [False, True] if self.capabilities.streaming else [False]
            for stream in kinds:
                what = f"a {'stream' if stream else 'unary call'} made with the default timeout"
                seen, elapsed = self._timed(channel, _INSPECT_STREAM if stream else _INSPECT, DEFAULT_TIMEOUT, stream)
                assert_deadline_seen(seen, default, elapsed, f"{what} (documented default {default} s)")

        slow_release = threading.Event()

        def slow(request: bytes, ctx: CallContext) -> bytes:
            slow_release.wait(self.slow_handler_s)
            return b"late"

        short = self.short_default_timeout_s
        transport = self.make_transport_with(default_timeout=short)
        with self.served({**handlers, _IDLE: UnaryHandler(slow)}, transport=transport) as (_server, channel):
            seen, elapsed = self._timed(channel, _INSPECT, DEFAULT_TIMEOUT, False)
            assert_deadline_seen(
                seen, short, elapsed, f"a call made with the default timeout (default_timeout={short})"
            )
            try:
                expect_error(
                    FlameErrorCode.DEADLINE_EXCEEDED,
                    lambda: channel.unary(_IDLE, b""),
                    f"a call made with the default timeout (default_timeout={short}) to a handler slower than that",
                    within=short + self.prompt_deadline_s,
                )
            finally:
                slow_release.set()

    def test_handler_sees_the_callers_deadline(self) -> None:
        """Any timeout the caller sets is what ``ctx.time_remaining()`` reports (less the time to arrive)."""
        handlers: dict[str, Handler] = {
            _INSPECT: UnaryHandler(_inspect),
            _INSPECT_STREAM: StreamHandler(_inspect_stream),
        }
        with self.served(handlers) as (_server, channel):

            @self.hypothesis_settings(0.5)
            @example(timeout=2.5, stream=False)
            @example(timeout=1000.5, stream=True)
            @given(
                timeout=st.floats(min_value=0.5, max_value=86_400.0, allow_nan=False, allow_infinity=False),
                stream=st.booleans(),
            )
            def check(timeout: float, stream: bool) -> None:
                stream = stream and self.capabilities.streaming
                seen, elapsed = self._timed(channel, _INSPECT_STREAM if stream else _INSPECT, timeout, stream)
                assert_deadline_seen(seen, timeout, elapsed, f"a {'stream' if stream else 'unary call'}")

            check()

    def test_no_deadline_means_no_deadline(self) -> None:
        """``timeout=None``: a call and a stream idle for three default deadlines are not cut."""
        short = self.short_default_timeout_s
        idle = 3 * short
        transport = self.make_transport_with(default_timeout=short)
        seen: list[float | None] = []

        def idle_call(request: bytes, ctx: CallContext) -> bytes:
            seen.append(ctx.time_remaining())
            time.sleep(idle)
            return b"woke up"

        def idle_stream(request: bytes, ctx: CallContext) -> Iterator[bytes]:
            seen.append(ctx.time_remaining())
            yield b"first"
            time.sleep(idle)
            yield b"after a long silence"

        handlers: dict[str, Handler] = {_IDLE: UnaryHandler(idle_call), _IDLE_STREAM: StreamHandler(idle_stream)}
        with self.served(handlers, transport=transport) as (_server, channel):
            what = f"with default_timeout={short}, a call with timeout=None to a handler idle for {idle:.1f} s"
            try:
                got = channel.unary(_IDLE, b"", timeout=None)
            except FlameError as err:
                raise AssertionError(f"{what} was cut: FlameError({err.code.name}, {err.message!r})") from err
            assert got == b"woke up", f"{what}: got {_show(got)}"
            if self.capabilities.streaming:
                items: list[bytes] = []
                try:
                    items.extend(channel.stream(_IDLE_STREAM, b"", timeout=None))
                except FlameError as err:
                    raise AssertionError(
                        f"with default_timeout={short}, a stream with timeout=None idle for {idle:.1f} s after "
                        f"{len(items)} item(s) was cut: FlameError({err.code.name}, {err.message!r})"
                    ) from err
                assert items == [b"first", b"after a long silence"], f"a stream idle for {idle:.1f} s: {items!r}"
        assert all(value is None for value in seen), f"handlers of calls without a deadline saw {seen!r}, not None"
