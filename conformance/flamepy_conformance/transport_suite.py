"""``TransportTests``: the conformance suite every flamepy transport runs, bundled or third-party.

A plugin author subclasses it in a test module and names the transport::

    from flamepy_conformance import TransportTests

    class TestMyTransport(TransportTests):
        transport_name = "mytcp"      # the name its flamepy.transports entry point declares
        transport_options = {}        # optional keyword options for the factory

The base class is not collected itself (its name does not start with ``Test``). Hypothesis generates the
cases; every wait is bounded, every server is stopped and every channel closed even when a test fails.
Optional features are gated on the transport's declared capabilities and skip, naming the capability,
when not declared. Hooks to override: :meth:`TransportTests.make_transport`,
:meth:`TransportTests.make_endpoint`, :meth:`TransportTests.plugin_registry` and
:meth:`TransportTests.cross_process_server_argv`; the timing knobs are class attributes.
"""

from __future__ import annotations

import functools
import json
import random
import threading
import time
import urllib.parse
from collections.abc import Iterator
from typing import cast

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import run_state_machine_as_test

from flamepy_conformance.async_stream_suite import AsyncStreamTests
from flamepy_conformance.capabilities import Capability
from flamepy_conformance.deferred_stream_suite import DeferredStreamTests
from flamepy_conformance.deferred_suite import DeferredReplyTests
from flamepy_conformance.probe import (
    CHUNKS,
    ECHO,
    FAIL,
    MISSING,
    PROBE_SERVICE,
    REVERSE,
    ConformanceProbeError,
    chunk_answers,
    echo_answer,
    pack_chunks,
    pack_failure,
    probe_handlers,
    unpack_chunks,
    unpack_failure,
)
from flamepy_conformance.stateful import ChannelLifecycleMachine
from flamepy_conformance.strategies import error_codes, error_messages, method_paths, payloads, stream_chunks
from flamepy_conformance.transport_base import (
    DEFAULT_MAX_MESSAGE_CAP,
    TransportSuiteBase,
    _Background,
    _close_iterator,
    _mentions,
    _show,
    assert_same_bytes,
    expect_error,
    free_tcp_port,
    retry_while_unavailable,
)
from flamepy_conformance.transport_bytes import BytesTests
from flamepy_conformance.transport_concurrency import ConcurrencyTests
from flamepy_conformance.transport_deadlines import DeadlineTests
from flamepy_conformance.transport_resources import ResourceTests
from flamepy_conformance.transport_streams import StreamTests
from flamepy_core.contracts.errors import FlameError, FlameErrorCode
from flamepy_core.contracts.transport import (
    CallContext,
    Channel,
    Handler,
    Server,
    StreamHandler,
    Transport,
    TransportCapabilities,
    UnaryHandler,
)

_SLOW = f"{PROBE_SERVICE}/Slow"
_SLOW_STREAM = f"{PROBE_SERVICE}/SlowStream"
_KEEP = f"{PROBE_SERVICE}/Keep"
_KEEP_STREAM = f"{PROBE_SERVICE}/KeepStream"
_INSPECT = f"{PROBE_SERVICE}/Inspect"
_PATIENT = f"{PROBE_SERVICE}/Patient"
_TOO_BIG = f"{PROBE_SERVICE}/TooBig"
_TOO_BIG_STREAM = f"{PROBE_SERVICE}/TooBigStream"
_CRASH = f"{PROBE_SERVICE}/Crash"
_CRASH_STREAM = f"{PROBE_SERVICE}/CrashStream"
_TIMEOUT = f"{PROBE_SERVICE}/RaiseTimeout"
_FAIL_STREAM = f"{PROBE_SERVICE}/FailStream"
_NOTHING = f"{PROBE_SERVICE}/Nothing"
_BLANKS = f"{PROBE_SERVICE}/Blanks"

_UNICODE_SAMPLE = "naïve café ✓ Ωmega — 日本語 🔥 𝔉𝔩𝔞𝔪𝔢 \u202eRTL\u202c \x00 end"
"""A message with accents, CJK, non-BMP characters, a bidi override and a NUL: must cross intact."""


class TransportTests(
    DeadlineTests,
    StreamTests,
    BytesTests,
    ConcurrencyTests,
    ResourceTests,
    DeferredReplyTests,
    DeferredStreamTests,
    AsyncStreamTests,
    TransportSuiteBase,
):
    """The transport conformance suite. Subclass it as ``Test...`` and set :attr:`transport_name`.

    The tests below are the core of the contract; the mixins it derives from add one area each. Hooks and
    timing knobs are those of :class:`~flamepy_conformance.transport_base.TransportSuiteBase`.
    """

    # -- the contract as declared ------------------------------------------------------------------------

    def test_transport_declares_its_contract(self) -> None:
        """Name, schemes and capabilities are data of the right shape; serve/connect give Server/Channel."""
        t = self.transport
        assert isinstance(t, Transport), f"{t!r} lacks part of the Transport protocol"
        assert isinstance(t.name, str) and t.name, f"transport name {t.name!r}"
        assert isinstance(t.schemes, tuple) and t.schemes, f"schemes must be a non-empty tuple, got {t.schemes!r}"
        for scheme in t.schemes:
            assert isinstance(scheme, str) and scheme == scheme.lower() and "://" not in scheme, scheme
        assert isinstance(t.capabilities, TransportCapabilities), type(t.capabilities)
        assert isinstance(t.capabilities.max_message_size, int) and t.capabilities.max_message_size > 0
        with self.served(probe_handlers()) as (server, channel):
            assert isinstance(server, Server), f"{server!r} lacks part of the Server protocol"
            assert isinstance(channel, Channel), f"{channel!r} lacks part of the Channel protocol"
            scheme = server.endpoint.partition("://")[0]
            assert scheme in t.schemes, f"server.endpoint {server.endpoint!r} is not one of {t.schemes}"
            assert channel.endpoint == server.endpoint, (channel.endpoint, server.endpoint)
            self.echo(channel, b"hello")

    def test_port_zero_is_resolved(self) -> None:
        """Serving on port 0 binds a free port, and ``server.endpoint`` names it."""
        parts = urllib.parse.urlsplit(self.new_endpoint())
        try:
            port = parts.port
        except ValueError:
            port = None
        if not parts.hostname or port is None:
            pytest.skip(f"endpoints of transport {self.transport.name} ({parts.scheme}://) have no TCP port")
        with self.served(probe_handlers(), endpoint=f"{parts.scheme}://{parts.hostname}:0") as (server, channel):
            bound = urllib.parse.urlsplit(server.endpoint).port
            assert bound, f"server.endpoint {server.endpoint!r} does not name the port it bound"
            self.echo(channel, b"port zero")

    # -- payloads ------------------------------------------------------------------------------------------

    def test_unary_round_trip(self) -> None:
        """Payloads of every shape, empty to medium, reach the handler and come back transformed, exactly once."""
        seen: list[object] = []

        def echo(request: bytes, ctx: CallContext) -> bytes:
            seen.append(request)
            return echo_answer(request)

        limit = max(0, min(self.max_message_size - 64, 256 * 1024))
        with self.served({ECHO: UnaryHandler(echo)}) as (_server, channel):

            @self.hypothesis_settings()
            @example(payload=b"")
            @example(payload=bytes(range(256)))
            @given(payload=payloads(limit))
            def check(payload: bytes) -> None:
                seen.clear()
                got = channel.unary(ECHO, payload, timeout=self.call_timeout)
                assert_same_bytes(got, echo_answer(payload), "unary response")
                assert len(seen) == 1, f"the handler ran {len(seen)} times for one call"
                assert_same_bytes(seen[0], payload, "request as the handler saw it")

            check()

    def test_unary_empty_payload(self) -> None:
        """An empty request is a request (the handler gets ``b""``), and an empty response is a response."""
        seen: list[object] = []

        def empty(request: bytes, ctx: CallContext) -> bytes:
            seen.append(request)
            return b""

        with self.served({ECHO: UnaryHandler(empty)}) as (_server, channel):
            assert_same_bytes(channel.unary(ECHO, b"", timeout=self.call_timeout), b"", "empty response")
            assert len(seen) == 1, seen
            assert_same_bytes(seen[0], b"", "empty request as the handler saw it")

    def test_payload_at_max_size_round_trips(self) -> None:
        """A request and a response of exactly ``max_message_size`` bytes are accepted, byte-exact."""
        limit = self.boundary_size()
        payload = random.Random(limit).randbytes(limit)
        with self.served(probe_handlers()) as (_server, channel):
            got = channel.unary(REVERSE, payload, timeout=max(self.call_timeout, 30.0))
            assert_same_bytes(got, payload[::-1], f"response of max_message_size ({limit}) bytes")

    def test_request_over_max_size_is_refused_before_sending(self) -> None:
        """``max_message_size + 1`` bytes: MESSAGE_TOO_LARGE naming both sizes; no handler ever runs."""
        limit = self.boundary_size()
        calls: list[bytes] = []

        def reverse(request: bytes, ctx: CallContext) -> bytes:
            calls.append(request)
            return request[::-1]

        def chunks(request: bytes, ctx: CallContext) -> Iterator[bytes]:
            calls.append(request)
            yield request

        oversized = bytes(limit + 1)
        with self.served({REVERSE: UnaryHandler(reverse), CHUNKS: StreamHandler(chunks)}) as (_s, channel):
            err = expect_error(
                FlameErrorCode.MESSAGE_TOO_LARGE,
                lambda: channel.unary(REVERSE, oversized, timeout=self.call_timeout),
                f"unary request of {limit + 1} bytes",
            )
            assert _mentions(err.message, limit + 1) and _mentions(err.message, limit), (
                f"the error must name both sizes ({limit + 1} and {limit}): {err.message!r}"
            )
            if self.capabilities.streaming:
                err = expect_error(
                    FlameErrorCode.MESSAGE_TOO_LARGE,
                    lambda: list(channel.stream(CHUNKS, oversized, timeout=self.call_timeout)),
                    f"stream request of {limit + 1} bytes",
                )
                assert _mentions(err.message, limit + 1) and _mentions(err.message, limit), err.message
            assert not calls, f"a refused request reached the handler {len(calls)} time(s)"
            assert_same_bytes(channel.unary(REVERSE, b"abc", timeout=self.call_timeout), b"cba", "call after refusal")

    def test_response_over_max_size_is_refused(self) -> None:
        """A response (or stream item) of ``max_message_size + 1`` bytes: the caller gets MESSAGE_TOO_LARGE."""
        limit = self.boundary_size()

        def too_big(request: bytes, ctx: CallContext) -> bytes:
            return bytes(limit + 1)

        def too_big_item(request: bytes, ctx: CallContext) -> Iterator[bytes]:
            yield b"small"
            yield bytes(limit + 1)
            yield b"never"

        handlers: dict[str, Handler] = {
            _TOO_BIG: UnaryHandler(too_big),
            _TOO_BIG_STREAM: StreamHandler(too_big_item),
            **probe_handlers(),
        }
        with self.served(handlers) as (_server, channel):
            err = expect_error(
                FlameErrorCode.MESSAGE_TOO_LARGE,
                lambda: channel.unary(_TOO_BIG, b"", timeout=self.call_timeout),
                f"response of {limit + 1} bytes",
            )
            assert _mentions(err.message, limit + 1) and _mentions(err.message, limit), (
                f"the error must name both sizes ({limit + 1} and {limit}): {err.message!r}"
            )
            if self.capabilities.streaming:
                received: list[bytes] = []

                def consume() -> None:
                    received.extend(channel.stream(_TOO_BIG_STREAM, b"", timeout=self.call_timeout))

                err = expect_error(FlameErrorCode.MESSAGE_TOO_LARGE, consume, f"stream item of {limit + 1} bytes")
                assert received == [b"small"], f"items around the oversized one: {[_show(r) for r in received]}"
                assert _mentions(err.message, limit + 1) and _mentions(err.message, limit), err.message
            self.echo(channel, b"still answering")

    # -- routing -------------------------------------------------------------------------------------------

    def test_method_paths_route_to_their_handlers(self) -> None:
        """Any gRPC-style path reaches its own handler; a path with none gives UNIMPLEMENTED."""

        def answering_as(path: str) -> UnaryHandler:
            return UnaryHandler(lambda request, ctx: echo_answer(request, path))

        @self.hypothesis_settings(0.5)
        @given(paths=st.lists(method_paths(), min_size=1, max_size=6, unique=True), missing=method_paths())
        def check(paths: list[str], missing: str) -> None:
            assume(missing not in paths)
            with self.served({p: answering_as(p) for p in paths}) as (_server, channel):
                for path in paths:
                    got = channel.unary(path, path.encode(), timeout=self.call_timeout)
                    assert_same_bytes(got, echo_answer(path.encode(), path), f"answer of {path}")
                expect_error(
                    FlameErrorCode.UNIMPLEMENTED,
                    lambda: channel.unary(missing, b"", timeout=self.call_timeout),
                    f"call of unserved {missing}",
                )

        check()

    def test_unknown_method_is_unimplemented(self) -> None:
        """A method the server does not serve: UNIMPLEMENTED, promptly, and the channel stays usable."""
        with self.served(probe_handlers()) as (_server, channel):
            self.echo(channel, b"warm-up")
            expect_error(
                FlameErrorCode.UNIMPLEMENTED,
                lambda: channel.unary(MISSING, b"?", timeout=self.call_timeout),
                "unary call of an unknown method",
                within=self.prompt_unavailable_s,
            )
            self.echo(channel, b"after")

    def test_unknown_stream_method_is_unimplemented(self) -> None:
        """The same for a stream."""
        self.require(Capability.STREAMING)
        with self.served(probe_handlers()) as (_server, channel):
            self.echo(channel, b"warm-up")
            expect_error(
                FlameErrorCode.UNIMPLEMENTED,
                lambda: list(channel.stream(MISSING, b"?", timeout=self.call_timeout)),
                "stream call of an unknown method",
                within=self.prompt_unavailable_s,
            )
            self.echo(channel, b"after")

    # -- streams -------------------------------------------------------------------------------------------

    def test_stream_keeps_order(self) -> None:
        """A stream delivers every item the handler yields, in order, byte-exact."""
        self.require(Capability.STREAMING)
        with self.served(probe_handlers()) as (_server, channel):

            @self.hypothesis_settings()
            @example(chunks=[b"first", b"second", b"third", b"fourth"])
            @given(chunks=stream_chunks(max_items=16, max_size=256))
            def check(chunks: list[bytes]) -> None:
                got = list(channel.stream(CHUNKS, pack_chunks(chunks), timeout=self.call_timeout))
                assert all(type(item) is bytes for item in got), [type(i).__name__ for i in got]
                assert got == chunk_answers(chunks), "stream items differ (order or content)"

            check()

    def test_stream_empty(self) -> None:
        """A handler that yields nothing gives an empty stream, not an error or a hang."""
        self.require(Capability.STREAMING)

        def nothing(request: bytes, ctx: CallContext) -> Iterator[bytes]:
            yield from ()

        with self.served({_NOTHING: StreamHandler(nothing)}) as (_server, channel):
            assert list(channel.stream(_NOTHING, b"", timeout=self.call_timeout)) == []

    def test_stream_of_empty_messages(self) -> None:
        """Empty items are items: three ``b""`` yielded are three ``b""`` received."""
        self.require(Capability.STREAMING)

        def blanks(request: bytes, ctx: CallContext) -> Iterator[bytes]:
            yield from (b"", b"", b"")

        with self.served({_BLANKS: StreamHandler(blanks)}) as (_server, channel):
            assert list(channel.stream(_BLANKS, b"", timeout=self.call_timeout)) == [b"", b"", b""]

    # -- concurrency ---------------------------------------------------------------------------------------

    def test_concurrent_callers_get_their_own_answers(self) -> None:
        """Many threads share one channel; each gets the answer to its own request, never another's."""
        threads, calls = self.concurrency
        streaming = self.capabilities.streaming

        def worker(index: int, channel: Channel) -> list[str]:
            wrong: list[str] = []
            for i in range(calls):
                request = f"caller {index} call {i} ".encode() * (1 + (index * calls + i) % 7)
                if streaming and i % 5 == 4:
                    chunks = [request, request[::2]]
                    items = list(channel.stream(CHUNKS, pack_chunks(chunks), timeout=self.call_timeout))
                    if items != chunk_answers(chunks):
                        wrong.append(f"caller {index} stream {i}: {_show(items)}")
                else:
                    got = channel.unary(ECHO, request, timeout=self.call_timeout)
                    if got != echo_answer(request):
                        wrong.append(f"caller {index} call {i}: got {_show(got)}")
            return wrong

        with self.served(probe_handlers()) as (_server, channel):
            self.echo(channel, b"hi")
            workers = [_Background(functools.partial(worker, n, channel)) for n in range(threads)]
            budget = time.monotonic() + self.call_timeout * 3
            for w in workers:
                assert w.join(max(0.0, budget - time.monotonic())), "a concurrent caller did not finish in time"
            errors = [w.error for w in workers if w.error is not None]
            if errors:
                raise AssertionError(f"{len(errors)} caller(s) failed; first: {errors[0]!r}") from errors[0]
            wrong = [line for w in workers for line in (w.result or [])]
            assert not wrong, f"{len(wrong)} wrong answer(s):\n" + "\n".join(wrong[:10])

    # -- errors --------------------------------------------------------------------------------------------

    def test_every_error_code_crosses_intact(self) -> None:
        """A handler raising ``FlameError(code, msg)``: the caller gets that code and that message, for every code."""
        wrong: list[str] = []
        with self.served(probe_handlers()) as (_server, channel):
            for code in FlameErrorCode:
                message = f"probe {code.name}: {_UNICODE_SAMPLE}"
                try:
                    result = channel.unary(FAIL, pack_failure(code, message), timeout=self.call_timeout)
                except FlameError as err:
                    if err.code != code or err.message != message:
                        wrong.append(f"{code.name}: got FlameError({err.code.name}, {err.message!r})")
                else:
                    wrong.append(f"{code.name}: no error, the call returned {_show(result)}")
        assert not wrong, "handler errors did not cross intact:\n" + "\n".join(wrong)

    def test_error_code_and_message_cross_intact(self) -> None:
        """Any code with any Unicode message (non-BMP, controls, empty) crosses unchanged."""
        with self.served(probe_handlers()) as (_server, channel):

            @self.hypothesis_settings()
            @example(code=FlameErrorCode.NOT_FOUND, message="")
            @example(code=FlameErrorCode.INVALID_ARGUMENT, message="\U0001f525 \U0001d509 \U00010348")
            @given(code=error_codes(), message=error_messages())
            def check(code: FlameErrorCode, message: str) -> None:
                err = expect_error(
                    code,
                    lambda: channel.unary(FAIL, pack_failure(code, message), timeout=self.call_timeout),
                    f"handler raising {code.name}",
                )
                assert err.message == message, f"message changed: sent {message!r}, got {err.message!r}"

            check()

    def test_plain_exception_becomes_internal(self) -> None:
        """A handler raising a non-Flame exception: INTERNAL, and the message names the exception type."""

        def crash(request: bytes, ctx: CallContext) -> bytes:
            raise ConformanceProbeError("disk on fire \U0001f525")

        def crash_stream(request: bytes, ctx: CallContext) -> Iterator[bytes]:
            raise ConformanceProbeError("stream on fire")
            yield b""  # pragma: no cover - makes this a generator

        def time_out(request: bytes, ctx: CallContext) -> bytes:
            raise TimeoutError("the handler's own timeout")  # not the caller's deadline

        handlers: dict[str, Handler] = {
            _CRASH: UnaryHandler(crash),
            _CRASH_STREAM: StreamHandler(crash_stream),
            _TIMEOUT: UnaryHandler(time_out),
        }
        with self.served(handlers) as (_server, channel):
            err = expect_error(
                FlameErrorCode.INTERNAL,
                lambda: channel.unary(_CRASH, b"", timeout=self.call_timeout),
                "handler raising ConformanceProbeError",
            )
            assert "ConformanceProbeError" in err.message, f"INTERNAL must name the exception type: {err.message!r}"
            err = expect_error(
                FlameErrorCode.INTERNAL,
                lambda: channel.unary(_TIMEOUT, b"", timeout=self.call_timeout),
                "handler raising TimeoutError (a handler error, not a missed deadline)",
                within=self.prompt_deadline_s,
            )
            assert "TimeoutError" in err.message, f"INTERNAL must name the exception type: {err.message!r}"
            if self.capabilities.streaming:
                err = expect_error(
                    FlameErrorCode.INTERNAL,
                    lambda: list(channel.stream(_CRASH_STREAM, b"", timeout=self.call_timeout)),
                    "stream handler raising ConformanceProbeError",
                )
                assert "ConformanceProbeError" in err.message, err.message

    def test_stream_error_after_items(self) -> None:
        """An error mid-stream: the items before it arrive, in order, then the same FlameError."""
        self.require(Capability.STREAMING)

        def fail_later(request: bytes, ctx: CallContext) -> Iterator[bytes]:
            failure, *chunks = unpack_chunks(request)
            yield from chunk_answers(chunks)
            if failure:
                raise unpack_failure(failure)
            raise ConformanceProbeError("mid-stream crash")

        with self.served({_FAIL_STREAM: StreamHandler(fail_later)}) as (_server, channel):

            @self.hypothesis_settings()
            @example(
                chunks=[b"a", b"b", b"c"], code=FlameErrorCode.INVALID_STATE, message="mid \U0001f525", plain=False
            )
            @example(chunks=[b"a", b"b"], code=FlameErrorCode.INTERNAL, message="", plain=True)
            @given(
                chunks=stream_chunks(max_items=8, max_size=64),
                code=error_codes(),
                message=error_messages(max_size=60),
                plain=st.booleans(),
            )
            def check(chunks: list[bytes], code: FlameErrorCode, message: str, plain: bool) -> None:
                failure = b"" if plain else pack_failure(code, message)
                received: list[bytes] = []
                error: FlameError | None = None
                try:
                    for item in channel.stream(_FAIL_STREAM, pack_chunks([failure, *chunks]), self.call_timeout):
                        received.append(item)
                except FlameError as err:
                    error = err
                assert received == chunk_answers(chunks), "items before the error were lost or reordered"
                assert error is not None, "the stream ended without the handler's error"
                if plain:
                    assert error.code == FlameErrorCode.INTERNAL, repr(error)
                    assert "ConformanceProbeError" in error.message, repr(error)
                else:
                    assert (error.code, error.message) == (code, message), repr(error)

            check()

    # -- deadlines -----------------------------------------------------------------------------------------

    def test_unary_deadline_exceeded(self) -> None:
        """A handler slower than the deadline: DEADLINE_EXCEEDED promptly; the server still answers."""
        release = threading.Event()

        def slow(request: bytes, ctx: CallContext) -> bytes:
            release.wait(self.slow_handler_s)
            return b"late"

        with self.served({_SLOW: UnaryHandler(slow), **probe_handlers()}) as (_server, channel):
            self.echo(channel, b"warm-up")
            try:
                expect_error(
                    FlameErrorCode.DEADLINE_EXCEEDED,
                    lambda: channel.unary(_SLOW, b"", timeout=self.deadline_timeout),
                    f"call with a {self.deadline_timeout} s deadline to a handler sleeping {self.slow_handler_s} s",
                    within=self.prompt_deadline_s,
                )
            finally:
                release.set()
            self.echo(channel, b"after the deadline")

    def test_handler_context_sees_method_and_deadline(self) -> None:
        """``ctx.method`` is the path called; ``ctx.time_remaining()`` reflects the caller's deadline."""

        def inspect(request: bytes, ctx: CallContext) -> bytes:
            info = {"method": ctx.method, "remaining": ctx.time_remaining(), "active": ctx.is_active()}
            return json.dumps(info).encode()

        with self.served({_INSPECT: UnaryHandler(inspect)}) as (_server, channel):
            info = json.loads(channel.unary(_INSPECT, b"", timeout=30.0))
            assert info["method"] == _INSPECT, info
            assert info["active"] is True, info
            assert info["remaining"] is not None and 0 < info["remaining"] <= 30.5, (
                f"time_remaining() {info['remaining']} with a 30 s deadline"
            )
            info = json.loads(channel.unary(_INSPECT, b"", timeout=None))
            assert info["remaining"] is None, f"time_remaining() {info['remaining']} with no deadline"

    def test_handler_context_goes_inactive_after_deadline(self) -> None:
        """Once the caller's deadline passes, ``ctx.is_active()`` turns False, so long handlers can stop."""
        noticed, release = threading.Event(), threading.Event()
        noticed_after: list[float] = []

        def patient(request: bytes, ctx: CallContext) -> bytes:
            start = time.monotonic()
            while ctx.is_active() and time.monotonic() - start < 3.0:
                time.sleep(0.01)
            noticed_after.append(time.monotonic() - start)
            noticed.set()
            release.wait(3.0)  # answer only once the caller has given up: no race with its deadline
            return b"done"

        with self.served({_PATIENT: UnaryHandler(patient), **probe_handlers()}) as (_server, channel):
            self.echo(channel, b"warm-up")
            try:
                expect_error(
                    FlameErrorCode.DEADLINE_EXCEEDED,
                    lambda: channel.unary(_PATIENT, b"", timeout=0.3),
                    "call with a 0.3 s deadline to a handler polling ctx.is_active()",
                    within=self.prompt_deadline_s,
                )
                assert noticed.wait(5.0), "the handler never stopped polling"
            finally:
                release.set()
            assert noticed_after[0] < 2.0, f"ctx.is_active() stayed True {noticed_after[0]:.2f} s into a 0.3 s deadline"

    def test_stream_deadline_exceeded(self) -> None:
        """A stream whose deadline passes mid-way: DEADLINE_EXCEEDED promptly (after the items so far)."""
        self.require(Capability.STREAMING)
        release = threading.Event()

        def slow_stream(request: bytes, ctx: CallContext) -> Iterator[bytes]:
            yield b"first"
            release.wait(self.slow_handler_s)
            yield b"late"

        with self.served({_SLOW_STREAM: StreamHandler(slow_stream), **probe_handlers()}) as (_server, channel):
            self.echo(channel, b"warm-up")
            received: list[bytes] = []

            def consume() -> None:
                for item in channel.stream(_SLOW_STREAM, b"", timeout=self.deadline_timeout):
                    received.append(item)

            try:
                expect_error(
                    FlameErrorCode.DEADLINE_EXCEEDED,
                    consume,
                    f"stream with a {self.deadline_timeout} s deadline whose handler stalls",
                    within=self.prompt_deadline_s,
                )
            finally:
                release.set()
            assert received in ([], [b"first"]), f"items before the deadline: {received!r}"
            self.echo(channel, b"after the deadline")

    # -- peers that are not there --------------------------------------------------------------------------

    def test_nobody_listening_is_unavailable(self) -> None:
        """A channel to an endpoint nobody serves: UNAVAILABLE promptly, not a hang or a deadline."""
        channel = self.transport.connect(self.new_endpoint())
        try:
            self._expect_prompt_unavailable(channel, "where nobody listens")
        finally:
            channel.close()

    def _expect_prompt_unavailable(self, channel: Channel, where: str) -> None:
        """A unary call (and a stream, if declared) on ``channel`` fail with UNAVAILABLE, promptly."""
        bound = self.prompt_unavailable_s + 2.0
        expect_error(
            FlameErrorCode.UNAVAILABLE,
            lambda: channel.unary(ECHO, b"anyone?", timeout=bound),
            f"unary call {where}",
            within=self.prompt_unavailable_s,
        )
        if self.capabilities.streaming:
            expect_error(
                FlameErrorCode.UNAVAILABLE,
                lambda: list(channel.stream(CHUNKS, pack_chunks([b"x"]), timeout=bound)),
                f"stream {where}",
                within=self.prompt_unavailable_s,
            )

    def test_stopped_server_is_unavailable(self) -> None:
        """After ``server.stop()``, calls on an existing channel give UNAVAILABLE promptly."""
        server = self.transport.serve(self.new_endpoint(), probe_handlers())
        channel = self.transport.connect(server.endpoint)
        try:
            self.echo(channel, b"before stop")
            server.stop(self.stop_grace)
            self._expect_prompt_unavailable(channel, "to a stopped server")
        finally:
            channel.close()
            server.stop(self.stop_grace)

    def test_stop_with_grace_lets_running_call_finish(self) -> None:
        """``stop(grace)`` lets a running call finish, and returns once it has (not after the whole grace)."""
        started = threading.Event()

        def brief(request: bytes, ctx: CallContext) -> bytes:
            started.set()
            time.sleep(0.3)
            return b"finished:" + request

        server = self.transport.serve(self.new_endpoint(), {_SLOW: UnaryHandler(brief)})
        channel = self.transport.connect(server.endpoint)
        try:
            call = _Background(lambda: channel.unary(_SLOW, b"x", timeout=self.call_timeout))
            assert started.wait(self.call_timeout), "the handler never started"
            begin = time.monotonic()
            server.stop(5.0)
            stop_took = time.monotonic() - begin
            assert call.join(self.call_timeout), "the call did not finish"
            assert call.error is None, f"a call running at stop(grace=5) failed: {call.error!r}"
            assert call.result == b"finished:x", call.result
            assert stop_took < 3.0, f"stop(grace=5) took {stop_took:.2f} s for a call that needed 0.3 s"
        finally:
            channel.close()
            server.stop(self.stop_grace)

    def test_stop_cancels_calls_after_grace(self) -> None:
        """A call still running when the grace ends is ended: UNAVAILABLE or CANCELLED, not a late answer."""
        started, release = threading.Event(), threading.Event()

        def stuck(request: bytes, ctx: CallContext) -> bytes:
            started.set()
            release.wait(4.0)  # ignores ctx on purpose: the transport must not wait for it
            return b"too late"

        server = self.transport.serve(self.new_endpoint(), {_SLOW: UnaryHandler(stuck)})
        channel = self.transport.connect(server.endpoint)
        try:
            call = _Background(lambda: channel.unary(_SLOW, b"", timeout=self.call_timeout))
            assert started.wait(self.call_timeout), "the handler never started"
            begin = time.monotonic()
            server.stop(0.2)
            assert call.join(self.call_timeout), "the call did not finish"
            assert call.finished_at is not None
            took = call.finished_at - begin
            assert isinstance(call.error, FlameError), (
                f"a call still running after the grace got {call.error or call.result!r} after {took:.2f} s; "
                f"expected FlameError(UNAVAILABLE or CANCELLED)"
            )
            assert call.error.code in (FlameErrorCode.UNAVAILABLE, FlameErrorCode.CANCELLED), repr(call.error)
            assert took < 0.2 + self.prompt_deadline_s, f"the cancelled call ended {took:.2f} s after stop(0.2)"
        finally:
            release.set()
            channel.close()
            server.stop(self.stop_grace)

    def test_restarted_server_is_reachable_again(self) -> None:
        """A server stopped and started again on the same endpoint is found by the existing channel."""
        self.require(Capability.RESTART_SAME_ENDPOINT)
        first = self.transport.serve(self.new_endpoint(), probe_handlers("first"))
        servers = [first]
        channel = self.transport.connect(first.endpoint)
        try:
            self.echo(channel, b"before", tag="first")
            first.stop(self.stop_grace)
            servers.append(self.transport.serve(first.endpoint, probe_handlers("second")))
            got = retry_while_unavailable(
                lambda: channel.unary(ECHO, b"after", timeout=self.call_timeout), self.restart_retry_s
            )
            assert_same_bytes(got, echo_answer(b"after", ECHO, "second"), "answer of the restarted server")
        finally:
            channel.close()
            for server in servers:
                server.stop(self.stop_grace)

    # -- lifecycle -----------------------------------------------------------------------------------------

    def test_channel_close_is_idempotent_and_final(self) -> None:
        """``close()`` twice is fine; calls after it give UNAVAILABLE; other channels keep working."""
        with self.served(probe_handlers()) as (server, channel):
            other = self.transport.connect(server.endpoint)
            try:
                self.echo(channel, b"one")
                self.echo(other, b"two")
                channel.close()
                channel.close()
                expect_error(
                    FlameErrorCode.UNAVAILABLE,
                    lambda: channel.unary(ECHO, b"closed", timeout=self.call_timeout),
                    "unary call on a closed channel",
                    within=self.prompt_unavailable_s,
                )
                if self.capabilities.streaming:
                    expect_error(
                        FlameErrorCode.UNAVAILABLE,
                        lambda: list(channel.stream(CHUNKS, pack_chunks([b"x"]), timeout=self.call_timeout)),
                        "stream on a closed channel",
                        within=self.prompt_unavailable_s,
                    )
                self.echo(other, b"other channel after close")
            finally:
                other.close()

    def test_server_stop_is_idempotent(self) -> None:
        """``stop()`` may be called again (with or without grace) and returns promptly each time."""
        server = self.transport.serve(self.new_endpoint(), probe_handlers())
        channel = self.transport.connect(server.endpoint)
        try:
            self.echo(channel, b"up")
            for grace in (self.stop_grace, None, 0.1):
                begin = time.monotonic()
                server.stop(grace)
                took = time.monotonic() - begin
                assert took < self.stop_grace + 3.0, f"stop({grace}) took {took:.2f} s"
        finally:
            channel.close()
            server.stop(self.stop_grace)

    def test_request_bytes_are_not_shared(self) -> None:
        """Mutating the caller's bytearray after the call does not change what the handler received."""
        seen: list[bytes] = []

        def keep(request: bytes, ctx: CallContext) -> bytes:
            seen.append(request)
            return b"kept"

        original = b"the original request"
        with self.served({_KEEP: UnaryHandler(keep)}) as (_server, channel):
            buffer = bytearray(original)
            # bytes-like callers are allowed (bytearray is accepted where bytes is typed).
            assert channel.unary(_KEEP, cast(bytes, buffer), timeout=self.call_timeout) == b"kept"
            buffer[:] = b"X" * len(buffer)
            assert len(seen) == 1, seen
            assert bytes(seen[0]) == original, f"the handler's request changed with the caller's buffer: {seen[0]!r}"

    def test_stream_request_bytes_are_not_shared(self) -> None:
        """The same for a stream, mutating while the handler is still running."""
        self.require(Capability.STREAMING)
        proceed = threading.Event()

        def keep_stream(request: bytes, ctx: CallContext) -> Iterator[bytes]:
            yield b"first"
            proceed.wait(self.call_timeout)
            yield bytes(request)

        original = b"the original stream request"
        with self.served({_KEEP_STREAM: StreamHandler(keep_stream)}) as (_server, channel):
            buffer = bytearray(original)
            items = channel.stream(_KEEP_STREAM, cast(bytes, buffer), timeout=self.call_timeout)
            try:
                assert next(items) == b"first"
                buffer[:] = b"X" * len(buffer)
                proceed.set()
                rest = list(items)
            finally:
                proceed.set()
                _close_iterator(items)
            assert rest == [original], f"the handler's request changed with the caller's buffer: {rest!r}"

    # -- across processes ----------------------------------------------------------------------------------

    def test_cross_process_call(self) -> None:
        """A server in another Python process answers calls, streams and errors from this one."""
        self.require(Capability.CROSS_PROCESS)
        with self.child_server() as endpoint:
            channel = self.transport.connect(endpoint)
            try:
                self.echo(channel, "across processes \U0001f525".encode(), tag="child")
                big = random.Random(7).randbytes(min(self.max_message_size, 1024 * 1024))
                got = channel.unary(REVERSE, big, timeout=self.call_timeout)
                assert_same_bytes(got, big[::-1], "1 MiB across processes")
                err = expect_error(
                    FlameErrorCode.NOT_FOUND,
                    lambda: channel.unary(
                        FAIL, pack_failure(FlameErrorCode.NOT_FOUND, _UNICODE_SAMPLE), timeout=self.call_timeout
                    ),
                    "error across processes",
                )
                assert err.message == _UNICODE_SAMPLE, repr(err.message)
                if self.capabilities.streaming:
                    chunks = [b"one", b"", b"three"]
                    got_items = list(channel.stream(CHUNKS, pack_chunks(chunks), timeout=self.call_timeout))
                    assert got_items == chunk_answers(chunks), got_items
            finally:
                channel.close()

    # -- the state machine ---------------------------------------------------------------------------------

    def test_channel_lifecycle_state_machine(self) -> None:
        """Random sequences of connect/call/stream/close/stop/restart agree with the reference model."""
        suite = self

        class Machine(ChannelLifecycleMachine):
            """The lifecycle machine bound to this test's transport, a fresh endpoint per run."""

            def __init__(self) -> None:
                super().__init__(
                    suite.transport,
                    suite.new_endpoint(),
                    call_timeout=suite.call_timeout,
                    unavailable_within=suite.prompt_unavailable_s,
                    restart_within=suite.restart_retry_s,
                    stop_grace=suite.stop_grace,
                )

        run_state_machine_as_test(
            Machine,
            settings=settings(
                max_examples=max(1, self.examples(self.stateful_examples / max(1, self.max_examples))),
                stateful_step_count=self.stateful_steps,
                deadline=None,
                database=None,
                print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
            ),
        )


__all__ = [
    "DEFAULT_MAX_MESSAGE_CAP",
    "Transport",
    "TransportCapabilities",
    "TransportTests",
    "assert_same_bytes",
    "expect_error",
    "free_tcp_port",
    "retry_while_unavailable",
]
