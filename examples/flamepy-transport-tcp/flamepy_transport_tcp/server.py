"""The server side: an accept thread, one reader thread per client connection, handlers on a thread pool.

A reader thread only routes: it answers what it can at once (an unknown method, a request too large, a
server shutting down) and hands every real call to the pool, so a slow handler never holds up the other
calls multiplexed on its connection. Each call's :class:`SimpleCallContext` is cancelled when the
client sends CANCEL or its connection drops, which is how a handler learns the caller has gone.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor

from flamepy_core.contracts.errors import FlameError, FlameErrorCode
from flamepy_core.contracts.transport import Handler, StreamHandler, UnaryHandler
from flamepy_core.transport_kit import SimpleCallContext, check_size, error_from_handler, unavailable, unimplemented

from flamepy_transport_tcp.frames import Frame, FrameSocket, Kind

STOP_WAIT = 5.0
"""Seconds ``stop`` waits, after the grace, for reader threads to notice their sockets were shut down."""


class _Peer:
    """One client connection: its socket and the calls it has in flight."""

    def __init__(self, server: TcpServer, sock: socket.socket) -> None:
        self.server = server
        self.wire = FrameSocket(sock, server.limit)
        self.calls: dict[int, SimpleCallContext] = {}
        self.thread = threading.Thread(target=self._read, name="flamepy-tcp-peer", daemon=True)

    def _read(self) -> None:
        try:
            self.wire.read_preamble()
            while True:
                frame = self.wire.recv()
                if frame.kind == Kind.CANCEL:
                    ctx = self.calls.get(frame.call_id)
                    if ctx is not None:
                        ctx.cancel()
                elif frame.kind in (Kind.UNARY, Kind.STREAM):
                    self.server._admit(self, frame)
                else:
                    break  # a reply kind from a client: not this protocol
        except OSError:
            pass  # the client went away, or stop() shut the socket down
        finally:
            for ctx in list(self.calls.values()):
                ctx.cancel()  # nobody is waiting for these answers any more
            self.wire.release()
            self.server._forget(self)

    def send(self, kind: Kind, call_id: int, payload: bytes = b"") -> None:
        with contextlib.suppress(OSError):  # the client has gone: its reader thread cleans up
            self.wire.send(kind, call_id, payload)

    def send_error(self, call_id: int, error: FlameError) -> None:
        with contextlib.suppress(OSError):
            self.wire.send_error(call_id, error)


class TcpServer:
    """A running server. ``endpoint`` is the bound address, a requested port 0 resolved."""

    def __init__(
        self, listener: socket.socket, endpoint: str, handlers: Mapping[str, Handler], limit: int, max_workers: int
    ) -> None:
        self.limit = limit
        self._endpoint = endpoint
        self._handlers = dict(handlers)
        self._listener = listener
        self._pid = os.getpid()
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="flamepy-tcp-handler")
        self._peers: set[_Peer] = set()
        self._running = 0
        self._lock = threading.Condition()
        self._stopping = False
        self._stopped = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()
        listener.setblocking(False)
        self._acceptor = threading.Thread(target=self._accept, name=f"flamepy-tcp-accept {endpoint}", daemon=True)
        self._acceptor.start()

    @property
    def endpoint(self) -> str:
        return self._endpoint

    # -- accepting and routing ----------------------------------------------------------------------

    def _accept(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self._listener, selectors.EVENT_READ)
            selector.register(self._wake_r, selectors.EVENT_READ)
            while True:
                ready = {key.fileobj for key, _ in selector.select()}
                if self._wake_r in ready:
                    return
                try:
                    sock, _ = self._listener.accept()
                except BlockingIOError:
                    continue  # the client gave up before we got to it
                except OSError:
                    time.sleep(0.05)  # e.g. out of file descriptors: do not spin, try again shortly
                    continue
                try:
                    sock.setblocking(True)
                    peer = _Peer(self, sock)
                except OSError:  # reset already: one lost client must not end the accept loop
                    sock.close()
                    continue
                with self._lock:
                    if self._stopping:
                        sock.close()
                        return
                    self._peers.add(peer)
                peer.thread.start()

    def _forget(self, peer: _Peer) -> None:
        with self._lock:
            self._peers.discard(peer)

    def _admit(self, peer: _Peer, frame: Frame) -> None:
        """Route one request: refuse it at once, or run its handler on the pool."""
        method, call_id = frame.method, frame.call_id
        handler = self._handlers.get(method)
        wanted = UnaryHandler if frame.kind == Kind.UNARY else StreamHandler
        if frame.oversized:
            try:
                check_size(frame.oversized, self.limit, what=f"request to {method}", endpoint=self._endpoint)
            except FlameError as exc:
                peer.send_error(call_id, exc)
            return
        if handler is None:
            peer.send_error(call_id, unimplemented(method, self._endpoint))
            return
        if not isinstance(handler, wanted):
            kind = "streaming" if wanted is UnaryHandler else "unary"
            peer.send_error(call_id, FlameError(FlameErrorCode.UNIMPLEMENTED, f"{method} is a {kind} method"))
            return
        with self._lock:
            if self._stopping:
                peer.send_error(call_id, unavailable(self._endpoint, "the server is shutting down"))
                return
            self._running += 1
        ctx = SimpleCallContext(method, frame.timeout)
        peer.calls[call_id] = ctx
        try:
            self._pool.submit(self._run, peer, frame, handler, ctx)
        except RuntimeError:  # the pool was shut down between the check and the submit
            self._done(peer, call_id)
            peer.send_error(call_id, unavailable(self._endpoint, "the server is shutting down"))

    def _done(self, peer: _Peer, call_id: int) -> None:
        peer.calls.pop(call_id, None)
        with self._lock:
            self._running -= 1
            self._lock.notify_all()

    # -- running handlers ---------------------------------------------------------------------------

    def _checked(self, method: str, value: object) -> bytes:
        """A handler's output as bytes within the size limit, else the FlameError the caller gets instead."""
        if not isinstance(value, (bytes, bytearray, memoryview)):
            kind = type(value).__name__
            raise FlameError(FlameErrorCode.INTERNAL, f"handler for {method} returned {kind}, not bytes")
        check_size(len(value), self.limit, what=f"response to {method}", endpoint=self._endpoint)
        return bytes(value)

    def _run(self, peer: _Peer, frame: Frame, handler: Handler, ctx: SimpleCallContext) -> None:
        method, call_id = frame.method, frame.call_id
        try:
            if isinstance(handler, UnaryHandler):
                reply = self._checked(method, handler.fn(frame.payload, ctx))
                if ctx.is_active():  # else the caller has given up: nobody would read it
                    peer.send(Kind.REPLY, call_id, reply)
            elif isinstance(handler, StreamHandler):
                self._stream(peer, call_id, handler.fn(frame.payload, ctx), method, ctx)
            else:  # this transport does not declare deferred_replies: the core adapts those for it
                raise FlameError(FlameErrorCode.INTERNAL, f"{method}: deferred handlers are not served natively here")
        except BaseException as exc:  # whatever a handler raises becomes the caller's error, never a hang
            if ctx.is_active():
                peer.send_error(call_id, error_from_handler(method, exc))
        finally:
            self._done(peer, call_id)

    def _stream(self, peer: _Peer, call_id: int, items: Iterator[bytes], method: str, ctx: SimpleCallContext) -> None:
        try:
            for item in items:
                if not ctx.is_active():
                    return  # cancelled, deadline passed or client gone: stop the handler at its next item
                peer.send(Kind.ITEM, call_id, self._checked(method, item))
            peer.send(Kind.END, call_id)
        finally:
            close = getattr(items, "close", None)
            if callable(close):
                close()

    # -- stopping -----------------------------------------------------------------------------------

    def stop(self, grace: float | None = None) -> None:
        """Refuse new calls, let running ones finish for up to ``grace`` s, then drop every connection.

        Idempotent. Returns once the port can be bound again (the listening socket is closed). A handler
        that ignores its context may keep running in its thread, but its caller already has UNAVAILABLE.
        """
        if os.getpid() != self._pid:
            # A forked child: the server's threads live in the parent; release only our copies.
            for sock in (self._listener, self._wake_r, self._wake_w):
                sock.close()
            return
        with self._lock:
            first, self._stopping = not self._stopping, True
        if not first:
            self._stopped.wait((grace or 0.0) + STOP_WAIT)
            return
        self._wake_w.send(b"x")
        self._acceptor.join()
        self._listener.close()
        with self._lock:
            self._lock.wait_for(lambda: self._running == 0, timeout=grace or 0.0)
            peers = list(self._peers)
        for peer in peers:
            peer.wire.shutdown()  # its reader cancels the calls and closes; callers get UNAVAILABLE
        for peer in peers:
            peer.thread.join(STOP_WAIT)
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._wake_r.close()
        self._wake_w.close()
        self._stopped.set()

    def __repr__(self) -> str:
        return f"TcpServer({self._endpoint!r})"
