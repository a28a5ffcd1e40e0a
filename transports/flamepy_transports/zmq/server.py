"""The server side: a ROUTER socket owned by one I/O thread, handlers on a worker pool.

The I/O thread reads requests, answers at once what needs no handler (``UNIMPLEMENTED``, a request too
large, ``RESOURCE_EXHAUSTED`` when ``max_pending_calls`` calls are already queued or running,
``UNAVAILABLE`` while stopping), and submits the rest to the pool. Workers queue their replies in the
outbox and wake the I/O thread, which sends them. A :class:`DeferredHandler`'s or
:class:`DeferredStreamHandler`'s ``fn`` runs on the I/O thread itself (it must only start work and
return; at the end of the round, after what was received was read and what was queued was sent, in
the order they arrived); its responder completes the call later, from whatever thread has the answer, and its stream
writer queues each response, so a deferred call or an open deferred stream holds no thread while it
waits. A deferred stream's responses beyond the caller's credit wait in its writer, in order, until a
``CREDIT`` arrives; the I/O thread then posts them.

Who touches the socket. The ROUTER is used under one lock, the socket lock: the I/O thread holds it
while it receives, handles and sends, and lets go of it while it waits. It waits on the socket's file
descriptor (``ZMQ_FD``), which is the operating system's and not the socket, so while it waits another
thread may take the lock and use the socket. That is what a call's final reply does when it can (see
:meth:`_Engine.finish`): the thread that completes a call (a worker, or the engine's thread that has a
task's result) sends the reply itself when the I/O thread is waiting and nothing is queued before it,
instead of waking the I/O thread to send it: one thread hand-off less per call. ``ZMQ_FD`` signals only
changes the socket has not yet processed: after a send by another thread, that thread looks whether a
request became readable meanwhile, and wakes the I/O thread if so. What is queued while the I/O thread
is at work (``_io_awake``) needs no wake-up either: it looks at the outbox before it waits again.

``ZMQ_ROUTER_MANDATORY`` makes every send say what happened: EAGAIN (the peer's pipe is at its
high-water mark) keeps the reply, and everything queued after it for the same peer, in a per-peer
backlog retried every few milliseconds until it fits or its call's deadline passes; EHOSTUNREACH (the
peer has gone) discards the reply and cancels the peer's calls. Nothing is dropped without a reason.

Callers that vanish: every heartbeat interval, while calls run, the I/O thread sends a ``PING`` to each
peer with a call in progress. ROUTER_MANDATORY makes that send fail once the peer's connection is gone
(closed, or dropped by ZMTP heartbeats), and the peer's calls are cancelled: ``ctx.is_active()`` turns
false and a stream waiting for credit stops, instead of running until its deadline (or forever).

With CURVE the same I/O thread answers ZAP requests (see :mod:`.auth`).

A host thread. A service process runs its service's calls on one thread of its own (its main thread),
which the deferred handlers feed; the I/O thread receiving each call and handing it to that thread costs
two thread wake-ups and a tussle for the GIL per call. So that thread may receive them itself: while it
has nothing to run it waits in :meth:`_Engine.host_wait`, which receives (and starts the deferred
handlers) on that thread, and the I/O thread meanwhile waits on its waker alone (the socket is *lent*).
When the host thread has been away longer than ``HOST_LOOK_MS`` (running a call), the I/O thread takes
the socket back and receives as usual, so what a long call must not hold up (a withdrawal, a cancel)
is read at once; the host's next wait lends it again.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import threading
import time
import weakref
from collections import deque
from collections.abc import Mapping
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

import zmq

from flamepy_core.contracts.errors import FlameError, FlameErrorCode
from flamepy_core.contracts.transport import (
    DeferredHandler,
    DeferredStreamHandler,
    Handler,
    StreamHandler,
    UnaryHandler,
)
from flamepy_core.transport_kit import check_size, unavailable, unimplemented
from flamepy_transports.zmq import endpoints, framing
from flamepy_transports.zmq.config import (
    STREAM_WINDOW_BYTES,
    STREAM_WINDOW_ITEMS,
    ZmqConfig,
    configure_router,
)
from flamepy_transports.zmq.endpoints import Address
from flamepy_transports.zmq.pool import WorkerPool
from flamepy_transports.zmq.waker import Waker, readable, recv_frames, send_frames
from flamepy_transports.zmq.worker import (
    ServerCall,
    StreamFlow,
    run_deferred,
    run_deferred_stream,
    run_stream,
    run_unary,
)

if TYPE_CHECKING:  # CURVE (.auth) is imported only when a server is given keys
    from flamepy_transports.zmq.auth import ZapHandler

log = logging.getLogger(__name__)

RECV_BATCH = 256
"""Requests read per wake-up before the I/O thread sends what the workers produced (fairness)."""
BACKLOG_RETRY_MS = 5
STOP_LINGER_MS = 200
"""On stop, final replies get this long to leave before the socket closes."""
START_TIMEOUT = 10.0
JOIN_TIMEOUT = 5.0
HOST_LOOK_MS = 20
"""While the socket is lent to a host thread, the I/O thread looks this often (ms) whether that thread has
gone to run a call, and then watches the socket itself until the host waits again."""
HOST_IDLE = 0.1
"""A host thread waiting this long (s) is idle: the I/O thread then sleeps its usual long wait, and the host
wakes it when it leaves its wait to run a call (so an idle instance does not wake every ``HOST_LOOK_MS``,
and one whose calls come back to back is not woken for each)."""

_Out = tuple[bytes, list[bytes], "float | None"]
"""(routing id, frames, the call's deadline on this clock): a reply still unsent at the deadline is dropped,
its caller having given up already."""


def grace_bound(grace: float | None) -> float:
    """How long a stop may take at most: the grace, the I/O thread's join, the linger of final replies."""
    return (grace or 0.0) + JOIN_TIMEOUT + STOP_LINGER_MS / 1000.0 + 1.0


def _bind_error(address: Address, exc: zmq.ZMQError) -> FlameError:
    if exc.errno == errno.EADDRINUSE:
        return FlameError(FlameErrorCode.ALREADY_EXISTS, f"{address.url} is already in use: {exc}")
    return FlameError(FlameErrorCode.INVALID_ARGUMENT, f"cannot serve on {address.url}: {exc}")


class _Engine:
    """Everything a running server owns; the public :class:`ZmqServer` is a thin handle on it."""

    def __init__(self, address: Address, handlers: Mapping[str, Handler], config: ZmqConfig) -> None:
        self.pid = os.getpid()
        self.address = address
        self.endpoint = address.url
        self.max_message_size = config.max_message_size
        self._config = config
        self._handlers = dict(handlers)
        self._ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context(io_threads=1)
        self._pool = WorkerPool(config.max_workers, "flamepy-zmq-worker")
        self._lock = threading.Lock()
        self._calls: dict[tuple[bytes, int], ServerCall] = {}
        self._outbox: deque[_Out] = deque()
        self._waker = Waker()
        self._stopping = False
        self._exit = False
        self._stopped = False
        self._released = threading.Event()
        self._ipc_inode: int | None = None
        self.counters = {
            "accepted": 0,
            "refused": 0,
            "unimplemented": 0,
            "peer_gone": 0,
            "dropped_late": 0,
            "sent_direct": 0,
        }
        self._zap: ZapHandler | None = None
        self._admitted: list[tuple[Any, ServerCall, Any, bytes]] = []
        self._io_ident: int | None = None
        """The I/O thread's: a reply it queues itself (a deferred handler answering at once) needs no wake-up."""
        self._sock: zmq.Socket[bytes] | None = None
        self._sock_lock = threading.Lock()
        """Whoever holds it may use the ROUTER (see the module's docstring); None above once it is closed."""
        self._backlog: dict[bytes, deque[_Out]] = {}
        """Replies kept for peers whose pipe was full, in order (used under the socket lock)."""
        self._sending = 0
        """Final replies being sent by the threads that completed them (stop() waits for them)."""
        self._sends = 0
        """Sends on the ROUTER so far (under the socket lock): the I/O thread's loop notices its own."""
        self._io_awake = False
        """True while the I/O thread works (it holds the socket lock): it looks at the outbox after this
        turns False and before it waits, so what is queued while it is True needs no wake-up. (A host
        thread's round sets it too: it also sends what is queued before it waits.)"""
        self._sock_fd = -1
        self._host_waker: Waker | None = None
        """Wakes a host thread's wait (see :meth:`host_wait`); made by the first one."""
        self._host_poller: Any = None
        self._host_failed = False
        self._lent = False
        """The socket is lent to the host thread: the I/O thread waits on its waker alone (socket lock)."""
        self._host_waiting = False
        self._host_since = 0.0
        """When the host thread last left its wait (while it is not waiting)."""
        self._host_worked = True
        """The host thread left its last wait to run what it received (not at the wait's end)."""
        self._host_idle_since = 0.0
        """When the host thread entered the first of the waits it has been in since it last worked."""
        self._io_napping = False
        """The I/O thread sleeps its long wait while lent (the host idle): a host leaving its wait wakes it."""
        self._thread = threading.Thread(target=self._run, name=f"flamepy-zmq-server[{address.url}]", daemon=True)

    # -- start -----------------------------------------------------------------------------------------

    def start(self) -> str:
        endpoints.check_ipc_free(self.address)
        started: Future[str] = Future()
        self._started = started
        self._thread.start()
        try:
            endpoint = started.result(START_TIMEOUT)
        except BaseException:
            self._thread.join(JOIN_TIMEOUT)
            self._pool.shutdown()
            if not self._thread.is_alive():
                self._ctx.term()
            self._waker.close()
            raise
        self.endpoint = endpoint
        return endpoint

    def _bind(self) -> zmq.Socket[bytes]:
        config = self._config
        if config.curve_server is not None:
            from flamepy_transports.zmq.auth import ZapHandler  # CURVE only: not on a service instance's start

            self._zap = ZapHandler(self._ctx, config.curve_server.allowed)  # before the ROUTER exists
        sock = self._ctx.socket(zmq.ROUTER)
        try:
            configure_router(sock, config, self.address)
            if config.curve_server is not None:
                from flamepy_transports.zmq.auth import apply_server

                apply_server(sock, config.curve_server)
            sock.bind(self.address.zmq_address)
        except zmq.ZMQError as exc:
            sock.close(linger=0)
            raise _bind_error(self.address, exc) from exc
        if self.address.is_ipc_file:
            try:
                self._ipc_inode = os.stat(self.address.path).st_ino
            except OSError:
                self._ipc_inode = None
        last = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self._endpoint_bound = endpoints.served(self.address, last)
        return sock

    # -- worker side (Replies protocol) ----------------------------------------------------------------

    def post(self, call: ServerCall, frames: list[bytes]) -> None:
        if not call.finished:
            self._outbox.append((call.ident, frames, call.deadline))
            if not self._io_awake:
                self._waker.signal()

    def finish(self, call: ServerCall, frames: list[bytes] | None) -> bool:
        on_io_thread = threading.get_ident() == self._io_ident
        with self._lock:
            if call.finished:
                return False
            call.finished = True
            direct = frames is not None and not on_io_thread and not self._outbox
            if direct:
                self._sending += 1
            elif frames is not None:
                # Queued before the call leaves the table: stop() waits for "no calls, nothing queued
                # and nothing being sent", so a final reply is never in none of them.
                self._outbox.append((call.ident, frames, call.deadline))
            self._calls.pop(call.key, None)
        if direct:
            assert frames is not None
            try:
                if self._send_direct((call.ident, frames, call.deadline)):
                    return True
                self._outbox.append((call.ident, frames, call.deadline))
            finally:
                with self._lock:
                    self._sending -= 1
        if frames is not None and not self._io_awake:
            self._waker.signal()  # (an I/O thread at work sends what is queued before it waits again)
        return True

    def _send_direct(self, entry: _Out) -> bool:
        """Send a final reply from this thread while the I/O thread waits; False when it must queue it.

        Only when the socket lock is free at once (the I/O thread is waiting, nobody else sends), nothing
        is queued (what was queued first goes first) and the peer has no backlog. Called outside
        ``self._lock``.
        """
        if not self._sock_lock.acquire(blocking=False):
            return False
        try:
            sock = self._sock
            if sock is None or self._outbox or entry[0] in self._backlog:
                return False
            self.counters["sent_direct"] += 1
            if self._send_one(sock, entry) == "again":
                self._backlog[entry[0]] = deque([entry])  # the I/O thread retries it with the others
                self._waker.signal()
            elif (not self._lent or self._host_waiting) and readable(sock):
                # The send let libzmq take in what arrived: the thread waiting on ZMQ_FD (the I/O thread,
                # or a host thread while the socket is lent) may not be told of a request already readable.
                # A host not waiting (usually the sender: a service process's main thread answering its
                # task) reads the socket first thing in its next wait, and the I/O thread of a lent socket
                # watches only its waker: nobody to tell, so no ZMQ_EVENTS look (a system call).
                if not self._lent:
                    self._waker.signal()
                elif self._host_waiting and self._host_waker is not None:
                    self._host_waker.signal()
            return True
        finally:
            self._sock_lock.release()

    # -- I/O thread ------------------------------------------------------------------------------------

    def _run(self) -> None:
        self._io_ident = threading.get_ident()
        try:
            sock = self._bind()
        except BaseException as exc:
            if self._zap is not None:
                self._zap.close()
            self._started.set_exception(exc)
            return
        backlog = self._backlog
        sock_fd = sock.getsockopt(zmq.FD)
        # The socket's descriptor, not the socket (see the docstring). With plain descriptors alone the wait is
        # poll(2) itself: zmq_poll would first look once without waiting (a system call more per wait).
        poller: Any = select.poll() if self._zap is None else zmq.Poller()
        poller.register(sock_fd, zmq.POLLIN)
        poller.register(self._waker.fileno(), zmq.POLLIN)
        if self._zap is not None:
            poller.register(self._zap.socket, zmq.POLLIN)
        probe_every = self._config.heartbeat_ivl_ms / 1000.0
        next_probe = time.monotonic() + probe_every
        lent_poller = select.poll()
        lent_poller.register(self._waker.fileno(), zmq.POLLIN)
        lock = self._sock_lock
        lock.acquire()
        self._io_awake = True
        self._sock = sock
        self._sock_fd = sock_fd if isinstance(sock_fd, int) else -1
        self._started.set_result(self._endpoint_bound)  # with the socket in place, for a host's first wait
        quiet = False
        """The last look found nothing to read and nothing was sent since: no need to ask again."""
        try:
            while True:
                timeout = BACKLOG_RETRY_MS if backlog else 1000
                if self._calls:
                    timeout = min(timeout, max(0, int((next_probe - time.monotonic()) * 1000) + 1))
                lent = self._lent
                if lent:
                    timeout = self._lent_timeout(timeout)
                self._io_awake = False  # before the last look at the outbox (see post and finish)
                if self._outbox or (not quiet and readable(sock)):
                    timeout = 0  # queued while this thread worked; or readable, which ZMQ_FD would not say again
                lock.release()
                try:
                    ready = dict((lent_poller if lent else poller).poll(timeout))
                finally:
                    lock.acquire()
                    self._io_awake = True
                    self._io_napping = False
                if self._lent and not self._host_waiting and time.monotonic() - self._host_since >= HOST_LOOK_MS / 1000:
                    self._lent = False  # the host runs a call: watch the socket meanwhile (see host_wait)
                    quiet = False
                if self._zap is not None and self._zap.socket in ready:
                    self._zap.handle_pending()
                if self._waker.fileno() in ready:
                    self._waker.drain()
                drained = self._receive(sock)
                sends = self._sends
                if backlog or self._outbox:
                    self._send(sock, backlog)
                if self._admitted:
                    self._start_admitted()
                if self._exit:
                    self._send(sock, backlog)  # what stop() queued after this round's sending
                    break
                if time.monotonic() >= next_probe:
                    next_probe = time.monotonic() + probe_every
                    self._probe_callers(sock)
                # A send lets libzmq take in what arrived (which ZMQ_FD would then not signal): only a
                # socket left alone since it had nothing to read needs no second look before the wait.
                quiet = drained and self._sends == sends
        except Exception:
            log.exception("the I/O thread of the zmq server on %s failed", self.endpoint)
        finally:
            # Let final replies leave (bounded), then close; ctx.term() in stop() waits for this.
            self._io_awake = False
            self._sock = None
            sock.close(linger=STOP_LINGER_MS if self._exit else 0)
            lock.release()
            if self._zap is not None:
                self._zap.close()

    def _lent_timeout(self, timeout: int) -> int:
        """The I/O thread's wait while the socket is lent: short, to notice a host gone to run a call; as
        usual when the host has been waiting long (idle), the host then waking it when it leaves."""
        if self._host_waiting and time.monotonic() - self._host_idle_since >= HOST_IDLE:
            self._io_napping = True
            if self._host_waiting:  # read again after the flag: host_wait clears its own, then reads ours
                return timeout
            self._io_napping = False
        return min(timeout, HOST_LOOK_MS)

    # -- host thread -----------------------------------------------------------------------------------

    def host_wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for calls on this thread, receiving them itself (see the module's
        docstring): deferred handlers then run on this thread, which may then run what they queued. One
        thread only (the host) calls it.

        Returns after a round that started handlers, after :meth:`wake_host`, or at the timeout; False when
        this server cannot lend its socket (CURVE, stopping, another process, a failure): the caller then
        waits for its calls as before.
        """
        if self._zap is not None or self._stopping or self._host_failed or self.pid != os.getpid():
            return False
        if threading.get_ident() == self._io_ident or self._sock_fd < 0:
            return False
        waker = self._host_waker
        if waker is None:
            waker = self._host_waker = Waker()
            self._host_poller = select.poll()
            self._host_poller.register(self._sock_fd, zmq.POLLIN)
            self._host_poller.register(waker.fileno(), zmq.POLLIN)
        now = time.monotonic()
        if self._host_worked:  # idle from now (a wait that ends at its timeout is followed by another)
            self._host_idle_since = now
            self._host_worked = False
        self._host_waiting = True
        deadline = now + timeout
        lock = self._sock_lock
        try:
            while True:
                with lock:
                    sock = self._sock
                    if sock is None:  # closed (stopped, or its I/O thread failed): wait as before, not here
                        return False
                    if not self._lent:
                        self._lent = True
                        self._waker.signal()  # the I/O thread stops watching the socket
                    self._io_awake = True
                    sends = self._sends
                    try:
                        drained = self._receive(sock)
                        started = bool(self._admitted)
                        if started:
                            self._start_admitted()
                        if self._outbox:
                            self._send(sock, self._backlog)
                        if self._backlog:
                            self._waker.signal()  # the I/O thread retries what did not fit
                    finally:
                        self._io_awake = False
                    # Another look only when the socket was used since the last one found it empty (as the I/O
                    # thread's ``quiet``): each is a system call.
                    again = bool(self._outbox) or ((not drained or self._sends != sends) and readable(sock))
                if started:
                    self._host_worked = True
                    return True
                if again:
                    continue
                left = deadline - time.monotonic()
                if left <= 0:
                    return True
                ready = self._host_poller.poll(int(left * 1000) + 1)
                if not ready:
                    return True
                if any(fd == waker.fileno() for fd, _event in ready):
                    waker.drain()
                    return True
        except Exception:
            log.exception("the zmq server on %s failed on the host thread; the I/O thread receives", self.endpoint)
            self._host_failed = True
            return False
        finally:
            self._host_waiting = False  # before reading _io_napping (see _lent_timeout)
            self._host_since = time.monotonic()
            if self._host_failed:
                self._lent = False
                self._waker.signal()
            elif self._io_napping and self._host_worked:
                self._waker.signal()  # it sleeps long, the host was idle: it must look while this call runs

    def wake_host(self) -> None:
        """End a host thread's :meth:`host_wait` now (safe from a signal handler)."""
        waker = self._host_waker
        if waker is not None:
            waker.signal()

    def _receive(self, sock: zmq.Socket[bytes]) -> bool:
        """Read and handle what is waiting (up to ``RECV_BATCH``); True when it ended finding nothing more."""
        if not readable(sock):
            return True
        for _ in range(RECV_BATCH):
            try:
                frames = recv_frames(sock)
            except zmq.Again:
                return True
            if len(frames) < 2:
                continue  # (cannot answer: no frames to address a reply to)
            ident = frames[0]
            try:
                msg = framing.decode(frames[1:])
            except framing.ProtocolError as exc:
                log.warning("zmq server on %s: a peer broke the protocol: %s", self.endpoint, exc)
                if exc.corr is not None:
                    err = FlameError(FlameErrorCode.INVALID_ARGUMENT, f"protocol error: {exc}")
                    deadline = time.monotonic() + 5.0
                    self._outbox.append((ident, framing.error(framing.pack_corr(exc.corr), err), deadline))
                continue
            self._handle(ident, msg)
            if not readable(sock):
                return True
        return False

    def _refuse(self, ident: bytes, msg: framing.Message, err: FlameError) -> None:
        timeout = framing.timeout_of(msg)
        deadline = None if timeout is None else time.monotonic() + timeout
        self._outbox.append((ident, framing.error(framing.pack_corr(msg.corr), err), deadline))

    def _handle(self, ident: bytes, msg: framing.Message) -> None:
        kind = msg.kind
        if kind is framing.Kind.CANCEL or kind is framing.Kind.CREDIT:
            with self._lock:
                call = self._calls.get((ident, msg.corr))
            if call is not None:
                if kind is framing.Kind.CANCEL:
                    self._cancel(call)
                elif call.flow is not None:
                    call.flow.grant(msg.a, msg.b)
                    if call.writer is not None:
                        call.writer.pump()  # what a deferred stream kept back for this credit
            return
        if kind is not framing.Kind.UNARY and kind is not framing.Kind.STREAM:
            self._refuse(ident, msg, FlameError(FlameErrorCode.INVALID_ARGUMENT, f"a {kind.name} request"))
            return
        method = msg.method.decode("utf-8", "replace")
        if self._stopping:
            self._refuse(ident, msg, unavailable(self.endpoint, "the server is shutting down"))
            return
        handler = self._handlers.get(method)
        streaming = kind is framing.Kind.STREAM
        if handler is None or isinstance(handler, (StreamHandler, DeferredStreamHandler)) != streaming:
            self.counters["unimplemented"] += 1
            err = unimplemented(method, self.endpoint)
            if handler is not None:
                shape = "a unary" if streaming else "a streaming"
                err = FlameError(FlameErrorCode.UNIMPLEMENTED, f"{method} on {self.endpoint} is {shape} method")
            self._refuse(ident, msg, err)
            return
        payload: bytes = msg.payload
        if len(payload) > self.max_message_size:  # (the test written out: every request runs it)
            try:
                check_size(len(payload), self.max_message_size, what=f"request to {method}", endpoint=self.endpoint)
            except FlameError as err:
                self._refuse(ident, msg, err)
                return
        timeout = framing.timeout_of(msg)
        flow = None
        if streaming:
            # The caller's window, never more than ours: it bounds what a stream may queue here.
            flow = StreamFlow(
                min(msg.a or STREAM_WINDOW_ITEMS, STREAM_WINDOW_ITEMS),
                min(msg.b or STREAM_WINDOW_BYTES, STREAM_WINDOW_BYTES),
            )
        call = ServerCall(ident, msg.corr, method, timeout, flow)
        with self._lock:
            full = len(self._calls) >= self._config.max_pending_calls
            if not full:
                self._calls[call.key] = call
        if full:
            self.counters["refused"] += 1
            self._refuse(
                ident,
                msg,
                FlameError(
                    FlameErrorCode.RESOURCE_EXHAUSTED,
                    f"the server at {self.endpoint} is busy: {self._config.max_pending_calls} calls are "
                    f"queued or running (max_pending_calls); retry later",
                ),
            )
            return
        self.counters["accepted"] += 1
        if isinstance(handler, DeferredHandler):
            # Started on this thread too, but after this round's receiving and sending (_start_admitted): a
            # handler that wakes another thread (a service's main thread) then finds this one about to wait.
            self._admitted.append((run_deferred, call, handler.fn, payload))
            return
        if isinstance(handler, DeferredStreamHandler):
            # Likewise (its writer is fed later), and in arrival order with the deferred unary calls of the
            # round: a service process queues both for its main thread, which runs them in that order.
            self._admitted.append((run_deferred_stream, call, handler.fn, payload))
            return
        run = run_unary if isinstance(handler, UnaryHandler) else run_stream
        self._admitted.append((run, call, handler.fn, payload))

    def _start_admitted(self) -> None:
        # Handed to workers last, right before blocking in poll: a woken worker needs the GIL, which
        # this thread holds until it blocks. Deferred handlers run here, on this thread, for the same
        # reason: one that hands its call to another thread (a service process's main thread) used to
        # wake it while this thread still had a round to finish, and the woken thread went back to sleep
        # waiting for the GIL (measured: 5.2 futex calls per warm invoke in a service process, 2.1 after).
        admitted, self._admitted = self._admitted, []
        host = self._host_waker
        for run, call, fn, payload in admitted:
            if run is run_deferred or run is run_deferred_stream:
                run(self, call, fn, payload)  # it starts work and returns
                if host is not None and threading.get_ident() == self._io_ident:
                    host.signal()  # what it queued may be for a host thread, which waits on the socket
                continue
            try:
                self._pool.submit(run, self, call, fn, payload)
            except RuntimeError:  # the pool is shut down: we are stopping
                err = unavailable(self.endpoint, "the server is shutting down")
                self.finish(call, framing.error(call.corr, err))

    def _send(self, sock: zmq.Socket[bytes], backlog: dict[bytes, deque[_Out]]) -> None:
        now = time.monotonic()
        for ident in list(backlog):
            queue = backlog[ident]
            while queue:
                deadline = queue[0][2]
                if deadline is not None and deadline <= now:
                    queue.popleft()
                    self.counters["dropped_late"] += 1
                    continue
                state = self._send_one(sock, queue[0])
                if state == "again":
                    break
                queue.popleft()
                if state == "gone":
                    queue.clear()
            if not queue:
                del backlog[ident]
        outbox = self._outbox
        while outbox:
            entry = outbox.popleft()
            ident = entry[0]
            if ident in backlog:
                backlog[ident].append(entry)  # keep each peer's replies in order
                continue
            state = self._send_one(sock, entry)
            if state == "again":
                backlog[ident] = deque([entry])

    def _send_one(self, sock: zmq.Socket[bytes], entry: _Out) -> str:
        ident, frames, _deadline = entry
        self._sends += 1
        try:
            # Routed by the first frame; a multipart message is queued whole or not at all, so EAGAIN
            # and EHOSTUNREACH can only come from that first frame.
            send_frames(sock, [ident, *frames], copy=False)
        except zmq.Again:
            return "again"
        except zmq.ZMQError as exc:
            if exc.errno == errno.EHOSTUNREACH:
                self._peer_gone(ident)
                return "gone"
            raise
        return "sent"

    def _probe_callers(self, sock: zmq.Socket[bytes]) -> None:
        with self._lock:
            idents = {ident for ident, _corr in self._calls}
        for ident in idents:
            self._send_one(sock, (ident, framing.PING_FRAMES, None))  # "again" = alive but busy: fine

    def _peer_gone(self, ident: bytes) -> None:
        self.counters["peer_gone"] += 1
        with self._lock:
            calls = [call for key, call in self._calls.items() if key[0] == ident]
        for call in calls:
            self._cancel(call)

    def _cancel(self, call: ServerCall) -> None:
        """The caller has gone: its handler sees it; a deferred stream ends now (nobody will read it)."""
        call.cancel()
        if call.writer is not None:
            call.writer.abandon()

    # -- stop ------------------------------------------------------------------------------------------

    def stop(self, grace: float | None) -> None:
        if self.pid != os.getpid():
            raise FlameError(
                FlameErrorCode.INVALID_STATE,
                f"the zmq server on {self.endpoint} was started by process {self.pid} and cannot be used "
                f"from process {os.getpid()} (a forked child); start a server in the child instead",
            )
        with self._lock:
            first = not self._stopped
            self._stopped = True
        if not first:
            self._released.wait(grace_bound(grace))  # another thread is stopping it: wait for that
            return
        try:
            self._stop(grace)
        finally:
            self._released.set()

    def _stop(self, grace: float | None) -> None:
        self._stopping = True  # the I/O thread now answers new calls with UNAVAILABLE
        self._lent = False  # (it reads them itself from now on: nobody hosts while stopping)
        self._waker.signal()
        deadline = time.monotonic() + (grace or 0.0)
        while time.monotonic() < deadline and (self._calls or self._outbox or self._sending):
            time.sleep(0.005)
        with self._lock:
            remaining = list(self._calls.values())
        for call in remaining:
            call.cancel()
            self.finish(
                call,
                framing.error(call.corr, unavailable(self.endpoint, "the server stopped during the call")),
            )
        self._exit = True
        self._waker.signal()
        self._thread.join(JOIN_TIMEOUT)
        self._pool.shutdown()
        if self._thread.is_alive():
            log.error("the I/O thread of the zmq server on %s did not stop; leaving its context", self.endpoint)
            return
        self._ctx.term()  # returns once every socket is closed: the endpoint is free again
        self._waker.close()
        if self._host_waker is not None:
            self._host_waker.close()
        self._remove_ipc_file()

    def _remove_ipc_file(self) -> None:
        if self._ipc_inode is None:
            return
        with contextlib.suppress(OSError):
            if os.stat(self.address.path).st_ino == self._ipc_inode:
                os.unlink(self.address.path)

    def stop_at_exit(self) -> None:
        if self.pid == os.getpid():
            with contextlib.suppress(Exception):
                self.stop(0.0)


class ZmqServer:
    """A running zmq server; ``endpoint`` has a requested port 0 resolved."""

    def __init__(self, address: Address, handlers: Mapping[str, Handler], config: ZmqConfig) -> None:
        for method, handler in handlers.items():
            if not isinstance(handler, (UnaryHandler, StreamHandler, DeferredHandler, DeferredStreamHandler)):
                raise FlameError(
                    FlameErrorCode.INVALID_ARGUMENT,
                    f"the handler for {method} is a {type(handler).__name__}, not a UnaryHandler, StreamHandler, "
                    f"DeferredHandler or DeferredStreamHandler",
                )
        self._engine = _Engine(address, handlers, config)
        self._endpoint = self._engine.start()
        weakref.finalize(self, self._engine.stop_at_exit)

    @property
    def endpoint(self) -> str:
        return self._endpoint

    def stats(self) -> dict[str, Any]:
        """Counters of the I/O thread: accepted, refused (RESOURCE_EXHAUSTED), unimplemented, ..."""
        engine = self._engine
        stats: dict[str, Any] = dict(engine.counters)
        stats["running"] = len(engine._calls)
        stats["zap_denied"] = engine._zap.denied if engine._zap is not None else 0
        return stats

    def host_wait(self, timeout: float) -> bool:
        """Wait for calls on the calling thread, receiving them itself (see :meth:`_Engine.host_wait`)."""
        return self._engine.host_wait(timeout)

    def wake_host(self) -> None:
        """End the calling thread's :meth:`host_wait` early (from another thread or a signal handler)."""
        self._engine.wake_host()

    def stop(self, grace: float | None = None) -> None:
        self._engine.stop(grace)

    def __enter__(self) -> ZmqServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
