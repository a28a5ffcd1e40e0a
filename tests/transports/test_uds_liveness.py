"""The uds transport's watch for a stopped server (:class:`~flamepy_core.kit.framed_client.PeerWatch`).

A server stopped with ``SIGSTOP`` keeps its socket open, so nothing arrives to say it is gone: without a
watch its callers wait until their deadlines, or for ever without one. These run the server in a child
process (the watch never judges its own process) and check that a call waiting on a stopped server fails
with ``UNAVAILABLE`` naming the process within the bound, whatever kind of call it is; that a server
merely slow, or busy holding its GIL, is never failed; that an idle connection is not watched (its timer
thread sleeps); and that a link that cannot tell leaves calls to their deadlines. Every wait is bounded,
and a stopped child is always continued and killed.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest
from conftest import Background, ServerChild
from flamepy_transports.uds.transport import PREAMBLE, UdsTransport, socket_path

from flamepy_core.contracts import FlameError, FlameErrorCode
from flamepy_core.kit.links import Link, SocketLink, dial_unix
from flamepy_core.plugins import get_registry

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(
        not sys.platform.startswith("linux") or not os.path.exists("/proc/self/stat"),
        reason="the state of a peer process is read from /proc (Linux)",
    ),
]

ECHO = "/test.Live/Echo"
HANG = "/test.Live/Hang"
SLEEP = "/test.Live/Sleep"
SPIN = "/test.Live/Spin"
COUNT = "/test.Live/Count"

# A small watch: a stopped server fails its callers within BOUND seconds.
FAST = {"heartbeat_ivl_ms": 200, "heartbeat_timeout_ms": 600}
BOUND = (200 + 600) / 1000
SLACK = 1.0

CHILD = """
import os, sys, time
from flamepy_core.contracts import StreamHandler, UnaryHandler
from flamepy_transports.uds.transport import UdsTransport

def echo(request, ctx):
    return request

def hang(request, ctx):
    os.write(1, b"HANDLING\\n")  # one write: two handlers' lines never interleave, as print's parts can
    time.sleep(60)
    return b"never"

def sleep(request, ctx):
    time.sleep(float(request))
    return b"slept"

def spin(request, ctx):
    # Busy in Python: the process runs (state R) and its GIL is mostly held, yet it answers nothing.
    end = time.monotonic() + float(request)
    while time.monotonic() < end:
        pass
    return b"spun"

def count(request, ctx):
    yield b"first"
    os.write(1, b"HANDLING\\n")  # one write: two handlers' lines never interleave, as print's parts can
    time.sleep(60)
    yield b"never"

handlers = {
    "/test.Live/Echo": UnaryHandler(echo),
    "/test.Live/Hang": UnaryHandler(hang),
    "/test.Live/Sleep": UnaryHandler(sleep),
    "/test.Live/Spin": UnaryHandler(spin),
    "/test.Live/Count": StreamHandler(count),
}
server = UdsTransport().serve(sys.argv[1], handlers)
print("READY " + server.endpoint, flush=True)
sys.stdin.read()
server.stop(0)
"""


class Child(ServerChild):
    """A uds server in a child process; it says ``HANDLING`` when a hanging call has reached its handler."""

    def __init__(self, endpoint: str) -> None:
        super().__init__(CHILD, endpoint)

    def stop(self) -> float:
        """SIGSTOP the child; returns when it is seen stopped (the signal is delivered asynchronously)."""
        stopped = time.monotonic()
        os.kill(self.proc.pid, signal.SIGSTOP)
        deadline = stopped + 10
        while _state(self.proc.pid) not in ("T", "t"):
            assert time.monotonic() < deadline, "the child was not stopped"
            time.sleep(0.005)
        return stopped


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat", "rb") as file:
        data = file.read()
    return data[data.rindex(b")") + 1 :].split()[0].decode()


@pytest.fixture()
def child(tmp_path: Path) -> Iterator[Child]:
    assert len(str(tmp_path)) < 80, tmp_path
    made = Child(f"uds://{tmp_path}/s.sock")
    try:
        yield made
    finally:
        made.kill()


def uds(**options: Any) -> Any:
    return get_registry().transport("uds", **{**FAST, **options})


def _outcome_of_future(future: Future[bytes]) -> Callable[[], object]:
    def wait() -> object:
        return future.result(BOUND + SLACK + 10)

    return wait


def assert_failed_as_stopped(call: Background, child: Child, frozen: float) -> None:
    call.join(BOUND + SLACK + 10)
    err = call.error
    assert isinstance(err, FlameError) and err.code == FlameErrorCode.UNAVAILABLE, repr(err)
    assert f"the server process {child.proc.pid} has been stopped" in err.message, err.message
    assert child.endpoint in err.message, err.message
    took = call.ended - frozen
    assert took < BOUND + SLACK, f"a stopped server was noticed after {took:.2f} s"


# -- a stopped server -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["unary", "unary_async", "stream"])
def test_a_stopped_server_fails_the_calls_waiting_on_it_within_the_bound_naming_its_pid(
    kind: str, child: Child
) -> None:
    """No deadline (a core ``invoke`` has none): only the watch can end these calls. Two blocking callers
    (one reads the link itself, the other waits for it), a call no thread waits on, and a stream between
    two items all fail at once, within the interval plus the timeout."""
    channel = uds().connect(child.endpoint)
    try:
        assert channel.unary(ECHO, b"alive", timeout=10) == b"alive"
        calls: list[Background] = []
        if kind == "unary":
            calls = [Background(lambda: channel.unary(HANG, b"", timeout=None)) for _ in range(2)]
            assert child.read_line(10) == "HANDLING" and child.read_line(10) == "HANDLING"
        elif kind == "unary_async":
            future = channel.unary_async(HANG, b"", timeout=None)
            assert child.read_line(10) == "HANDLING"
            calls = [Background(_outcome_of_future(future))]
        else:
            items = channel.stream(COUNT, b"", timeout=None)
            assert next(items) == b"first"
            assert child.read_line(10) == "HANDLING"
            calls = [Background(lambda: next(items))]
        frozen = child.stop()
        for call in calls:
            assert_failed_as_stopped(call, child, frozen)
    finally:
        channel.close()


def test_a_stopped_server_fails_a_stream_to_callbacks(child: Child) -> None:
    """``stream_async``: no thread waits on it, its ``on_end`` gets the error (on the timer thread)."""
    channel = uds().connect(child.endpoint)
    ended: Future[FlameError | None] = Future()
    try:
        channel.stream_async(COUNT, b"", lambda item: None, ended.set_result, timeout=None)
        assert child.read_line(10) == "HANDLING"
        frozen = child.stop()
        error = ended.result(BOUND + SLACK + 10)
        took = time.monotonic() - frozen
        assert error is not None and error.code == FlameErrorCode.UNAVAILABLE, repr(error)
        assert str(child.proc.pid) in error.message, error.message
        assert took < BOUND + SLACK, f"a stopped server was noticed after {took:.2f} s"
    finally:
        channel.close()


def test_a_call_blocked_sending_to_a_stopped_server_is_woken(child: Child) -> None:
    """A request larger than the socket's buffers blocks its sender while the server reads nothing: the
    watch fails the connection and shuts the socket down, which wakes the send."""
    channel = uds().connect(child.endpoint)
    try:
        assert channel.unary(ECHO, b"alive", timeout=10) == b"alive"
        frozen = child.stop()
        call = Background(lambda: channel.unary(ECHO, bytes(32 * 1024 * 1024), timeout=None))
        assert_failed_as_stopped(call, child, frozen)
    finally:
        channel.close()


def test_an_idle_connection_is_not_watched_and_a_call_to_a_stopped_server_fails_once_it_waits(child: Child) -> None:
    """Idle, the connection's timer thread sleeps without a deadline: stopping the server changes nothing
    and wakes nobody. The next call waits, is watched, fails within the bound; once the server is continued,
    the channel dials it again."""
    channel = uds().connect(child.endpoint)
    try:
        assert channel.unary(ECHO, b"alive", timeout=10) == b"alive"
        conn = channel._conn
        deadline = time.monotonic() + 10
        while conn._watch_at is not None:  # a whole interval with no call: the watch goes to sleep
            assert time.monotonic() < deadline, "the watch of an idle connection never went to sleep"
            time.sleep(0.05)
        wakes = conn.timer_wakes
        child.stop()
        time.sleep(BOUND + SLACK)
        assert conn.usable(), conn.dead
        assert conn.timer_wakes == wakes, "the timer thread of an idle connection woke"

        started = time.monotonic()
        call = Background(lambda: channel.unary(ECHO, b"are you there", timeout=30))
        assert_failed_as_stopped(call, child, started)

        os.kill(child.proc.pid, signal.SIGCONT)
        assert channel.unary(ECHO, b"back", timeout=10) == b"back"
    finally:
        channel.close()


# -- a server that is not stopped is never failed ------------------------------------------------------


@pytest.mark.parametrize("method", [SLEEP, SPIN])
def test_a_slow_or_busy_server_is_never_failed(method: str, child: Child) -> None:
    """A handler sleeping, or spinning in Python (its GIL held most of the time), for three times the bound:
    the server answers nothing meanwhile, yet runs, and its call gets its answer. The watch did look."""
    channel = uds().connect(child.endpoint)
    try:
        assert channel.unary(ECHO, b"alive", timeout=10) == b"alive"
        conn = channel._conn
        looks = conn.peer_looks
        answer = channel.unary(method, b"%.1f" % (3 * BOUND), timeout=30)
        assert answer in (b"slept", b"spun")
        assert conn.usable(), conn.dead
        assert conn.peer_looks >= looks + 3, "the watch never looked while the call waited"
    finally:
        channel.close()


# -- a link that cannot tell leaves calls to their deadlines ------------------------------------------


class _Opaque:
    """A link with only the required methods (and the two that let a caller read its own answer)."""

    def __init__(self, link: SocketLink) -> None:
        self._link = link

    def send(self, parts: Any) -> None:
        self._link.send(parts)

    def recv(self) -> Any:
        return self._link.recv()

    def close(self) -> None:
        self._link.close()

    def abandon(self) -> None:
        self._link.abandon()

    def fileno(self) -> int:
        return self._link.fileno()

    def pending(self) -> bool:
        return self._link.pending()


class _NoPid(SocketLink):
    """A unix-socket link whose peer's pid is unknown (as for a peer in another pid namespace)."""

    def peer_pid(self) -> int | None:
        return None


class _Blind(UdsTransport):
    """uds with links that cannot tell a stopped server: ``how`` says which kind."""

    def __init__(self, how: str, **options: Any) -> None:
        super().__init__(**options)
        self.how = how

    def dial(self, endpoint: str, timeout: float) -> Link:
        sock = dial_unix(socket_path(endpoint), endpoint, timeout)
        if self.how == "no method":
            return _Opaque(SocketLink(sock, self.max_message_size, preamble=PREAMBLE, dialled=True))
        return _NoPid(sock, self.max_message_size, preamble=PREAMBLE, dialled=True)


@pytest.mark.parametrize("how", ["no method", "pid unknown"])
def test_a_link_that_cannot_tell_leaves_calls_to_their_deadlines(how: str, child: Child) -> None:
    channel = _Blind(how, **FAST).connect(child.endpoint)
    try:
        assert channel.unary(ECHO, b"alive", timeout=10) == b"alive"
        assert channel._conn._watch is None
        call = Background(lambda: channel.unary(HANG, b"", timeout=BOUND + SLACK + 1.5))
        assert child.read_line(10) == "HANDLING"
        child.stop()
        call.join(BOUND + SLACK + 15)
        err = call.error
        assert isinstance(err, FlameError) and err.code == FlameErrorCode.DEADLINE_EXCEEDED, repr(err)
    finally:
        channel.close()


# -- the link's answer, and the options ----------------------------------------------------------------


def test_a_socket_link_tells_its_peer_pid_and_whether_it_is_stopped(child: Child) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(socket_path(child.endpoint))
    link = SocketLink(sock, 1024, preamble=PREAMBLE, dialled=True)
    try:
        assert link.peer_pid() == child.proc.pid
        assert link.peer_stopped() is False
        child.stop()
        assert link.peer_stopped() is True
        os.kill(child.proc.pid, signal.SIGCONT)
        deadline = time.monotonic() + 10
        while link.peer_stopped():
            assert time.monotonic() < deadline, "the child was never seen running again"
            time.sleep(0.005)
        assert link.peer_stopped() is False
    finally:
        link.close()
        sock.close()

    # Over TCP, and to this very process, nothing is told.
    listener = socket.create_server(("127.0.0.1", 0))
    tcp = socket.create_connection(listener.getsockname())
    left, right = socket.socketpair()
    try:
        assert SocketLink(tcp, 1024, preamble=b"x", dialled=False).peer_stopped() is None
        assert SocketLink(left, 1024, preamble=b"x", dialled=False).peer_stopped() is None
    finally:
        for s in (listener, tcp, left, right):
            s.close()


@pytest.mark.parametrize(
    "options",
    [
        {"heartbeat_ivl_ms": 0},
        {"heartbeat_timeout_ms": -1},
        {"heartbeat_ivl_ms": 0.5},
        {"heartbeat_timeout_ms": "3000"},
        {"heartbeat_ivl_ms": True},
    ],
)
def test_bad_watch_options_are_refused_naming_them(options: dict[str, Any]) -> None:
    with pytest.raises(FlameError) as refused:
        get_registry().transport("uds", **options)
    assert refused.value.code == FlameErrorCode.INVALID_ARGUMENT
    (name,) = options
    assert name in refused.value.message and "whole number of milliseconds > 0" in refused.value.message


def test_the_watch_defaults_to_zeromqs_heartbeat_bound() -> None:
    from flamepy_transports.zmq.defaults import DEFAULT_HEARTBEAT_IVL_MS, DEFAULT_HEARTBEAT_TIMEOUT_MS

    transport = get_registry().transport("uds")
    # The kit may not import a transport: its defaults are its own numbers, kept equal to ZeroMQ's here.
    expected = (DEFAULT_HEARTBEAT_IVL_MS / 1000, DEFAULT_HEARTBEAT_TIMEOUT_MS / 1000)
    assert (transport.peer_watch.interval, transport.peer_watch.timeout) == expected == (1.0, 3.0)
    assert get_registry().transport("uds", heartbeat_ivl_ms=250).peer_watch.interval == 0.25


EXITING_CLIENT = """
import sys, threading
from flamepy_transports.uds.transport import UdsTransport

channel = UdsTransport().connect(sys.argv[1])
assert channel.unary("/test.Live/Echo", b"x", timeout=30) == b"x"
channel.unary_async("/test.Live/Hold", b"", timeout=60)  # in flight as the interpreter exits
# As a daemon thread (the timer, the reader) stopped for good at exit while it held the connection's lock
# leaves it: held, and by nobody who will release it. The channel is never closed: it is dropped as the
# interpreter exits.
taker = threading.Thread(target=channel._conn._lock.acquire)
taker.start()
taker.join(30)
del taker
"""


def test_a_client_exiting_while_a_daemon_thread_holds_its_connection_lock_exits(tmp_path: Path) -> None:
    """An interpreter stops its daemon threads for good where they next take the GIL: the timer or the reader,
    preempted with the connection's lock in hand, keeps it. The channel dropped as the interpreter exits must
    not wait for that lock (it did: a client process hung at exit after its work was done, under load)."""
    from flamepy_core.contracts import DeferredHandler, UnaryHandler

    held: list[Any] = []
    server = UdsTransport().serve(
        UdsTransport().local_endpoint(str(tmp_path), "exit"),
        {
            ECHO: UnaryHandler(lambda request, ctx: request),
            "/test.Live/Hold": DeferredHandler(lambda request, ctx, responder: held.append(responder)),
        },
    )
    try:
        child = subprocess.Popen(
            [sys.executable, "-c", EXITING_CLIENT, server.endpoint], stderr=subprocess.PIPE, text=True
        )
        try:
            _out, err = child.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            child.kill()
            child.communicate(timeout=20)
            pytest.fail("a client whose connection lock a stopped thread holds hung at exit")
        assert child.returncode == 0, err
    finally:
        server.stop(0.2)
