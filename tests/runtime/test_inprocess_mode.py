"""In-process instances: ``flamepy.testing.local_runtime`` and ``FLAME_INSTANCE_MODE=inprocess``.

The guide's echo service runs with the engine and the instance inside the test's process: no process is
started (``subprocess.Popen`` is made to fail), the service answers from this pid, and no instance log
file is written. Service files the mode cannot serve fail with an error naming the file.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import flamepy
from flamepy.service import Session
from flamepy.testing import local_runtime
from flamepy_core.client.connection import reset_default_connection
from flamepy_core.contracts.errors import FlameError, FlameErrorCode
from flamepy_core.engine.embedded import stop_inprocess_server
from flamepy_core.engine.server import FlameServer

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

PID_SERVICE = """
import os
from flamepy.service import FlameInstance

ins = FlameInstance()
calls = 0


@ins.entrypoint
def handle(req):
    global calls
    calls += 1
    return {"pid": os.getpid(), "calls": calls, "serializer": ins.serializer.name, "req": req}


if __name__ == "__main__":
    ins.run()
"""


@pytest.fixture(autouse=True)
def _no_flame_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Nothing of the caller's FLAME_* configuration leaks in (local_runtime sets what it needs)."""
    for key in [k for k in os.environ if k.startswith("FLAME_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("FLAME_INSTANCE_START_RETRY_LIMIT", "1")
    reset_default_connection()
    yield
    reset_default_connection()


@pytest.fixture
def no_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to start a process fails the test."""

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"a process was started in in-process mode: {args[1:2]}")

    monkeypatch.setattr(subprocess.Popen, "__init__", refuse)


def _write(folder: Path, name: str, body: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(textwrap.dedent(body))
    return path


def _instance_logs(home: Path) -> list[str]:
    folder = home / "logs" / "instances"
    return sorted(os.listdir(folder)) if folder.is_dir() else []


def test_guide_echo_service_runs_in_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_processes: None
) -> None:
    folder = tmp_path / "echo"
    shutil.copytree(EXAMPLES / "echo", folder)
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.delitem(sys.modules, "echo_service", raising=False)
    from echo_service import EchoRequest  # type: ignore[import-not-found]

    _write(tmp_path / "pid", "pid_service.py", PID_SERVICE)
    with local_runtime(tmp_path / "home") as runtime:
        runtime.register("echo-app", folder)  # the folder's one *service*.py file
        runtime.register("pid-app", tmp_path / "pid" / "pid_service.py")
        with Session("echo-app", ctx=[]) as session:
            first = session.invoke(EchoRequest("hello"))
            second = session.invoke(EchoRequest("again"))
            assert (first.text, first.count) == ("HELLO", 1)
            assert (second.text, second.count) == ("AGAIN", 2)
            assert session.context() == ["hello", "again"]
            reopened = Session(session_id=session.id())
            assert reopened.context() == ["hello", "again"]
        with Session("pid-app") as session:
            answer = session.invoke("ping")
            sid = session.id()
        assert answer["pid"] == os.getpid(), "the instance ran in another process"
        assert answer["req"] == "ping"
        assert _instance_logs(runtime.home) == [], "an in-process instance writes no log files"
        assert sid is not None and flamepy.get_session(sid).succeed == 1
    assert "FLAME_ENDPOINT" not in os.environ, "local_runtime restores the environment"


def test_each_instance_loads_its_own_copy_of_the_module(tmp_path: Path, no_processes: None) -> None:
    service = _write(tmp_path / "svc", "pid_service.py", PID_SERVICE)
    with local_runtime() as runtime:
        runtime.register("pid-app", service)
        with Session("pid-app") as one, Session("pid-app") as two:
            # Both sessions are open, so each is bound to an instance of its own.
            assert [one.invoke(None)["calls"] for _ in range(3)] == [1, 2, 3]
            assert two.invoke(None)["calls"] == 1, "two instances shared the module's globals"


def test_async_entrypoint_runs_in_process(tmp_path: Path, no_processes: None) -> None:
    service = _write(
        tmp_path / "svc",
        "async_service.py",
        """
        import asyncio
        from flamepy.service import FlameInstance

        ins = FlameInstance()


        @ins.entrypoint
        async def handle(req):
            await asyncio.sleep(0)
            return [req, req]
        """,
    )
    with local_runtime() as runtime:
        runtime.register("async-app", service)
        with Session("async-app") as session:
            assert session.invoke("x") == ["x", "x"]
            assert session.invoke({"k": 1}) == [{"k": 1}, {"k": 1}]


def test_application_serializer_reaches_the_in_process_instance(tmp_path: Path) -> None:
    """A process instance reads FLAME_SERIALIZER from the application's environments; so does this mode."""
    service = _write(tmp_path / "svc", "pid_service.py", PID_SERVICE)
    with local_runtime() as runtime:
        runtime.register("json-app", service, environments={"FLAME_SERIALIZER": "json"})
        with Session("json-app") as session:
            answer = session.invoke({"a": [1, 2]})
        assert answer["serializer"] == "json" and answer["req"] == {"a": [1, 2]}
        assert session.serializer.name == "json"


def test_two_services_in_one_file_is_a_clear_error(tmp_path: Path) -> None:
    service = _write(
        tmp_path / "svc",
        "double_service.py",
        """
        from flamepy.service import FlameInstance

        first = FlameInstance()
        second = FlameInstance()


        @first.entrypoint
        def handle(req):
            return req
        """,
    )
    with local_runtime() as runtime:
        runtime.register("double-app", service)
        with Session("double-app") as session, pytest.raises(FlameError) as info:
            session.invoke("hello", timeout=60)
    message = info.value.message
    assert str(service) in message, message
    assert "2 FlameService objects (first, second)" in message, message
    assert "exactly one" in message, message


@pytest.mark.parametrize(
    ("body", "complaint"),
    [
        ("x = 1\n", "no FlameService object"),
        (
            "from flamepy.service import FlameInstance\nins = FlameInstance()\nins.run()\n",
            "exited (code 2) while being loaded in-process",
        ),
        ("raise ImportError('no such helper')\n", "ImportError: no such helper"),
    ],
    ids=["none", "unguarded-run", "import-error"],
)
def test_service_files_the_mode_cannot_serve(tmp_path: Path, body: str, complaint: str) -> None:
    service = _write(tmp_path / "svc", "bad_service.py", body)
    with local_runtime() as runtime:
        runtime.register("bad-app", service)
        with Session("bad-app") as session, pytest.raises(FlameError) as info:
            session.invoke("hello", timeout=60)
    assert str(service) in info.value.message and complaint in info.value.message, info.value.message


def test_flame_instance_mode_environment_selects_in_process_instances(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_processes: None
) -> None:
    """``FLAME_ENDPOINT=inmem://...`` + ``FLAME_INSTANCE_MODE=inprocess``: the documented switch."""
    service = _write(tmp_path / "svc", "pid_service.py", PID_SERVICE)
    endpoint = "inmem://test-instance-mode-env"
    monkeypatch.setenv("FLAME_ENDPOINT", endpoint)
    monkeypatch.setenv("FLAME_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FLAME_INSTANCE_MODE", "inprocess")
    reset_default_connection()
    try:
        flamepy.register_application(
            "pid-app",
            {"command": sys.executable, "arguments": ["pid_service.py"], "working_directory": str(service.parent)},
        )
        with Session("pid-app") as session:
            assert session.invoke(None)["pid"] == os.getpid()
    finally:
        reset_default_connection()
        assert stop_inprocess_server(endpoint)


def test_unknown_instance_mode_is_refused(tmp_path: Path) -> None:
    with pytest.raises(FlameError) as info:
        FlameServer(tmp_path, "inmem://x", instance_mode="thread")
    assert info.value.code == FlameErrorCode.INVALID_CONFIG and "process, inprocess" in info.value.message
    with pytest.raises(FlameError), local_runtime(instances="threads"):
        pass


def test_register_a_folder_needs_exactly_one_service_file(tmp_path: Path) -> None:
    _write(tmp_path / "two", "a_service.py", PID_SERVICE)
    _write(tmp_path / "two", "b_service.py", PID_SERVICE)
    with local_runtime() as runtime, pytest.raises(ValueError, match=r"a_service\.py, b_service\.py"):
        runtime.register("app", tmp_path / "two")


def test_the_docs_example_passes(tmp_path: Path) -> None:
    """docs/testing-services.md's example, run as written next to the guide's echo service."""
    text = (EXAMPLES.parent / "docs" / "testing-services.md").read_text()
    start = text.index("```python\n# test_echo_service.py") + len("```python\n")
    (tmp_path / "test_echo_service.py").write_text(text[start : text.index("```", start)])
    shutil.copy(EXAMPLES / "echo" / "echo_service.py", tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLAME_", "PYTEST_"))}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_echo_service.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout, result.stdout
