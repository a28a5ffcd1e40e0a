"""The zmq transport's own tests: what the conformance suite cannot see from outside.

Each test pins down something a plausible wrong implementation would get wrong: replies matched to the
wrong caller, late replies leaking into later calls, a dead server noticed only at the deadline,
CURVE admitting the wrong key, a flood losing requests, an oversized message sent anyway, a forked
child sharing its parent's socket, a restarted server not found again. Every wait is bounded.
"""

from __future__ import annotations

import json
import os
import queue
import random
import select
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
import zmq.auth
from conftest import Background, FlameEnv, ServerChild, echo_example_over
from flamepy_transports.zmq import framing
from flamepy_transports.zmq.config import STREAM_WINDOW_ITEMS

from flamepy_core.contracts import (
    DeferredStreamHandler,
    FlameError,
    FlameErrorCode,
    StreamHandler,
    StreamWriter,
    UnaryHandler,
)
from flamepy_core.contracts.transport import CallContext, Handler
from flamepy_core.plugins import get_registry

pytestmark = pytest.mark.timeout(60)

ECHO = "/test.Zmq/Echo"
SLEEP = "/test.Zmq/Sleep"
HANG = "/test.Zmq/Hang"
COUNT = "/test.Zmq/Count"
BIG = "/test.Zmq/Big"
FAIL = "/test.Zmq/Fail"
WATCH = "/test.Zmq/Watch"

# Small heartbeats: a silent peer is dropped within HEARTBEAT_BOUND seconds.
FAST = {"heartbeat_ivl_ms": 200, "heartbeat_timeout_ms": 600, "connect_timeout": 1.0}
HEARTBEAT_BOUND = (200 + 600) / 1000
SLACK = 1.0


def zmq_transport(**options: Any) -> Any:
    return get_registry().transport("zmq", **{**FAST, **options})


def endpoint_for(kind: str, tmp_path: Path) -> str:
    if kind == "tcp":
        return "zmq+tcp://127.0.0.1:0"
    return f"zmq+ipc://{tmp_path}/s.ipc"


def expect(code: FlameErrorCode, call: Callable[[], object], within: float | None = None) -> FlameError:
    start = time.monotonic()
    with pytest.raises(FlameError) as info:
        call()
    elapsed = time.monotonic() - start
    assert info.value.code == code, f"expected {code.name}, got {info.value!r} after {elapsed:.2f} s"
    if within is not None:
        assert elapsed < within, f"{code.name} took {elapsed:.2f} s, bound {within} s"
    return info.value


def echo(request: bytes, ctx: CallContext) -> bytes:
    return request


def sleep_then_echo(request: bytes, ctx: CallContext) -> bytes:
    # "<seconds>:<answer>"
    seconds, _, answer = request.partition(b":")
    time.sleep(float(seconds))
    return answer


@pytest.fixture()
def tmp_short(tmp_path: Path) -> Iterator[Path]:
    # AF_UNIX paths are limited to 107 bytes; pytest's tmp_path is usually short enough, check anyway.
    assert len(str(tmp_path)) < 80, tmp_path
    yield tmp_path


class Served:
    """A server plus a channel to it, both cleaned up."""

    def __init__(self, transport: Any, endpoint: str, handlers: dict[str, Handler]) -> None:
        self.transport = transport
        self.server = transport.serve(endpoint, handlers)
        self.channel = transport.connect(self.server.endpoint)

    def close(self) -> None:
        self.channel.close()
        self.server.stop(0.2)


@pytest.fixture()
def served() -> Iterator[Callable[..., Served]]:
    made: list[Served] = []

    def make(endpoint: str, handlers: dict[str, Handler], **options: Any) -> Served:
        s = Served(zmq_transport(**options), endpoint, handlers)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


# -- subprocess servers ------------------------------------------------------------------------------

CHILD = """
import json, sys, time
from flamepy_core.contracts import UnaryHandler
from flamepy_core.plugins import get_registry

transport = get_registry().transport("zmq", **json.loads(sys.argv[2]))

def echo(request, ctx):
    return request

def hang(request, ctx):
    print("HANDLING", flush=True)
    time.sleep(60)
    return b"never"

server = transport.serve(sys.argv[1], {"/test.Zmq/Echo": UnaryHandler(echo), "/test.Zmq/Hang": UnaryHandler(hang)})
print("READY " + server.endpoint, flush=True)
sys.stdin.read()
server.stop(0)
"""


class Child(ServerChild):
    def __init__(self, endpoint: str, options: dict[str, Any]) -> None:
        super().__init__(CHILD, endpoint, json.dumps(options))


@pytest.fixture()
def children() -> Iterator[Callable[[str, dict[str, Any]], Child]]:
    made: list[Child] = []

    def start(endpoint: str, options: dict[str, Any]) -> Child:
        child = Child(endpoint, options)
        made.append(child)
        return child

    yield start
    for child in made:
        child.kill()


# -- the basics on both kinds of endpoint --------------------------------------------------------------


@pytest.mark.parametrize("kind", ["tcp", "ipc"])
def test_unary_stream_and_errors(kind: str, tmp_short: Path, served: Callable[..., Served]) -> None:
    def count(request: bytes, ctx: CallContext) -> Iterator[bytes]:
        for i in range(int(request)):
            yield b"%d" % i

    def fail(request: bytes, ctx: CallContext) -> bytes:
        if request == b"flame":
            raise FlameError(FlameErrorCode.NOT_FOUND, "no such thing: ✓")
        raise KeyError("oops")

    s = served(
        endpoint_for(kind, tmp_short), {ECHO: UnaryHandler(echo), COUNT: StreamHandler(count), FAIL: UnaryHandler(fail)}
    )
    assert s.server.endpoint.startswith(f"zmq+{kind}://")
    if kind == "tcp":
        assert not s.server.endpoint.endswith(":0"), "port 0 must be resolved to the real port"
    payload = random.Random(1).randbytes(300_000)  # above the zero-copy threshold
    assert s.channel.unary(ECHO, payload, timeout=5) == payload
    assert s.channel.unary(ECHO, b"", timeout=5) == b""
    assert list(s.channel.stream(COUNT, b"1000", timeout=10)) == [b"%d" % i for i in range(1000)]
    err = expect(FlameErrorCode.NOT_FOUND, lambda: s.channel.unary(FAIL, b"flame", timeout=5))
    assert err.message == "no such thing: ✓"
    err = expect(FlameErrorCode.INTERNAL, lambda: s.channel.unary(FAIL, b"other", timeout=5))
    assert "KeyError" in err.message
    expect(FlameErrorCode.UNIMPLEMENTED, lambda: s.channel.unary("/test.Zmq/Nope", b"", timeout=5))
    expect(FlameErrorCode.UNIMPLEMENTED, lambda: list(s.channel.stream(ECHO, b"", timeout=5)))


def test_wire_format_is_the_documented_frames(served: Callable[..., Served]) -> None:
    """A raw DEALER speaking the documented two frames is answered; no pickling anywhere."""
    s = served("zmq+tcp://127.0.0.1:0", {ECHO: UnaryHandler(echo)})
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    try:
        sock.connect(s.server.endpoint.replace("zmq+tcp", "tcp"))
        sock.send_multipart(framing.request(framing.Kind.UNARY, 77, ECHO.encode(), 5.0, b"raw"))
        assert sock.poll(5000), "no answer to a well-formed request"
        frames = sock.recv_multipart()
        assert len(frames) == 2 and frames[1] == b"raw"
        assert frames[0] == b"FZ\x02\x10" + (77).to_bytes(8, "big") + bytes(24)
        # Another protocol version is refused with an explicit error carrying the same correlation id,
        # and so is version 1's five-frame message.
        newer = [b"FZ\x09\x01" + (78).to_bytes(8, "big") + bytes(24) + ECHO.encode(), b"x"]
        older = [b"FZ\x01\x01", (79).to_bytes(8, "big"), ECHO.encode(), bytes(24), b"x"]
        for corr, bad in ((78, newer), (79, older)):
            sock.send_multipart(bad)
            assert sock.poll(5000)
            reply = framing.decode(sock.recv_multipart())
            assert reply.kind is framing.Kind.ERROR and reply.corr == corr
            assert framing.error_of(reply).code == FlameErrorCode.INVALID_ARGUMENT
            assert "version" in framing.error_of(reply).message
        assert s.channel.unary(ECHO, b"still fine", timeout=5) == b"still fine"
    finally:
        sock.close()
        ctx.term()


def test_only_the_exact_reply_is_read_without_decoding() -> None:
    """A synchronous caller takes the payload of the REPLY to its own call at once (no Message built);
    anything else, another call's reply, an error, a wrong frame count, goes through decode."""
    reply = framing.reply(framing.Kind.REPLY, framing.pack_corr(5), b"answer")
    assert framing.reply_payload(reply, 5) == b"answer"
    assert framing.reply_payload(reply, 6) is None, "another call's (late) reply"
    err = framing.error(framing.pack_corr(5), FlameError(FlameErrorCode.NOT_FOUND, "gone"))
    assert framing.reply_payload(err, 5) is None
    assert framing.reply_payload(framing.reply(framing.Kind.ITEM, framing.pack_corr(5), b"x"), 5) is None
    assert framing.reply_payload([*reply, b"extra"], 5) is None
    assert framing.reply_payload([reply[0][:20], reply[1]], 5) is None, "a short header"
    assert framing.reply_payload([b"FZ\x03\x10" + reply[0][4:], reply[1]], 5) is None, "another version"


@pytest.mark.parametrize("kind", ["unary", "stream", "deferred stream"])
def test_a_vanished_caller_cancels_its_calls(kind: str, served: Callable[..., Served]) -> None:
    """A caller that goes away mid-call turns ctx.is_active() false; a stream waiting for credit ends; a
    deferred stream that sends nothing ends too (its writer's ``send`` says False)."""
    ended = threading.Event()
    writers: list[StreamWriter] = []

    def silent(request: bytes, ctx: CallContext, writer: StreamWriter) -> None:
        writers.append(writer)  # sends nothing: only the server's probes can notice the caller leave

        def watch() -> None:
            while ctx.is_active():
                time.sleep(0.01)
            ended.set()

        threading.Thread(target=watch, daemon=True).start()

    def patient(request: bytes, ctx: CallContext) -> bytes:
        while ctx.is_active():
            time.sleep(0.01)
        ended.set()
        return b"nobody is listening"

    def endless(request: bytes, ctx: CallContext) -> Iterator[bytes]:
        try:
            while True:
                yield b"item"  # blocks once the caller's window of one item is used
        finally:
            ended.set()

    handlers = {ECHO: UnaryHandler(patient), COUNT: StreamHandler(endless), WATCH: DeferredStreamHandler(silent)}
    s = served("zmq+tcp://127.0.0.1:0", handlers)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(s.server.endpoint.replace("zmq+tcp", "tcp"))
    if kind == "stream":
        request = framing.request(framing.Kind.STREAM, 1, COUNT.encode(), None, b"", window_items=1)
    elif kind == "deferred stream":
        request = framing.request(framing.Kind.STREAM, 1, WATCH.encode(), None, b"")  # no deadline
    else:
        request = framing.request(framing.Kind.UNARY, 1, ECHO.encode(), None, b"")  # no deadline
    sock.send_multipart(request)
    time.sleep(0.3)
    assert not ended.is_set()
    gone = time.monotonic()
    sock.close()
    ctx.term()
    assert ended.wait(5), "the call of a vanished caller was never cancelled"
    took = time.monotonic() - gone
    assert took < HEARTBEAT_BOUND + SLACK, f"noticed after {took:.2f} s"
    if writers:  # the server ended the stream itself, before its producer says anything more
        give_up = time.monotonic() + SLACK
        while s.server.stats()["running"] and time.monotonic() < give_up:
            time.sleep(0.01)
        assert s.server.stats()["running"] == 0, "the deferred stream of a vanished caller was left open"
        assert writers[0].send(b"late") is False, "a deferred stream's writer took a response for a vanished caller"


# -- correlation ---------------------------------------------------------------------------------------


def test_many_threads_on_one_channel_get_their_own_answers(served: Callable[..., Served]) -> None:
    def tagged(request: bytes, ctx: CallContext) -> bytes:
        time.sleep(random.random() / 1000)  # shuffle completion order
        return request[::-1]

    s = served(f"zmq+ipc://@flamepy-test-many-{os.getpid()}", {ECHO: UnaryHandler(tagged)}, max_workers=8)
    threads, per_thread = 32, 40
    wrong: list[str] = []
    done = [0]
    lock = threading.Lock()

    def worker(t: int) -> None:
        for i in range(per_thread):
            request = f"thread {t} call {i} {random.random()}".encode()
            got = s.channel.unary(ECHO, request, timeout=20)
            with lock:
                done[0] += 1
                if got != request[::-1]:
                    wrong.append(f"{request!r} -> {got!r}")

    pool = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
    for th in pool:
        th.start()
    for th in pool:
        th.join(40)
    assert not wrong, wrong[:5]
    assert done[0] == threads * per_thread


def test_replies_completed_on_other_threads_are_sent_by_those_threads(served: Callable[..., Served]) -> None:
    """A deferred call completed by another thread while the I/O thread waits is sent by that thread.

    That thread uses the socket while the I/O thread waits on its descriptor, so a request arriving
    meanwhile must still be read: callers on their own channels mix deferred calls (completed by a
    completer thread) with plain ones, and every caller gets its own answer.
    """
    from flamepy_core.contracts.transport import DeferredHandler, Responder

    later: queue.SimpleQueue[tuple[bytes, Responder] | None] = queue.SimpleQueue()

    def defer(request: bytes, ctx: CallContext, responder: Responder) -> None:
        later.put((request, responder))

    def complete() -> None:
        while (item := later.get()) is not None:
            request, responder = item
            time.sleep(random.random() / 2000)  # now and then the I/O thread is busy: the reply is queued
            responder.send(request[::-1])

    completer = threading.Thread(target=complete, daemon=True)
    completer.start()
    s = served(
        f"zmq+ipc://@flamepy-test-direct-{os.getpid()}", {ECHO: UnaryHandler(echo), SLEEP: DeferredHandler(defer)}
    )
    try:
        for i in range(50):  # one caller: the completer finds the I/O thread waiting
            assert s.channel.unary(SLEEP, b"call %d" % i, timeout=20) == (b"call %d" % i)[::-1]
        assert s.server.stats()["sent_direct"] > 0, "no reply was sent by the thread that completed it"
        wrong: list[str] = []

        def caller(t: int) -> None:
            channel = s.transport.connect(s.server.endpoint)
            try:
                for i in range(60):
                    request = f"caller {t} call {i}".encode()
                    deferred = i % 2 == 0
                    got = channel.unary(SLEEP if deferred else ECHO, request, timeout=20)
                    if got != (request[::-1] if deferred else request):
                        wrong.append(f"{request!r} -> {got!r}")
            finally:
                channel.close()

        pool = [threading.Thread(target=caller, args=(t,)) for t in range(6)]
        for th in pool:
            th.start()
        for th in pool:
            th.join(40)
        assert not any(th.is_alive() for th in pool), "a caller was left waiting"
        assert not wrong, wrong[:5]
    finally:
        later.put(None)


def test_a_host_thread_receives_its_calls_itself_and_the_io_thread_reads_while_it_is_away(
    served: Callable[..., Served],
) -> None:
    """``host_wait``: the waiting thread receives the calls itself (a service process's main thread, with no
    hand-off from the I/O thread); while it is away running a call, the I/O thread reads the socket again
    (a plain call is answered, a deferred one is started) and wakes the host's next wait."""
    from flamepy_core.contracts.transport import DeferredHandler, Responder

    seen: list[tuple[int, bytes, Responder]] = []

    def defer(request: bytes, ctx: CallContext, responder: Responder) -> None:
        seen.append((threading.get_ident(), request, responder))

    s = served(f"zmq+ipc://@flamepy-test-host-{os.getpid()}", {ECHO: UnaryHandler(echo), SLEEP: DeferredHandler(defer)})
    here = threading.get_ident()
    by_host = 0
    for i in range(20):
        request = b"call %d" % i
        call = Background(lambda request=request: s.channel.unary(SLEEP, request, timeout=20))
        deadline = time.monotonic() + 20
        while not seen:
            assert time.monotonic() < deadline, "the call was never received"
            assert s.server.host_wait(1.0), "the zmq server cannot lend its socket"
        ident, got, responder = seen.pop()
        assert got == request
        by_host += ident == here
        responder.send(got[::-1])
        call.join(20)
        assert call.error is None and call.result == request[::-1]
    # The first call may reach the I/O thread (the socket was not lent yet), and a host slowed down by a
    # busy machine may find the I/O thread reading again; not every one.
    assert by_host > 0, "no call was received by the host thread"

    # Away (not waiting) for longer than the I/O thread's look: a plain call is still answered.
    assert s.channel.unary(ECHO, b"meanwhile", timeout=20) == b"meanwhile"
    # A deferred call arriving now is started by the I/O thread, which wakes the host's next wait.
    call = Background(lambda: s.channel.unary(SLEEP, b"while away", timeout=20))
    deadline = time.monotonic() + 20
    while not seen:
        assert time.monotonic() < deadline, "the call was never received"
        time.sleep(0.01)
    assert seen[0][0] != here
    started = time.monotonic()
    assert s.server.host_wait(30.0)
    assert time.monotonic() - started < 25, "the host's wait ended by its timeout, not by the I/O thread's wake"
    seen.pop()[2].send(b"done")
    call.join(20)
    assert call.result == b"done"


def test_wake_host_ends_a_host_wait(served: Callable[..., Served]) -> None:
    """``wake_host`` (what a service's stop does, from a signal handler or another thread) ends the wait."""
    s = served(f"zmq+ipc://@flamepy-test-wake-{os.getpid()}", {ECHO: UnaryHandler(echo)})
    assert s.server.host_wait(0.01)  # lends the socket; nothing came
    timer = threading.Timer(0.05, s.server.wake_host)
    timer.start()
    started = time.monotonic()
    try:
        assert s.server.host_wait(30.0)
        assert time.monotonic() - started < 25, "the wait ended by its timeout, not by wake_host"
    finally:
        timer.cancel()
    assert s.channel.unary(ECHO, b"after", timeout=20) == b"after"


def test_a_burst_of_blocking_streams_and_calls_from_many_threads_is_all_answered(
    served: Callable[..., Served],
) -> None:
    """Sixty threads each open a stream whose handler blocks until that thread's unary call ends it.

    Every handler must get a worker at once (``max_workers`` is far above the burst), also when some
    workers are idle from earlier calls: a request left queued while every worker is busy in a stream
    waits for the next request, and the last ones for ever -- the unary call that would end a stream
    never runs, and the stream never ends.
    """
    ends: dict[bytes, threading.Event] = {}
    lock = threading.Lock()

    def end_of(key: bytes) -> threading.Event:
        with lock:
            return ends.setdefault(key, threading.Event())

    def watch(request: bytes, ctx: CallContext) -> Iterator[bytes]:
        yield b"open " + request
        while ctx.is_active() and not end_of(request).wait(0.05):
            pass
        yield b"end " + request

    def finish(request: bytes, ctx: CallContext) -> bytes:
        end_of(request).set()
        return b"ended " + request

    s = served(
        f"zmq+ipc://@flamepy-test-burst-{os.getpid()}",
        {COUNT: StreamHandler(watch), ECHO: UnaryHandler(finish), SLEEP: UnaryHandler(sleep_then_echo)},
        max_workers=512,
    )
    warm = [threading.Thread(target=s.channel.unary, args=(SLEEP, b"0.2:w", 5)) for _ in range(8)]
    for th in warm:
        th.start()
    for th in warm:
        th.join(10)  # a few workers now idle: the burst first wakes them, then needs new ones
    threads = 60
    barrier = threading.Barrier(threads, timeout=10)
    failures: list[str] = []

    def caller(t: int) -> None:
        key = str(t).encode()
        try:
            barrier.wait()  # all streams at once, then all the calls that end them at once
            stream = s.channel.stream(COUNT, key, timeout=8)
            assert next(stream) == b"open " + key
            barrier.wait()
            assert s.channel.unary(ECHO, key, timeout=8) == b"ended " + key
            assert list(stream) == [b"end " + key]
        except BaseException as exc:  # every failure is reported below
            failures.append(f"{key!r}: {exc!r}")
            barrier.abort()

    pool = [threading.Thread(target=caller, args=(t,)) for t in range(threads)]
    for th in pool:
        th.start()
    for th in pool:
        th.join(30)
    assert not failures, f"{len(failures)} of {threads} callers failed: {failures[:3]}"
    assert s.channel.stats()["pending"] == 0


@pytest.mark.parametrize("direct", [True, False])
def test_a_slow_call_does_not_hold_up_the_calls_made_meanwhile(direct: bool, served: Callable[..., Served]) -> None:
    """A call that takes long (made on the idle channel's socket by its caller, with direct_calls) lets
    the calls other threads make meanwhile through at once, with their own answers."""
    release = threading.Event()

    def slow(request: bytes, ctx: CallContext) -> bytes:
        release.wait(10)
        return b"slow " + request

    s = served("zmq+tcp://127.0.0.1:0", {SLEEP: UnaryHandler(slow), ECHO: UnaryHandler(echo)}, direct_calls=direct)
    assert s.channel.unary(ECHO, b"warm", timeout=5) == b"warm"  # connected: the next call may go direct
    slow_answer: list[bytes] = []
    caller = threading.Thread(target=lambda: slow_answer.append(s.channel.unary(SLEEP, b"x", timeout=20)))
    caller.start()
    try:
        time.sleep(0.2)  # the slow call is in flight
        for i in range(5):
            start = time.monotonic()
            assert s.channel.unary(ECHO, f"quick {i}".encode(), timeout=5) == f"quick {i}".encode()
            took = time.monotonic() - start
            assert took < 1.0, f"a quick call waited {took:.2f} s behind a slow one"
    finally:
        release.set()
        caller.join(20)
    assert slow_answer == [b"slow x"]
    assert s.channel.unary(ECHO, b"after", timeout=5) == b"after"


def test_late_reply_is_never_delivered_to_a_later_call(served: Callable[..., Served]) -> None:
    s = served("zmq+tcp://127.0.0.1:0", {SLEEP: UnaryHandler(sleep_then_echo)})
    assert s.channel.unary(SLEEP, b"0:warm", timeout=5) == b"warm"
    # A answers at ~0.4 s, after its 0.1 s deadline; B is in flight then and must get B's answer.
    expect(FlameErrorCode.DEADLINE_EXCEEDED, lambda: s.channel.unary(SLEEP, b"0.4:A", timeout=0.1), within=1.0)
    later = Background(lambda: s.channel.unary(SLEEP, b"0.7:B", timeout=5))
    quick = [s.channel.unary(SLEEP, b"0:C%d" % i, timeout=5) for i in range(5)]
    later.join(5)
    assert later.error is None and later.result == b"B", (later.error, later.result)
    assert quick == [b"C%d" % i for i in range(5)]
    deadline = time.monotonic() + 3
    while s.channel.stats()["late_replies"] < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert s.channel.stats()["late_replies"] == 1, "A's late reply was not dropped by correlation id"
    assert s.channel.stats()["socket_resets"] == 0, "a missed deadline must not cost the other calls their socket"


def test_many_deadlines_interleaved_with_answers(served: Callable[..., Served]) -> None:
    s = served("zmq+tcp://127.0.0.1:0", {SLEEP: UnaryHandler(sleep_then_echo)}, max_workers=16)
    errors: list[str] = []

    def worker(t: int) -> None:
        for i in range(10):
            if (t + i) % 3 == 0:
                try:
                    s.channel.unary(SLEEP, b"0.15:late", timeout=0.02)
                    errors.append("a call past its deadline returned")
                except FlameError as err:
                    if err.code != FlameErrorCode.DEADLINE_EXCEEDED:
                        errors.append(repr(err))
            else:
                answer = b"t%d-%d" % (t, i)
                got = s.channel.unary(SLEEP, b"0.01:" + answer, timeout=10)
                if got != answer:
                    errors.append(f"{answer!r} got {got!r}")

    pool = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for th in pool:
        th.start()
    for th in pool:
        th.join(30)
    assert not errors, errors[:5]


# -- liveness: a server that dies or freezes -------------------------------------------------------------


def test_server_killed_is_unavailable_within_the_heartbeat_bound(
    children: Callable[[str, dict[str, Any]], Child],
) -> None:
    child = children("zmq+tcp://127.0.0.1:0", FAST)
    transport = zmq_transport()
    channel = transport.connect(child.endpoint)
    try:
        assert channel.unary(ECHO, b"alive", timeout=10) == b"alive"
        call = Background(lambda: channel.unary(HANG, b"", timeout=30))
        assert child.read_line(10) == "HANDLING"
        killed = time.monotonic()
        os.kill(child.proc.pid, signal.SIGKILL)
        call.join(HEARTBEAT_BOUND + SLACK + 5)
        assert isinstance(call.error, FlameError) and call.error.code == FlameErrorCode.UNAVAILABLE, call.error
        assert call.ended - killed < HEARTBEAT_BOUND + SLACK, f"noticed after {call.ended - killed:.2f} s"
        # Nobody listens now: a new call fails promptly, not at its 30 s deadline.
        expect(FlameErrorCode.UNAVAILABLE, lambda: channel.unary(ECHO, b"?", timeout=30), within=1.5)
        # A server back on the same endpoint is found by the same channel.
        children(child.endpoint, FAST)
        assert channel.unary(ECHO, b"back", timeout=10) == b"back"
    finally:
        channel.close()


def test_frozen_server_is_unavailable_within_the_heartbeat_bound(
    tmp_short: Path, children: Callable[[str, dict[str, Any]], Child]
) -> None:
    # SIGSTOP keeps the socket open: only ZMTP heartbeats can tell that nobody answers any more.
    child = children(endpoint_for("ipc", tmp_short), FAST)
    channel = zmq_transport().connect(child.endpoint)
    try:
        assert channel.unary(ECHO, b"alive", timeout=10) == b"alive"
        call = Background(lambda: channel.unary(HANG, b"", timeout=30))
        assert child.read_line(10) == "HANDLING"
        frozen = time.monotonic()
        os.kill(child.proc.pid, signal.SIGSTOP)
        call.join(HEARTBEAT_BOUND + SLACK + 5)
        assert isinstance(call.error, FlameError) and call.error.code == FlameErrorCode.UNAVAILABLE, call.error
        took = call.ended - frozen
        assert took < HEARTBEAT_BOUND + SLACK, f"a frozen server was noticed after {took:.2f} s"
    finally:
        channel.close()


def test_a_call_cut_off_by_a_lost_connection_says_it_may_have_run_and_what_to_do(
    children: Callable[[str, dict[str, Any]], Child],
) -> None:
    # The error a call sent just before a restart gets (below), made certain here: the request was sent,
    # so the channel cannot know whether it ran, and says so with the endpoint and what the caller may do.
    child = children("zmq+tcp://127.0.0.1:0", FAST)
    channel = zmq_transport().connect(child.endpoint)
    try:
        call = Background(lambda: channel.unary(HANG, b"", timeout=30))
        assert child.read_line(10) == "HANDLING"  # this one did run
        os.kill(child.proc.pid, signal.SIGKILL)
        call.join(HEARTBEAT_BOUND + SLACK + 5)
        err = call.error
        assert isinstance(err, FlameError) and err.code == FlameErrorCode.UNAVAILABLE, err
        assert child.endpoint in err.message, err.message
        assert "may or may not have run" in err.message, err.message
        assert "call again if running it twice is harmless" in err.message, err.message
        # A call never sent (nobody accepts connections now) is not said to have maybe run.
        never = expect(FlameErrorCode.UNAVAILABLE, lambda: channel.unary(ECHO, b"?", timeout=30), within=1.5)
        assert "may or may not have run" not in never.message, never.message
    finally:
        channel.close()


@pytest.mark.parametrize("kind", ["tcp", "ipc"])
def test_restart_on_the_same_endpoint_is_reachable_by_the_same_channel(kind: str, tmp_short: Path) -> None:
    transport = zmq_transport()
    first = transport.serve(endpoint_for(kind, tmp_short), {ECHO: UnaryHandler(lambda r, c: b"1" + r)})
    channel = transport.connect(first.endpoint)
    servers = [first]
    try:
        assert channel.unary(ECHO, b"x", timeout=5) == b"1x"
        first.stop(0.5)
        first.stop(0.5)  # idempotent
        # stop() returned: the endpoint can be bound again at once.
        servers.append(transport.serve(first.endpoint, {ECHO: UnaryHandler(lambda r, c: b"2" + r)}))
        # The channel may not have seen the old connection go yet: a call written then fails UNAVAILABLE,
        # because the channel cannot tell whether the old server read it (see _Core._on_event). Only that
        # error is retried, for a bounded time, and the answer must come from the new server.
        give_up = time.monotonic() + 5
        failures: list[FlameError] = []
        while True:
            try:
                answer = channel.unary(ECHO, b"y", timeout=5)
                break
            except FlameError as err:
                if err.code != FlameErrorCode.UNAVAILABLE or time.monotonic() >= give_up:
                    raise
                failures.append(err)
            time.sleep(0.05)
        assert answer == b"2y"
        assert all(first.endpoint in err.message for err in failures), failures
    finally:
        channel.close()
        for server in servers:
            server.stop(0)


@pytest.mark.parametrize("kind", ["tcp", "ipc"])
def test_endpoint_in_use_is_already_exists(kind: str, tmp_short: Path, served: Callable[..., Served]) -> None:
    s = served(endpoint_for(kind, tmp_short), {ECHO: UnaryHandler(echo)})
    expect(FlameErrorCode.ALREADY_EXISTS, lambda: zmq_transport().serve(s.server.endpoint, {}))
    assert s.channel.unary(ECHO, b"still mine", timeout=5) == b"still mine"


def test_bad_endpoints_are_invalid_argument() -> None:
    transport = zmq_transport()
    for endpoint in ("zmq+tcp://127.0.0.1", "zmq+ipc://relative/path", "zmq+tcp://::1:5", "zmq+udp://x:1"):
        expect(FlameErrorCode.INVALID_ARGUMENT, lambda e=endpoint: transport.connect(e))
    expect(FlameErrorCode.INVALID_ARGUMENT, lambda: transport.connect("zmq+tcp://127.0.0.1:0"))
    expect(FlameErrorCode.INVALID_ARGUMENT, lambda: transport.serve("zmq+ipc:///" + "x" * 200, {}))


# -- CURVE ---------------------------------------------------------------------------------------------


def test_curve_admits_only_listed_client_keys(tmp_path: Path) -> None:
    keys, allowed = tmp_path / "keys", tmp_path / "allowed"
    for d in (keys, allowed):
        d.mkdir()
    server_public, server_secret = zmq.auth.create_certificates(keys, "server")
    good_public, good_secret = zmq.auth.create_certificates(keys, "good")
    _, bad_secret = zmq.auth.create_certificates(keys, "bad")
    (allowed / "good.key").write_bytes(Path(good_public).read_bytes())  # the server gets public keys only

    handled = [0]

    def counted(request: bytes, ctx: CallContext) -> bytes:
        handled[0] += 1
        return request

    server_transport = zmq_transport(
        curve_server_secret_key_file=server_secret, curve_client_public_keys_dir=str(allowed)
    )
    server = server_transport.serve("zmq+tcp://127.0.0.1:0", {ECHO: UnaryHandler(counted)})
    channels = []
    try:

        def client(secret: str | None) -> Any:
            options = (
                {}
                if secret is None
                else {"curve_server_public_key_file": server_public, "curve_client_secret_key_file": secret}
            )
            channel = zmq_transport(**options).connect(server.endpoint)
            channels.append(channel)
            return channel

        stranger = client(bad_secret)
        err = expect(FlameErrorCode.UNAUTHENTICATED, lambda: stranger.unary(ECHO, b"let me in", timeout=30), within=2)
        assert "CURVE key" in err.message
        # Refused again on a later call (libzmq stops reconnecting after a refusal; the channel retries).
        expect(FlameErrorCode.UNAUTHENTICATED, lambda: stranger.unary(ECHO, b"again", timeout=30), within=2)
        # Without CURVE the client sees UNAUTHENTICATED when it reads the server's greeting before the
        # server hangs up, else UNAVAILABLE naming CURVE (libzmq reports that race without detail).
        plain = client(None)
        with pytest.raises(FlameError) as info:
            plain.unary(ECHO, b"no keys", timeout=2)
        assert info.value.code in (FlameErrorCode.UNAUTHENTICATED, FlameErrorCode.UNAVAILABLE), info.value
        assert "CURVE" in info.value.message
        # The wrong server key: the server cannot be authenticated.
        impostor_key = str(Path(bad_secret).with_suffix(".key"))
        confused = zmq_transport(
            curve_server_public_key_file=impostor_key, curve_client_secret_key_file=good_secret
        ).connect(server.endpoint)
        channels.append(confused)
        err = expect(FlameErrorCode.UNAUTHENTICATED, lambda: confused.unary(ECHO, b"hm", timeout=30), within=2)
        assert "curve_server_public_key_file" in err.message
        assert handled[0] == 0, "an unauthenticated client reached a handler"
        assert server.stats()["zap_denied"] >= 2

        friend = client(good_secret)
        assert friend.unary(ECHO, b"hello", timeout=10) == b"hello"
        assert handled[0] == 1
    finally:
        for channel in channels:
            channel.close()
        server.stop(0)


def test_curve_options_are_checked_up_front(tmp_path: Path) -> None:
    _, secret = zmq.auth.create_certificates(tmp_path, "server")
    with pytest.raises(FlameError) as info:
        get_registry().transport("zmq", curve_server_secret_key_file=secret)  # no client keys allowed
    assert info.value.code == FlameErrorCode.INVALID_ARGUMENT and "client" in info.value.message
    with pytest.raises(FlameError):
        get_registry().transport("zmq", curve_server_public_key_file=str(tmp_path / "server.key"))
    with pytest.raises(FlameError):
        get_registry().transport(
            "zmq", curve_server_secret_key_file=str(tmp_path / "missing"), curve_client_public_keys_dir=str(tmp_path)
        )


# -- backpressure --------------------------------------------------------------------------------------


def test_flooded_server_answers_or_refuses_every_request(served: Callable[..., Served]) -> None:
    def work(request: bytes, ctx: CallContext) -> bytes:
        time.sleep(0.002)
        return request

    s = served("zmq+tcp://127.0.0.1:0", {ECHO: UnaryHandler(work)}, max_workers=4, max_pending_calls=12)
    channels = [s.transport.connect(s.server.endpoint) for _ in range(10)]
    outcomes = {"sent": 0, "ok": 0, "exhausted": 0}
    other: list[str] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + 1.5

    def client(n: int) -> None:
        channel = channels[n % len(channels)]
        i = 0
        while time.monotonic() < stop_at:
            request = b"%d/%d" % (n, i)
            i += 1
            with lock:
                outcomes["sent"] += 1
            try:
                got = channel.unary(ECHO, request, timeout=10)
            except FlameError as err:
                with lock:
                    if err.code == FlameErrorCode.RESOURCE_EXHAUSTED:
                        outcomes["exhausted"] += 1
                    else:
                        other.append(repr(err))
                continue
            with lock:
                if got == request:
                    outcomes["ok"] += 1
                else:
                    other.append(f"{request!r} answered {got!r}")

    threads = [threading.Thread(target=client, args=(n,)) for n in range(50)]
    try:
        for th in threads:
            th.start()
        for th in threads:
            th.join(30)
        assert not any(th.is_alive() for th in threads)
        assert not other, other[:5]
        assert outcomes["ok"] + outcomes["exhausted"] == outcomes["sent"], outcomes
        stats = s.server.stats()
        assert stats["accepted"] == outcomes["ok"] and stats["refused"] == outcomes["exhausted"], (stats, outcomes)
        assert outcomes["ok"] > 50 and outcomes["exhausted"] > 0, outcomes
        assert s.channel.unary(ECHO, b"after the flood", timeout=5) == b"after the flood"
    finally:
        for channel in channels:
            channel.close()


def test_stream_flow_control_holds_the_producer_back(served: Callable[..., Served]) -> None:
    produced = [0]
    closed = threading.Event()

    def endless(request: bytes, ctx: CallContext) -> Iterator[bytes]:
        try:
            while ctx.is_active():
                produced[0] += 1
                yield b"x" * 100
        finally:
            closed.set()

    s = served("zmq+tcp://127.0.0.1:0", {COUNT: StreamHandler(endless)})
    items = s.channel.stream(COUNT, b"", timeout=20)
    for _ in range(10):
        next(items)
    time.sleep(0.3)  # let the producer run as far as it may
    assert produced[0] <= 10 + STREAM_WINDOW_ITEMS + 2, f"the producer ran {produced[0]} items ahead"
    items.close()  # type: ignore[attr-defined]
    assert closed.wait(5), "closing the stream did not stop the handler"


def test_stream_deadline_mid_stream(served: Callable[..., Served]) -> None:
    def stall(request: bytes, ctx: CallContext) -> Iterator[bytes]:
        yield b"first"
        time.sleep(1.0)
        yield b"late"

    s = served("zmq+tcp://127.0.0.1:0", {COUNT: StreamHandler(stall), ECHO: UnaryHandler(echo)})
    items = s.channel.stream(COUNT, b"", timeout=0.3)
    assert next(items) == b"first"
    expect(FlameErrorCode.DEADLINE_EXCEEDED, lambda: next(items), within=1.0)
    assert s.channel.unary(ECHO, b"fine", timeout=5) == b"fine"


# -- message size ----------------------------------------------------------------------------------------


def test_oversized_messages_are_refused_with_both_sizes(served: Callable[..., Served]) -> None:
    handled = [0]

    def big(request: bytes, ctx: CallContext) -> bytes:
        handled[0] += 1
        return b"y" * int(request)

    s = served("zmq+tcp://127.0.0.1:0", {BIG: UnaryHandler(big)}, max_message_size=1024)
    err = expect(FlameErrorCode.MESSAGE_TOO_LARGE, lambda: s.channel.unary(BIG, b"x" * 2000, timeout=5), within=0.5)
    assert "2000" in err.message and "1024" in err.message
    assert handled[0] == 0, "an oversized request was sent"
    # A response too large is reported to the caller, not dropped.
    err = expect(FlameErrorCode.MESSAGE_TOO_LARGE, lambda: s.channel.unary(BIG, b"5000", timeout=5), within=2)
    assert "5000" in err.message and "1024" in err.message
    assert s.channel.unary(BIG, b"10", timeout=5) == b"y" * 10
    # The server enforces its own limit against a client configured with a larger one.
    loose = zmq_transport(max_message_size=1 << 20).connect(s.server.endpoint)
    try:
        err = expect(FlameErrorCode.MESSAGE_TOO_LARGE, lambda: loose.unary(BIG, b"7" * 3000, timeout=5), within=2)
        assert "3000" in err.message and "1024" in err.message
    finally:
        loose.close()
    assert handled[0] == 2


# -- fork ----------------------------------------------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_builds_its_own_socket(served: Callable[..., Served]) -> None:
    s = served("zmq+tcp://127.0.0.1:0", {ECHO: UnaryHandler(lambda r, c: b"pid %d: " % os.getpid() + r)})
    server_pid = os.getpid()
    assert s.channel.unary(ECHO, b"parent", timeout=5) == b"pid %d: parent" % server_pid
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report through the pipe, never return into pytest
        code = 1
        try:
            answer = s.channel.unary(ECHO, b"child", timeout=5)
            try:
                s.server.stop(0)
                stop_error = "no error"
            except FlameError as err:
                stop_error = f"{err.code.name}: {err.message}"
            os.write(write_fd, json.dumps({"answer": answer.decode(), "stop": stop_error}).encode())
            code = 0
        except BaseException as exc:
            os.write(write_fd, json.dumps({"error": repr(exc)}).encode())
        finally:
            os._exit(code)
    os.close(write_fd)
    try:
        assert select.select([read_fd], [], [], 20)[0], "the child did not answer within 20 s"
        report = json.loads(os.read(read_fd, 65536) or b"{}")
    finally:
        os.close(read_fd)
        deadline = time.monotonic() + 10
        while os.waitpid(pid, os.WNOHANG) == (0, 0):
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                break
            time.sleep(0.01)
    assert report.get("answer") == f"pid {server_pid}: child", report
    assert report["stop"].startswith("INVALID_STATE") and str(server_pid) in report["stop"], report
    assert str(pid) in report["stop"], report
    # The parent's channel and server are untouched by the child.
    assert s.channel.unary(ECHO, b"parent again", timeout=5) == b"pid %d: parent again" % server_pid


# -- lifecycle -----------------------------------------------------------------------------------------


def test_close_and_stop_release_threads(tmp_short: Path) -> None:
    before = {t.name for t in threading.enumerate()}
    transport = zmq_transport()
    for kind in ("tcp", "ipc"):
        server = transport.serve(endpoint_for(kind, tmp_short), {ECHO: UnaryHandler(echo)})
        channel = transport.connect(server.endpoint)
        assert channel.unary(ECHO, b"x", timeout=5) == b"x"
        channel.close()
        server.stop(0)
        expect(FlameErrorCode.UNAVAILABLE, lambda c=channel: c.unary(ECHO, b"x", timeout=5), within=0.5)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        left = {t.name for t in threading.enumerate() if t.name.startswith("flamepy-zmq")} - before
        if not left:
            break
        time.sleep(0.05)
    assert not left, f"threads left behind: {left}"
    assert not (tmp_short / "s.ipc").exists(), "the ipc socket file was left behind"


def test_readable_and_recv_frames_answer_as_zmq_does_and_refuse_a_closed_socket() -> None:
    """The socket helpers on every call's path: ``readable`` asks through ``zmq_poll``, whose pyzmq would
    poll file descriptor 0 for a closed socket (its handle is NULL) and answer from whatever stdin holds;
    ``recv_frames`` reads ``more`` from each frame. A closed socket is refused as ``getsockopt`` refuses it."""
    from flamepy_transports.zmq.waker import readable, recv_frames

    ctx = zmq.Context()
    try:
        a, b = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
        a.bind("inproc://readable-test")
        b.connect("inproc://readable-test")
        assert not readable(b)
        a.send_multipart([b"head", b"", b"x" * 100_000])
        deadline = time.monotonic() + 10
        while not readable(b):
            assert time.monotonic() < deadline, "a message sent on inproc never became readable"
            time.sleep(0.001)
        assert recv_frames(b) == [b"head", b"", b"x" * 100_000]
        assert not readable(b)
        a.send(b"single")
        while not readable(b):
            assert time.monotonic() < deadline, "the second message never became readable"
            time.sleep(0.001)
        assert recv_frames(b) == [b"single"]
        with pytest.raises(zmq.Again):
            recv_frames(b)
        b.close()
        with pytest.raises(zmq.ZMQError) as closed:
            readable(b)
        assert closed.value.errno == zmq.ENOTSOCK
        a.close()
    finally:
        ctx.term()


def test_flame_transport_zmq_carries_the_whole_runtime(flame_env: FlameEnv, tmp_path: Path) -> None:
    """uds is the local default; ZeroMQ by configuration alone still carries the guide's echo example end to
    end: the local server listens on zmq+ipc:// and links its instances with it."""
    lines, info = echo_example_over(flame_env, tmp_path / "echo", "zmq")
    assert lines[:2] == ["HELLO", "1"] and lines[2].startswith("echo-app-"), lines
    assert info["transport"] == "zmq" and info["endpoint"] == f"zmq+ipc://{flame_env.home}/flame.ipc", info
