"""CPU time per task of the local server, its instances and the client, read from ``/proc``: A/B-ready.

Wall-clock medians move with whatever else the machine runs; CPU time per task moves much less, so
this is the measure for changes to the server's per-task work. One run starts a local server in a
fresh ``FLAME_HOME`` and measures, after a warm-up:

* ``invoke``: N warm ``invoke`` calls (100 bytes) on a session with one instance;
* ``run``: T no-op ``run()`` tasks on a session with two instances, until every future is done.

For each it prints the server's CPU per task (user + system, all its threads: the ZeroMQ library's own
I/O threads included), split by thread; the instances' (the server's child processes) and the
client's; and the invoke median or the tasks per second. Also the voluntary context switches per task
of the server's and the instances' threads (``server_waits``, ``instance_waits``): each thread hand-off
on the path is one, so they count hand-offs whatever the load.

A/B: ``--checkout DIR`` (repeatable) runs the same measurement with each checkout's ``flamepy``,
``flamepy_core`` and bundled transports (``DIR/transports``) first on the path (the server and the
instances inherit it), alternating checkouts for ``--rounds`` rounds, so both see the same load.
``--transport grpc`` runs the server and its instance links on gRPC (``FLAME_INSTANCE_TRANSPORT``). Linux
only (``/proc``).

Usage: ``python benchmarks/bench_server_cpu.py [--invokes 3000] [--tasks 10000] [--rounds 3]
[--checkout OLD --checkout NEW] [--transport grpc]``. Nothing is asserted: this is a measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_invoke import CORE_SERVICE  # this folder is first on the path when a benchmark runs

PAYLOAD = b"x" * 100
TICK = os.sysconf("SC_CLK_TCK")
SERVICE = CORE_SERVICE
"""The echo service of ``bench_invoke.py``: it answers each task with its input."""


def _stat(path: str) -> list[str]:
    with open(path) as fh:
        return fh.read().rsplit(")", 1)[1].split()


def process_cpu(pid: int) -> float:
    """Seconds of CPU (user + system) the process has used."""
    fields = _stat(f"/proc/{pid}/stat")
    return (int(fields[11]) + int(fields[12])) / TICK


def children_cpu(pid: int) -> float:
    """Seconds of CPU used by the live children of ``pid`` (the server's instance processes)."""
    total = 0.0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if int(_stat(f"/proc/{entry}/stat")[1]) == pid:
                    total += process_cpu(int(entry))
            except (OSError, IndexError, ValueError):
                continue  # gone meanwhile
    return total


def waits(pid: int, children: bool = False) -> int:
    """Voluntary context switches of the live threads of ``pid`` (or of its live children): how often a
    thread went to sleep waiting (for a socket, a lock, another thread). Each thread hand-off is one such
    wait, so the count per task moves with the hand-offs, not with the machine's load; threads that ended
    meanwhile are not counted."""
    pids = [pid]
    if children:
        pids = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    if int(_stat(f"/proc/{entry}/stat")[1]) == pid:
                        pids.append(int(entry))
                except (OSError, IndexError, ValueError):
                    continue
    total = 0
    for one in pids:
        try:
            tids = os.listdir(f"/proc/{one}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{one}/task/{tid}/status") as fh:
                    for line in fh:
                        if line.startswith("voluntary_ctxt_switches:"):
                            total += int(line.split()[1])
            except OSError:
                continue
    return total


def thread_cpu(pid: int) -> dict[str, tuple[str, float]]:
    """Each thread of ``pid``: its name (``comm``) and seconds of CPU."""
    threads = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as fh:
                name = fh.read().strip()
            fields = _stat(f"/proc/{pid}/task/{tid}/stat")
        except OSError:
            continue
        threads[tid] = (name, (int(fields[11]) + int(fields[12])) / TICK)
    return threads


def thread_split(before: dict[str, tuple[str, float]], after: dict[str, tuple[str, float]], n: int) -> list[str]:
    """The threads that used CPU between two readings, busiest first, as "name: µs per task"."""
    used = []
    for tid, (name, cpu) in after.items():
        spent = cpu - before.get(tid, (name, 0.0))[1]
        if spent > 0:
            used.append((spent, f"{name}[{tid}]"))
    return [f"{label}: {spent / n * 1e6:.0f}" for spent, label in sorted(used, reverse=True)]


def measure(invokes: int, tasks: int) -> dict[str, object]:
    """One run in this process (its ``flamepy`` is the checkout under test)."""
    import flamepy
    from flamepy_core.client.local import live_server, stop_server

    tmp = Path(tempfile.mkdtemp(prefix="fcpu-"))
    home = tmp / "home"
    os.environ["FLAME_HOME"] = str(home)
    for var in ("FLAME_ENDPOINT", "FLAME_CACHE_ENDPOINT"):
        os.environ.pop(var, None)
    app = tmp / "app"
    app.mkdir()
    (app / "echo.py").write_text(SERVICE)
    out: dict[str, object] = {"flamepy": str(Path(flamepy.__file__).parent.parent)}
    try:
        flamepy.register_application(
            "echo", {"command": sys.executable, "arguments": ["echo.py"], "working_directory": str(app)}
        )
        info = live_server(home)
        assert info is not None, "the local server did not start"
        pid = int(str(info["pid"]))
        if invokes:
            session = flamepy.create_session("echo", min_instances=1, max_instances=1)
            for _ in range(200):
                session.invoke(PAYLOAD)
            server, instances, client = process_cpu(pid), children_cpu(pid), time.process_time()
            server_waits, instance_waits = waits(pid), waits(pid, children=True)
            threads = thread_cpu(pid)
            samples = []
            for _ in range(invokes):
                start = time.perf_counter()
                session.invoke(PAYLOAD)
                samples.append(time.perf_counter() - start)
            out["invoke"] = {
                "server_us": (process_cpu(pid) - server) / invokes * 1e6,
                "instances_us": (children_cpu(pid) - instances) / invokes * 1e6,
                "client_us": (time.process_time() - client) / invokes * 1e6,
                "median_us": statistics.median(samples) * 1e6,
                "server_waits": (waits(pid) - server_waits) / invokes,
                "instance_waits": (waits(pid, children=True) - instance_waits) / invokes,
                "server_threads_us": thread_split(threads, thread_cpu(pid), invokes),
            }
            session.close()
        if tasks:
            from concurrent.futures import wait

            session = flamepy.create_session("echo", min_instances=2, max_instances=2)
            wait([session.run(PAYLOAD) for _ in range(200)], timeout=120)
            server, instances, client = process_cpu(pid), children_cpu(pid), time.process_time()
            server_waits, instance_waits = waits(pid), waits(pid, children=True)
            threads = thread_cpu(pid)
            start = time.perf_counter()
            futures = [session.run(PAYLOAD) for _ in range(tasks)]
            wait(futures, timeout=600)
            elapsed = time.perf_counter() - start
            out["run"] = {
                "server_us": (process_cpu(pid) - server) / tasks * 1e6,
                "instances_us": (children_cpu(pid) - instances) / tasks * 1e6,
                "client_us": (time.process_time() - client) / tasks * 1e6,
                "tasks_per_s": tasks / elapsed,
                "server_waits": (waits(pid) - server_waits) / tasks,
                "instance_waits": (waits(pid, children=True) - instance_waits) / tasks,
                "failed": sum(1 for f in futures if not f.done() or f.exception() is not None),
                "server_threads_us": thread_split(threads, thread_cpu(pid), tasks),
            }
            session.close()
    finally:
        stop_server(home)
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def run_checkout(checkout: str, invokes: int, tasks: int) -> dict[str, object]:
    """``measure`` in a child process whose path starts with ``checkout`` (inherited by the server)."""
    # The bundled transports live in their own folder of the tree: theirs too, or a transport change is not measured.
    transports = str(Path(checkout) / "transports")
    path = [checkout, transports if Path(transports).is_dir() else "", os.environ.get("PYTHONPATH", "")]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, path)))
    argv = [sys.executable, __file__, "--child", "--invokes", str(invokes), "--tasks", str(tasks)]
    # Run from the checkout: the server it starts (``python -m flamepy_core.engine``) puts its working
    # directory first on its path, so from any other source tree it would import that tree's runtime.
    proc = subprocess.run(argv, env=env, cwd=checkout, capture_output=True, text=True, timeout=1800, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"the run with {checkout} failed:\n{proc.stderr[-3000:]}")
    result: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--invokes", type=int, default=3000)
    parser.add_argument("--tasks", type=int, default=10000)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--checkout", action="append", default=[], help="a source tree to measure (repeatable)")
    parser.add_argument(
        "--transport", choices=("zmq", "grpc"), help="the local server's transport (FLAME_TRANSPORT; default: zmq)"
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.transport:
        # The children and their server inherit both; the instance links too, so that ``grpc`` measures
        # gRPC's path (a gRPC server links services written with flamepy over zmq unless told otherwise).
        os.environ["FLAME_TRANSPORT"] = os.environ["FLAME_INSTANCE_TRANSPORT"] = args.transport
    if args.child:
        print(json.dumps(measure(args.invokes, args.tasks)))
        return 0
    checkouts = [str(Path(c).resolve()) for c in args.checkout] or [str(Path(__file__).resolve().parent.parent)]
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for round_ in range(args.rounds):
        for checkout in checkouts:
            result = run_checkout(checkout, args.invokes, args.tasks)
            for row in ("invoke", "run"):
                data = result.get(row)
                if not isinstance(data, dict):
                    continue
                numbers = "  ".join(
                    f"{k} {v:.1f}" if k.endswith("_waits") else f"{k} {v:.0f}"
                    for k, v in data.items()
                    if isinstance(v, float | int)
                )
                print(f"round {round_ + 1} {checkout} {row}: {numbers}")
                print(f"    server threads (µs per task): {', '.join(data['server_threads_us'])}")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
