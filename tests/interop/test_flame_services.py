"""Services written with Flame's SDK under our runtime, and our services answering Flame's callers.

1. A service written against Flame's core API (``flamepy.FlameService`` + ``flamepy.run`` from the
   published ``flamepy==0.6.0``) is registered with our runtime, its ``command`` being the interpreter of
   Flame's virtualenv (see ``flame_venv``). Our default local server (instance link ``auto``) starts it
   and drives it over gRPC on the bare unix path in ``FLAME_INSTANCE_ENDPOINT``, as Flame's executors do;
   our client calls it.
2. The reverse: a process serving our ``FlameService`` / ``FlameInstance`` with only
   ``FLAME_INSTANCE_ENDPOINT`` set (as under Flame's executors) answers Flame's own ``InstanceStub``.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, FlameEnv
from flame_venv import FLAME_VERSION, TEST_TIMEOUT, clean_env, flame_python, run_script

FLAME_CORE_SERVICE = """
import os

import flamepy


class Echo(flamepy.FlameService):
    \"\"\"Written against Flame's core API (flamepy 0.6.0).\"\"\"

    left = 0

    def on_session_enter(self, context):
        if context.common_data() == b"refuse":
            raise ValueError("this service does not enter sessions that ask it to refuse")
        self.common = context.common_data()
        self.session_id = context.session_id
        self.application = context.application

    def on_task_invoke(self, context):
        if context.input == b"boom":
            raise RuntimeError("kaboom from a Flame-written service")
        if context.input == b"about":
            about = {
                "version": flamepy.__version__,
                "sdk_file": flamepy.__file__,
                "common": (self.common or b"").decode(),
                "session_id": self.session_id,
                "task_id": context.task_id,
                "app_name": self.application.name,
                "app_command": self.application.command,
                "app_working_directory": self.application.working_directory,
                "instance_endpoint": os.environ.get("FLAME_INSTANCE_ENDPOINT", ""),
                "pid": os.getpid(),
                "left": self.left,
            }
            import json
            return json.dumps(about).encode()
        return b"flame:" + (context.input or b"")

    def on_session_leave(self):
        self.common = None
        self.left += 1


if __name__ == "__main__":
    flamepy.run(Echo())
"""

FLAME_TYPED_SERVICE = """
from flamepy import service

ins = service.FlameInstance()


@ins.entrypoint
def handle(request):
    if request == "context":
        return ins.context()
    if request == "boom":
        raise KeyError("typed kaboom")
    return {"echo": request, "size": len(request)}


if __name__ == "__main__":
    ins.run()
"""

OUR_CORE_SERVICE = """
import flamepy


class Ours(flamepy.FlameService):
    \"\"\"Written with our core API.\"\"\"

    def on_session_enter(self, context):
        self.common = context.common_data()
        self.session_id = context.session_id
        self.application = context.application.name

    def on_task_invoke(self, context):
        if context.input == b"boom":
            raise ValueError("our kaboom")
        if context.input == b"nothing":
            return None
        common = b"<none>" if self.common is None else self.common
        return b"|".join([context.task_id.encode(), context.session_id.encode(), self.session_id.encode(),
                          self.application.encode(), common, context.input or b"<no input>"])

    def on_session_leave(self):
        self.common = b"<left>"


if __name__ == "__main__":
    flamepy.run(Ours())
"""

OUR_TYPED_SERVICE = """
from flamepy import service

ins = service.FlameInstance()


@ins.entrypoint
def handle(request):
    if request == "boom":
        raise ZeroDivisionError("our typed kaboom")
    return {"request": request, "context": ins.context()}


if __name__ == "__main__":
    ins.run()
"""


pytestmark = pytest.mark.timeout(TEST_TIMEOUT)


@pytest.fixture(scope="module")
def flame() -> Path:
    return flame_python()


@pytest.fixture
def work_dir() -> Iterator[Path]:
    # Short: unix socket paths must stay under ~100 characters.
    path = Path(tempfile.mkdtemp(prefix="fs-", dir=tempfile.gettempdir()))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def our_client(flame_env: FlameEnv, code: str, **params: Any) -> Any:
    """Run ``code`` with our SDK against the default local server of ``flame_env``.

    ``PYTHONPATH`` is cleared: the server (started by this client) passes its environment on to the
    instances, and our repository on the path would make Flame's interpreter import our ``flamepy``.
    The project is installed in this virtualenv, so the client does not need it.
    """
    env = dict(flame_env.env, PYTHONPATH="")
    prelude = "import sys, json\np = json.loads(sys.argv[1])\n"
    return run_script(
        sys.executable,
        prelude + textwrap.dedent(code),
        env=env,
        cwd=flame_env.home,
        args=[json.dumps(params)],
        timeout=120,
    )


def write_app(folder: Path, name: str, body: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(textwrap.dedent(body))
    return folder


# -- Flame's services under our runtime -------------------------------------------------------------------


def test_a_flame_core_service_runs_under_our_runtime(flame_env: FlameEnv, flame: Path) -> None:
    folder = write_app(flame_env.home / "apps" / "flame-core", "service.py", FLAME_CORE_SERVICE)
    r = our_client(
        flame_env,
        """
        import flamepy

        flamepy.register_application(
            "flame-core", {"command": p["python"], "arguments": ["service.py"], "working_directory": p["dir"]}
        )
        s = flamepy.create_session("flame-core", common_data=b"shared by the client")
        r = {"session_id": s.id, "hello": text(s.invoke(b"hello"))}
        r["about"] = json.loads(s.invoke(b"about"))
        r["run"] = [text(f.result(timeout=60)) for f in [s.run(b"a"), s.run(b"b"), s.run(b"c")]]
        r["boom"] = error_of(s.invoke, b"boom")
        snap = flamepy.get_session(s.id)
        r["counters"] = [snap.succeed, snap.failed, snap.pending, snap.running]
        s.close()
        # The warm instance leaves the closed session and enters the next one of its application.
        s2 = flamepy.create_session("flame-core", common_data=b"second session")
        r["about_second"] = json.loads(s2.invoke(b"about"))
        s2.close()
        flamepy.unregister_application("flame-core")
        emit(r)
        """,
        python=str(flame),
        dir=str(folder),
    )
    assert r["hello"] == "flame:hello"
    about = r["about"]
    assert about["version"] == FLAME_VERSION
    assert Path(about["sdk_file"]).resolve().is_relative_to(flame.parent.parent.resolve()), "Flame's SDK, not ours"
    assert about["common"] == "shared by the client"
    assert (about["session_id"], about["task_id"], about["app_name"]) == (r["session_id"], "2", "flame-core")
    assert (about["app_command"], about["app_working_directory"]) == (str(flame), str(folder))
    endpoint = about["instance_endpoint"]
    assert endpoint.endswith(".sock") and "://" not in endpoint, "a bare unix path, as Flame's executors pass"
    assert r["run"] == ["flame:a", "flame:b", "flame:c"]
    boom = r["boom"]
    assert boom["code"] == "INTERNAL" and isinstance(boom["type"], str)
    assert boom["message"] == "kaboom from a Flame-written service", "Flame's servicer sends str(exception)"
    assert r["counters"] == [5, 1, 0, 0]
    second = r["about_second"]
    # As under Flame's executors, the next session gets a fresh process: nothing of the first one leaks.
    assert second["pid"] != about["pid"], "a process serves one session binding"
    assert (second["left"], second["common"], second["task_id"]) == (0, "second session", "1")


def test_a_flame_service_that_cannot_enter_fails_the_tasks_with_its_message(flame_env: FlameEnv, flame: Path) -> None:
    folder = write_app(flame_env.home / "apps" / "flame-refuse", "service.py", FLAME_CORE_SERVICE)
    r = our_client(
        flame_env,
        """
        import flamepy

        flamepy.register_application(
            "flame-refuse", {"command": p["python"], "arguments": ["service.py"], "working_directory": p["dir"]}
        )
        s = flamepy.create_session("flame-refuse", common_data=b"refuse")
        r = {"invoke": error_of(s.invoke, b"hello", timeout=90)}
        r["events"] = [[e.code, e.message] for e in flamepy.get_session(s.id).events]
        s.close()
        flamepy.unregister_application("flame-refuse")
        emit(r)
        """,
        python=str(flame),
        dir=str(folder),
    )
    assert r["invoke"]["code"] == "INTERNAL", r["invoke"]
    assert "does not enter sessions that ask it to refuse" in r["invoke"]["message"]
    binds = [message for code, message in r["events"] if code == 1001]
    assert binds and all("failed to bind session" in m for m in binds)
    assert any("does not enter sessions" in m for m in binds)
    assert any(code == 1002 for code, _ in r["events"]), "the retry limit is reported"


def test_a_flame_typed_service_answers_our_typed_client(flame_env: FlameEnv, flame: Path) -> None:
    folder = write_app(flame_env.home / "apps" / "flame-typed", "typed.py", FLAME_TYPED_SERVICE)
    r = our_client(
        flame_env,
        """
        import flamepy
        from flamepy.service import Session

        flamepy.register_application(
            "flame-typed", {"command": p["python"], "arguments": ["typed.py"], "working_directory": p["dir"]}
        )
        with Session("flame-typed") as s:
            r = {"echo": s.invoke([1, "two", 3.0]), "no_context": s.invoke("context")}
            r["boom"] = error_of(s.invoke, "boom")
        # With ctx, the context lives in our object cache (flamepy.cache.v1); Flame's typed service reads
        # it over Arrow Flight, which our local server does not speak.
        with Session("flame-typed", ctx={"k": 1}) as s:
            r["with_ctx"] = error_of(s.invoke, "context")
            r["with_ctx_events"] = [e.code for e in flamepy.get_session(s.id()).events]
        flamepy.unregister_application("flame-typed")
        emit(r)
        """,
        python=str(flame),
        dir=str(folder),
    )
    assert r["echo"] == {"echo": [1, "two", 3.0], "size": 3}
    assert r["no_context"] is None
    assert r["boom"]["code"] == "INTERNAL" and "typed kaboom" in r["boom"]["message"]
    # Our ObjectRef (the session's common data) decodes in Flame's on_session_enter: the bind works and
    # only the read of the object fails, as a task failure.
    assert r["with_ctx"] is not None and r["with_ctx"]["code"] == "INTERNAL", r["with_ctx"]
    assert 1001 not in r["with_ctx_events"]


# -- our services answering Flame's Instance stub ----------------------------------------------------------

FLAME_INSTANCE_CALLER = """
import grpc
import cloudpickle
from flamepy.proto import shim_pb2, shim_pb2_grpc, types_pb2

channel = grpc.insecure_channel("unix://" + p["socket"])
grpc.channel_ready_future(channel).result(timeout=30)
stub = shim_pb2_grpc.InstanceStub(channel)


def enter(session_id, common_data=None):
    ctx = shim_pb2.SessionContext(session_id=session_id)
    ctx.application.name = p["app"]
    ctx.application.shim = 0
    ctx.application.command = "python"
    ctx.application.working_directory = p["dir"]
    if common_data is not None:
        ctx.common_data = common_data
    reply = stub.OnSessionEnter(ctx, timeout=30)
    return [reply.return_code, reply.message if reply.HasField("message") else None]


def invoke(task_id, session_id, data=None):
    ctx = shim_pb2.TaskContext(task_id=task_id, session_id=session_id)
    if data is not None:
        ctx.input = data
    reply = stub.OnTaskInvoke(ctx, timeout=30)
    output = reply.output if reply.HasField("output") else None
    return [reply.return_code, output, reply.message if reply.HasField("message") else None]


def leave():
    reply = stub.OnSessionLeave(types_pb2.EmptyRequest(), timeout=30)
    return [reply.return_code, reply.message if reply.HasField("message") else None]
"""


def start_our_instance(work_dir: Path, script: str, body: str) -> tuple[subprocess.Popen[bytes], Path]:
    """Start a service process of ours as Flame's executor would: only FLAME_INSTANCE_ENDPOINT is set."""
    (work_dir / script).write_text(textwrap.dedent(body))
    socket = work_dir / "x.sock"
    env = clean_env(FLAME_INSTANCE_ENDPOINT=str(socket), PYTHONPATH=str(REPO), HOME=str(work_dir))
    assert "FLAMEPY_INSTANCE_ENDPOINT" not in env
    with open(work_dir / "instance.log", "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, script], cwd=work_dir, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log
        )
    deadline = time.monotonic() + 30
    while not socket.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_instance(proc)
            raise AssertionError(f"our instance did not listen on {socket}:\n{(work_dir / 'instance.log').read_text()}")
        time.sleep(0.02)
    return proc, socket


def stop_instance(proc: subprocess.Popen[bytes]) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait(timeout=10)


def call_as_flame(flame: Path, work_dir: Path, code: str, **params: Any) -> Any:
    prelude = "import sys, json\np = json.loads(sys.argv[1])\n"
    return run_script(
        flame,
        prelude + FLAME_INSTANCE_CALLER + textwrap.dedent(code),
        env=clean_env(HOME=str(work_dir)),
        cwd=work_dir,
        args=[json.dumps({"dir": str(work_dir), **params})],
    )


def test_our_core_service_answers_flames_instance_stub(flame: Path, work_dir: Path) -> None:
    proc, socket = start_our_instance(work_dir, "ours.py", OUR_CORE_SERVICE)
    try:
        r = call_as_flame(
            flame,
            work_dir,
            """
            r = {"enter": enter("s-1", b"common bytes")}
            r["invoke"] = invoke("1", "s-1", b"input bytes")
            r["none"] = invoke("2", "s-1", b"nothing")
            r["boom"] = invoke("3", "s-1", b"boom")
            r["leave"] = leave()
            r["enter_again"] = enter("s-2")
            r["invoke_again"] = invoke("1", "s-2")
            r["leave_again"] = leave()
            emit({k: [text(x) if isinstance(x, bytes) else x for x in v] for k, v in r.items()})
            """,
            socket=str(socket),
            app="ours",
        )
    finally:
        code = stop_instance(proc)
    assert r["enter"] == [0, None]
    assert r["invoke"] == [0, "1|s-1|s-1|ours|common bytes|input bytes", None]
    assert r["none"] == [0, None, None], "no output field when the service returns None"
    rc, output, message = r["boom"]
    assert (rc, output) == (-1, None)
    assert "our kaboom" in message and message.startswith("ValueError: our kaboom")
    assert r["leave"] == [0, None]
    assert r["enter_again"] == [0, None], "an instance can enter another session after leaving one"
    assert r["invoke_again"] == [0, "1|s-2|s-2|ours|<none>|<no input>", None]
    assert r["leave_again"] == [0, None]
    # Stopped cleanly by the SIGTERM it was sent, and it ends by that signal, so its parent can tell why.
    assert code == -signal.SIGTERM, (work_dir / "instance.log").read_text()
    assert not socket.exists(), "the instance removes its socket when it stops"


def test_our_typed_instance_answers_flames_instance_stub(flame: Path, work_dir: Path) -> None:
    proc, socket = start_our_instance(work_dir, "typed.py", OUR_TYPED_SERVICE)
    try:
        r = call_as_flame(
            flame,
            work_dir,
            """
            r = {"enter": enter("s-typed")}
            rc, output, message = invoke("1", "s-typed", cloudpickle.dumps({"n": [1, 2, 3]}))
            r["invoke"] = [rc, cloudpickle.loads(output), message]
            rc, output, message = invoke("2", "s-typed")
            r["no_input"] = [rc, cloudpickle.loads(output), message]
            r["boom"] = invoke("3", "s-typed", cloudpickle.dumps("boom"))
            r["leave"] = leave()
            emit(r)
            """,
            socket=str(socket),
            app="typed",
        )
    finally:
        code = stop_instance(proc)
    assert r["enter"] == [0, None]
    assert r["invoke"] == [0, {"request": {"n": [1, 2, 3]}, "context": None}, None]
    assert r["no_input"] == [0, {"request": None, "context": None}, None]
    rc, output, message = r["boom"]
    assert (rc, output) == (-1, None) and "our typed kaboom" in message
    assert r["leave"] == [0, None]
    # Stopped cleanly by the SIGTERM it was sent, and it ends by that signal, so its parent can tell why.
    assert code == -signal.SIGTERM, (work_dir / "instance.log").read_text()
