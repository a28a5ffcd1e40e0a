"""A warm invoke's critical path through the server, timed step by step, on uds (the local default) or zmq.

``bench_calls.py`` counts how much Python each process runs and ``bench_server_cpu.py`` how much CPU it
uses; neither says which of it the client waits for. On this machine kind a warm invoke's processes run
mostly one after another, and the server does work at four moments: when ``RunTask`` arrives (until the
task is written to the instance's socket), when the result arrives (until the answer is written to the
client's socket), and after each of those sends (beside the other process's work, so not waited for).
This times those windows, in the server, with ``time.perf_counter_ns`` stamps put around a few methods
of the server's own code (the transport's request handling and reply sending, the instance channel's
send and receive, the store's append to its ahead log), per invoke, and prints their medians:

* ``RunTask in -> task out``: from the server's reading of ``RunTask`` to the task written to the
  instance's socket (the server's Python, then the send);
* ``task out -> result in``: the instance's part, from the server's send to its reading of the result
  (the service process's Python, the wake-ups of both processes, and on zmq libzmq's I/O threads);
* ``result in -> commit``, ``commit (ahead log append)``, ``commit -> answer out``: the result's
  handling, the append that makes it durable (``Store._log_ahead``), and the answer until written to the
  client's socket;
* ``of which the answer's send``: the send of that answer (the system call that wakes the client);
* ``answer out -> next RunTask in``: the client's part (its reading of the answer, its next call) and
  the wake-ups of the server's threads;
* on uds also ``task out -> RunTask handled`` and ``answer out -> result handled``: what the server's
  thread does after each send (the task's record, the result's rest), beside the other process.

The sum is one invoke's round trip as the server sees it; the client's median and the raw pyzmq
two-hop floor (``bench_invoke``'s, the one issue 10's targets are set against) are measured in the same
run beside it, and so is a second floor: on uds the raw two hops on plain unix sockets (``bench_invoke``'s
``unix_floor``: what the transport itself costs), on zmq that floor with its second hop on a plain unix
socket instead of ZeroMQ (libzmq moves each message through an I/O thread on both sides, which a plain
socket does not: the difference is what a link to the instance that bypasses libzmq could at best save).
The stamps cost a little (about 1 µs each, a dozen per invoke): read the windows, not the total, against
``bench_invoke.py``.

Usage: ``python benchmarks/bench_timeline.py [--invokes 2000] [--transport uds|zmq]`` (Linux or macOS;
nothing is asserted).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_calls import PAYLOAD, warm_echo_session  # this folder is first on the path when it runs
from bench_invoke import _measure, raw_two_hop_zmq, unix_floor

STAMPS_PRELUDE = """
import json as _json, os as _os, threading as _threading, time as _time

_now = _time.perf_counter_ns
_marks = []
_note = _marks.append

import flamepy_core.engine.store as _store


def _wrap(cls, name, before=None, after=None):
    original = getattr(cls, name)

    def stamped(*args, **kwargs):
        if before is not None:
            _note((before, _now()))
        result = original(*args, **kwargs)
        if after is not None:
            _note((after, _now()))
        return result

    setattr(cls, name, stamped)


_wrap(_store.Store, "_log_ahead", before="commit_start", after="commit_end")
"""
"""What both transports' stamps share: the marks, and the commit (a warm result's is one append to the ahead
log, ``Store._log_ahead``; the fold's transactions, on their own thread, are not on the path)."""

STAMPS_ZMQ = """
import flamepy_transports.zmq.channel as _channel
import flamepy_transports.zmq.server as _server

_handle = _server._Engine._handle


def _handle_stamped(self, ident, msg, _handle=_handle):
    if msg.method.endswith(b"/RunTask"):
        _note(("runtask_in", _now()))
    return _handle(self, ident, msg)


_server._Engine._handle = _handle_stamped
_wrap(_channel._Core, "_send_async_now", after="task_out")
_wrap(_channel._Core, "_receive", before="result_in")
_wrap(_server._Engine, "_send_direct", before="answer_send", after="answer_out")
"""
"""ZeroMQ's server (``RunTask`` read, the answer sent) and the instance channel (the task sent, the result read)."""

STAMPS_UDS = """
import flamepy_core.kit.framed_client as _client
import flamepy_core.kit.framed_server as _framed

_admit = _framed.FramedServer._admit


def _admit_stamped(self, peer, frame, _admit=_admit):
    if not frame.method.endswith("/RunTask"):
        return _admit(self, peer, frame)
    _note(("runtask_in", _now()))
    try:
        return _admit(self, peer, frame)
    finally:
        _note(("runtask_done", _now()))


_framed.FramedServer._admit = _admit_stamped
_wrap(_client._Connection, "_send", after="task_out")
_wrap(_client._Connection, "_take", before="result_in", after="result_done")
_wrap(_framed._Peer, "send", before="answer_send", after="answer_out")
"""
"""The kit's framed server (``RunTask`` read and handled, the answer sent) and its framed channel to the
instance (the task sent, the result read and handled): what the local default, uds, is built of."""

STAMPS_MAIN = """

def _dump_when_asked(path):
    while not _os.path.exists(path + ".go"):
        _time.sleep(0.05)
    with open(path + ".tmp", "w") as fh:
        fh.write(_json.dumps(list(_marks)))
    _os.replace(path + ".tmp", path)


_threading.Thread(target=_dump_when_asked, args=(__MARKS__,), daemon=True, name="bench-timeline").start()

from flamepy_core.engine.__main__ import main as _main
import sys as _sys
_sys.exit(_main([*_sys.argv[1:], "--transport", __TRANSPORT__]))  # the stamps are on this transport's classes
"""
"""The server's entry point after the stamps; the marks are written to ``__MARKS__`` when ``__MARKS__.go``
appears."""


def stamped_server(transport: str, marks: Path) -> str:
    """The code of a server on ``transport`` (``uds`` or ``zmq``) with its stamps put in first."""
    stamps = STAMPS_UDS if transport == "uds" else STAMPS_ZMQ
    main = STAMPS_MAIN.replace("__MARKS__", repr(str(marks))).replace("__TRANSPORT__", repr(transport))
    return STAMPS_PRELUDE + stamps + main


WINDOWS = (
    ("RunTask in -> task out", "runtask_in", "task_out"),
    ("task out -> result in", "task_out", "result_in"),
    ("result in -> commit", "result_in", "commit_start"),
    ("commit (ahead log append)", "commit_start", "commit_end"),
    ("commit -> answer out", "commit_end", "answer_out"),
    ("  of which the answer's send", "answer_send", "answer_out"),
    ("answer out -> next RunTask in", "answer_out", "next_runtask_in"),
)
AFTER_SENDS = (
    ("task out -> RunTask handled", "task_out", "runtask_done"),
    ("answer out -> result handled", "answer_out", "result_done"),
)
"""Work a server thread does after its send, beside the process it sent to (uds stamps it): the task's record
while the instance runs it, the result's rest while the client reads its answer. Not waited for, unless
that process is quicker, or the two share a CPU."""
ORDER = ("runtask_in", "task_out", "result_in", "commit_start", "commit_end", "answer_send", "answer_out")
AFTER = {"runtask_done": "task_out", "result_done": "answer_out"}
"""Each after-send mark, and the mark it must follow (its first occurrence after that one is taken)."""


def _unix_worker(path: str, ready: Any) -> None:
    """The mixed floor's worker: echoes length-prefixed messages on a unix socket, one blocking thread."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    ready.set()
    conn, _ = listener.accept()
    while True:
        head = conn.recv(4, socket.MSG_WAITALL)
        if len(head) < 4:
            return
        conn.sendall(head + conn.recv(struct.unpack("!I", head)[0], socket.MSG_WAITALL))


def _zmq_to_unix_relay(path: str, worker: str, ready: Any) -> None:
    """The mixed floor's relay: a ZeroMQ ROUTER in front (as the server's frontend), a unix socket behind."""
    import zmq

    front = zmq.Context().socket(zmq.ROUTER)
    front.bind(f"ipc://{path}")
    back = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    back.connect(worker)
    ready.set()
    while True:
        ident, payload = front.recv_multipart()
        back.sendall(struct.pack("!I", len(payload)) + payload)
        head = back.recv(4, socket.MSG_WAITALL)
        front.send_multipart([ident, back.recv(struct.unpack("!I", head)[0], socket.MSG_WAITALL)])


def mixed_floor(tmp: Path, invokes: int) -> float:
    """The two-hop floor with the second hop on a plain unix socket instead of ZeroMQ (median, µs): what a
    link to the instance that bypasses libzmq's I/O threads could at best save."""
    samples, _large = raw_two_hop_zmq(
        tmp, invokes, 0, worker=_unix_worker, relay=_zmq_to_unix_relay, worker_name="mixed-worker.sock"
    )
    return statistics.median(samples) * 1e6


def rounds(marks: list[tuple[str, int]]) -> list[dict[str, int]]:
    """The marks cut into invokes: each from one ``runtask_in`` to the next, every step's first mark in
    order (a background commit or a stray receive elsewhere is skipped), and each after-send mark's first
    after its anchor; incomplete ones are dropped (an after-send mark is optional: zmq has none)."""
    found: list[dict[str, int]] = []
    current: dict[str, int] | None = None
    for name, when in marks:
        if name == "runtask_in":
            if current is not None:
                current["next_runtask_in"] = when
                if all(step in current for step in ORDER):
                    found.append(current)
            current = {"runtask_in": when}
            continue
        if current is None or name in current:
            continue
        if name in AFTER:
            if AFTER[name] in current:
                current[name] = when
            continue
        steps = sum(1 for step in ORDER if step in current)
        expected = ORDER[steps] if steps < len(ORDER) else None
        if name == expected:
            current[name] = when
    return found


def measure(tmp: Path, invokes: int, transport: str = "uds") -> tuple[list[dict[str, int]], float]:
    """The stamped server's invokes (each a dict of its marks) and the client's median (µs)."""
    marks = tmp / "marks.json"
    with warm_echo_session(tmp, stamped_server(transport, marks), "", "stamped") as session:
        samples = _measure(lambda: session.invoke(PAYLOAD), invokes, warmup=0)  # (warmed up already)
        Path(str(marks) + ".go").touch()
        deadline = time.monotonic() + 30
        while not marks.exists():
            if time.monotonic() > deadline:
                raise SystemExit(f"the stamped server wrote no marks: see {tmp / 'server.log'}")
            time.sleep(0.05)
    found = rounds([tuple(mark) for mark in json.loads(marks.read_text())])  # type: ignore[misc]
    return found[-invokes:], statistics.median(samples) * 1e6


def unix_floor_median(tmp: Path, invokes: int) -> float:
    """The raw two-hop floor on plain unix sockets (``bench_invoke.unix_floor``, uds's own floor): median, µs."""
    with unix_floor(tmp) as round_trip:
        samples = _measure(lambda: round_trip(PAYLOAD), invokes, warmup=200)
    return statistics.median(samples) * 1e6


def main() -> int:
    # What this measures is the server's part of an invoke: the client keeps to the server's path, not a
    # lane (flamepy_core.client.lane), which takes the server off it.
    os.environ["FLAMEPY_LANES"] = "0"
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--invokes", type=int, default=2000)
    parser.add_argument("--transport", choices=("uds", "zmq"), default="uds", help="the server's (default uds)")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="ftimeline-"))
    try:
        floor_samples, _large = raw_two_hop_zmq(tmp, args.invokes, 0)
        floor = statistics.median(floor_samples) * 1e6
        if args.transport == "zmq":
            other = ("  second hop a unix socket instead", mixed_floor(tmp, args.invokes))
        else:
            other = ("raw unix-socket two hops median", unix_floor_median(tmp, args.invokes))
        found, client_median = measure(tmp, args.invokes, args.transport)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if not found:
        raise SystemExit("no complete invoke was stamped: the server's methods may have changed names")
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    print(
        f"a warm invoke (100 bytes) on {args.transport} as the server sees it, {len(found)} invokes, Python "
        f"{sys.version.split()[0]}, {os.cpu_count()} CPUs, load average {load[0]:.2f}"
    )
    print(f"{'window':34}{'median':>10}{'p90':>10}{'p99':>10}")
    total = 0.0
    for title, start, end in WINDOWS:
        median = _print_window(title, [(one[end] - one[start]) / 1000 for one in found])
        if not title.startswith(" "):
            total += median
    print(f"{'sum of the medians':34}{total:8.1f}us")
    for title, start, end in AFTER_SENDS:
        spans = [(one[end] - one[start]) / 1000 for one in found if end in one]
        if spans:
            _print_window(title, spans)
    print(f"{'the client: invoke median':34}{client_median:8.1f}us")
    print(f"{'raw pyzmq two hops (floor) median':34}{floor:8.1f}us")
    print(f"{other[0]:34}{other[1]:8.1f}us")
    return 0


def _print_window(title: str, spans: list[float]) -> float:
    """One row: the window's median, p90 and p99 (µs); returns the median."""
    spans.sort()
    median, p90, p99 = statistics.median(spans), spans[int(len(spans) * 0.9)], spans[int(len(spans) * 0.99)]
    print(f"{title:34}{median:8.1f}us{p90:8.1f}us{p99:8.1f}us")
    return median


if __name__ == "__main__":
    sys.exit(main())
