"""CPU time per task of the local server, its instances and the client, read from ``/proc``: A/B-ready.

Wall-clock medians move with whatever else the machine runs; CPU time per task moves much less, so
this is the measure for changes to the server's per-task work. One run starts a local server in a
fresh ``FLAME_HOME`` and measures, after a warm-up and once the server's child processes are quiet (a
generic or spare process starting up is no task's cost):

* ``invoke``: N warm ``invoke`` calls (100 bytes) on a session with one instance;
* ``run``: T no-op ``run()`` tasks on a session with two instances, until every future is done.

For each it prints the server's CPU per task (user + system, all its threads: the ZeroMQ library's own
I/O threads included), split by thread; the instances' (the server's child processes) and the
client's; and the invoke median or the tasks per second. Also the voluntary context switches per task
of the server's and the instances' threads (``server_waits``, ``instance_waits``): each thread hand-off
on the path is one, so they count hand-offs whatever the load.

Where a warm invoke's CPU goes, by process and thread kind. For ``invoke`` it then prints, per warm
invoke and per process (``client``: this benchmark's process; ``server``; ``instance``: the server's
child processes, the session's instance and an idle generic process if one is kept):

* ``Python threads``: the CPU of every thread not named ``ZMQbg*`` (the interpreter's threads; under
  ``--transport grpc`` grpcio's own C threads count here too);
* ``libzmq I/O threads``: the CPU of libzmq's own threads (``ZMQbg/IO/0``, ``ZMQbg/Reaper``);
* ``CPU``: both; ``run-queue wait``: how long its threads were ready to run but waited for a CPU (on a
  virtual machine that includes waking an idle virtual CPU);
* then the three processes' CPU together beside the wall-clock mean of one invoke.

Read from ``/proc/<pid>/task/<tid>/schedstat`` (nanoseconds: run time, run-queue wait); where the kernel
has none, from ``/proc`` stat's clock ticks (10 ms: use more invokes) with no run-queue wait ("n/a").

The floor (``--floor``, on by default; not with ``--transport grpc``): in each round, after the
checkouts, the raw pyzmq two-hop path of ``bench_invoke.py`` (a DEALER in this process -> its relay
process, ROUTER then DEALER -> its worker process, ROUTER, which echoes) is run N times with 100
bytes and split the same way, client / relay / worker standing where client / server / instance stand.
Then a table gives, per process, flamepy's CPU per warm invoke and the floor's per round trip, and
their ratio, for the Python threads and for libzmq's: what flamepy adds over two bare ZeroMQ hops,
process by process.

Why the CPU adds up to about the wall clock: one invoke at a time goes client -> server -> instance
and back, each thread waiting for the one before it, so at any moment about one thread on the path runs.
With the machine otherwise idle (load about 1, 2 CPUs) the processes' CPU per invoke summed is close to
the wall-clock mean, and the split is where the time goes. Above it, threads ran at once (the two CPUs
overlapped); below it, the path waited (a run queue, an idle CPU waking up): the run-queue wait says
how much. On a loaded machine the wall clock grows, the CPU much less.

A/B: ``--checkout DIR`` (repeatable) runs the same measurement with each checkout's ``flamepy``,
``flamepy_core`` and bundled transports (``DIR/transports``) first on the path (the server and the
instances inherit it), alternating checkouts for ``--rounds`` rounds, so both see the same load; the
floor runs once per round and each checkout is compared with it. ``--transport grpc`` (or ``zmq``)
runs the server and its instance links on gRPC (ZeroMQ) (``FLAME_INSTANCE_TRANSPORT``); without it, on
the local default (uds). With uds, no thread is a libzmq I/O thread: the split's libzmq column is 0.
Linux only (``/proc``).

Usage: ``python benchmarks/bench_server_cpu.py [--invokes 3000] [--tasks 10000] [--rounds 3]
[--checkout OLD --checkout NEW] [--transport grpc] [--no-floor]``. Nothing is asserted: this is a
measurement.
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
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from bench_invoke import CORE_SERVICE, _measure  # this folder is first on the path when a benchmark runs

PAYLOAD = b"x" * 100
TICK = os.sysconf("SC_CLK_TCK")
SERVICE = CORE_SERVICE
"""The echo service of ``bench_invoke.py``: it answers each task with its input."""
ZMQ_THREAD = "ZMQbg"
"""How libzmq names its own threads (``ZMQbg/IO/0``, ``ZMQbg/Reaper``): every other thread is counted as
a Python thread."""
FLOOR_WARMUP = 500


def timed(call: Callable[[], object], n: int) -> tuple[list[float], float]:
    """``call()`` run ``n`` times (``bench_invoke``'s ``_measure``, no warm-up): each one's seconds, and the
    seconds of all of them together (the wall-clock mean the CPU per call is set beside)."""
    began = time.perf_counter()
    samples = _measure(call, n, warmup=0)
    return samples, time.perf_counter() - began


def _stat(path: str) -> list[str]:
    with open(path) as fh:
        return fh.read().rsplit(")", 1)[1].split()


class ThreadTimes(NamedTuple):
    """One reading of one thread: its name, the CPU it has used and how long it has waited to run."""

    name: str
    run_ns: int
    wait_ns: int | None
    """Time spent runnable but waiting for a CPU (the run queue); ``None`` where only ticks are read."""


def _schedstat_works() -> bool:
    """Whether ``/proc/<pid>/task/<tid>/schedstat`` counts: it reads in nanoseconds (``/proc`` stat in
    clock ticks of 10 ms, too coarse for one thread's share of a few thousand calls), but a kernel built
    without scheduler statistics has no such file, or one that reads zero (this thread has run: it
    started Python)."""
    try:
        with open(f"/proc/self/task/{os.getpid()}/schedstat") as fh:
            return int(fh.read().split()[0]) > 0
    except (OSError, ValueError, IndexError):
        return False


SCHEDSTAT = _schedstat_works()
SOURCE = "schedstat" if SCHEDSTAT else "stat ticks"


def read_thread(pid: int, tid: str) -> ThreadTimes | None:
    """A thread's name and times, or ``None`` if it ended meanwhile."""
    base = f"/proc/{pid}/task/{tid}"
    try:
        with open(f"{base}/comm") as fh:
            name = fh.read().strip()
        if SCHEDSTAT:
            with open(f"{base}/schedstat") as fh:
                run, wait = fh.read().split()[:2]
            return ThreadTimes(name, int(run), int(wait))
        fields = _stat(f"{base}/stat")
        return ThreadTimes(name, (int(fields[11]) + int(fields[12])) * 1_000_000_000 // TICK, None)
    except (OSError, ValueError, IndexError):
        return None


Snapshot = dict[tuple[str, int, str], ThreadTimes]
"""Readings keyed by (the process's label, its pid, the thread's id)."""


def snapshot(processes: dict[str, list[int]]) -> Snapshot:
    """Every live thread of the labelled processes."""
    out: Snapshot = {}
    for label, pids in processes.items():
        for pid in pids:
            try:
                tids = os.listdir(f"/proc/{pid}/task")
            except OSError:
                continue  # the process ended meanwhile
            for tid in tids:
                reading = read_thread(pid, tid)
                if reading is not None:
                    out[(label, pid, tid)] = reading
    return out


def cpu_split(before: Snapshot, after: Snapshot, n: int) -> dict[str, dict[str, float | None]]:
    """Per labelled process, µs per call between two snapshots: the CPU of its Python threads
    (``python_us``), of libzmq's own I/O threads (``zmq_us``), both (``total_us``), and the time its
    threads waited in the run queue (``runq_wait_us``, ``None`` without schedstat). A thread started
    in between counts from zero; one that ended in between is not counted (none does on a warm path)."""
    sums: dict[str, list[int]] = {key[0]: [0, 0, 0] for key in [*before, *after]}  # in the labels' order
    for key, now in after.items():
        then = before.get(key, ThreadTimes(now.name, 0, 0))
        row = sums[key[0]]
        row[1 if now.name.startswith(ZMQ_THREAD) else 0] += now.run_ns - then.run_ns
        if now.wait_ns is not None and then.wait_ns is not None:
            row[2] += now.wait_ns - then.wait_ns
    return {
        label: {
            "python_us": python / n / 1e3,
            "zmq_us": zmq / n / 1e3,
            "total_us": (python + zmq) / n / 1e3,
            "runq_wait_us": wait / n / 1e3 if SCHEDSTAT else None,
        }
        for label, (python, zmq, wait) in sums.items()
    }


def children(pid: int) -> list[int]:
    """The live child processes of ``pid`` (the server's: its instances, and a spare process if any)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if int(_stat(f"/proc/{entry}/stat")[1]) == pid:
                    found.append(int(entry))
            except (OSError, IndexError, ValueError):
                continue  # gone meanwhile
    return found


def process_cpu(pid: int) -> float:
    """Seconds of CPU (user + system) the process has used."""
    fields = _stat(f"/proc/{pid}/stat")
    return (int(fields[11]) + int(fields[12])) / TICK


def settle(pid: int, deadline: float = 20.0) -> None:
    """Wait until the server's children are quiet: the same processes over three readings 0.3 s apart,
    using under 3 ms of CPU each between the first and the last (an idle instance uses about 1 ms a
    second: its heartbeats), or until ``deadline`` seconds passed. The server starts its generic process
    0.25 s after handing the last one to an instance, and a spare after a session's process left; such a
    start (some 100 ms of CPU importing the runtime) is no task's cost, but inside the measurement it was
    counted as the instances' (up to 130 µs per task in a run of 500 tasks)."""
    end = time.monotonic() + deadline
    readings: list[tuple[list[int], int]] = []
    while time.monotonic() < end:
        kids = sorted(children(pid))
        readings = [*readings[-2:], (kids, sum(t.run_ns for t in snapshot({"": kids}).values()))]
        quiet = readings[-1][1] - readings[0][1] < 3_000_000 * len(kids)
        if len(readings) == 3 and quiet and all(r[0] == kids for r in readings):
            return
        time.sleep(0.3)


def children_cpu(pid: int) -> float:
    """Seconds of CPU used by the live children of ``pid`` (the server's instance processes)."""
    total = 0.0
    for child in children(pid):
        try:
            total += process_cpu(child)
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
    return total


def waits(pid: int, of_children: bool = False) -> int:
    """Voluntary context switches of the live threads of ``pid`` (or of its live children): how often a
    thread went to sleep waiting (for a socket, a lock, another thread). Each thread hand-off is one such
    wait, so the count per task moves with the hand-offs, not with the machine's load; threads that ended
    meanwhile are not counted."""
    total = 0
    for one in children(pid) if of_children else [pid]:
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
            session.invoke(PAYLOAD)
            settle(pid)
            for _ in range(200):
                session.invoke(PAYLOAD)
            server, instances, client = process_cpu(pid), children_cpu(pid), time.process_time()
            server_waits, instance_waits = waits(pid), waits(pid, of_children=True)
            threads = thread_cpu(pid)
            processes = {"client": [os.getpid()], "server": [pid], "instance": children(pid)}
            before = snapshot(processes)
            samples, elapsed = timed(lambda: session.invoke(PAYLOAD), invokes)
            split = cpu_split(before, snapshot({**processes, "instance": children(pid)}), invokes)
            out["invoke"] = {
                "server_us": (process_cpu(pid) - server) / invokes * 1e6,
                "instances_us": (children_cpu(pid) - instances) / invokes * 1e6,
                "client_us": (time.process_time() - client) / invokes * 1e6,
                "median_us": statistics.median(samples) * 1e6,
                "server_waits": (waits(pid) - server_waits) / invokes,
                "instance_waits": (waits(pid, of_children=True) - instance_waits) / invokes,
                "server_threads_us": thread_split(threads, thread_cpu(pid), invokes),
                # Not a number: the lines printed before this split (and quoted in the docs) stay as they were.
                "split": {"source": SOURCE, "wall_mean_us": elapsed / invokes * 1e6, "processes": split},
            }
            session.close()
        if tasks:
            from concurrent.futures import wait

            session = flamepy.create_session("echo", min_instances=2, max_instances=2)
            wait([session.run(PAYLOAD) for _ in range(200)], timeout=120)
            settle(pid)
            wait([session.run(PAYLOAD) for _ in range(200)], timeout=120)
            server, instances, client = process_cpu(pid), children_cpu(pid), time.process_time()
            server_waits, instance_waits = waits(pid), waits(pid, of_children=True)
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
                "instance_waits": (waits(pid, of_children=True) - instance_waits) / tasks,
                "failed": sum(1 for f in futures if not f.done() or f.exception() is not None),
                "server_threads_us": thread_split(threads, thread_cpu(pid), tasks),
            }
            session.close()
    finally:
        stop_server(home)
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def measure_floor(round_trips: int) -> dict[str, object]:
    """The raw pyzmq two-hop floor, split as ``measure`` splits a warm invoke: a DEALER in this process
    sends 100 bytes to ``bench_invoke``'s relay process (ROUTER in front, DEALER behind), which passes it
    to its worker process (ROUTER, echoes) and the answer back; ``round_trips`` of them after a warm-up.
    Client, relay and worker stand where flamepy's client, server and instance stand, with no work
    between the socket calls: what is left above it is flamepy's."""
    import zmq
    from bench_invoke import _two_hops, _zmq_relay, _zmq_worker

    tmp = Path(tempfile.mkdtemp(prefix="ffloor-"))
    relay_path = str(tmp / "r.ipc")
    try:
        with _two_hops(_zmq_worker, _zmq_relay, str(tmp / "w.ipc"), relay_path) as (worker, relay):
            ctx = zmq.Context()
            sock = ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.RCVTIMEO, 60000)  # a dead relay fails the run instead of hanging it
            sock.connect(f"ipc://{relay_path}")
            try:
                for _ in range(FLOOR_WARMUP):
                    sock.send(PAYLOAD)
                    sock.recv()
                processes = {"client": [os.getpid()], "relay": [int(str(relay.pid))], "worker": [int(str(worker.pid))]}
                before = snapshot(processes)
                samples, elapsed = timed(lambda: (sock.send(PAYLOAD), sock.recv()), round_trips)
                split = cpu_split(before, snapshot(processes), round_trips)
            finally:
                sock.close()
                ctx.term()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        "source": SOURCE,
        "wall_mean_us": elapsed / round_trips * 1e6,
        "median_us": statistics.median(samples) * 1e6,
        "processes": split,
    }


def _us(value: object) -> str:
    return f"{value:.0f}" if isinstance(value, float | int) else "n/a"


def _rows(split: dict[str, object]) -> dict[str, dict[str, float | None]]:
    """The per-process rows of a split (as ``measure`` or ``measure_floor`` returned it, through JSON)."""
    rows = split["processes"]
    assert isinstance(rows, dict)
    return rows


def _sum(rows: dict[str, dict[str, float | None]], key: str) -> float | None:
    values = [row[key] for row in rows.values()]
    return None if None in values else sum(v for v in values if v is not None)


def split_lines(split: dict[str, object], call: str) -> list[str]:
    """A split's numbers per process, then the three processes' total beside the wall clock."""
    rows = _rows(split)
    lines = [
        f"    {label:<9} Python threads {_us(row['python_us']):>4}  libzmq I/O threads {_us(row['zmq_us']):>4}"
        f"  CPU {_us(row['total_us']):>4}  run-queue wait {_us(row['runq_wait_us']):>4}"
        for label, row in rows.items()
    ]
    lines.append(
        f"    all three: CPU {_us(_sum(rows, 'total_us'))} µs per {call}, run-queue wait"
        f" {_us(_sum(rows, 'runq_wait_us'))}, wall-clock mean {_us(split['wall_mean_us'])}"
    )
    return lines


PAIRS = (("client", "client"), ("server", "relay"), ("instance", "worker"))
"""Each flamepy process and the floor's process in its place."""


def comparison_lines(ours: dict[str, object], floor: dict[str, object]) -> list[str]:
    """Per process, flamepy's CPU per warm invoke beside the floor's per round trip, and the ratio."""
    mine, raw = _rows(ours), _rows(floor)

    def cell(a: object, b: object) -> str:
        if not (isinstance(a, float | int) and isinstance(b, float | int)):
            return "n/a"
        return f"{a:.0f} / {b:.0f}  " + (f"{a / b:4.1f}x" if b > 0 else "  n/a")

    lines = [f"    {'flamepy / floor':<24}{'Python threads':>20}{'libzmq I/O threads':>22}"]
    for ours_label, floor_label in PAIRS:
        a, b = mine.get(ours_label), raw.get(floor_label)
        if a is not None and b is not None:
            python, zmq = cell(a["python_us"], b["python_us"]), cell(a["zmq_us"], b["zmq_us"])
            lines.append(f"    {ours_label + ' / ' + floor_label:<24}{python:>20}{zmq:>22}")
    lines.append(f"    {'all three, CPU':<24}{cell(_sum(mine, 'total_us'), _sum(raw, 'total_us')):>20}")
    lines.append(f"    {'wall-clock mean':<24}{cell(ours['wall_mean_us'], floor['wall_mean_us']):>20}")
    return lines


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
        "--transport",
        choices=("zmq", "grpc", "uds"),
        help="the local server's transport (FLAME_TRANSPORT; default: the local default, uds)",
    )
    parser.add_argument(
        "--floor",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="each round, measure the raw pyzmq two-hop floor the same way, as many round trips as --invokes",
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
        splits = []
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
                split = data.get("split")
                if isinstance(split, dict):
                    splits.append((checkout, split))
                    head = f"round {round_ + 1} {checkout} invoke"
                    print(f"{head}, CPU per warm invoke by process and thread kind (µs, {split['source']}):")
                    print("\n".join(split_lines(split, "invoke")))
        if args.floor and args.invokes and args.transport != "grpc":
            floor = measure_floor(args.invokes)
            print(
                f"round {round_ + 1} floor (raw pyzmq, two hops, {args.invokes} round trips of {len(PAYLOAD)}"
                f" bytes, median {_us(floor['median_us'])} µs), CPU per round trip by process and thread kind"
                f" (µs, {floor['source']}):"
            )
            print("\n".join(split_lines(floor, "round trip")))
            for checkout, split in splits:
                print(f"round {round_ + 1} {checkout}: a warm invoke's CPU against the floor's round trip (µs)")
                print("\n".join(comparison_lines(split, floor)))
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
