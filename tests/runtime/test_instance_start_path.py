"""A service process's start path imports only what serving needs.

An instance's cold start is mostly imports. Started by the runtime (which names its transport's class in
``FLAMEPY_INSTANCE_TRANSPORTS`` and passes a readiness pipe), a service built on ``flamepy.run`` must
serve and answer its first task without the plugin registry (pluggy, the entry-point scan), protobuf
(the hand-written ``flame.v1.Instance`` messages replace it), the configuration module, the kit's framed
base, or pyzmq's CURVE helpers. A real process is started here as the runtime starts one, called over
a real ZeroMQ socket, and asked which of those it has loaded.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
from pathlib import Path

from flamepy_core.engine.executor import class_path
from flamepy_core.plugins import get_registry
from flamepy_core.wire.payload_messages import ON_SESSION_ENTER, ON_TASK_INVOKE, task_context
from flamepy_core.wire.proto import shim_pb2
from flamepy_core.wire.proto import types_pb2 as pb

NOT_ON_THE_START_PATH = (
    "pluggy",
    "google.protobuf",
    "importlib.metadata",
    "flamepy_core.plugins",
    "flamepy_core.config",
    "flamepy_core.wire.proto",
    "flamepy_core.wire.methods",
    "flamepy_core.kit.framed",
    "flamepy_core.kit.links",
    "flamepy_core.instance.servers",
    "flamepy_core.client.session",
    "zmq.auth",
    "grpc",
    "yaml",
)

SERVICE = f"""
import json, sys
import flamepy

class Loaded(flamepy.FlameService):
    def on_session_enter(self, context):
        self.app = context.application.name

    def on_task_invoke(self, context):
        loaded = [m for m in {NOT_ON_THE_START_PATH!r} if m in sys.modules]
        return json.dumps({{"app": self.app, "input": context.input.decode(), "loaded": loaded}}).encode()

if __name__ == "__main__":
    flamepy.run(Loaded())
"""


def test_a_service_serves_its_first_task_without_the_registry_protobuf_or_config(tmp_path: Path) -> None:
    registry = get_registry()
    endpoint = f"zmq+ipc://{tmp_path}/instance.ipc"
    transport = registry.transport(endpoint)
    script = tmp_path / "service.py"
    script.write_text(SERVICE)
    ready_read, ready_write = os.pipe()
    env = {
        **os.environ,
        "FLAME_INSTANCE_ENDPOINT": endpoint,
        "FLAMEPY_INSTANCE_TRANSPORTS": class_path(transport),
        "FLAMEPY_READY_FD": str(ready_write),
        "FLAMEPY_HEARTBEAT_INTERVAL": "0",
    }
    for name in ("FLAMEPY_INSTANCE_ENDPOINT", "FLAME_MAX_MESSAGE_SIZE"):
        env.pop(name, None)
    process = subprocess.Popen([sys.executable, str(script)], env=env, pass_fds=(ready_write,), stderr=subprocess.PIPE)
    os.close(ready_write)
    channel = None
    try:
        readable, _, _ = select.select([ready_read], [], [], 60)
        assert readable, "the service did not signal readiness within 60 s"
        assert os.read(ready_read, 1) == b"1", "the readiness pipe closed without the byte: the service failed"
        channel = transport.connect(endpoint)
        context = shim_pb2.SessionContext(session_id="s1")
        context.application.name = "start-path"
        assert pb.Result.FromString(channel.unary(ON_SESSION_ENTER, context.SerializeToString(), 30)).return_code == 0
        reply = pb.TaskResult.FromString(channel.unary(ON_TASK_INVOKE, task_context("1", "s1", b"hello"), 30))
        assert reply.return_code == 0, reply.message
        answer = json.loads(reply.output)
        assert answer["app"] == "start-path" and answer["input"] == "hello"
        assert answer["loaded"] == [], f"loaded on a service's start path: {answer['loaded']}"
    finally:
        if channel is not None:
            channel.close()
        os.close(ready_read)
        process.send_signal(signal.SIGTERM)
        _out, err = process.communicate(timeout=30)
    assert process.returncode == -signal.SIGTERM, err.decode(errors="replace")
