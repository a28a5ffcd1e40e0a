"""Shared fixtures: a private FLAME_HOME with its own local server, and helpers to run real processes.

Every server a test starts is stopped at teardown (which stops its instances), so no test leaves a
process behind.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from flamepy_core.client import local
from flamepy_core.client.connection import reset_default_connection

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"

# Small runtime timings so failure paths take seconds (see flamepy_core.config.RuntimeSettings).
FAST_SETTINGS = {
    "FLAME_INSTANCE_START_TIMEOUT": "15",
    "FLAME_SESSION_ENTER_TIMEOUT": "15",
    "FLAME_DELAY_RELEASE": "2",
    "FLAME_SHUTDOWN_GRACE": "2",
    "FLAME_TASK_RETRY_LIMIT": "2",
    "FLAME_INSTANCE_START_RETRY_LIMIT": "2",
    "FLAME_HEARTBEAT_INTERVAL": "0.2",
    "FLAME_IDLE_EXIT": "300",
}


class RecordingResponder:
    """A ``Responder`` for a handler a test calls directly: keeps the answers; a failure fails the test."""

    def __init__(self) -> None:
        self.items: list[bytes] = []

    def send(self, response: bytes) -> bool:
        self.items.append(response)
        return True

    def fail(self, error: BaseException) -> bool:
        raise AssertionError(error)


class RecordingWriter:
    """A stream writer for a handler a test calls directly: keeps the items, the end and the error."""

    def __init__(self) -> None:
        self.items: list[bytes] = []
        self.ended = threading.Event()
        self.error: BaseException | None = None

    def send(self, response: bytes) -> bool:
        assert not self.ended.is_set(), "an item after the stream ended"
        self.items.append(response)
        return True

    def close(self) -> bool:
        assert not self.ended.is_set(), "the stream ended twice"
        self.ended.set()
        return True

    def fail(self, error: BaseException) -> bool:
        self.error = error
        return self.close()


def start_service_as_runtime(
    tmp_path: Path,
    code: str,
    endpoint: str,
    transport_class: str,
    *,
    args: tuple[str, ...] = (),
    env_extra: dict[str, str] | None = None,
    unset: tuple[str, ...] = (),
) -> subprocess.Popen[bytes]:
    """Start ``code`` as flamepy's runtime starts a service process, and return it once it is ready.

    Written to ``tmp_path/service.py`` and run with ``args``; it gets the instance endpoint, the link's
    transport (``transport_class``, ``module:Class``) and a readiness pipe, as the executor gives them, no
    heartbeat, and ``env_extra``; ``unset`` (and ``FLAMEPY_INSTANCE_ENDPOINT``) are left out of its
    environment. Waits at most 60 s for the ready byte; stderr is piped. The caller stops the process.
    """
    script = tmp_path / "service.py"
    script.write_text(code)
    ready_read, ready_write = os.pipe()
    env = {
        **os.environ,
        "FLAME_HOME": str(tmp_path / "home"),
        "FLAME_INSTANCE_ENDPOINT": endpoint,
        "FLAMEPY_INSTANCE_TRANSPORTS": transport_class,
        "FLAMEPY_READY_FD": str(ready_write),
        "FLAMEPY_HEARTBEAT_INTERVAL": "0",
        **(env_extra or {}),
    }
    for name in ("FLAMEPY_INSTANCE_ENDPOINT", *unset):
        env.pop(name, None)
    process = subprocess.Popen(
        [sys.executable, str(script), *args], env=env, pass_fds=(ready_write,), stderr=subprocess.PIPE
    )
    os.close(ready_write)
    try:
        readable, _, _ = select.select([ready_read], [], [], 60)
        if not readable or os.read(ready_read, 1) != b"1":
            process.kill()
            _out, err = process.communicate(timeout=30)
            raise AssertionError(f"the service did not signal readiness within 60 s: {err.decode(errors='replace')}")
    finally:
        os.close(ready_read)
    return process


class ServedPair:
    """A server and a channel to it, in a folder of their own (``dir``), stopped and removed by :meth:`close`."""

    dir: str
    server: Any
    channel: Any

    def close(self) -> None:
        self.channel.close()
        self.server.stop(0.2)
        for name in os.listdir(self.dir):
            os.unlink(os.path.join(self.dir, name))
        os.rmdir(self.dir)


def run_benchmark(script: str, *args: str, timeout: float = 110) -> str:
    """Run ``benchmarks/<script>`` with ``args`` as a user would (from the repository, without this test
    run's ``FLAME_*`` settings) and return what it printed; fail the test, showing both streams, if it failed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLAME_")}
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / script), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc.stdout


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns something true; fail naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def echo_example_over(flame_env: FlameEnv, folder: Path, transport: str) -> tuple[list[str], dict[str, Any]]:
    """The guide's echo example end to end with ``FLAME_TRANSPORT=transport`` (copied into ``folder``):
    registered with ``flmctl``, then its client run; the client's output lines and ``server.json``."""
    shutil.copytree(EXAMPLES / "echo", folder)
    flame_env.env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), flame_env.env.get("PATH", "")])
    chosen = {"FLAME_TRANSPORT": transport}
    flame_env.run(
        [sys.executable, "-m", "flamepy_core.cli.main", "register", "--file", "echo-app.yaml"],
        cwd=folder,
        extra_env=chosen,
    )
    run = flame_env.run([sys.executable, "client.py"], cwd=folder, extra_env=chosen)
    return run.stdout.splitlines(), json.loads((flame_env.home / "server.json").read_text())


class FlameEnv:
    """A private FLAME_HOME: its environment, and helpers to run commands against it."""

    def __init__(self, home: Path, env: dict[str, str]) -> None:
        self.home = home
        self.env = env

    def run(
        self,
        argv: list[str],
        *,
        cwd: Path | None = None,
        timeout: float = 90,
        check: bool = True,
        extra_env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        env = dict(self.env, **(extra_env or {}))
        proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(
                f"{argv} exited with {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
            )
        return proc

    def python(
        self,
        code: str,
        *,
        cwd: Path | None = None,
        timeout: float = 90,
        check: bool = True,
        extra_env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        return self.run(
            [sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, timeout=timeout, check=check, extra_env=extra_env
        )

    def flmctl(self, *args: str, cwd: Path | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run([sys.executable, "-m", "flamepy_core.cli.main", *args], cwd=cwd, check=check)

    def write_service(self, name: str, body: str, *, app: str | None = None, extra_spec: str = "") -> Path:
        """Write ``<home>/apps/<name>/service.py`` and register it as application ``app`` (default ``name``)."""
        folder = self.home / "apps" / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "service.py").write_text(textwrap.dedent(body))
        spec = folder / "app.yaml"
        spec.write_text(
            f"metadata:\n  name: {app or name}\nspec:\n  working_directory: .\n  command: {sys.executable}\n"
            f"  arguments: [service.py]\n{textwrap.indent(textwrap.dedent(extra_spec), '  ')}"
        )
        self.flmctl("register", "--file", str(spec))
        return folder


@pytest.fixture
def flame_env(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[FlameEnv]:
    """A private FLAME_HOME. Parametrize indirectly with a transport name to run the local server on it,
    instance links included (``FLAME_INSTANCE_TRANSPORT``: gRPC alone links them over zmq by default)."""
    # A short path: unix socket paths must stay under ~100 characters.
    home = Path(tempfile.mkdtemp(prefix="fh-", dir="/tmp"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLAME_")}
    env.update(FAST_SETTINGS)
    env["FLAME_HOME"] = str(home)
    # Instance sockets inside the home too, so nothing is left in /tmp even by a server a test kills.
    env["FLAME_SOCKET_DIR"] = str(home / "s")
    transport = getattr(request, "param", None)
    if transport:
        env["FLAME_TRANSPORT"] = env["FLAME_INSTANCE_TRANSPORT"] = transport
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    for key in [k for k in os.environ if k.startswith("FLAME_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        if key.startswith("FLAME_"):
            monkeypatch.setenv(key, value)
    reset_default_connection()
    try:
        yield FlameEnv(home, env)
    finally:
        reset_default_connection()
        local.stop_server(home, timeout=20)
        shutil.rmtree(home, ignore_errors=True)


class Background:
    """Run a call on a daemon thread; record its outcome and when it ended."""

    def __init__(self, call: Callable[[], object]) -> None:
        self.result: object = None
        self.error: BaseException | None = None
        self.ended = 0.0
        self._thread = threading.Thread(target=self._run, args=(call,), daemon=True)
        self._thread.start()

    def _run(self, call: Callable[[], object]) -> None:
        try:
            self.result = call()
        except BaseException as exc:
            self.error = exc
        self.ended = time.monotonic()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"the call did not end within {timeout} s"


class ServerChild:
    """A server in a child process: ``python -c code *args``, which prints ``READY <endpoint>`` once it
    serves (the endpoint is then :attr:`endpoint`) and may print more lines (:meth:`read_line`). Every
    read has a deadline; :meth:`kill` continues a stopped child first, and closes its pipes."""

    def __init__(self, code: str, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            line = self.read_line(20.0)
            assert line.startswith("READY "), f"child said {line!r}; stderr: {self._stderr()}"
        except BaseException:
            self.kill()
            raise
        self.endpoint = line.split(" ", 1)[1]

    def read_line(self, timeout: float) -> str:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        data = b""
        deadline = time.monotonic() + timeout
        while not data.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise AssertionError(f"no line from the child within {timeout} s (got {data!r})")
            chunk = os.read(fd, 1)
            if not chunk:
                raise AssertionError(f"the child exited (got {data!r}); stderr: {self._stderr()}")
            data += chunk
        return data.decode().strip()

    def _stderr(self) -> str:
        if self.proc.poll() is None:
            return "(still running)"
        assert self.proc.stderr is not None
        return self.proc.stderr.read().decode(errors="replace")

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)  # (a stopped child) then kill it
            self.proc.kill()
        self.proc.wait(10)
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()


REVERSE_SERVICE = """
import os
import flamepy
from flamepy.core import FlameService


class Reverse(FlameService):
    def on_task_invoke(self, context):
        if context.input == b"die once" and not os.path.exists("died"):
            open("died", "w").close()
            os._exit(3)  # a crash in the middle of the task: its instance is lost
        return context.input[::-1]


if __name__ == "__main__":
    flamepy.run(Reverse())
"""
"""A service that answers its input reversed, and kills its own process the first time it is given
``b"die once"``."""


@pytest.fixture
def reverse_runtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A local runtime (real store, real service processes on uds) with ``REVERSE_SERVICE`` registered as
    ``rev``, and no ``FLAME_*`` variable of the caller's environment."""
    from flamepy.testing import local_runtime

    for key in [k for k in os.environ if k.startswith("FLAME_")]:
        monkeypatch.delenv(key)
    reset_default_connection()
    service = tmp_path / "svc" / "reverse_service.py"
    service.parent.mkdir()
    service.write_text(textwrap.dedent(REVERSE_SERVICE))
    with local_runtime(tmp_path / "home", instances="process") as rt:
        rt.register("rev", service)
        yield rt
    reset_default_connection()
