"""CPU time per warm call of a service process alone, driven over ZeroMQ with no server in between: A/B-ready.

``bench_server_cpu.py`` measures the instance inside the whole path, where the server's CPU (three times
the instance's) and its threads share the machine with it. This one starts the service process of
``bench_invoke.py`` (echo) on a ZeroMQ ipc endpoint, binds it to a session (``OnSessionEnter``) and calls
``OnTaskInvoke`` with a 100-byte input N times from this process, as flamepy's server would; it prints
the service process's CPU per call (user + system, all its threads, from ``/proc``), its voluntary
context switches per call (``instance_waits``: each thread hand-off is one, whatever the load), this
driver's CPU and the call's median round trip.

A/B: ``--checkout DIR`` (repeatable) runs the same measurement with each checkout's ``flamepy``,
``flamepy_core`` and bundled transports first on the path (the service process inherits it),
alternating checkouts for ``--rounds`` rounds, and prints each checkout's means. Linux only (``/proc``).

Usage: ``python benchmarks/bench_instance_cpu.py [--calls 10000] [--rounds 5] [--checkout OLD --checkout NEW]``.
Nothing is asserted: this is a measurement.
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
from bench_server_cpu import process_cpu, waits

PAYLOAD = b"x" * 100
WARMUP = 500


def measure(calls: int) -> dict[str, float]:
    """One run in this process (its ``flamepy`` is the checkout under test)."""
    from flamepy_core.plugins import get_registry
    from flamepy_core.wire.payload_messages import ON_SESSION_ENTER, ON_TASK_INVOKE, task_context
    from flamepy_core.wire.proto import shim_pb2

    tmp = Path(tempfile.mkdtemp(prefix="fic-"))
    (tmp / "echo.py").write_text(CORE_SERVICE)
    endpoint = f"zmq+ipc://{tmp}/i.ipc"
    env = dict(os.environ, FLAME_INSTANCE_ENDPOINT=endpoint)
    proc = subprocess.Popen([sys.executable, "echo.py"], cwd=tmp, env=env)
    try:
        deadline = time.monotonic() + 60
        while not (tmp / "i.ipc").exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the service process did not start listening")
            time.sleep(0.02)
        channel = get_registry().transport("zmq").connect(endpoint)
        app = shim_pb2.ApplicationContext(name="echo")
        channel.unary(ON_SESSION_ENTER, shim_pb2.SessionContext(session_id="1", application=app).SerializeToString())
        request = task_context("1", "1", PAYLOAD)
        for _ in range(WARMUP):
            channel.unary(ON_TASK_INVOKE, request, timeout=60)
        cpu, switches, driver = process_cpu(proc.pid), waits(proc.pid), time.process_time()
        samples = []
        for _ in range(calls):
            start = time.perf_counter()
            channel.unary(ON_TASK_INVOKE, request, timeout=60)
            samples.append(time.perf_counter() - start)
        out = {
            "instance_us": (process_cpu(proc.pid) - cpu) / calls * 1e6,
            "instance_waits": (waits(proc.pid) - switches) / calls,
            "driver_us": (time.process_time() - driver) / calls * 1e6,
            "median_us": statistics.median(samples) * 1e6,
        }
        channel.close()
        return out
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


def run_checkout(checkout: str, calls: int) -> dict[str, float]:
    """``measure`` in a child process whose path starts with ``checkout`` (inherited by the service)."""
    transports = str(Path(checkout) / "transports")
    path = [checkout, transports if Path(transports).is_dir() else "", os.environ.get("PYTHONPATH", "")]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, path)))
    argv = [sys.executable, __file__, "--child", "--calls", str(calls)]
    proc = subprocess.run(argv, env=env, cwd=checkout, capture_output=True, text=True, timeout=1800, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"the run with {checkout} failed:\n{proc.stderr[-3000:]}")
    result: dict[str, float] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=10000)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--checkout", action="append", default=[], help="a source tree to measure (repeatable)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.calls)))
        return 0
    checkouts = [str(Path(c).resolve()) for c in args.checkout] or [str(Path(__file__).resolve().parent.parent)]
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    results: dict[str, list[dict[str, float]]] = {checkout: [] for checkout in checkouts}
    for round_ in range(args.rounds):
        for checkout in checkouts:
            result = run_checkout(checkout, args.calls)
            results[checkout].append(result)
            numbers = "  ".join(f"{k} {v:.1f}" if k.endswith("_waits") else f"{k} {v:.0f}" for k, v in result.items())
            print(f"round {round_ + 1} {checkout}: {numbers}")
    for checkout, rows in results.items():
        means = "  ".join(f"{k} {statistics.mean(row[k] for row in rows):.1f}" for k in rows[0])
        print(f"mean {checkout}: {means}")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
