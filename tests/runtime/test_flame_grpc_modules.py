"""``flamepy.proto``'s gRPC modules and ``FlameInstanceServicer``/``FlameInstanceServer``, over real gRPC.

Code written against Flame's SDK drives these directly: a stub on a ``grpc`` channel, a servicer added
to its own ``grpc.server``. Each test uses real sockets in a private folder.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from flamepy.core import FlameInstanceServer, FlameInstanceServicer, FlameService, SessionContext, TaskContext
from flamepy.proto import frontend_pb2, frontend_pb2_grpc, shim_pb2, shim_pb2_grpc, types_pb2


class Upper(FlameService):
    def __init__(self) -> None:
        self.entered: list[str] = []

    def on_session_enter(self, context: SessionContext) -> None:
        if context.common_data() == b"refuse":
            raise RuntimeError("this session is refused")
        self.entered.append(context.session_id)

    def on_task_invoke(self, context: TaskContext) -> bytes | None:
        if context.input == b"boom":
            raise ValueError("boom was asked for")
        return None if context.input is None else context.input.upper()


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="fg-", dir="/tmp") as folder:
        yield Path(folder)


def _exercise(stub: shim_pb2_grpc.InstanceStub, service: Upper) -> None:
    ctx = shim_pb2.SessionContext(session_id="s-1")
    ctx.application.name = "upper"
    assert stub.OnSessionEnter(ctx, timeout=10).return_code == 0
    assert service.entered == ["s-1"]
    refused = shim_pb2.SessionContext(session_id="s-2", common_data=b"refuse")
    result = stub.OnSessionEnter(refused, timeout=10)
    assert result.return_code == -1 and "this session is refused" in result.message
    done = stub.OnTaskInvoke(shim_pb2.TaskContext(task_id="1", session_id="s-1", input=b"abc"), timeout=10)
    assert (done.return_code, done.output) == (0, b"ABC")
    empty = stub.OnTaskInvoke(shim_pb2.TaskContext(task_id="2", session_id="s-1"), timeout=10)
    assert empty.return_code == 0 and not empty.HasField("output")
    failed = stub.OnTaskInvoke(shim_pb2.TaskContext(task_id="3", session_id="s-1", input=b"boom"), timeout=10)
    assert failed.return_code == -1 and "ValueError: boom was asked for" in failed.message
    assert stub.OnSessionLeave(types_pb2.EmptyRequest(), timeout=10).return_code == 0


def test_servicer_on_a_grpc_server_of_its_own(socket_dir: Path) -> None:
    service = Upper()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    shim_pb2_grpc.add_InstanceServicer_to_server(FlameInstanceServicer(service), server)
    address = f"unix://{socket_dir}/servicer.sock"
    server.add_insecure_port(address)
    server.start()
    try:
        with grpc.insecure_channel(address) as channel:
            _exercise(shim_pb2_grpc.InstanceStub(channel), service)
    finally:
        server.stop(grace=None)


def test_instance_server_serves_the_executor_socket(socket_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = socket_dir / "executor.sock"
    monkeypatch.setenv("FLAME_INSTANCE_ENDPOINT", str(path))  # a bare path, as Flame's executors pass it
    service = Upper()
    server = FlameInstanceServer(service)
    server.start()
    try:
        assert path.exists()
        with grpc.insecure_channel(f"unix://{path}") as channel:
            _exercise(shim_pb2_grpc.InstanceStub(channel), service)
    finally:
        server.stop()
    assert server.bound_endpoint is None


def test_instance_server_without_an_endpoint_says_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLAME_INSTANCE_ENDPOINT", raising=False)
    with pytest.raises(Exception, match="FLAME_INSTANCE_ENDPOINT not found"):
        FlameInstanceServer(Upper()).start()


def test_unimplemented_servicer_answers_unimplemented(socket_dir: Path) -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    frontend_pb2_grpc.add_FrontendServicer_to_server(frontend_pb2_grpc.FrontendServicer(), server)
    address = f"unix://{socket_dir}/frontend.sock"
    server.add_insecure_port(address)
    server.start()
    try:
        with grpc.insecure_channel(address) as channel:
            stub = frontend_pb2_grpc.FrontendStub(channel)
            with pytest.raises(grpc.RpcError) as err:
                stub.ListApplication(frontend_pb2.ListApplicationRequest(), timeout=10)
            assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        server.stop(grace=None)


@pytest.mark.parametrize("flame_env", ["grpc"], indirect=True)
def test_frontend_stub_against_a_flamepy_server(flame_env) -> None:  # type: ignore[no-untyped-def]
    import flamepy
    from flamepy_core.client.local import live_server

    flamepy.list_applications()  # starts the local server (gRPC on a unix socket in FLAME_HOME)
    info = live_server(flame_env.home)
    assert info is not None and str(info["endpoint"]).startswith("unix://")
    with grpc.insecure_channel(str(info["endpoint"])) as channel:
        stub = frontend_pb2_grpc.FrontendStub(channel)
        spec = types_pb2.ApplicationSpec(command="/bin/true", description="via the stub")
        result = stub.RegisterApplication(frontend_pb2.RegisterApplicationRequest(name="stubbed", application=spec))
        assert result.return_code == 0
        app = stub.GetApplication(frontend_pb2.GetApplicationRequest(name="stubbed"), timeout=10)
        assert app.spec.description == "via the stub"
        names = [a.metadata.name for a in stub.ListApplication(frontend_pb2.ListApplicationRequest()).applications]
        assert "stubbed" in names
    assert flamepy.get_application("stubbed").description == "via the stub"
