"""A link lent to a host thread: a framed server's calls received on the thread that runs them.

A framed server reads each link on a reader thread of its own. A process that runs every call on one
thread (a service process runs its service on the main thread) then pays two wake-ups per call: the
reader's, which queues the call, and the main thread's. Lent the link while it waits for work
(:meth:`~flamepy_core.kit.framed_server.FramedServer.host_wait`), the main thread reads the link itself,
and a call reaches it with one.

The reader thread keeps the link whenever the host is away: a ``CANCEL``, a credit or another call must
be read while the host runs a call. While the link is lent the reader naps; it looks every ``HOST_LOOK``
seconds whether the host has left to run a call, and then reads the link itself until the host waits
again (which takes it back with a wake-up of the reader, off the call's path). A host idle for
``HOST_IDLE`` seconds lets the reader sleep without a deadline, and wakes it when it leaves. Whoever
reads holds ``read_lock`` from reading a message until it has handled it, so messages are handled in
the order they came. The ZeroMQ transport's server lends its socket the same way.

A link can be lent when it has ``fileno()`` (a descriptor that turns readable when bytes arrive) and
``pending()`` (bytes of a next message already read): :class:`~flamepy_core.kit.links.SocketLink` has both.
Until a host first asks for the link, the reader waits for its messages alone, holding ``read_lock``
(:meth:`LinkLease.reader_step`): in ``poll`` on the link only, not beside a waker, since nobody else
reads it (a server's links to its service processes are never lent). Not in the read itself: a unix
socket wakes a thread blocked in a read on it each time its peer reads what this side sent (the kernel
tells the socket's waiters that it may write again, and a blocked read does not ask what the news is),
so each task a service process read woke the server's reader of its link for nothing, inside the
service process's ``recv`` (traced with ``perf``: one wake-up of the other vCPU per warm invoke, gone
with ``poll``, which is woken by readable news only; the warm median 8 µs lower over 13 alternated
pairs). The first host to ask waits for ``read_lock`` until that wait and read return (a message the
reader then handles: the host's own answer, maybe), its deadline passes or its waker rings; from then on
the two take turns as above.

With ``recv_now()`` too (the next message if it has begun to arrive, else None at once), a thread woken
because the link turned readable reads it with one system call rather than asking first whether another
thread read it meanwhile; SocketLink has it.

A host without a deadline on a link lent already (a client's warm call) keeps ``read_lock`` from its
first look to its answer (:meth:`LinkLease.host_lent`): the reader naps meanwhile and never asks for it,
so the lock is taken once per answer and the wait needs no deadline worked out.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = ["HOST_IDLE", "HOST_LOOK", "LinkLease", "Waker", "lendable"]

HOST_LOOK = 0.02
"""While the link is lent, the reader looks this often (seconds) whether the host has left to run a call."""
HOST_IDLE = 0.1
"""A host waiting this long (seconds) is idle: the reader then naps without a deadline, and the host wakes
it when it leaves (an idle service process does not wake every ``HOST_LOOK``)."""


def lendable(link: object) -> bool:
    """Whether a host thread can read ``link``: it says when to look (``fileno``) and what it holds (``pending``)."""
    return callable(getattr(link, "fileno", None)) and callable(getattr(link, "pending", None))


class Waker:
    """Ends a ``poll`` from another thread, or from a signal handler (``signal`` is one send).

    A socket pair: once closed, a late ``signal`` fails on the closed socket object instead of writing
    into whatever file took its descriptor number."""

    def __init__(self) -> None:
        self._read, self._write = socket.socketpair()
        self._read.setblocking(False)
        self._write.setblocking(False)
        self.fd = self._read.fileno()

    def signal(self) -> None:
        with contextlib.suppress(OSError):  # full (a wake-up is pending anyway), or closed
            self._write.send(b"\0")

    def drain(self) -> None:
        with contextlib.suppress(OSError):
            while self._read.recv(512):
                pass

    def close(self) -> None:
        self._read.close()
        self._write.close()


class LinkLease:
    """Who reads one link now: its reader thread, or the host thread it is lent to.

    ``handle(message)`` handles one message the link gave, on whichever thread read it, and returns True
    when it admitted a call (the host then returns to run it); it raises to end the link.
    """

    def __init__(self, link: Any, handle: Callable[[Any], bool], host_waker: Waker) -> None:
        self.link = link
        self.handle = handle
        self.read_lock = threading.Lock()
        """Held from reading a message until it is handled, by the reader or the host."""
        self.lent = False
        """The host reads the link: the reader naps (and takes it back once the host has left for a while)."""
        self.host_waiting = False
        self.host_since = 0.0
        """When the host last left its wait."""
        self.host_idle_since = 0.0
        self.host_worked = False
        """The host's last wait admitted a call."""
        self._napping = False
        """The reader naps without a deadline: the host must wake it when it leaves to run a call."""
        self.joined = False
        """The reader thread reads the link through this lease (only then may the host read it too)."""
        self.asked = False
        """A host has asked for the link once: the reader no longer waits alone (see :meth:`reader_step`)."""
        self._waker = Waker()
        fd = link.fileno()
        self._watch = select.poll()
        self._watch.register(fd, select.POLLIN)
        self._watch.register(self._waker.fd, select.POLLIN)
        self._nap = select.poll()
        self._nap.register(self._waker.fd, select.POLLIN)
        self._probe = select.poll()
        self._probe.register(fd, select.POLLIN)
        self._host_watch = select.poll()
        self._host_watch.register(fd, select.POLLIN)
        self._host_watch.register(host_waker.fd, select.POLLIN)
        self._host_waker = host_waker
        self._fd = fd
        self._recv_now: Callable[[], Any] | None = getattr(link, "recv_now", None)

    def read_now(self) -> Any:
        """With ``read_lock`` held: the next message if it (or its start) is here, else None, without waiting."""
        if self.link.pending():
            return self.link.recv()
        if self._recv_now is not None:
            return self._recv_now()
        return self.link.recv() if self._probe.poll(0) else None

    # -- the reader thread ----------------------------------------------------------------------------

    def reader_step(self) -> bool:
        """On the reader thread: read and handle the next message that is the reader's to read, holding
        ``read_lock``; what ``handle`` returned, or False when there was none (the host read it, or has the
        link).

        Until a host first asks for the link (:attr:`asked`), the reader waits for the message alone (in
        ``poll`` on the link, then the read: see the module's docstring for why not in the read); from then
        on it takes its turns (:meth:`reader_turn`) and reads what is there (:meth:`read_now`)."""
        self.joined = True
        if not self.asked:
            with self.read_lock:
                if not self.asked:  # (a host may have asked while this waited for the lock)
                    if not self.link.pending():
                        self._probe.poll()  # readable news only (see the module's docstring)
                    return self.handle(self.link.recv())
            return False
        if not self.reader_turn():
            return False
        with self.read_lock:
            message = self.read_now()
            return False if message is None else self.handle(message)

    def reader_turn(self) -> bool:
        """Wait, on the reader thread, for its turn; True when the link looks readable (:meth:`reader_step`
        then reads it with :meth:`read_now`, holding ``read_lock``: the host may have read it first)."""
        self.joined = True
        if self.lent:
            forever = self.host_waiting and time.monotonic() - self.host_idle_since >= HOST_IDLE
            if forever:
                self._napping = True
                if not self.host_waiting:  # read again after the flag: the host clears its own, then reads ours
                    self._napping = forever = False
            try:
                woken = self._nap.poll(None if forever else int(HOST_LOOK * 1000))
            finally:
                self._napping = False
            if woken:
                self._waker.drain()
            if self.lent and not self.host_waiting and time.monotonic() - self.host_since >= HOST_LOOK:
                self.lent = False  # the host runs a call: read the link meanwhile
            return False
        if self.link.pending():
            return True
        ready = dict(self._watch.poll())
        if self._waker.fd in ready:
            self._waker.drain()
        return self._fd in ready

    # -- the host thread ------------------------------------------------------------------------------

    def host(self, deadline: float, handle: Callable[[Any], bool | Callable[[], None]] | None = None) -> bool:
        """Read the link on this thread until a call was admitted, the host waker rang, or ``deadline``.

        ``handle(message)``, when given, handles what the host reads instead of the lease's ``handle``, and
        may return, rather than whether it admitted a call, what runs a call and sends its answer: run here at
        once (the link let go of meanwhile, as when the host leaves to run a call: the reader reads it if the
        call runs past ``HOST_LOOK``), after which the host reads on. Such a call costs no hand-off to the
        thread that runs it and no return to the caller's loop (a service process's task: see
        ``FramedServer.serve_inline``).

        A link that fails here (its peer gone, a protocol broken) is closed and handed back to the reader,
        which ends it as when it fails there: False then (do not host it again)."""
        now = time.monotonic()
        if self.host_worked:  # idle from now (a wait that ends at its deadline is followed by another)
            self.host_idle_since = now
            self.host_worked = False
        self.host_waiting = True
        self.asked = True
        if not self.lent:
            self.lent = True
            self._waker.signal()  # the reader stops watching the link
        failed = False
        timed_out = False
        # Whether to ask the socket before waiting on it: not at first (the wait sees what is there, and a
        # caller that has just sent its request finds nothing yet: one system call less per call), then after
        # every wait (the reader may have read what woke it) and before giving up at the deadline.
        look = False
        try:
            while True:
                taken = self._take_read_lock(deadline)
                if taken is None:
                    return True  # the host waker rang
                if not taken:
                    timed_out = True
                    return True
                run = None
                try:
                    while True:
                        message = self.read_now() if look else self.link.recv() if self.link.pending() else None
                        if message is None:
                            break
                        handled = self.handle(message) if handle is None else handle(message)
                        if handled is True:
                            self.host_worked = True
                            return True
                        if handled is not False:
                            run = handled
                            break
                finally:
                    self.read_lock.release()
                if run is not None:
                    self._host_left(False, False)  # away while it runs: the reader may read the link meanwhile
                    run()
                    self.host_waiting = True
                    self.host_idle_since = time.monotonic()  # (busy until now: the reader naps with a deadline)
                    # Nobody else read the link meanwhile: what it holds is in ``pending`` (the answer just went
                    # out, so the socket holds nothing yet, but for calls sent back to back), and no system
                    # call need ask. Otherwise the reader stops watching it, and the host asks the socket.
                    look = not self.lent
                    if look:
                        self.lent = True
                        self._waker.signal()
                    continue
                left = deadline - time.monotonic()
                if left <= 0:
                    if not look:
                        look = True
                        continue
                    timed_out = True
                    return True
                ready = dict(self._host_watch.poll(int(left * 1000) + 1))
                if self._host_waker.fd in ready:
                    self._host_waker.drain()
                    return True
                look = True
        except Exception:
            failed = True
            self.link.close()
            return False
        finally:
            self._host_left(failed, timed_out)

    def hold_lent(self) -> bool:
        """Take ``read_lock`` for a host when the link is lent already and the reader is not handling a
        message: True when taken (then :meth:`host_lent` with ``held=True``), False, having done nothing,
        otherwise. A caller takes it before sending its request (``framed_client._Connection.call_hosted``),
        so that the answer finds it reading."""
        return self.lent and self.read_lock.acquire(blocking=False)

    def host_lent(self, slice_ms: int, *, held: bool = False) -> bool | None:
        """:meth:`host` for a caller without a deadline on a link lent already (a warm call's case), holding
        ``read_lock`` from its first look to its answer rather than around each read: one lock taken, one
        ``poll`` and no deadline to work out per answer. The reader naps meanwhile, as it does while the
        link is lent and a host waits (:meth:`reader_turn`), so nobody else wants the lock.

        None, having done nothing, when the link is not lent yet or the reader holds the lock (it is
        handling a message): :meth:`host` then. ``held``: the caller took ``read_lock`` with
        :meth:`hold_lent` (it is let go of here, as when taken here). Otherwise what :meth:`host`
        returns: True once a message was handled that ended the host's call, the host waker rang, or
        ``slice_ms`` passed (the caller looks at its connection, then hosts again); False when the link
        failed here."""
        if not held and not self.hold_lent():
            return None
        if self.host_worked:  # idle from now, as in host()
            self.host_idle_since = time.monotonic()
            self.host_worked = False
        self.host_waiting = True
        failed = False
        timed_out = False
        link = self.link
        try:
            message = link.recv() if link.pending() else None  # (the wait sees what the socket holds)
            while True:
                while message is not None:
                    if self.handle(message):
                        self.host_worked = True
                        return True
                    message = self.read_now()
                ready = self._host_watch.poll(slice_ms)
                if not ready:
                    timed_out = True
                    return True
                for fd, _events in ready:
                    if fd == self._host_waker.fd:
                        self._host_waker.drain()
                        return True
                message = self.read_now()
        except Exception:
            failed = True
            link.close()
            return False
        finally:
            self.read_lock.release()
            self._host_left(failed, timed_out)

    def give_back(self) -> None:
        """The host will not read the link for now (the server has other links too): if it was lent, its
        reader reads it again at once, awake even from a nap without a deadline."""
        if self.lent:
            self.lent = False
            self._waker.signal()

    def _host_left(self, failed: bool, timed_out: bool) -> None:
        """The host's way out of a wait (:meth:`host`, :meth:`host_lent`): a link that failed under it goes
        back to the reader; a reader napping without a deadline is woken, since the host leaves for a call
        (or was woken: it may not be back soon) and the link must be watched meanwhile. A wait that timed
        out is followed by another at once, and needs no wake-up (unless the server has another link by
        then: :meth:`give_back`)."""
        self.host_waiting = False  # before reading _napping (see reader_turn)
        self.host_since = time.monotonic()
        if failed:
            self.lent = False
            self._waker.signal()
        elif self._napping and not timed_out:
            self._waker.signal()

    def _take_read_lock(self, deadline: float) -> bool | None:
        """``read_lock`` for the host: True once held, False at ``deadline``, None when the host waker rang.

        The reader holds it while it handles a message, and, until a host first asks for the link, while it
        waits for one alone (:meth:`reader_step`): the host then waits on the link and the host waker, not on
        the lock, so that :meth:`~flamepy_core.kit.framed_server.FramedServer.wake_host` still ends its
        wait, and takes the lock once the reader has read and handled what came."""
        while not self.read_lock.acquire(blocking=False):
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            ready = dict(self._host_watch.poll(int(left * 1000) + 1))
            if self._host_waker.fd in ready:
                self._host_waker.drain()
                return None
            if ready and self.read_lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
                return True  # the reader read what came, handled it, and let go
        return True

    def close(self) -> None:
        """Release the reader's waker (the reader thread, on its way out)."""
        self._waker.close()
