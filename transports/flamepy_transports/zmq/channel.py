"""The client side: a :class:`ZmqChannel` and the I/O thread that owns its DEALER socket.

Threads. Any number of caller threads; one I/O thread per channel (per process). A caller registers
its call under a fresh correlation id in the pending table, appends the frames to the outbox (a deque)
and wakes the I/O thread through a :class:`~.waker.Waker`; then it waits on its own call object. The I/O
thread touches the DEALER and its monitor: it sends what the outbox holds, reads replies and completes
the call with the reply's correlation id, and reads monitor events to learn whether a server is there.
While it has nothing to do it lends the socket (its lease) to callers, who then send themselves: a
synchronous caller also reads its reply (:meth:`_Core.direct_unary`), an asynchronous one leaves the
reply to the I/O thread, which waits on the DEALER's descriptor (``ZMQ_FD``) as well as its waker, so
the reply wakes it without the caller waking it (:meth:`_Core._send_async_now`).

Connection state, from the socket monitor:

* handshake succeeded -> connected; queued calls go out;
* disconnected after being connected -> every call in flight fails with ``UNAVAILABLE`` now (the server
  closed, crashed, or missed ZMTP heartbeats for ``heartbeat_ivl_ms + heartbeat_timeout_ms``), saying
  that it may or may not have run: even a request written just as the connection went may have reached
  the old server, so it is never sent again (see :meth:`_Core._on_event`);
* a connection attempt refused, or a handshake failing, while calls wait -> they fail with
  ``UNAVAILABLE`` (``UNAUTHENTICATED`` when the server's ZAP handler refused our CURVE key, or one side
  has CURVE and the other not); with no news at all they fail after ``connect_timeout``.

Requests go out only on a connection the monitor has confirmed. When an established connection is
lost, the replies that made it are read first, the calls still in flight fail, and the DEALER is
replaced by a fresh one (so no request queued for the dead peer is delivered to a server that comes up
later: its caller has already been told UNAVAILABLE). Otherwise libzmq reconnects by itself (every
``RECONNECT_IVL_MS``), so a server restarted on the same endpoint is found again by the same channel. A
socket in a broken state -- a peer speaking another protocol, a zmq error other than EAGAIN, a handshake
refused (after which libzmq stops reconnecting) -- is replaced the same way.

A missed deadline does not break a DEALER (unlike REQ, it has no send/receive lockstep): the caller
gets ``DEADLINE_EXCEEDED``, a CANCEL goes to the server, and the late reply, matched by correlation id
against the pending table, finds nothing and is dropped (counted in ``stats()["late_replies"]``).
Correlation ids are never reused within a channel core, so a late reply cannot complete another call.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import os
import select
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any

import zmq

from flamepy_core.contracts.errors import FlameError, FlameErrorCode
from flamepy_core.contracts.transport import DEFAULT_TIMEOUT, Timeout
from flamepy_core.transport_kit import (
    check_size,
    deadline_exceeded,
    resolve_timeout,
    unavailable,
)
from flamepy_transports.zmq import framing
from flamepy_transports.zmq.auth import apply_client
from flamepy_transports.zmq.calls import (
    AsyncCall,
    CallbackStreamCall,
    ClientCall,
    StreamCall,
    StreamResponses,
    UnaryCall,
)
from flamepy_transports.zmq.config import (
    STREAM_WINDOW_BYTES,
    STREAM_WINDOW_ITEMS,
    ZmqConfig,
    configure_dealer,
)
from flamepy_transports.zmq.endpoints import Address
from flamepy_transports.zmq.monitor import MECHANISM_MISMATCH, Monitor
from flamepy_transports.zmq.waker import Waker, readable, recv_frames, send_frames

log = logging.getLogger(__name__)

STALE_EVENT_GUARD = 0.02
"""A refused connection attempt fails only calls queued at least this long before it was seen, so an
event from before a server (re)started never fails a call made after."""

RECV_BATCH = 512
DIRECT_SLICE_MS = 20
"""A caller using the socket itself re-checks this often that the channel is not closing (ms)."""
IDLE_LOOK_MS = 250
"""An idle channel's I/O thread takes the socket back this often to read its connection's news (ms)."""
JOIN_TIMEOUT = 5.0

_Entry = tuple["ClientCall | None", list[bytes]]


def _copy(err: FlameError) -> FlameError:
    return FlameError(err.code, err.message)


class _Core:
    """One process's half of a channel: context, DEALER, monitor, I/O thread, pending calls."""

    def __init__(self, address: Address, config: ZmqConfig) -> None:
        self.pid = os.getpid()
        self._address = address
        self._endpoint = address.url
        self._config = config
        self._ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context(io_threads=1)
        self._lock = threading.Lock()
        self._pending: dict[int, ClientCall] = {}
        self._outbox: deque[_Entry] = deque()
        self._waker = Waker()
        self._want = Waker()
        """Signalled by the I/O thread when it needs the socket back from a direct caller, who then hands
        its call over at once: a slow direct call never holds up the calls made meanwhile."""
        self._ids = itertools.count(1)
        self._method_frames: dict[str, bytes] = {}
        self._deadlines: list[tuple[float, int]] = []
        """(deadline, corr) of asynchronous calls: nobody waits on them, so the I/O thread expires them."""
        self._closing = False
        self._stop = False
        self.alive = True
        # Owned by the I/O thread.
        self._sock: zmq.Socket[bytes] | None = None
        self._monitor: Monitor | None = None
        self._busy_poller = zmq.Poller()
        self._idle_poller = select.poll()
        self._direct_poller = select.poll()
        """A direct caller's wait: the descriptors (``ZMQ_FD``) of the DEALER and of its monitor, and ``_want``."""
        self._monitor_fd = -1
        self._pollout = False
        # The lease of the DEALER and its monitor: whoever holds it may touch them. The I/O thread holds it
        # while it has calls to carry; an idle channel lends it to one synchronous caller at a time (see
        # direct_unary), and takes it back now and then to read the connection's news.
        self._lease = threading.Lock()
        self._holding = False
        self._watching_fd = False
        """The idle I/O thread waits on the DEALER's descriptor too (``ZMQ_FD``), so a reply to an
        asynchronous call sent by its caller wakes it with no wake-up from that caller (see unary_async)."""
        self._async_callers = False
        """Set by an asynchronous call sent by its caller, cleared by a synchronous one: the idle I/O thread
        watches the descriptor only for a channel used for asynchronous calls (an instance link), since a
        synchronous caller's reply, which that caller reads itself, would wake it for nothing."""
        self._fd_quiet_until = 0.0
        """Until then the idle I/O thread waits on its waker alone: something else than a reply it must
        read woke it through the descriptor (a synchronous caller's reply)."""
        self._sock_fd = -1
        self._watch_poller = select.poll()
        self._unsent: deque[_Entry] = deque()
        self._connected = False
        self._last_failure: FlameError | None = None
        self._reset_reason: FlameError | None = None
        self._completions: list[tuple[Callable[[Any], None], Any]] = []
        self.late_replies = 0
        self.socket_resets = 0
        self._io_ident: int | None = None
        """The I/O thread's ident, once it runs: calls it makes itself need no wake-up."""
        self._thread = threading.Thread(target=self._run, name=f"flamepy-zmq-channel[{self._endpoint}]", daemon=True)
        self._thread.start()

    # -- caller side -----------------------------------------------------------------------------------

    def _method(self, method: str) -> bytes:
        frame = self._method_frames.get(method)
        if frame is None:
            frame = method.encode("utf-8")
            if len(self._method_frames) < 1024:
                self._method_frames[method] = frame
        return frame

    def _submit(self, call: ClientCall, frames: list[bytes]) -> None:
        with self._lock:
            if self._closing:
                raise unavailable(self._endpoint, "the channel is closed")
            self._pending[call.corr] = call
        self._outbox.append((call, frames))
        if threading.get_ident() != self._io_ident:
            self._waker.signal()
        # else: a completion running on the I/O thread (a stream's next request made from its last
        # item's callback): the thread sends it right after its completions, without waking itself.

    def direct_unary(self, method: str, request: bytes, timeout: float | None) -> bytes | None:
        """The call made on the socket by the calling thread itself, or None when that cannot be now.

        Only on an idle, connected channel: no call in flight, nothing queued, no connection news unread,
        and the I/O thread has lent the socket (its lease is free). The caller sends and waits for its
        reply on the socket, watching the connection's monitor too, and gives the socket back. This saves
        the two thread hand-offs of the I/O thread's path; streams, concurrent calls and asynchronous
        calls stay with the I/O thread. Should the connection have news while the caller waits (lost,
        re-established), or another call need the socket, the call is handed to the I/O thread as sent,
        exactly as if it had sent it.
        """
        # (``_busy()`` written out: this runs on every synchronous call.)
        if (
            self._closing
            or not self._connected
            or self._pending
            or self._unsent
            or self._outbox
            or self._reset_reason is not None
        ):
            return None
        self._async_callers = False
        if not self._lease.acquire(blocking=False):
            return None
        handed: UnaryCall | None = None
        try:
            sock = self._sock
            monitor = self._monitor
            if sock is None or monitor is None or self._closing or not self._connected or self._busy():
                return None
            readable(sock)  # lets libzmq act on what happened to the connection since it was last used
            if readable(monitor.socket):
                return None  # news the I/O thread has not read (a lost connection?): it goes first
            corr = next(self._ids)
            frames = framing.request(framing.Kind.UNARY, corr, self._method(method), timeout, request)
            try:
                send_frames(sock, frames, copy=False)
            except zmq.Again:
                return None  # the pipe is full: the I/O thread's path waits for room
            outcome = self._await_direct(sock, monitor, corr, method, timeout)
            if not isinstance(outcome, UnaryCall):
                return outcome
            handed = outcome
        finally:
            self._lease.release()
            if handed is not None or self._busy():
                self._waker.signal()  # the I/O thread takes over: a handed call, or callers queued meanwhile
        return handed.wait(self)

    def _hand_over(self, corr: int, method: str, timeout: float | None, deadline: float | None) -> UnaryCall:
        """Make a call sent directly an I/O thread's call in flight, keeping its deadline."""
        call = UnaryCall(corr, method, timeout)
        call.deadline = deadline
        call.sent = True
        with self._lock:
            if self._closing:
                raise unavailable(self._endpoint, "the channel is closed")
            self._pending[corr] = call
        return call

    def _await_direct(
        self, sock: zmq.Socket[bytes], monitor: Monitor, corr: int, method: str, timeout: float | None
    ) -> bytes | UnaryCall:
        """The reply, read by the caller; or the call handed to the I/O thread when the monitor has news."""
        deadline = None if timeout is None else time.monotonic() + timeout
        poller = self._direct_poller
        want_fd = self._want.fileno()
        woken = False
        while True:
            # Read what libzmq has taken in before waiting on the descriptors: ZMQ_FD signals only what
            # arrives after. Waiting on plain descriptors, not on the sockets through zmq_poll, spares
            # the ZMQ_EVENTS look at each socket before and after the wait (a system call each). Once the
            # socket's descriptor has woken this thread, a receive asks no ZMQ_EVENTS first: libzmq reads
            # its commands itself when it finds nothing, and zmq.Again then sends the thread back to wait.
            if woken or readable(sock):
                while True:
                    try:
                        frames = recv_frames(sock)
                        payload = framing.reply_payload(frames, corr)
                        if payload is not None:
                            return bytes(payload)
                        msg = framing.decode(frames)
                    except zmq.Again:
                        break
                    except framing.ProtocolError as exc:
                        self._reset_reason = unavailable(self._endpoint, f"the server broke the protocol: {exc}")
                        raise _copy(self._reset_reason) from None
                    if msg.corr != corr:
                        if msg.kind is not framing.Kind.PING:
                            self.late_replies += 1
                        continue
                    if msg.kind is framing.Kind.REPLY:
                        return bytes(msg.payload)
                    if msg.kind is framing.Kind.ERROR:
                        raise framing.error_of(msg)
                    raise FlameError(
                        FlameErrorCode.INTERNAL, f"the server sent a {msg.kind.name} to the call of {method}"
                    )
            wait = (
                DIRECT_SLICE_MS
                if deadline is None
                else max(0, min(DIRECT_SLICE_MS, int((deadline - time.monotonic()) * 1000) + 1))
            )
            woken = False
            for fd, _event in poller.poll(wait):  # usually the socket's descriptor alone: no set built
                if fd == want_fd or (fd == self._monitor_fd and readable(monitor.socket)):
                    return self._hand_over(corr, method, timeout, deadline)
                woken = woken or fd == self._sock_fd
            if self._closing:
                raise unavailable(self._endpoint, "the channel is closed")
            if deadline is not None and time.monotonic() >= deadline:
                with contextlib.suppress(zmq.ZMQError):
                    sock.send_multipart(framing.cancel(corr), zmq.NOBLOCK)
                raise deadline_exceeded(method, self._endpoint, timeout)

    def unary(self, method: str, request: bytes, timeout: float | None) -> bytes:
        direct = self.direct_unary(method, request, timeout) if self._config.direct_calls else None
        if direct is not None:
            return direct
        corr = next(self._ids)
        call = UnaryCall(corr, method, timeout)
        self._submit(call, framing.request(framing.Kind.UNARY, corr, self._method(method), timeout, request))
        return call.wait(self)

    def unary_async(self, method: str, request: bytes, timeout: float | None) -> Future[bytes]:
        corr = next(self._ids)
        call = AsyncCall(corr, method, timeout, self._config.max_message_size, self._endpoint)
        if call.deadline is not None:
            with self._lock:
                heapq.heappush(self._deadlines, (call.deadline, corr))
        frames = framing.request(framing.Kind.UNARY, corr, self._method(method), timeout, request)
        if not (self._config.direct_calls and self._send_async_now(call, frames)):
            self._submit(call, frames)
        return call.future

    def stream_async(
        self,
        method: str,
        request: bytes,
        timeout: float | None,
        on_item: Callable[[bytes], None],
        on_end: Callable[[FlameError | None], None],
    ) -> None:
        corr = next(self._ids)
        call = CallbackStreamCall(corr, method, timeout, self, on_item, on_end)
        if call.deadline is not None:
            with self._lock:
                heapq.heappush(self._deadlines, (call.deadline, corr))
        frames = self._stream_request(corr, method, timeout, request)
        if not (self._config.direct_calls and self._send_async_now(call, frames)):
            self._submit(call, frames)

    def _send_async_now(self, call: ClientCall, frames: list[bytes]) -> bool:
        """Send an asynchronous call from the calling thread; False when the I/O thread must send it.

        Only on an idle, connected channel whose I/O thread has lent the socket, as for
        :meth:`direct_unary`; the I/O thread then reads the reply and completes the future. It wakes by
        itself when the reply arrives if it is waiting on the socket's descriptor (the usual idle wait),
        so the call costs no thread hand-off at all; otherwise (it waits on its waker alone, or a
        deadline must be watched, or something is readable already, which ``ZMQ_FD`` would not say
        again) it is woken.
        """
        if self._closing or not self._connected or self._busy() or self._reset_reason is not None:
            return False
        if not self._lease.acquire(blocking=False):
            return False
        try:
            sock = self._sock
            monitor = self._monitor
            if sock is None or monitor is None or self._closing or not self._connected or self._busy():
                return False
            readable(sock)  # lets libzmq act on what happened to the connection since it was last used
            if readable(monitor.socket):
                return False  # news the I/O thread has not read (a lost connection?): it goes first
            with self._lock:
                if self._closing:
                    return False
                self._pending[call.corr] = call  # before the send: the I/O thread may read the reply at once
            try:
                send_frames(sock, frames, copy=False)
            except zmq.ZMQError:  # a full pipe, or worse: the I/O thread's path handles both
                with self._lock:
                    self._pending.pop(call.corr, None)
                return False
            call.sent = True
            # Read after the call is pending: an I/O thread that stops watching the descriptor looks
            # whether a call is pending before it waits again.
            wake = call.deadline is not None or not self._watching_fd or readable(sock)
            self._async_callers = True
        finally:
            self._lease.release()
        if wake:
            self._waker.signal()
        return True

    def _stream_request(self, corr: int, method: str, timeout: float | None, request: bytes) -> list[bytes]:
        """The frames that open a stream call, with this transport's flow-control window."""
        return framing.request(
            framing.Kind.STREAM,
            corr,
            self._method(method),
            timeout,
            request,
            window_items=STREAM_WINDOW_ITEMS,
            window_bytes=STREAM_WINDOW_BYTES,
        )

    def stream(self, method: str, request: bytes, timeout: float | None) -> StreamResponses:
        corr = next(self._ids)
        call = StreamCall(corr, method, timeout)
        frames = self._stream_request(corr, method, timeout, request)
        self._submit(call, frames)
        return StreamResponses(call, self)

    def abandon(self, call: ClientCall) -> bool:
        with self._lock:
            if self._pending.pop(call.corr, None) is None:
                return False
            call.done = True
        if call.sent:
            self.send_control(framing.cancel(call.corr))
        return True

    def expired_error(self, call: ClientCall) -> FlameError:
        failure = self._last_failure
        if not call.sent and failure is not None and not self._connected:
            return _copy(failure)  # never sent because nobody is there: say so rather than "too slow"
        return deadline_exceeded(call.method, self._endpoint, call.timeout)

    def send_control(self, frames: list[bytes]) -> None:
        if not self._closing:
            self._outbox.append((None, frames))
            self._waker.signal()

    def stats(self) -> dict[str, Any]:
        return {
            "connected": self._connected,
            "pending": len(self._pending),
            "late_replies": self.late_replies,
            "socket_resets": self.socket_resets,
        }

    def shutdown(self, reason: str = "the channel is closed") -> None:
        """Fail what is pending, stop the I/O thread, close the sockets, terminate the context."""
        if self.pid != os.getpid():
            return  # a parent's core seen from a forked child: never touch its sockets
        with self._lock:
            if self._closing:
                return
            self._closing = True
        self._fail(lambda _c: True, lambda: unavailable(self._endpoint, reason))
        self._stop = True
        self._waker.signal()
        if threading.current_thread() is not self._thread:
            self._thread.join(JOIN_TIMEOUT)
        if self._thread.is_alive():
            log.error("the I/O thread of the zmq channel to %s did not stop; leaving its context", self._endpoint)
            return
        self._ctx.term()
        self._waker.close()
        self._want.close()

    # -- I/O thread ------------------------------------------------------------------------------------

    def _fail(self, which: Callable[[ClientCall], bool], error: Callable[[], FlameError]) -> int:
        with self._lock:
            victims = [call for call in self._pending.values() if which(call)]
            for call in victims:
                del self._pending[call.corr]
                call.done = True
        if threading.current_thread() is self._thread:
            # Behind whatever this step already received, so a stream's items keep their order.
            self._completions.extend((call.on_error, error()) for call in victims)
        else:
            for call in victims:
                call.on_error(error())
        return len(victims)

    def _open(self) -> None:
        sock = self._ctx.socket(zmq.DEALER)
        configure_dealer(sock, self._config, self._address)
        if self._config.curve_client is not None:
            apply_client(sock, self._config.curve_client)
        self._monitor = Monitor(self._ctx, sock)
        sock.connect(self._address.zmq_address)
        self._sock = sock
        self._connected = False
        self._pollout = False
        self._busy_poller = zmq.Poller()
        self._busy_poller.register(sock, zmq.POLLIN)
        self._busy_poller.register(self._monitor.socket, zmq.POLLIN)
        self._busy_poller.register(self._waker.fileno(), zmq.POLLIN)
        # Plain descriptors are waited on with poll(2) itself: zmq_poll would look once without waiting
        # before every wait (one system call more each time the thread goes idle).
        self._idle_poller = select.poll()
        self._idle_poller.register(self._waker.fileno(), select.POLLIN)
        sock_fd = sock.getsockopt(zmq.FD)
        assert isinstance(sock_fd, int)
        self._sock_fd = sock_fd
        self._watch_poller = select.poll()
        self._watch_poller.register(self._waker.fileno(), select.POLLIN)
        self._watch_poller.register(self._sock_fd, select.POLLIN)
        monitor_fd = self._monitor.socket.getsockopt(zmq.FD)
        assert isinstance(monitor_fd, int)
        self._monitor_fd = monitor_fd
        self._direct_poller = select.poll()
        for fd in (sock_fd, monitor_fd, self._want.fileno()):
            self._direct_poller.register(fd, select.POLLIN)

    def _close_socket(self) -> None:
        if self._monitor is not None:
            self._monitor.close()
            self._monitor = None
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None

    def _hold(self) -> None:
        """Take the socket's lease back; a direct caller holding it hands its call over and lets go at once."""
        if not self._holding:
            if not self._lease.acquire(blocking=False):
                self._want.signal()
                self._lease.acquire()
            self._want.drain()
            self._holding = True

    def _busy(self) -> bool:
        return bool(self._pending or self._unsent or self._outbox)

    def _reset(self, reason: FlameError) -> None:
        """Replace a broken socket; calls sent on it can get no reply and fail with ``reason``."""
        self._hold()
        self.socket_resets += 1
        log.info("zmq channel to %s: recreating its socket (%s)", self._endpoint, reason.message)
        self._fail(lambda c: c.sent, lambda: _copy(reason))
        self._close_socket()
        self._reset_reason = None
        self._open()

    def _run(self) -> None:
        self._io_ident = threading.get_ident()
        try:
            self._open()
            while not self._stop:
                self._step()
        except Exception as exc:  # a bug, or the context terminated under us: fail loudly, not silently
            if not self._stop:
                log.exception("the I/O thread of the zmq channel to %s failed", self._endpoint)
            failure = FlameError(FlameErrorCode.UNAVAILABLE, f"the zmq channel to {self._endpoint} failed: {exc!r}")
            self._fail(lambda _c: True, lambda: _copy(failure))
        finally:
            self._complete()
            self.alive = False
            self._hold()  # a direct caller sees the channel closing and gives the socket back
            self._close_socket()

    def _poll_timeout(self) -> int:
        timeout = self._poll_timeout_io()
        if self._deadlines:
            timeout = min(timeout, max(0, int((self._deadlines[0][0] - time.monotonic()) * 1000) + 1))
        return timeout

    def _expire_async(self) -> None:
        """Fail the asynchronous calls whose deadline passed (DEADLINE_EXCEEDED), telling the server."""
        now = time.monotonic()
        expired: list[ClientCall] = []
        with self._lock:
            while self._deadlines and self._deadlines[0][0] <= now:
                _deadline, corr = heapq.heappop(self._deadlines)
                call = self._pending.pop(corr, None)
                if call is not None:
                    call.done = True
                    expired.append(call)
        for call in expired:
            if call.sent:
                self._outbox.append((None, framing.cancel(call.corr)))
            self._completions.append((call.on_error, self.expired_error(call)))

    def _poll_timeout_io(self) -> int:
        if not self._unsent:
            return 1000
        if self._connected:
            return 100  # waiting for room in the send pipe (POLLOUT); re-check abandoned calls now and then
        oldest = min((c.queued_at for c, _ in self._unsent if c is not None), default=None)
        if oldest is None:
            return 100
        left = oldest + self._config.connect_timeout - time.monotonic()
        return max(1, min(100, int(left * 1000) + 1))

    def _step(self) -> None:
        sock = self._sock
        monitor = self._monitor
        assert sock is not None and monitor is not None
        if self._busy() or not self._config.direct_calls:
            self._hold()  # waits for a direct caller to finish its one call
        elif self._holding:
            self._holding = False  # idle: a synchronous caller may use the socket itself
            self._lease.release()
        if self._holding:
            ready = dict(self._busy_poller.poll(self._poll_timeout()))
        else:
            # Idle: the socket is lent. Wait on the waker, and on the socket's descriptor unless a
            # synchronous caller was seen reading its own reply lately (see _send_async_now).
            watch = self._async_callers and time.monotonic() >= self._fd_quiet_until
            self._watching_fd = watch  # set before looking for calls: _send_async_now reads it after adding one
            ready = (
                {} if self._busy() else dict((self._watch_poller if watch else self._idle_poller).poll(IDLE_LOOK_MS))
            )
            self._watching_fd = False
            if self._busy():
                self._hold()  # a call was queued (or sent by its caller): the socket's news first, then the call
            elif self._sock_fd in ready:
                # No call of ours: a stray reply, the connection's news, or a synchronous caller's reply
                # (that caller reads it): wait on the waker alone for a while, after a look if possible.
                self._fd_quiet_until = time.monotonic() + IDLE_LOOK_MS / 1000.0
                self._holding = self._lease.acquire(blocking=False)
            elif not ready and self._lease.acquire(blocking=False):
                self._holding = True  # nobody calls: a look at the connection's news and stray replies
            if self._holding and readable(sock):
                ready[sock] = zmq.POLLIN  # the monitor's news is looked at below, the waker was in the wait
        if self._holding and sock in ready and ready[sock] & zmq.POLLIN:
            self._receive(sock)
        news = monitor.socket in ready or (self._holding and readable(monitor.socket))
        if news and self._monitor is monitor:  # (a reset replaced it: stale events)
            # Read before sending anything: news a direct caller saw and left (a lost connection, then
            # a new one) must not be taken for news about a call sent after it.
            events = monitor.events()
            if self._holding and self._sock is sock:
                # A reply that arrived just before its connection went is readable now, though poll may
                # have seen only the monitor: take it before "disconnected" fails the calls in flight.
                self._receive(sock)
            for event, value in events:
                if self._monitor is not monitor:
                    break  # the socket was replaced: the rest are about the old one
                self._on_event(event, value)
        if self._waker.fileno() in ready:
            self._waker.drain()
        if not self._stop:
            if self._deadlines:
                self._expire_async()
            self._flush()
            if self._unsent and not self._connected:
                self._expire_unconnected()
        self._complete()
        while self._outbox and not self._stop:
            # Calls the completions made on this thread (see _submit): sent now, not after a wake-up.
            self._flush()
            self._complete()

    def _complete(self) -> None:
        # Hand replies to their callers last, right before blocking in poll: a woken caller needs the
        # GIL, which this thread holds until it blocks.
        completions = self._completions
        if completions:
            self._completions = []
            for complete, value in completions:
                complete(value)

    def _receive(self, sock: zmq.Socket[bytes]) -> None:
        # Poll said readable: read until ZMQ_EVENTS says no more (cheaper than ending on EAGAIN).
        for _ in range(RECV_BATCH):
            try:
                frames = recv_frames(sock)
            except zmq.Again:
                return
            try:
                self._dispatch(framing.decode(frames))
            except framing.ProtocolError as exc:
                self._reset(unavailable(self._endpoint, f"the server broke the protocol: {exc}"))
                return
            if not readable(sock):
                return

    def _dispatch(self, msg: framing.Message) -> None:
        kind = msg.kind
        if kind is framing.Kind.ITEM:
            call = self._pending.get(msg.corr)
            if call is None:
                self.late_replies += 1
            else:
                self._completions.append((call.on_item, msg.payload))
            return
        if kind is framing.Kind.PING:
            return  # the server checking that we are still here: arriving was the answer
        if kind not in framing.RESPONSE_KINDS:
            raise framing.ProtocolError(f"a server sent a {kind.name} message")
        with self._lock:
            call = self._pending.pop(msg.corr, None)
            if call is not None:
                call.done = True
        if call is None:
            self.late_replies += 1  # its caller gave up (deadline, closed stream): drop it
        elif kind is framing.Kind.REPLY:
            self._completions.append((call.on_reply, msg.payload))
        elif kind is framing.Kind.ERROR:
            self._completions.append((call.on_error, framing.error_of(msg)))
        else:
            self._completions.append((call.on_item_end, None))

    def _on_event(self, event: int, value: int) -> None:
        if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            self._connected = True
            self._last_failure = None
            return
        if event == zmq.EVENT_DISCONNECTED:
            if self._connected:
                lost = (
                    f"the connection was lost (the server closed or crashed, or was silent for more than "
                    f"{self._config.liveness_bound:g} s)"
                )
                # For calls queued later and never sent (they fail with it after connect_timeout).
                self._last_failure = unavailable(self._endpoint, lost)
                # The calls sent on this connection fail, and are never sent again. A request written just
                # before libzmq saw the peer go (a server stopped while a call was being made, then started
                # again on the same endpoint) went one of two ways, and nothing libzmq tells us says which:
                # its engine wrote it to the dying connection, where the old server may have read it (a
                # frozen or cut-off server is still running), or it stayed in the socket's pipe, which
                # libzmq would hand to the next connection -- the new server. Sending it again could run it
                # twice; keeping the socket could run it on the new server after its caller was told it
                # failed. So the socket is replaced, which drops the pipe, and the caller gets UNAVAILABLE
                # with what to do: a unary call runs at most once.
                self._reset(
                    unavailable(
                        self._endpoint,
                        f"{lost} after the request was sent: it may or may not have run there; call again "
                        f"if running it twice is harmless (the channel reconnects by itself, also to a server "
                        f"started again on the same endpoint)",
                    )
                )
            return
        if event == zmq.EVENT_CONNECT_RETRIED:
            failure = unavailable(self._endpoint, "nothing accepts connections there (connection refused)")
        elif event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            failure = FlameError(
                FlameErrorCode.UNAUTHENTICATED,
                f"{self._endpoint} refused this client's CURVE key (ZAP status {value}); the server must "
                f"list the client's public key",
            )
            self._reset_reason = failure  # libzmq does not reconnect after a refusal: a new call retries
        elif event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
            if value == MECHANISM_MISMATCH:
                failure = FlameError(
                    FlameErrorCode.UNAUTHENTICATED,
                    f"{self._endpoint} uses another security mechanism: CURVE is configured on one side "
                    f"only (curve_server_public_key_file / curve_client_secret_key_file)",
                )
            else:
                failure = unavailable(self._endpoint, f"ZMTP handshake failed (protocol error {value:#x})")
            self._reset_reason = failure
        elif event == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
            if self._config.curve_client is not None:
                failure = FlameError(
                    FlameErrorCode.UNAUTHENTICATED,
                    f"the CURVE handshake with {self._endpoint} failed: is curve_server_public_key_file "
                    f"that server's public key?",
                )
            else:
                # Also what a client without CURVE usually sees from a CURVE server: the server hangs
                # up on the NULL greeting before this side has read the server's (a race in libzmq);
                # when this side reads it first, the PROTOCOL event above says UNAUTHENTICATED.
                failure = unavailable(
                    self._endpoint,
                    "the ZMTP handshake failed (does the server require CURVE? then configure "
                    "curve_server_public_key_file and curve_client_secret_key_file)",
                )
        else:
            return
        self._last_failure = failure
        if self._reset_reason is failure:
            # A refusal is definitive and never stale: after one libzmq stops retrying, and only a new
            # socket (made for calls queued later) tries again.
            self._fail(lambda c: not c.sent, lambda: _copy(failure))
            return
        seen = time.monotonic() - STALE_EVENT_GUARD
        self._fail(lambda c: not c.sent and c.queued_at <= seen, lambda: _copy(failure))

    def _flush(self) -> None:
        outbox, unsent = self._outbox, self._unsent
        while outbox:
            unsent.append(outbox.popleft())
        if unsent and not self._connected:
            # Send only on a connection the monitor has confirmed: right after a disconnect libzmq may
            # still accept a message into the dying pipe and lose it, and no event would tell us.
            # Meanwhile forget what cannot be sent any more: control messages, abandoned calls.
            self._unsent = unsent = deque(e for e in unsent if e[0] is not None and not e[0].done)
            if unsent and self._reset_reason is not None:
                self._reset(self._reset_reason)  # refused before: libzmq will not retry by itself
        if not unsent or not self._connected:
            self._want_pollout(False)
            return
        self._hold()
        sock = self._sock
        assert sock is not None
        while unsent:
            call, frames = unsent[0]
            if call is not None and call.done:
                unsent.popleft()  # abandoned before it could be sent
                continue
            try:
                send_frames(sock, frames, copy=False)
            except zmq.Again:
                # The send pipe is at its high-water mark (or not attached yet): wait until writable.
                self._want_pollout(True)
                return
            except zmq.ZMQError as exc:
                # Not a full pipe: the socket is in a state we do not know. Replace it; this call
                # and those sent on the old socket fail.
                unsent.popleft()
                if call is not None:
                    call.sent = True
                self._reset(unavailable(self._endpoint, f"the socket failed: {exc}"))
                return
            unsent.popleft()
            if call is not None:
                call.sent = True
        self._want_pollout(False)

    def _want_pollout(self, on: bool) -> None:
        if on != self._pollout and self._sock is not None:
            self._busy_poller.modify(self._sock, zmq.POLLIN | zmq.POLLOUT if on else zmq.POLLIN)
            self._pollout = on

    def _expire_unconnected(self) -> None:
        limit = time.monotonic() - self._config.connect_timeout
        failure = self._last_failure or unavailable(
            self._endpoint, f"no connection within connect_timeout={self._config.connect_timeout:g} s"
        )
        self._fail(lambda c: not c.sent and c.queued_at <= limit, lambda: _copy(failure))


_CHANNELS: weakref.WeakSet[ZmqChannel] = weakref.WeakSet()


_pid = os.getpid()
"""This process's id, renewed in a forked child (below): ``os.getpid()`` is a system call, and every call
on a channel asks whether its core is this process's."""


def _after_fork_in_child() -> None:
    # A lock held by another thread at fork time stays held in the child forever: give every channel
    # a fresh one. The child builds its own core on first use (the parent's is left untouched).
    global _pid
    _pid = os.getpid()
    for channel in list(_CHANNELS):
        channel._lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class ZmqChannel:
    """A thread-safe channel to one ``zmq+tcp://`` or ``zmq+ipc://`` endpoint (connects lazily)."""

    def __init__(self, address: Address, config: ZmqConfig) -> None:
        self._address = address
        self._config = config
        self._lock = threading.Lock()
        self._core: _Core | None = None
        self._closed = False
        self._parents: list[_Core] = []  # cores inherited through fork: kept alive, never used
        _CHANNELS.add(self)

    @property
    def endpoint(self) -> str:
        return self._address.url

    def _get_core(self) -> _Core:
        core = self._core
        if core is not None and core.pid == _pid and core.alive:
            return core
        with self._lock:
            if self._closed:
                raise unavailable(self.endpoint, "the channel is closed")
            core = self._core
            if core is None or core.pid != os.getpid() or not core.alive:
                if core is not None and core.pid != os.getpid():
                    self._parents.append(core)
                elif core is not None:
                    core.shutdown("the channel's I/O thread failed")
                core = _Core(self._address, self._config)
                weakref.finalize(self, core.shutdown)
                self._core = core
            return core

    def _prepare(self, request: bytes, timeout: Timeout) -> tuple[bytes, float | None]:
        if self._closed:
            raise unavailable(self.endpoint, "the channel is closed")
        data = request if type(request) is bytes else bytes(request)
        if len(data) > self._config.max_message_size:  # (the test written out: this runs on every call)
            check_size(len(data), self._config.max_message_size, what="request", endpoint=self.endpoint)
        return data, resolve_timeout(timeout, self._config.default_timeout)

    def unary(self, method: str, request: bytes, timeout: Timeout = DEFAULT_TIMEOUT) -> bytes:
        data, seconds = self._prepare(request, timeout)
        response = self._get_core().unary(method, data, seconds)
        limit = self._config.max_message_size
        if len(response) > limit:
            check_size(len(response), limit, what=f"response to {method}", endpoint=self.endpoint)
        return response

    def unary_async(self, method: str, request: bytes, timeout: Timeout = DEFAULT_TIMEOUT) -> Future[bytes]:
        """Send one request now and return at once; the future completes with the response or a FlameError.

        No thread waits: the channel's I/O thread completes the future (so callbacks run there and must not
        block), and fails it with ``DEADLINE_EXCEEDED`` when its deadline passes.
        """
        try:
            data, seconds = self._prepare(request, timeout)
            return self._get_core().unary_async(method, data, seconds)
        except FlameError as exc:
            failed: Future[bytes] = Future()
            failed.set_exception(exc)
            return failed

    def stream(self, method: str, request: bytes, timeout: Timeout = DEFAULT_TIMEOUT) -> Iterator[bytes]:
        data, seconds = self._prepare(request, timeout)
        return self._get_core().stream(method, data, seconds)

    def stream_async(
        self,
        method: str,
        request: bytes,
        on_item: Callable[[bytes], None],
        on_end: Callable[[FlameError | None], None],
        timeout: Timeout = DEFAULT_TIMEOUT,
    ) -> None:
        """Open a server stream and return at once: ``on_item`` gets each item, then ``on_end`` gets None
        (the stream ended) or the error that ended it, exactly once.

        Both run on the channel's I/O thread and must not block. For a peer that answers many requests
        in one call (the server's batches of tasks to its own instances): no thread waits on the stream.
        """
        try:
            data, seconds = self._prepare(request, timeout)
            self._get_core().stream_async(method, data, seconds, on_item, on_end)
        except FlameError as exc:
            on_end(exc)

    def stats(self) -> dict[str, Any]:
        """Connection state and counters of this process's core (for tests and diagnostics)."""
        core = self._core
        if core is None or core.pid != os.getpid():
            return {"connected": False, "pending": 0, "late_replies": 0, "socket_resets": 0}
        return core.stats()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            core, self._core = self._core, None
        if core is not None:
            core.shutdown()

    def __enter__(self) -> ZmqChannel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
