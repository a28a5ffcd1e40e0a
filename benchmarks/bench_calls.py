"""Function calls per warm invoke, by process, beside the raw pyzmq two-hop floor's: a count, not a time.

On this machine kind a warm invoke runs its processes one after the other (the CPU they use adds up to
about the wall-clock time), and what the server, the instance and the client spend beyond the floor's
processes is mostly the interpreter running Python: measured with ``perf``, the server's time is about
three quarters ``libpython``, the rest the kernel, sqlite and libzmq. How much Python a step runs is
best counted, not timed: the count does not move with the machine's load, and a change that removes
layers shows as fewer calls whatever else runs.

One run starts a local server on the local default transport (uds: the client, the server and the echo
service talk over unix sockets, with no libzmq) in a fresh ``FLAME_HOME`` (its process, and the echo
service's, count their calls from the start with ``sys.setprofile``/``threading.setprofile``), warms a session with one
instance up, and counts over N invokes of 100 bytes: calls into Python functions and calls into C
functions (builtins, pyzmq, sqlite3, protobuf), per invoke, in each process (every thread of the server
and of the instance; the client's calling thread, which makes the call and waits on its socket itself).
The floor is ``bench_invoke``'s raw two-hop relay (its ``_zmq_relay`` and ``_zmq_worker``), counted the
same way in the same run.

Counting slows every process several times over: the medians it prints are not the benchmark's; read
``bench_invoke.py`` for times. Background threads (heartbeats, the store's writer) add a little to the
server's count: less than one call per invoke at the default N. Linux or macOS; nothing is asserted.

Usage: ``python benchmarks/bench_calls.py [--invokes 2000]``
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

from bench_invoke import CORE_SERVICE  # this folder is first on the path when a benchmark runs

PAYLOAD = b"x" * 100
BENCHMARKS = Path(__file__).resolve().parent
SNAPSHOT_WAIT = 30.0
"""Seconds to wait for every counted process to write its counts after a snapshot is asked for."""

COUNTER = textwrap.dedent(
    """
    import json as _json, os as _os, sys as _sys, threading as _threading, time as _time

    _calls = {"call": 0, "c_call": 0, "opcode": 0}
    _watcher = []

    def _count(frame, event, arg, _calls=_calls, _ident=_threading.get_ident, _watcher=_watcher):
        if (event == "call" or event == "c_call") and (not _watcher or _ident() != _watcher[0]):
            _calls[event] += 1

    def _opcodes(frame, event, arg, _calls=_calls):
        if event == "opcode":
            _calls["opcode"] += 1
        return _opcodes

    def _trace(frame, event, arg, _ident=_threading.get_ident, _watcher=_watcher):
        if _watcher and _ident() == _watcher[0]:
            return None
        frame.f_trace_opcodes = True
        frame.f_trace_lines = False
        return _opcodes

    def _snapshots(folder, role):
        _watcher.append(_threading.get_ident())
        taken = 0
        while True:
            if _os.path.exists(_os.path.join(folder, f"snapshot-{taken + 1}")):
                taken += 1
                counts = dict(_calls)
                path = _os.path.join(folder, f"{role}-{taken}.json")
                with open(path + ".tmp", "w") as fh:
                    fh.write(_json.dumps(counts))
                _os.replace(path + ".tmp", path)
            _time.sleep(0.02)

    _threading.Thread(target=_snapshots, args=(__FOLDER__, __ROLE__), daemon=True, name="bench-calls").start()
    _sys.setprofile(_count)
    _threading.setprofile(_count)
    if __OPCODES__:
        _sys.settrace(_trace)
        _threading.settrace(_trace)
    """
)
"""Counts the calls of a whole process from here on (every thread started later, too), and writes them to
``<folder>/<role>-<k>.json`` when ``<folder>/snapshot-<k>`` appears: the benchmark asks for a snapshot
before and after the invokes it counts. The watching thread's own calls are not counted."""

SERVER_MAIN = """
from flamepy_core.engine.__main__ import main
_sys.exit(main(_sys.argv[1:]))
"""

FLOOR_MAIN = """
_sys.path.insert(0, __BENCHMARKS__)
import bench_invoke

class _Ready:
    def set(self):
        pass

getattr(bench_invoke, __FUNCTION__)(*__PATHS__, _Ready())
"""
"""Runs one of the floor's processes (``bench_invoke``'s relay or worker) after the counting prelude."""


def counter(folder: Path, role: str, opcodes: bool) -> str:
    """The counting prelude of a process, writing its snapshots as ``role`` into ``folder`` (and counting
    the bytecode instructions it runs, with ``opcodes``)."""
    return (
        COUNTER.replace("__FOLDER__", repr(str(folder)))
        .replace("__ROLE__", repr(role))
        .replace("__OPCODES__", repr(opcodes))
    )


class Snapshots:
    """Asks every counted process for its counts, and reads them."""

    def __init__(self, folder: Path, roles: list[str]) -> None:
        self.folder = folder
        self.roles = roles
        self.taken = 0

    def take(self) -> dict[str, dict[str, int]]:
        self.taken += 1
        (self.folder / f"snapshot-{self.taken}").touch()
        deadline = time.monotonic() + SNAPSHOT_WAIT
        counts: dict[str, dict[str, int]] = {}
        for role in self.roles:
            path = self.folder / f"{role}-{self.taken}.json"
            while not path.exists():
                if time.monotonic() > deadline:
                    raise SystemExit(f"the {role} process wrote no counts within {SNAPSHOT_WAIT:.0f} s ({path})")
                time.sleep(0.01)
            counts[role] = json.loads(path.read_text())
        return counts


Counts = dict[str, dict[str, int]]


KINDS = ("call", "c_call", "opcode")
"""What is counted: calls into Python functions, calls into C functions, bytecode instructions run."""


def per_call(before: Counts, after: Counts, n: int) -> dict[str, dict[str, float]]:
    """Counts per invoke of each counted process between two snapshots."""
    return {role: {kind: (after[role][kind] - before[role][kind]) / n for kind in KINDS} for role in after}


def count_here(run: Callable[[], Any], n: int, opcodes: bool) -> tuple[dict[str, float], float]:
    """Counts per ``run()`` on this thread, and the median time of one (slowed by the counting)."""
    calls = {"call": 0, "c_call": 0, "opcode": 0}

    def count(frame: FrameType, event: str, arg: Any) -> None:
        if event == "call" or event == "c_call":
            calls[event] += 1

    def count_opcodes(frame: FrameType, event: str, arg: Any) -> Any:
        if event == "opcode":
            calls["opcode"] += 1
        return count_opcodes

    def trace(frame: FrameType, event: str, arg: Any) -> Any:
        frame.f_trace_opcodes = True
        frame.f_trace_lines = False
        return count_opcodes

    samples = []
    sys.setprofile(count)
    if opcodes:
        sys.settrace(trace)
    try:
        for _ in range(n):
            start = time.perf_counter()
            run()
            samples.append(time.perf_counter() - start)
    finally:
        sys.settrace(None)
        sys.setprofile(None)
    # The two calls to time.perf_counter per round are the benchmark's, not the call's.
    per_run = {kind: calls[kind] / n for kind in KINDS}
    per_run["c_call"] -= 2
    return per_run, statistics.median(samples)


def wait_for(path: Path, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"{what} did not appear within {timeout:.0f} s ({path})")
        time.sleep(0.01)


def measure_floor(tmp: Path, invokes: int, opcodes: bool) -> tuple[dict[str, dict[str, float]], float]:
    """The raw pyzmq two hops, each process counted: per round trip."""
    import zmq

    folder = tmp / "floor-counts"
    folder.mkdir()
    worker_path, relay_path = str(tmp / "w.ipc"), str(tmp / "r.ipc")
    procs = []
    try:
        for role, function, path, other in (
            ("worker", "_zmq_worker", worker_path, ""),
            ("relay", "_zmq_relay", relay_path, worker_path),
        ):
            paths = [path, other] if other else [path]
            main = (
                FLOOR_MAIN.replace("__BENCHMARKS__", repr(str(BENCHMARKS)))
                .replace("__FUNCTION__", repr(function))
                .replace("__PATHS__", repr(paths))
            )
            procs.append(subprocess.Popen([sys.executable, "-c", counter(folder, role, opcodes) + main]))
            wait_for(Path(path), f"the floor's {role} socket")
        sock = zmq.Context.instance().socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVTIMEO, 60000)
        sock.connect(f"ipc://{relay_path}")

        def round_trip() -> None:
            sock.send(PAYLOAD)
            sock.recv()

        for _ in range(200):
            round_trip()
        snapshots = Snapshots(folder, ["relay", "worker"])
        before = snapshots.take()
        client, median = count_here(round_trip, invokes, opcodes)
        counts = per_call(before, snapshots.take(), invokes)
        counts["client"] = client
        sock.close()
        return counts, median
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(timeout=30)


@contextlib.contextmanager
def warm_echo_session(tmp: Path, server_code: str, service_prelude: str, what: str) -> Iterator[Any]:
    """A local server run as ``python -c server_code --home <tmp>/home`` (its entry point after a prelude of
    the benchmark's), and a session of an echo service (``service_prelude`` + ``CORE_SERVICE``) with one
    instance, warmed up: the session, for the ``with`` block. ``what`` names the server in errors."""
    import flamepy
    from flamepy_core.client.local import stop_server
    from flamepy_core.home import live_server

    home = tmp / "home"
    home.mkdir(mode=0o700)
    os.environ["FLAME_HOME"] = str(home)
    for var in ("FLAME_ENDPOINT", "FLAME_CACHE_ENDPOINT", "FLAME_TRANSPORT"):
        os.environ.pop(var, None)
    app = tmp / "app"
    app.mkdir()
    (app / "echo.py").write_text(service_prelude + CORE_SERVICE)
    log = (tmp / "server.log").open("wb")
    server = subprocess.Popen(
        [sys.executable, "-c", server_code, "--home", str(home)], stdout=log, stderr=log, cwd=str(tmp)
    )
    try:
        deadline = time.monotonic() + 60
        while live_server(home) is None:
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the {what} server did not start: see {tmp / 'server.log'}")
            time.sleep(0.05)
        flamepy.register_application(
            "echo", {"command": sys.executable, "arguments": ["echo.py"], "working_directory": str(app)}
        )
        session = flamepy.create_session("echo", min_instances=1, max_instances=1)
        for _ in range(200):
            session.invoke(PAYLOAD)
        yield session
        session.close()
    finally:
        stop_server(home)
        if server.poll() is None:
            server.kill()
        server.wait(timeout=30)
        log.close()


def measure_flamepy(tmp: Path, invokes: int, opcodes: bool) -> tuple[dict[str, dict[str, float]], float]:
    """A warm invoke through the local server, each process counted: per invoke."""
    folder = tmp / "flamepy-counts"
    folder.mkdir()
    server_code = counter(folder, "server", opcodes) + SERVER_MAIN
    with warm_echo_session(tmp, server_code, counter(folder, "instance", opcodes), "counted") as session:
        snapshots = Snapshots(folder, ["server", "instance"])
        before = snapshots.take()
        client, median = count_here(lambda: session.invoke(PAYLOAD), invokes, opcodes)
        counts = per_call(before, snapshots.take(), invokes)
        counts["client"] = client
        return counts, median


def main() -> int:
    # What this measures is the server's part of an invoke: the client keeps to the server's path, not a
    # lane (flamepy_core.client.lane), which takes the server off it.
    os.environ["FLAMEPY_LANES"] = "0"
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--invokes", type=int, default=2000)
    parser.add_argument(
        "--opcodes", action="store_true", help="count the bytecode instructions run too (slower: every one is traced)"
    )
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="fcalls-"))
    try:
        floor, floor_median = measure_floor(tmp, args.invokes, args.opcodes)
        ours, our_median = measure_flamepy(tmp, args.invokes, args.opcodes)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    kinds = KINDS if args.opcodes else KINDS[:2]
    titles = {"call": "Python calls", "c_call": "C calls", "opcode": "bytecodes"}
    print(f"per warm invoke (100 bytes), {args.invokes} invokes, Python {sys.version.split()[0]}: flamepy / floor")
    slowed = f"floor {floor_median * 1e6:.0f} us, flamepy {our_median * 1e6:.0f} us"
    print(f"(medians while counted, slowed by the counting: {slowed})")
    print(f"{'process':20}" + "".join(f"{titles[kind]:>26}" for kind in kinds))
    for ours_role, floor_role in (("client", "client"), ("server", "relay"), ("instance", "worker")):
        mine, base = ours[ours_role], floor[floor_role]
        cells = []
        for kind in kinds:
            ratio = f"{mine[kind] / base[kind]:5.0f}x" if base[kind] > 0 else "     -"
            cells.append(f"{mine[kind]:8.1f} / {base[kind]:7.1f} {ratio}")
        print(f"{ours_role + ' / ' + floor_role:20}" + "".join(f"{cell:>26}" for cell in cells))
    totals = []
    for kind in kinds:
        mine_total, base_total = sum(ours[r][kind] for r in ours), sum(floor[r][kind] for r in floor)
        totals.append(f"{mine_total:8.1f} / {base_total:7.1f} {mine_total / max(base_total, 1e-9):5.0f}x")
    print(f"{'all three':20}" + "".join(f"{cell:>26}" for cell in totals))
    return 0


if __name__ == "__main__":
    sys.exit(main())
