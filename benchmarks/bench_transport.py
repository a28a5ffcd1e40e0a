"""Round-trip latency of one unary call: each of our transports against its raw floor, in the same run.

Paths (each an echo: the response is as large as the request; every server but inmem's runs in another
process):

* ``inmem``     - our in-memory transport, caller and handler in this process;
* ``grpc-unix`` - our gRPC transport over a unix socket;
* ``raw-grpc``  - plain grpcio over a unix socket (generic handler, identity serializers): the floor of
  ``grpc-unix``;
* ``zmq-ipc``   - our ZeroMQ transport over ``ipc`` (a unary handler on the server's worker pool);
* ``raw-zmq``   - plain pyzmq, a DEALER and a ROUTER echoing over ``ipc``: the floor of ``zmq-ipc``;
* ``tcp-unix``  - the example transport built on the kit (``examples/flamepy-transport-tcp``) over a unix
  socket, when it is installed;
* ``raw-unix``  - a plain unix socket with length-prefixed messages, one blocking thread per connection:
  the floor of ``tcp-unix`` (measured only with it).

The paths are measured in interleaved rounds so a noisy moment hurts all of them alike. Examples::

    python benchmarks/bench_transport.py                       # 100-byte payload
    python benchmarks/bench_transport.py --payload-size 16777216
    python benchmarks/bench_transport.py --iterations 5000 --json
"""

from __future__ import annotations

import argparse
import json
import os
import select
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

METHOD = "/bench.Echo/Echo"
MAX_MESSAGE = 256 * 1024 * 1024
LARGE = 1024 * 1024
"""From this payload size on, the default iteration count is small (each call moves megabytes)."""
WORKERS = 32
FLOORS = {"grpc-unix": "raw-grpc", "zmq-ipc": "raw-zmq", "tcp-unix": "raw-unix"}
"""Each of our paths and the raw path it is compared with."""
_LENGTH = struct.Struct("!Q")


# -- the server processes ----------------------------------------------------------------------------


def _echo(request: bytes, ctx: Any) -> bytes:
    return request


def serve_ours(endpoint: str) -> None:
    from flamepy_transports.grpc.plugin import GrpcTransport

    from flamepy_core.contracts import UnaryHandler

    server = GrpcTransport(max_message_size=MAX_MESSAGE, max_workers=WORKERS).serve(
        endpoint, {METHOD: UnaryHandler(_echo)}
    )
    print(server.endpoint, flush=True)
    sys.stdin.read()  # until the parent closes our stdin
    server.stop()


def serve_zmq(endpoint: str) -> None:
    from flamepy_transports.zmq.plugin import ZmqTransport

    from flamepy_core.contracts import UnaryHandler

    server = ZmqTransport(max_message_size=MAX_MESSAGE).serve(endpoint, {METHOD: UnaryHandler(_echo)})
    print(server.endpoint, flush=True)
    sys.stdin.read()
    server.stop(0)


def serve_raw_zmq(endpoint: str) -> None:
    import zmq

    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.linger = 0
    sock.setsockopt(zmq.MAXMSGSIZE, -1)
    sock.bind(endpoint)
    print(endpoint, flush=True)
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    poller.register(sys.stdin, zmq.POLLIN)
    while sock in dict(poller.poll()):
        sock.send_multipart(sock.recv_multipart(copy=False), copy=False)
    sock.close()
    ctx.term()


def serve_tcp(endpoint: str) -> None:
    from flamepy_transport_tcp.transport import TcpTransport

    from flamepy_core.contracts import UnaryHandler

    server = TcpTransport(max_message_size=MAX_MESSAGE, max_workers=WORKERS).serve(
        endpoint, {METHOD: UnaryHandler(_echo)}
    )
    print(server.endpoint, flush=True)
    sys.stdin.read()
    server.stop(0)


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    buffer = bytearray(size)
    view = memoryview(buffer)
    got = 0
    while got < size:
        n = sock.recv_into(view[got:])
        if n == 0:
            raise EOFError
        got += n
    return bytes(buffer)


def serve_raw_unix(endpoint: str) -> None:
    path = endpoint.removeprefix("unix://")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen()

    def echo(conn: socket.socket) -> None:
        with conn:
            try:
                while True:
                    (size,) = _LENGTH.unpack(_read_exactly(conn, _LENGTH.size))
                    conn.sendall(_LENGTH.pack(size) + _read_exactly(conn, size))
            except (EOFError, OSError):
                return

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=echo, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    print(endpoint, flush=True)
    sys.stdin.read()
    listener.close()


def raw_unix_client(endpoint: str, payload: bytes) -> tuple[Callable[[], bytes], Callable[[], None]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(endpoint.removeprefix("unix://"))
    message = _LENGTH.pack(len(payload)) + payload

    def call() -> bytes:
        sock.sendall(message)
        (size,) = _LENGTH.unpack(_read_exactly(sock, _LENGTH.size))
        return _read_exactly(sock, size)

    return call, sock.close


def raw_zmq_client(endpoint: str, payload: bytes) -> tuple[Callable[[], bytes], Callable[[], None]]:
    import zmq

    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.setsockopt(zmq.MAXMSGSIZE, -1)
    sock.connect(endpoint)
    copy = len(payload) < 65536

    def call() -> bytes:
        sock.send(payload, copy=copy)
        return sock.recv()

    def close() -> None:
        sock.close()
        ctx.term()

    return call, close


def serve_raw(endpoint: str) -> None:
    import grpc

    class Echo(grpc.GenericRpcHandler):  # type: ignore[misc]
        def service(self, details: Any) -> Any:
            if details.method == METHOD:
                return grpc.unary_unary_rpc_method_handler(_echo)  # no serializers: bytes pass through
            return None

    options = [("grpc.max_send_message_length", MAX_MESSAGE), ("grpc.max_receive_message_length", MAX_MESSAGE)]
    server = grpc.server(ThreadPoolExecutor(max_workers=WORKERS), handlers=[Echo()], options=options)
    server.add_insecure_port(endpoint)
    server.start()
    print(endpoint, flush=True)
    sys.stdin.read()
    server.stop(None).wait(10)


class ServerProcess:
    """This script in ``--serve`` mode, in another process; stopped by closing its stdin."""

    def __init__(self, kind: str, endpoint: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--serve", kind, endpoint],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 60)
        line = self.proc.stdout.readline().strip() if ready else ""
        if not line:
            self.stop()
            raise RuntimeError(f"the {kind} server process did not start within 60 s")
        self.endpoint = line

    def stop(self) -> None:
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=15)


# -- measuring ---------------------------------------------------------------------------------------


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def measure(call: Callable[[], bytes], count: int, size: int, into: list[float]) -> None:
    clock = time.perf_counter_ns
    for _ in range(count):
        started = clock()
        response = call()
        into.append((clock() - started) / 1000.0)
        if len(response) != size:
            raise RuntimeError(f"echo returned {len(response)} bytes, expected {size}")


def _kit_example_installed() -> bool:
    try:
        import flamepy_transport_tcp  # noqa: F401
    except ImportError:
        return False
    return True


def run(iterations: int, payload_size: int, rounds: int, warmup: int) -> dict[str, Any]:
    import grpc
    import zmq
    from flamepy_transports.grpc.plugin import GrpcTransport
    from flamepy_transports.inmem.transport import InMemoryTransport
    from flamepy_transports.zmq.plugin import ZmqTransport

    from flamepy_core.contracts import UnaryHandler

    payload = os.urandom(payload_size)
    workdir = tempfile.mkdtemp(prefix="flamebench-")
    servers: list[ServerProcess] = []
    closers: list[Callable[[], object]] = []
    try:
        inmem = InMemoryTransport(max_message_size=MAX_MESSAGE)
        inmem_server = inmem.serve("inmem://bench", {METHOD: UnaryHandler(_echo)})
        closers.append(inmem_server.stop)
        inmem_channel = inmem.connect("inmem://bench")

        ours = ServerProcess("ours", f"unix://{workdir}/ours.sock")
        servers.append(ours)
        grpc_channel = GrpcTransport(max_message_size=MAX_MESSAGE).connect(ours.endpoint)
        closers.append(grpc_channel.close)
        grpc_channel.wait_ready(30)

        raw_server = ServerProcess("raw", f"unix://{workdir}/raw.sock")
        servers.append(raw_server)
        options = [("grpc.max_send_message_length", MAX_MESSAGE), ("grpc.max_receive_message_length", MAX_MESSAGE)]
        raw_channel = grpc.insecure_channel(raw_server.endpoint, options=options)
        closers.append(raw_channel.close)
        grpc.channel_ready_future(raw_channel).result(timeout=30)
        raw_call = raw_channel.unary_unary(METHOD)

        zmq_server = ServerProcess("zmq", f"zmq+ipc://{workdir}/zmq.ipc")
        servers.append(zmq_server)
        zmq_channel = ZmqTransport(max_message_size=MAX_MESSAGE).connect(zmq_server.endpoint)
        closers.append(zmq_channel.close)

        raw_zmq_server = ServerProcess("raw-zmq", f"ipc://{workdir}/raw-zmq.ipc")
        servers.append(raw_zmq_server)
        raw_zmq_call, raw_zmq_close = raw_zmq_client(raw_zmq_server.endpoint, payload)
        closers.append(raw_zmq_close)

        paths: dict[str, Callable[[], bytes]] = {
            "inmem": lambda: inmem_channel.unary(METHOD, payload),
            "grpc-unix": lambda: grpc_channel.unary(METHOD, payload),
            "raw-grpc": lambda: raw_call(payload, timeout=60),
            "zmq-ipc": lambda: zmq_channel.unary(METHOD, payload, timeout=60),
            "raw-zmq": raw_zmq_call,
        }
        if _kit_example_installed():
            from flamepy_transport_tcp.transport import TcpTransport

            tcp_server = ServerProcess("tcp", f"tcp+unix://{workdir}/tcp.sock")
            servers.append(tcp_server)
            tcp_channel = TcpTransport(max_message_size=MAX_MESSAGE).connect(tcp_server.endpoint)
            closers.append(tcp_channel.close)
            raw_unix_server = ServerProcess("raw-unix", f"unix://{workdir}/raw-unix.sock")
            servers.append(raw_unix_server)
            raw_unix_call, raw_unix_close = raw_unix_client(raw_unix_server.endpoint, payload)
            closers.append(raw_unix_close)
            paths["tcp-unix"] = lambda: tcp_channel.unary(METHOD, payload, timeout=60)
            paths["raw-unix"] = raw_unix_call
        samples: dict[str, list[float]] = {name: [] for name in paths}
        for call in paths.values():
            measure(call, warmup, payload_size, [])  # connections up, caches warm
        per_round = max(1, iterations // rounds)
        for _ in range(rounds):
            for name, call in paths.items():
                measure(call, per_round, payload_size, samples[name])
    finally:
        for close in closers:
            close()
        for server in servers:
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    results = {
        name: {
            "median_us": statistics.median(values),
            "p99_us": percentile(values, 0.99),
            "mean_us": statistics.fmean(values),
            "samples": len(values),
        }
        for name, values in samples.items()
    }
    ratios: dict[str, float] = {}
    for ours, floor in FLOORS.items():
        if ours in results:
            ratios[f"{ours}/{floor} median"] = results[ours]["median_us"] / results[floor]["median_us"]
            ratios[f"{ours}/{floor} p99"] = results[ours]["p99_us"] / results[floor]["p99_us"]
    return {
        "payload_size": payload_size,
        "iterations": per_round * rounds,
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "python": sys.version.split()[0],
        "grpcio": grpc.__version__,
        "pyzmq": zmq.__version__,
        "results": results,
        "ratios": ratios,
    }


def _fmt_us(value: float) -> str:
    return f"{value / 1000:.2f} ms" if value >= 10_000 else f"{value:.1f} µs"


def print_table(report: dict[str, Any]) -> None:
    size = report["payload_size"]
    load = ", ".join(f"{value:.2f}" for value in report["load_average"])
    print(
        f"unary round trip, {size} B payload each way, {report['iterations']} calls per path "
        f"(python {report['python']}, grpcio {report['grpcio']}, pyzmq {report['pyzmq']}, "
        f"{report['cpus']} cpus, load average {load})"
    )
    results = report["results"]
    header = f"{'path':<12} {'median':>12} {'p99':>12} {'floor':>10} {'median / floor':>15} {'p99 / floor':>12}"
    print(header)
    print("-" * len(header))
    for name, row in results.items():
        line = f"{name:<12} {_fmt_us(row['median_us']):>12} {_fmt_us(row['p99_us']):>12}"
        floor = FLOORS.get(name)
        if floor is not None:
            line += (
                f" {floor:>10} {row['median_us'] / results[floor]['median_us']:>14.2f}x"
                f" {row['p99_us'] / results[floor]['p99_us']:>11.2f}x"
            )
        print(line)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--iterations",
        type=int,
        default=None,
        help="measured calls per path (default: 2000, or 40 for payloads of 1 MiB and more)",
    )
    parser.add_argument("--payload-size", type=int, default=100, help="bytes per request and response")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds the calls are split into")
    parser.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    parser.add_argument("--serve", nargs=2, metavar=("KIND", "ENDPOINT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.serve:
        kind, endpoint = args.serve
        serve = {
            "ours": serve_ours,
            "raw": serve_raw,
            "zmq": serve_zmq,
            "raw-zmq": serve_raw_zmq,
            "tcp": serve_tcp,
            "raw-unix": serve_raw_unix,
        }[kind]
        serve(endpoint)
        return 0
    if not 0 <= args.payload_size <= MAX_MESSAGE:
        parser.error(f"--payload-size must be between 0 and {MAX_MESSAGE}")
    large = args.payload_size >= LARGE
    iterations = args.iterations if args.iterations is not None else (40 if large else 2000)
    if iterations < 1:
        parser.error("--iterations must be >= 1")
    rounds = max(1, min(args.rounds, iterations))
    report = run(iterations, args.payload_size, rounds, warmup=3 if large else 200)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_table(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
