"""Which link the server uses to reach an instance.

A service written for Flame (here: a bare grpcio server, no flamepy runtime) listens on the bare unix
path in FLAME_INSTANCE_ENDPOINT and must be served over gRPC, as Flame's executors do; a service written
with this SDK takes the faster link offered in FLAMEPY_INSTANCE_ENDPOINT.
"""

from __future__ import annotations

from conftest import FlameEnv

FLAME_STYLE_SERVICE = """
import os, threading
from concurrent.futures import ThreadPoolExecutor
import grpc
from flamepy_core.wire.proto import shim_pb2, types_pb2

def enter(data, ctx):
    shim_pb2.SessionContext.FromString(data)
    return types_pb2.Result(return_code=0).SerializeToString()

def invoke(data, ctx):
    task = shim_pb2.TaskContext.FromString(data)
    return types_pb2.TaskResult(return_code=0, output=b"raw:" + task.input).SerializeToString()

def leave(data, ctx):
    return types_pb2.Result(return_code=0).SerializeToString()

handlers = {name: grpc.unary_unary_rpc_method_handler(fn) for name, fn in
            (("OnSessionEnter", enter), ("OnTaskInvoke", invoke), ("OnSessionLeave", leave))}
server = grpc.server(ThreadPoolExecutor(4))
server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("flame.v1.Instance", handlers),))
path = os.environ["FLAME_INSTANCE_ENDPOINT"]
assert "://" not in path, path
server.add_insecure_port("unix://" + path)
server.start()
threading.Event().wait()
"""

SDK_SERVICE = """
import os
from flamepy import service

ins = service.FlameInstance()

@ins.entrypoint
def which():
    fast = os.environ.get("FLAMEPY_INSTANCE_ENDPOINT", "")
    return fast, os.path.exists(fast.split("://", 1)[-1]), os.environ["FLAME_INSTANCE_ENDPOINT"]

if __name__ == "__main__":
    ins.run()
"""


def test_a_flame_style_service_is_reached_over_grpc_on_the_bare_path(flame_env: FlameEnv) -> None:
    flame_env.write_service("rawgrpc", FLAME_STYLE_SERVICE)
    out = flame_env.python(
        """
        import flamepy
        s = flamepy.create_session("rawgrpc")
        print(s.invoke(b"abc"))
        s.close()
        """
    )
    assert out.stdout.strip() == "b'raw:abc'"


def test_an_sdk_service_takes_the_fast_link(flame_env: FlameEnv) -> None:
    flame_env.write_service("sdk", SDK_SERVICE)
    out = flame_env.python(
        """
        from flamepy.service import Session
        with Session("sdk") as s:
            print(repr(s.invoke()))
        """
    )
    fast, exists, compat = eval(out.stdout.strip())
    assert fast.startswith("uds://") and exists, out.stdout
    assert compat.startswith("/") and "://" not in compat, "FLAME_INSTANCE_ENDPOINT stays a bare path"
