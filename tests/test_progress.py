"""Progress lines: drawn on a terminal (a real pseudo-terminal here), absent everywhere else."""

from __future__ import annotations

import io
import os
import pty
import re
import select
import subprocess
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor

import pytest

from flamepy.util import progress
from flamepy_core.progress import StatusLine, Waiting, enabled


def read_all(fd: int, timeout: float = 5.0) -> str:
    out = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.05)
        if not ready:
            if out:
                break
            continue
        out += os.read(fd, 65536)
    return out.decode(errors="replace")


@pytest.fixture
def terminal(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("FLAMEPY_PROGRESS", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    master, slave = pty.openpty()
    stream = open(slave, "w", closefd=True)  # noqa: SIM115 (closed below)
    try:
        yield master, stream
    finally:
        stream.close()
        os.close(master)


def squares(n: int) -> list[Future[int]]:
    pool = ThreadPoolExecutor(4)
    futures = [pool.submit(lambda i=i: (time.sleep(0.01 * (i % 3)), i * i)[1]) for i in range(n)]
    futures.append(pool.submit(lambda: 1 // 0))
    pool.shutdown(wait=False)
    return futures


def test_progress_draws_a_bar_and_a_summary_on_a_terminal(terminal) -> None:
    master, stream = terminal
    futures = squares(20)
    seen = list(progress(futures, description="squares", stream=stream))
    assert sorted(seen, key=id) == sorted(futures, key=id), "every future, once"
    text = read_all(master)
    assert "\r[" in text and "\x1b[K" in text, "drawn in place"
    last = text.rsplit("\r\x1b[K", 1)[1]
    assert last.startswith("[########################] 21/21 squares, 1 failed in "), last
    assert last.rstrip().endswith("/s)")


def test_progress_is_silent_when_not_a_terminal() -> None:
    out = io.StringIO()
    futures = squares(5)
    assert len(list(progress(futures, stream=out))) == 6
    assert out.getvalue() == ""
    assert not enabled(out)


def test_progress_can_be_turned_off(terminal, monkeypatch: pytest.MonkeyPatch) -> None:
    master, stream = terminal
    monkeypatch.setenv("FLAMEPY_PROGRESS", "0")
    assert len(list(progress(squares(3), stream=stream))) == 4
    stream.write("end\n")
    stream.flush()
    assert read_all(master) == "end\r\n"


def test_stderr_is_asked_again_when_replaced_or_closed(terminal, monkeypatch: pytest.MonkeyPatch) -> None:
    """``enabled()`` keeps stderr's isatty answer (invoke asks on every call), for that stream only."""
    _master, stream = terminal
    monkeypatch.setattr(sys, "stderr", stream)
    assert enabled() and enabled()
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert not enabled()
    monkeypatch.setattr(sys, "stderr", stream)
    assert enabled()
    stream.close()
    assert not enabled(), "a closed stderr is no terminal any more"


def test_waiting_shows_only_after_its_delay_and_clears_itself(terminal) -> None:
    master, stream = terminal
    with Waiting(lambda t: f"waiting {t:.1f}", delay=0.5, interval=0.05, stream=stream):
        pass  # fast: nothing shown
    with Waiting(lambda t: f"waiting for the thing ({t:.1f} s)", delay=0.05, interval=0.05, stream=stream):
        time.sleep(0.4)
    text = read_all(master)
    assert "waiting for the thing (0." in text
    assert text.endswith("\r\x1b[K"), "the line is removed when the wait ends"
    assert "waiting 0" not in text
    line = StatusLine(io.StringIO())
    line.show("x")
    line.clear("y")
    assert line.stream.getvalue() == ""  # type: ignore[attr-defined]


SLOW_SERVICE = """
import time

time.sleep(2.5)  # a slow start: heavy imports, a model to load...

from flamepy import service

ins = service.FlameInstance()


@ins.entrypoint
def hello(name):
    return f"hello {name}"


if __name__ == "__main__":
    ins.run()
"""


def test_invoke_says_it_waits_for_an_instance_on_a_terminal_only(flame_env) -> None:
    flame_env.write_service("slow-app", SLOW_SERVICE)
    client = "from flamepy.service import Session\nwith Session('slow-app') as s:\n    print(s.invoke('you'))\n"
    master, slave = pty.openpty()
    env = dict(flame_env.env, TERM="xterm")
    env.pop("FLAMEPY_PROGRESS", None)
    proc = subprocess.Popen([sys.executable, "-c", client], stdout=subprocess.PIPE, stderr=slave, env=env, text=True)
    os.close(slave)
    chunks: list[bytes] = []

    def drain() -> None:  # read as the child writes: once it exits, the pty may drop what is unread
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                return
            if not chunk:
                return
            chunks.append(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        out, _ = proc.communicate(timeout=60)
        reader.join(timeout=5)
    finally:
        os.close(master)
    seen = b"".join(chunks).decode(errors="replace")
    assert proc.returncode == 0 and out == "hello you\n"
    assert re.search(r"flamepy: waiting for an instance of slow-app to start \(\d+ s\)", seen), seen
    assert seen.endswith("\r\x1b[K"), "the line is gone once the task runs"

    piped = flame_env.python(client.replace("'you'", "'pipe'"))  # stderr is a pipe: nothing drawn
    assert piped.stdout == "hello pipe\n"
    assert "waiting for an instance" not in piped.stderr
