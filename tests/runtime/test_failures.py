"""How the runtime fails: every failure reaches the client as a clear error, within a bound, with its cause.

Real processes throughout: a local server per test (``flame_env``), services started by it. The runtime
timings are the fixture's small ones (2 task retries, 2 instance-start retries), so retry paths take
seconds. Every wait has a deadline.
"""

from __future__ import annotations

import os
import signal
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_for

import flamepy
from flamepy.service import FlameInstance, Session
from flamepy.service.instance import EntrypointError
from flamepy_core.client.connection import default_connection
from flamepy_core.client.session import TaskFailedError
from flamepy_core.client.transports import shared_transport
from flamepy_core.contracts.errors import FlameError, FlameErrorCode

# The fixture's limits (tests/conftest.py FAST_SETTINGS): a task is re-run twice, a bind is tried 3 times.
TASK_RETRIES = 2
START_ATTEMPTS = 3
BIND_FAILED = 1001
RETRY_LIMIT = 1002
FAIL_BOUND = 30.0  # a failing start must reach the client well within this


def invoke_failure(session: Session, request: Any = None, timeout: float = FAIL_BOUND) -> FlameError:
    """Invoke and return the FlameError it raises (the invoke itself is bounded)."""
    started = time.monotonic()
    with pytest.raises(FlameError) as info:
        session.invoke(request, timeout=timeout)
    assert info.value.code != FlameErrorCode.DEADLINE_EXCEEDED, f"the failure never reached the client: {info.value}"
    assert time.monotonic() - started < timeout
    return info.value


def event_codes(session_id: str) -> list[int]:
    return [e.code for e in flamepy.get_session(session_id).events]


def task_event_messages(error: FlameError) -> list[str]:
    assert isinstance(error, TaskFailedError), f"expected a TaskFailedError, got {error!r}"
    return [e.message or "" for e in error.task.events or []]


# -- the entrypoint fails --------------------------------------------------------------------------------


def test_entrypoint_exception_reaches_client_with_type_message_and_traceback(flame_env):
    flame_env.write_service(
        "raiser",
        """
        from flamepy import service

        ins = service.FlameInstance()


        def check(value):
            if value < 0:
                raise ValueError(f"negative input {value} is not allowed")
            return value


        @ins.entrypoint
        def handle(value):
            return check(value)


        if __name__ == "__main__":
            ins.run()
        """,
    )
    with Session("raiser") as session:
        err = invoke_failure(session, -5)
        assert isinstance(err, TaskFailedError)
        text = err.message
        assert "ValueError" in text
        assert "negative input -5 is not allowed" in text
        # The traceback points into the user's file, at the raising line and the caller's line.
        assert 'service.py", line 9, in check' in text, text
        assert 'service.py", line 15, in handle' in text, text
        assert "raise ValueError" in text
        # The runtime's own frames are dropped: the user needs their code, not ours.
        assert "flamepy_core" not in text, text
        # A failed task does not break the instance or the session.
        assert session.invoke(3) == 3
        sid = session.id()
    snapshot = flamepy.get_session(sid)
    assert (snapshot.succeed, snapshot.failed) == (1, 1)


def test_instance_exit_during_task_is_retried_then_fails_with_exit_code(flame_env):
    folder = flame_env.write_service(
        "exiter",
        """
        import os
        from flamepy import service

        ins = service.FlameInstance()


        @ins.entrypoint
        def handle(req):
            with open("attempts.log", "a") as fh:
                fh.write(f"{os.getpid()}\\n")
            os._exit(7)


        if __name__ == "__main__":
            ins.run()
        """,
    )
    session = Session("exiter")
    err = invoke_failure(session, "x")
    assert "exited with code 7" in err.message
    assert f"gave up after {TASK_RETRIES} retries" in err.message
    assert "application exiter" in err.message
    # One first run plus the retries, each on a fresh process.
    pids = (folder / "attempts.log").read_text().split()
    assert len(pids) == TASK_RETRIES + 1
    assert len(set(pids)) == TASK_RETRIES + 1
    # The retries are task events, with the cause.
    messages = task_event_messages(err)
    for n in range(1, TASK_RETRIES + 1):
        assert any(m.startswith(f"retry {n}/{TASK_RETRIES}: ") and "exited with code 7" in m for m in messages), (
            messages
        )
    # The same story through flmctl.
    view = flame_env.flmctl("view", "-s", session.id(), "-t", err.task.id).stdout
    assert "Failed" in view or "FAILED" in view
    assert f"retry 1/{TASK_RETRIES}" in view and f"retry {TASK_RETRIES}/{TASK_RETRIES}" in view
    assert "exited with code 7" in view
    snapshot = flamepy.get_session(session.id())
    assert snapshot.failed == 1
    assert snapshot.state == flamepy.SessionState.OPEN  # a failed task does not close the session
    session.close()


def test_killed_instance_task_is_retried_on_a_new_instance_and_succeeds(flame_env):
    folder = flame_env.write_service(
        "victim",
        """
        import os
        import time
        from flamepy import service

        ins = service.FlameInstance()


        @ins.entrypoint
        def handle(req):
            if os.path.exists("attempted"):
                return ("second attempt", os.getpid())
            open("attempted", "w").close()
            with open("pid.tmp", "w") as fh:
                fh.write(str(os.getpid()))
            os.replace("pid.tmp", "pid")
            time.sleep(60)  # killed by the test long before this ends
            return ("not killed", os.getpid())


        if __name__ == "__main__":
            ins.run()
        """,
    )
    with Session("victim") as session:
        future = session.run("work")
        pid_file = folder / "pid"
        victim = int(wait_for(lambda: pid_file.exists() and pid_file.read_text(), 20, "the task to start"))
        os.kill(victim, signal.SIGKILL)
        answer, pid = future.result(timeout=30)
        assert answer == "second attempt"
        assert pid != victim
        task = flamepy.open_session(session.id()).get_task("1")
        assert task.state == flamepy.TaskState.SUCCEED
        retries = [e.message for e in task.events or [] if e.message and e.message.startswith("retry 1/")]
        assert len(retries) == 1, task.events
        assert f"pid {victim}" in retries[0] and "was killed by SIGKILL" in retries[0]


def test_stderr_of_a_dying_instance_is_in_the_error(flame_env):
    flame_env.write_service(
        "noisy",
        """
        import os
        import sys
        from flamepy import service

        ins = service.FlameInstance()


        @ins.entrypoint
        def handle(req):
            print("loading shard 3 of 4", file=sys.stderr)
            print("FATAL: disk quota exceeded on /scratch", file=sys.stderr, flush=True)
            os._exit(3)


        if __name__ == "__main__":
            ins.run()
        """,
    )
    with Session("noisy") as session:
        err = invoke_failure(session, 1)
    assert "exited with code 3" in err.message
    assert "FATAL: disk quota exceeded on /scratch" in err.message
    assert "loading shard 3 of 4" in err.message
    assert "stderr" in err.message


# -- the instance cannot start or enter the session ------------------------------------------------------


def assert_bind_failure(session_id: str, err: FlameError, *cause: str) -> None:
    for text in cause:
        assert text in err.message, err.message
    assert f"could serve session {session_id} after {START_ATTEMPTS} attempts" in err.message, err.message
    events = flamepy.get_session(session_id).events
    codes = [e.code for e in events]
    assert codes.count(BIND_FAILED) == START_ATTEMPTS, codes
    assert codes.count(RETRY_LIMIT) == 1, codes
    assert codes.index(RETRY_LIMIT) > max(i for i, c in enumerate(codes) if c == BIND_FAILED)
    for event in events:
        if event.code == BIND_FAILED:
            assert event.message.startswith("failed to bind session: "), event.message
        for text in cause:
            assert text in (event.message or ""), (text, event.message)
    snapshot = flamepy.get_session(session_id)
    assert snapshot.failed >= 1 and snapshot.pending == 0 and snapshot.running == 0


def test_bad_command_fails_tasks_with_the_cause(flame_env, tmp_path):
    flamepy.register_application(
        "badcmd",
        {"command": "/nonexistent/bin/python3", "arguments": ["service.py"], "working_directory": str(tmp_path)},
    )
    session = Session("badcmd")
    err = invoke_failure(session, "x")
    assert_bind_failure(session.id(), err, "/nonexistent/bin/python3", "was not found")
    # Later tasks get fresh attempts (the cause may have been fixed), and every waiting one fails too.
    started = time.monotonic()
    futures = [session.run(i) for i in range(4)]
    for future in futures:
        with pytest.raises(FlameError, match="command '/nonexistent/bin/python3' of application badcmd was not found"):
            future.result(timeout=FAIL_BOUND)
    assert time.monotonic() - started < FAIL_BOUND
    assert event_codes(session.id()).count(RETRY_LIMIT) >= 2
    snapshot = flamepy.get_session(session.id())
    assert (snapshot.failed, snapshot.pending, snapshot.running) == (5, 0, 0)
    session.close()


def test_missing_working_directory_fails_tasks_with_the_cause(flame_env, tmp_path):
    missing = tmp_path / "gone" / "away"
    flamepy.register_application(
        "nowhere", {"command": sys.executable, "arguments": ["service.py"], "working_directory": str(missing)}
    )
    with Session("nowhere") as session:
        err = invoke_failure(session, 1)
        assert_bind_failure(session.id(), err, f"the working directory {missing}", "does not exist")


def test_service_exiting_at_import_fails_tasks_with_exit_code_and_stderr(flame_env):
    flame_env.write_service(
        "brokenimport",
        """
        import sys

        print("cannot load model weights from ./weights.bin", file=sys.stderr)
        sys.exit(4)
        """,
    )
    with Session("brokenimport") as session:
        err = invoke_failure(session, 1)
        assert_bind_failure(session.id(), err, "exited with code 4", "cannot load model weights from ./weights.bin")


def test_service_import_error_names_the_missing_module(flame_env):
    flame_env.write_service(
        "missingdep",
        """
        import flamepy_no_such_dependency  # noqa: F401
        """,
    )
    with Session("missingdep") as session:
        err = invoke_failure(session, 1)
        assert_bind_failure(session.id(), err, "exited with code 1")
        assert "ModuleNotFoundError" in err.message
        assert "flamepy_no_such_dependency" in err.message


def test_flame_style_service_whose_on_session_enter_raises(flame_env):
    folder = flame_env.write_service(
        "enterfail",
        """
        import os

        import flamepy
        from flamepy.core import FlameService


        class GpuService(FlameService):
            def on_session_enter(self, context):
                with open("enters.log", "a") as fh:
                    fh.write(f"{os.getpid()} {context.session_id}\\n")
                raise RuntimeError("no GPU visible to session " + context.session_id)

            def on_task_invoke(self, context):
                return b"never"

            def on_session_leave(self):
                pass


        if __name__ == "__main__":
            flamepy.run(GpuService())
        """,
    )
    session = flamepy.create_session("enterfail")
    started = time.monotonic()
    future = session.run(b"input")
    with pytest.raises(FlameError) as info:
        future.result(timeout=FAIL_BOUND)
    assert time.monotonic() - started < FAIL_BOUND
    err = info.value
    assert_bind_failure(
        session.id, err, "on_session_enter raised", "RuntimeError", f"no GPU visible to session {session.id}"
    )
    assert 'service.py", line 12, in on_session_enter' in err.message, err.message
    # Each attempt was a fresh process that really got the session.
    lines = (folder / "enters.log").read_text().splitlines()
    assert len(lines) == START_ATTEMPTS
    assert {line.split()[1] for line in lines} == {session.id}
    assert len({line.split()[0] for line in lines}) == START_ATTEMPTS
    session.close()


# -- the service is written wrong ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "name", "signature"),
    [
        ("def two(a, b):\n    return a\n", "two", "(a, b)"),
        ("def star(*args):\n    return args\n", "star", "(*args)"),
        ("def kwonly(*, req):\n    return req\n", "kwonly", "(*, req)"),
        ("def kwargs(**options):\n    return options\n", "kwargs", "(**options)"),
        ("def posonly(req, /):\n    return req\n", "posonly", "(req, /)"),
    ],
)
def test_entrypoint_with_unsupported_signature_is_refused_at_decoration(source, name, signature):
    namespace: dict[str, Any] = {}
    exec(compile(source, "<service>", "exec"), namespace)
    ins = FlameInstance()
    with pytest.raises(EntrypointError) as info:
        ins.entrypoint(namespace[name])
    text = str(info.value)
    assert f"{name}{signature}" in text, text
    assert "zero or one positional-or-keyword parameter" in text
    # Flame's SDK raises AssertionError here: code written for either catches it.
    assert isinstance(info.value, AssertionError)
    # Nothing was registered: a valid entrypoint is still accepted.
    assert ins.entrypoint(lambda req: req) is not None


def test_entrypoint_signatures_that_are_accepted_and_a_second_entrypoint():
    ins = FlameInstance()

    def first(req=None):
        return req

    assert ins.entrypoint(first) is first

    def second():
        return 1

    with pytest.raises(EntrypointError, match=r"already has the entrypoint .*first.*second"):
        ins.entrypoint(second)
    assert FlameInstance().entrypoint(second) is second


def test_running_a_service_by_hand_explains_itself(tmp_path, flame_env):
    (tmp_path / "service.py").write_text(
        textwrap.dedent(
            """
            from flamepy import service

            ins = service.FlameInstance()


            @ins.entrypoint
            def summarize(req):
                return req


            if __name__ == "__main__":
                ins.run()
            """
        )
    )
    assert "FLAME_INSTANCE_ENDPOINT" not in flame_env.env
    proc = flame_env.run([sys.executable, "service.py"], cwd=tmp_path, check=False, timeout=30)
    assert proc.returncode == 2, proc
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "entrypoint: summarize" in proc.stderr
    assert "FLAME_INSTANCE_ENDPOINT is not set" in proc.stderr
    assert "flmctl register --file" in proc.stderr
    assert "Session(" in proc.stderr


# -- the client asks for something wrong -----------------------------------------------------------------


def test_garbage_frame_is_refused_and_the_server_keeps_answering(flame_env):
    flamepy.register_application("frames", {"command": sys.executable, "arguments": ["service.py"]})
    endpoint = default_connection().addr
    channel = shared_transport(endpoint).connect(endpoint)
    try:
        for garbage in (b"\xff\xff\xff\xff\x00garbage", b"\x0a\xff\xff\xff\xff\x0f"):
            with pytest.raises(FlameError) as info:
                channel.unary("/flame.v1.Frontend/CreateTask", garbage, timeout=10)
            assert info.value.code == FlameErrorCode.INVALID_ARGUMENT, info.value
            assert "flame.v1.CreateTaskRequest" in info.value.message
            assert "/flame.v1.Frontend/CreateTask" in info.value.message
        with pytest.raises(FlameError) as unknown:
            channel.unary("/flame.v1.Frontend/NoSuchMethod", b"", timeout=10)
        assert unknown.value.code == FlameErrorCode.UNIMPLEMENTED, unknown.value
    finally:
        channel.close()
    # The same server still answers, on the same connection as before.
    assert [a.name for a in flamepy.list_applications()] == ["flmexec", "flmping", "flmrun", "frames"]
    assert flamepy.create_session("frames").application == "frames"


def test_session_of_unregistered_application_is_not_found(flame_env):
    with pytest.raises(FlameError) as info:
        Session("nope")
    assert info.value.code == FlameErrorCode.NOT_FOUND
    assert "failed to create session" in info.value.message
    assert "application nope not found" in info.value.message
    assert flamepy.list_sessions() == []  # nothing half-created


def test_open_session_of_missing_id_is_not_found(flame_env):
    with pytest.raises(FlameError) as core:
        flamepy.open_session("ghost-123")
    assert core.value.code == FlameErrorCode.NOT_FOUND
    assert core.value.message == "failed to open session: session ghost-123 not found"
    with pytest.raises(FlameError) as typed:
        Session(session_id="ghost-456")
    assert typed.value.code == FlameErrorCode.NOT_FOUND
    assert "session ghost-456 not found" in typed.value.message


def write_gate_service(flame_env, name: str) -> Path:
    """A service whose task runs until the file named in the request appears (at most 30 s)."""
    return flame_env.write_service(
        name,
        """
        import os
        import time
        from flamepy import service

        ins = service.FlameInstance()


        @ins.entrypoint
        def handle(gate):
            deadline = time.monotonic() + 30
            while not os.path.exists(gate) and time.monotonic() < deadline:
                time.sleep(0.02)
            return "released" if os.path.exists(gate) else "timed out"


        if __name__ == "__main__":
            ins.run()
        """,
    )


def test_close_session_with_a_running_task_is_refused_and_can_be_retried(flame_env):
    folder = write_gate_service(flame_env, "gated")
    gate = folder / "gate"
    session = Session("gated")
    sid = session.id()
    future = session.run(str(gate))
    wait_for(lambda: flamepy.get_session(sid).running == 1, 20, "the task to run")
    with pytest.raises(FlameError) as info:
        session.close()
    assert info.value.code == FlameErrorCode.INVALID_STATE
    assert "Cannot close session with running tasks" in info.value.message
    with pytest.raises(FlameError) as core:
        flamepy.close_session(sid)
    assert core.value.code == FlameErrorCode.INVALID_STATE and "running tasks" in core.value.message
    assert flamepy.get_session(sid).state == flamepy.SessionState.OPEN
    # The refused close left the session usable: the task finishes and the session closes for real.
    gate.touch()
    assert future.result(timeout=20) == "released"
    session.close()
    assert flamepy.get_session(sid).state == flamepy.SessionState.CLOSED


def test_invoke_timeout_on_a_slow_task_is_deadline_exceeded(flame_env):
    folder = write_gate_service(flame_env, "slow")
    gate = folder / "gate"
    with Session("slow") as session:
        with pytest.raises(FlameError) as info:
            session.invoke(str(gate), timeout=0.5)
        assert info.value.code == FlameErrorCode.DEADLINE_EXCEEDED
        assert "did not finish within 0.5 s" in info.value.message
        assert f"session {session.id()}" in info.value.message
        # The call returned before the task finished: the task cannot finish until the gate exists, and
        # it is still waiting for it. It keeps running on the server, and finishes once released.
        core = flamepy.open_session(session.id())
        assert not gate.exists()
        assert core.get_task("1").state in (flamepy.TaskState.PENDING, flamepy.TaskState.RUNNING)
        gate.touch()
        wait_for(lambda: core.get_task("1").state == flamepy.TaskState.SUCCEED, 20, "the slow task to finish")
        assert session.invoke(str(gate), timeout=20) == "released"


def test_leaving_a_with_block_by_an_exception_keeps_that_exception(flame_env, caplog):
    """The issue's case: a timed-out invoke inside ``with Session``: the caller sees the timeout, not the
    refused close of the session whose task still runs; the refusal is logged and noted on it."""
    folder = write_gate_service(flame_env, "hung")
    gate = folder / "gate"
    with pytest.raises(FlameError) as info, Session("hung") as session:
        sid = session.id()
        session.run(str(gate))
        wait_for(lambda: flamepy.get_session(sid).running == 1, 20, "the first task to run")
        session.invoke(str(gate), timeout=0.5)
    assert info.value.code == FlameErrorCode.DEADLINE_EXCEEDED, info.value
    notes = getattr(info.value, "__notes__", [])
    if sys.version_info >= (3, 11):
        assert any(f"did not close session {sid}" in n and "Cannot close session with running" in n for n in notes)
    assert any(f"did not close session {sid}" in r.getMessage() for r in caplog.records)
    assert flamepy.get_session(sid).state == flamepy.SessionState.OPEN
    # Any exception, not only flamepy's: a bug in the caller's own code is what it sees.
    with pytest.raises(KeyError, match="mine"), Session(session_id=sid) as again:
        again.run(str(gate))
        raise KeyError("mine")
    gate.touch()
    core = flamepy.open_session(sid)
    wait_for(lambda: flamepy.get_session(sid).running == 0, 20, "the tasks to finish")
    core.close()
    assert [t.state for t in core.list_tasks()] == [flamepy.TaskState.SUCCEED] * 3


def test_invoke_after_close_raises_runtime_error(flame_env):
    flame_env.write_service(
        "closed",
        """
        from flamepy import service

        ins = service.FlameInstance()


        @ins.entrypoint
        def handle(req):
            return req


        if __name__ == "__main__":
            ins.run()
        """,
    )
    session = Session("closed")
    assert session.invoke("hi") == "hi"
    sid = session.id()
    session.close()
    session.close()  # closing twice is fine
    with pytest.raises(RuntimeError, match=r"^Service session is not initialized$"):
        session.invoke("again")
    with pytest.raises(RuntimeError, match=r"^Service session is not initialized$"):
        session.run("again")
    assert session.id() is None
    closed = flamepy.get_session(sid)
    assert closed.state == flamepy.SessionState.CLOSED
    # The core session refuses new tasks too, with Flame's text.
    with pytest.raises(FlameError, match="Cannot create task in closed session"):
        flamepy.get_session(sid).create_task(b"x")


def test_session_arguments_are_checked_with_flames_texts():
    with pytest.raises(ValueError) as neither:
        Session()
    assert str(neither.value) == "Either 'name' or 'session_id' must be provided"
    with pytest.raises(ValueError) as both:
        Session("app", session_id="app-1")
    assert str(both.value) == "Cannot provide both 'name' and 'session_id'. They are mutually exclusive."


def test_update_context_in_a_session_without_ctx_is_ignored(flame_env):
    flame_env.write_service(
        "noctx",
        """
        from flamepy import service

        ins = service.FlameInstance()


        @ins.entrypoint
        def handle(req):
            before = ins.context()
            ins.update_context({"seen": req})
            return (before, ins.context(), req * 2)


        if __name__ == "__main__":
            ins.run()
        """,
    )
    with Session("noctx") as session:
        assert session.invoke(2) == (None, None, 4)
        assert session.invoke(5) == (None, None, 10)  # the instance survived the ignored update
        assert session.context() is None
        assert flamepy.get_session(session.id()).common_data() is None
