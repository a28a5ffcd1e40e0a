"""flamepy beside Ray and Dask: the same workloads and payloads, in one run, on this machine.

Each workload of ``bench_invoke.py`` that a peer has an equivalent for, measured on flamepy and on each
peer that is installed (a peer that is not is printed as a ``skipped: pip install ...`` row; neither is
a dependency of flamepy or of its tests):

* warm call, 100 bytes: flamepy ``Session.invoke`` on a session whose instance is bound; Ray an actor
  method call and a remote task (``ray.get(...)``); Dask ``client.submit(...).result()`` on a
  ``LocalCluster`` of worker processes.
* throughput of ``--tasks`` calls returning their 100-byte input: flamepy ``Session.run()`` on one
  session with 2 instances; Ray actor calls spread over 2 actors, and remote tasks; Dask
  ``client.map`` + ``client.gather`` on 2 worker processes.
* 16 MiB request answered with 16 MiB: the warm call of each, with the large payload.
* cold start: flamepy's local server start + a first invoke (what ``ray.init`` and a ``LocalCluster``
  compare with) and a new application's first invoke with the server up; Ray ``ray.init`` + its first
  actor call; Dask ``LocalCluster`` + ``Client`` + its first result.

The systems run one after the other, each stopped before the next starts, so none loads the machine
while another is measured. Ratios are the peer's time / flamepy's time for the same workload (for
throughput, flamepy's tasks/s / the peer's): above 1, the peer is slower. No timing is asserted
anywhere: this is a measurement.

Usage: ``python benchmarks/bench_peers.py [--iterations 300] [--tasks 2000] [--peers ray,dask] [--json]``.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_invoke import (  # a sibling script, found through the line above
    CORE_SERVICE,
    LARGE,
    PAYLOAD,
    _measure,
    _percentile,
    _register,
    compile_packages,
    first_invokes_of_new_applications,
    run_throughput,
)

PEERS = {"ray": "ray", "dask": "dask[distributed]"}
"""Each peer and what to ``pip install`` for it."""

WARM, THROUGHPUT, LARGE_CALL, COLD = "warm", "throughput", "large", "cold"
TITLES = {
    WARM: "warm call, 100-byte request and response",
    THROUGHPUT: "throughput: {tasks} calls returning their 100-byte input",
    LARGE_CALL: "16 MiB request and response",
    COLD: "cold start (median and max, not p99)",
}


@dataclass
class Row:
    """One line of the table: a system's way of doing one workload, and what it measured."""

    workload: str
    system: str
    what: str
    samples: list[float] = field(default_factory=list)
    tasks_per_s: float | None = None
    failed: int = 0
    note: str = ""
    baseline: bool = False
    """flamepy's row that the peers' rows of this workload are compared with."""

    @property
    def median(self) -> float | None:
        return statistics.median(self.samples) if self.samples else None

    @property
    def tail(self) -> float | None:
        """The 99th percentile, or the maximum for cold starts (too few runs for a p99)."""
        if not self.samples:
            return None
        return max(self.samples) if self.workload == COLD else _percentile(self.samples, 99)


# -- what the peers run: module level, so that Ray and Dask can ship them to their workers ---------------


def echo(data: bytes) -> bytes:
    return data


class Echo:
    """A Ray actor's class: one method returning its argument."""

    def echo(self, data: bytes) -> bytes:
        return data


# -- flamepy --------------------------------------------------------------------------------------------


@contextmanager
def _fresh_home(tmp: Path, name: str) -> Iterator[Path]:
    """A new FLAME_HOME whose local server the first call starts, stopped on the way out."""
    from flamepy_core.client.connection import reset_default_connection
    from flamepy_core.client.local import stop_server

    home = tmp / name
    os.environ["FLAME_HOME"] = str(home)
    reset_default_connection()
    try:
        yield home
    finally:
        reset_default_connection()
        stop_server(home)


def _server_start_and_first_invoke(tmp: Path, run: int) -> float:
    """Seconds from registering an application in a new home (its first call starts the local server)
    to the answer of its first session's first invoke."""
    import flamepy

    app_dir = tmp / f"app{run}"
    app_dir.mkdir()
    start = time.perf_counter()
    _register(app_dir, "first", CORE_SERVICE)
    session = flamepy.create_session("first")
    session.invoke(PAYLOAD)
    elapsed = time.perf_counter() - start
    session.close()
    return elapsed


def flamepy_rows(tmp: Path, iterations: int, tasks: int, large_iterations: int, cold_runs: int) -> list[Row]:
    import flamepy

    server_start = Row(COLD, "flamepy", "local server start + register + first invoke", baseline=True)
    for run in range(cold_runs - 1):
        with _fresh_home(tmp, f"home{run}"):
            server_start.samples.append(_server_start_and_first_invoke(tmp, run))
    with _fresh_home(tmp, "home"):  # the last one's server stays up for the rest
        server_start.samples.append(_server_start_and_first_invoke(tmp, cold_runs - 1))
        app_dir = tmp / "app"
        app_dir.mkdir()
        new_app = Row(COLD, "flamepy", "new application's first invoke, server up")
        new_app.samples = first_invokes_of_new_applications(app_dir, cold_runs)
        _register(app_dir, "bench", CORE_SERVICE)
        session = flamepy.create_session("bench", min_instances=1, max_instances=1)
        session.invoke(PAYLOAD)
        warm = Row(WARM, "flamepy", "core Session.invoke, warm session", baseline=True)
        warm.samples = _measure(lambda: session.invoke(PAYLOAD), iterations)
        large = Row(LARGE_CALL, "flamepy", "core Session.invoke, warm session", baseline=True)
        large.samples = _measure(lambda: session.invoke(LARGE), large_iterations, warmup=1)
        session.close()
        through = Row(THROUGHPUT, "flamepy", "Session.run(), 1 session, 2 instances", baseline=True)
        # (until every future is done, as Ray's rows are: the server records the tasks right after)
        through.tasks_per_s, _recorded, through.failed = run_throughput("bench", tasks)
    return [warm, through, large, server_start, new_app]


# -- Ray ------------------------------------------------------------------------------------------------


def _rate(call: Callable[[], object], tasks: int) -> float:
    start = time.perf_counter()
    call()
    return tasks / (time.perf_counter() - start)


def ray_rows(iterations: int, tasks: int, large_iterations: int, cold_runs: int) -> list[Row]:
    import ray

    actor_class = ray.remote(Echo)
    task = ray.remote(echo)
    cold = Row(COLD, "ray", "ray.init + first actor call")
    for run in range(cold_runs):
        if run:
            ray.shutdown()
        start = time.perf_counter()
        ray.init(include_dashboard=False)
        actor = actor_class.remote()
        ray.get(actor.echo.remote(PAYLOAD))
        cold.samples.append(time.perf_counter() - start)
    try:
        actor_call = Row(WARM, "ray", "actor method call, ray.get")
        actor_call.samples = _measure(lambda: ray.get(actor.echo.remote(PAYLOAD)), iterations)
        task_call = Row(WARM, "ray", "remote task, ray.get")
        task_call.samples = _measure(lambda: ray.get(task.remote(PAYLOAD)), iterations)
        large = Row(LARGE_CALL, "ray", "actor method call, ray.get")
        large.samples = _measure(lambda: ray.get(actor.echo.remote(LARGE)), large_iterations, warmup=1)
        actors = [actor, actor_class.remote()]
        ray.get([a.echo.remote(PAYLOAD) for a in actors])
        actor_rate = Row(THROUGHPUT, "ray", "actor calls on 2 actors, one ray.get")
        actor_rate.tasks_per_s = _rate(
            lambda: ray.get([actors[i % 2].echo.remote(PAYLOAD) for i in range(tasks)]), tasks
        )
        task_rate = Row(THROUGHPUT, "ray", "remote tasks, one ray.get")
        task_rate.tasks_per_s = _rate(lambda: ray.get([task.remote(PAYLOAD) for _ in range(tasks)]), tasks)
    finally:
        ray.shutdown()
    return [actor_call, task_call, actor_rate, task_rate, large, cold]


# -- Dask -----------------------------------------------------------------------------------------------


def dask_rows(iterations: int, tasks: int, large_iterations: int, cold_runs: int) -> list[Row]:
    from distributed import Client, LocalCluster

    def cluster() -> Any:
        return LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)

    cold = Row(COLD, "dask", "LocalCluster + Client + first result")
    for _ in range(cold_runs):
        start = time.perf_counter()
        with cluster() as local, Client(local) as client:
            client.submit(echo, PAYLOAD, pure=False).result()
            cold.samples.append(time.perf_counter() - start)
    with cluster() as local, Client(local) as client:
        # pure=False: a new key per call, or Dask would answer a repeated call from its first result.
        warm = Row(WARM, "dask", "client.submit().result()")
        warm.samples = _measure(lambda: client.submit(echo, PAYLOAD, pure=False).result(), iterations)
        large = Row(LARGE_CALL, "dask", "client.submit().result()")
        with warnings.catch_warnings():  # "Sending large graph": it is the request a user would send
            warnings.simplefilter("ignore", UserWarning)
            large.samples = _measure(
                lambda: client.submit(echo, LARGE, pure=False).result(), large_iterations, warmup=1
            )
        rate = Row(THROUGHPUT, "dask", "client.map + client.gather, 2 worker processes")
        rate.tasks_per_s = _rate(lambda: client.gather(client.map(echo, [PAYLOAD] * tasks, pure=False)), tasks)
    return [warm, rate, large, cold]


PEER_ROWS: dict[str, Callable[[int, int, int, int], list[Row]]] = {"ray": ray_rows, "dask": dask_rows}


def version_of(peer: str) -> str | None:
    """The installed version of a peer, or None when it is not installed (Dask needs its distributed)."""
    modules = ("dask", "distributed") if peer == "dask" else (peer,)
    if any(importlib.util.find_spec(module) is None for module in modules):
        return None
    return " ".join(f"{m} {_installed_version(m)}" for m in modules)


def _installed_version(module: str) -> str:
    try:
        return importlib.metadata.version(module)
    except importlib.metadata.PackageNotFoundError:  # importable without a distribution (a source tree)
        return "(version unknown)"


# -- the report -----------------------------------------------------------------------------------------


def with_ratios(rows: list[Row]) -> list[dict[str, Any]]:
    """Rows as data, each with its ratio against flamepy's baseline row of the same workload."""
    baselines = {row.workload: row for row in rows if row.baseline}
    out = []
    for row in rows:
        base = baselines.get(row.workload)
        ratio = None
        if base is not None and row.tasks_per_s and base.tasks_per_s:
            ratio = base.tasks_per_s / row.tasks_per_s
        elif base is not None and row.median is not None and base.median:
            ratio = row.median / base.median
        data = {k: v for k, v in asdict(row).items() if k not in ("samples", "baseline")}
        out.append({**data, "median_s": row.median, "tail_s": row.tail, "ratio": ratio, "runs": len(row.samples)})
    return out


def _time(seconds: float | None, workload: str) -> str:
    if seconds is None:
        return ""
    return f"{seconds * 1e6:.0f}us" if workload == WARM else f"{seconds * 1e3:.1f}ms"


def print_table(rows: list[dict[str, Any]], header: str, tasks: int) -> None:
    print(header)
    print(f"{'':<62}{'median':>12}{'p99':>12}{'ratio':>8}")
    for workload in (WARM, THROUGHPUT, LARGE_CALL, COLD):
        print(TITLES[workload].format(tasks=tasks))
        for row in (r for r in rows if r["workload"] == workload):
            label = f"  {row['system']}: {row['what']}"
            if row["note"]:
                print(f"{label:<62}{row['note']}")
                continue
            ratio = "" if row["ratio"] is None else f"{row['ratio']:.2f}"
            if workload == THROUGHPUT:
                failed = f" ({row['failed']} failed)" if row["system"] == "flamepy" else ""
                print(f"{label:<62}{row['tasks_per_s']:>10.0f}/s{'':>12}{ratio:>8}{failed}")
            else:
                median, tail = _time(row["median_s"], workload), _time(row["tail_s"], workload)
                print(f"{label:<62}{median:>12}{tail:>12}{ratio:>8}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=300, help="warm calls per row (300)")
    parser.add_argument("--tasks", type=int, default=2000, help="calls in each throughput row (2000)")
    parser.add_argument("--large-iterations", type=int, default=5, help="16 MiB round trips per row (5)")
    parser.add_argument("--cold-runs", type=int, default=2, help="cold starts per row (2)")
    parser.add_argument(
        "--peers", default="ray,dask", help="comma-separated peers to run beside flamepy (default: ray,dask)"
    )
    parser.add_argument(
        "--transport",
        default="uds",
        choices=("uds", "zmq", "grpc"),
        help="flamepy's transport (default: uds, the local default)",
    )
    parser.add_argument(
        "--no-compile",
        action="store_true",
        help="do not compile flamepy's packages to bytecode first, as bench_invoke.py does (Ray and Dask come "
        "compiled by pip)",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args()
    peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    unknown = [p for p in peers if p not in PEERS]
    if unknown:
        parser.error(f"--peers: unknown peer(s) {', '.join(unknown)}; choose from {', '.join(PEERS)}")
    if min(args.iterations, args.tasks, args.large_iterations, args.cold_runs) < 1:
        parser.error("--iterations, --tasks, --large-iterations and --cold-runs must each be at least 1")

    compiled = [] if args.no_compile else compile_packages()
    load_before = os.getloadavg()
    tmp = Path(tempfile.mkdtemp(prefix="fp-", dir="/tmp"))  # short: unix socket paths stay short
    for var in ("FLAME_ENDPOINT", "FLAME_CACHE_ENDPOINT"):
        os.environ.pop(var, None)
    os.environ["FLAME_TRANSPORT"] = args.transport
    versions = {"flamepy": importlib.metadata.version("flamepy")}
    failed_peer = False
    try:
        rows = flamepy_rows(tmp, args.iterations, args.tasks, args.large_iterations, args.cold_runs)
        for peer in peers:
            version = version_of(peer)
            if version is None:
                note = f"skipped: pip install {PEERS[peer]}"
                rows += [Row(workload, peer, "not installed", note=note) for workload in TITLES]
                continue
            versions[peer] = version
            try:
                rows += PEER_ROWS[peer](args.iterations, args.tasks, args.large_iterations, args.cold_runs)
            except Exception as error:  # a peer that cannot start here: say why, measure the others
                traceback.print_exc()
                failed_peer = True
                note = f"failed: {type(error).__name__}: {error}"[:200]
                rows += [Row(workload, peer, "did not run", note=note) for workload in TITLES]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    load_after = os.getloadavg()
    report = with_ratios(rows)
    python = sys.version.split()[0]
    if args.json:
        machine = {
            "cpus": os.cpu_count(),
            "python": python,
            "load_average": [load_before, load_after],
            "bytecode_compiled": bool(compiled),
        }
        print(json.dumps({"machine": machine, "versions": versions, "tasks": args.tasks, "rows": report}, indent=2))
    else:
        before, after = (" ".join(f"{x:.2f}" for x in load) for load in (load_before, load_after))
        names = ", ".join(f"{name} {version}" if name == "flamepy" else version for name, version in versions.items())
        header = (
            f"{names}; flamepy on {args.transport}{'' if compiled else ' (bytecode as found: --no-compile)'}; "
            f"{os.cpu_count()} CPUs, Python {python}, "
            f"load average {before} -> {after}; ratio: peer's time / flamepy's"
        )
        print_table(report, header, args.tasks)
    return 1 if failed_peer else 0


if __name__ == "__main__":
    sys.exit(main())
