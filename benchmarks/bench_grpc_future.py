"""One gRPC call at a time, four ways: what an asynchronous call costs the caller's process on gRPC.

A grpcio echo server runs in a child process (unix socket, no serialization); this process makes
100-byte calls one after another, each way in turn for ``--rounds`` rounds so all four see the same load:

* ``blocking``: the plain synchronous call (the calling thread waits on the call's own completion queue);
* ``kit pool``: that call on the kit's fallback pool (``unary_async`` for a channel without its own), the
  caller waiting for the pool's future: a hand-off there and one back;
* ``future, a thread per call``: grpcio's ``future()``; with no other call in flight grpcio starts a
  completion thread for the call and ends it after, so this is a thread start per call;
* ``GrpcChannel.unary_async``: the transport's ``future()`` call with the completion thread kept.

It prints the median per call and the CPU this process used per call. Usage: ``python
benchmarks/bench_grpc_future.py [--calls 3000] [--rounds 5]``. Nothing is asserted: a measurement.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

PAYLOAD = b"x" * 100


def _echo_server(path: str, ready: mp.synchronize.Event) -> None:
    import grpc

    server = grpc.server(ThreadPoolExecutor(max_workers=4))
    handler = grpc.unary_unary_rpc_method_handler(lambda request, _context: request)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("b.W", {"Echo": handler}),))
    server.add_insecure_port(f"unix://{path}")
    server.start()
    ready.set()
    server.wait_for_termination()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    import grpc
    from flamepy_transports.grpc.plugin import GrpcTransport

    from flamepy_core.transport_kit import unary_async

    path = os.path.join(tempfile.mkdtemp(prefix="fgf-"), "echo.sock")
    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    server = ctx.Process(target=_echo_server, args=(path, ready), daemon=True)
    server.start()
    if not ready.wait(30):
        raise SystemExit("the echo server did not start")
    raw = grpc.insecure_channel(f"unix://{path}")
    call = raw.unary_unary("/b.W/Echo")
    ours = GrpcTransport().connect(f"unix://{path}")

    class Blocking:  # a channel without unary_async: the kit runs it on its pool
        endpoint = "unix://" + path

        def unary(self, method: str, request: bytes, timeout: object = None) -> bytes:
            return call(request, timeout=10)  # type: ignore[no-any-return]

    blocking_channel = Blocking()

    def per_call_thread() -> bytes:
        done: Future[bytes] = Future()
        call.future(PAYLOAD, timeout=10).add_done_callback(lambda f: done.set_result(f.result()))
        return done.result()

    ways: dict[str, Callable[[], object]] = {
        "blocking": lambda: call(PAYLOAD, timeout=10),
        "kit pool": lambda: unary_async(blocking_channel, "/b.W/Echo", PAYLOAD).result(),  # type: ignore[arg-type]
        "future, a thread per call": per_call_thread,
        "GrpcChannel.unary_async": lambda: ours.unary_async("/b.W/Echo", PAYLOAD, timeout=10).result(),
    }
    samples: dict[str, list[float]] = {name: [] for name in ways}
    cpu = dict.fromkeys(ways, 0.0)
    for way in ways.values():
        for _ in range(300):
            way()
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for _ in range(args.rounds):
        for name, way in ways.items():
            began = time.process_time()
            for _ in range(args.calls // args.rounds):
                start = time.perf_counter()
                way()
                samples[name].append(time.perf_counter() - start)
            cpu[name] += time.process_time() - began
    for name in ways:
        median = statistics.median(samples[name]) * 1e6
        print(f"{name:28s} median {median:6.0f} µs   CPU {cpu[name] / len(samples[name]) * 1e6:5.0f} µs per call")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    ours.close()
    raw.close()
    server.terminate()
    server.join(5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
