"""``flmctl top`` against a real server: in a pseudo-terminal (redrawn in place, q quits, the terminal
restored) and through a pipe (plain text), with its numbers checked against what the server reports.
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import sys
import termios
import time
from pathlib import Path

from conftest import wait_for

from flamepy_core.cli.commands.top import ENTER_SCREEN, HOME, LEAVE_SCREEN
from flamepy_core.cli.top import Throughput, frame
from flamepy_core.client.session import Session
from flamepy_core.wire.proto import ext_pb2
from flamepy_core.wire.proto import types_pb2 as pb

FLMCTL = [sys.executable, "-m", "flamepy_core.cli.main"]

SERVICE = """
from flamepy import service

ins = service.FlameInstance()


@ins.entrypoint
def work(n):
    return n * 2


if __name__ == "__main__":
    ins.run()
"""

HOLD_OPEN = """
import sys, time
from flamepy.service import Session

session = Session("worker", min_instances=2)
print(session.id(), flush=True)
assert [f.result() for f in [session.run(i) for i in range(30)]] == [i * 2 for i in range(30)]
print("done", flush=True)
sys.stdin.read()  # keep the session open until the test closes stdin
session.close()
"""


def start_busy_session(flame_env) -> tuple[subprocess.Popen[str], str]:
    flame_env.write_service("worker", SERVICE)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_OPEN],
        env=flame_env.env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None
    session_id = holder.stdout.readline().strip()
    assert holder.stdout.readline().strip() == "done"
    return holder, session_id


def read_until_exit(fd: int, proc: subprocess.Popen[bytes], deadline: float, send: bytes | None = None) -> bytes:
    """Everything ``proc`` writes to the pty until it exits; ``send`` is typed once the first frame shows."""
    out = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # the child closed the terminal
                break
            out += chunk
            if send and HOME.encode() in out and b"INSTANCES" in out:
                os.write(fd, send)
                send = None
        elif proc.poll() is not None:
            break
    proc.wait(timeout=max(0.1, deadline - time.monotonic()))
    return out


def instance_pids(flame_env) -> dict[str, int]:
    executors = json.loads(flame_env.flmctl("list", "-e", "-o", "json").stdout)
    return {e["id"]: e["pid"] for e in executors}


def test_top_in_a_pseudo_terminal_redraws_in_place_and_restores_the_terminal(flame_env) -> None:
    holder, session_id = start_busy_session(flame_env)
    try:
        pids = instance_pids(flame_env)
        assert len(pids) == 2 and all(isinstance(p, int) and p > 0 for p in pids.values()), pids
        master, slave = pty.openpty()
        proc = subprocess.Popen(
            [*FLMCTL, "top", "-n", "3", "-d", "0.3"], stdin=slave, stdout=slave, stderr=slave, env=flame_env.env
        )
        try:
            raw = read_until_exit(master, proc, time.monotonic() + 60)
        finally:
            os.close(slave)
            os.close(master)
        assert proc.returncode == 0, raw.decode(errors="replace")
        text = raw.decode()
        assert text.startswith(ENTER_SCREEN) and text.rstrip().endswith(LEAVE_SCREEN.rstrip())
        frames = text.split(HOME)[1:]
        assert len(frames) == 3, f"three refreshes, each drawn from the top: {len(frames)}"
        for drawn in frames:
            lines = [re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", line).rstrip() for line in drawn.split("\r\n")]
            assert "SESSIONS: 1 open, 0 closed" in lines
            row = next(line.split() for line in lines if line.startswith(session_id))
            assert row[1:7] == ["worker", "Open", "0", "0", "30", "0"], row
            assert "INSTANCES: 2 in 1 application" in lines
            shown = {cells[1]: int(cells[4]) for cells in (line.split() for line in lines) if cells[:1] == ["worker"]}
            assert shown == pids, "instances with their process ids, as the server reports them"
            assert any(line.startswith("THROUGHPUT:") for line in lines)
        assert "THROUGHPUT: 0.0 tasks/s; 30 tasks completed in all" in frames[-1], "no new tasks: rate 0"
        assert "THROUGHPUT: - tasks/s" in frames[0], "no rate before the second refresh"
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=30)


def test_top_quits_on_q_and_leaves_the_terminal_as_it_was(flame_env) -> None:
    holder, _session_id = start_busy_session(flame_env)
    try:
        master, slave = pty.openpty()
        before = termios.tcgetattr(slave)
        proc = subprocess.Popen([*FLMCTL, "top"], stdin=slave, stdout=slave, stderr=slave, env=flame_env.env)
        try:
            raw = read_until_exit(master, proc, time.monotonic() + 60, send=b"q")
            after = termios.tcgetattr(slave)
        finally:
            os.close(slave)
            os.close(master)
        assert proc.returncode == 0, raw.decode(errors="replace")
        assert raw.decode().rstrip().endswith(LEAVE_SCREEN.rstrip())
        assert after == before, "echo and line mode are restored"
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=30)


def test_top_through_a_pipe_prints_plain_frames_and_never_starts_a_server(flame_env) -> None:
    waiting = flame_env.flmctl("top", "-n", "1").stdout
    assert "no flamepy server is running" in waiting and "\x1b" not in waiting
    assert not (Path(flame_env.home) / "server.json").exists(), "top watches; it does not start a server"

    holder, session_id = start_busy_session(flame_env)
    bound = r"^worker +i\d+ +Bound +" + session_id + r" +\d+ "
    try:
        # The 30 tasks may all be done by the first instance before the second has entered the session.
        wait_for(
            lambda: len(re.findall(bound, flame_env.flmctl("top", "-n", "1").stdout, re.M)) == 2,
            30,
            "both instances bound to the session",
        )
        out = flame_env.run([*FLMCTL, "top", "-n", "2", "-d", "0.2"]).stdout
        assert "\x1b" not in out, "no escape sequences when the output is not a terminal"
        frames = out.split("flmctl top - ")[1:]
        assert len(frames) == 2
        for text in frames:
            assert "SESSIONS: 1 open, 0 closed" in text and session_id in text
            assert len(re.findall(bound, text, re.M)) == 2, text
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=30)


# -- the throughput arithmetic, on made-up snapshots -------------------------------------------------------


def session(sid: str, succeed: int, failed: int = 0, state: int = 0) -> Session:
    message = pb.Session()
    message.metadata.id = sid
    message.spec.application = "app"
    message.status.state = state  # type: ignore[assignment]
    message.status.succeed = succeed
    message.status.failed = failed
    return Session(None, message)  # type: ignore[arg-type]


def snapshot(taken: float, *sessions: Session):
    from flamepy_core.cli.top import Snapshot

    return Snapshot(taken, list(sessions), [ext_pb2.Instance(id="i1", application="app", state=4, pid=42)])


def test_throughput_counts_completed_tasks_per_second_per_session_and_in_all() -> None:
    rates = Throughput()
    rates.update(snapshot(10.0, session("a", 10), session("b", 0)))
    assert rates.total is None, "one snapshot gives no rate"
    rates.update(snapshot(12.0, session("a", 30, failed=2), session("b", 4), session("c", 6)))
    assert rates.per_session == {"a": 11.0, "b": 2.0, "c": 3.0}
    assert rates.total == 16.0
    lines = frame(
        snapshot(12.0, session("a", 30, failed=2), session("b", 4), session("c", 6, state=1)),
        rates,
        server="s",
        interval=1,
        now_ms=1_000_000,
    )
    assert "SESSIONS: 2 open, 1 closed" in lines, "closed sessions are counted, not listed"
    assert not any(line.startswith("c ") for line in lines)
    assert next(line for line in lines if line.startswith("a ")).split()[-1] == "11.0"
    assert "THROUGHPUT: 16.0 tasks/s; 42 tasks completed in all" in lines
