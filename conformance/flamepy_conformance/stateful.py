"""A hypothesis state machine that drives one channel and one server through their lifecycle.

The machine takes the system under test as arguments (a transport and an endpoint) and compares what
it sees against a reference model of four facts: is the server up, is the channel open, which
*generation* of the server is listening, and was it just restarted. Hypothesis picks the order of
connect / call / stream / close / stop / restart and shrinks any failure to the shortest sequence.
Errors are compared by code, never by message text, since each transport words them its own way.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from flamepy_conformance.probe import (
    CHUNKS,
    ECHO,
    FAIL,
    chunk_answers,
    echo_answer,
    pack_chunks,
    pack_failure,
    probe_handlers,
)
from flamepy_conformance.strategies import error_codes, error_messages, payloads, stream_chunks
from flamepy_core.contracts.errors import FlameError, FlameErrorCode
from flamepy_core.contracts.transport import Channel, Server, Transport

T = TypeVar("T")


class ChannelLifecycleMachine(RuleBasedStateMachine):
    """Connect, call, stream, close, stop and restart in any order; every answer must match the model.

    Model rules: on an open channel with the server up, a call returns the current generation's answer
    (right after a restart the transport may need a moment to reconnect, so ``UNAVAILABLE`` is retried
    for up to ``restart_within`` seconds); on a closed channel, or with the server down, a call raises
    ``UNAVAILABLE`` within ``unavailable_within`` seconds. Run it with
    ``run_state_machine_as_test(lambda: ChannelLifecycleMachine(transport, endpoint))``.
    """

    def __init__(
        self,
        transport: Transport,
        endpoint: str,
        *,
        call_timeout: float = 10.0,
        unavailable_within: float = 3.0,
        restart_within: float = 5.0,
        stop_grace: float = 0.5,
    ) -> None:
        super().__init__()
        self.transport = transport
        self.call_timeout = call_timeout
        self.unavailable_within = unavailable_within
        self.restart_within = restart_within
        self.stop_grace = stop_grace
        self.servers: list[Server] = [transport.serve(endpoint, probe_handlers("gen0"))]
        # Restarts reuse the endpoint the first server reported (a requested port 0 is resolved there).
        self.endpoint = self.servers[0].endpoint
        self.channels: list[Channel] = []
        # The reference model.
        self.server_up = True
        self.channel_open = False
        self.generation = 0
        self.just_restarted = False

    # -- helpers ---------------------------------------------------------------------------------------

    @property
    def channel(self) -> Channel | None:
        return self.channels[-1] if self.channels else None

    def _tag(self) -> str:
        return f"gen{self.generation}"

    def _expect(self, what: str, call: Callable[[], T], expected: T) -> None:
        """Make ``call`` and check it against the model: ``expected`` when reachable, else UNAVAILABLE."""
        if self.channel_open and self.server_up:
            result = self._call_reachable(what, call)
            assert result == expected, f"{what}: got {result!r:.300}, the model expects {expected!r:.300}"
            return
        why = "the channel is closed" if not self.channel_open else "the server is stopped"
        start = time.monotonic()
        try:
            result = call()
        except FlameError as err:
            elapsed = time.monotonic() - start
            assert err.code == FlameErrorCode.UNAVAILABLE, (
                f"{what} when {why}: expected UNAVAILABLE, got {err.code.name} ({err.message})"
            )
            assert elapsed < self.unavailable_within, (
                f"{what} when {why}: UNAVAILABLE took {elapsed:.2f} s (bound {self.unavailable_within} s)"
            )
            return
        raise AssertionError(f"{what} when {why}: expected UNAVAILABLE, but the call returned {result!r:.300}")

    def _call_reachable(self, what: str, call: Callable[[], T]) -> T:
        """Call a server the model says is reachable, allowing reconnect time right after a restart."""
        give_up = time.monotonic() + (self.restart_within if self.just_restarted else 0.0)
        while True:
            try:
                result = call()
            except FlameError as err:
                if err.code == FlameErrorCode.UNAVAILABLE and time.monotonic() < give_up:
                    time.sleep(0.05)
                    continue
                raise AssertionError(
                    f"{what}: channel open and server up (generation {self.generation}"
                    f"{', just restarted' if self.just_restarted else ''}), but the call raised {err!r}"
                ) from err
            self.just_restarted = False
            return result

    # -- rules -----------------------------------------------------------------------------------------

    @precondition(lambda self: not self.channel_open)
    @rule()
    def connect(self) -> None:
        self.channels.append(self.transport.connect(self.endpoint))
        self.channel_open = True

    @precondition(lambda self: self.channel is not None)
    @rule(payload=payloads(2048))
    def call(self, payload: bytes) -> None:
        channel = self.channel
        assert channel is not None
        self._expect(
            "unary call",
            lambda: channel.unary(ECHO, payload, timeout=self.call_timeout),
            echo_answer(payload, ECHO, self._tag()),
        )

    @precondition(lambda self: self.channel is not None and self.transport.capabilities.streaming)
    @rule(chunks=stream_chunks(max_items=5, max_size=64))
    def stream(self, chunks: list[bytes]) -> None:
        channel = self.channel
        assert channel is not None
        self._expect(
            "stream",
            lambda: list(channel.stream(CHUNKS, pack_chunks(chunks), timeout=self.call_timeout)),
            chunk_answers(chunks),
        )

    @precondition(lambda self: self.channel is not None)
    @rule(
        code=error_codes().filter(lambda c: c != FlameErrorCode.UNAVAILABLE),
        message=error_messages(max_size=40),
    )
    def call_failing(self, code: FlameErrorCode, message: str) -> None:
        # UNAVAILABLE is left out: from a handler it would be indistinguishable from the transport's own
        # "peer unreachable" here (the suite's error tests check that it crosses intact).
        channel = self.channel
        assert channel is not None

        def call() -> tuple[FlameErrorCode, str]:
            try:
                result = channel.unary(FAIL, pack_failure(code, message), timeout=self.call_timeout)
            except FlameError as err:
                if err.code == FlameErrorCode.UNAVAILABLE:
                    raise  # the transport's verdict on reachability: the model judges it
                return (err.code, err.message)
            raise AssertionError(f"the handler raised FlameError({code.name}) but the call returned {result!r:.100}")

        self._expect("call of a failing handler", call, (code, message))

    @precondition(lambda self: self.channel is not None)
    @rule()
    def close_channel(self) -> None:
        channel = self.channel
        assert channel is not None
        channel.close()  # idempotent: the rule may fire again on a closed channel
        self.channel_open = False

    @rule()
    def stop_server(self) -> None:
        self.servers[-1].stop(self.stop_grace)  # idempotent: may fire while already stopped
        self.server_up = False
        self.just_restarted = False

    @precondition(lambda self: not self.server_up and self.transport.capabilities.restart_same_endpoint)
    @rule()
    def restart_server(self) -> None:
        self.generation += 1
        self.servers.append(self.transport.serve(self.endpoint, probe_handlers(self._tag())))
        self.server_up = True
        self.just_restarted = True

    # -- invariants ------------------------------------------------------------------------------------

    @invariant()
    def answers_agree_with_model(self) -> None:
        channel = self.channel
        if channel is None:
            return
        probe = b"invariant probe"
        self._expect(
            "probe call",
            lambda: channel.unary(ECHO, probe, timeout=self.call_timeout),
            echo_answer(probe, ECHO, self._tag()),
        )

    @invariant()
    def channel_keeps_its_endpoint(self) -> None:
        channel = self.channel
        if channel is not None:
            assert channel.endpoint == self.endpoint, f"channel.endpoint {channel.endpoint!r} != {self.endpoint!r}"

    def teardown(self) -> None:
        for channel in self.channels:
            channel.close()
        for server in self.servers:
            server.stop(self.stop_grace)
