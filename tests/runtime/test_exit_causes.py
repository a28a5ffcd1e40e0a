"""How an instance ended is named right: a signal as a signal (SIGTERM included), an exit code as a code.

The instance runtime catches SIGTERM and SIGINT to stop serving cleanly; it must still end by that
signal, or the server reads "exited with code 0" and blames the service for quitting. Real processes
throughout: a service started by hand, and a local server whose instance the test kills.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import REPO, wait_for

import flamepy
from flamepy.service import Session
from flamepy_core.engine.executor import describe_status

SERVICE = """
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
        time.sleep(60)  # stopped by the test long before this ends
        return ("not stopped", os.getpid())


    if __name__ == "__main__":
        ins.run()
    """


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_the_instance_runtime_ends_by_the_signal_that_stopped_it(tmp_path: Path, signum: signal.Signals) -> None:
    (tmp_path / "service.py").write_text(textwrap.dedent(SERVICE))
    sock = tmp_path / "i.sock"
    proc = _service_by_hand(tmp_path, sock)
    try:
        wait_for(lambda: sock.exists() or proc.poll() is not None, 30, "the instance to listen")
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        proc.send_signal(signum)
        code = _ended(proc)
    finally:
        _reap(proc)
    assert code == -signum, f"the instance ended with {code}, not by {signum.name}"


def _service_by_hand(folder: Path, sock: Path) -> subprocess.Popen[bytes]:
    """``service.py`` in ``folder`` started as the runtime would, listening on ``sock``; its stderr piped,
    and its threads' stacks dumped there on SIGABRT (``_ended``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLAME_", "FLAMEPY_"))}
    env.update(FLAME_INSTANCE_ENDPOINT=str(sock), PYTHONPATH=str(REPO), PYTHONFAULTHANDLER="1")
    # The child starts with SIGINT's default action, as a process started from a terminal has it. Run in a
    # shell's background job (a CI script's ``&``), these tests inherit SIGINT ignored, and so would the
    # service: a SIGINT sent before its handlers are in place would then be dropped, not end it. A handled
    # signal is reset to its default by exec, an ignored one stays ignored: handled here while it starts.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return subprocess.Popen(
            [sys.executable, "service.py"], cwd=folder, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
    finally:
        signal.signal(signal.SIGINT, previous)


def _ended(proc: subprocess.Popen[bytes], timeout: float = 20) -> int:
    """The process's exit status; one still running after ``timeout`` fails the test with where each of its
    threads was (a SIGINT-ed instance that did not end: tests run with SIGINT ignored, see ``_service_by_hand``)."""
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)  # faulthandler writes every thread's stack to stderr
        _, stderr = proc.communicate(timeout=10)
        raise AssertionError(f"the instance did not end within {timeout} s; its threads:\n{stderr.decode()}") from None


def _reap(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=10)
    if proc.stderr:
        proc.stderr.close()


STARTS_SIGNALLED = """
    import os
    import signal
    from flamepy import service
    from flamepy_core.instance import runtime

    real_serve = runtime._serve


    def serve_then_signalled(*args, **kwargs):
        server = real_serve(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGINT)  # the server listens; the instance is not serving yet
        return server


    runtime._serve = serve_then_signalled
    ins = service.FlameInstance()


    @ins.entrypoint
    def handle(req):
        return req


    if __name__ == "__main__":
        ins.run()
    """


def test_an_instance_signalled_while_it_starts_ends_by_that_signal(tmp_path: Path) -> None:
    """A signal that comes once the server listens, before the instance's handlers are in place, ends the
    process by that signal too (the moment a test that signals as soon as the socket exists can hit)."""
    (tmp_path / "service.py").write_text(textwrap.dedent(STARTS_SIGNALLED))
    proc = _service_by_hand(tmp_path, tmp_path / "i.sock")
    try:
        code = _ended(proc, timeout=30)
    finally:
        _reap(proc)
    assert code == -signal.SIGINT, f"the instance ended with {code}, not by SIGINT"


def test_an_instance_killed_by_sigterm_during_a_task_is_reported_as_killed_by_sigterm(flame_env):
    folder = flame_env.write_service("terminated", SERVICE)
    with Session("terminated") as session:
        future = session.run("work")
        pid_file = folder / "pid"
        victim = int(wait_for(lambda: pid_file.exists() and pid_file.read_text(), 20, "the task to start"))
        os.kill(victim, signal.SIGTERM)
        answer, pid = future.result(timeout=30)
        assert answer == "second attempt" and pid != victim
        task = flamepy.open_session(session.id()).get_task("1")
        retries = [e.message for e in task.events or [] if e.message and e.message.startswith("retry 1/")]
        assert len(retries) == 1, task.events
        assert f"pid {victim}" in retries[0] and "was killed by SIGTERM" in retries[0], retries[0]
        assert "exited with code" not in retries[0]


@pytest.mark.parametrize(
    ("status", "text"),
    [
        (0, "exited with code 0"),
        (7, "exited with code 7"),
        (-signal.SIGTERM, "was killed by SIGTERM"),
        (-signal.SIGKILL, "was killed by SIGKILL"),
        (-200, "was killed by signal 200"),
        (128 + signal.SIGTERM, "exited with code 143 (a shell reports a child killed by SIGTERM this way)"),
        (255, "exited with code 255"),
    ],
)
def test_exit_status_wording(status: int, text: str) -> None:
    assert describe_status(status) == text


def test_a_shell_wrapped_service_killed_by_a_signal_says_so(flame_env):
    """``sh -c 'python service.py'`` exits 143 when its child gets SIGTERM: a code, with its reading."""
    folder = flame_env.home / "apps" / "wrapped"
    folder.mkdir(parents=True)
    (folder / "service.py").write_text(textwrap.dedent(SERVICE))
    (folder / "app.yaml").write_text(
        f"metadata:\n  name: wrapped\nspec:\n  working_directory: .\n  command: /bin/sh\n"
        f"  arguments: ['-c', '{sys.executable} service.py; exit $?']\n"
    )
    flame_env.flmctl("register", "--file", str(folder / "app.yaml"))
    with Session("wrapped") as session:
        future = session.run("work")
        pid_file = folder / "pid"
        victim = int(wait_for(lambda: pid_file.exists() and pid_file.read_text(), 20, "the task to start"))
        os.kill(victim, signal.SIGTERM)
        assert future.result(timeout=30)[0] == "second attempt"
        task = flamepy.open_session(session.id()).get_task("1")
        retries = [e.message for e in task.events or [] if e.message and e.message.startswith("retry 1/")]
        assert retries and "exited with code 143 (a shell reports a child killed by SIGTERM" in retries[0], retries
