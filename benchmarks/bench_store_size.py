"""How big does ``flame.db`` get under a steady load, with each payload retention?

For each retention (the default, and the ones given with ``--retention``) a local server on a fresh
FLAME_HOME runs ``--tasks`` tasks of ``--payload`` bytes through ``run()`` on one session of an echo
service (so each task stores its input and an output of the same size), ``--window`` of them in flight.
Printed: the size of the store on disk (``flame.db`` and its write-ahead log) at every tenth of the run,
its peak, and at the end after one more sweep; the baseline is the payload bytes written in the same run,
and each size is given as a ratio of it.

Usage: ``python benchmarks/bench_store_size.py [--tasks 100000] [--payload 10240] [--retention 0 ...]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

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


def store_bytes(home: Path) -> int:
    total = 0
    for name in ("flame.db", "flame.db-wal"):
        path = home / name
        if path.exists():
            total += path.stat().st_size
    return total


def one_run(tasks: int, payload: int, window: int) -> dict[str, Any]:
    """Runs in a child process whose FLAME_HOME and FLAME_PAYLOAD_RETENTION are set."""
    import flamepy
    from flamepy_core.engine.retention import sweep_interval

    home = Path(os.environ["FLAME_HOME"])
    (home / "svc").mkdir(parents=True, exist_ok=True)
    (home / "svc" / "echo.py").write_text(SERVICE)
    flamepy.register_application(
        "echo", {"command": sys.executable, "arguments": ["echo.py"], "working_directory": str(home / "svc")}
    )
    session = flamepy.create_session("echo", max_instances=2)
    data = os.urandom(payload)
    samples: list[int] = []
    peak = 0
    started = time.perf_counter()
    in_flight = []
    step = max(1, tasks // 10)
    for i in range(1, tasks + 1):
        in_flight.append(session.run(data))
        if len(in_flight) >= window:
            for future in in_flight:
                future.result(timeout=600)
            in_flight.clear()
            peak = max(peak, store_bytes(home))
        if i % step == 0:
            samples.append(store_bytes(home))
    for future in in_flight:
        future.result(timeout=600)
    took = time.perf_counter() - started
    session.close()
    retention = float(os.environ.get("FLAME_PAYLOAD_RETENTION", "3600"))
    time.sleep(min(5.0, sweep_interval(retention) + 1.0))  # one more sweep for the short retentions
    end = store_bytes(home)
    return {
        "retention": retention,
        "tasks": tasks,
        "seconds": round(took, 2),
        "samples": samples,
        "peak": max(peak, *samples),
        "end": end,
        "db": (home / "flame.db").stat().st_size,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--payload", type=int, default=10 * 1024, help="bytes of each task's input (and output)")
    parser.add_argument("--window", type=int, default=1000, help="tasks in flight")
    parser.add_argument(
        "--retention", type=float, action="append", default=None, help="a retention to compare (repeatable)"
    )
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one_run(args.tasks, args.payload, args.window)))
        return 0
    runs: list[dict[str, Any]] = []
    for retention in [None, *(args.retention or [0.0, 60.0])]:
        home = Path(tempfile.mkdtemp(prefix="fbs-", dir="/tmp"))
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLAME_")}
        env["FLAME_HOME"] = str(home)
        env["FLAME_IDLE_EXIT"] = "30"
        if retention is not None:
            env["FLAME_PAYLOAD_RETENTION"] = f"{retention:g}"
        argv = [sys.executable, __file__, "--one", "--tasks", str(args.tasks), "--payload", str(args.payload)]
        argv += ["--window", str(args.window)]
        try:
            out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=3600, check=True).stdout
            runs.append(json.loads(out.strip().splitlines()[-1]))
        finally:
            subprocess.run(
                [sys.executable, "-m", "flamepy_core.cli.main", "server", "stop"], env=env, capture_output=True
            )
            shutil.rmtree(home, ignore_errors=True)
    written = args.tasks * args.payload * 2
    if args.json:
        print(json.dumps({"written": written, "runs": runs}))
        return 0
    mib = 1024 * 1024
    print(f"{args.tasks} tasks of {args.payload} bytes in and out: {written / mib:.0f} MiB of payloads written")
    print(
        f"{'retention':>10} {'tasks/s':>8} {'peak MiB':>9} {'end MiB':>8} {'end/written':>12}  "
        "sizes at each tenth (MiB)"
    )
    for run in runs:
        samples: list[int] = run["samples"]
        tenths = " ".join(f"{s / mib:.0f}" for s in samples)
        rate = run["tasks"] / run["seconds"]
        print(
            f"{run['retention']:>9g}s {rate:>8.0f} {run['peak'] / mib:>9.1f} "
            f"{run['end'] / mib:>8.1f} {run['end'] / written:>12.3f}  {tenths}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
