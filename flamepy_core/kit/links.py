"""What a framed transport supplies: a :class:`Link` (whole messages both ways) and a :class:`Listener`.

Most transports move bytes over a stream socket; :class:`SocketLink` turns one into a link (each message
length-prefixed, the connection opened by a short preamble so a stranger speaking another protocol is
hung up on), and :func:`listen_tcp` / :func:`listen_unix` / :func:`dial_tcp` / :func:`dial_unix` open
the sockets with errors that name the endpoint. A transport over something else (a message queue, a
pipe, shared memory) implements the two protocols itself.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import selectors
import socket
import struct
import threading
from collections.abc import Sequence
from typing import Any, NamedTuple, Protocol, TypeGuard

from flamepy_core.contracts.errors import FlameError, FlameErrorCode
from flamepy_core.kit.basics import unavailable

__all__ = [
    "Link",
    "Listener",
    "NowaitLink",
    "Oversized",
    "SocketLink",
    "SocketListener",
    "dial_tcp",
    "dial_unix",
    "listen_tcp",
    "listen_unix",
    "sends_nowait",
]

Part = bytes | memoryview


class Oversized(NamedTuple):
    """A message larger than the receiver accepts: read and dropped; ``head`` is its start (the header)."""

    head: bytes
    size: int


class Link(Protocol):
    """One connection, carrying whole messages both ways.

    Some methods are optional. Two a client looks for (as :func:`~flamepy_core.kit.lease.lendable` looks for
    ``fileno`` and ``pending``), and a link without them works as before.

    * ``peer_stopped() -> bool | None``: whether the process at the other end is stopped now (``SIGSTOP``,
      or held by a debugger), or None when the link cannot tell. A stopped server keeps its socket open, so
      nothing else shows it: a client fails a connection whose server stays stopped while calls wait on
      it (:class:`~flamepy_core.kit.framed_client.PeerWatch`). The answer must be certain, never guessed
      from silence: a server that is slow, or busy holding its GIL, runs, and is never called stopped. A
      link that answers None, or lacks the method, is never judged.
    * ``peer_pid() -> int | None``: that process's id, for the message that names it.

    :class:`SocketLink` has both, and can tell over a unix socket on Linux (``/proc``) only.

    Optionally, a link can also send without waiting for its peer (:func:`sends_nowait` says whether it
    can; :class:`SocketLink` does). A framed server then never holds a thread on a client that reads
    slowly or not at all (frozen, stopped): what the connection does not take at once is written by the
    peer's sender thread. Without it, the server sends blocking, with :meth:`send`. The two methods:

    * ``send_nowait(parts) -> bool | None`` sends one message with what the connection takes now, never
      waiting: True when it went whole; None when the link keeps what did not go (all of it, maybe) for
      ``flush``; False when it sent nothing because it keeps the rest of an earlier message (``flush``,
      then send this one again). Raises ``OSError`` once the peer has gone.
    * ``flush()`` writes what the link keeps, waiting for the peer as long as it takes, and without
      holding up other threads' ``send_nowait`` meanwhile (they get False). ``send`` writes it first too.

    Messages never interleave: whatever ``send_nowait`` keeps goes out before any later message.
    """

    def send(self, parts: Sequence[Part]) -> None:
        """Send one message made of ``parts``, whole, even when several threads send at once.

        Raises ``OSError`` once the peer has gone.
        """
        ...

    def recv(self) -> bytes | bytearray | memoryview | Oversized:
        """The next message (one reader thread calls this). Raises ``EOFError`` or ``OSError`` once closed,
        having released what the link holds (the reader thread is the last to use it).

        A large message may come as a ``bytearray``, or as a ``memoryview`` of a buffer the link reads the
        next large message into: whoever calls ``recv`` copies what it keeps of a message before calling it
        again (the kit's client and server copy a frame's payload as they take it)."""
        ...

    def close(self) -> None:
        """End the connection, waking a ``recv`` in progress. Idempotent, from any thread."""
        ...

    def abandon(self) -> None:
        """In a forked child: drop this process's hold on the connection without ending the parent's."""
        ...


class NowaitLink(Protocol):
    """The optional part of a :class:`Link`: sending without waiting for the peer (described there)."""

    def send_nowait(self, parts: Sequence[Part]) -> bool | None: ...

    def flush(self) -> None: ...


class Listener(Protocol):
    """Where a server accepts links."""

    @property
    def endpoint(self) -> str:
        """The bound endpoint, a requested port 0 resolved."""
        ...

    def accept(self) -> Link | None:
        """The next link, blocking; None once :meth:`close` was called."""
        ...

    def close(self) -> None:
        """Stop accepting and release the address (it can be bound again when this returns). Idempotent."""
        ...


_LENGTH = struct.Struct("!Q")
_DONTWAIT = socket.MSG_DONTWAIT
_DISCARD = 1 << 20
_COALESCE = 64 * 1024
HEAD_KEEP = 64 * 1024 + 64
"""Bytes of an oversized message kept for the receiver (enough for the kit's header and any method)."""


KEPT_BUFFERS_BUDGET = 64 * 1024 * 1024
"""Bytes of large receive buffers this process keeps for reuse, over all its links (see :class:`_KeptBuffers`)."""


class _KeptBuffers:
    """The process's budget for large receive buffers kept between messages.

    Why keep one: a fresh 16 MiB buffer costs its page faults (4,096 of them, about as long as copying the
    bytes twice) every time; a buffer kept from the previous large message of the link costs none. Why a
    budget: a server has one link per client, and each would otherwise keep the largest message it ever
    received. Past the budget a link reads into a fresh buffer each time, as it did before.
    """

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.left = budget
        self.lock = threading.Lock()

    def take(self, size: int) -> bool:
        with self.lock:
            if size > self.left:
                return False
            self.left -= size
            return True

    def give(self, size: int) -> None:
        with self.lock:
            self.left = min(self.budget, self.left + size)

    def after_fork_in_child(self) -> None:
        # The links a child inherits are abandoned, not released: start its own count (and a lock that no
        # thread of the parent can hold).
        self.left = self.budget
        self.lock = threading.Lock()


_kept_buffers = _KeptBuffers(KEPT_BUFFERS_BUDGET)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_kept_buffers.after_fork_in_child)


class SocketLink:
    """A :class:`Link` over a connected stream socket: each message is an 8-byte length, then its bytes.

    ``limit`` bounds the messages this side keeps (larger ones are read and dropped, their start handed
    back as :class:`Oversized` so the connection stays in step). ``preamble`` is sent first by the side
    that dialled and checked by the side that accepted.
    """

    def __init__(self, sock: socket.socket, limit: int, *, preamble: bytes, dialled: bool) -> None:
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sock
        self.limit = limit
        self.pid = os.getpid()
        self._preamble = preamble
        self._greeted = dialled
        self._buffer = bytearray()
        """Bytes read from the socket and not yet handed out: the start of the next message(s)."""
        self._start = 0
        """Where in ``_buffer`` the bytes not handed out begin."""
        self._large: bytearray | None = None
        """The buffer the last large message was read into, kept for the next one (see :class:`_KeptBuffers`)."""
        self._send_lock = threading.Lock()
        """Held while a message is written, never while waiting for the peer, except by :meth:`send`."""
        self._rest: list[memoryview] | None = None
        """What :meth:`send_nowait` kept of a message the socket did not take whole: written next."""
        self._flushing = False
        """A :meth:`flush` writes ``_rest`` without the lock: nobody else writes until it has."""
        self._flushed = threading.Condition(self._send_lock)
        self._closed = False
        self._readable = select.poll()
        """Where a read that finds nothing waits: readable news only (see :meth:`_recv`)."""
        self._readable.register(sock.fileno(), select.POLLIN)
        if dialled:
            sock.sendall(preamble)

    def send(self, parts: Sequence[Part]) -> None:
        size = sum(map(len, parts))
        with self._send_lock:
            if self._rest is not None:
                self._write_rest()
            if size <= _COALESCE:
                self.sock.sendall(b"".join([_LENGTH.pack(size), *parts]))
                return
            # A large message from its parts, none copied: one system call unless a signal cuts it short.
            buffers: Sequence[Part] = [_LENGTH.pack(size), *parts]
            while buffers:
                buffers = _after(buffers, self.sock.sendmsg(buffers))

    def send_nowait(self, parts: Sequence[Part]) -> bool | None:
        """Send one message with what the socket takes now (see :class:`Link`): True when it went whole, None
        when the rest is kept for :meth:`flush`, False when a rest of an earlier message is kept (nothing sent).

        One system call either way: the small message of a warm call goes as :meth:`send` sends it, a large
        one from its parts without a copy. The lock is only ever held for such a call here, so a thread
        never waits behind a write that waits for the peer.
        """
        size = sum(map(len, parts))
        with self._send_lock:
            if self._rest is not None:
                return False
            if size <= _COALESCE:
                data = b"".join([_LENGTH.pack(size), *parts])
                try:
                    sent = self.sock.send(data, _DONTWAIT)
                except BlockingIOError:
                    sent = 0
                if sent == len(data):
                    return True
                self._rest = [memoryview(data)[sent:]]
                return None
            buffers = [_LENGTH.pack(size), *parts]
            try:
                sent = self.sock.sendmsg(buffers, (), _DONTWAIT)
            except BlockingIOError:
                sent = 0
            if sent == _LENGTH.size + size:
                return True
            self._rest = _after(buffers, sent)
            return None

    def flush(self) -> None:
        """Write what :meth:`send_nowait` kept, blocking until the peer has taken it; at once when nothing is kept.

        The write waits for the peer without the lock: meanwhile other threads' ``send_nowait`` gets False
        (it does not wait), so one frozen client holds the flushing thread only. A write that fails midway
        leaves the connection out of step: it is shut down (its reader then ends it), and the error raised.
        """
        with self._send_lock:
            while self._flushing:
                self._flushed.wait()
            rest = self._rest
            if rest is None:
                return
            self._flushing = True
        written = False
        try:
            for part in rest:
                self.sock.sendall(part)
            written = True
        finally:
            with self._send_lock:
                self._flushing = False
                if written:
                    self._rest = None
                self._flushed.notify_all()
            if not written:
                self.close()

    def _write_rest(self) -> None:
        """With the lock held (:meth:`send`): the kept rest written first, or waited for while a flush writes it."""
        while self._flushing:
            self._flushed.wait()
        rest, self._rest = self._rest, None
        for part in rest or ():
            self.sock.sendall(part)

    def fileno(self) -> int:
        """The socket's descriptor, to wait on (with :meth:`pending`): readable when more bytes arrived."""
        return self.sock.fileno()

    def pending(self) -> bool:
        """Whether bytes of a next message were read already: a wait on :meth:`fileno` would not see them."""
        return self._start < len(self._buffer)

    def _read(self, size: int) -> bytes | memoryview:
        """The next ``size`` bytes; ``EOFError`` when the peer closed first. One system call brings a small
        message in whole (and what follows it, kept for the next call); a large one is read into place."""
        buffer, start = self._buffer, self._start
        have = len(buffer) - start
        if have < size <= have + _COALESCE:
            if start:
                del buffer[:start]
                start = self._start = 0
            while len(buffer) < size:
                chunk = self.sock.recv(_COALESCE)
                if not chunk:
                    raise EOFError("the peer closed the connection")
                buffer += chunk
            have = len(buffer)
        if have >= size:
            data = bytes(buffer[start : start + size])
            if start + size == len(buffer):
                buffer.clear()
                self._start = 0
            else:
                self._start = start + size
            return data
        view = self._large_buffer(size)
        view[:have] = buffer[start:]
        buffer.clear()
        self._start = 0
        filled = have
        while filled < size:
            got = self.sock.recv_into(view[filled:])
            if not got:
                raise EOFError("the peer closed the connection")
            filled += got
        return view  # as read: the frame's payload is copied out of it once, into the bytes a handler gets

    def _large_buffer(self, size: int) -> memoryview:
        """Where a large message of ``size`` bytes is read: the kept buffer when it fits (and is not more
        than twice as large), else a fresh one, kept in its place if the process's budget allows."""
        kept = self._large
        if kept is not None and size <= len(kept) <= 2 * size:
            return memoryview(kept)[:size]
        self._drop_large()
        fresh = bytearray(size)
        if _kept_buffers.take(size):
            self._large = fresh
        return memoryview(fresh)

    def _drop_large(self) -> None:
        if self._large is not None:
            _kept_buffers.give(len(self._large))
            self._large = None

    def recv_now(self) -> bytes | bytearray | memoryview | Oversized | None:
        """The next message if its first bytes are here already (the rest is read as it comes, as
        :meth:`recv` would), else None, without waiting: one system call where asking the socket whether
        it is readable and then reading it took two. For a thread that was told the link turned readable,
        but may have been beaten to it (a link lent to a host: :mod:`~flamepy_core.kit.lease`)."""
        if self._start >= len(self._buffer):
            try:
                chunk = self.sock.recv(_COALESCE, _DONTWAIT)
            except BlockingIOError:
                return None
            except OSError:
                self._release()
                raise
            # (Whatever else it raises, a signal's handler raised: nothing was read, and the link goes on.)
            if not chunk:
                self._release()
                raise EOFError("the peer closed the connection")
            self._buffer.clear()
            self._start = 0
            self._buffer += chunk
        return self.recv()

    def recv(self) -> bytes | bytearray | memoryview | Oversized:
        try:
            return self._recv()
        except BaseException:
            self._release()  # the reading thread closes the socket, nobody else
            raise

    def _recv(self) -> bytes | bytearray | memoryview | Oversized:
        if self._greeted:
            # A small message is usually in the buffer whole, or brought in whole by one read: taken out
            # with its length at once (a warm invoke reads four, one in each hop's reader; through
            # ``_read`` twice each took three times the bytecode).
            message = self._buffered()
            if message is not None:
                return message
            if self._start >= len(self._buffer):
                try:
                    chunk = self.sock.recv(_COALESCE, _DONTWAIT)
                except BlockingIOError:
                    # Nothing yet: wait in ``poll``, which readable news alone ends, not in the read, which
                    # each read of the peer's ends (see kit.lease): the server's reader of a client's link
                    # was woken by every answer the client read.
                    self._readable.poll()
                    chunk = self.sock.recv(_COALESCE)
                if not chunk:
                    raise EOFError("the peer closed the connection")
                self._buffer.clear()
                self._start = 0
                self._buffer += chunk
                message = self._buffered()
                if message is not None:
                    return message
        else:
            if self._read(len(self._preamble)) != self._preamble:
                raise ConnectionError("the peer does not speak this protocol (wrong preamble)")
            self._greeted = True
        # A message not in the buffer whole (a large one, or one the socket gave in parts): read as it comes.
        (size,) = _LENGTH.unpack(self._read(_LENGTH.size))
        if size <= self.limit + HEAD_KEEP:
            return self._read(size)
        head = bytes(self._read(HEAD_KEEP))
        for start in range(HEAD_KEEP, size, _DISCARD):
            self._read(min(_DISCARD, size - start))
        return Oversized(head, size)

    def _buffered(self) -> bytes | None:
        """The next message if the buffer holds all of it and it is one to keep, taken out of the buffer; else
        None, the buffer as it was. (An oversized message is never whole in the buffer today, which holds at
        most one read past the message before it, less than ``HEAD_KEEP``; the size is checked anyway, so
        that a larger read would not make this keep one.)"""
        buffer, start = self._buffer, self._start
        body = start + _LENGTH.size
        if body > len(buffer):
            return None
        (size,) = _LENGTH.unpack_from(buffer, start)
        end = body + size
        if end > len(buffer) or size > self.limit + HEAD_KEEP:
            return None
        data = bytes(buffer[body:end])
        if end == len(buffer):
            buffer.clear()
            self._start = 0
        else:
            self._start = end
        return data

    def close(self) -> None:
        """Shut the connection down: the peer sees it closed and a ``recv`` in progress wakes with EOF (which
        then releases the socket). Other threads never close the socket under the reading thread."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(OSError):  # already shut down, or never fully connected
            self.sock.shutdown(socket.SHUT_RDWR)

    def _release(self) -> None:
        self._closed = True
        self._drop_large()
        with contextlib.suppress(OSError):
            # A sender thread may be blocked writing to this peer (a flush to a client that half-closed and
            # stopped reading): closing the descriptor would not wake it, shutting the socket down does.
            self.sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self.sock.close()

    def abandon(self) -> None:
        # shutdown() would end the parent's connection too, and the reader's buffer lock may have been
        # held by a parent thread at fork time: only this process's descriptor goes.
        self._closed = True
        with contextlib.suppress(OSError):
            os.close(self.sock.detach())

    # -- the peer process (the optional methods of Link): asked by a client's timer while calls wait ----

    _peer_pid: int | None = -1
    """The peer's pid once asked (-1: not yet; None: unknown)."""
    _peer_start: int | None = None
    """The peer's start time (clock ticks after boot) when first read: a pid taken by another process later
    reads another, and is then no longer judged."""

    def peer_pid(self) -> int | None:
        """The pid of the process at the other end of a unix socket (for a client, the one that listened),
        from ``SO_PEERCRED`` (Linux); None over TCP, elsewhere, or for a peer in a pid namespace this process
        cannot see."""
        if self._peer_pid == -1:
            self._peer_pid = _peer_pid_of(self.sock)
        return self._peer_pid

    def peer_stopped(self) -> bool | None:
        """Whether the peer process is stopped (state ``T`` or ``t`` in ``/proc/<pid>/stat``: ``SIGSTOP``,
        ``SIGTSTP``, a debugger). None when that cannot be known, and then the peer is never judged: no
        peer pid (TCP, not Linux, another pid namespace), a ``/proc`` that is not this process's pid
        namespace's, a ``/proc/<pid>/stat`` that cannot be read (permission, ``hidepid``), the peer is this
        process, or its pid now names another process (its start time changed)."""
        pid = self.peer_pid()
        if pid is None or pid == os.getpid() or not _proc_is_ours():
            return None
        found = _proc_state(pid)
        if found is None:
            return None
        state, start = found
        if self._peer_start is None:
            self._peer_start = start
        elif start != self._peer_start:
            return None
        return state in ("T", "t")


_CRED = struct.Struct("3i")
"""``struct ucred``: pid, uid, gid."""


def _peer_pid_of(sock: socket.socket) -> int | None:
    option = getattr(socket, "SO_PEERCRED", None)  # Linux; macOS's LOCAL_PEERPID would serve nothing: no /proc
    if option is None or sock.family != socket.AF_UNIX:
        return None
    try:
        pid, _uid, _gid = _CRED.unpack(sock.getsockopt(socket.SOL_SOCKET, option, _CRED.size))
    except OSError:
        return None
    return pid if pid > 0 else None  # 0: the peer's pid namespace is not visible from here


_proc_ours: dict[int, bool] = {}
"""Per pid of this process (a forked child asks again): whether ``/proc`` shows this pid namespace."""


def _proc_is_ours() -> bool:
    """Whether ``/proc`` is mounted for this process's pid namespace, so ``/proc/<pid>`` is the process
    ``SO_PEERCRED`` named (a container may show another namespace's ``/proc``)."""
    me = os.getpid()
    ours = _proc_ours.get(me)
    if ours is None:
        try:
            ours = os.readlink("/proc/self") == str(me)
        except OSError:
            ours = False
        _proc_ours[me] = ours
    return ours


def _proc_state(pid: int) -> tuple[str, int] | None:
    """The state letter and start time of process ``pid`` (fields 3 and 22 of ``/proc/<pid>/stat``), or None
    when it cannot be read. The fields are counted after the last ``)``: the command name before it may
    hold anything, spaces and parentheses included."""
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
        try:
            data = os.read(fd, 4096)
        finally:
            os.close(fd)
        fields = data[data.rindex(b")") + 1 :].split()
        return fields[0].decode("ascii"), int(fields[19])
    except (OSError, ValueError, IndexError, UnicodeDecodeError):
        return None


def _after(buffers: Sequence[Part], sent: int) -> list[memoryview]:
    """What is left of ``buffers`` once their first ``sent`` bytes are written (views: no copy)."""
    for index, buffer in enumerate(buffers):
        if sent < len(buffer):
            return [memoryview(buffer)[sent:], *(memoryview(b) for b in buffers[index + 1 :])]
        sent -= len(buffer)
    return []


def sends_nowait(link: object) -> TypeGuard[NowaitLink]:
    """Whether ``link`` can send without waiting for its peer: it has ``send_nowait`` and ``flush`` (:class:`Link`)."""
    return callable(getattr(link, "send_nowait", None)) and callable(getattr(link, "flush", None))


class SocketListener:
    """A :class:`Listener` over a listening stream socket; accepted sockets become :class:`SocketLink`.

    One thread accepts (the server's); :meth:`close` may come from any other and wakes it.
    """

    def __init__(
        self, sock: socket.socket, endpoint: str, limit: int, *, preamble: bytes, path: str | None = None
    ) -> None:
        self._sock = sock
        self._endpoint = endpoint
        self._limit = limit
        self._preamble = preamble
        self._path = path
        self._inode = os.stat(path).st_ino if path else None
        self._wake_r, self._wake_w = socket.socketpair()
        self._closed = False
        sock.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(sock, selectors.EVENT_READ)
        self._selector.register(self._wake_r, selectors.EVENT_READ)

    @property
    def endpoint(self) -> str:
        return self._endpoint

    def accept(self) -> Link | None:
        while not self._closed:
            try:
                ready = {key.fileobj for key, _ in self._selector.select()}
            except (OSError, ValueError):
                if self._closed:
                    break
                raise
            if self._wake_r in ready or self._closed:
                break
            try:
                conn, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                continue  # the client gave up before we got to it
            except OSError:
                if self._closed:
                    break
                threading.Event().wait(0.05)  # e.g. out of descriptors: do not spin
                continue
            try:
                conn.setblocking(True)
                return SocketLink(conn, self._limit, preamble=self._preamble, dialled=False)
            except OSError:  # reset already: one lost client must not end accepting
                conn.close()
        self._release_wake()
        return None

    def _release_wake(self) -> None:
        # The accepting thread is the last to use these.
        with contextlib.suppress(Exception):
            self._selector.close()
        self._wake_r.close()
        self._wake_w.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        self._sock.close()
        if self._path is not None:
            with contextlib.suppress(OSError):
                if os.stat(self._path).st_ino == self._inode:
                    os.unlink(self._path)


def _bind_error(endpoint: str, exc: OSError) -> FlameError:
    if exc.errno == errno.EADDRINUSE:
        return FlameError(FlameErrorCode.ALREADY_EXISTS, f"{endpoint} is already in use")
    if exc.errno == errno.EACCES:
        return FlameError(FlameErrorCode.PERMISSION_DENIED, f"not allowed to listen on {endpoint}: {exc}")
    return FlameError(FlameErrorCode.INVALID_ARGUMENT, f"cannot listen on {endpoint}: {exc}")


def listen_tcp(host: str, port: int, endpoint: str, backlog: int = 128) -> socket.socket:
    """A listening TCP socket. ``SO_REUSEADDR`` (a stopped server's port can be bound again at once), never
    ``SO_REUSEPORT`` (a port in use fails with ``ALREADY_EXISTS``)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except OSError as exc:
        raise FlameError(FlameErrorCode.INVALID_ARGUMENT, f"cannot resolve host '{host}' of {endpoint}: {exc}") from exc
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise _bind_error(endpoint, exc) from exc
    return sock


def listen_unix(path: str, endpoint: str, backlog: int = 128) -> socket.socket:
    """A listening unix socket at ``path``, created owner-only; a stale file from a dead server is replaced,
    a live server's is ``ALREADY_EXISTS``."""
    if os.path.exists(path):
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(1.0)
        try:
            probe.connect(path)
        except OSError:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)  # nobody listens there: a leftover
        else:
            raise FlameError(FlameErrorCode.ALREADY_EXISTS, f"{endpoint} is already served by another process")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o077)
    try:
        sock.bind(path)
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise _bind_error(endpoint, exc) from exc
    finally:
        os.umask(old)
    return sock


def _dial(family: int, address: Any, endpoint: str, timeout: float) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(address)
    except TimeoutError as exc:
        sock.close()
        raise unavailable(endpoint, f"no answer to connect within {timeout:.3g} s") from exc
    except OSError as exc:
        sock.close()
        refused = isinstance(exc, (ConnectionRefusedError, FileNotFoundError))
        raise unavailable(endpoint, "nothing listens there" if refused else str(exc)) from exc
    sock.settimeout(None)
    return sock


def dial_tcp(host: str, port: int, endpoint: str, timeout: float) -> socket.socket:
    """A connected TCP socket, or ``UNAVAILABLE`` (refused, unresolvable, or silent for ``timeout`` s)."""
    try:
        family, _kind, _proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except OSError as exc:
        raise unavailable(endpoint, f"cannot resolve host '{host}': {exc}") from exc
    return _dial(family, address, endpoint, timeout)


def dial_unix(path: str, endpoint: str, timeout: float) -> socket.socket:
    """A connected unix socket, or ``UNAVAILABLE``."""
    return _dial(socket.AF_UNIX, path, endpoint, timeout)
