"""Deferred replies and asynchronous calls: the contract of ``DeferredHandler`` and ``unary_async``.

Mixed into :class:`~flamepy_conformance.TransportTests`; every test is gated on the capability it checks,
``deferred_replies`` (``serve`` runs a ``DeferredHandler`` natively) or ``async_calls`` (channels have a
native ``unary_async``), and skips, naming it, for a transport that did not declare it.

What a transport that declares them must show:

* a deferred reply may be completed later, from any thread, in any order: each caller gets its own;
* a reply completed after the caller's deadline (or after it went away) is dropped, the responder says so
  (``False``), and it never reaches another call;
* a call is completed once: a second ``send`` or ``fail`` returns ``False`` and changes nothing;
* a handler that raises before completing fails the call with that error; ``fail`` carries a
  ``FlameError``'s code and message intact;
* deferred calls hold no server thread: more of them wait at once than the server has workers;
* ``unary_async`` returns at once; its future completes with the response, or with each error code the
  handler raised, or ``DEADLINE_EXCEEDED`` promptly, or ``UNAVAILABLE`` when nobody listens.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import ClassVar

from hypothesis import given
from hypothesis import strategies as st

from flamepy_conformance.capabilities import requires
from flamepy_conformance.strategies import error_codes, error_messages, payloads
from flamepy_conformance.transport_base import TransportSuiteBase
from flamepy_core.contracts.errors import FlameError, FlameErrorCode
from flamepy_core.contracts.transport import (
    AsyncChannel,
    CallContext,
    Channel,
    DeferredHandler,
    Handler,
    Responder,
    UnaryHandler,
)
from flamepy_core.transport_kit import adapt_handlers

_SERVICE = "/flamepy.conformance.Deferred"
_LATER = f"{_SERVICE}/Later"
_NOW = f"{_SERVICE}/Now"
_RAISE = f"{_SERVICE}/Raise"
_FAIL = f"{_SERVICE}/Fail"
_ECHO = f"{_SERVICE}/Echo"


class _Parked:
    """A deferred handler that parks every call (request, context, responder) for the test to complete."""

    def __init__(self) -> None:
        self.calls: list[tuple[bytes, CallContext, Responder]] = []
        self._cond = threading.Condition()

    def __call__(self, request: bytes, ctx: CallContext, responder: Responder) -> None:
        with self._cond:
            self.calls.append((request, ctx, responder))
            self._cond.notify_all()

    def wait(self, count: int, timeout: float) -> list[tuple[bytes, CallContext, Responder]]:
        with self._cond:
            arrived = self._cond.wait_for(lambda: len(self.calls) >= count, timeout)
            assert arrived, f"{len(self.calls)} of {count} deferred calls reached the handler within {timeout} s"
            return list(self.calls)


def _echo(request: bytes, ctx: CallContext, responder: Responder) -> None:
    responder.send(b"echo:" + request)


def _raise(request: bytes, ctx: CallContext, responder: Responder) -> None:
    raise FlameError(FlameErrorCode.NOT_FOUND, request.decode("utf-8", "replace"))


def _fail(request: bytes, ctx: CallContext, responder: Responder) -> None:
    code, _, message = request.decode("utf-8").partition(":")
    responder.fail(FlameError(FlameErrorCode(int(code)), message))


def _call(channel: Channel, method: str, request: bytes, timeout: float | None) -> Callable[[], bytes]:
    return lambda: channel.unary(method, request, timeout=timeout)


class _Result:
    """A blocking call run on a thread, to be completed by the test."""

    def __init__(self, call: Callable[[], bytes]) -> None:
        self.value: bytes | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(call,), daemon=True)
        self._thread.start()

    def _run(self, call: Callable[[], bytes]) -> None:
        try:
            self.value = call()
        except BaseException as exc:
            self.error = exc

    def get(self, timeout: float) -> bytes:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"the call did not end within {timeout} s"
        if self.error is not None:
            raise self.error
        assert self.value is not None
        return self.value


class DeferredReplyTests(TransportSuiteBase):
    """The tests of deferred replies and ``unary_async`` (mixed into ``TransportTests``)."""

    deferred_calls: ClassVar[int] = 24
    """How many deferred calls wait at once in the no-thread-per-call test (above ``deferred_workers``)."""
    deferred_workers: ClassVar[int] = 2
    """The server's workers in that test (it needs the ``max_workers`` option, and skips without it)."""

    # -- deferred replies ----------------------------------------------------------------------------

    @requires("deferred_replies")
    def test_deferred_replies_completed_out_of_order_from_other_threads(self) -> None:
        """Replies completed in reverse order, each from a thread of its own: every caller gets its own."""
        parked = _Parked()
        count = 8
        with self.served({_LATER: DeferredHandler(parked)}) as (_server, channel):
            results = [_Result(_call(channel, _LATER, b"%d" % i, self.call_timeout)) for i in range(count)]
            calls = parked.wait(count, self.call_timeout)
            completers = []
            for request, ctx, responder in reversed(calls):
                assert ctx.is_active(), "a parked call's context went inactive while its caller waits"
                completers.append(threading.Thread(target=responder.send, args=(b"reply:" + request,)))
                completers[-1].start()
            for thread in completers:
                thread.join(self.call_timeout)
            for i, result in enumerate(results):
                assert result.get(self.call_timeout) == b"reply:%d" % i, f"call {i} got another call's reply"

    @requires("deferred_replies")
    def test_deferred_reply_after_the_deadline_is_dropped(self) -> None:
        """Completed after the caller's deadline: dropped (``send`` says False), never another call's answer."""
        parked = _Parked()
        with self.served({_LATER: DeferredHandler(parked), _NOW: DeferredHandler(_echo)}) as (_server, channel):
            late = _Result(_call(channel, _LATER, b"late", self.deadline_timeout))
            [(_request, ctx, responder)] = parked.wait(1, self.call_timeout)
            try:
                late.get(self.deadline_timeout + self.prompt_deadline_s)
            except FlameError as err:
                assert err.code == FlameErrorCode.DEADLINE_EXCEEDED, repr(err)
            else:
                raise AssertionError("a deferred call completed by nobody returned")
            give_up = time.monotonic() + self.call_timeout
            while ctx.is_active() and time.monotonic() < give_up:
                time.sleep(0.01)
            assert not ctx.is_active(), "ctx.is_active() stayed True after the caller's deadline passed"
            assert responder.send(b"too late") is False, "a reply after the deadline must be reported dropped"
            for i in range(5):  # the next calls get their own answers, never the late one
                assert channel.unary(_NOW, b"%d" % i, timeout=self.call_timeout) == b"echo:%d" % i

    @requires("deferred_replies")
    def test_a_deferred_call_is_completed_once(self) -> None:
        """A second ``send`` or ``fail`` returns False and changes nothing; the caller has the first."""
        parked = _Parked()
        with self.served({_LATER: DeferredHandler(parked)}) as (_server, channel):
            result = _Result(_call(channel, _LATER, b"once", self.call_timeout))
            [(_request, _ctx, responder)] = parked.wait(1, self.call_timeout)
            assert responder.send(b"first") is True, "the first completion is the one that counts"
            assert responder.send(b"second") is False
            assert responder.fail(FlameError(FlameErrorCode.INTERNAL, "third")) is False
            assert result.get(self.call_timeout) == b"first"

    @requires("deferred_replies")
    def test_a_deferred_handler_that_raises_fails_the_call(self) -> None:
        with self.served({_RAISE: DeferredHandler(_raise)}) as (_server, channel):
            try:
                channel.unary(_RAISE, b"no such thing", timeout=self.call_timeout)
            except FlameError as err:
                assert (err.code, err.message) == (FlameErrorCode.NOT_FOUND, "no such thing"), repr(err)
            else:
                raise AssertionError("a deferred handler that raised: the call returned")

    @requires("deferred_replies")
    def test_deferred_fail_carries_each_code_and_message(self) -> None:
        @given(code=error_codes(), message=error_messages())
        def check(code: FlameErrorCode, message: str) -> None:
            try:
                channel.unary(_FAIL, f"{int(code)}:{message}".encode(), timeout=self.call_timeout)
            except FlameError as err:
                assert (err.code, err.message) == (code, message), repr(err)
            else:
                raise AssertionError("responder.fail(): the call returned")

        with self.served({_FAIL: DeferredHandler(_fail)}) as (_server, channel):
            self.hypothesis_settings(0.5)(check)()

    @requires("deferred_replies")
    def test_deferred_calls_hold_no_server_thread(self) -> None:
        """More deferred calls wait at once than the server has workers, and all of them are answered."""
        transport = self.make_transport_with(max_workers=self.deferred_workers)
        parked = _Parked()
        handlers = {_LATER: DeferredHandler(parked)}
        server = transport.serve(self.new_endpoint(), handlers)
        channel = transport.connect(server.endpoint)
        try:
            results = [
                _Result(_call(channel, _LATER, b"%d" % i, self.call_timeout)) for i in range(self.deferred_calls)
            ]
            calls = parked.wait(self.deferred_calls, self.call_timeout)
            for request, _ctx, responder in calls:
                responder.send(request)
            assert sorted(r.get(self.call_timeout) for r in results) == sorted(
                b"%d" % i for i in range(self.deferred_calls)
            )
        finally:
            channel.close()
            server.stop(0.5)

    # -- asynchronous calls ----------------------------------------------------------------------------

    def _adapted(self, handlers: dict[str, Handler]) -> dict[str, Handler]:
        """The server side of the ``unary_async`` tests, as the runtime serves it on this transport.

        Those tests check the client: they park calls in a deferred handler only to complete them when
        they choose, so on a transport without ``deferred_replies`` the kit's adapter serves it.
        """
        return adapt_handlers(handlers, self.transport.capabilities)

    def _async(self, channel: Channel) -> AsyncChannel:
        assert isinstance(channel, AsyncChannel), (
            f"transport {self.transport.name} declares async_calls but its channel has no unary_async"
        )
        return channel

    @requires("async_calls")
    def test_unary_async_futures_complete_with_their_results(self) -> None:
        """Futures return at once and complete with their own responses, whatever the completion order."""
        parked = _Parked()
        handlers = self._adapted({_LATER: DeferredHandler(parked), _ECHO: UnaryHandler(lambda r, c: r)})
        with self.served(handlers) as (_s, channel):
            async_channel = self._async(channel)

            @given(data=payloads(4096))
            def echo(data: bytes) -> None:
                assert (
                    async_channel.unary_async(_ECHO, data, timeout=self.call_timeout).result(self.call_timeout) == data
                )

            self.hypothesis_settings(0.5)(echo)()
            futures: list[Future[bytes]] = [
                async_channel.unary_async(_LATER, b"%d" % i, timeout=self.call_timeout) for i in range(6)
            ]
            assert not any(f.done() for f in futures), "a future completed before its reply was sent"
            for request, _ctx, responder in reversed(parked.wait(6, self.call_timeout)):
                responder.send(b"r" + request)
            assert [f.result(self.call_timeout) for f in futures] == [b"r%d" % i for i in range(6)]

    @requires("async_calls")
    def test_unary_async_futures_complete_with_each_error_code(self) -> None:
        def fail(request: bytes, ctx: CallContext) -> bytes:
            code, _, message = request.decode("utf-8").partition(":")
            raise FlameError(FlameErrorCode(int(code)), message)

        with self.served({_FAIL: UnaryHandler(fail)}) as (_server, channel):
            async_channel = self._async(channel)

            @given(code=st.sampled_from(list(FlameErrorCode)), message=error_messages())
            def check(code: FlameErrorCode, message: str) -> None:
                future = async_channel.unary_async(_FAIL, f"{int(code)}:{message}".encode(), timeout=self.call_timeout)
                error = future.exception(self.call_timeout)
                assert isinstance(error, FlameError), f"the future failed with {error!r}, not a FlameError"
                assert (error.code, error.message) == (code, message), repr(error)

            self.hypothesis_settings()(check)()
            missing = async_channel.unary_async(f"{_SERVICE}/Missing", b"", timeout=self.call_timeout)
            error = missing.exception(self.call_timeout)
            assert isinstance(error, FlameError) and error.code == FlameErrorCode.UNIMPLEMENTED, repr(error)

    @requires("async_calls")
    def test_unary_async_deadline_and_absent_server(self) -> None:
        parked = _Parked()
        with self.served(self._adapted({_LATER: DeferredHandler(parked)})) as (_server, channel):
            start = time.monotonic()
            future = self._async(channel).unary_async(_LATER, b"", timeout=self.deadline_timeout)
            error = future.exception(self.deadline_timeout + self.prompt_deadline_s)
            assert isinstance(error, FlameError) and error.code == FlameErrorCode.DEADLINE_EXCEEDED, repr(error)
            assert time.monotonic() - start < self.deadline_timeout + self.prompt_deadline_s
            for _request, _ctx, responder in parked.calls:
                responder.send(b"late")  # dropped: the future already failed
        nobody = self.transport.connect(self.new_endpoint())
        try:
            future = self._async(nobody).unary_async(_ECHO, b"", timeout=self.call_timeout)
            error = future.exception(self.prompt_unavailable_s + 1)
            assert isinstance(error, FlameError) and error.code == FlameErrorCode.UNAVAILABLE, repr(error)
        finally:
            nobody.close()
