"""Warm ``invoke`` latency and ``run()`` throughput through the local server, against the raw floor.

Measured in one run, on this machine:

* ``raw two-hop``: a 100-byte unary call client -> relay process -> worker process -> back, with plain
  grpcio (identity serializers) over unix sockets, or with ``--transport zmq`` plain pyzmq DEALER/ROUTER
  over ipc: the floor of that transport for any client -> server -> instance path.
* ``core invoke``: ``flamepy.core`` ``Session.invoke(bytes)`` on a warm session (instance already bound).
* ``service invoke``: ``flamepy.service.Session.invoke(obj)`` (adds cloudpickle both ways).
* ``run() throughput``: N no-op tasks submitted with ``Session.run()`` to one session with 2 instances.

Usage: ``python benchmarks/bench_invoke.py [--iterations 2000] [--tasks 10000] [--transport grpc|zmq]``.
Prints a table; ratios are ours / raw. No timing is asserted anywhere: this is a measurement.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import shutil
import statistics
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path

PAYLOAD = b"x" * 100


def _measure(call: Callable[[], object], iterations: int, warmup: int = 200) -> list[float]:
    """Seconds per call, after ``warmup`` calls that are not counted."""
    for _ in range(warmup):
        call()
    samples = []
    for _ in range(iterations):
        start = time.perf_counter()
        call()
        samples.append(time.perf_counter() - start)
    return samples


def _percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


# -- the raw floor: grpcio, two hops ------------------------------------------------------------------


def _raw_worker(path: str, ready: mp.synchronize.Event) -> None:
    import grpc

    server = grpc.server(ThreadPoolExecutor(max_workers=4))
    handler = grpc.unary_unary_rpc_method_handler(lambda req, ctx: req)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("b.W", {"Echo": handler}),))
    server.add_insecure_port(f"unix://{path}")
    server.start()
    ready.set()
    server.wait_for_termination()


def _raw_relay(path: str, worker: str, ready: mp.synchronize.Event) -> None:
    import grpc

    channel = grpc.insecure_channel(f"unix://{worker}")
    forward = channel.unary_unary("/b.W/Echo")
    server = grpc.server(ThreadPoolExecutor(max_workers=4))
    handler = grpc.unary_unary_rpc_method_handler(lambda req, ctx: forward(req))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("b.R", {"Relay": handler}),))
    server.add_insecure_port(f"unix://{path}")
    server.start()
    ready.set()
    server.wait_for_termination()


@contextlib.contextmanager
def _two_hops(
    worker: Callable[..., None], relay: Callable[..., None], worker_path: str, relay_path: str
) -> Iterator[None]:
    """A worker process and a relay process in front of it, both ready, stopped afterwards."""
    ctx = mp.get_context("spawn")
    ready_w, ready_r = ctx.Event(), ctx.Event()
    procs = [
        ctx.Process(target=worker, args=(worker_path, ready_w), daemon=True),
        ctx.Process(target=relay, args=(relay_path, worker_path, ready_r), daemon=True),
    ]
    for proc in procs:
        proc.start()
    try:
        if not (ready_w.wait(30) and ready_r.wait(30)):
            raise RuntimeError("raw baseline servers did not start")
        yield
    finally:
        for proc in procs:
            proc.terminate()
            proc.join(5)


def raw_two_hop(tmp: Path, iterations: int) -> list[float]:
    import grpc

    relay_path = str(tmp / "r.sock")
    with _two_hops(_raw_worker, _raw_relay, str(tmp / "w.sock"), relay_path):
        channel = grpc.insecure_channel(f"unix://{relay_path}")
        call = channel.unary_unary("/b.R/Relay")
        samples = _measure(lambda: call(PAYLOAD, timeout=10), iterations)
        channel.close()
        return samples


def _zmq_worker(path: str, ready: mp.synchronize.Event) -> None:
    import zmq

    sock = zmq.Context().socket(zmq.ROUTER)
    sock.bind(f"ipc://{path}")
    ready.set()
    while True:
        sock.send_multipart(sock.recv_multipart())


def _zmq_relay(path: str, worker: str, ready: mp.synchronize.Event) -> None:
    import zmq

    ctx = zmq.Context()
    front = ctx.socket(zmq.ROUTER)
    front.bind(f"ipc://{path}")
    back = ctx.socket(zmq.DEALER)
    back.connect(f"ipc://{worker}")
    ready.set()
    while True:
        ident, payload = front.recv_multipart()
        back.send(payload)
        front.send_multipart([ident, back.recv()])


def raw_two_hop_zmq(tmp: Path, iterations: int) -> list[float]:
    import zmq

    relay_path = str(tmp / "r.ipc")
    with _two_hops(_zmq_worker, _zmq_relay, str(tmp / "w.ipc"), relay_path):
        sock = zmq.Context.instance().socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVTIMEO, 10000)
        sock.connect(f"ipc://{relay_path}")

        def round_trip() -> bytes:
            sock.send(PAYLOAD)
            return sock.recv()

        samples = _measure(round_trip, iterations)
        sock.close()
        return samples


# -- flamepy through the local server ----------------------------------------------------------------

CORE_SERVICE = textwrap.dedent(
    """
    import flamepy

    class Echo(flamepy.FlameService):
        def on_task_invoke(self, context):
            return context.input

    if __name__ == "__main__":
        flamepy.run(Echo())
    """
)
TYPED_SERVICE = textwrap.dedent(
    """
    from flamepy import service

    ins = service.FlameInstance()

    @ins.entrypoint
    def noop(req):
        return req

    if __name__ == "__main__":
        ins.run()
    """
)


def flamepy_numbers(tmp: Path, iterations: int, tasks: int) -> dict[str, object]:
    import flamepy
    from flamepy.service import Session as ServiceSession

    app_dir = tmp / "app"
    app_dir.mkdir()
    for name, code in (("bench", CORE_SERVICE), ("bench-typed", TYPED_SERVICE)):
        (app_dir / f"{name}.py").write_text(code)
        flamepy.register_application(
            name,
            {"command": sys.executable, "arguments": [f"{name}.py"], "working_directory": str(app_dir)},
        )
    results: dict[str, object] = {}

    session = flamepy.create_session("bench", min_instances=1, max_instances=1)
    start = time.perf_counter()
    session.invoke(PAYLOAD)
    results["first_invoke_s"] = time.perf_counter() - start
    results["core_invoke"] = _measure(lambda: session.invoke(PAYLOAD), iterations)
    session.close()

    # A new session on the warm instance left by the previous one.
    start = time.perf_counter()
    session = flamepy.create_session("bench")
    session.invoke(PAYLOAD)
    results["new_session_warm_s"] = time.perf_counter() - start
    session.close()

    with ServiceSession("bench-typed") as typed:
        results["service_invoke"] = _measure(lambda: typed.invoke(PAYLOAD), iterations)

    session = flamepy.create_session("bench", min_instances=2, max_instances=2)
    session.invoke(PAYLOAD)
    start = time.perf_counter()
    futures = [session.run(PAYLOAD) for _ in range(tasks)]
    wait(futures, timeout=600)
    elapsed = time.perf_counter() - start
    failed = sum(1 for f in futures if not f.done() or f.exception() is not None)
    results["throughput_tasks_per_s"] = tasks / elapsed
    results["throughput_failed"] = failed
    session.close()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--tasks", type=int, default=10000)
    parser.add_argument(
        "--transport",
        default="zmq",
        choices=("zmq", "grpc"),
        help="the local server's transport, and the raw floor measured against it (default: zmq)",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="fb-", dir="/tmp"))
    os.environ["FLAME_HOME"] = str(tmp / "home")
    for var in ("FLAME_ENDPOINT", "FLAME_CACHE_ENDPOINT"):
        os.environ.pop(var, None)
    os.environ["FLAME_TRANSPORT"] = args.transport
    from flamepy_core.client.local import stop_server

    try:
        raw = (raw_two_hop_zmq if args.transport == "zmq" else raw_two_hop)(tmp, args.iterations)
        ours = flamepy_numbers(tmp, args.iterations, args.tasks)
    finally:
        stop_server(tmp / "home")
        shutil.rmtree(tmp, ignore_errors=True)

    raw_med = statistics.median(raw)
    floor = "raw pyzmq two hops (floor)" if args.transport == "zmq" else "raw grpcio two hops (floor)"
    rows = [(floor, raw_med, _percentile(raw, 99), 1.0)]
    for key, label in (("core_invoke", "flamepy core invoke (warm)"), ("service_invoke", "flamepy service invoke")):
        samples = ours[key]
        assert isinstance(samples, list)
        med = statistics.median(samples)
        rows.append((label, med, _percentile(samples, 99), med / raw_med))
    if args.json:
        print(json.dumps({"rows": rows, **{k: v for k, v in ours.items() if not isinstance(v, list)}}, indent=2))
        return 0
    print(f"{'path (100-byte payload)':<32}{'median':>12}{'p99':>12}{'ratio':>8}")
    for label, med, p99, ratio in rows:
        print(f"{label:<32}{med * 1e6:>10.0f}us{p99 * 1e6:>10.0f}us{ratio:>8.2f}")
    print(f"first invoke of a new session (cold instance): {float(ours['first_invoke_s']) * 1000:.0f} ms")  # type: ignore[arg-type]
    print(f"new session + first invoke on a warm instance: {float(ours['new_session_warm_s']) * 1000:.1f} ms")  # type: ignore[arg-type]
    print(
        f"run() throughput, {args.tasks} no-op tasks, 2 instances: "
        f"{float(ours['throughput_tasks_per_s']):.0f} tasks/s ({ours['throughput_failed']} failed)"  # type: ignore[arg-type]
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
