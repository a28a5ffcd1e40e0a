"""Flame's own client (the published ``flamepy==0.6.0``) against our server over gRPC.

Our server runs as ``python -m flamepy_core.engine --listen grpc://127.0.0.1:0``; Flame's SDK runs in its
own virtualenv (see ``flame_venv``) with ``FLAME_ENDPOINT`` pointing at it and ``HOME`` at an empty
folder, so no ``~/.flame/flame.yaml`` interferes. The service is written with *our* SDK's core
``FlameService`` and started by our runtime with this project's interpreter.

Flame's 0.6 client folds almost every server error into ``FlameError(INTERNAL, "failed to <verb> <noun>:
<server message>")``; only ``open_session`` maps gRPC statuses to codes, and ``get_application`` turns
NOT_FOUND into None. So what is asserted here is what a Flame user can observe: those codes and the
fragments of the server's messages that Flame's users match on.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import FAST_SETTINGS, REPO
from flame_venv import TEST_TIMEOUT, clean_env, flame_python, run_script

OUR_SERVICE = """
import time

import flamepy


class Echo(flamepy.FlameService):
    \"\"\"Written with flamepy's core API: bytes in, bytes out.\"\"\"

    def on_session_enter(self, context):
        self.common = context.common_data() or b""
        if self.common == b"slow-enter":
            time.sleep(1.5)

    def on_task_invoke(self, context):
        data = context.input or b""
        if data == b"boom":
            raise ValueError("kaboom: the service refused this input")
        if data.startswith(b"sleep:"):
            time.sleep(float(data[len(b"sleep:"):]))
            return b"slept"
        return b"echo:" + data + b"|" + self.common

    def on_session_leave(self):
        self.common = b""


if __name__ == "__main__":
    flamepy.run(Echo())
"""


@dataclass
class OurGrpcServer:
    home: Path
    port: int
    service_dir: Path
    client_home: Path
    flame: Path

    def flame_client(self, code: str, **params: Any) -> Any:
        """Run ``code`` with Flame's SDK as a client of this server; ``p`` holds ``params``."""
        env = clean_env(FLAME_ENDPOINT=f"http://127.0.0.1:{self.port}", HOME=str(self.client_home))
        params = {"python": sys.executable, "svc": str(self.service_dir), **params}
        prelude = "import sys, json\np = json.loads(sys.argv[1])\n"
        return run_script(
            self.flame, prelude + textwrap.dedent(code), env=env, cwd=self.client_home, args=[json.dumps(params)]
        )

    def our_client(self, code: str, **params: Any) -> Any:
        """Run ``code`` with our SDK as a client of this server (over gRPC, as a Flame cluster is reached)."""
        env = clean_env(
            FLAME_ENDPOINT=f"grpc://127.0.0.1:{self.port}",
            FLAME_HOME=str(self.client_home / "flamepy-home"),
            HOME=str(self.client_home),
            PYTHONPATH=str(REPO),
        )
        prelude = "import sys, json\np = json.loads(sys.argv[1])\n"
        return run_script(
            sys.executable, prelude + textwrap.dedent(code), env=env, cwd=self.client_home, args=[json.dumps(params)]
        )


pytestmark = pytest.mark.timeout(TEST_TIMEOUT)


@pytest.fixture(scope="module")
def flame() -> Path:
    return flame_python()


@pytest.fixture(scope="module")
def server(flame: Path) -> Iterator[OurGrpcServer]:
    root = Path(tempfile.mkdtemp(prefix="fi-", dir=tempfile.gettempdir()))
    home = root / "home"
    home.mkdir()
    service_dir = root / "svc"
    service_dir.mkdir()
    (service_dir / "service.py").write_text(textwrap.dedent(OUR_SERVICE))
    client_home = root / "client-home"
    client_home.mkdir()
    env = clean_env(**FAST_SETTINGS, PYTHONPATH=str(REPO))
    argv = [sys.executable, "-m", "flamepy_core.engine", "--home", str(home)]
    argv += ["--listen", "grpc://127.0.0.1:0", "--instance-transport", "auto"]
    with open(root / "server.log", "ab") as log:
        proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
    try:
        endpoint = ""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                info = json.loads((home / "server.json").read_text())
            except (FileNotFoundError, ValueError):
                info = {}
            if info.get("pid") == proc.pid:
                endpoint = info["endpoint"]
                break
            time.sleep(0.05)
        if not endpoint:
            raise AssertionError(f"our server did not start:\n{(root / 'server.log').read_text()}")
        assert endpoint.startswith("grpc://127.0.0.1:"), endpoint
        yield OurGrpcServer(home, int(endpoint.rsplit(":", 1)[1]), service_dir, client_home, flame)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        shutil.rmtree(root, ignore_errors=True)


def test_applications_register_list_get_unregister(server: OurGrpcServer) -> None:
    r = server.flame_client(
        """
        import time
        import flamepy
        from flamepy import ApplicationAttributes

        attrs = ApplicationAttributes(
            command=p["python"], arguments=["service.py"], working_directory=p["svc"],
            description="echo for the interop tests", labels=["interop"], environments={"ECHO_MODE": "plain"},
        )
        flamepy.register_application(p["app"], attrs)
        app = flamepy.get_application(p["app"])
        r = {
            "listed": sorted(a.name for a in flamepy.list_applications()),
            "app": {
                "id": app.id, "name": app.name, "state": app.state.name, "shim": app.shim.name,
                "command": app.command, "arguments": app.arguments, "working_directory": app.working_directory,
                "environments": app.environments, "labels": app.labels, "description": app.description,
                "max_instances": app.max_instances, "delay_release": app.delay_release, "url": app.url,
                "utc": app.creation_time.utcoffset().total_seconds() == 0,
                "recent": abs(time.time() - app.creation_time.timestamp()) < 300,
            },
            "missing": repr(flamepy.get_application("no-such-app")),
            "duplicate": error_of(flamepy.register_application, p["app"], attrs),
            "relative_wd": error_of(
                flamepy.register_application, p["app"] + "-rel",
                {"command": p["python"], "working_directory": "relative/dir"},
            ),
            "executors": len(flamepy.list_executors()),
            "nodes": len(flamepy.list_nodes()),
        }
        flamepy.unregister_application(p["app"])
        r["after_unregister"] = repr(flamepy.get_application(p["app"]))
        r["unregister_missing"] = error_of(flamepy.unregister_application, p["app"])
        r["relative_registered"] = repr(flamepy.get_application(p["app"] + "-rel"))
        emit(r)
        """,
        app="apps-echo",
    )
    assert "apps-echo" in r["listed"]
    assert r["app"] == {
        "id": "apps-echo",
        "name": "apps-echo",
        "state": "ENABLED",
        "shim": "HOST",
        "command": sys.executable,
        "arguments": ["service.py"],
        "working_directory": str(server.service_dir),
        "environments": {"ECHO_MODE": "plain"},
        "labels": ["interop"],
        "description": "echo for the interop tests",
        "max_instances": 1_000_000,
        "delay_release": int(FAST_SETTINGS["FLAME_DELAY_RELEASE"]),
        "url": None,
        "utc": True,
        "recent": True,
    }
    assert r["missing"] == "None"
    assert r["duplicate"]["code"] == "INTERNAL" and "already exists" in r["duplicate"]["message"]
    assert r["relative_wd"]["code"] == "INTERNAL" and "absolute" in r["relative_wd"]["message"]
    assert r["relative_registered"] == "None"
    assert (r["executors"], r["nodes"]) == (0, 0)
    assert r["after_unregister"] == "None"
    assert r["unregister_missing"]["code"] == "INTERNAL" and "not found" in r["unregister_missing"]["message"]


def test_sessions_invoke_run_watch_and_counters(server: OurGrpcServer) -> None:
    r = server.flame_client(
        """
        import concurrent.futures
        import flamepy

        flamepy.register_application(
            p["app"], {"command": p["python"], "arguments": ["service.py"], "working_directory": p["svc"]}
        )
        s = flamepy.create_session(p["app"], common_data=b"CD")
        r = {"id": s.id, "application": s.application, "state": s.state.name, "common": text(s.common_data())}
        r["invoke"] = text(s.invoke(b"hi"))
        futures = [s.run(b"r%d" % i) for i in range(5)]
        _done, not_done = concurrent.futures.wait(futures, timeout=60)
        r["run"] = "timed out" if not_done else [text(f.result()) for f in futures]
        r["boom"] = error_of(s.invoke, b"boom")
        r["boom_future"] = error_of(s.run(b"boom").result, 60)
        snap = flamepy.get_session(s.id)
        r["counters"] = [snap.state.name, snap.pending, snap.running, snap.succeed, snap.failed]
        r["snapshot_not_refreshed"] = s.succeed
        r["listed"] = [x.id for x in flamepy.list_sessions()]
        tasks = list(s.list_tasks())
        r["tasks"] = [[t.id, t.state.name, text(t.output)] for t in tasks]
        r["failed_events"] = [e.message for e in tasks[6].events if e.code == 3]
        created = s.create_task(b"watched")
        r["created"] = [created.id, created.state.name, text(created.input)]
        r["watched"] = [[t.state.name, text(t.output)] for t in s.watch_task(created.id, timeout=60)]
        r["watched_done"] = [[t.state.name, text(t.output)] for t in s.watch_task("1", timeout=60)]
        got = s.get_task("1")
        r["get_task"] = [got.id, got.session_id, got.state.name, text(got.input), text(got.output),
                         [e.code for e in got.events], got.is_completed(), got.completion_time is not None]
        r["get_missing_session"] = error_of(flamepy.get_session, "no-such-session")
        r["closed"] = flamepy.close_session(s.id).state.name
        r["closed_again"] = flamepy.close_session(s.id).state.name
        r["after_close"] = [flamepy.get_session(s.id).state.name, flamepy.get_session(s.id).succeed]
        r["task_on_closed"] = error_of(s.create_task, b"late")
        r["listed_closed"] = [x.state.name for x in flamepy.list_sessions() if x.id == s.id]
        r["tasks_after_close"] = len(list(s.list_tasks()))
        flamepy.unregister_application(p["app"])
        emit(r)
        """,
        app="sess-echo",
    )
    assert r["id"].startswith("sess-echo-") and r["application"] == "sess-echo"
    assert (r["state"], r["common"]) == ("OPEN", "CD")
    assert r["invoke"] == "echo:hi|CD"
    assert r["run"] == [f"echo:r{i}|CD" for i in range(5)]
    for failure in (r["boom"], r["boom_future"]):
        assert failure["type"] == "FlameError" and failure["code"] == "INTERNAL", failure
        assert "kaboom: the service refused this input" in failure["message"]
    assert r["counters"] == ["OPEN", 0, 0, 6, 2]
    assert r["snapshot_not_refreshed"] == 0, "Flame's Session objects are snapshots"
    assert r["id"] in r["listed"]
    assert r["tasks"][:6] == [["1", "SUCCEED", "echo:hi|CD"]] + [
        [str(i + 2), "SUCCEED", f"echo:r{i}|CD"] for i in range(5)
    ]
    assert r["tasks"][6:] == [["7", "FAILED", None], ["8", "FAILED", None]]
    assert len(r["failed_events"]) == 1 and "kaboom" in r["failed_events"][0]
    assert r["created"] == ["9", "PENDING", "watched"]
    assert r["watched"][-1] == ["SUCCEED", "echo:watched|CD"]
    assert {state for state, _ in r["watched"]} <= {"RUNNING", "SUCCEED"}, "the initial state is not sent"
    assert r["watched_done"] == [["SUCCEED", "echo:hi|CD"]], "a completed task is sent once, then the stream ends"
    assert r["get_task"] == ["1", r["id"], "SUCCEED", "hi", "echo:hi|CD", [0, 1, 2], True, True]
    assert r["get_missing_session"]["code"] == "INTERNAL" and "not found" in r["get_missing_session"]["message"]
    assert (r["closed"], r["closed_again"]) == ("CLOSED", "CLOSED")
    assert r["after_close"] == ["CLOSED", 7]
    assert r["task_on_closed"]["code"] == "INTERNAL"
    assert "Cannot create task in closed session" in r["task_on_closed"]["message"]
    assert r["tasks_after_close"] == 9
    assert r["listed_closed"] == ["CLOSED"], "closed sessions stay listed until their application goes"


def test_open_session_get_or_create(server: OurGrpcServer) -> None:
    r = server.flame_client(
        """
        import flamepy
        from flamepy import SessionAttributes

        app, sid = p["app"], p["sid"]
        flamepy.register_application(
            app, {"command": p["python"], "arguments": ["service.py"], "working_directory": p["svc"]}
        )
        spec = SessionAttributes(application=app, common_data=b"OPEN", max_instances=2)
        r = {"missing": error_of(flamepy.open_session, sid)}
        s1 = flamepy.open_session(sid, spec)
        r["created"] = [s1.id, s1.application, s1.state.name, text(s1.common_data())]
        r["again_same_spec"] = flamepy.open_session(sid, spec).id
        r["again_no_spec"] = flamepy.open_session(sid).id
        r["common_data_not_compared"] = flamepy.open_session(
            sid, SessionAttributes(application=app, common_data=b"other", max_instances=2)
        ).id
        r["invoke"] = text(flamepy.open_session(sid).invoke(b"x"))
        r["mismatch_max"] = error_of(flamepy.open_session, sid, SessionAttributes(application=app, max_instances=3))
        r["mismatch_app"] = error_of(flamepy.open_session, sid, SessionAttributes(application="other-app"))
        r["spec_id_ignored"] = flamepy.open_session(
            sid + "-b", SessionAttributes(application=app, id="not-this-one")
        ).id
        r["create_duplicate"] = error_of(flamepy.create_session, app, session_id=sid)
        r["create_unknown_app"] = error_of(flamepy.create_session, "no-such-app")
        flamepy.close_session(sid)
        flamepy.close_session(sid + "-b")
        r["closed"] = error_of(flamepy.open_session, sid)
        r["closed_with_spec"] = error_of(flamepy.open_session, sid, spec)
        flamepy.unregister_application(app)
        emit(r)
        """,
        app="open-echo",
        sid="open-echo-fixed",
    )
    assert r["missing"]["code"] == "NOT_FOUND"
    assert r["missing"]["message"] == "failed to open session: session open-echo-fixed not found"
    assert r["created"] == ["open-echo-fixed", "open-echo", "OPEN", "OPEN"]
    assert r["again_same_spec"] == r["again_no_spec"] == r["common_data_not_compared"] == "open-echo-fixed"
    assert r["invoke"] == "echo:x|OPEN"
    for key, field in (("mismatch_max", "max_instances"), ("mismatch_app", "application")):
        assert r[key]["code"] == "INVALID_ARGUMENT", r[key]
        assert r[key]["message"].startswith("failed to open session: ")
        assert "spec mismatch" in r[key]["message"] and f"{field} differs" in r[key]["message"]
    assert r["spec_id_ignored"] == "open-echo-fixed-b"
    assert r["create_duplicate"]["code"] == "INTERNAL" and "already exists" in r["create_duplicate"]["message"]
    assert r["create_unknown_app"]["code"] == "INTERNAL" and "not found" in r["create_unknown_app"]["message"]
    for key in ("closed", "closed_with_spec"):
        # Flame's server answers InvalidState with INVALID_ARGUMENT on the wire (its docstring says INVALID_STATE).
        assert r[key]["code"] == "INVALID_ARGUMENT" and "is not open" in r[key]["message"], r[key]


def test_unregister_is_refused_while_sessions_are_open(server: OurGrpcServer) -> None:
    r = server.flame_client(
        """
        import flamepy

        app = p["app"]
        flamepy.register_application(
            app, {"command": p["python"], "arguments": ["service.py"], "working_directory": p["svc"]}
        )
        s = flamepy.create_session(app)
        r = {"invoke": text(s.invoke(b"one"))}
        r["refused"] = error_of(flamepy.unregister_application, app)
        r["still_registered"] = flamepy.get_application(app) is not None
        s.close()
        flamepy.unregister_application(app)
        r["gone"] = flamepy.get_application(app) is None
        r["closed_sessions_dropped"] = s.id not in [x.id for x in flamepy.list_sessions()]
        emit(r)
        """,
        app="unreg-echo",
    )
    assert r["invoke"] == "echo:one|"
    assert r["refused"]["code"] == "INTERNAL"
    assert "1 open sessions in the application" in r["refused"]["message"]
    assert r["still_registered"] and r["gone"] and r["closed_sessions_dropped"]


def test_wire_statuses_are_the_ones_flames_server_uses(server: OurGrpcServer) -> None:
    """Below Flame's client: the raw gRPC statuses, through Flame's own generated stubs.

    Flame's server maps NotFound -> NOT_FOUND, AlreadyExist -> ALREADY_EXISTS, InvalidConfig and
    InvalidState -> INVALID_ARGUMENT, anything else -> INTERNAL; never FAILED_PRECONDITION.
    """
    r = server.flame_client(
        """
        import grpc
        from flamepy.proto import frontend_pb2 as fe, frontend_pb2_grpc, types_pb2 as pb

        channel = grpc.insecure_channel("127.0.0.1:%d" % p["port"])
        stub = frontend_pb2_grpc.FrontendStub(channel)

        def status(rpc, request):
            try:
                getattr(stub, rpc)(request, timeout=30)
            except grpc.RpcError as exc:
                return [exc.code().name, exc.details()]
            return ["OK", None]

        app = p["app"]
        spec = pb.ApplicationSpec(command=p["python"], arguments=["service.py"], working_directory=p["svc"])
        r = {"register": status("RegisterApplication", fe.RegisterApplicationRequest(name=app, application=spec))}
        r["register_duplicate"] = status(
            "RegisterApplication", fe.RegisterApplicationRequest(name=app, application=spec)
        )
        r["get_app_missing"] = status("GetApplication", fe.GetApplicationRequest(name="no-such-app"))
        session = pb.SessionSpec(application=app, batch_size=1)
        r["create"] = status("CreateSession", fe.CreateSessionRequest(session_id="wire-1", session=session))
        r["create_duplicate"] = status("CreateSession", fe.CreateSessionRequest(session_id="wire-1", session=session))
        r["create_unknown_app"] = status(
            "CreateSession",
            fe.CreateSessionRequest(session_id="wire-2", session=pb.SessionSpec(application="no-such-app")),
        )
        r["get_session_missing"] = status("GetSession", fe.GetSessionRequest(session_id="no-such-session"))
        r["open_missing"] = status("OpenSession", fe.OpenSessionRequest(session_id="no-such-session"))
        r["open_mismatch"] = status(
            "OpenSession",
            fe.OpenSessionRequest(session_id="wire-1", session=pb.SessionSpec(application=app, min_instances=3)),
        )
        r["task_bad_id"] = status("GetTask", fe.GetTaskRequest(session_id="wire-1", task_id="one"))
        r["task_missing"] = status("GetTask", fe.GetTaskRequest(session_id="wire-1", task_id="99"))
        r["unregister_open"] = status("UnregisterApplication", fe.UnregisterApplicationRequest(name=app))
        r["close"] = status("CloseSession", fe.CloseSessionRequest(session_id="wire-1"))
        r["open_closed"] = status("OpenSession", fe.OpenSessionRequest(session_id="wire-1"))
        r["task_closed"] = status(
            "CreateTask", fe.CreateTaskRequest(task=pb.TaskSpec(session_id="wire-1", input=b"x"))
        )
        r["unregister"] = status("UnregisterApplication", fe.UnregisterApplicationRequest(name=app))
        emit(r)
        """,
        app="wire-echo",
        port=server.port,
    )
    assert r["register"] == r["create"] == r["close"] == r["unregister"] == ["OK", None]
    expected = {
        # Flame's server answers a duplicate registration in-band (Result.return_code -1, status OK); ours
        # with the status. Flame's client turns both into FlameError(INTERNAL) carrying the message.
        "register_duplicate": "ALREADY_EXISTS",
        "get_app_missing": "NOT_FOUND",
        "create_duplicate": "ALREADY_EXISTS",
        "create_unknown_app": "NOT_FOUND",
        "get_session_missing": "NOT_FOUND",
        "open_missing": "NOT_FOUND",
        "open_mismatch": "INVALID_ARGUMENT",
        "task_bad_id": "INVALID_ARGUMENT",
        "task_missing": "NOT_FOUND",
        "unregister_open": "INVALID_ARGUMENT",
        "open_closed": "INVALID_ARGUMENT",
        "task_closed": "INVALID_ARGUMENT",
    }
    assert {key: r[key][0] for key in expected} == expected
    assert "spec mismatch: min_instances differs (expected 0, got 3)" in r["open_mismatch"][1]
    assert r["open_closed"][1] == "session wire-1 is not open"
    assert "Cannot create task in closed session" in r["task_closed"][1]


def test_flames_client_keeps_grpcs_4_mib_receive_limit(server: OurGrpcServer) -> None:
    """A task reply carries input and output; Flame's client cannot receive more than 4 MiB of them."""
    payload_size = 3 * 1024 * 1024
    r = server.flame_client(
        """
        import flamepy

        flamepy.register_application(
            p["app"], {"command": p["python"], "arguments": ["service.py"], "working_directory": p["svc"]}
        )
        s = flamepy.create_session(p["app"], session_id=p["app"] + "-1")
        r = {"small": len(s.invoke(b"s" * 1024 * 1024)), "big": error_of(s.invoke, b"b" * p["size"])}
        emit(r)
        """,
        app="size-echo",
        size=payload_size,
    )
    assert r["small"] == 1024 * 1024 + len("echo:|")
    assert r["big"]["code"] == "INTERNAL" and "larger than max" in r["big"]["message"], r["big"]
    ours = server.our_client(
        """
        import flamepy

        s = flamepy.open_session(p["sid"])
        r = {"big": len(s.invoke(b"b" * p["size"]))}
        r["succeed"] = flamepy.get_session(p["sid"]).succeed
        s.close()
        flamepy.unregister_application(p["app"])
        emit(r)
        """,
        app="size-echo",
        sid="size-echo-1",
        size=payload_size,
    )
    # The task Flame's client could not read succeeded on the server; our client reads the same reply.
    assert ours == {"big": payload_size + len("echo:|"), "succeed": 3}


def test_close_with_running_task_is_refused_and_pending_tasks_are_cancelled(server: OurGrpcServer) -> None:
    r = server.flame_client(
        """
        import time
        import flamepy

        app = p["app"]
        flamepy.register_application(
            app, {"command": p["python"], "arguments": ["service.py"], "working_directory": p["svc"]}
        )
        s = flamepy.create_session(app)
        future = s.run(b"sleep:1.5")
        deadline = time.monotonic() + 30
        while flamepy.get_session(s.id).running == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        r = {"close_running": error_of(flamepy.close_session, s.id)}
        r["result"] = text(future.result(timeout=60))
        r["closed"] = flamepy.close_session(s.id).state.name

        # Its instance takes a while to enter this session: the task is still pending when it closes.
        slow = flamepy.create_session(app, common_data=b"slow-enter")
        task = slow.create_task(b"never runs")
        closed = flamepy.close_session(slow.id)
        r["slow"] = slow.id
        r["closed_counters"] = [closed.state.name, closed.pending, closed.running, closed.succeed, closed.failed]
        r["list_cancelled"] = error_of(lambda: list(slow.list_tasks()))
        r["get_cancelled"] = error_of(slow.get_task, task.id)
        emit(r)
        """,
        app="close-echo",
    )
    assert r["close_running"]["code"] == "INTERNAL"
    assert "Cannot close session with running tasks" in r["close_running"]["message"]
    assert (r["result"], r["closed"]) == ("slept", "CLOSED")
    # The pending task became Cancelled (wire value 4): Flame 0.6's client has no TaskState for it.
    assert r["closed_counters"] == ["CLOSED", 0, 0, 0, 0]
    assert r["list_cancelled"]["code"] == "INTERNAL" and "4 is not a valid TaskState" in r["list_cancelled"]["message"]
    assert r["get_cancelled"]["type"] == "ValueError"
    # Our client reads the same task as CANCELLED, with the reason.
    ours = server.our_client(
        """
        import flamepy

        s = flamepy.get_session(p["sid"])
        tasks = list(s.list_tasks())
        emit({"state": s.state.name, "tasks": [[t.id, t.state.name, [e.message for e in t.events]] for t in tasks]})
        flamepy.unregister_application(p["app"])
        """,
        sid=r["slow"],
        app="close-echo",
    )
    assert ours["state"] == "CLOSED"
    [[task_id, state, messages]] = ours["tasks"]
    assert (task_id, state) == ("1", "CANCELLED")
    assert any("session was closed" in (m or "") for m in messages)


def test_a_task_our_client_cancels_reads_as_flame_reads_any_cancelled_task(server: OurGrpcServer) -> None:
    """Flame 0.6 cannot cancel; ours can, on our server. Flame's client then meets wire value 4, as it does
    for the pending tasks of a closed session: what docs/flame-cluster.md says stays true."""
    started = server.flame_client(
        """
        import time
        import flamepy

        flamepy.register_application(
            p["app"], {"command": p["python"], "arguments": ["service.py"], "working_directory": p["svc"]}
        )
        s = flamepy.create_session(p["app"], session_id=p["app"] + "-1")
        task = s.create_task(b"sleep:120")
        deadline = time.monotonic() + 30
        while flamepy.get_session(s.id).running == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        emit({"sid": s.id, "task": task.id, "close_running": error_of(flamepy.close_session, s.id)})
        """,
        app="cancel-echo",
    )
    assert "Cannot close session with running tasks" in started["close_running"]["message"]
    ours = server.our_client(
        """
        import flamepy

        s = flamepy.open_session(p["sid"])
        task = s.cancel_task(p["task"])
        emit({"state": task.state.name, "last": task.events[-1].message})
        """,
        sid=started["sid"],
        task=started["task"],
    )
    assert ours["state"] == "CANCELLED" and ours["last"].startswith("cancelled by Session.cancel_task in process")
    after = server.flame_client(
        """
        import flamepy

        s = flamepy.open_session(p["sid"])
        r = {"get": error_of(s.get_task, p["task"]), "closed": flamepy.close_session(p["sid"]).state.name}
        flamepy.unregister_application(p["app"])
        emit(r)
        """,
        sid=started["sid"],
        task=started["task"],
        app="cancel-echo",
    )
    assert after["get"]["type"] == "ValueError" and "4 is not a valid TaskState" in after["get"]["message"]
    assert after["closed"] == "CLOSED", "nothing runs any more: Flame's plain close works"
