"""What the conformance suite cannot see from outside: cancellation reaching the handler, fork, limits
that differ between the two ends, strangers on the port, a client that stops reading its socket, the
unix scheme and the declaration."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from flamepy_core.contracts import (
    CallContext,
    DeferredStreamHandler,
    FlameError,
    FlameErrorCode,
    StreamHandler,
    StreamWriter,
    UnaryHandler,
)
from flamepy_core.contracts.transport import Transport
from flamepy_core.plugins import get_registry

ECHO = "/test.Tcp/Echo"
WATCH = "/test.Tcp/Watch"
WAIT = "/test.Tcp/Wait"
FOREVER = "/test.Tcp/Forever"


def tcp(**options: object) -> Transport:
    return get_registry().transport("tcp", **options)


def echo(request: bytes, ctx: CallContext) -> bytes:
    return request


def test_closing_a_stream_early_cancels_it_on_the_server() -> None:
    stopped = threading.Event()

    def forever(request: bytes, ctx: CallContext) -> Iterator[bytes]:
        try:
            while ctx.is_active():
                yield b"tick"
                time.sleep(0.01)
        finally:
            stopped.set()

    transport = tcp()
    server = transport.serve("tcp://127.0.0.1:0", {FOREVER: StreamHandler(forever)})
    channel = transport.connect(server.endpoint)
    try:
        items = channel.stream(FOREVER, b"", timeout=None)
        assert next(items) == b"tick"
        items.close()  # type: ignore[attr-defined]
        assert stopped.wait(3.0), "the handler kept streaming after the caller closed the stream"
    finally:
        channel.close()
        server.stop(0.5)


def test_handler_sees_inactive_when_the_client_goes_away() -> None:
    started, noticed = threading.Event(), threading.Event()

    def wait(request: bytes, ctx: CallContext) -> bytes:
        started.set()
        while ctx.is_active():
            time.sleep(0.01)
        noticed.set()
        return b""

    transport = tcp()
    server = transport.serve("tcp://127.0.0.1:0", {WAIT: UnaryHandler(wait)})
    channel = transport.connect(server.endpoint)
    try:
        errors: list[FlameError] = []

        def call_and_keep_error() -> None:
            try:
                channel.unary(WAIT, b"", timeout=None)
            except FlameError as exc:
                errors.append(exc)

        call = threading.Thread(target=call_and_keep_error)
        call.start()
        assert started.wait(5.0)
        channel.close()
        call.join(5.0)
        assert [e.code for e in errors] == [FlameErrorCode.UNAVAILABLE], "a call in flight on close()"
        assert noticed.wait(3.0), "ctx.is_active() stayed True after the client disconnected"
    finally:
        server.stop(0.5)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_opens_its_own_connection() -> None:
    transport = tcp()
    server = transport.serve("tcp://127.0.0.1:0", {ECHO: UnaryHandler(echo)})
    channel = transport.connect(server.endpoint)
    try:
        assert channel.unary(ECHO, b"parent") == b"parent"  # the parent's connection is open
        pid = os.fork()
        if pid == 0:  # the child: must not read from (or shut down) the parent's socket
            ok = all(channel.unary(ECHO, b"child %d" % i, timeout=5) == b"child %d" % i for i in range(20))
            os._exit(0 if ok else 1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert channel.unary(ECHO, b"parent again", timeout=5) == b"parent again"
    finally:
        channel.close()
        server.stop(0.5)


def grow(request: bytes, ctx: CallContext) -> bytes:
    return bytes(2 << 20)


@pytest.mark.parametrize("server_limit, client_limit", [(4 << 20, 1 << 20), (1 << 20, 4 << 20)])
def test_limits_that_differ_between_the_ends(server_limit: int, client_limit: int) -> None:
    """2 MiB over a 1 MiB end: MESSAGE_TOO_LARGE naming both sizes, and the connection stays in step."""
    handlers = {ECHO: UnaryHandler(echo), "/test.Tcp/Grow": UnaryHandler(grow)}
    server = tcp(max_message_size=server_limit).serve("tcp://127.0.0.1:0", handlers)
    channel = tcp(max_message_size=client_limit).connect(server.endpoint)
    try:
        with pytest.raises(FlameError) as too_big:
            if server_limit > client_limit:
                channel.unary("/test.Tcp/Grow", b"", timeout=5)  # the reply is over the client's limit
            else:
                channel.unary(ECHO, bytes(2 << 20), timeout=5)  # the request is over the server's limit
        assert too_big.value.code == FlameErrorCode.MESSAGE_TOO_LARGE
        assert str(2 << 20) in too_big.value.message and str(1 << 20) in too_big.value.message
        assert channel.unary(ECHO, b"after", timeout=5) == b"after"
    finally:
        channel.close()
        server.stop(0.5)


def test_a_stranger_is_disconnected_and_others_are_served() -> None:
    transport = tcp()
    server = transport.serve("tcp://127.0.0.1:0", {ECHO: UnaryHandler(echo)})
    channel = transport.connect(server.endpoint)
    port = int(server.endpoint.rsplit(":", 1)[1])
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as stranger:
            stranger.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert stranger.recv(100) == b"", "the server answered a stranger instead of hanging up"
        assert channel.unary(ECHO, b"still here", timeout=5) == b"still here"
    finally:
        channel.close()
        server.stop(0.5)


def test_a_deferred_stream_never_blocks_its_producer_on_a_client_that_stops_reading() -> None:
    """A client opens a stream with a vast window and then never reads its socket: the socket's buffers
    fill, yet ``send`` keeps returning at once (the link's sender thread waits, not the producer); when the
    client hangs up, ``send`` says False."""
    from flamepy_core.kit import frames
    from flamepy_core.kit.frames import Kind
    from flamepy_core.kit.links import SocketLink

    from flamepy_transport_tcp.transport import PREAMBLE

    parked: list[StreamWriter] = []
    arrived = threading.Event()

    def watch(request: bytes, ctx: CallContext, writer: StreamWriter) -> None:
        parked.append(writer)
        arrived.set()

    transport = tcp()
    server = transport.serve("tcp://127.0.0.1:0", {WATCH: DeferredStreamHandler(watch), ECHO: UnaryHandler(echo)})
    port = int(server.endpoint.rsplit(":", 1)[1])
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    link = SocketLink(sock, 1 << 30, preamble=PREAMBLE, dialled=True)
    try:
        link.send(frames.encode(Kind.STREAM, 1, b"", method=WATCH.encode(), a=1 << 20, b=1 << 30))
        assert arrived.wait(5.0), "the stream never reached its handler"
        [writer] = parked
        chunk = b"x" * (1 << 20)
        sent = threading.Thread(target=lambda: [writer.send(chunk) for _ in range(64)], daemon=True)
        sent.start()  # 64 MiB: far more than any socket buffer between the two ends
        sent.join(10.0)
        assert not sent.is_alive(), "send() blocked on a client that does not read its socket"
        channel = transport.connect(server.endpoint)  # the server goes on serving others meanwhile
        try:
            assert channel.unary(ECHO, b"still here", timeout=5) == b"still here"
        finally:
            channel.close()
    finally:
        link.close()
        sock.close()
    deadline = time.monotonic() + 5.0
    while writer.send(b"anyone?") and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not writer.send(b"anyone?"), "send() still said True 5 s after the client hung up"
    server.stop(0.5)


@pytest.mark.parametrize("endpoint", ["tcp://127.0.0.1", "tcp://:80", "tcp://127.0.0.1:80/path", "grpc://h:1"])
def test_bad_endpoints_are_invalid_arguments(endpoint: str) -> None:
    transport = tcp()
    with pytest.raises(FlameError) as err:
        transport.connect(endpoint)
    assert err.value.code == FlameErrorCode.INVALID_ARGUMENT


def test_a_port_in_use_is_already_exists() -> None:
    transport = tcp()
    server = transport.serve("tcp://127.0.0.1:0", {})
    try:
        with pytest.raises(FlameError) as err:
            transport.serve(server.endpoint, {})
        assert err.value.code == FlameErrorCode.ALREADY_EXISTS
    finally:
        server.stop()


def test_bad_options_are_refused_when_the_transport_is_built() -> None:
    with pytest.raises(FlameError) as err:
        tcp(max_message_size=0)
    assert err.value.code == FlameErrorCode.INVALID_ARGUMENT and "max_message_size" in err.value.message


def test_the_unix_scheme_and_the_local_endpoint(tmp_path: Path) -> None:
    """``tcp+unix://`` is the same protocol on a socket file; ``local_endpoint`` names one in a directory."""
    short = Path(tempfile.mkdtemp(prefix="tcpu-"))
    try:
        transport = tcp()
        endpoint = transport.local_endpoint(str(short), "flame")  # type: ignore[attr-defined]
        assert endpoint == f"tcp+unix://{short}/flame.sock"
        server = transport.serve(endpoint, {ECHO: UnaryHandler(echo)})
        channel = transport.connect(server.endpoint)
        try:
            assert server.endpoint == endpoint and (short / "flame.sock").exists()
            assert stat.S_IMODE((short / "flame.sock").stat().st_mode) & 0o077 == 0, "the socket is private"
            assert channel.unary(ECHO, b"over a socket file", timeout=5) == b"over a socket file"
        finally:
            channel.close()
            server.stop(0.5)
        assert not (short / "flame.sock").exists(), "stop() removes the socket file"
        long = str(tmp_path / ("d" * 120))
        assert transport.local_endpoint(long, "flame").startswith("tcp://127.0.0.1:")  # type: ignore[attr-defined]
    finally:
        shutil.rmtree(short, ignore_errors=True)


def test_the_class_declares_itself_once() -> None:
    from importlib import metadata

    from flamepy_transport_tcp.transport import TcpTransport

    [entry] = [ep for ep in metadata.entry_points(group="flamepy.transports") if ep.name == "tcp"]
    assert entry.value == "flamepy_transport_tcp.transport:TcpTransport"
    assert get_registry().transport_spec("tcp").spec.capabilities is TcpTransport.capabilities
    assert TcpTransport.capabilities.local_schemes == ("tcp+unix",)
    assert TcpTransport.capabilities.deferred_replies and TcpTransport.capabilities.async_calls
    assert TcpTransport.capabilities.deferred_streams
