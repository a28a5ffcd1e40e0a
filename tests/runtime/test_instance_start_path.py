"""A service process's start path imports only what serving needs.

An instance's cold start is mostly imports. Started by the runtime (which names its transport's class in
``FLAMEPY_INSTANCE_TRANSPORTS``, its serializer's in ``FLAMEPY_INSTANCE_SERIALIZER``, and passes a
readiness pipe), a service built on ``flamepy.run`` must serve and answer its first task without the
plugin registry (pluggy, the entry-point scan), protobuf (the hand-written ``flame.v1.Instance`` messages
replace it), the configuration module, the kit's framed base, or pyzmq's CURVE helpers; a typed service
(``FlameInstance``) without the registry, pluggy or the entry-point scan either. A real process is started
here as the runtime starts one, called over a real socket of each local link (uds, the default, whose link
is the kit's framed base over a unix socket, so those are on its path; and ZeroMQ), and asked which of those
it has loaded.
A hint that is not a serializer class is refused with an error naming it.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import cloudpickle
import pytest
from conftest import FlameEnv, start_service_as_runtime

from flamepy_core.contracts.errors import FlameError, FlameErrorCode
from flamepy_core.engine.executor import ENV_INSTANCE_SERIALIZER, class_path
from flamepy_core.plugin_classes import SERIALIZER_HINT_ENV, serializer_of_class
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
    "flamepy_transports.zmq.auth",
    "flamepy_core.contracts.serializer",
    "socket",
    "glob",
    "grpc",
    "yaml",
)

NOT_ON_A_TYPED_START_PATH = (
    "pluggy",
    "importlib.metadata",
    "flamepy_core.plugins",
    "google.protobuf",
    "flamepy_core.wire.proto",
    "flamepy_core.client.session",
    "grpc",
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


TYPED_SERVICE = f"""
import sys
from flamepy import service

ins = service.FlameInstance()

@ins.entrypoint
def report(req):
    loaded = [m for m in {NOT_ON_A_TYPED_START_PATH!r} if m in sys.modules]
    return {{"input": req, "loaded": loaded, "serializer": type(ins.serializer).__qualname__}}

if __name__ == "__main__":
    ins.run()
"""

CLOUDPICKLE_CLASS = "flamepy_serializers.cloudpickle.serializer:CloudpickleSerializer"

LINKS = ("uds", "zmq")
THE_LINK_ITSELF = {
    "uds": {"flamepy_core.kit.framed", "flamepy_core.kit.links", "socket"},  # the uds link is the kit over a socket
    "zmq": set(),
}
"""Of the modules kept off the start path, those a link's own transport is made of."""


def first_answer(
    tmp_path: Path, code: str, payload: bytes, env_extra: dict[str, str] | None = None, link: str = "uds"
) -> pb.TaskResult:
    """Start ``code`` as the runtime starts a service linked with ``link``, enter a session, run one task:
    its reply."""
    transport = get_registry().transport(link)
    endpoint = transport.local_endpoint(str(tmp_path), "instance")
    process = start_service_as_runtime(
        tmp_path,
        code,
        endpoint,
        class_path(transport),
        env_extra=env_extra,
        unset=("FLAME_MAX_MESSAGE_SIZE", "FLAME_SERIALIZER"),
    )
    channel = None
    try:
        channel = transport.connect(endpoint)
        context = shim_pb2.SessionContext(session_id="s1")
        context.application.name = "start-path"
        assert pb.Result.FromString(channel.unary(ON_SESSION_ENTER, context.SerializeToString(), 30)).return_code == 0
        return pb.TaskResult.FromString(channel.unary(ON_TASK_INVOKE, task_context("1", "s1", payload), 30))
    finally:
        if channel is not None:
            channel.close()
        process.send_signal(signal.SIGTERM)
        _out, err = process.communicate(timeout=30)
        assert process.returncode == -signal.SIGTERM, err.decode(errors="replace")


@pytest.mark.parametrize("link", LINKS)
def test_a_service_serves_its_first_task_without_the_registry_protobuf_or_config(tmp_path: Path, link: str) -> None:
    reply = first_answer(tmp_path, SERVICE, b"hello", link=link)
    assert reply.return_code == 0, reply.message
    answer = json.loads(reply.output)
    assert answer["app"] == "start-path" and answer["input"] == "hello"
    extra = set(answer["loaded"]) - THE_LINK_ITSELF[link]
    assert not extra, f"loaded on a service's start path over {link}: {sorted(extra)}"


@pytest.mark.parametrize("link", LINKS)
def test_a_typed_service_answers_its_first_task_without_the_registry(tmp_path: Path, link: str) -> None:
    reply = first_answer(
        tmp_path, TYPED_SERVICE, cloudpickle.dumps({"x": 1}), {ENV_INSTANCE_SERIALIZER: CLOUDPICKLE_CLASS}, link
    )
    assert reply.return_code == 0, reply.message
    answer = cloudpickle.loads(reply.output)
    assert answer["input"] == {"x": 1} and answer["serializer"] == "CloudpickleSerializer"
    assert answer["loaded"] == [], f"loaded on a typed service's start path: {answer['loaded']}"


def test_without_a_hint_a_typed_service_finds_its_serializer_in_the_registry(tmp_path: Path) -> None:
    reply = first_answer(tmp_path, TYPED_SERVICE, cloudpickle.dumps("plain"))
    assert reply.return_code == 0, reply.message
    answer = cloudpickle.loads(reply.output)
    assert answer["input"] == "plain" and answer["serializer"] == "CloudpickleSerializer"
    assert "flamepy_core.plugins" in answer["loaded"], "without a hint the registry is what finds the serializer"


@pytest.mark.parametrize(
    ("hint", "complaint"),
    [
        ("cloudpickle", "is not a class as module:Class"),
        ("json:JSONDecoder", "JSONDecoder lacks `name` and `domain`"),
        ("json:no_such_name", "no attribute 'no_such_name'"),
        ("json:dumps", "names a function, not a serializer class"),
    ],
)
def test_a_bad_serializer_hint_fails_the_task_naming_it(tmp_path: Path, hint: str, complaint: str) -> None:
    reply = first_answer(tmp_path, TYPED_SERVICE, cloudpickle.dumps(1), {ENV_INSTANCE_SERIALIZER: hint})
    assert reply.return_code != 0
    assert f"{SERIALIZER_HINT_ENV}={hint!r}" in reply.message and complaint in reply.message, reply.message
    assert "unset it" in reply.message, reply.message


def test_a_hint_for_another_serializer_or_not_installed_here_defers_to_the_registry() -> None:
    assert serializer_of_class(CLOUDPICKLE_CLASS, "json") is None  # the service chose json: not this class
    assert serializer_of_class("no_such_package.serializer:Thing", "cloudpickle") is None
    built = serializer_of_class(CLOUDPICKLE_CLASS, "cloudpickle")
    assert built is not None and built.name == "cloudpickle" and built.loads(built.dumps([1, "a"])) == [1, "a"]
    with pytest.raises(FlameError) as caught:
        serializer_of_class("flamepy_core.plugin_classes:", "cloudpickle")
    assert caught.value.code == FlameErrorCode.INVALID_CONFIG


def test_every_bundled_serializer_declares_the_class_it_loads() -> None:
    """The runtime hints ``factory_path``; it must be the very class ``load`` returns, or the hint lies."""
    specs = [c.spec for c in get_registry().serializers() if c.spec.factory_path]
    assert {"cloudpickle", "pickle", "json", "msgpack"} <= {spec.name for spec in specs}
    for spec in specs:
        cls = spec.load()
        assert spec.factory_path == f"{cls.__module__}:{cls.__qualname__}", spec.name


HINTED_SERVICE = """
import os, sys
from flamepy import service

ins = service.FlameInstance()

@ins.entrypoint
def report(req):
    return {
        "hint": os.environ.get("FLAMEPY_INSTANCE_SERIALIZER"),
        "registry_loaded": "flamepy_core.plugins" in sys.modules,
        "serializer": ins.serializer.name,
    }

if __name__ == "__main__":
    ins.run()
"""


def test_the_server_names_the_serializer_class_its_instance_will_choose(flame_env: FlameEnv) -> None:
    from flamepy.service import Session

    flame_env.write_service("hinted-json", HINTED_SERVICE, extra_spec="serializer: json\n")
    flame_env.write_service("hinted-default", HINTED_SERVICE)
    with Session("hinted-json") as session:
        assert session.invoke("x") == {
            "hint": "flamepy_serializers.json.serializer:JsonSerializer",
            "registry_loaded": False,
            "serializer": "json",
        }
    with Session("hinted-default") as session:
        assert session.invoke("x") == {"hint": CLOUDPICKLE_CLASS, "registry_loaded": False, "serializer": "cloudpickle"}
