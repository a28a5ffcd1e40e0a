"""gRPC-specific tests of the gRPC transport (the shared conformance suite covers the generic contract).

Every wait here has a deadline; the module runs in a few seconds.
"""

from __future__ import annotations

import contextlib
import gc
import multiprocessing
import os
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path
from typing import Any

import grpc
import pytest
from flamepy_transports.grpc.plugin import GrpcTransport
from flamepy_transports.grpc.status import (
    ERROR_CODE_KEY,
    FLAME_TO_GRPC,
    GRPC_TO_FLAME,
    error_from_status,
    flame_code_for,
)
from flamepy_transports.grpc.transport import _RELEASE, GrpcChannel, GrpcServer

from flamepy_core.contracts import (
    CallContext,
    FlameError,
    FlameErrorCode,
    Handler,
    StreamHandler,
    UnaryHandler,
)
from flamepy_core.plugins import PluginRegistry, transport_spec_of
from flamepy_core.transport_kit import run_calls_on
from flamepy_core.wire.methods import FRONTEND
from flamepy_core.wire.proto import frontend_pb2, types_pb2

LIMIT = 64 * 1024
MESSAGE = 'état ünïcode ✓ 🎉 — "quoted" %41 \t tab'


def _raise_code(request: bytes, ctx: CallContext) -> bytes:
    raise FlameError(int(request), MESSAGE)


def _oops(request: bytes, ctx: CallContext) -> bytes:
    raise KeyError("missing-key")


def _count(request: bytes, ctx: CallContext) -> Iterator[bytes]:
    for i in range(int(request)):
        yield str(i).encode()


def _slow(request: bytes, ctx: CallContext) -> bytes:
    time.sleep(float(request))
    return b"late"


def _tick(request: bytes, ctx: CallContext) -> Iterator[bytes]:
    for i in range(1000):
        yield str(i).encode()
        time.sleep(float(request))


def _remaining(request: bytes, ctx: CallContext) -> bytes:
    return repr(ctx.time_remaining()).encode()


def _sized(request: bytes, ctx: CallContext) -> bytes:
    return b"r" * int(request)


def handlers() -> dict[str, Handler]:
    return {
        "/test.Echo/Echo": UnaryHandler(lambda request, ctx: request),
        "/test.Echo/Raise": UnaryHandler(_raise_code),
        "/test.Echo/Oops": UnaryHandler(_oops),
        "/test.Echo/Count": StreamHandler(_count),
        "/test.Echo/Slow": UnaryHandler(_slow),
        "/test.Echo/Tick": StreamHandler(_tick),
        "/test.Echo/Remaining": UnaryHandler(_remaining),
        "/test.Echo/Sized": UnaryHandler(_sized),
    }


@pytest.fixture
def transport() -> GrpcTransport:
    return GrpcTransport(max_message_size=LIMIT, default_timeout=5.0, max_workers=16)


@pytest.fixture
def server(transport: GrpcTransport) -> Iterator[GrpcServer]:
    srv = transport.serve("grpc://127.0.0.1:0", handlers())
    yield srv
    srv.stop()


@pytest.fixture
def channel(transport: GrpcTransport, server: GrpcServer) -> Iterator[GrpcChannel]:
    ch = transport.connect(server.endpoint)
    yield ch
    ch.close()


@pytest.fixture
def raw(server: GrpcServer) -> Iterator[grpc.Channel]:
    """A plain grpcio channel to our server: no flamepy on the client side."""
    ch = grpc.insecure_channel(server.endpoint.removeprefix("grpc://"))
    yield ch
    ch.close()


@pytest.fixture
def sock_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory for unix sockets: tmp_path, unless that would push a socket path past ~100 bytes."""
    if len(os.fsencode(tmp_path)) <= 80:
        yield tmp_path
        return
    short = Path(tempfile.mkdtemp(prefix="fgt-"))
    try:
        yield short
    finally:
        shutil.rmtree(short, ignore_errors=True)


# -- the plugin declaration --------------------------------------------------------------------------


def test_plugin_declares_grpc_without_importing_it() -> None:
    spec = transport_spec_of(GrpcTransport)
    assert spec.name == "grpc"
    assert spec.schemes == ("grpc", "http", "unix", "grpcs", "https")
    assert spec.capabilities.max_message_size == 256 * 1024 * 1024
    assert spec.capabilities.streaming and spec.capabilities.cross_process
    assert spec.capabilities.tls and spec.capabilities.auth  # grpcs:// and https://, mutual TLS
    assert spec.capabilities.bare_path_scheme == "unix" and spec.capabilities.local_schemes == ("unix",)
    assert spec.capabilities.security is not None and spec.capabilities.security.schemes == ("grpcs", "https")
    assert not spec.capabilities.deferred_replies  # gRPC's synchronous server holds a thread per call
    assert {"max_message_size", "default_timeout", "max_workers", "keepalive_time_ms"} <= spec.options
    assert spec.requires == ("grpcio",)
    entry_points = {ep.name: ep.value for ep in metadata.entry_points(group="flamepy.transports")}
    assert entry_points["grpc"] == "flamepy_transports.grpc.plugin:GrpcTransport"
    probe = "import sys, flamepy_transports.grpc.plugin; sys.exit(1 if 'grpc' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", probe], timeout=30).returncode == 0


def test_registry_builds_the_transport_and_checks_options(tmp_path: Path) -> None:
    registry = PluginRegistry(autoload=False)
    registry.register(GrpcTransport, name="grpc-under-test")
    built = registry.transport(f"unix://{tmp_path}/x.sock", default_timeout=1.0)
    assert isinstance(built, GrpcTransport)
    with pytest.raises(FlameError) as info:
        registry.transport("grpc", no_such_option=1)
    assert info.value.code == FlameErrorCode.INVALID_ARGUMENT
    with pytest.raises(FlameError) as info:
        registry.transport("grpc", max_message_size=2**31)
    assert info.value.code == FlameErrorCode.INVALID_ARGUMENT


# -- status mapping ----------------------------------------------------------------------------------


def test_every_grpc_status_code_is_mapped() -> None:
    assert set(GRPC_TO_FLAME) == set(grpc.StatusCode)
    expected = {
        grpc.StatusCode.NOT_FOUND: FlameErrorCode.NOT_FOUND,
        grpc.StatusCode.ALREADY_EXISTS: FlameErrorCode.ALREADY_EXISTS,
        grpc.StatusCode.INVALID_ARGUMENT: FlameErrorCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION: FlameErrorCode.INVALID_STATE,
        grpc.StatusCode.UNAVAILABLE: FlameErrorCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED: FlameErrorCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED: FlameErrorCode.UNIMPLEMENTED,
        grpc.StatusCode.RESOURCE_EXHAUSTED: FlameErrorCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.CANCELLED: FlameErrorCode.CANCELLED,
        grpc.StatusCode.UNAUTHENTICATED: FlameErrorCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED: FlameErrorCode.PERMISSION_DENIED,
    }
    for status in grpc.StatusCode:
        assert flame_code_for(status) == expected.get(status, FlameErrorCode.INTERNAL), status
    # With no status at all (a broken peer) the caller still gets a FlameError.
    assert error_from_status(None, None, None, endpoint="e", method="/m").code == FlameErrorCode.INTERNAL


def test_every_flame_code_has_flames_server_status() -> None:
    assert set(FLAME_TO_GRPC) == set(FlameErrorCode)
    # Flame's server mapping (reference §4), for the six codes Flame has: what Flame's clients expect.
    flame_rule = {
        FlameErrorCode.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
        FlameErrorCode.ALREADY_EXISTS: grpc.StatusCode.ALREADY_EXISTS,
        FlameErrorCode.INVALID_CONFIG: grpc.StatusCode.INVALID_ARGUMENT,
        FlameErrorCode.INVALID_STATE: grpc.StatusCode.INVALID_ARGUMENT,
        FlameErrorCode.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
        FlameErrorCode.INTERNAL: grpc.StatusCode.INTERNAL,
    }
    assert {code: FLAME_TO_GRPC[code] for code in flame_rule} == flame_rule
    # flamepy's transport codes keep their meaning on the wire: none is folded into INTERNAL or into a
    # status Flame's own codes use, and the two overload codes share RESOURCE_EXHAUSTED on purpose.
    ours = {code: FLAME_TO_GRPC[code] for code in FlameErrorCode if code not in flame_rule}
    assert not set(ours.values()) & set(flame_rule.values())
    assert ours[FlameErrorCode.MESSAGE_TOO_LARGE] == ours[FlameErrorCode.RESOURCE_EXHAUSTED]


@pytest.mark.parametrize("code", list(FlameErrorCode), ids=lambda c: c.name)
def test_flame_error_round_trips_and_plain_grpc_sees_flames_status(
    code: FlameErrorCode, channel: GrpcChannel, raw: grpc.Channel
) -> None:
    with pytest.raises(FlameError) as info:
        channel.unary("/test.Echo/Raise", str(int(code)).encode())
    assert info.value.code == code
    assert info.value.message == MESSAGE

    with pytest.raises(grpc.RpcError) as plain:
        raw.unary_unary("/test.Echo/Raise")(str(int(code)).encode(), timeout=5)
    assert plain.value.code() == FLAME_TO_GRPC[code]
    assert plain.value.details() == MESSAGE
    assert (ERROR_CODE_KEY, str(int(code))) in tuple(plain.value.trailing_metadata())


def test_stream_handler_error_round_trips(transport: GrpcTransport, channel: GrpcChannel) -> None:
    def failing(request: bytes, ctx: CallContext) -> Iterator[bytes]:
        yield b"one"
        raise FlameError(FlameErrorCode.INVALID_STATE, MESSAGE)

    srv = transport.serve("grpc://127.0.0.1:0", {"/t.S/Fail": StreamHandler(failing)})
    try:
        stream = transport.connect(srv.endpoint).stream("/t.S/Fail", b"")
        assert next(stream) == b"one"
        with pytest.raises(FlameError) as info:
            next(stream)
        assert (info.value.code, info.value.message) == (FlameErrorCode.INVALID_STATE, MESSAGE)
    finally:
        srv.stop()


@pytest.mark.parametrize("status", [s for s in grpc.StatusCode if s is not grpc.StatusCode.OK], ids=lambda s: s.name)
def test_a_foreign_servers_status_maps_without_the_trailer(status: grpc.StatusCode, transport: GrpcTransport) -> None:
    class Aborting(grpc.GenericRpcHandler):  # type: ignore[misc]
        def service(self, details: Any) -> Any:
            return grpc.unary_unary_rpc_method_handler(lambda req, ctx: ctx.abort(status, "from afar"))

    foreign = grpc.server(ThreadPoolExecutor(2), handlers=[Aborting()])
    port = foreign.add_insecure_port("127.0.0.1:0")
    foreign.start()
    channel = transport.connect(f"http://127.0.0.1:{port}")
    try:
        with pytest.raises(FlameError) as info:
            channel.unary("/flame.v1.Frontend/GetTask", b"", timeout=5)
        assert info.value.code == GRPC_TO_FLAME[status]
        assert f"127.0.0.1:{port}" in info.value.message
        assert "/flame.v1.Frontend/GetTask" in info.value.message
        assert "from afar" in info.value.message
    finally:
        channel.close()
        foreign.stop(None).wait(5)


def test_other_exceptions_become_internal_naming_the_type(channel: GrpcChannel) -> None:
    with pytest.raises(FlameError) as info:
        channel.unary("/test.Echo/Oops", b"")
    assert info.value.code == FlameErrorCode.INTERNAL
    assert "KeyError" in info.value.message and "missing-key" in info.value.message


def test_a_long_unicode_message_crosses_intact(transport: GrpcTransport) -> None:
    text = "ü🎉x" * 20_000  # far past gRPC's default 8 KiB of trailers

    def fail(request: bytes, ctx: CallContext) -> bytes:
        raise FlameError(FlameErrorCode.NOT_FOUND, text)

    srv = transport.serve("grpc://127.0.0.1:0", {"/t.L/Fail": UnaryHandler(fail)})
    try:
        with pytest.raises(FlameError) as info:
            transport.connect(srv.endpoint).unary("/t.L/Fail", b"")
        assert (info.value.code, info.value.message) == (FlameErrorCode.NOT_FOUND, text)
    finally:
        srv.stop()


def test_a_handler_marked_run_calls_on_runs_each_call_on_that_executor(transport: GrpcTransport) -> None:
    """``run_calls_on``: grpcio submits the whole call's routine to the named executor, not to its pool."""
    submitted: list[str] = []

    class Recording(ThreadPoolExecutor):
        def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
            submitted.append(threading.current_thread().name)
            return super().submit(fn, *args, **kwargs)

    executor = Recording(max_workers=1, thread_name_prefix="chosen")

    def where(request: bytes, ctx: CallContext) -> bytes:
        if request == b"fail":
            raise FlameError(FlameErrorCode.NOT_FOUND, "failed where it was sent")
        return threading.current_thread().name.encode()

    table: dict[str, Handler] = {
        "/t.W/Marked": UnaryHandler(run_calls_on(where, executor)),
        "/t.W/Plain": UnaryHandler(lambda request, ctx: threading.current_thread().name.encode()),
    }
    srv = transport.serve("grpc://127.0.0.1:0", table)
    ch = transport.connect(srv.endpoint)
    try:
        assert ch.unary("/t.W/Marked", b"").startswith(b"chosen")
        with pytest.raises(FlameError) as info:  # errors map as on any handler
            ch.unary("/t.W/Marked", b"fail")
        assert (info.value.code, info.value.message) == (FlameErrorCode.NOT_FOUND, "failed where it was sent")
        assert ch.unary("/t.W/Plain", b"").startswith(b"flamepy-grpc")
        assert len(submitted) == 2, submitted  # the two marked calls, submitted by grpcio's own thread
    finally:
        ch.close()
        srv.stop()
        executor.shutdown()


def test_unknown_method_is_unimplemented(channel: GrpcChannel, raw: grpc.Channel) -> None:
    with pytest.raises(FlameError) as info:
        channel.unary("/no.Such/Method", b"")
    assert info.value.code == FlameErrorCode.UNIMPLEMENTED
    assert "/no.Such/Method" in info.value.message and channel.endpoint in info.value.message
    with pytest.raises(FlameError) as info:
        list(channel.stream("/no.Such/Stream", b""))
    assert info.value.code == FlameErrorCode.UNIMPLEMENTED
    with pytest.raises(grpc.RpcError) as plain:
        raw.unary_unary("/no.Such/Method")(b"", timeout=5)
    assert plain.value.code() == grpc.StatusCode.UNIMPLEMENTED


# -- endpoints ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["grpc", "http"])
def test_port_zero_is_resolved_in_the_same_scheme(transport: GrpcTransport, scheme: str) -> None:
    srv = transport.serve(f"{scheme}://127.0.0.1:0", handlers())
    try:
        prefix = f"{scheme}://127.0.0.1:"
        assert srv.endpoint.startswith(prefix)
        port = int(srv.endpoint[len(prefix) :])
        assert port > 0
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
        assert transport.connect(srv.endpoint).unary("/test.Echo/Echo", b"hi") == b"hi"
    finally:
        srv.stop()


def test_unix_socket_endpoint(transport: GrpcTransport, sock_dir: Path) -> None:
    endpoint = f"unix://{sock_dir}/flame.sock"
    srv = transport.serve(endpoint, handlers())
    try:
        assert srv.endpoint == endpoint
        assert transport.connect(endpoint).unary("/test.Echo/Echo", b"over unix") == b"over unix"
        with grpc.insecure_channel(endpoint) as plain:
            assert plain.unary_unary("/test.Echo/Echo")(b"plain", timeout=5) == b"plain"
    finally:
        srv.stop()
    assert not (sock_dir / "flame.sock").exists()


@pytest.mark.parametrize(
    "endpoint", ["grpc://", "unix://relative/path.sock", "ftp://host:1", "grpc://host:notaport", "127.0.0.1:1"]
)
def test_bad_endpoints_are_named(transport: GrpcTransport, endpoint: str) -> None:
    with pytest.raises(FlameError) as info:
        transport.connect(endpoint)
    assert info.value.code == FlameErrorCode.INVALID_ARGUMENT
    assert endpoint in info.value.message


def test_a_flame_stub_lands_on_our_handler(transport: GrpcTransport) -> None:
    create_task = FRONTEND["CreateTask"]
    assert create_task.request is frontend_pb2.CreateTaskRequest and create_task.response is types_pb2.Task
    seen: list[frontend_pb2.CreateTaskRequest] = []

    def handle(request: bytes, ctx: CallContext) -> bytes:
        message = frontend_pb2.CreateTaskRequest.FromString(request)
        seen.append(message)
        task = types_pb2.Task()
        task.metadata.id = "7"
        task.spec.CopyFrom(message.task)
        return task.SerializeToString()

    srv = transport.serve("grpc://127.0.0.1:0", {create_task.path: UnaryHandler(handle)})
    try:
        with grpc.insecure_channel(srv.endpoint.removeprefix("grpc://")) as plain:
            # What a stub generated from Flame's frontend.proto does.
            stub = plain.unary_unary(
                "/flame.v1.Frontend/CreateTask",
                request_serializer=frontend_pb2.CreateTaskRequest.SerializeToString,
                response_deserializer=types_pb2.Task.FromString,
            )
            request = frontend_pb2.CreateTaskRequest()
            request.task.session_id = "s-1"
            request.task.input = b"\x00payload\xff"
            reply = stub(request, timeout=5)
        assert reply.metadata.id == "7"
        assert reply.spec.session_id == "s-1" and reply.spec.input == b"\x00payload\xff"
        assert seen[0].task.session_id == "s-1"
    finally:
        srv.stop()


def test_raw_bytes_pass_through_untouched(channel: GrpcChannel, raw: grpc.Channel) -> None:
    payload = bytes(range(256)) * 16
    assert raw.unary_unary("/test.Echo/Echo")(payload, timeout=5) == payload
    assert channel.unary("/test.Echo/Echo", payload) == payload
    assert channel.unary("/test.Echo/Echo", b"") == b""


def test_a_stale_socket_file_is_replaced(transport: GrpcTransport, sock_dir: Path) -> None:
    path = sock_dir / "stale.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))
    dead.close()  # the file stays, nobody listens: what a crashed server leaves behind
    assert path.exists()
    srv = transport.serve(f"unix://{path}", handlers())
    try:
        assert transport.connect(srv.endpoint).unary("/test.Echo/Echo", b"ok") == b"ok"
    finally:
        srv.stop()


def test_a_live_socket_or_a_plain_file_is_refused(transport: GrpcTransport, sock_dir: Path) -> None:
    live = transport.serve(f"unix://{sock_dir}/live.sock", handlers())
    try:
        with pytest.raises(FlameError) as info:
            transport.serve(f"unix://{sock_dir}/live.sock", handlers())
        assert info.value.code == FlameErrorCode.ALREADY_EXISTS
        assert "already listening" in info.value.message
        assert transport.connect(live.endpoint).unary("/test.Echo/Echo", b"still") == b"still"
    finally:
        live.stop()
    plain = sock_dir / "notes.txt"
    plain.write_text("keep me")
    with pytest.raises(FlameError) as info:
        transport.serve(f"unix://{plain}", handlers())
    assert info.value.code == FlameErrorCode.ALREADY_EXISTS and "not a socket" in info.value.message
    assert plain.read_text() == "keep me"


def test_a_port_in_use_is_a_clear_error(transport: GrpcTransport, server: GrpcServer) -> None:
    with pytest.raises(FlameError) as info:
        transport.serve(server.endpoint, handlers())  # a gRPC server holds it
    assert info.value.code == FlameErrorCode.ALREADY_EXISTS
    assert "already in use" in info.value.message and server.endpoint in info.value.message
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(FlameError) as info:
            transport.serve(f"grpc://127.0.0.1:{port}", handlers())
        assert info.value.code == FlameErrorCode.ALREADY_EXISTS


# -- message size ------------------------------------------------------------------------------------


def test_sizes_up_to_the_limit_pass_and_one_more_is_refused_before_sending(
    transport: GrpcTransport,
) -> None:
    arrived: list[int] = []

    def record(request: bytes, ctx: CallContext) -> bytes:
        arrived.append(len(request))
        return request

    srv = transport.serve("grpc://127.0.0.1:0", {"/t.Z/Echo": UnaryHandler(record)})
    try:
        channel = transport.connect(srv.endpoint)
        assert len(channel.unary("/t.Z/Echo", b"m" * LIMIT)) == LIMIT
        for call in (channel.unary, lambda m, r: list(channel.stream(m, r))):
            with pytest.raises(FlameError) as info:
                call("/t.Z/Echo", b"m" * (LIMIT + 1))
            assert info.value.code == FlameErrorCode.MESSAGE_TOO_LARGE
            assert str(LIMIT + 1) in info.value.message and str(LIMIT) in info.value.message
        assert arrived == [LIMIT]
    finally:
        srv.stop()


def test_a_response_too_large_is_message_too_large(channel: GrpcChannel) -> None:
    assert len(channel.unary("/test.Echo/Sized", str(LIMIT).encode())) == LIMIT
    with pytest.raises(FlameError) as info:
        channel.unary("/test.Echo/Sized", str(LIMIT + 1).encode())
    assert info.value.code == FlameErrorCode.MESSAGE_TOO_LARGE
    assert str(LIMIT + 1) in info.value.message


def test_a_peer_with_a_smaller_limit_gives_message_too_large(server: GrpcServer) -> None:
    roomy = GrpcTransport(max_message_size=4 * LIMIT, default_timeout=5.0)
    channel = roomy.connect(server.endpoint)
    with pytest.raises(FlameError) as info:  # the server refuses the request
        channel.unary("/test.Echo/Echo", b"x" * (2 * LIMIT))
    assert info.value.code == FlameErrorCode.MESSAGE_TOO_LARGE
    srv = roomy.serve("grpc://127.0.0.1:0", handlers())
    try:  # our client refuses the response
        small = GrpcTransport(max_message_size=LIMIT, default_timeout=5.0).connect(srv.endpoint)
        with pytest.raises(FlameError) as info:
            small.unary("/test.Echo/Sized", str(2 * LIMIT).encode())
        assert info.value.code == FlameErrorCode.MESSAGE_TOO_LARGE
    finally:
        srv.stop()


# -- deadlines and streams ---------------------------------------------------------------------------


def test_a_missed_deadline_leaves_the_server_healthy(channel: GrpcChannel) -> None:
    started = time.monotonic()
    with pytest.raises(FlameError) as info:
        channel.unary("/test.Echo/Slow", b"1.5", timeout=0.2)
    assert info.value.code == FlameErrorCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 1.0
    assert "/test.Echo/Slow" in info.value.message
    assert channel.unary("/test.Echo/Echo", b"fine", timeout=2) == b"fine"


def test_deadline_defaults_and_none(channel: GrpcChannel) -> None:
    assert channel.unary("/test.Echo/Remaining", b"", timeout=None) == b"None"
    default = float(channel.unary("/test.Echo/Remaining", b""))
    assert 4.0 < default <= 5.1  # the transport's default_timeout (gRPC rounds the header up)
    explicit = float(channel.unary("/test.Echo/Remaining", b"", timeout=2.0))
    assert 1.0 < explicit <= 2.1
    with pytest.raises(FlameError) as info:
        channel.unary("/test.Echo/Echo", b"", timeout=-1)
    assert info.value.code == FlameErrorCode.INVALID_ARGUMENT


def test_streams_keep_order_under_one_deadline(channel: GrpcChannel) -> None:
    assert list(channel.stream("/test.Echo/Count", b"50")) == [str(i).encode() for i in range(50)]
    got: list[bytes] = []
    started = time.monotonic()
    with pytest.raises(FlameError) as info:
        for item in channel.stream("/test.Echo/Tick", b"0.05", timeout=0.4):
            got.append(item)
    assert info.value.code == FlameErrorCode.DEADLINE_EXCEEDED
    assert 2 <= len(got) < 20
    assert time.monotonic() - started < 2.0


def _watch_stream(transport: GrpcTransport) -> tuple[GrpcServer, list[CallContext], threading.Event]:
    contexts: list[CallContext] = []
    started = threading.Event()

    def watch(request: bytes, ctx: CallContext) -> Iterator[bytes]:
        contexts.append(ctx)
        started.set()
        while True:
            yield b"tick"
            time.sleep(0.01)

    srv = transport.serve("grpc://127.0.0.1:0", {"/t.W/Watch": StreamHandler(watch)})
    return srv, contexts, started


def _until_inactive(ctx: CallContext, within: float = 5.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not ctx.is_active():
            return True
        time.sleep(0.01)
    return False


@pytest.mark.parametrize("how", ["close", "garbage-collect"])
def test_closing_a_stream_early_cancels_it_on_the_server(transport: GrpcTransport, how: str) -> None:
    srv, contexts, started = _watch_stream(transport)
    try:
        stream = transport.connect(srv.endpoint).stream("/t.W/Watch", b"", timeout=30)
        assert next(stream) == b"tick"
        assert started.wait(5)
        assert contexts[0].is_active()
        if how == "close":
            stream.close()
            assert list(stream) == []
        else:
            del stream
            gc.collect()
        assert _until_inactive(contexts[0]), "the server still thinks the caller is there"
    finally:
        srv.stop()


def test_a_stream_dropped_before_reading_is_cancelled(transport: GrpcTransport) -> None:
    srv, contexts, started = _watch_stream(transport)
    try:
        stream = transport.connect(srv.endpoint).stream("/t.W/Watch", b"", timeout=30)
        assert started.wait(5)
        del stream
        gc.collect()
        assert _until_inactive(contexts[0])
    finally:
        srv.stop()


def test_many_concurrent_callers(channel: GrpcChannel) -> None:
    def work(n: int) -> list[bytes]:
        return [channel.unary("/test.Echo/Echo", f"{n}-{i}".encode()) for i in range(20)]

    with ThreadPoolExecutor(32) as pool:
        results = list(pool.map(work, range(32), timeout=30))
    assert results == [[f"{n}-{i}".encode() for i in range(20)] for n in range(32)]


# -- lifecycle ---------------------------------------------------------------------------------------


def test_wait_ready(transport: GrpcTransport, server: GrpcServer) -> None:
    transport.connect(server.endpoint).wait_ready(5)
    with socket.socket() as spare:
        spare.bind(("127.0.0.1", 0))
        port = spare.getsockname()[1]  # bound, not listening: nothing will ever answer
        started = time.monotonic()
        with pytest.raises(FlameError) as info:
            transport.connect(f"grpc://127.0.0.1:{port}").wait_ready(0.3)
        assert info.value.code == FlameErrorCode.UNAVAILABLE and "not ready within 0.3 s" in info.value.message
        assert time.monotonic() - started < 2.0


def test_close_is_idempotent_and_final(transport: GrpcTransport, server: GrpcServer) -> None:
    channel = transport.connect(server.endpoint)
    assert channel.unary("/test.Echo/Echo", b"x") == b"x"
    channel.close()
    channel.close()
    for call in (channel.unary, channel.stream):
        with pytest.raises(FlameError) as info:
            call("/test.Echo/Echo", b"x")
        assert info.value.code == FlameErrorCode.UNAVAILABLE and "channel is closed" in info.value.message
    server.stop()
    server.stop()


@pytest.mark.parametrize("kind", ["tcp", "unix"])
def test_stopped_server_is_unavailable_promptly_and_a_restart_is_reached_again(
    transport: GrpcTransport, sock_dir: Path, kind: str
) -> None:
    endpoint = "grpc://127.0.0.1:0" if kind == "tcp" else f"unix://{sock_dir}/restart.sock"
    srv = transport.serve(endpoint, handlers())
    endpoint = srv.endpoint
    channel = transport.connect(endpoint)
    assert channel.unary("/test.Echo/Echo", b"one") == b"one"
    srv.stop(grace=0.5)
    for _ in range(3):
        started = time.monotonic()
        with pytest.raises(FlameError) as info:
            channel.unary("/test.Echo/Echo", b"two", timeout=10)
        assert info.value.code == FlameErrorCode.UNAVAILABLE
        assert time.monotonic() - started < 2.0
        assert endpoint in info.value.message
    srv = transport.serve(endpoint, handlers())  # same endpoint, same channel
    try:
        deadline = time.monotonic() + 1.5
        while True:
            try:
                assert channel.unary("/test.Echo/Echo", b"three", timeout=1) == b"three"
                break
            except FlameError as exc:
                if exc.code != FlameErrorCode.UNAVAILABLE or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        assert list(channel.stream("/test.Echo/Count", b"3")) == [b"0", b"1", b"2"]
    finally:
        srv.stop()
        channel.close()


def test_stop_with_a_call_running_ends_it_with_unavailable(transport: GrpcTransport) -> None:
    srv = transport.serve("grpc://127.0.0.1:0", handlers())
    channel = transport.connect(srv.endpoint)
    threading.Timer(0.2, srv.stop).start()
    started = time.monotonic()
    with pytest.raises(FlameError) as info:
        channel.unary("/test.Echo/Slow", b"3", timeout=10)
    assert info.value.code == FlameErrorCode.UNAVAILABLE
    assert time.monotonic() - started < 2.0


# -- unary_async: grpcio's own future() ----------------------------------------------------------------


def _failure(call: Any) -> tuple[int, str]:
    try:
        call()
    except FlameError as exc:
        return exc.code, exc.message
    raise AssertionError("the call did not fail")


@pytest.mark.parametrize(
    ("method", "request_bytes", "timeout"),
    [
        ("/test.Echo/Raise", b"%d" % FlameErrorCode.NOT_FOUND, 5.0),
        ("/test.Echo/Raise", b"%d" % FlameErrorCode.ALREADY_EXISTS, 5.0),
        ("/test.Echo/Oops", b"", 5.0),
        ("/test.Echo/Missing", b"", 5.0),
        ("/test.Echo/Slow", b"2", 0.2),
        ("/test.Echo/Sized", b"%d" % (LIMIT + 1), 5.0),
        ("/test.Echo/Echo", b"r" * (LIMIT + 1), 5.0),
    ],
    ids=["flame-error", "another-code", "other-exception", "unimplemented", "deadline", "large-reply", "large-request"],
)
def test_unary_async_fails_exactly_as_unary_does(
    channel: GrpcChannel, method: str, request_bytes: bytes, timeout: float
) -> None:
    """The future's error is the FlameError the blocking call raises: same code, same message."""
    expected = _failure(lambda: channel.unary(method, request_bytes, timeout=timeout))
    future = channel.unary_async(method, request_bytes, timeout=timeout)
    error = future.exception(timeout=10)
    assert isinstance(error, FlameError), repr(error)
    assert (error.code, error.message) == expected


def test_unary_async_completes_on_grpcs_thread_and_cannot_be_cancelled(channel: GrpcChannel) -> None:
    """No thread of ours waits: the callback runs on grpcio's completion thread, never the caller's."""
    seen: list[str] = []
    done = threading.Event()
    future = channel.unary_async("/test.Echo/Slow", b"0.2", timeout=5)
    assert not future.cancel(), "a call on the wire cannot be cancelled by its future"
    future.add_done_callback(lambda f: (seen.append(threading.current_thread().name), done.set()))
    assert done.wait(10) and future.result() == b"late"
    assert seen != [threading.current_thread().name]
    assert not any(t.name.startswith("flamepy-async-call") for t in threading.enumerate()), "the kit's pool ran it"


def test_unary_async_on_a_closed_channel_and_one_closed_under_it(transport: GrpcTransport, server: GrpcServer) -> None:
    channel = transport.connect(server.endpoint)
    running = channel.unary_async("/test.Echo/Slow", b"3", timeout=10)
    time.sleep(0.2)
    started = time.monotonic()
    channel.close()
    error = running.exception(timeout=5)
    assert time.monotonic() - started < 2.0
    assert isinstance(error, FlameError) and error.code == FlameErrorCode.UNAVAILABLE, repr(error)
    assert "channel is closed" in error.message
    later = channel.unary_async("/test.Echo/Echo", b"x").exception(timeout=5)
    assert isinstance(later, FlameError) and later.code == FlameErrorCode.UNAVAILABLE, repr(later)
    assert "channel is closed" in later.message


def test_unary_async_reaches_a_restarted_server_at_once(transport: GrpcTransport, sock_dir: Path) -> None:
    """An UNAVAILABLE future retires the connection as the blocking call does: the next call dials afresh."""
    endpoint = f"unix://{sock_dir}/async-restart.sock"
    srv = transport.serve(endpoint, handlers())
    channel = transport.connect(endpoint)
    try:
        assert channel.unary_async("/test.Echo/Echo", b"one").result(timeout=5) == b"one"
        srv.stop(grace=0.5)
        error = channel.unary_async("/test.Echo/Echo", b"two", timeout=10).exception(timeout=5)
        assert isinstance(error, FlameError) and error.code == FlameErrorCode.UNAVAILABLE, repr(error)
        assert endpoint in error.message
        srv = transport.serve(endpoint, handlers())
        # Well inside gRPC's reconnect back-off (100 ms, doubling): only a fresh connection answers this soon.
        assert channel.unary_async("/test.Echo/Echo", b"three", timeout=1).result(timeout=5) == b"three"
    finally:
        srv.stop()
        channel.close()


def _completion_thread(channel: GrpcChannel) -> threading.Thread:
    """The thread that completed one unary_async call of ``channel`` (slow enough to be watched)."""
    seen: list[threading.Thread] = []
    done = threading.Event()
    future = channel.unary_async("/test.Echo/Slow", b"0.05", timeout=5)
    future.add_done_callback(lambda f: (seen.append(threading.current_thread()), done.set()))
    assert done.wait(10) and future.result() == b"late"
    assert seen[0] is not threading.current_thread(), "the call was over before its callback was added"
    return seen[0]


def test_one_completion_thread_serves_calls_made_one_at_a_time(channel: GrpcChannel) -> None:
    """grpcio would start (and end) a thread per call when none overlap: the channel keeps one."""
    threads = [_completion_thread(channel) for _ in range(20)]  # all held: no thread object is reused
    assert len({id(t) for t in threads}) == 1, f"{len({id(t) for t in threads})} threads for 20 calls"
    assert threads[0].is_alive()


@contextlib.contextmanager
def _no_thread_errors() -> Iterator[None]:
    """Fail the test if any thread ends with an exception while the block runs (grpcio's own included)."""
    errors: list[Any] = []
    previous = threading.excepthook
    threading.excepthook = errors.append
    try:
        yield
    finally:
        threading.excepthook = previous
    assert errors == [], f"a thread ended with an error: {errors[0].exc_value!r}"


@pytest.mark.parametrize("how", ["close", "drop"])
def test_the_kept_completion_thread_ends_quietly_with_its_channel(
    transport: GrpcTransport, server: GrpcServer, how: str
) -> None:
    with _no_thread_errors():
        channel = transport.connect(server.endpoint)
        thread = _completion_thread(channel)
        if how == "close":
            channel.close()
        else:
            del channel
            gc.collect()
        thread.join(5)
        assert not thread.is_alive(), "grpcio's completion thread outlived its channel"


class _ReleaseCompletesFirst:
    """A grpc channel whose first release call has completed, and been counted down, before it returns.

    That is the order a busy machine can give: the short call answered and grpcio's completion thread
    counted it before the channel looked at the count again.
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.raced = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def unary_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
        call = self.inner.unary_unary(method, *args, **kwargs)
        if method != _RELEASE or self.raced:
            return call
        self.raced = True
        state = self.inner._call_state

        class Completed:
            def future(self, *args: Any, **kwargs: Any) -> Any:
                future = call.future(*args, **kwargs)
                future.exception(timeout=5)
                deadline = time.monotonic() + 5
                while state.managed_calls > 1 and time.monotonic() < deadline:
                    time.sleep(0.001)  # the completion thread counts the call down just after its callbacks
                assert state.managed_calls == 1, "the release call was not counted down"
                return future

        return Completed()


def test_the_kept_completion_thread_ends_quietly_when_the_release_call_completes_first(
    transport: GrpcTransport, server: GrpcServer
) -> None:
    with _no_thread_errors():
        channel = transport.connect(server.endpoint)
        thread = _completion_thread(channel)
        link = channel._link  # type: ignore[attr-defined]
        link.channel = _ReleaseCompletesFirst(link.channel)
        channel.close()
        thread.join(5)
        assert not thread.is_alive(), "grpcio's completion thread outlived its channel"


def test_a_retired_connection_lets_its_completion_thread_go(transport: GrpcTransport, sock_dir: Path) -> None:
    endpoint = f"unix://{sock_dir}/retire.sock"
    srv = transport.serve(endpoint, handlers())
    channel = transport.connect(endpoint)
    try:
        thread = _completion_thread(channel)
        srv.stop(grace=0.5)
        error = channel.unary_async("/test.Echo/Echo", b"", timeout=5).exception(timeout=5)
        assert isinstance(error, FlameError) and error.code == FlameErrorCode.UNAVAILABLE, repr(error)
        thread.join(5)
        assert not thread.is_alive(), "the dropped connection kept its completion thread"
    finally:
        channel.close()


# -- fork ------------------------------------------------------------------------------------------

# gRPC runs its fork handlers only when no other thread is inside gRPC at that moment, and a process
# running a gRPC server always has one. So, as gRPC's doc/fork_support.md advises, forking is exercised
# from a pure client: the server runs in its own process, and the forking parent is a fresh process too
# (the pytest process may hold servers of other tests).
REMOTE_SERVER = """
import sys
from flamepy_core.contracts import StreamHandler, UnaryHandler
from flamepy_transports.grpc.plugin import GrpcTransport

def count(request, ctx):
    for i in range(int(request)):
        yield str(i).encode()

server = GrpcTransport().serve(sys.argv[1], {
    "/test.Echo/Echo": UnaryHandler(lambda request, ctx: request),
    "/test.Echo/Count": StreamHandler(count),
})
print(server.endpoint, flush=True)
sys.stdin.read()  # serve until the test closes our stdin
server.stop()
"""

FORKING_CLIENT = """
import multiprocessing, os, sys
from flamepy_transports.grpc.plugin import GrpcTransport

channel = GrpcTransport(default_timeout=5).connect(sys.argv[1])
parent_link = channel._link
if channel.unary("/test.Echo/Echo", b"before") != b"before":  # the parent's connection is live
    sys.exit(10)

def child():
    try:
        if channel.unary("/test.Echo/Echo", b"from child") != b"from child":
            sys.exit(2)
        if list(channel.stream("/test.Echo/Count", b"3")) != [b"0", b"1", b"2"]:
            sys.exit(3)
        if channel._link is parent_link or channel._link.pid != os.getpid():
            sys.exit(4)  # it must run on a gRPC channel of its own process
        channel.close()  # closes the child's own gRPC channel only
    except Exception as exc:
        print(f"forked child failed: {exc!r}", file=sys.stderr, flush=True)
        sys.exit(5)
    sys.exit(0)

context = multiprocessing.get_context("fork")
for _ in range(8):
    process = context.Process(target=child, daemon=True)
    process.start()
    process.join(20)
    if process.is_alive():
        process.kill()
        process.join(5)
        sys.exit(20)
    if process.exitcode != 0:
        sys.exit(30 + process.exitcode)

# The children neither closed nor broke the parent's channel.
if channel._link is not parent_link or channel.unary("/test.Echo/Echo", b"after") != b"after":
    sys.exit(11)
if list(channel.stream("/test.Echo/Count", b"2")) != [b"0", b"1"]:
    sys.exit(12)
sys.exit(0)
"""


@pytest.fixture
def remote_endpoint(sock_dir: Path) -> Iterator[str]:
    """A gRPC server of ours in another process, on a unix socket."""
    proc = subprocess.Popen(
        [sys.executable, "-c", REMOTE_SERVER, f"unix://{sock_dir}/remote.sock"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        assert ready, "the server process did not start within 30 s"
        yield proc.stdout.readline().strip()
    finally:
        proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def test_forked_children_use_the_parents_channel(remote_endpoint: str) -> None:
    """Exit codes: 10-12 the parent's own calls, 20 a child hung, 30+N a child exited with N."""
    result = subprocess.run(
        [sys.executable, "-c", FORKING_CLIENT, remote_endpoint], capture_output=True, text=True, timeout=90
    )
    assert result.returncode == 0, f"exit status {result.returncode}; stderr:\n{result.stderr[-3000:]}"


def _child_uses_server(server: GrpcServer, parent_pid: int) -> None:
    try:
        server.stop()
    except FlameError as exc:
        named = f"process {parent_pid}" in exc.message and f"process {os.getpid()}" in exc.message
        sys.exit(0 if exc.code == FlameErrorCode.INVALID_STATE and named else 2)
    sys.exit(3)


def test_a_server_refuses_use_from_a_forked_child(transport: GrpcTransport) -> None:
    server = transport.serve("grpc://127.0.0.1:0", handlers())
    server.stop()  # the child never reaches gRPC: the pid check comes first
    context = multiprocessing.get_context("fork")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # "fork() with threads" on newer Pythons
        child = context.Process(target=_child_uses_server, args=(server, os.getpid()), daemon=True)
        child.start()
    child.join(timeout=20)
    if child.is_alive():
        child.kill()
        child.join(timeout=5)
    assert child.exitcode == 0, f"the forked child exited with {child.exitcode}"
    server.stop()  # still the parent's to stop (idempotent)
