"""Late replies and abandoned calls among thousands (a mixin of :class:`~flamepy_conformance.TransportTests`).

What the contract says and this module checks: one channel, many threads, thousands of calls, some whose
deadline passes before their handler answers (their replies arrive late, after the caller gave up), some
streams closed after their first item, others slow enough to be waiting when a late reply arrives. Every
caller gets its own answer or its own error, never another call's reply: a transport that reuses the id of
a call that has not been answered yet (a free list, a small counter) hands a late reply to a stranger.
"""

from __future__ import annotations

import functools
import struct
import time
from collections.abc import Iterator
from typing import ClassVar

from flamepy_conformance.probe import PROBE_SERVICE, echo_answer, probe_handlers
from flamepy_conformance.transport_base import TransportSuiteBase, _Background, _close_iterator, _show
from flamepy_core.contracts.errors import FlameError, FlameErrorCode
from flamepy_core.contracts.transport import CallContext, Channel, StreamHandler, UnaryHandler

_DELAYED = f"{PROBE_SERVICE}/Delayed"
_DELAYED_STREAM = f"{PROBE_SERVICE}/DelayedStream"
_DELAY = struct.Struct(">I")
"""A request starts with the handler's delay in microseconds; the rest tags the call."""


def _delayed(request: bytes, ctx: CallContext) -> bytes:
    (micros,) = _DELAY.unpack_from(request)
    if micros:
        time.sleep(micros / 1e6)
    return echo_answer(request[_DELAY.size :], _DELAYED)


def _delayed_stream(request: bytes, ctx: CallContext) -> Iterator[bytes]:
    tag = request[_DELAY.size :]
    for index in range(50):
        if not ctx.is_active():
            return
        yield b"%d:" % index + tag
        time.sleep(0.001)


class ConcurrencyTests(TransportSuiteBase):
    """Thousands of calls on one channel, with late replies and abandoned calls, each answered to its caller."""

    late_deadline_s: ClassVar[float] = 0.01
    """The deadline of the calls that are answered late."""
    late_handler_s: ClassVar[float] = 0.04
    """How long their handler takes: the reply arrives after the caller has given up."""
    waiting_handler_s: ClassVar[float] = 0.06
    """How long the call after each late one takes, so it is still waiting when the late reply arrives."""

    def _one_caller(self, channel: Channel, index: int, calls: int, streaming: bool) -> list[str]:
        wrong: list[str] = []

        def request(i: int, delay: float) -> bytes:
            return _DELAY.pack(int(delay * 1e6)) + f"caller {index} call {i}".encode()

        for i in range(calls):
            kind = i % 10
            if kind == 0:  # answered after its deadline: the reply comes late
                data = request(i, self.late_handler_s)
                try:
                    got = channel.unary(_DELAYED, data, timeout=self.late_deadline_s)
                except FlameError as err:
                    if err.code != FlameErrorCode.DEADLINE_EXCEEDED:
                        wrong.append(f"caller {index} late call {i}: FlameError({err.code.name}, {err.message!r})")
                    continue
                if got != echo_answer(data[_DELAY.size :], _DELAYED):
                    wrong.append(f"caller {index} late call {i}: got {_show(got)}")
            elif kind == 5 and streaming:  # abandoned after its first item
                tag = f"caller {index} stream {i}".encode()
                items = channel.stream(_DELAYED_STREAM, _DELAY.pack(0) + tag, timeout=self.call_timeout)
                try:
                    first = next(items)
                finally:
                    _close_iterator(items)
                if first != b"0:" + tag:
                    wrong.append(f"caller {index} stream {i}: first item {_show(first)}")
            else:  # still waiting when a late reply arrives (right after a late call), or quick
                data = request(i, self.waiting_handler_s if kind == 1 else 0.0)
                try:
                    got = channel.unary(_DELAYED, data, timeout=self.call_timeout)
                except FlameError as err:
                    wrong.append(f"caller {index} call {i}: FlameError({err.code.name}, {err.message!r})")
                    continue
                if got != echo_answer(data[_DELAY.size :], _DELAYED):
                    wrong.append(f"caller {index} call {i}: got {_show(got)} (another call's reply?)")
        return wrong

    def test_late_replies_and_abandoned_calls_never_reach_another_call(self) -> None:
        """Thousands of calls on one channel, a tenth answered after their deadline, a tenth of streams
        abandoned: every caller gets its own answer (or its own DEADLINE_EXCEEDED), never another's."""
        threads, calls = self.many_calls
        streaming = self.capabilities.streaming
        handlers = {
            _DELAYED: UnaryHandler(_delayed),
            _DELAYED_STREAM: StreamHandler(_delayed_stream),
            **probe_handlers(),
        }
        with self.served(handlers) as (_server, channel):
            self.echo(channel, b"warm-up")
            workers = [
                _Background(functools.partial(self._one_caller, channel, n, calls, streaming)) for n in range(threads)
            ]
            budget = time.monotonic() + self.call_timeout * 6
            for worker in workers:
                assert worker.join(max(0.0, budget - time.monotonic())), "a caller did not finish in time"
            errors = [w.error for w in workers if w.error is not None]
            if errors:
                raise AssertionError(f"{len(errors)} caller(s) failed; first: {errors[0]!r}") from errors[0]
            wrong = [line for w in workers for line in (w.result or [])]
            assert not wrong, (
                f"{len(wrong)} of {threads * calls} calls got a wrong answer (late replies must never reach "
                f"another call):\n" + "\n".join(wrong[:10])
            )
            self.echo(channel, b"after thousands of calls")
