"""Warm ``invoke`` latency and ``run()`` throughput through the local server, against the raw floor.

Measured in one run, on this machine:

* ``raw two-hop``: a 100-byte call client -> relay process -> worker process -> back, with the transport's
  own library and nothing else: plain unix sockets (length-prefixed messages, a blocking thread in each
  process) for uds, the default; plain pyzmq DEALER/ROUTER over ipc with ``--transport zmq``; plain grpcio
  (identity serializers) over unix sockets with ``--transport grpc``. The floor of that transport for any
  client -> server -> instance path.
* ``core invoke``: ``flamepy.core`` ``Session.invoke(bytes)`` on a warm session (instance already bound),
  as a user gets it: on a lane (the session's service process lent to the client, the server off the path;
  docs/architecture.md) where the server lends one, as it does a warm session's idle instance.
* ``core invoke, through the server``: the same on another session made with ``FLAMEPY_LANES=0`` (its own
  instance): every call through the server, RunTask; the path a client takes when no lane is lent.
* ``service invoke``: ``flamepy.service.Session.invoke(obj)`` (adds cloudpickle both ways).
* with ``--transport grpc``, ``core invoke, gRPC instance link too``: a server started with
  ``--instance-transport grpc`` (a gRPC server links these services over the local default, uds, otherwise).
* ``16 MiB``: a 16 MiB request answered with 16 MiB, raw two hops against ``flamepy.core`` ``invoke``.
* ``run() throughput``: N no-op tasks submitted with ``Session.run()`` to one session with 2 instances (its
  ``max_instances``: on lanes, docs/architecture.md), until every future is done, and until the session's
  close returns (the server has recorded every task); then the same through the server (``FLAMEPY_LANES=0``).
* cold start: ``spawn until it answers`` (the floor: start a Python process that imports the transport's
  library, listens on a unix socket and answers one call) against ``new session + first invoke`` of an
  application with no process yet (each cold sample right after a floor sample, so both see the same
  load): ``cold``, whose first instance the server hands to its generic process (the runtime already
  imported, see docs/runtime.md), and ``cold, own process``, registered with ``python -u`` (an interpreter
  option: never handed over), started as a process of its own; and ``new session + first invoke`` when a
  spare process of the application is ready (started ahead when the previous session's process left).
  flamepy's packages are compiled to bytecode first, as an installed wheel is (``--no-compile`` to skip).

With uds, the raw pyzmq floor is printed beside its own as a reference: the floor issue 10's targets name.

The 100-byte rows (the floors, core and service invoke) are measured in ``WARM_ROUNDS`` rounds of blocks
alternated between them, and the 16 MiB rows likewise, so that a floor and our path see the same moments
of the machine (see :func:`interleaved`); the floors' processes run, idle, beside the server throughout.

Usage: ``python benchmarks/bench_invoke.py [--iterations 2000] [--tasks 10000] [--transport grpc|zmq|uds]``.
Prints a table; ratios are ours / raw. No timing is asserted anywhere: this is a measurement.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import shutil
import socket
import statistics
import struct
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from functools import partial
from multiprocessing.process import BaseProcess
from pathlib import Path

PAYLOAD = b"x" * 100
LARGE = b"y" * (16 << 20)
GRPC_UNLIMITED = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]


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

    server = grpc.server(ThreadPoolExecutor(max_workers=4), options=GRPC_UNLIMITED)
    handler = grpc.unary_unary_rpc_method_handler(lambda req, ctx: req)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("b.W", {"Echo": handler}),))
    server.add_insecure_port(f"unix://{path}")
    server.start()
    ready.set()
    server.wait_for_termination()


def _raw_relay(path: str, worker: str, ready: mp.synchronize.Event) -> None:
    import grpc

    channel = grpc.insecure_channel(f"unix://{worker}", options=GRPC_UNLIMITED)
    forward = channel.unary_unary("/b.W/Echo")
    server = grpc.server(ThreadPoolExecutor(max_workers=4), options=GRPC_UNLIMITED)
    handler = grpc.unary_unary_rpc_method_handler(lambda req, ctx: forward(req))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("b.R", {"Relay": handler}),))
    server.add_insecure_port(f"unix://{path}")
    server.start()
    ready.set()
    server.wait_for_termination()


@contextlib.contextmanager
def _two_hops(
    worker: Callable[..., None], relay: Callable[..., None], worker_path: str, relay_path: str
) -> Iterator[list[BaseProcess]]:
    """A worker process and a relay process in front of it, both ready, stopped afterwards. Yields the two
    processes (worker, relay): ``bench_server_cpu.py`` reads their CPU from ``/proc``."""
    ctx = mp.get_context("spawn")
    ready_w, ready_r = ctx.Event(), ctx.Event()
    procs: list[BaseProcess] = [
        ctx.Process(target=worker, args=(worker_path, ready_w), daemon=True),
        ctx.Process(target=relay, args=(relay_path, worker_path, ready_r), daemon=True),
    ]
    try:
        # The worker listens before the relay starts: a relay that connects with a plain unix socket (the
        # mixed floor's) fails at once on a path nobody listens on yet.
        procs[0].start()
        if not ready_w.wait(30):
            raise RuntimeError("the raw baseline's worker did not start")
        procs[1].start()
        if not ready_r.wait(30):
            raise RuntimeError("the raw baseline's relay did not start")
        yield procs
    finally:
        for proc in procs:
            if proc.pid is not None:  # (started)
                proc.terminate()
                proc.join(5)


RoundTrip = Callable[[bytes], object]
"""One call of a raw floor: the payload there and back."""


@contextlib.contextmanager
def grpc_floor(tmp: Path) -> Iterator[RoundTrip]:
    """The raw grpcio two-hop floor, running: its round trip."""
    import grpc

    relay_path = str(tmp / "r.sock")
    with _two_hops(_raw_worker, _raw_relay, str(tmp / "w.sock"), relay_path):
        channel = grpc.insecure_channel(f"unix://{relay_path}", options=GRPC_UNLIMITED)
        call = channel.unary_unary("/b.R/Relay")
        try:
            yield lambda payload: call(payload, timeout=60)
        finally:
            channel.close()


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


@contextlib.contextmanager
def zmq_floor(
    tmp: Path,
    *,
    worker: Callable[..., None] = _zmq_worker,
    relay: Callable[..., None] = _zmq_relay,
    worker_name: str = "w.ipc",
) -> Iterator[RoundTrip]:
    """The raw pyzmq two-hop floor, running: its round trip. Another ``worker`` and ``relay`` (and the
    worker's socket file name) run a variant of it: the client's hop stays a ZeroMQ DEALER to the relay's
    ``ipc`` socket."""
    import zmq

    relay_path = str(tmp / f"r-{Path(worker_name).stem}.ipc")
    with _two_hops(worker, relay, str(tmp / worker_name), relay_path):
        sock = zmq.Context.instance().socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVTIMEO, 60000)
        sock.connect(f"ipc://{relay_path}")

        def round_trip(payload: bytes) -> bytes:
            sock.send(payload)
            return sock.recv()

        try:
            yield round_trip
        finally:
            sock.close()


def raw_two_hop_zmq(
    tmp: Path,
    iterations: int,
    large_iterations: int,
    *,
    worker: Callable[..., None] = _zmq_worker,
    relay: Callable[..., None] = _zmq_relay,
    worker_name: str = "w.ipc",
) -> tuple[list[float], list[float]]:
    """The raw pyzmq two-hop floor measured alone (``bench_timeline.py``'s): 100-byte samples and 16 MiB
    samples (none when ``large_iterations`` is 0); ``worker``, ``relay``, ``worker_name``: see
    :func:`zmq_floor`."""
    with zmq_floor(tmp, worker=worker, relay=relay, worker_name=worker_name) as round_trip:
        samples = _measure(lambda: round_trip(PAYLOAD), iterations)
        large = _measure(lambda: round_trip(LARGE), large_iterations, warmup=3) if large_iterations else []
        return samples, large


def unix_send(sock: socket.socket, payload: bytes | bytearray) -> None:
    """One length-prefixed message (a 4-byte length): one system call for a small one, no copy of a large one."""
    head = struct.pack("!I", len(payload))
    if len(payload) <= 65536:
        sock.sendall(head + bytes(payload))
    else:
        sock.sendall(head)
        sock.sendall(payload)


def unix_recv(sock: socket.socket) -> bytes | bytearray:
    """One length-prefixed message; ``EOFError`` when the peer closed."""
    head = _recv_exactly(sock, 4)
    return _recv_exactly(sock, struct.unpack("!I", head)[0])


def _recv_exactly(sock: socket.socket, size: int) -> bytearray:
    data = bytearray(size)
    view, got = memoryview(data), 0
    while got < size:
        n = sock.recv_into(view[got:])
        if not n:
            raise EOFError
        got += n
    return data


def _accept_one(path: str, ready: mp.synchronize.Event) -> socket.socket:
    """Listen on the unix socket ``path``, say so through ``ready``, and return the first connection."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    ready.set()
    return listener.accept()[0]


def _unix_worker(path: str, ready: mp.synchronize.Event) -> None:
    """The raw unix floor's worker: echoes each message on one blocking thread."""
    conn = _accept_one(path, ready)
    with contextlib.suppress(EOFError, OSError):
        while True:
            unix_send(conn, unix_recv(conn))


def _unix_relay(path: str, worker: str, ready: mp.synchronize.Event) -> None:
    """The raw unix floor's relay: each message from its client forwarded to the worker, and back."""
    back = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    deadline = time.monotonic() + 30
    while True:  # the worker starts beside this process: it may not listen yet
        try:
            back.connect(worker)
            break
        except (FileNotFoundError, ConnectionRefusedError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.001)
    front = _accept_one(path, ready)
    with contextlib.suppress(EOFError, OSError):
        while True:
            unix_send(back, unix_recv(front))
            unix_send(front, unix_recv(back))


@contextlib.contextmanager
def unix_floor(tmp: Path) -> Iterator[RoundTrip]:
    """The raw unix-socket two-hop floor (length-prefixed messages, a blocking thread in each process), the
    floor of the ``uds`` transport, running: its round trip."""
    relay_path = str(tmp / "r-unix.sock")
    with _two_hops(_unix_worker, _unix_relay, str(tmp / "w-unix.sock"), relay_path):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(60)
        sock.connect(relay_path)

        def round_trip(payload: bytes) -> bytes | bytearray:
            unix_send(sock, payload)
            return unix_recv(sock)

        try:
            yield round_trip
        finally:
            sock.close()


WARM_ROUNDS = 8
"""Rounds the warm rows are measured in (see :func:`interleaved`)."""
QUIET = 0.03
"""Seconds before each block of :func:`interleaved`: what the block before left running ends first (the
server's store applies what a block of invokes wrote within ``FOLD_DELAY`` and its pauses, ~15 ms)."""


def interleaved(
    calls: dict[str, Callable[[], object]],
    iterations: int,
    rounds: int = WARM_ROUNDS,
    warmup: int = 200,
    block_warmup: int = 10,
) -> dict[str, list[float]]:
    """Seconds per call of each of ``calls``, ``iterations`` of them in all, measured in ``rounds`` blocks
    alternated between the calls (each round in another order), after ``warmup`` calls each, and
    ``block_warmup`` untimed calls before each block.

    Why. On a VM a round trip between processes is mostly the wake-up of another vCPU, whose cost moves
    with the host's load: the floors here read 124 µs and 62 µs an hour apart, and two runs of the same
    code minutes apart 258 and 436 µs. Measured one after the other, a floor and a path compare two
    moments of the machine; alternated in blocks, both see the same ones, and their ratio is the path's."""
    for call in calls.values():
        for _ in range(warmup):
            call()
    samples: dict[str, list[float]] = {name: [] for name in calls}
    names = list(calls)
    block = max(1, iterations // rounds)
    for index in range(rounds):
        for name in names[index % len(names) :] + names[: index % len(names)]:
            time.sleep(QUIET)
            samples[name] += _measure(calls[name], block, warmup=block_warmup)
    return samples


# -- the cold-start floor: spawn a process until it answers -------------------------------------------

SPAWN_ZMQ = """
import sys, zmq
sock = zmq.Context().socket(zmq.ROUTER)
sock.bind("ipc://" + sys.argv[1])
ident, message = sock.recv_multipart()
sock.send_multipart([ident, message])
sock.close(linger=1000)
"""
SPAWN_GRPC = """
import sys, threading, grpc
from concurrent.futures import ThreadPoolExecutor
done = threading.Event()
def echo(request, context):
    done.set()
    return request
server = grpc.server(ThreadPoolExecutor(max_workers=2))
handler = grpc.unary_unary_rpc_method_handler(echo)
server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("b.S", {"Hello": handler}),))
server.add_insecure_port("unix://" + sys.argv[1])
server.start()
done.wait(30)
server.stop(1).wait()
"""


SPAWN_UNIX = """
import socket, struct, sys
listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
listener.bind(sys.argv[1])
listener.listen(1)
conn, _ = listener.accept()
head = conn.recv(4, socket.MSG_WAITALL)
conn.sendall(head + conn.recv(struct.unpack("!I", head)[0], socket.MSG_WAITALL))
conn.close()
"""


def spawn_floor(tmp: Path, transport: str, runs: int, first: int = 0) -> list[float]:
    """Seconds from starting a Python process (which imports the transport's library and listens on a
    unix socket) to its first answer: what any runtime pays to start an instance, before its own work."""
    import subprocess

    samples = []
    for run in range(first, first + runs):
        path = str(tmp / f"spawn{run}.{'ipc' if transport == 'zmq' else 'sock'}")
        start = time.perf_counter()
        code = {"zmq": SPAWN_ZMQ, "uds": SPAWN_UNIX}.get(transport, SPAWN_GRPC)
        child = subprocess.Popen([sys.executable, "-c", code, path])
        while not os.path.exists(path):  # connect once it listens (both libraries back off when refused)
            time.sleep(0.0005)
        if transport == "uds":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(30)
            while True:  # the file appears at bind, before listen: a refused connect is tried again
                try:
                    sock.connect(path)
                    break
                except ConnectionRefusedError:
                    time.sleep(0.0005)
            unix_send(sock, b"hello")
            unix_recv(sock)
            sock.close()
        elif transport == "zmq":
            import zmq

            sock = zmq.Context.instance().socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.RCVTIMEO, 30000)
            sock.connect(f"ipc://{path}")
            sock.send(b"hello")
            sock.recv()
            sock.close()
        else:
            import grpc

            channel = grpc.insecure_channel(f"unix://{path}")
            channel.unary_unary("/b.S/Hello")(b"hello", timeout=30, wait_for_ready=True)
            channel.close()
        samples.append(time.perf_counter() - start)
        child.wait(30)
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


def _register(app_dir: Path, name: str, code: str, options: tuple[str, ...] = ()) -> None:
    import flamepy

    (app_dir / f"{name}.py").write_text(code)
    flamepy.register_application(
        name,
        {"command": sys.executable, "arguments": [*options, f"{name}.py"], "working_directory": str(app_dir)},
    )


SPARE_WAIT = 2.0
"""Seconds between closing a session and opening the next, so that the spare is ready."""


def first_invokes_of_new_applications(
    app_dir: Path,
    runs: int,
    prefix: str = "cold",
    before_each: Callable[[int], object] | None = None,
    options: tuple[str, ...] = (),
) -> list[float]:
    """Seconds from a new application's first ``create_session`` to its first answer, ``runs`` times.

    A new application has no process, so its first session starts one: the cold start of an instance,
    with the server already up. Each run registers ``{prefix}{run}`` in ``app_dir`` and starts on a quiet
    server: the spare the previous application gets when its session closes has started by then
    (``SPARE_WAIT``), so it does not take the CPU from this start (on 2 cores it would, and a floor has no
    such neighbour); each is unregistered after its run, which stops its spare (spares kept for every run
    would fill the machine-wide cap, and the generic process is started only while two places are free).
    ``before_each(run)`` runs right before each (a floor's sample, so both see the same
    load on the machine). ``options`` go before the script (``-u``: an application the server's generic
    process is never handed, so it starts as a process of its own)."""
    import flamepy

    cold = []
    for run in range(runs):
        _register(app_dir, f"{prefix}{run}", CORE_SERVICE, options)
        if run:
            time.sleep(SPARE_WAIT)
        if before_each is not None:
            before_each(run)
        start = time.perf_counter()
        session = flamepy.create_session(f"{prefix}{run}")
        session.invoke(PAYLOAD)
        cold.append(time.perf_counter() - start)
        session.close()
        flamepy.unregister_application(f"{prefix}{run}")
    return cold


def run_throughput(application: str, tasks: int) -> tuple[float, float, int]:
    """``tasks`` no-op ``Session.run()`` calls on one session of ``application`` with two instances (its
    ``max_instances``: on lanes, unless ``FLAMEPY_LANES=0``): tasks per second until every future is done,
    tasks per second until the session's close returns (the server has recorded every task then), and how
    many failed (or were not done after 600 s)."""
    import flamepy

    session = flamepy.create_session(application, min_instances=2, max_instances=2)
    try:
        session.invoke(PAYLOAD)
        start = time.perf_counter()
        futures = [session.run(PAYLOAD) for _ in range(tasks)]
        wait(futures, timeout=600)
        elapsed = time.perf_counter() - start
        failed = sum(1 for f in futures if not f.done() or f.exception() is not None)
    finally:
        session.close()
    recorded = time.perf_counter() - start
    return tasks / elapsed, tasks / recorded, failed


def flamepy_numbers(
    tmp: Path,
    iterations: int,
    tasks: int,
    large_iterations: int,
    cold_runs: int,
    transport: str,
    floors: dict[str, RoundTrip],
) -> dict[str, object]:
    """Every measurement of flamepy, the warm rows alternated with ``floors`` (name -> a running floor's
    round trip; ``"floor"``, the transport's own, is measured with 16 MiB too): their samples are in the
    result under their names (``"floor_16mib"`` for the large ones)."""
    import flamepy
    from flamepy.service import Session as ServiceSession

    app_dir = tmp / "app"
    app_dir.mkdir()
    _register(app_dir, "bench", CORE_SERVICE)
    _register(app_dir, "bench-typed", TYPED_SERVICE)
    results: dict[str, object] = {}

    floor: list[float] = []
    results["new_session_cold_s"] = first_invokes_of_new_applications(
        app_dir, cold_runs, before_each=lambda run: floor.extend(spawn_floor(tmp, transport, 1, first=run))
    )
    results["spawn_floor_s"] = floor
    time.sleep(SPARE_WAIT)
    own_floor: list[float] = []
    results["new_session_own_process_s"] = first_invokes_of_new_applications(
        app_dir,
        cold_runs,
        prefix="own",
        before_each=lambda run: own_floor.extend(spawn_floor(tmp, transport, 1, first=cold_runs + run)),
        options=("-u",),
    )
    floor.extend(own_floor)

    session = flamepy.create_session("bench", min_instances=1, max_instances=1)
    session.invoke(PAYLOAD)
    with lanes_off():  # another session, on an instance of its own: its invokes go through the server
        through = flamepy.create_session("bench", min_instances=1, max_instances=1)
    through.invoke(PAYLOAD)
    with ServiceSession("bench-typed") as typed:
        typed.invoke(PAYLOAD)
        # Warm means a quiet server, as the floors have: the generic process a session may have been handed
        # is replaced in the background, and that process's start would share the CPUs with the calls below.
        time.sleep(SPARE_WAIT)
        calls: dict[str, Callable[[], object]] = {name: partial(floor, PAYLOAD) for name, floor in floors.items()}
        calls["core_invoke"] = lambda: session.invoke(PAYLOAD)
        calls["core_invoke_server"] = lambda: through.invoke(PAYLOAD)
        calls["service_invoke"] = lambda: typed.invoke(PAYLOAD)
        results.update(interleaved(calls, iterations))
        lane = getattr(session, "_lane", None)
        results["core_invoke_on_lane"] = lane is not None and lane._grant is not None
    through.close()
    large = {"floor_16mib": partial(floors["floor"], LARGE), "core_invoke_16mib": lambda: session.invoke(LARGE)}
    if large_iterations:
        results.update(interleaved(large, large_iterations, rounds=min(4, large_iterations), warmup=3, block_warmup=1))
    else:
        results.update({name: [] for name in large})
    session.close()

    # A spare of the application is started when the previous session's process leaves.
    spare = []
    for _ in range(cold_runs):
        time.sleep(SPARE_WAIT)
        start = time.perf_counter()
        session = flamepy.create_session("bench")
        session.invoke(PAYLOAD)
        spare.append(time.perf_counter() - start)
        session.close()
    results["new_session_spare_s"] = spare

    rate, recorded, failed = run_throughput("bench", tasks)
    with lanes_off():
        server_rate, server_recorded, server_failed = run_throughput("bench", tasks)
    results["throughput_tasks_per_s"], results["throughput_recorded_per_s"] = rate, recorded
    results["throughput_server_path_per_s"], results["throughput_server_path_recorded_per_s"] = (
        server_rate,
        server_recorded,
    )
    results["throughput_failed"] = failed + server_failed
    if transport == "grpc":
        results["core_invoke_grpc_link"] = warm_invoke_linked_by(tmp, app_dir, "grpc", iterations)
    return results


@contextlib.contextmanager
def lanes_off() -> Iterator[None]:
    """Sessions made in the block send their invokes through the server (``FLAMEPY_LANES=0``), not a lane."""
    before = os.environ.get("FLAMEPY_LANES")
    os.environ["FLAMEPY_LANES"] = "0"
    try:
        yield
    finally:
        if before is None:
            del os.environ["FLAMEPY_LANES"]
        else:
            os.environ["FLAMEPY_LANES"] = before


def warm_invoke_linked_by(tmp: Path, app_dir: Path, link: str, iterations: int) -> list[float]:
    """Warm core invokes through a gRPC server of its own whose instances are linked with ``link``.

    A gRPC server links a service written with this SDK over the local default (zmq) unless told
    otherwise (see docs/architecture.md); this row measures the path with a second gRPC hop instead,
    ``--instance-transport grpc``, so the table shows what that choice costs.
    """
    from flamepy.core import SessionAttributes
    from flamepy_core.client.connection import connect
    from flamepy_core.client.local import start_server, stop_server

    home = tmp / f"home-{link}-link"
    info = start_server(home, transport="grpc", idle_exit=0, extra_argv=["--instance-transport", link])
    try:
        connection = connect(str(info["endpoint"]))
        try:
            attrs = {"command": sys.executable, "arguments": ["bench.py"], "working_directory": str(app_dir)}
            connection.register_application("bench", attrs)
            session = connection.create_session(
                SessionAttributes(application="bench", min_instances=1, max_instances=1)
            )
            samples = _measure(lambda: session.invoke(PAYLOAD), iterations)
            session.close()
        finally:
            connection.close()
    finally:
        stop_server(home)
    return samples


def compile_packages() -> list[str]:
    """Compile flamepy's packages to bytecode (``__pycache__`` next to the sources), as installing them does.

    A wheel installed by pip carries its modules compiled; a source checkout installed in editable mode
    does not, and under ``PYTHONDONTWRITEBYTECODE`` every process compiles every module it imports from
    source, again and again. The spawn floor imports pyzmq, which pip compiled: without this, a cold
    start would be compared with the floor partly by the cost of compiling flamepy's sources, which no
    installed flamepy pays. Returns the package directories compiled.
    """
    import compileall
    import importlib.util

    compiled = []
    for package in ("flamepy", "flamepy_core", "flamepy_transports", "flamepy_serializers"):
        spec = importlib.util.find_spec(package)
        for directory in (spec.submodule_search_locations or []) if spec is not None else []:
            if compileall.compile_dir(directory, quiet=1, workers=1):
                compiled.append(directory)
    return compiled


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--tasks", type=int, default=10000)
    parser.add_argument("--large-iterations", type=int, default=20, help="16 MiB round trips (default 20)")
    parser.add_argument("--cold-runs", type=int, default=5, help="cold starts and spare starts measured (5)")
    parser.add_argument(
        "--transport",
        default="uds",
        choices=("zmq", "grpc", "uds"),
        help="the local server's transport, and the raw floor measured against it (default: uds, the local "
        "default); with uds, the raw pyzmq floor is measured too, as the reference issue 10's targets name",
    )
    parser.add_argument(
        "--no-compile",
        action="store_true",
        help="do not compile flamepy's packages to bytecode first (measures a source checkout as it is)",
    )
    parser.add_argument(
        "--one-cpu",
        action="store_true",
        help="run every process (the floors', the server and its service processes, which inherit it) on one "
        "CPU: no wake-up crosses CPUs, so each row is its path's CPU work and context switches, a ratio that "
        "does not move with what waking another CPU costs on this machine at the moment (Linux)",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.one_cpu:
        if not hasattr(os, "sched_setaffinity"):
            parser.error("--one-cpu needs os.sched_setaffinity (Linux); run without it here")
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    compiled = [] if args.no_compile else compile_packages()

    load_before = os.getloadavg()  # other work on the machine inflates every row: say how much there was
    tmp = Path(tempfile.mkdtemp(prefix="fb-", dir="/tmp"))
    os.environ["FLAME_HOME"] = str(tmp / "home")
    for var in ("FLAME_ENDPOINT", "FLAME_CACHE_ENDPOINT"):
        os.environ.pop(var, None)
    os.environ["FLAME_TRANSPORT"] = args.transport
    from flamepy_core.client.local import stop_server

    try:
        with contextlib.ExitStack() as running:
            run_floor = {"zmq": zmq_floor, "uds": unix_floor}.get(args.transport, grpc_floor)
            floors = {"floor": running.enter_context(run_floor(tmp))}
            if args.transport == "uds":  # the raw pyzmq floor too: the reference issue 10's targets name
                floors["zmq_floor"] = running.enter_context(zmq_floor(tmp))
            ours = flamepy_numbers(
                tmp, args.iterations, args.tasks, args.large_iterations, args.cold_runs, args.transport, floors
            )
    finally:
        stop_server(tmp / "home")
        shutil.rmtree(tmp, ignore_errors=True)
    raw, raw_large, zmq_raw = ours.pop("floor"), ours.pop("floor_16mib"), ours.pop("zmq_floor", [])
    assert isinstance(raw, list) and isinstance(raw_large, list) and isinstance(zmq_raw, list)

    def row(label: str, samples: object, floor: float, tail: float) -> tuple[str, float, float, float]:
        assert isinstance(samples, list)
        med = statistics.median(samples)
        return (label, med, tail, med / floor)

    raw_med = statistics.median(raw)
    floor = {"zmq": "raw pyzmq two hops", "uds": "raw unix two hops"}.get(args.transport, "raw grpcio two hops")
    rows = [(f"{floor} (floor)", raw_med, _percentile(raw, 99), 1.0)]
    for key, label in (
        ("core_invoke", "flamepy core invoke (warm)"),
        ("core_invoke_server", "core invoke, through the server"),
        ("service_invoke", "flamepy service invoke"),
        ("core_invoke_grpc_link", "core invoke, gRPC instance link too"),
    ):
        samples = ours.get(key)
        if isinstance(samples, list):  # the gRPC link row only with --transport grpc
            rows.append(row(label, samples, raw_med, _percentile(samples, 99)))
    if zmq_raw:
        zmq_med = statistics.median(zmq_raw)
        rows.append(("raw pyzmq two hops (reference)", zmq_med, _percentile(zmq_raw, 99), zmq_med / raw_med))
        for key, label in (
            ("core_invoke", "  core invoke / pyzmq floor"),
            ("core_invoke_server", "  through the server / pyzmq"),
            ("service_invoke", "  service / pyzmq"),
        ):
            samples = ours[key]
            assert isinstance(samples, list)
            med = statistics.median(samples)
            rows.append((label, med, _percentile(samples, 99), med / zmq_med))
    ours_large = ours["core_invoke_16mib"]
    assert isinstance(ours_large, list)
    large_rows = []
    if raw_large and ours_large:  # none with --large-iterations 0
        large_med = statistics.median(raw_large)
        large_rows = [
            ("raw two hops, 16 MiB each way (floor)", large_med, _percentile(raw_large, 99), 1.0),
            row("flamepy core invoke, 16 MiB", ours_large, large_med, _percentile(ours_large, 99)),
        ]
    spawn = ours.pop("spawn_floor_s")
    assert isinstance(spawn, list)
    cold = ours["new_session_cold_s"]
    own = ours["new_session_own_process_s"]
    spare = ours["new_session_spare_s"]
    assert isinstance(cold, list) and isinstance(own, list) and isinstance(spare, list)
    start_rows = []
    if spawn and cold and own and spare:  # none with --cold-runs 0
        spawn_med = statistics.median(spawn)
        start_rows = [
            ("spawn until it answers (floor)", spawn_med, max(spawn), 1.0),
            row("new session + first invoke, cold", cold, spawn_med, max(cold)),
            row("cold, own process (no generic)", own, spawn_med, max(own)),
            row("new session + first invoke, spare", spare, spawn_med, max(spare)),
        ]
    scalars = {k: v for k, v in ours.items() if not isinstance(v, list)}
    load_after = os.getloadavg()
    python = sys.version.split()[0]
    if args.json:
        machine = {
            "cpus": os.cpu_count(),
            "python": python,
            "load_average": [load_before, load_after],
            "bytecode_compiled": bool(compiled),
            "one_cpu": args.one_cpu,
        }
        doc = {"machine": machine, "rows": rows, "large_rows": large_rows, "start_rows": start_rows, **scalars}
        print(json.dumps(doc, indent=2))
        return 0
    before, after = (" ".join(f"{x:.2f}" for x in load) for load in (load_before, load_after))
    bytecode = "flamepy compiled to bytecode first" if compiled else "flamepy's bytecode as found (--no-compile)"
    cpus = "all on one of its" if args.one_cpu else "on"
    print(
        f"transport {args.transport}, {cpus} {os.cpu_count()} CPUs, Python {python}, load average {before} -> "
        f"{after}, {bytecode}"
    )
    on_lane = "on a lane" if ours.get("core_invoke_on_lane") else "through the server (no lane was lent)"
    print(f"{'path (100-byte payload)':<40}{'median':>12}{'p99':>12}{'ratio':>8}   (core invoke: {on_lane})")
    for label, med, p99, ratio in rows:
        print(f"{label:<40}{med * 1e6:>10.0f}us{p99 * 1e6:>10.0f}us{ratio:>8.2f}")
    print(f"{'path (16 MiB request and response)':<40}{'median':>12}{'p99':>12}{'ratio':>8}")
    for label, med, p99, ratio in large_rows:
        print(f"{label:<40}{med * 1e3:>10.1f}ms{p99 * 1e3:>10.1f}ms{ratio:>8.2f}")
    print(f"{'start (new session + first invoke)':<40}{'median':>12}{'max':>12}{'ratio':>8}")
    for label, med, worst, ratio in start_rows:
        print(f"{label:<40}{med * 1e3:>10.1f}ms{worst * 1e3:>10.1f}ms{ratio:>8.2f}")
    lanes, lanes_recorded, server, server_recorded = (
        float(ours[key])  # type: ignore[arg-type]
        for key in (
            "throughput_tasks_per_s",
            "throughput_recorded_per_s",
            "throughput_server_path_per_s",
            "throughput_server_path_recorded_per_s",
        )
    )
    print(
        f"run() throughput, {args.tasks} no-op tasks, 2 instances: {lanes:.0f} tasks/s on lanes (every task "
        f"recorded by the server: {lanes_recorded:.0f}/s); through the server {server:.0f}/s "
        f"({server_recorded:.0f}/s); {ours['throughput_failed']} failed"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
