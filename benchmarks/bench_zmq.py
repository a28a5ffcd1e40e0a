"""Round trip of a unary call over flamepy's zmq+ipc transport next to raw pyzmq DEALER/ROUTER over ipc.

Both servers run in a process of their own and echo the request; the client side runs here. For each
payload size it prints the median and p99 round trip of both, and ours as a multiple of raw::

    python benchmarks/bench_zmq.py                       # 100 B and 16 MiB, about 15 s
    python benchmarks/bench_zmq.py --payload-size 100 --iterations 5000

The raw side is the floor: one DEALER, one ROUTER echoing frames zero-copy, no threads. Ours is
measured three ways in the same run, so each row shows what one design choice costs:

* ``I/O thread``: the caller hands its call to the channel's I/O thread and waits (``direct_calls=False``),
  and the server runs the handler on a worker thread: four thread hand-offs per call;
* ``caller I/O``: the caller uses the idle channel's socket itself (the default, ``direct_calls=True``):
  two hand-offs, both on the server;
* ``+ deferred``: as above, and the server's handler is a ``DeferredHandler`` that answers on the
  server's I/O thread (what a server does when it has the answer at hand): no hand-off at all.
"""

from __future__ import annotations

import argparse
import os
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import zmq

ECHO = "/bench.Zmq/Echo"

OURS_SERVER = f"""
import sys
from flamepy_core.contracts import DeferredHandler, UnaryHandler
from flamepy_core.plugins import get_registry

if sys.argv[2] == "deferred":
    handler = DeferredHandler(lambda request, ctx, responder: responder.send(request))
else:
    handler = UnaryHandler(lambda request, ctx: request)
server = get_registry().transport("zmq").serve(sys.argv[1], {{"{ECHO}": handler}})
print("READY " + server.endpoint, flush=True)
sys.stdin.read()
server.stop(0)
"""

RAW_SERVER = """
import sys, zmq
ctx = zmq.Context()
sock = ctx.socket(zmq.ROUTER)
sock.linger = 0
sock.bind(sys.argv[1])
print("READY " + sys.argv[1], flush=True)
poller = zmq.Poller()
poller.register(sock, zmq.POLLIN)
poller.register(sys.stdin, zmq.POLLIN)
while True:
    ready = dict(poller.poll())
    if sock in ready:
        sock.send_multipart(sock.recv_multipart(copy=False), copy=False)
    else:
        break
sock.close()
ctx.term()
"""


class Child:
    """A server process that prints ``READY <endpoint>`` and exits when its stdin closes."""

    def __init__(self, script: str, endpoint: str, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", script, endpoint, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        line = b""
        deadline = time.monotonic() + 30
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                self.close()
                raise RuntimeError("the server process did not get ready within 30 s")
            chunk = os.read(fd, 1)
            if not chunk:
                raise RuntimeError("the server process exited before it was ready")
            line += chunk
        self.endpoint = line.decode().split(" ", 1)[1].strip()

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def measure(call: Callable[[], None], iterations: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        call()
    samples = []
    for _ in range(iterations):
        start = time.perf_counter()
        call()
        samples.append(time.perf_counter() - start)
    return samples


def summary(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return statistics.median(ordered), p99


def bench_ours(endpoint: str, payload: bytes, iterations: int, warmup: int, direct: bool) -> list[float]:
    from flamepy_core.plugins import get_registry

    channel = get_registry().transport("zmq", direct_calls=direct).connect(endpoint)
    try:

        def call() -> None:
            if len(channel.unary(ECHO, payload, timeout=30)) != len(payload):
                raise RuntimeError("wrong answer")

        return measure(call, iterations, warmup)
    finally:
        channel.close()


def bench_raw(endpoint: str, payload: bytes, iterations: int, warmup: int) -> list[float]:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(endpoint)
    try:

        def call() -> None:
            sock.send(payload, copy=len(payload) < 65536)
            if len(sock.recv()) != len(payload):  # bytes, as our unary() returns
                raise RuntimeError("wrong answer")

        return measure(call, iterations, warmup)
    finally:
        sock.close()
        ctx.term()


def human(size: int) -> str:
    for unit, scale in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale and size % scale == 0:
            return f"{size // scale} {unit}"
    return f"{size} B"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--payload-size",
        type=int,
        action="append",
        help="payload bytes; repeat for several (default: 100 and 16 MiB)",
    )
    parser.add_argument("--iterations", type=int, default=3000, help="round trips per small payload")
    parser.add_argument("--large-iterations", type=int, default=40, help="round trips per payload of 1 MiB or more")
    parser.add_argument("--warmup", type=int, default=200, help="untimed round trips first (small payloads)")
    args = parser.parse_args(argv)
    sizes = args.payload_size or [100, 16 * 1024 * 1024]

    tmp = tempfile.mkdtemp(prefix="fzb")
    unary = Child(OURS_SERVER, f"zmq+ipc://{tmp}/ours.ipc", "unary")
    deferred = Child(OURS_SERVER, f"zmq+ipc://{tmp}/deferred.ipc", "deferred")
    raw = Child(RAW_SERVER, f"ipc://{tmp}/raw.ipc")
    rows = (
        ("flamepy, I/O thread", unary, False),
        ("flamepy, caller I/O", unary, True),
        ("  + deferred", deferred, True),
    )
    try:
        load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
        print(
            f"flamepy zmq+ipc vs raw pyzmq DEALER/ROUTER ipc (pyzmq {zmq.__version__}, libzmq {zmq.zmq_version()}, "
            f"{os.cpu_count()} cpus, load average {load})"
        )
        print(f"{'payload':>10}  {'path':<20} {'median':>12} {'p99':>12}  {'ratio median':>12} {'ratio p99':>10}")
        for size in sizes:
            payload = os.urandom(size)
            large = size >= 1 << 20
            iterations = args.large_iterations if large else args.iterations
            warmup = 3 if large else args.warmup
            raw_med, raw_p99 = summary(bench_raw(raw.endpoint, payload, iterations, warmup))
            unit, scale = ("ms", 1e3) if large else ("us", 1e6)
            print(f"{human(size):>10}  {'raw pyzmq':<20} {raw_med * scale:>9.1f} {unit} {raw_p99 * scale:>9.1f} {unit}")
            for label, server, direct in rows:
                our_med, our_p99 = summary(bench_ours(server.endpoint, payload, iterations, warmup, direct))
                print(
                    f"{'':>10}  {label:<20} {our_med * scale:>9.1f} {unit} {our_p99 * scale:>9.1f} {unit}"
                    f"  {our_med / raw_med:>11.2f}x {our_p99 / raw_p99:>9.2f}x"
                )
    finally:
        unary.close()
        deferred.close()
        raw.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
