"""A warm invoke's critical path through the server, timed step by step on ZeroMQ (``--transport zmq``).

``bench_calls.py`` counts how much Python each process runs and ``bench_server_cpu.py`` how much CPU it
uses; neither says which of it the client waits for. On this machine kind a warm invoke's processes run
mostly one after another, and the server does work at four moments: when ``RunTask`` arrives (until the
task is written to the instance's socket), when the result arrives (until the answer is written to the
client's socket), and after each of those sends (beside the other process's work, so not waited for).
This times those windows, in the server, with ``time.perf_counter_ns`` stamps put around a few methods
of the server's own code (``ZmqServer``'s request handling and reply sending, the instance channel's
send and receive, the store's transaction), per invoke, and prints their medians:

* ``RunTask in -> task out``: from the frontend's reading of ``RunTask`` to the task written to the
  instance's socket (the server's Python, then the send);
* ``task out -> result in``: the instance's part, from the server's send to its reading of the result
  (the libzmq I/O threads of both processes, the service process's Python, and the wake-ups between);
* ``result in -> commit``, ``commit (sqlite)``, ``commit -> answer out``: the result's handling, the
  transaction that makes it durable, and the answer until written to the client's socket;
* ``of which the answer's send``: the ZeroMQ send of that answer (its last frame wakes libzmq's I/O
  thread: on a virtual machine that is most of it);
* ``answer out -> next RunTask in``: the client's part (its reading of the answer, its next call) and
  the wake-ups of the server's threads.

The sum is one invoke's round trip as the server sees it; the client's median and the raw pyzmq
two-hop floor (``bench_invoke``'s) are measured in the same run beside it, and so is that floor with its
second hop on a plain unix socket (length-prefixed messages, a blocking thread) instead of ZeroMQ: libzmq
moves each message through an I/O thread on both sides, which a plain socket does not, so the difference
is what a link to the instance that bypasses libzmq could at best save. The stamps cost a little
(about 1 µs each, a dozen per invoke): read the windows, not the total, against ``bench_invoke.py``.

Usage: ``python benchmarks/bench_timeline.py [--invokes 2000]`` (Linux or macOS; nothing is asserted).
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
from bench_invoke import _measure, raw_two_hop_zmq

STAMPS = """
import json as _json, os as _os, threading as _threading, time as _time

_now = _time.perf_counter_ns
_marks = []
_note = _marks.append

import flamepy_transports.zmq.channel as _channel
import flamepy_transports.zmq.server as _server
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


_handle = _server._Engine._handle


def _handle_stamped(self, ident, msg, _handle=_handle):
    if msg.method.endswith(b"/RunTask"):
        _note(("runtask_in", _now()))
    return _handle(self, ident, msg)


_server._Engine._handle = _handle_stamped
_wrap(_channel._Core, "_send_async_now", after="task_out")
_wrap(_channel._Core, "_receive", before="result_in")
_wrap(_store.Store, "_attempt", before="commit_start", after="commit_end")
_wrap(_server._Engine, "_send_direct", before="answer_send", after="answer_out")


def _dump_when_asked(path):
    while not _os.path.exists(path + ".go"):
        _time.sleep(0.05)
    with open(path + ".tmp", "w") as fh:
        fh.write(_json.dumps(list(_marks)))
    _os.replace(path + ".tmp", path)


_threading.Thread(target=_dump_when_asked, args=(__MARKS__,), daemon=True, name="bench-timeline").start()

from flamepy_core.engine.__main__ import main as _main
import sys as _sys
_sys.exit(_main([*_sys.argv[1:], "--transport", "zmq"]))  # the stamps are on ZeroMQ's classes
"""
"""The server's entry point with the stamps put in first; the marks are written to ``__MARKS__`` when
``__MARKS__.go`` appears."""

WINDOWS = (
    ("RunTask in -> task out", "runtask_in", "task_out"),
    ("task out -> result in", "task_out", "result_in"),
    ("result in -> commit", "result_in", "commit_start"),
    ("commit (sqlite)", "commit_start", "commit_end"),
    ("commit -> answer out", "commit_end", "answer_out"),
    ("  of which the answer's send", "answer_send", "answer_out"),
    ("answer out -> next RunTask in", "answer_out", "next_runtask_in"),
)
ORDER = ("runtask_in", "task_out", "result_in", "commit_start", "commit_end", "answer_send", "answer_out")


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
    order (a background commit or a stray receive elsewhere is skipped); incomplete ones are dropped."""
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
        expected = ORDER[len(current)] if len(current) < len(ORDER) else None
        if name == expected:
            current[name] = when
    return found


def measure(tmp: Path, invokes: int) -> tuple[list[dict[str, int]], float]:
    """The stamped server's invokes (each a dict of its marks) and the client's median (µs)."""
    marks = tmp / "marks.json"
    with warm_echo_session(tmp, STAMPS.replace("__MARKS__", repr(str(marks))), "", "stamped") as session:
        samples = _measure(lambda: session.invoke(PAYLOAD), invokes, warmup=0)  # (warmed up already)
        Path(str(marks) + ".go").touch()
        deadline = time.monotonic() + 30
        while not marks.exists():
            if time.monotonic() > deadline:
                raise SystemExit(f"the stamped server wrote no marks: see {tmp / 'server.log'}")
            time.sleep(0.05)
    found = rounds([tuple(mark) for mark in json.loads(marks.read_text())])  # type: ignore[misc]
    return found[-invokes:], statistics.median(samples) * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--invokes", type=int, default=2000)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="ftimeline-"))
    try:
        floor_samples, _large = raw_two_hop_zmq(tmp, args.invokes, 0)
        floor = statistics.median(floor_samples) * 1e6
        mixed = mixed_floor(tmp, args.invokes)
        found, client_median = measure(tmp, args.invokes)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if not found:
        raise SystemExit("no complete invoke was stamped: the server's methods may have changed names")
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    print(
        f"a warm invoke (100 bytes) as the server sees it, {len(found)} invokes, Python {sys.version.split()[0]}, "
        f"{os.cpu_count()} CPUs, load average {load[0]:.2f}"
    )
    print(f"{'window':34}{'median':>10}{'p90':>10}{'p99':>10}")
    total = 0.0
    for title, start, end in WINDOWS:
        spans = sorted((one[end] - one[start]) / 1000 for one in found)
        median, p90, p99 = statistics.median(spans), spans[int(len(spans) * 0.9)], spans[int(len(spans) * 0.99)]
        if not title.startswith(" "):
            total += median
        print(f"{title:34}{median:8.1f}us{p90:8.1f}us{p99:8.1f}us")
    print(f"{'sum of the medians':34}{total:8.1f}us")
    print(f"{'the client: invoke median':34}{client_median:8.1f}us")
    print(f"{'raw pyzmq two hops (floor) median':34}{floor:8.1f}us")
    print(f"{'  second hop a unix socket instead':34}{mixed:8.1f}us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
