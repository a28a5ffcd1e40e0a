"""The ``uds`` transport and the framed kit's host thread (``FramedServer.host_wait``).

The conformance suite checks the contract (``tests/conformance/test_conformance_uds.py``); these check
what is the transport's own: its endpoints, that it is what links the runtime's service processes, and
the kit's lending of a link to a host thread (a service process's main thread receives its calls
itself): who reads, that nothing is read twice or out of order whoever reads, and that a link failing on
the host is ended as on the reader.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest
from conftest import FlameEnv, ServedPair, echo_example_over
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flamepy_core.contracts import CallContext, FlameError, FlameErrorCode, StreamHandler, UnaryHandler
from flamepy_core.contracts.transport import DeferredHandler, Responder
from flamepy_core.kit.lease import HOST_LOOK
from flamepy_core.plugins import get_registry

ECHO = "/test.Uds/Echo"
DEFER = "/test.Uds/Defer"
COUNT = "/test.Uds/Count"


def echo(request: bytes, ctx: CallContext) -> bytes:
    return request


def count(request: bytes, ctx: CallContext) -> Iterator[bytes]:
    for i in range(int(request)):
        yield b"%d" % i


class Hosted(ServedPair):
    """A uds server whose deferred calls are recorded (thread, request, responder), and a channel to it."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="fl-uds-", dir="/tmp")
        self.seen: list[tuple[int, bytes, Responder]] = []
        self.lock = threading.Lock()
        self.transport = get_registry().transport("uds")
        self.server: Any = self.transport.serve(
            f"uds://{self.dir}/s.sock",
            {ECHO: UnaryHandler(echo), DEFER: DeferredHandler(self._defer), COUNT: StreamHandler(count)},
        )
        self.channel: Any = self.transport.connect(self.server.endpoint)

    def _defer(self, request: bytes, ctx: CallContext, responder: Responder) -> None:
        with self.lock:
            self.seen.append((threading.get_ident(), request, responder))

    def take(self, deadline: float = 20.0) -> tuple[int, bytes, Responder]:
        """The next recorded call, hosting (``host_wait``) until one came."""
        end = time.monotonic() + deadline
        while True:
            with self.lock:
                if self.seen:
                    return self.seen.pop(0)
            assert time.monotonic() < end, "no call was received"
            assert self.server.host_wait(1.0), "the framed server refused to host"


def send_when_hosted(hosted: Hosted, request: bytes) -> Future[bytes]:
    """``request`` sent as soon as the host waits with the link lent to it (at once with no link yet; after at
    most a few seconds otherwise)."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        peers = list(hosted.server._peers)
        if not peers:
            break  # the call makes the link
        lease = peers[0].lease if len(peers) == 1 else None
        if lease is not None and lease.lent and lease.host_waiting:
            break
        time.sleep(0.001)
    return hosted.channel.unary_async(DEFER, request, timeout=20)


def all_answered_from_threads(threads: int, calls: int, call: Callable[[bytes], bytes]) -> None:
    """``calls`` calls from each of ``threads`` threads at once: each call gets its own answer, none is lost."""
    answers: dict[int, bytes] = {}

    def run(n: int) -> None:
        for k in range(calls):
            key = n * 100 + k
            answers[key] = call(b"%d" % key)

    started = [threading.Thread(target=run, args=(n,)) for n in range(threads)]
    for thread in started:
        thread.start()
    for thread in started:
        thread.join(60)
    assert not any(thread.is_alive() for thread in started), "a call was never answered"
    assert answers == {key: b"%d" % key for key in answers} and len(answers) == threads * calls


@pytest.fixture()
def hosted() -> Iterator[Hosted]:
    h = Hosted()
    yield h
    h.close()


def test_a_host_thread_receives_its_calls_itself_and_the_reader_reads_while_it_is_away(hosted: Hosted) -> None:
    """The waiting thread reads the link and runs the deferred handler itself (one wake-up a call); away
    longer than the reader's look, the reader thread reads again (a plain call is answered, a deferred one
    started), and the host's next wait ends at once for what the reader queued."""
    here = threading.get_ident()
    by_host = 0
    for i in range(20):
        request = b"call %d" % i
        answers: list[Future[bytes]] = []
        # Sent once the host waits with the link lent (the first calls, before the link has its lease, and
        # any while the host is away, are the reader's).
        sender = threading.Thread(target=lambda r=request, a=answers: a.append(send_when_hosted(hosted, r)))
        sender.start()
        ident, got, responder = hosted.take()
        sender.join(20)
        assert got == request
        by_host += ident == here
        responder.send(got[::-1])
        assert answers[0].result(20) == request[::-1]
    assert by_host >= 15, f"only {by_host} of 20 calls were received by the host thread"

    time.sleep(HOST_LOOK * 5)  # away: the reader takes the link back
    assert hosted.channel.unary(ECHO, b"meanwhile", timeout=20) == b"meanwhile"
    answer = hosted.channel.unary_async(DEFER, b"while away", timeout=20)
    deadline = time.monotonic() + 20
    while not hosted.seen:
        assert time.monotonic() < deadline, "the reader never read the call"
        time.sleep(0.01)
    assert hosted.seen[0][0] != here
    started = time.monotonic()
    assert hosted.server.host_wait(30.0)
    assert time.monotonic() - started < 25, "the host's wait ended by its timeout, not by the reader's wake-up"
    hosted.seen.pop()[2].send(b"done")
    assert answer.result(20) == b"done"


def test_wake_host_ends_a_host_wait(hosted: Hosted) -> None:
    assert hosted.channel.unary(ECHO, b"link", timeout=20) == b"link"  # a link to lend
    assert hosted.server.host_wait(0.01)
    timer = threading.Timer(0.05, hosted.server.wake_host)
    timer.start()
    started = time.monotonic()
    try:
        assert hosted.server.host_wait(30.0)
        assert time.monotonic() - started < 25, "the wait ended by its timeout, not by wake_host"
    finally:
        timer.cancel()
    assert hosted.channel.unary(ECHO, b"after", timeout=20) == b"after"


def test_a_host_waiting_before_any_link_is_woken_by_the_first_call() -> None:
    """A service process waits before its server has connected: the first link's call ends that wait."""
    h = Hosted()
    try:
        h.channel.close()
        h.channel = h.transport.connect(h.server.endpoint)  # not dialled yet: no link
        answer: list[Future[bytes]] = []
        timer = threading.Timer(0.1, lambda: answer.append(h.channel.unary_async(DEFER, b"first", timeout=20)))
        timer.start()
        started = time.monotonic()
        _ident, got, responder = h.take(deadline=25.0)
        assert got == b"first" and time.monotonic() - started < 20
        responder.send(b"ok")
        timer.join(20)  # (the call may reach the host before unary_async has returned to the timer's thread)
        assert answer[0].result(20) == b"ok"
    finally:
        h.close()


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pauses=st.lists(st.sampled_from([0.0, 0.001, HOST_LOOK * 2]), min_size=1, max_size=6))
def test_calls_are_handled_once_each_and_in_the_order_sent_whoever_reads(pauses: list[float]) -> None:
    """A burst of pipelined calls while the host waits, leaves to run a call and comes back (``pauses``:
    how long it stays away each time, the longest past the reader's look): every call is handled exactly
    once, in the order it was sent, whether the host or the reader read it."""
    h = Hosted()
    try:
        sent = [b"%03d" % i for i in range(40)]
        answers = [h.channel.unary_async(DEFER, r, timeout=30) for r in sent]
        handled: list[bytes] = []
        turn = 0
        while len(handled) < len(sent):
            _ident, got, responder = h.take()
            handled.append(got)
            responder.send(got)
            time.sleep(pauses[turn % len(pauses)])
            turn += 1
        assert handled == sent
        assert [a.result(20) for a in answers] == sent
        with h.lock:
            assert not h.seen, "a call was handled twice"
    finally:
        h.close()


def test_a_link_that_fails_on_the_host_is_ended_and_a_new_one_served(hosted: Hosted) -> None:
    """The client goes while the host reads its link: the server ends that link (its calls cancelled)
    and the host goes on waiting; the next client is served, by the host."""
    answer = hosted.channel.unary_async(DEFER, b"pending", timeout=20)
    _ident, _got, responder = hosted.take()
    hosted.channel.close()
    with pytest.raises(FlameError):
        answer.result(20)
    deadline = time.monotonic() + 20
    while hosted.server._peers:  # the reader ends the link it was handed back
        assert time.monotonic() < deadline, "the failed link was never ended"
        assert hosted.server.host_wait(0.05)
    assert responder.send(b"late") is False, "a reply to a caller that left was sent"
    hosted.channel = hosted.transport.connect(hosted.server.endpoint)
    answer = hosted.channel.unary_async(DEFER, b"next", timeout=20)
    _ident, got, responder = hosted.take()
    assert got == b"next"
    responder.send(b"served")
    assert answer.result(20) == b"served"


INLINE = "/test.Uds/Inline"


class Inline(Hosted):
    """:class:`Hosted` with ``INLINE`` served inline by the host (``serve_inline``) and by the deferred
    handler otherwise (which records the call, as ``DEFER``'s does)."""

    def __init__(
        self,
        fn: Callable[[bytes], bytes],
        ready: Callable[[], bool] = lambda: True,
        unanswered: tuple[type[BaseException], ...] = (),
    ) -> None:
        super().__init__()
        self.fn = fn
        self.server._handlers[INLINE] = DeferredHandler(self._defer)
        self.server.serve_inline(INLINE, fn, ready, unanswered)
        self.hosting = threading.Event()
        self.handled = 0
        """Calls of ``INLINE`` the handler got (the reader read them), answered by the host thread's loop."""

    def host(self) -> threading.Thread:
        """A host thread until :meth:`stop_hosting`, as a service process's main thread: it waits in
        ``host_wait`` and runs what the handler queued (with ``fn``, as what it runs inline)."""

        def run() -> None:
            while not self.hosting.is_set():
                self.server.host_wait(0.05)
                with self.lock:
                    queued, self.seen[:] = list(self.seen), []
                for _ident, request, responder in queued:
                    self.handled += 1
                    try:
                        responder.send(self.fn(request))
                    except Exception as exc:
                        responder.fail(exc)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        return thread

    def stop_hosting(self, thread: threading.Thread) -> None:
        self.hosting.set()
        self.server.wake_host()
        thread.join(20)
        assert not thread.is_alive(), "the host thread did not return"


def test_calls_served_inline_run_on_the_host_in_order_and_answer() -> None:
    ran: list[tuple[int, bytes]] = []
    inline = Inline(lambda request: ran.append((threading.get_ident(), request)) or request[::-1])
    host = inline.host()
    try:
        requests = [b"task %d" % i for i in range(50)]
        for request in requests:  # one at a time, as a server sends a warm instance its tasks
            assert inline.channel.unary_async(INLINE, request, timeout=None).result(20) == request[::-1]
        assert [request for _ident, request in ran] == requests, "a call ran twice, out of order, or not at all"
        on_host = sum(ident == host.ident for ident, _request in ran)
        assert on_host >= 40, f"only {on_host} of 50 calls ran on the host thread"
        assert inline.handled <= 10, f"{inline.handled} of 50 calls went to the handler"
    finally:
        inline.stop_hosting(host)
        inline.close()


def test_an_inline_call_that_raises_answers_its_caller_with_the_error() -> None:
    def fail(request: bytes) -> bytes:
        raise ValueError(f"no {request.decode()}")

    inline = Inline(fail)
    host = inline.host()
    try:
        for _ in range(3):
            with pytest.raises(FlameError) as failed:
                inline.channel.unary_async(INLINE, b"way", timeout=None).result(20)
            assert "no way" in failed.value.message and "ValueError" in failed.value.message
        # and the host goes on serving: the link is fine
        assert inline.channel.unary(ECHO, b"still", timeout=20) == b"still"
    finally:
        inline.stop_hosting(host)
        inline.close()


class _Stop(BaseException):
    """Not an ``Exception``: as ``SystemExit``, or the runtime's ``Interrupted``."""


def _when_lent(hosted: Hosted) -> None:
    """Return once the host waits with the link lent to it (it reads the next call itself)."""
    deadline = time.monotonic() + 10
    while True:
        peers = list(hosted.server._peers)
        lease = peers[0].lease if len(peers) == 1 else None
        if lease is not None and lease.lent and lease.host_waiting:
            return
        assert time.monotonic() < deadline, "the host never had the link"
        time.sleep(0.001)


@pytest.mark.parametrize("unanswered", [False, True])
def test_an_inline_call_that_raises_past_exception_leaves_the_host_answered_or_not(unanswered: bool) -> None:
    """A ``BaseException`` that is not an ``Exception`` leaves ``host_wait`` (it ends the host's loop, as
    ``SystemExit`` does); its caller is told, unless its type is one of ``unanswered`` (a signal stopping
    the call: nobody gets a reply)."""

    def run(request: bytes) -> bytes:
        if request == b"stop":
            raise _Stop("stop")
        return request

    inline = Inline(run, unanswered=(_Stop,) if unanswered else ())
    answers: list[Future[bytes]] = []

    def send() -> None:
        for _ in range(3):  # the link made and lent (the first calls may be the reader's: the loop answers them)
            assert inline.channel.unary_async(INLINE, b"warm", timeout=None).result(20) == b"warm"
        _when_lent(inline)
        answers.append(inline.channel.unary_async(INLINE, b"stop", timeout=None))

    sender = threading.Thread(target=send)
    sender.start()
    try:
        with pytest.raises(_Stop):
            for _ in range(400):
                inline.server.host_wait(0.05)
                with inline.lock:
                    queued, inline.seen[:] = list(inline.seen), []
                for _ident, request, responder in queued:
                    responder.send(run(request))
        sender.join(20)
        if unanswered:
            time.sleep(0.2)
            assert not answers[0].done(), "a call stopped by a signal was answered"
        else:
            with pytest.raises(FlameError) as failed:
                answers[0].result(20)
            assert "_Stop" in failed.value.message
    finally:
        sender.join(20)
        inline.close()


@pytest.mark.parametrize("why", ["a deadline", "not ready"])
def test_a_call_the_host_may_not_run_inline_goes_to_the_handler(why: str) -> None:
    """A call with a deadline (it may be cancelled: the handler's bookkeeping sees to it), and one that comes
    while ``ready()`` is false (calls queued before it must run first), are admitted as ever."""
    ran: list[bytes] = []
    inline = Inline(lambda request: ran.append(request) or request, ready=lambda: why != "not ready")
    try:
        answer = inline.channel.unary_async(INLINE, b"call", timeout=20 if why == "a deadline" else None)
        _ident, request, responder = inline.take()
        assert request == b"call" and ran == []
        responder.send(b"by the handler")
        assert answer.result(20) == b"by the handler"
    finally:
        inline.close()


def test_a_long_inline_call_leaves_the_link_to_the_reader_until_it_ends() -> None:
    """While a call runs inline, past the reader's look, the reader reads the link: another call (a service
    process's ``WithdrawTasks``, say) is answered meanwhile; then the host takes the link back and serves
    inline again."""
    release = threading.Event()
    ran: list[bytes] = []

    def run(request: bytes) -> bytes:
        ran.append(request)
        if request == b"long":
            assert release.wait(20), "the test never released the long call"
        return request[::-1]

    inline = Inline(run)
    host = inline.host()
    try:
        assert inline.channel.unary_async(INLINE, b"warm", timeout=None).result(20) == b"mraw"
        long = inline.channel.unary_async(INLINE, b"long", timeout=None)
        deadline = time.monotonic() + 20
        while ran[-1:] != [b"long"]:
            assert time.monotonic() < deadline, "the long call never started"
            time.sleep(0.001)
        time.sleep(HOST_LOOK * 3)
        assert inline.channel.unary(ECHO, b"meanwhile", timeout=20) == b"meanwhile", "nobody read the link"
        assert not long.done()
        release.set()
        assert long.result(20) == b"gnol"
        for i in range(5):
            assert inline.channel.unary_async(INLINE, b"%d" % i, timeout=None).result(20) == b"%d" % i
    finally:
        release.set()
        inline.stop_hosting(host)
        inline.close()


@pytest.mark.parametrize(
    "endpoint",
    ["uds://relative/path.sock", "uds:/missing-slashes", "tcp:///tmp/x.sock", "uds:///" + "d" * 120 + "/s.sock"],
)
def test_a_bad_endpoint_is_refused_naming_it_and_the_form(endpoint: str) -> None:
    transport = get_registry().transport("uds")
    with pytest.raises(FlameError) as refused:
        transport.connect(endpoint)
    assert refused.value.code == FlameErrorCode.INVALID_ARGUMENT
    message = refused.value.message
    assert endpoint in message, message
    assert "uds:///ABSOLUTE/PATH" in message or "over the 100 a unix socket allows" in message, message


def test_it_is_the_local_default_and_the_instances_link() -> None:
    """With nothing configured, uds carries the local runtime: the clients' server and the link of the service
    processes written with this SDK (the fastest bundled local transport: docs/transports/uds.md)."""
    registry = get_registry()
    assert registry.local_default().spec.name == "uds"
    assert registry.instance_link_default().spec.name == "uds"


def test_a_local_endpoint_too_long_for_a_socket_moves_to_a_private_short_folder(tmp_path: Path) -> None:
    """A FLAME_HOME too deep for a unix socket path still gets a server: its socket goes to a private folder
    of this user's under the temporary directory, the same one each time for that FLAME_HOME."""
    transport = get_registry().transport("uds")
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    endpoint = transport.local_endpoint(str(deep), "flame")
    assert endpoint == transport.local_endpoint(str(deep), "flame"), "a restarted server must listen where it did"
    path = endpoint.removeprefix("uds://")
    folder = os.path.dirname(path)
    assert len(path.encode()) <= 100 and not folder.startswith(str(tmp_path)), endpoint
    assert os.stat(folder).st_mode & 0o777 == 0o700 and os.stat(folder).st_uid == os.getuid()
    server = transport.serve(endpoint, {ECHO: UnaryHandler(echo)})
    channel = transport.connect(endpoint)
    try:
        assert channel.unary(ECHO, b"deep", timeout=20) == b"deep"
    finally:
        channel.close()
        server.stop(0.2)
    os.chmod(folder, 0o755)  # no longer private: refused, naming the folder and what to do
    try:
        with pytest.raises(FlameError) as refused:
            transport.local_endpoint(str(deep), "flame")
        assert refused.value.code == FlameErrorCode.INVALID_CONFIG and folder in refused.value.message
    finally:
        os.rmdir(folder)


def test_flame_transport_uds_carries_the_whole_runtime(flame_env: FlameEnv, tmp_path: Path) -> None:
    """By configuration alone, the guide's echo example end to end over unix sockets with no libzmq: the
    local server listens on uds:// and links its instances with it."""
    lines, info = echo_example_over(flame_env, tmp_path / "echo", "uds")
    assert lines[:2] == ["HELLO", "1"] and lines[2].startswith("echo-app-"), lines
    assert info["transport"] == "uds" and info["endpoint"] == f"uds://{flame_env.home}/flame.sock", info


@pytest.mark.parametrize("size", [0, 1, 65_535, 65_536 + 17, 3 * 1024 * 1024 + 5])
def test_a_socket_link_hands_back_each_message_whole_and_in_order(size: int) -> None:
    """SocketLink reads into a buffer of its own (a small message, and the start of the next, in one system
    call) or straight into place (a large one): either way each message comes back whole, in order, and a
    large one as it was read (no copy more), while the next message's start stays buffered (``pending``)."""
    import socket

    from flamepy_core.kit.links import SocketLink

    left, right = socket.socketpair()
    sender = SocketLink(left, 1 << 30, preamble=b"P\n", dialled=True)
    receiver = SocketLink(right, 1 << 30, preamble=b"P\n", dialled=False)
    first, second = os.urandom(size), b"after"
    done = threading.Thread(target=lambda: (sender.send([first[:7], first[7:]]), sender.send([second])))
    done.start()
    try:
        got = receiver.recv()
        assert bytes(got) == first  # type: ignore[arg-type]
        assert receiver.recv() == second
        assert not receiver.pending()
        done.join(20)
    finally:
        sender.close()
        receiver.close()
        left.close()
        right.close()


def socket_links() -> tuple[Any, Any, Any]:
    """A sending and a receiving SocketLink over a socketpair, and a closer for both."""
    import socket

    from flamepy_core.kit.links import SocketLink

    left, right = socket.socketpair()
    sender = SocketLink(left, 1 << 30, preamble=b"P\n", dialled=True)
    receiver = SocketLink(right, 1 << 30, preamble=b"P\n", dialled=False)

    def close() -> None:
        for end in (sender, receiver):
            end.close()
        left.close()
        right.close()

    return sender, receiver, close


def test_a_socket_link_reads_large_messages_into_one_kept_buffer_within_the_process_budget(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A large message is read into the buffer the previous one was read into (no fresh buffer's page faults
    each time), while it fits and is not more than twice too large; each comes back whole at the time it is
    read. A process keeps no more than its budget in such buffers; a link gives its share back when it ends."""
    from flamepy_core.kit import links

    budget = links._KeptBuffers(5 << 20)
    monkeypatch.setattr(links, "_kept_buffers", budget)
    sender, receiver, close = socket_links()
    messages = [os.urandom(2 << 20), os.urandom(2 << 20), os.urandom(1 << 20), os.urandom(6 << 20), b"end"]
    feeder = threading.Thread(target=lambda: [sender.send([m]) for m in messages])
    feeder.start()
    try:
        first = receiver.recv()
        assert bytes(first) == messages[0]
        second = receiver.recv()
        assert bytes(second) == messages[1]
        assert isinstance(second, memoryview) and second.obj is first.obj  # the same buffer, read again
        assert budget.left == 3 << 20
        third = receiver.recv()  # half the kept buffer's size: still read into it
        assert bytes(third) == messages[2] and third.obj is first.obj
        fourth = receiver.recv()  # larger than the kept buffer, and over the budget: read, not kept
        assert bytes(fourth) == messages[3] and fourth.obj is not first.obj
        assert budget.left == 5 << 20 and receiver._large is None
        assert receiver.recv() == b"end"
        feeder.join(20)
    finally:
        close()
    with pytest.raises((EOFError, OSError)):
        receiver.recv()  # the reader sees the end and releases what the link holds
    assert budget.left == budget.budget


@settings(max_examples=6, deadline=None)
@given(size=st.integers(64 * 1024, 3 << 20), count=st.integers(2, 5))
def test_large_requests_held_together_each_keep_their_own_bytes(size: int, count: int) -> None:
    """Large requests held by a deferred handler all at once, while the link reads each next one into the
    buffer it keeps: each handler keeps its own request and each caller gets its own answer (the kit copies
    a payload out of the link's buffer as it takes the frame)."""
    h = Hosted()
    try:
        payloads = [os.urandom(size - i) for i in range(count)]
        futures = [h.channel.unary_async(DEFER, payload, timeout=60) for payload in payloads]
        held = [h.take() for _ in payloads]
        assert [request for _, request, _ in held] == payloads
        for _, request, responder in held:
            responder.send(request)
        assert [f.result(timeout=60) for f in futures] == payloads
    finally:
        h.close()


def test_a_blocking_call_on_an_idle_channel_reads_its_own_answer(hosted: Hosted) -> None:
    """The caller of ``unary`` reads the link itself while its call is the one waiting (no hand-off from
    the reader thread), and calls made from several threads at once are all answered, whoever reads."""
    for i in range(40):
        assert hosted.channel.unary(ECHO, b"%d" % i, timeout=20) == b"%d" % i
    read_by_caller = hosted.channel.stats()["replies_read_by_caller"]
    # The first call's answer may reach the reader (the link not lent yet), a busy machine may delay a
    # caller past the reader's look now and then; most are the caller's own.
    assert read_by_caller >= 30, f"only {read_by_caller} of 40 answers were read by their caller"

    all_answered_from_threads(6, 20, lambda request: hosted.channel.unary(ECHO, request, timeout=20))


def test_a_stream_callback_that_raises_ends_its_stream_alone(hosted: Hosted) -> None:
    """``stream_async``'s ``on_item`` raising is the caller's bug: that stream ends once, with an error naming
    it, and the link and the channel's other calls go on."""
    seen: list[bytes] = []
    ended: list[FlameError | None] = []
    done = threading.Event()

    def on_item(item: bytes) -> None:
        seen.append(item)
        if item == b"2":
            raise ValueError("boom")

    def on_end(error: FlameError | None) -> None:
        ended.append(error)
        done.set()

    hosted.channel.stream_async(COUNT, b"1000", on_item, on_end, timeout=20)
    assert done.wait(20), "on_end never came"
    time.sleep(0.2)  # items still in flight must not reach the callbacks, nor a second on_end
    assert seen[:3] == [b"0", b"1", b"2"] and len(seen) == 3, seen
    assert len(ended) == 1 and ended[0] is not None and ended[0].code == FlameErrorCode.INTERNAL
    assert "ValueError" in ended[0].message and "boom" in ended[0].message
    assert hosted.channel.unary(ECHO, b"still", timeout=20) == b"still"


def test_calls_without_a_deadline_read_their_own_answers_and_each_others(hosted: Hosted) -> None:
    """A blocking call with no deadline on a lent link holds the link's read lock from its first look to its
    answer (``LinkLease.host_lent``): its answer still comes whole and in order, other threads' calls made
    meanwhile are answered too (the caller reading the link hands theirs over), and most answers are read
    by their own caller."""
    for i in range(40):
        assert hosted.channel.unary(ECHO, b"%d" % i, timeout=None) == b"%d" % i
    read_by_caller = hosted.channel.stats()["replies_read_by_caller"]
    assert read_by_caller >= 30, f"only {read_by_caller} of 40 answers were read by their caller"

    all_answered_from_threads(6, 30, lambda request: hosted.channel.unary(ECHO, request, timeout=None))


def test_after_a_long_call_without_a_deadline_the_reader_reads_the_link_again(hosted: Hosted) -> None:
    """While a caller waits long (past ``HOST_IDLE``) for its answer, the link's reader thread naps without a
    deadline; when the caller leaves, it must be woken to read the link, or an asynchronous call made next,
    which no caller reads, would never be answered."""
    assert hosted.channel.unary(ECHO, b"lent", timeout=None) == b"lent"  # the link is lent from here on
    got: list[bytes] = []
    caller = threading.Thread(target=lambda: got.append(hosted.channel.unary(DEFER, b"long", timeout=None)))
    caller.start()
    _thread, request, responder = hosted.take()
    assert request == b"long"
    time.sleep(0.4)  # past HOST_IDLE (0.1 s): the reader naps without a deadline
    responder.send(b"done")
    caller.join(20)
    assert got == [b"done"]
    assert hosted.channel.unary_async(ECHO, b"after", timeout=20).result(timeout=20) == b"after"


def test_a_link_that_fails_under_a_caller_without_a_deadline_fails_its_call(hosted: Hosted) -> None:
    """The server going away while a call with no deadline waits, its caller reading the link: the call
    fails with ``UNAVAILABLE`` naming what happened (not the link's own ``EOFError``), and the channel
    connects afresh for the next call."""
    assert hosted.channel.unary(ECHO, b"lent", timeout=None) == b"lent"
    errors: list[BaseException] = []

    def wait_forever() -> None:
        try:
            hosted.channel.unary(DEFER, b"never answered", timeout=None)
        except BaseException as exc:  # what the call ended with is the test's to read
            errors.append(exc)

    caller = threading.Thread(target=wait_forever)
    caller.start()
    assert hosted.take()[1] == b"never answered"
    for peer in list(hosted.server._peers):
        peer.link.close()  # the server's end of the connection, as a crashed server's would be
    caller.join(20)
    assert not caller.is_alive(), "the call kept waiting on a link that had failed"
    assert len(errors) == 1 and isinstance(errors[0], FlameError), errors
    assert errors[0].code == FlameErrorCode.UNAVAILABLE, errors[0]
    assert hosted.channel.unary(ECHO, b"again", timeout=20) == b"again"


def test_a_read_call_without_a_deadline_is_sent_and_read_by_its_caller(hosted: Hosted) -> None:
    """``unary_read`` without a deadline on a lent link takes the one-step way (``_Connection.call_hosted``):
    the caller sends and reads, ``read`` runs once on its own reply (a reader returning None returns None,
    the call not sent again), and calls from other threads meanwhile get theirs."""
    calls_before = hosted.channel.stats()["replies_read_by_caller"]
    seen: list[bytes] = []

    def keep(view: memoryview) -> None:
        seen.append(bytes(view))

    for i in range(30):
        assert hosted.channel.unary_read(ECHO, [b"r%d" % i], keep, timeout=None) is None
    assert seen == [b"r%d" % i for i in range(30)], "each reply read once, in order, none sent twice"
    assert hosted.channel.stats()["replies_read_by_caller"] - calls_before >= 20

    all_answered_from_threads(4, 25, lambda request: hosted.channel.unary_read(ECHO, [request], bytes, timeout=None))


GROW = "/test.Uds/Grow"


def test_a_reply_over_the_callers_limit_fails_that_call_alone(tmp_path: Path) -> None:
    """A reply whose payload is over the channel's limit (the message itself small enough to be read whole)
    fails its call with MESSAGE_TOO_LARGE naming the sizes, however the call waited (its caller reading the
    link, with or without a deadline, or the reader thread for an asynchronous call); the link goes on."""
    limit = 4096

    def grow(request: bytes, ctx: CallContext) -> bytes:
        return b"g" * int(request)

    handlers = {ECHO: UnaryHandler(echo), GROW: UnaryHandler(grow)}
    server: Any = get_registry().transport("uds").serve(f"uds://{tmp_path}/s.sock", handlers)
    channel: Any = get_registry().transport("uds", max_message_size=limit).connect(server.endpoint)
    try:
        assert channel.unary(ECHO, b"lend", timeout=None) == b"lend"
        over = b"%d" % (limit + 1)
        attempts = (
            lambda: channel.unary(GROW, over, timeout=None),
            lambda: channel.unary(GROW, over, timeout=20),
            lambda: channel.unary_read(GROW, [over], bytes, timeout=None),
            lambda: channel.unary_async(GROW, over, timeout=20).result(timeout=20),
        )
        for attempt in attempts:
            with pytest.raises(FlameError) as raised:
                attempt()
            assert raised.value.code == FlameErrorCode.MESSAGE_TOO_LARGE, raised.value
            assert f"response to {GROW} of {limit + 1} bytes" in raised.value.message, raised.value.message
            assert channel.unary(ECHO, b"still", timeout=None) == b"still"
        assert channel.unary(GROW, b"%d" % limit, timeout=None) == b"g" * limit
    finally:
        channel.close()
        server.stop(grace=1)


def test_a_link_lent_to_the_host_is_read_again_once_a_second_link_comes(hosted: Hosted) -> None:
    """A host's wait that ends at its deadline does not wake the reader (the host waits again at once, as a
    rule), and a reader of a link lent to a host idle that long naps with no deadline. A second link then
    stops the host from reading the first (only a link that is the only one is lent): the first link's
    reader must read it again. It napped on, and a service process whose server's link was joined by
    another connection never read its server's calls again (seen in one probe run in two)."""
    assert hosted.channel.unary(ECHO, b"link", timeout=20) == b"link"
    assert hosted.server.host_wait(0.01)  # the link's lease is made
    assert hosted.channel.unary(ECHO, b"again", timeout=20) == b"again"  # its reader takes it up after this
    peer = next(iter(hosted.server._peers))
    deadline = time.monotonic() + 10
    while peer.lease is None or not peer.lease.joined:
        assert time.monotonic() < deadline, "the link's reader never took up its lease"
        time.sleep(0.001)
    # The host asks for the link; the reader, done with the message it was waiting for, naps for the host,
    # which reads nothing more and leaves at its deadline.
    during = threading.Timer(0.05, lambda: hosted.channel.unary(ECHO, b"during", timeout=20))
    during.start()
    assert hosted.server.host_wait(0.5)
    during.join(20)
    lease = peer.lease
    while not lease._napping:  # (the case this is about: napping, lent to a host that has left)
        assert time.monotonic() < deadline, "the reader never napped for the host"
        time.sleep(0.001)
    assert lease.lent
    second = hosted.transport.connect(hosted.server.endpoint)
    try:
        assert second.unary(ECHO, b"second", timeout=20) == b"second"  # (its accept's wake-up waits for the host)
        answer = hosted.channel.unary_async(DEFER, b"first's", timeout=20)
        _ident, request, responder = hosted.take(deadline=10)
        assert request == b"first's"
        responder.send(b"read")
        assert answer.result(20) == b"read"
        assert not lease.lent, "the host reads two links' calls through their readers, lending neither"
    finally:
        second.close()
