"""Oversized messages, end to end, on both transports: MESSAGE_TOO_LARGE naming both sizes and the setting.

The server runs with ``FLAME_MAX_MESSAGE_SIZE=1MiB``. A request over it fails with the sizes and the
setting to raise, whether the client knows the limit (it refuses to send) or was configured with a
larger one (the server refuses it: on ZeroMQ this used to cost the connection, reported as "connection
lost" with no sizes). A service answering more than the limit fails its task once, with that error:
no retry (the task is not idempotent) and no blame on the instance, which goes on serving.
"""

from __future__ import annotations

import json
import re

import pytest

LIMIT = 1024 * 1024
SIZE_ERROR = re.compile(rf"of (\d+) bytes exceeds the largest message of {LIMIT} bytes allowed on \S+")
GRPC_SIZE_ERROR = re.compile(rf"Received message larger than max \((\d+) vs\. {LIMIT}\)")

SERVICE = """
    import os
    from flamepy import service

    ins = service.FlameInstance()


    @ins.entrypoint
    def handle(req):
        if req == "big":
            return "x" * 2_000_000
        return os.getpid()


    if __name__ == "__main__":
        ins.run()
    """

CLIENT = """
    import json, sys
    from flamepy.service import Session
    from flamepy_core.contracts.errors import FlameError

    out = {}
    with Session("sizes") as session:
        out["pid"] = session.invoke("pid")
        try:
            session.invoke("x" * 3_000_000)
        except FlameError as exc:
            out["error"] = [exc.code.name, exc.message]
        out["after"] = session.invoke("pid")
    print(json.dumps(out))
    """


def sizes_in(message: str) -> int:
    match = SIZE_ERROR.search(message) or GRPC_SIZE_ERROR.search(message)
    assert match, f"both sizes are named: {message}"
    return int(match.group(1))


RESPONSE_CLIENT = """
    import json
    import flamepy
    from flamepy.service import Session
    from flamepy_core.client.session import TaskFailedError

    out = {}
    with Session("sizes") as session:
        out["pid"] = session.invoke("pid")
        try:
            session.invoke("big", timeout=60)
        except TaskFailedError as exc:
            out["message"] = exc.message
            out["events"] = [[e.code, e.message or ""] for e in exc.task.events or []]
        out["after"] = session.invoke("pid")
        out["session_events"] = [e.code for e in flamepy.get_session(session.id()).events]
    print(json.dumps(out))
    """


@pytest.fixture
def limited(flame_env):
    """The server (and what it starts) limited to 1 MiB. Clients run in their own processes: a transport
    built in this one would keep the limit for the tests that follow."""
    flame_env.env["FLAME_MAX_MESSAGE_SIZE"] = "1MiB"
    return flame_env


@pytest.mark.parametrize("flame_env", ["zmq", "grpc"], indirect=True)
@pytest.mark.parametrize("client_limit", ["1MiB", ""], ids=["client-knows-the-limit", "client-allows-more"])
def test_an_oversized_request_names_both_sizes_and_the_setting(limited, client_limit: str) -> None:
    limited.write_service("sizes", SERVICE)
    out = json.loads(limited.python(CLIENT, extra_env={"FLAME_MAX_MESSAGE_SIZE": client_limit}).stdout)
    code, message = out["error"]
    assert code == "MESSAGE_TOO_LARGE", message
    assert sizes_in(message) > LIMIT
    assert "FLAME_MAX_MESSAGE_SIZE" in message, "the setting to raise is named"
    assert "connection" not in message
    assert out["after"] == out["pid"], "the connection and the instance survived"


@pytest.mark.parametrize("flame_env", ["zmq", "grpc"], indirect=True)
@pytest.mark.parametrize("instance_limit", [None, "256MiB"], ids=["instance-knows-the-limit", "instance-allows-more"])
def test_an_oversized_response_fails_the_task_once_without_blaming_the_instance(limited, instance_limit) -> None:
    extra = f"environments: {{FLAME_MAX_MESSAGE_SIZE: {instance_limit}}}\n" if instance_limit else ""
    limited.write_service("sizes", SERVICE, extra_spec=extra)
    out = json.loads(limited.python(RESPONSE_CLIENT).stdout)
    message = out["message"]
    assert "(code: 9)" in message, f"the failure carries MESSAGE_TOO_LARGE: {message}"
    assert sizes_in(message) > LIMIT and "FLAME_MAX_MESSAGE_SIZE" in message
    events = out["events"]
    assert [code for code, _ in events] == [0, 1, 3], f"failed once, never retried: {events}"
    assert not any("retry" in text or "stopped answering" in text for _, text in events), events
    assert out["after"] == out["pid"], "the instance was not blamed: the same process serves on"
    assert not set(out["session_events"]) & {1001, 1002}, out["session_events"]
