"""How many instance processes run, and who gets them: the machine-wide cap, idle release, fairness.

Real processes throughout; what runs is read from ``/proc`` (the server's children and its threads), never
from the server's own counters. Every wait has a deadline.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import FlameEnv, wait_for

import flamepy
from flamepy.service import Session
from flamepy_core.client.local import live_server

SERVICE = """
import os
import time
from flamepy import service

ins = service.FlameInstance()


@ins.entrypoint
def handle(req):
    req = req or {}
    time.sleep(req.get("sleep", 0))
    spin_until = time.monotonic() + req.get("spin", 0)
    while time.monotonic() < spin_until:  # computing: a CPU flat out
        pass
    return os.getpid()


if __name__ == "__main__":
    ins.run()
"""

EVENT_WAITING_FOR_CAPACITY = 1006


def set_server_env(flame_env: FlameEnv, monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    """A setting for the local server, which the first call (flmctl or this process) starts."""
    flame_env.env[name] = value
    monkeypatch.setenv(name, value)


def register(flame_env: FlameEnv, name: str, **spec: Any) -> None:
    folder = flame_env.home / "apps" / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "service.py").write_text(SERVICE)
    extra = "".join(f"  {key}: {value}\n" for key, value in spec.items())
    (folder / "app.yaml").write_text(
        f"metadata:\n  name: {name}\nspec:\n  working_directory: .\n  command: {sys.executable}\n"
        f"  arguments: [service.py]\n{extra}"
    )
    flame_env.flmctl("register", "--file", str(folder / "app.yaml"))


def server_pid(flame_env: FlameEnv) -> int:
    info = live_server(flame_env.home)
    assert info, "the local server is not running"
    return int(info["pid"])


def waiting_generic(pid: int) -> bool:
    """Whether ``pid`` is the server's generic process still waiting for an application (it reads a pipe;
    the handover gives it /dev/null): not an instance yet (docs/runtime.md, the generic process)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        return b"flamepy_core.instance.generic" in cmdline and os.readlink(f"/proc/{pid}/fd/0").startswith("pipe:")
    except OSError:
        return False


def children(pid: int) -> list[int]:
    """The live (not zombie) instance processes of the server ``pid``: its children, read from /proc, but
    its generic process while it waits for an application."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z" and not waiting_generic(int(entry)):
            found.append(int(entry))
    return found


def thread_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


class Peaks:
    """Samples a server's children and threads from /proc every 20 ms while a block runs."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.processes = 0
        self.threads = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.processes = max(self.processes, len(children(self.pid)))
            self.threads = max(self.threads, thread_count(self.pid))
            self._stop.wait(0.02)

    def __enter__(self) -> Peaks:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def events(session_id: str, code: int) -> list[str]:
    return [e.message or "" for e in flamepy.get_session(session_id).events if e.code == code]


@pytest.mark.timeout(240)  # 60 process starts (one per session) on a small, busy machine
def test_sixty_concurrent_sessions_share_a_capped_number_of_processes(
    flame_env: FlameEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    cap = 4
    set_server_env(flame_env, monkeypatch, "FLAME_MAX_INSTANCE_PROCESSES", str(cap))
    register(flame_env, "many")
    pid = server_pid(flame_env)
    baseline = thread_count(pid)
    results: dict[str, int] = {}
    errors: list[BaseException] = []

    def one() -> None:
        try:
            with Session("many") as session:
                results[session.id() or ""] = session.invoke({"sleep": 0.1}, timeout=100)
        except BaseException as exc:
            errors.append(exc)

    with Peaks(pid) as peaks:
        clients = [threading.Thread(target=one) for _ in range(60)]
        for client in clients:
            client.start()
        for client in clients:
            client.join(timeout=110)
    assert not errors, errors[:3]
    assert len(results) == 60
    assert len(set(results.values())) == 60  # one process per session binding, as Flame's executors do
    assert peaks.processes <= cap, f"{peaks.processes} instance processes ran at once; the cap is {cap}"
    # Threads: a few per instance's link, plus the frontend's workers for calls in flight; never a
    # thread per session (the old design: one driver per instance, 60 instances, ~3 link threads each).
    assert peaks.threads <= baseline + 3 * cap + 70, (baseline, peaks.threads)
    # Sessions beyond the cap waited, and were told why.
    told = [sid for sid in results if events(sid, EVENT_WAITING_FOR_CAPACITY)]
    assert told, "no session says it waited for the machine-wide cap"
    assert "at most 4 instance processes" in events(told[0], EVENT_WAITING_FOR_CAPACITY)[0]


ABANDONING_CLIENT = """
import json
import sys
import time
from flamepy.service import Session

session = Session("abandoned")
pid = session.invoke({})
print(json.dumps({"session": session.id(), "pid": pid}), flush=True)
time.sleep(600)  # killed here, its session still open
"""


def test_a_killed_clients_session_releases_its_instance_and_gets_one_back_when_work_arrives(
    flame_env: FlameEnv,
) -> None:
    register(flame_env, "abandoned", delay_release=2)
    client = subprocess.Popen(
        [sys.executable, "-c", ABANDONING_CLIENT], env=flame_env.env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert client.stdout is not None
        line = client.stdout.readline()
        seen = json.loads(line)
    finally:
        client.send_signal(signal.SIGKILL)
        client.wait(timeout=10)
    pid = server_pid(flame_env)
    assert seen["pid"] in children(pid)
    killed_at = time.monotonic()
    # Nobody closes it: the instance leaves the idle session after delay_release and is stopped, and no
    # spare replaces it (the session is idle, not closed).
    wait_for(lambda: not children(pid), 15, "the idle session's instance to be released")
    released_after = time.monotonic() - killed_at
    assert released_after >= 1.0, f"released after {released_after:.2f} s, before delay_release"
    assert flamepy.get_session(seen["session"]).state == flamepy.SessionState.OPEN
    time.sleep(0.5)
    assert not children(pid), "a process was started for an idle session"
    # Work for it (from anyone: the client is gone) gets it a fresh instance at once.
    again = Session(session_id=seen["session"]).invoke({}, timeout=60)
    assert again != seen["pid"] and again in children(pid)


def test_an_idle_instance_is_given_to_a_session_waiting_at_the_cap(
    flame_env: FlameEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    set_server_env(flame_env, monkeypatch, "FLAME_MAX_INSTANCE_PROCESSES", "1")
    register(flame_env, "holder", delay_release=600)
    register(flame_env, "waiter", delay_release=600)
    pid = server_pid(flame_env)
    holder = Session("holder")
    held = holder.invoke({})
    assert children(pid) == [held]
    # The holder's instance is idle (its session has nothing pending) while another session waits at
    # the cap of one process: it is released for the waiter at once, not after delay_release (600 s).
    waiter = Session("waiter")
    started = time.monotonic()
    served = waiter.invoke({}, timeout=60)
    assert time.monotonic() - started < 30
    assert served != held and children(pid) == [served]
    assert events(waiter.id() or "", EVENT_WAITING_FOR_CAPACITY)
    # The holder's session is still open; its next task waits for the waiter's instance to go idle.
    assert holder.invoke({}, timeout=60) not in (held, served)
    holder.close()
    waiter.close()


RECURSIVE_SERVICE = """
import os
from flamepy import service
from flamepy.core import open_session

ins = service.FlameInstance()


@ins.entrypoint
def fan(depth):
    # A task that waits for tasks of its own session: each parent holds its instance while its
    # children need others. A session capped at its CPU share would deadlock here.
    if depth == 0:
        return 1
    session = open_session(os.environ["FAN_SESSION"])
    import cloudpickle
    futures = [session.run(cloudpickle.dumps(depth - 1)) for _ in range(2)]
    return 1 + sum(cloudpickle.loads(f.result(timeout=60)) for f in futures)


if __name__ == "__main__":
    ins.run()
"""


def test_tasks_waiting_on_their_own_session_go_beyond_its_cpu_share(flame_env: FlameEnv, tmp_path: Path) -> None:
    """Every instance of a session busy for over a second with tasks pending: one more may start, up to the
    machine-wide cap, so recursion within one session cannot deadlock (depth 2: 3 parents blocked at once)."""
    folder = flame_env.home / "apps" / "fan"
    folder.mkdir(parents=True)
    (folder / "service.py").write_text(textwrap.dedent(RECURSIVE_SERVICE))
    session_id = "fan-session-1"
    (folder / "app.yaml").write_text(
        f"metadata:\n  name: fan\nspec:\n  working_directory: .\n  command: {sys.executable}\n"
        f"  arguments: [service.py]\n  environments:\n    FAN_SESSION: {session_id}\n"
    )
    flame_env.flmctl("register", "--file", str(folder / "app.yaml"))
    session = flamepy.create_session(
        "fan", session_id=session_id, resreq=flamepy.ResourceRequirement(cpu=os.cpu_count() or 1)
    )
    import cloudpickle

    out = session.invoke(cloudpickle.dumps(2), timeout=100)
    assert cloudpickle.loads(out) == 7  # 1 + 2 * (1 + 2 * 1)
    session.close()


def test_long_cpu_bound_tasks_stay_within_the_cpu_share(flame_env: FlameEnv) -> None:
    """Instances busy computing are not blocked: a burst of long tasks does not go beyond the share."""
    register(flame_env, "crunch")
    share = flamepy.ResourceRequirement(cpu=os.cpu_count() or 1)  # a share of one instance
    with Session("crunch", resreq={"cpu": share.cpu}) as session:
        futures = [session.run({"spin": 2.5}) for _ in range(2)]
        pids = {f.result(timeout=60) for f in futures}
    assert len(pids) == 1, "a second instance started while the first was computing"
