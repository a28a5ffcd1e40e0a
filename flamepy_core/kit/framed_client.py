"""The client half of the framed base: a channel multiplexes every call over one link, by call id.

Each call registers under a fresh call id, sends its request and waits on its own slot (a unary call, a
stream's queue, or a future for :meth:`FramedChannel.unary_async`); the link's reader thread hands each
answer to the call with its id. Whoever removes a call from the table owns its outcome, so a call ends
exactly once: a caller whose deadline passes removes it and sends ``CANCEL``, and an answer arriving
later finds no call and is dropped. A lost link wakes every call at once with ``UNAVAILABLE``; the next
call dials again, which is how a restarted server is found. In a forked child the parent's link is left
alone and the child dials its own.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import os
import queue
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from typing import Any, NamedTuple, TypeVar

from flamepy_core.contracts.errors import FlameError, FlameErrorCode
from flamepy_core.contracts.transport import DEFAULT_TIMEOUT, Timeout
from flamepy_core.kit import frames
from flamepy_core.kit.basics import (
    check_size,
    deadline_exceeded,
    message_too_large,
    resolve_timeout,
    unavailable,
)
from flamepy_core.kit.frames import Frame, Kind
from flamepy_core.kit.lease import LinkLease, Waker, lendable
from flamepy_core.kit.links import Link, Oversized, Part

STREAM_WINDOW_ITEMS = 256
STREAM_WINDOW_KIB = 8 * 1024
"""A stream's flow control: at most this many items / KiB sent and not yet read by the caller."""
ITEM_OVERHEAD = 64
"""Bytes charged per stream item against the window, so empty items are not free."""
HOST_SLICE = 1.0
"""A caller reading its own answer looks this often (seconds) whether its connection has died meanwhile."""

log = logging.getLogger(__name__)

_R = TypeVar("_R")

Dial = Callable[[float], Link]
"""Opens a link to the channel's endpoint within the given seconds (raises ``FlameError(UNAVAILABLE)``)."""


class PeerWatch(NamedTuple):
    """How a connection watches for a stopped server while calls wait on it (seconds).

    A server stopped by ``SIGSTOP`` keeps its socket open: its callers would wait until their deadlines,
    or for ever without one. While a call waits, the connection's timer thread asks the link whether the
    server process is stopped (its optional ``peer_stopped``, see :class:`~flamepy_core.kit.links.Link`)
    every ``interval``; seen stopped at every look for ``timeout``, the connection fails with
    ``UNAVAILABLE``. So a call fails within ``interval + timeout`` of the server stopping (or of the call
    starting, if the server was stopped before). The answer comes from the process's state, never from
    silence: no frames are sent, so a server that is slow, or whose handler holds the GIL, is never
    failed. An idle connection is not watched: its timer thread sleeps without a deadline.
    """

    interval: float
    timeout: float


class _Credit:
    """What a stream's reader has taken of its window, given back in halves: the server rarely waits for
    window, and CREDIT frames stay few."""

    __slots__ = ("bytes", "items")

    def __init__(self) -> None:
        self.items = 0
        self.bytes = 0

    def taken(self, size: int) -> tuple[int, int] | None:
        """Count one item of ``size`` bytes taken: the CREDIT to send (items, KiB) once half the window is,
        else None."""
        self.items += 1
        self.bytes += size + ITEM_OVERHEAD
        if self.items < STREAM_WINDOW_ITEMS // 2 and self.bytes < STREAM_WINDOW_KIB * 512:
            return None
        credit = (self.items, -(-self.bytes // 1024))
        self.items = self.bytes = 0
        return credit


class _Call:
    """One call in flight; :meth:`answer` and :meth:`fail` run on the reader thread (or the failing one)."""

    __slots__ = ("call_id", "deadline", "method", "timeout")

    def __init__(self, call_id: int, method: str, timeout: float | None) -> None:
        self.call_id = call_id
        self.method = method
        self.timeout = timeout
        self.deadline = None if timeout is None else time.monotonic() + timeout

    def answer(self, frame: Frame) -> bool:
        """Take one answer; True when it ends the call."""
        raise NotImplementedError

    def replied(self, payload: memoryview) -> None:
        """Take the call's ``REPLY``, its payload read where the link read it (valid only while this runs):
        :meth:`answer` of the frame, where a call kind has no quicker way."""
        self.answer(Frame(Kind.REPLY, self.call_id, "", payload))

    def fail(self, error: FlameError) -> None:
        raise NotImplementedError

    def item(self, payload: bytes | memoryview) -> None:
        """An ``ITEM`` for this call, read without a :class:`Frame` (:func:`frames.item_of`)."""
        self.answer(Frame(Kind.ITEM, self.call_id, "", payload))


def _wrong(call: _Call, what: str) -> FlameError:
    return FlameError(FlameErrorCode.INTERNAL, f"the server sent {what} to the call of {call.method}")


def _nothing_read_ahead() -> bool:
    return False


_HOST_SLICE_MS = int(HOST_SLICE * 1000)
_SENT_AT_ONCE = 64 * 1024
"""A request this small is taken by a unix socket's buffer at once when no earlier one waits unread there
(a blocking call's earlier requests were answered, so read): its send cannot block."""


class _Ready:
    """``threading.Event``'s ``set`` and ``wait`` (and ``is_set``, as the attribute ``done``) for one blocking
    call, made of one lock held until set: an Event builds a lock and a condition for every call, and most
    calls read their own answer (:meth:`_Connection.host_until`) and never wait on it."""

    __slots__ = ("_held", "done")

    def __init__(self) -> None:
        self.done = False
        """Whether it is set: an attribute, not ``is_set()``, as a call's answer is looked for on every turn (a
        warm invoke looks four times)."""
        self._held = threading.Lock()
        self._held.acquire()

    def set(self) -> None:
        if not self.done:
            self.done = True
            try:  # noqa: SIM105 (not contextlib.suppress: three Python calls more, on every blocking call's answer)
                self._held.release()
            except RuntimeError:  # set twice at once (an answer, and the link failing)
                pass

    def wait(self, timeout: float | None = None) -> bool:
        if self.done:
            return True
        if self._held.acquire(timeout=-1 if timeout is None else timeout):
            self._held.release()  # for whoever waits next
        return self.done


class _Unary(_Call):
    __slots__ = ("error", "read", "ready", "result")

    def __init__(
        self, call_id: int, method: str, timeout: float | None, read: Callable[[memoryview], Any] | None = None
    ) -> None:
        super().__init__(call_id, method, timeout)
        self.ready = _Ready()
        self.result: Any = b""
        self.error: BaseException | None = None
        self.read = read
        """:meth:`FramedChannel.unary_read`'s reader: run on the reply where the link read it, before the link
        reads its next message (which may land in the same buffer)."""

    def replied(self, payload: memoryview) -> None:
        """Complete the call with its ``REPLY``'s payload (read where the link read it, when it has a reader)."""
        if self.read is None:
            self.result = bytes(payload)
        else:
            try:
                self.result = self.read(payload)
            except Exception as exc:  # the caller's reader: raised to the caller, the link goes on
                self.error = exc
        self.ready.set()

    def answer(self, frame: Frame) -> bool:
        if frame.kind is Kind.REPLY:
            self.replied(memoryview(frame.payload))
            return True
        self.error = frames.error_of(frame) if frame.kind is Kind.ERROR else _wrong(self, frame.kind.name)
        self.ready.set()
        return True

    def fail(self, error: FlameError) -> None:
        self.error = error
        self.ready.set()


class _Async(_Call):
    __slots__ = ("future",)

    def __init__(self, call_id: int, method: str, timeout: float | None) -> None:
        super().__init__(call_id, method, timeout)
        self.future: Future[bytes] = Future()
        self.future.set_running_or_notify_cancel()

    def replied(self, payload: memoryview) -> None:
        self.future.set_result(bytes(payload))

    def answer(self, frame: Frame) -> bool:
        if frame.kind is Kind.REPLY:
            self.replied(memoryview(frame.payload))
        else:
            self.fail(frames.error_of(frame) if frame.kind is Kind.ERROR else _wrong(self, frame.kind.name))
        return True

    def fail(self, error: FlameError) -> None:
        with contextlib.suppress(Exception):  # already completed
            self.future.set_exception(error)


_END = object()


class _Stream(_Call):
    __slots__ = ("items",)

    def __init__(self, call_id: int, method: str, timeout: float | None) -> None:
        super().__init__(call_id, method, timeout)
        self.items: queue.SimpleQueue[object] = queue.SimpleQueue()

    def answer(self, frame: Frame) -> bool:
        if frame.kind is Kind.ITEM:
            self.items.put(bytes(frame.payload))
            return False
        if frame.kind is Kind.END:
            self.items.put(_END)
        else:
            self.items.put(frames.error_of(frame) if frame.kind is Kind.ERROR else _wrong(self, frame.kind.name))
        return True

    def fail(self, error: FlameError) -> None:
        self.items.put(error)


class _Then(_Call):
    """A call whose outcome goes to a callback (:meth:`FramedChannel.unary_then`), not a future: no lock,
    condition or callback list per call (a ``Future``'s cost 2.9 µs a call in a loop; this, 0.6).

    Two things must happen before ``on_done`` runs, the outcome and :meth:`arm`, in either order: whichever
    comes second delivers it (each takes one token from a list; taking from a list is atomic under the GIL,
    and the one that finds none left is second). So an answer that comes before the caller armed the call
    waits for it, and is delivered by ``arm`` on the caller's thread."""

    __slots__ = ("_tokens", "on_done", "outcome")

    def __init__(
        self, call_id: int, method: str, timeout: float | None, on_done: Callable[[bytes | FlameError], None]
    ) -> None:
        super().__init__(call_id, method, timeout)
        self.on_done = on_done
        self.outcome: bytes | FlameError = b""
        self._tokens = [None]

    def arm(self) -> None:
        self._second()

    def replied(self, payload: memoryview) -> None:
        self.outcome = bytes(payload)
        self._second()

    def answer(self, frame: Frame) -> bool:
        if frame.kind is Kind.REPLY:
            self.replied(memoryview(frame.payload))
            return True
        self.outcome = frames.error_of(frame) if frame.kind is Kind.ERROR else _wrong(self, frame.kind.name)
        self._second()
        return True

    def fail(self, error: FlameError) -> None:
        self.outcome = error
        self._second()

    def _second(self) -> None:
        try:
            self._tokens.pop()
        except IndexError:
            self.on_done(self.outcome)


def _can_tell_stopped(link: Link) -> bool:
    """Whether ``link`` can tell that its peer is stopped (asked once, when the connection is made: a link
    that cannot costs its connection no timer thread)."""
    look = getattr(link, "peer_stopped", None)
    if not callable(look):
        return False
    try:
        return look() is not None
    except Exception:  # an optional ability that fails is an ability it does not have
        return False


class _Connection:
    """One link of a channel, its reader thread, the calls waiting on it, and a timer thread (started with
    the first call that needs it) for the deadlines of calls no thread waits on and the :class:`PeerWatch`."""

    def __init__(self, link: Link, endpoint: str, limit: int, watch: PeerWatch | None = None) -> None:
        self.link = link
        self.endpoint = endpoint
        self.limit = limit
        self.pid = os.getpid()
        self.dead: FlameError | None = None
        self._calls: dict[int, _Call] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._timers: list[tuple[float, int]] = []
        self._timer_wake = threading.Condition(self._lock)
        self._timer: threading.Thread | None = None
        self.replies_read_by_caller = 0
        """Blocking calls whose answer their caller read itself (see :meth:`host_until`)."""
        self._host_lock = threading.Lock()
        self._hosting: _Unary | None = None
        self._host_ident = 0
        self._host_waker: Waker | None = None
        self.lease: LinkLease | None = None
        if lendable(link):
            self._host_waker = Waker()
            self.lease = LinkLease(link, self._take, self._host_waker)
        self._after: list[Callable[[], None]] = []
        """What the reader thread runs once the messages it read so far are handled (:meth:`after_reading`)."""
        self._reader_ident = 0
        self._read_ahead: Callable[[], bool] = getattr(link, "pending", _nothing_read_ahead)
        """Whether the link holds bytes of a next message already (a link that cannot tell: never)."""
        self._watch = watch if watch is not None and _can_tell_stopped(link) else None
        """The peer watch, None when off (not asked for, or the link cannot tell)."""
        self._watch_at: float | None = None
        """When the timer next looks at the peer; None while the connection is idle (the timer then sleeps)."""
        self._last_id = 0
        """The id of the last call started (the timer sees from it whether calls came since its last look)."""
        self._seen_id = 0
        """``_last_id`` at the timer's last look."""
        self._stopped_since: float | None = None
        """When the peer was first seen stopped, by the looks since which it has been stopped at each."""
        self.timer_wakes = 0
        """How often the timer thread woke (the tests see from it that an idle connection costs nothing)."""
        self.peer_looks = 0
        """How often the timer looked at the peer's state."""
        threading.Thread(target=self._read, name=f"flamepy-kit-reader {endpoint}", daemon=True).start()

    def usable(self) -> bool:
        return self.dead is None and self.pid == _pid

    def start(self, call: _Call, kind: Kind, method: bytes, request: bytes | list[Part], window: bool = False) -> None:
        """Register ``call`` and send its request (the call id is chosen here): ``bytes``, or a list of parts
        sent as one message after the header, without joining them."""
        with self._lock:
            if self.dead is not None:
                raise self.dead
            call.call_id = self._last_id = next(self._ids)
            self._calls[call.call_id] = call
            if isinstance(call, (_Async, _Then, _CallbackStream)) and call.deadline is not None:
                heapq.heappush(self._timers, (call.deadline, call.call_id))
                self._ensure_timer()
            if self._watch_at is None and self._watch is not None:
                self._arm_watch()  # only the first call after an idle interval: a warm call pays nothing
        remaining = None if call.deadline is None else max(0.0, call.deadline - time.monotonic())
        parts = frames.encode(
            kind,
            call.call_id,
            request if type(request) is bytes else b"",
            method=method,
            timeout=remaining,
            a=STREAM_WINDOW_ITEMS if window else 0,
            b=STREAM_WINDOW_KIB if window else 0,
        )
        if type(request) is list:
            parts += request
        self._send(parts)

    def _send(self, parts: list[Part]) -> None:
        """Send one request's frame; a link that breaks fails the connection (and this call with it)."""
        try:
            self.link.send(parts)
        except OSError as exc:
            self.fail(unavailable(self.endpoint, f"the connection broke while sending: {exc}"))
            raise (self.dead or unavailable(self.endpoint, str(exc))) from exc

    def call_hosted(
        self,
        method_name: str,
        method: bytes,
        parts: list[Part],
        size: int,
        read: Callable[[memoryview], Any] | None,
    ) -> _Unary | None:
        """:meth:`start` and :meth:`host_until` in one, for a blocking unary call without a deadline on a link
        lent already that nobody else reads (a warm invoke's case): the call, sent and read on this thread
        until answered (or until the link failed: the reader then fails it; wait for it with ``ready``).
        None, having sent nothing, when it is not that case (:meth:`start` and :meth:`host_until` then).

        ``read_lock`` is taken before the request goes, so the answer finds this thread reading, and nobody
        can read it before this thread does: a small request's call is made and registered once the request
        is on its way (while the server works on it), and only the frame's header is packed before it. A
        warm invoke's client 5-8 µs faster (docs/benchmarks.md)."""
        lease = self.lease
        if lease is None or not self._host_lock.acquire(blocking=False):
            return None
        try:
            if not lease.hold_lent():
                return None
            # A request the socket may not take at once (a peer that stopped reading then blocks its send) is
            # registered first, so that the peer watch, which looks only while calls wait, can end it.
            call = _Unary(0, method_name, None, read) if size > _SENT_AT_ONCE else None
            try:
                with self._lock:
                    if self.dead is not None:
                        raise self.dead
                    call_id = self._last_id = next(self._ids)
                    if call is not None:
                        call.call_id = call_id
                        self._calls[call_id] = call
                    if self._watch_at is None and self._watch is not None:
                        self._arm_watch()
                self._send([frames.unary_head(call_id, method), *parts])
            except BaseException:
                lease.read_lock.release()
                raise
            if call is None:
                call = _Unary(call_id, method_name, None, read)
                with self._lock:
                    dead: FlameError | None = self.dead  # (typed: not the None it was narrowed to above)
                    if dead is None:
                        self._calls[call_id] = call
                if dead is not None:  # failed since the send, before the call was there to be failed
                    call.fail(FlameError(dead.code, dead.message))
            self._host(call, lease, held=True)
            return call
        finally:
            self._host_lock.release()

    def take(self, call_id: int) -> _Call | None:
        """Remove a call: whoever gets it owns its outcome."""
        with self._lock:
            return self._calls.pop(call_id, None)

    def give_up(self, call: _Call) -> bool:
        """The caller stops waiting: True when it removed the call (then the server is told to cancel)."""
        if self.take(call.call_id) is None:
            return False
        self.control(frames.encode(Kind.CANCEL, call.call_id))
        return True

    def control(self, parts: list[bytes | memoryview]) -> None:
        if self.dead is None:
            with contextlib.suppress(OSError):
                self.link.send(parts)

    def _read(self) -> None:
        reason = "the server closed the connection"
        lease = self.lease
        self._reader_ident = threading.get_ident()
        try:
            while True:
                if lease is None:
                    self._take(self.link.recv())
                else:
                    lease.reader_step()  # (nothing, when a caller reading its own answer read it first)
        except frames.ProtocolError as exc:
            reason = f"the server broke the protocol: {exc}"
        except (EOFError, OSError, ValueError) as exc:
            if not isinstance(exc, EOFError):
                reason = f"the connection broke: {exc}"
        finally:
            self.fail(unavailable(self.endpoint, reason))
            if lease is not None:
                lease.close()

    def _take(self, message: bytes | bytearray | memoryview | Oversized) -> bool:
        """Handle one message, on the reader thread or a caller's; True when it ended the call of the caller
        reading the link (which then returns to it).

        A reply (every warm call's answer: a warm invoke's client and the server's read of its service's
        result) goes to its call from the frame's header (:func:`frames.reply_of`), without a :class:`Frame`,
        the frame kinds' checks or :meth:`_dispatch`: 3-6 µs of a warm invoke on this machine, on each side
        (docs/benchmarks.md). Anything else takes the general way below."""
        if frames.is_item(message):  # (a stream's item, every result of a batch of tasks: no Frame either)
            item = frames.item_of(message)
            if item is not None:
                with self._lock:
                    streaming = self._calls.get(item[0])
                if streaming is not None:
                    streaming.item(item[1])
                if self._after and not self._read_ahead():
                    self._run_after()  # nothing more read: before the reader waits for more
                return False
        elif self._after:
            self._run_after()  # what the items before this message left for later comes first
        if not isinstance(message, Oversized):
            reply = frames.reply_of(message)
            if reply is not None:
                call_id, payload = reply
                with self._lock:
                    call = self._calls.pop(call_id, None)
                if call is not None:  # (None: its caller gave up; dropped, never another call's)
                    if len(payload) > self.limit:
                        call.fail(self._too_large(call, len(payload)))
                    else:
                        call.replied(payload)
                return self._ended_host(call_id)
            frame = frames.decode(message)
            if frame.kind not in frames.ANSWERS:
                raise frames.ProtocolError(f"a server sent a {frame.kind.name} frame")
            self._dispatch(frame)
            return self._ended_host(frame.call_id)
        self._oversized(message)
        return False

    def after_reading(self, fn: Callable[[], None]) -> bool:
        """Run ``fn`` on the reader thread once the messages it has read are handled: before it waits for
        more, before it handles anything but a stream's item, and before a failure of the connection ends
        its calls. True when it will; False on any other thread (a caller reading its own answer) or once the
        connection failed: the caller then runs ``fn`` itself."""
        if threading.get_ident() != self._reader_ident or self.dead is not None:
            return False
        self._after.append(fn)
        return True

    def _run_after(self) -> None:
        after, self._after = self._after, []
        for fn in after:
            try:
                fn()
            except Exception:  # the caller's bug: the others still run, and so does the reading
                log.exception("a callback left for after the reading failed")

    def _ended_host(self, call_id: int) -> bool:
        """After the answer to ``call_id`` was handled: True when it ended the call of the caller reading the
        link (counted when that caller read it; its caller woken when the reader thread got there first)."""
        hosting = self._hosting
        if hosting is None or call_id != hosting.call_id or not hosting.ready.done:
            return False
        if threading.get_ident() == self._host_ident:
            self.replies_read_by_caller += 1
        elif self._host_waker is not None:
            self._host_waker.signal()  # the reader got there first: the caller stops reading
        return True

    def host_until(self, call: _Unary) -> None:
        """Read the link on the calling thread until ``call`` is answered, its deadline passes or the link
        dies: on an idle channel the answer wakes its caller, not the reader thread and then the caller. The
        link is lent as :mod:`~flamepy_core.kit.lease` says; another caller already reading it, or a link that
        cannot be lent, leaves the waiting to ``call`` itself."""
        lease = self.lease
        if lease is None or not self._host_lock.acquire(blocking=False):
            return
        try:
            self._host(call, lease)
        finally:
            self._host_lock.release()

    def _host(self, call: _Unary, lease: LinkLease, *, held: bool = False) -> None:
        """The hosting loop of :meth:`host_until` and :meth:`call_hosted` (``_host_lock`` held): read until
        ``call`` is answered, its deadline passes or the link dies. ``held``: the caller holds ``read_lock``
        (``LinkLease.hold_lent``), which the first wait takes over, or which is let go of here."""
        self._host_ident = threading.get_ident()
        self._hosting = call
        try:
            while not call.ready.done and self.dead is None:
                if call.deadline is None:
                    hosted = lease.host_lent(_HOST_SLICE_MS, held=held)
                    held = False
                    if hosted is not None:
                        if not hosted:
                            return  # the link failed on this thread: the reader ends it, and the call with it
                        continue
                now = time.monotonic()
                if call.deadline is not None and now >= call.deadline:
                    return
                if not lease.host(now + HOST_SLICE if call.deadline is None else min(call.deadline, now + HOST_SLICE)):
                    return  # the link failed on this thread: the reader ends it, and the call with it
        finally:
            if held:  # (answered or failed before its first wait)
                lease.read_lock.release()
            self._hosting = None
            self._host_ident = 0

    def _dispatch(self, frame: Frame) -> None:
        if frame.kind is Kind.ITEM:
            with self._lock:
                call = self._calls.get(frame.call_id)
            if call is not None:
                call.answer(frame)
            return
        call = self.take(frame.call_id)
        if call is None:
            return  # its caller gave up (deadline, a closed stream): dropped, never another call's
        call.answer(frame)

    def _too_large(self, call: _Call, size: int) -> FlameError:
        return message_too_large(size, self.limit, what=f"response to {call.method}", endpoint=self.endpoint)

    def _oversized(self, message: Oversized) -> None:
        found = frames.peek(message.head)
        if found is None:
            raise frames.ProtocolError("an oversized message that is not a frame")
        call = self.take(found[1])
        if call is not None:
            size = message.size - frames.HEADER.size
            call.fail(message_too_large(size, self.limit, what=f"response to {call.method}", endpoint=self.endpoint))
            self.control(frames.encode(Kind.CANCEL, call.call_id))

    def fail(self, error: FlameError) -> None:
        """Mark the connection dead and fail every waiting call with ``error``. Idempotent."""
        with self._lock:
            if self.dead is not None:
                return
            self.dead = error
            waiting = list(self._calls.values())
            self._calls.clear()
            self._timer_wake.notify_all()
        if self._after:
            self._run_after()  # what the items read before the failure left for later, before the ends
        for call in waiting:
            call.fail(FlameError(error.code, error.message))
        self.link.close()

    # -- the timer thread: deadlines of asynchronous calls (the blocking ones wait with their own), and the
    # -- peer watch ------------------------------------------------------------------------------------

    def _ensure_timer(self) -> None:
        # Called with the lock held.
        if self._timer is None:
            self._timer = threading.Thread(target=self._expire, name=f"flamepy-kit-timer {self.endpoint}", daemon=True)
            self._timer.start()
        else:
            self._timer_wake.notify()

    def _next_due(self) -> float | None:
        # With the lock held: when the timer has something to do, None for nothing.
        due = self._timers[0][0] if self._timers else None
        if self._watch_at is not None and (due is None or self._watch_at < due):
            due = self._watch_at
        return due

    def _expire(self) -> None:
        while True:
            look = False
            with self._lock:
                while True:
                    if self.dead is not None:
                        return
                    due, now = self._next_due(), time.monotonic()
                    if due is not None and due <= now:
                        break
                    self._timer_wake.wait(None if due is None else due - now)
                    self.timer_wakes += 1
                call = None
                if self._timers and self._timers[0][0] <= now:
                    _deadline, call_id = heapq.heappop(self._timers)
                    call = self._calls.pop(call_id, None)
                if self._watch_at is not None and self._watch_at <= now:
                    look = self._watch_turn(now)
            if call is not None:
                self.control(frames.encode(Kind.CANCEL, call.call_id))
                call.fail(deadline_exceeded(call.method, self.endpoint, call.timeout))
            if look:
                self._look()

    def _arm_watch(self) -> None:
        # With the lock held: calls wait again, look at the peer in an interval.
        assert self._watch is not None
        self._watch_at = time.monotonic() + self._watch.interval
        self._ensure_timer()

    def _watch_turn(self, now: float) -> bool:
        """With the lock held, when a look is due: True to look at the peer (calls wait). With none waiting
        and none started for a whole interval, the watch sleeps until the next call arms it again."""
        assert self._watch is not None
        busy = bool(self._calls)
        came = self._last_id != self._seen_id
        self._seen_id = self._last_id
        if not busy:
            self._stopped_since = None
            self._watch_at = now + self._watch.interval if came else None
            return False
        self._watch_at = now + self._watch.interval
        return True

    def _look(self) -> None:
        """Ask the link whether the server is stopped (a read of ``/proc``, off the lock); fail the connection
        once it has been seen stopped at every look for the watch's timeout."""
        self.peer_looks += 1
        try:
            stopped = self.link.peer_stopped()  # type: ignore[attr-defined]
        except Exception:
            stopped = None
        now = time.monotonic()
        with self._lock:
            watch = self._watch
            if self.dead is not None or watch is None:
                return
            if stopped is None:  # it could tell before and cannot now (e.g. the pid names another process)
                log.debug("%s: the server's state can no longer be read; it is not watched any more", self.endpoint)
                self._watch = self._watch_at = None
                return
            if not stopped:
                self._stopped_since = None
                return
            if self._stopped_since is None:
                self._stopped_since = now
            seen = now - self._stopped_since
            if seen < watch.timeout:
                # Look again at the interval, and exactly when the timeout is up (the bound is interval + timeout).
                self._watch_at = min(now + watch.interval, self._stopped_since + watch.timeout)
                return
        pid = getattr(self.link, "peer_pid", lambda: None)()
        who = "the server process" if pid is None else f"the server process {pid}"
        self.fail(
            unavailable(
                self.endpoint,
                f"{who} has been stopped (SIGSTOP?) for at least {seen:.1f} s, so the calls waiting on it were "
                f"failed; they may or may not have run",
            )
        )


class _CallbackStream(_Call):
    """A stream whose items go to callbacks as they arrive, on whichever thread reads the link: no thread
    waits on it. ``on_item`` gets each item in order, then ``on_end`` None or the error, exactly once. The
    window is given back in halves as the items are handed over, as :class:`StreamResponses` does."""

    __slots__ = ("_credit", "_ended", "conn", "on_end", "on_item")

    def __init__(
        self,
        call_id: int,
        method: str,
        timeout: float | None,
        on_item: Callable[[bytes], None],
        on_end: Callable[[FlameError | None], None],
    ) -> None:
        super().__init__(call_id, method, timeout)
        self.on_item = on_item
        self.on_end = on_end
        self.conn: _Connection | None = None
        self._credit = _Credit()
        self._ended = False

    def item(self, payload: bytes | memoryview) -> None:
        item = bytes(payload)
        credit = self._credit.taken(len(item))
        if credit is not None and self.conn is not None:
            self.conn.control(frames.encode(Kind.CREDIT, self.call_id, a=credit[0], b=credit[1]))
        try:
            self.on_item(item)
        except Exception as exc:  # the caller's bug: this stream ends with it, the link and other calls go on
            log.exception("on_item of a stream of %s raised; the stream is cancelled", self.method)
            if self.conn is not None:
                self.conn.give_up(self)
            self._end(FlameError(FlameErrorCode.INTERNAL, f"on_item raised {type(exc).__name__}: {exc}"))

    def answer(self, frame: Frame) -> bool:
        if frame.kind is Kind.ITEM:
            self.item(frame.payload)
            return False
        if frame.kind is Kind.END:
            self._end(None)
        else:
            self._end(frames.error_of(frame) if frame.kind is Kind.ERROR else _wrong(self, frame.kind.name))
        return True

    def fail(self, error: FlameError) -> None:
        self._end(error)

    def _end(self, error: FlameError | None) -> None:
        if not self._ended:
            self._ended = True
            self.on_end(error)


class StreamResponses(Iterator[bytes]):
    """What :meth:`FramedChannel.stream` returns. Closing it early (or dropping it) cancels the call."""

    def __init__(self, call: _Stream, conn: _Connection) -> None:
        self._call = call
        self._conn = conn
        self._finished = False
        self._credit = _Credit()

    def __iter__(self) -> StreamResponses:
        return self

    def __next__(self) -> bytes:
        if self._finished:
            raise StopIteration
        call = self._call
        try:
            remaining = None if call.deadline is None else max(0.0, call.deadline - time.monotonic())
            item = call.items.get(timeout=remaining)
        except queue.Empty:
            if self._conn.give_up(call):
                self._finished = True
                raise deadline_exceeded(call.method, self._conn.endpoint, call.timeout) from None
            item = call.items.get()  # ended by the reader first: its last word is queued
        if item is _END:
            self._finished = True
            raise StopIteration
        if isinstance(item, FlameError):
            self._finished = True
            raise item
        assert isinstance(item, bytes)
        self._consumed(len(item))
        return item

    def _consumed(self, size: int) -> None:
        credit = self._credit.taken(size)
        if credit is not None:
            self._conn.control(frames.encode(Kind.CREDIT, self._call.call_id, a=credit[0], b=credit[1]))

    def close(self) -> None:
        """Stop reading: the server is told to cancel the call. Idempotent."""
        if not self._finished:
            self._finished = True
            self._conn.give_up(self._call)

    def __del__(self) -> None:
        if sys.is_finalizing():
            return  # see FramedChannel.__del__: the connection's lock may be held by a thread stopped for good
        with contextlib.suppress(Exception):  # at interpreter exit there may be nothing left to cancel
            self.close()


class FramedChannel:
    """A thread-safe channel over :class:`Link` s that ``dial`` opens: lazily, and again after a failure."""

    def __init__(
        self,
        endpoint: str,
        dial: Dial,
        limit: int,
        default_timeout: float | None,
        connect_timeout: float,
        watch: PeerWatch | None = None,
    ):
        self._endpoint = endpoint
        self.watch = watch
        """Whether (and how) each connection watches for a stopped server (see :class:`PeerWatch`)."""
        self._dial = dial
        self.limit = limit
        self.default_timeout = default_timeout
        self.connect_timeout = connect_timeout
        self._conn: _Connection | None = None
        self._dial_lock = threading.Lock()
        self._closed = False
        self._methods: dict[str, bytes] = {}
        _channels.add(self)

    @property
    def endpoint(self) -> str:
        return self._endpoint

    def _closed_error(self) -> FlameError:
        return unavailable(self._endpoint, "the channel is closed")

    def _connection(self, deadline: float | None, seconds: float | None) -> _Connection:
        conn = self._conn
        if self._closed:
            raise self._closed_error()
        if conn is not None and conn.usable():
            return conn
        with self._dial_lock:
            conn = self._conn
            if conn is None or not conn.usable():
                if conn is not None and conn.pid != os.getpid():
                    conn.link.abandon()  # a fork the at-fork hook did not see
                budget = self.connect_timeout
                if deadline is not None:
                    budget = min(budget, max(0.0, deadline - time.monotonic()))
                try:
                    conn = self._conn = _Connection(self._dial(budget), self._endpoint, self.limit, self.watch)
                except FlameError:
                    if deadline is not None and time.monotonic() >= deadline:
                        raise deadline_exceeded("connect", self._endpoint, seconds) from None
                    raise
        if self._closed:  # close() ran while we dialled
            conn.fail(self._closed_error())
            raise self._closed_error()
        return conn

    def _method(self, method: str) -> bytes:
        encoded = self._methods.get(method)
        if encoded is None:
            encoded = method.encode("utf-8")
            if len(self._methods) < 1024:
                self._methods[method] = encoded
        return encoded

    def _prepare(self, request: bytes, timeout: Timeout) -> tuple[bytes, float | None]:
        data = request if type(request) is bytes else bytes(request)
        if len(data) > self.limit:  # (a call less on every request's way)
            check_size(len(data), self.limit, what="request", endpoint=self._endpoint)
        return data, resolve_timeout(timeout, self.default_timeout)

    def _begin(self, call: _Call, kind: Kind, request: bytes | list[Part], window: bool = False) -> _Connection:
        conn = self._connection(call.deadline, call.timeout)
        conn.start(call, kind, self._method(call.method), request, window)
        return conn

    def unary(self, method: str, request: bytes, timeout: Timeout = DEFAULT_TIMEOUT) -> bytes:
        """Send one request and return the one response; every failure is a :class:`FlameError`."""
        data, seconds = self._prepare(request, timeout)
        hosted = None if seconds is not None else self._hosted(method, [data] if data else [], len(data), None)
        if hosted is not None:
            answer: bytes = hosted.result
            return answer
        call = _Unary(0, method, seconds)
        conn = self._begin(call, Kind.UNARY, data)
        self._wait(call, conn)
        result: bytes = call.result
        return result

    def _hosted(
        self, method: str, parts: list[Part], size: int, read: Callable[[memoryview], Any] | None
    ) -> _Unary | None:
        """A call without a deadline made and read on this thread in one step (:meth:`_Connection.call_hosted`)
        when the connection's link is lent already: the call, answered (its ``error`` raised here); None when
        it is not that case, nothing sent (the general way then)."""
        conn = self._conn
        if conn is None or not conn.usable() or self._closed:
            return None
        call = conn.call_hosted(method, self._method(method), parts, size, read)
        if call is None:
            return None
        if not call.ready.done:
            call.ready.wait()  # the link failed under it: the reader fails the call
        if call.error is not None:
            raise call.error
        return call

    def _wait(self, call: _Unary, conn: _Connection) -> None:
        """Wait for ``call``'s answer (reading the link itself when it can); raises its error."""
        conn.host_until(call)
        if call.deadline is None:
            call.ready.wait()
        elif not call.ready.wait(max(0.0, call.deadline - time.monotonic())):
            if conn.give_up(call):
                raise deadline_exceeded(call.method, self._endpoint, call.timeout)
            call.ready.wait()  # answered by the reader first: its outcome is being delivered
        if call.error is not None:
            raise call.error

    def unary_read(
        self,
        method: str,
        request: Sequence[Part],
        read: Callable[[memoryview], _R],
        timeout: Timeout = DEFAULT_TIMEOUT,
    ) -> _R:
        """Send one request made of ``request``'s parts (not joined: the link writes them as one message) and
        return what ``read`` makes of the reply (see :class:`~flamepy_core.contracts.transport.ReadingChannel`).

        ``read`` runs on whichever thread reads the reply (this one when it reads its own answer, else the
        link's reader thread), on a view of the link's buffer, before the link reads its next message: a
        large reply is not copied into ``bytes`` first, and ``read`` copies out only what it keeps.
        """
        parts = [part for part in request if len(part)]  # (the link sends no empty part)
        size = sum(map(len, parts))
        if size > self.limit:  # (a call less on every request's way)
            check_size(size, self.limit, what="request", endpoint=self._endpoint)
        seconds = resolve_timeout(timeout, self.default_timeout)
        hosted = None if seconds is not None else self._hosted(method, parts, size, read)
        if hosted is not None:
            read_answer: _R = hosted.result
            return read_answer
        call = _Unary(0, method, seconds, read)
        conn = self._begin(call, Kind.UNARY, parts)
        self._wait(call, conn)
        result: _R = call.result
        return result

    def unary_async(self, method: str, request: bytes, timeout: Timeout = DEFAULT_TIMEOUT) -> Future[bytes]:
        """Send one request now and return at once; the future completes with the response or a FlameError.

        No thread waits for it: the link's reader completes the future (callbacks run there, so they must
        not block), and one timer thread per connection fails those whose deadline passes.
        """
        call: _Async | None = None
        try:
            data, seconds = self._prepare(request, timeout)
            call = _Async(0, method, seconds)
            self._begin(call, Kind.UNARY, data)
        except FlameError as exc:
            failed: Future[bytes] = Future()
            failed.set_exception(exc)
            return failed
        return call.future

    def unary_then(
        self,
        method: str,
        request: bytes,
        on_done: Callable[[bytes | FlameError], None],
        timeout: Timeout = DEFAULT_TIMEOUT,
    ) -> Callable[[], None]:
        """Send one request now; ``on_done(response)`` or ``on_done(error)`` runs once, after the
        returned ``arm()`` was called (see :class:`~flamepy_core.contracts.transport.CallbackChannel`): on
        the thread reading the link (it must not block), or in ``arm`` when the answer came first. An
        error before the request went out is raised here, as a :class:`FlameError`.

        What ``unary_async`` does without its ``Future``: the server's call of a task to its service process
        is made with it (:func:`flamepy_core.kit.unary_then`)."""
        data, seconds = self._prepare(request, timeout)
        call = _Then(0, method, seconds, on_done)
        self._begin(call, Kind.UNARY, data)
        return call.arm

    def stream(self, method: str, request: bytes, timeout: Timeout = DEFAULT_TIMEOUT) -> Iterator[bytes]:
        """Send one request and iterate the responses; one deadline covers the whole stream."""
        data, seconds = self._prepare(request, timeout)
        call = _Stream(0, method, seconds)
        conn = self._begin(call, Kind.STREAM, data, window=True)
        return StreamResponses(call, conn)

    def stream_async(
        self,
        method: str,
        request: bytes,
        on_item: Callable[[bytes], None],
        on_end: Callable[[FlameError | None], None],
        timeout: Timeout = DEFAULT_TIMEOUT,
    ) -> None:
        """Open a stream and return at once: ``on_item`` gets each response in order, then ``on_end`` None
        or the error that ended the stream, exactly once. Both run on the thread reading the link (the
        reader thread, or a caller reading its own answer) and must not block; no thread waits on the
        stream. An error found before sending goes to ``on_end`` too."""
        call: _CallbackStream | None = None
        try:
            data, seconds = self._prepare(request, timeout)
            call = _CallbackStream(0, method, seconds, on_item, on_end)
            conn = self._connection(call.deadline, call.timeout)
            call.conn = conn
            conn.start(call, Kind.STREAM, self._method(method), data, window=True)
        except FlameError as exc:
            if call is None:
                on_end(exc)
            else:
                call.fail(exc)  # once: a link lost while sending may have failed it already

    def after_reading(self, fn: Callable[[], None]) -> bool:
        """See :meth:`_Connection.after_reading`: for a stream's ``on_item`` that would rather handle the items
        read together at once (False: run ``fn`` now)."""
        conn = self._conn
        return conn is not None and conn.after_reading(fn)

    def close(self) -> None:
        """Close the link and fail the calls in flight with ``UNAVAILABLE``. Idempotent."""
        self._closed = True
        conn, self._conn = self._conn, None
        if conn is not None and conn.pid == os.getpid():
            conn.fail(self._closed_error())

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # a dropped channel must not leave its reader thread behind
            if sys.is_finalizing():
                # The interpreter is exiting: its daemon threads (the reader, the timer) stop for good where
                # they next take the GIL, the timer perhaps just woken with the connection's lock in hand,
                # so taking that lock here could wait for ever. Ending the link takes no lock.
                conn = self._conn
                if conn is not None and conn.pid == os.getpid():
                    conn.link.close()
                return
            self.close()

    def _after_fork_in_child(self) -> None:
        """Forget the parent's link (and a dial lock a parent thread may have held at fork time)."""
        self._dial_lock = threading.Lock()
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.link.abandon()

    def stats(self) -> dict[str, Any]:
        conn = self._conn
        return {
            "connected": conn is not None and conn.usable(),
            "replies_read_by_caller": 0 if conn is None else conn.replies_read_by_caller,
        }

    def __repr__(self) -> str:
        return f"FramedChannel({self._endpoint!r}{', closed' if self._closed else ''})"


_channels: weakref.WeakSet[FramedChannel] = weakref.WeakSet()


_pid = os.getpid()
"""This process's id, kept by the at-fork hook: asked of every call (a connection is its process's alone),
where ``os.getpid()`` is a system call each time."""


def _after_fork_in_child() -> None:
    global _pid
    _pid = os.getpid()
    for channel in list(_channels):
        channel._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
