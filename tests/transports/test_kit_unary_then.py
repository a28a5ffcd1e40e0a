"""``unary_then``: a unary call whose outcome goes to a callback, exactly once, and never before ``arm()``.

The server calls a task's service process with it (``Scheduler._call``) and records the task between the
send and ``arm()``: an answer handled before that would find the task unrecorded. So the rules are the
ones tested here, on the kit's native ``FramedChannel.unary_then`` (uds) and on the future a channel
without it falls back to (zmq, inmem): an answer that came before ``arm()`` is delivered by ``arm()``
itself, on the caller's thread; one that comes later, on the transport's thread; an error, a missed
deadline, a lost connection and a failure before the request went out are outcomes like an answer.
Real servers and sockets; the handler holds its responder so that the test decides when it answers.
"""

from __future__ import annotations

import os
import queue
import tempfile
import threading
import time
from collections.abc import Iterator
from functools import partial
from typing import Any

import pytest
from conftest import ServedPair, wait_for
from hypothesis import given, settings
from hypothesis import strategies as st

from flamepy_core.contracts import (
    CallbackChannel,
    CallContext,
    DeferredHandler,
    FlameError,
    FlameErrorCode,
    Responder,
    UnaryHandler,
)
from flamepy_core.kit.basics import unary_then
from flamepy_core.plugins import get_registry

ECHO = "/test.Then/Echo"
HOLD = "/test.Then/Hold"
"""Keeps its responder for the test to answer (or not)."""
FAIL = "/test.Then/Fail"
TRANSPORTS = ["uds", "zmq", "inmem"]


class Served(ServedPair):
    def __init__(self, transport: str) -> None:
        self.dir = tempfile.mkdtemp(prefix="fl-then-", dir="/tmp")
        self.transport = get_registry().transport(transport)
        self.held: queue.Queue[tuple[bytes, Responder]] = queue.Queue()
        endpoint = {
            "uds": f"uds://{self.dir}/s.sock",
            "zmq": f"zmq+ipc://{self.dir}/s.ipc",
            "inmem": f"inmem://then-{os.getpid()}-{id(self)}",
        }[transport]

        def hold(request: bytes, ctx: CallContext, responder: Responder) -> None:
            self.held.put((request, responder))

        def fail(request: bytes, ctx: CallContext) -> bytes:
            raise FlameError(FlameErrorCode.NOT_FOUND, f"no {request!r} here")

        handlers: Any = {
            ECHO: UnaryHandler(lambda request, ctx: request),
            HOLD: DeferredHandler(hold),
            FAIL: UnaryHandler(fail),
        }
        self.server: Any = self.transport.serve(endpoint, handlers)
        self.channel: Any = self.transport.connect(self.server.endpoint)

    def answer_next(self, transform: Any = bytes) -> None:
        request, responder = self.held.get(timeout=10)
        responder.send(transform(request))


class Outcomes:
    """What ``on_done`` got, with the thread it ran on."""

    def __init__(self) -> None:
        self.got: list[tuple[bytes | FlameError, int]] = []
        self.done = threading.Event()

    def __call__(self, outcome: bytes | FlameError) -> None:
        self.got.append((outcome, threading.get_ident()))
        self.done.set()

    def one(self) -> tuple[bytes | FlameError, int]:
        assert self.done.wait(10), "on_done was not called within 10 s"
        time.sleep(0.05)  # (a second call, were there one, would come about now)
        assert len(self.got) == 1, f"on_done ran {len(self.got)} times"
        return self.got[0]


@pytest.fixture(params=TRANSPORTS)
def served(request: pytest.FixtureRequest) -> Iterator[Served]:
    s = Served(request.param)
    yield s
    s.close()


def test_the_uds_channel_has_its_own_unary_then() -> None:
    """The local default's channel is a ``CallbackChannel``: the server's calls to its instances hold no future."""
    channel = get_registry().transport("uds").connect("uds:///nowhere/s.sock")
    try:
        assert isinstance(channel, CallbackChannel)
    finally:
        channel.close()


def test_an_answer_before_arm_waits_for_it_and_is_delivered_by_it(served: Served) -> None:
    outcomes = Outcomes()
    arm = unary_then(served.channel, ECHO, b"early", outcomes, timeout=10)
    time.sleep(0.3)  # the answer has come (a loopback echo), and must wait
    assert outcomes.got == [], "on_done ran before arm()"
    arm()
    assert outcomes.got, "arm() did not deliver the answer that had come"
    outcome, thread = outcomes.one()
    assert outcome == b"early"
    assert thread == threading.get_ident(), "an answer that came first is delivered on the thread that arms"


def test_an_answer_after_arm_comes_on_another_thread(served: Served) -> None:
    """Not on the thread that armed the call: on the transport's (the one reading the link; inmem's
    responder completes the call on the thread that answers, here one of the test's own)."""
    outcomes = Outcomes()
    arm = unary_then(served.channel, HOLD, b"late", outcomes, timeout=10)
    arm()
    assert outcomes.got == []
    answering = threading.Thread(target=served.answer_next, args=(lambda request: request.upper(),))
    answering.start()
    answering.join(10)
    outcome, thread = outcomes.one()
    assert outcome == b"LATE"
    assert thread != threading.get_ident()


def test_a_handlers_error_is_an_outcome(served: Served) -> None:
    outcomes = Outcomes()
    unary_then(served.channel, FAIL, b"thing", outcomes, timeout=10)()
    error, _thread = outcomes.one()
    assert isinstance(error, FlameError)
    assert error.code == FlameErrorCode.NOT_FOUND and "thing" in error.message


def test_a_missed_deadline_is_an_outcome_once(served: Served) -> None:
    outcomes = Outcomes()
    unary_then(served.channel, HOLD, b"never", outcomes, timeout=0.2)()
    error, _thread = outcomes.one()
    assert isinstance(error, FlameError) and error.code == FlameErrorCode.DEADLINE_EXCEEDED
    _request, responder = served.held.get(timeout=10)
    responder.send(b"too late")  # the server answers after all: nothing more reaches on_done
    time.sleep(0.2)
    assert len(outcomes.got) == 1


def test_a_lost_server_is_an_outcome_once(served: Served) -> None:
    outcomes = Outcomes()
    unary_then(served.channel, HOLD, b"waiting", outcomes, timeout=30)()
    served.held.get(timeout=10)
    served.server.stop(0)
    error, _thread = outcomes.one()
    assert isinstance(error, FlameError)
    assert error.code in (FlameErrorCode.UNAVAILABLE, FlameErrorCode.CANCELLED), error


def test_a_failure_before_sending_waits_for_arm_too() -> None:
    folder = tempfile.mkdtemp(prefix="fl-then-", dir="/tmp")
    channel: Any = get_registry().transport("uds").connect(f"uds://{folder}/nobody.sock")
    try:
        outcomes = Outcomes()
        arm = unary_then(channel, ECHO, b"x", outcomes, timeout=5)
        assert outcomes.got == [], "on_done ran before arm()"
        arm()
        error, thread = outcomes.one()
        assert isinstance(error, FlameError) and error.code == FlameErrorCode.UNAVAILABLE
        assert thread == threading.get_ident()
    finally:
        channel.close()
        os.rmdir(folder)


@settings(max_examples=15, deadline=None)
@given(plan=st.lists(st.tuples(st.booleans(), st.floats(0, 0.003)), min_size=1, max_size=20))
def test_many_calls_each_outcome_once_whatever_comes_first(plan: list[tuple[bool, float]]) -> None:
    """Calls in flight together on one channel, each answered before or after its ``arm()`` (by another
    thread, after a pause): every ``on_done`` runs once, with its own answer, never before its ``arm()``."""
    s = Served("uds")
    try:
        armed: list[bool] = [False] * len(plan)
        early: list[int] = []
        got: dict[int, list[bytes | FlameError]] = {i: [] for i in range(len(plan))}

        def on_done(index: int, outcome: bytes | FlameError) -> None:
            if not armed[index]:
                early.append(index)
            got[index].append(outcome)

        arms = [unary_then(s.channel, HOLD, str(i).encode(), partial(on_done, i), 10) for i in range(len(plan))]
        answers = {int(request): responder for request, responder in (s.held.get(timeout=10) for _ in plan)}

        def answer(index: int, pause: float) -> None:
            time.sleep(pause)
            answers[index].send(b"answer %d" % index)

        answered_first = [threading.Thread(target=answer, args=(i, p)) for i, (first, p) in enumerate(plan) if first]
        for thread in answered_first:
            thread.start()
        for thread in answered_first:
            thread.join(10)
        time.sleep(0.05)  # (what was answered has time to come, and must wait for its arm)
        later = []
        for index, (first, pause) in enumerate(plan):
            armed[index] = True
            arms[index]()
            if not first:
                later.append(threading.Thread(target=answer, args=(index, pause)))
                later[-1].start()
        for thread in later:
            thread.join(10)
        wait_for(lambda: all(got[i] for i in got), 10, "every call's outcome")
        time.sleep(0.05)
        assert early == [], f"on_done ran before arm() for calls {early}"
        assert got == {i: [b"answer %d" % i] for i in got}
    finally:
        s.close()


class _Raising:
    """A channel whose ``unary_async`` raises its FlameError instead of failing the future (allowed before a
    request goes out), and one whose future fails with something that is not a FlameError (a bug below the
    contract): ``unary_then`` turns both into an outcome, once armed."""

    def __init__(self, how: str) -> None:
        self.how = how

    def unary(self, method: str, request: bytes, timeout: Any = None) -> bytes:
        raise AssertionError("not called")

    def unary_async(self, method: str, request: bytes, timeout: Any = None) -> Any:
        from concurrent.futures import Future

        if self.how == "raises":
            raise FlameError(FlameErrorCode.RESOURCE_EXHAUSTED, "no room to send")
        failed: Future[bytes] = Future()
        failed.set_exception(RuntimeError("a bug below the contract"))
        return failed


@pytest.mark.parametrize(
    ("how", "code"), [("raises", FlameErrorCode.RESOURCE_EXHAUSTED), ("not a FlameError", FlameErrorCode.INTERNAL)]
)
def test_a_channel_without_unary_then_that_fails_early_gives_an_outcome_once_armed(
    how: str, code: FlameErrorCode
) -> None:
    outcomes = Outcomes()
    arm = unary_then(_Raising(how), "/test.Then/Any", b"x", outcomes, timeout=5)
    assert outcomes.got == [], "on_done ran before arm()"
    arm()
    error, _thread = outcomes.one()
    assert isinstance(error, FlameError) and error.code == code
