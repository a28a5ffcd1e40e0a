"""Does a server holding many open sessions and a million finished tasks answer as fast as an empty one?

Two local servers are measured in the same run: one on an empty FLAME_HOME, one on a FLAME_HOME whose
store was filled beforehand with ``--sessions`` open sessions holding ``--tasks`` finished tasks in all
(written straight into sqlite, in the server's own format, so filling takes seconds, not hours). For
each server, three starts: with the start-up store check off; the first start with it (the store was
written by another program, so the check reads the whole file); and a restart after that server's clean
stop (the store is as it left it: its seal spares the check), once per round, the median of the rounds;
each start also as the CPU time its server process used until ready, which other work moves less.
After each restart, the median of a warm ``invoke`` on a new session, of ``get_session`` on an open
session, and of ``create_session`` + ``close``. Both servers run at once and are measured in ``--rounds``
alternating rounds, so other work on the machine weighs on both alike; each figure is the median of the
rounds' medians. Ratios are loaded / empty.

Usage: ``python benchmarks/bench_scale.py [--sessions 1000] [--tasks 1000000] [--iterations 500] [--rounds 3]``.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

SERVICE = textwrap.dedent(
    """
    import flamepy

    class Echo(flamepy.FlameService):
        def on_task_invoke(self, context):
            return context.input

    if __name__ == "__main__":
        flamepy.run(Echo())
    """
)


RESTART, FIRST = "server start after a clean stop", "first start, whole store check"
START_ROWS = (RESTART, FIRST, "server start, no store check")


def fill(home: Path, sessions: int, tasks: int) -> float:
    """Write ``sessions`` open sessions with ``tasks`` finished tasks in all into home's store."""
    from flamepy_core.engine.state import INPUT, OUTPUT
    from flamepy_core.engine.store import Store
    from flamepy_core.wire.proto import types_pb2 as pb

    start = time.perf_counter()
    Store(home / "flame.db").close()  # creates the schema
    now = int(time.time() * 1000)
    per_session = max(1, tasks // sessions)
    status = pb.TaskStatus(state=pb.TaskState.Succeed, creation_time=now, completion_time=now)
    status.events.add(code=2, creation_time=now)
    status_bytes = status.SerializeToString()
    db = sqlite3.connect(home / "flame.db")
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=OFF")
    for i in range(sessions):
        session = pb.Session()
        session.metadata.id = session.metadata.name = f"big-{i}"
        session.spec.application = "bench"
        session.spec.resreq.cpu = 1
        session.status.state = pb.SessionState.Open
        session.status.creation_time = now
        db.execute(
            "INSERT INTO sessions (id, application, state, data) VALUES (?, ?, ?, ?)",
            (f"big-{i}", "bench", 0, session.SerializeToString()),
        )
        ids = range(1, per_session + 1)
        db.executemany(
            "INSERT INTO tasks (session_id, id, state, input, output, status, finished) VALUES (?, ?, ?, ?, ?, ?, ?)",
            ((f"big-{i}", t, int(pb.TaskState.Succeed), None, None, status_bytes, now) for t in ids),
        )
        db.executemany(  # payloads in rows of their own, as the server writes them
            "INSERT INTO task_payloads (session_id, id, kind, data) VALUES (?, ?, ?, ?)",
            ((f"big-{i}", t, kind, b"x" * 100) for t in ids for kind in (INPUT, OUTPUT)),
        )
    db.commit()
    db.close()
    return time.perf_counter() - start


def start_server(home: Path, **settings: str) -> tuple[subprocess.Popen[bytes], float, float]:
    """Start a server on ``home`` (``settings``: extra FLAME_ variables); the seconds until it is ready,
    and the CPU seconds the server process used until then (what other work on the machine moves less)."""
    from flamepy_core.home import read_server_info

    env = dict(os.environ, FLAME_HOME=str(home), **settings)
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "flamepy_core.engine", "--home", str(home), "--idle-exit", "0"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(home / "server.err", "wb"),  # noqa: SIM115 - the child owns it
    )
    while True:
        info = read_server_info(home)
        if info and info.get("pid") == proc.pid:
            return proc, time.perf_counter() - start, cpu_seconds(proc.pid)
        if proc.poll() is not None or time.perf_counter() - start > 600:
            raise RuntimeError(f"server did not start: {(home / 'server.err').read_text()[-2000:]}")
        time.sleep(0.01)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux's /proc; NaN elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return math.nan
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def measure(home: Path, iterations: int, open_session: str | None) -> dict[str, float]:
    """Medians measured by a client process; ``open_session`` None: open one first (the empty store)."""
    code = textwrap.dedent(
        f"""
        import statistics, sys, time
        import flamepy
        app_dir = {str(home / "app")!r}
        if flamepy.get_application("bench") is None:
            flamepy.register_application("bench", {{"command": sys.executable, "arguments": ["svc.py"],
                                         "working_directory": app_dir}})
        def med(fn, n):
            samples = []
            for _ in range(n):
                t = time.perf_counter(); fn(); samples.append(time.perf_counter() - t)
            return statistics.median(samples)
        target = {open_session!r} or flamepy.create_session("bench").id
        s = flamepy.create_session("bench")
        s.invoke(b"x")
        invoke = med(lambda: s.invoke(b"x" * 100), {iterations})
        s.close()
        get = med(lambda: flamepy.get_session(target), {iterations})
        def cycle():
            flamepy.create_session("bench").close()
        create = med(cycle, max(20, {iterations} // 5))
        print(invoke, get, create)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=dict(os.environ, FLAME_HOME=str(home)),
        capture_output=True,
        text=True,
        timeout=900,
        check=True,
    ).stdout.split()
    invoke, get, create = (float(x) for x in out[-3:])
    return {"invoke": invoke, "get_session": get, "create_close": create}


def prepare(home: Path) -> None:
    (home / "app").mkdir(parents=True)
    (home / "app" / "svc.py").write_text(SERVICE)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    proc.wait(timeout=60)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--tasks", type=int, default=1_000_000)
    parser.add_argument("--iterations", type=int, default=500, help="calls per measure and round (500)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds on the two servers (3)")
    args = parser.parse_args()
    load_before = os.getloadavg()
    root = Path(tempfile.mkdtemp(prefix="fs-", dir="/tmp"))
    homes = {"empty": root / "empty", "loaded": root / "loaded"}
    procs: dict[str, subprocess.Popen[bytes]] = {}
    starts: dict[str, dict[str, tuple[float, float]]] = {label: {} for label in START_ROWS}
    """Per start row and store: (wall seconds, server CPU seconds) until the server was ready."""
    rounds: dict[str, list[dict[str, float]]] = {"empty": [], "loaded": []}
    try:
        for home in homes.values():
            prepare(home)
        filled = fill(homes["loaded"], args.sessions, args.tasks)
        # The start-up store check off (what is left is loading the store), then the first start with it
        # (a whole check: another program wrote the store); each server stops cleanly, sealing its store.
        for row, settings in (("server start, no store check", {"FLAME_STORE_CHECK_TIMEOUT": "0"}), (FIRST, {})):
            for label, home in homes.items():
                proc, *starts[row][label] = start_server(home, **settings)
                stop(proc)
        restarts: dict[str, list[tuple[float, float]]] = {label: [] for label in homes}
        for _ in range(args.rounds):
            for label, home in homes.items():  # a restart after a clean stop, then the calls
                if label in procs:
                    stop(procs.pop(label))
                procs[label], wall, cpu = start_server(home)
                restarts[label].append((wall, cpu))
                open_session = "big-0" if label == "loaded" and args.sessions else None
                rounds[label].append(measure(home, args.iterations, open_session))
    finally:
        for proc in procs.values():
            stop(proc)
        shutil.rmtree(root, ignore_errors=True)
    starts[RESTART] = {
        label: (statistics.median(w for w, _ in times), statistics.median(c for _, c in times))
        for label, times in restarts.items()
    }
    medians = {label: {k: statistics.median(r[k] for r in runs) for k in runs[0]} for label, runs in rounds.items()}
    empty, loaded = medians["empty"], medians["loaded"]
    before, after = (" ".join(f"{x:.2f}" for x in load) for load in (load_before, os.getloadavg()))
    print(f"loaded store: {args.sessions} open sessions, {args.tasks} finished tasks (filled in {filled:.1f} s)")
    print(f"{os.cpu_count()} CPUs, load average {before} -> {after}; {args.rounds} rounds of {args.iterations} calls")
    print(f"{'measure':<36}{'empty':>12}{'loaded':>12}{'ratio':>8}")
    for label, times in starts.items():
        for i, what in enumerate((label, "  its server CPU until ready")):
            empty_s, loaded_s = times["empty"][i], times["loaded"][i]
            print(f"{what:<36}{empty_s * 1e3:>10.0f}ms{loaded_s * 1e3:>10.0f}ms{loaded_s / empty_s:>8.2f}")
    for key in ("invoke", "get_session", "create_close"):
        label = f"{key} (median)"
        print(f"{label:<36}{empty[key] * 1e6:>10.0f}us{loaded[key] * 1e6:>10.0f}us{loaded[key] / empty[key]:>8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
