"""A warm invoke beside what it would cost without the server on its path: the client calling the session's
service process itself, one hop.

Why. Issue 10 asks a warm invoke for at most 1.5x the raw two-hop floor (client -> relay -> worker). Our
path has those two hops, and the server in the middle runs Python on both ways: about 110-160 µs of its
work on the critical path of a ~300 µs invoke on this machine kind (``bench_timeline.py``), where the raw
relay spends ~10. Removing layers has taken the server from 1.6 ms to that over many changes, and what
is left is the work itself (the request's parse, the task's record, the result's durable append, the
answer's encoding), spread over about 150 Python calls of a few hundred nanoseconds each, which this
machine runs 3-5 times slower in place than in a loop. The other way is to take the server off the path:
a lane, where the client sends a warm task to the instance itself and the instance answers it, making the
result durable first. This measures what such a lane's path costs, as an upper bound, before it is built.

Measured in one run, on unix sockets: the raw unix two-hop floor and the raw pyzmq two-hop floor (issue
10's), beside

* ``core invoke (warm)``: ``flamepy.core`` ``Session.invoke(bytes)`` on a warm session, through the server;
* ``direct to the service process``: the same 100 bytes sent by the client as ``OnTaskInvoke`` straight
  to the session's service process over the uds transport (the framed kit: the client's channel, the
  service's server and its runtime, all as shipped), then the ~200-byte record a lane would append to a
  log of its own before answering, appended to a file here (one ``write``, on the same critical path).

Each is measured in blocks alternated with both floors (``bench_invoke.interleaved``); the direct calls
after the invokes, never beside them: with two links, the service process lends neither to its main thread
(``FramedServer.host_wait``), so its direct calls go through its reader thread and a queue, and the row is
an upper bound of a lane's, which would be its process's only client link while it lasts.

Not a feature: the task sent directly is not recorded, and the instance is not told it is lent. Linux
only (the service process's socket is found in ``/proc``). Nothing is asserted.

Usage: ``python benchmarks/bench_direct.py [--iterations 4000]``
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from bench_calls import PAYLOAD, warm_echo_session  # this folder is first on the path when it runs
from bench_invoke import _percentile, interleaved, unix_floor, zmq_floor

SERVER_MAIN = """
from flamepy_core.engine.__main__ import main
import sys
sys.exit(main(sys.argv[1:]))
"""
RECORD = b"r" * 200
"""What a lane's service process would append before answering: a task's final row, as the ahead log holds it."""


def listening_socket_of(pid: int) -> str:
    """The path of the unix socket process ``pid`` listens on (its own ``/proc`` entries, so Linux only)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:  # closed since it was listed
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    with open(f"/proc/{pid}/net/unix") as table:
        next(table)  # the header
        for line in table:
            fields = line.split()
            # Num RefCount Protocol Flags Type St Inode Path; a listening socket has __SO_ACCEPTCON (0x10000).
            if len(fields) >= 8 and fields[6] in inodes and int(fields[3], 16) & 0x10000:
                return fields[7]
    raise SystemExit(
        f"process {pid} listens on no unix socket: the session's service process serves another transport "
        f"(this benchmark needs the local default, uds: unset FLAME_TRANSPORT) or has exited"
    )


def main() -> int:
    # What this measures is the server's part of an invoke: the client keeps to the server's path, not a
    # lane (flamepy_core.client.lane), which takes the server off it.
    os.environ["FLAMEPY_LANES"] = "0"
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=4000, help="calls of each row (default 4000)")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="fdirect-"))
    try:
        with unix_floor(tmp) as unix_trip, zmq_floor(tmp) as zmq_trip:
            floors = {"unix": lambda: unix_trip(PAYLOAD), "pyzmq": lambda: zmq_trip(PAYLOAD)}
            with warm_echo_session(tmp, SERVER_MAIN, "", "local") as session:
                from flamepy_core.client.api import default_connection
                from flamepy_core.plugins import get_registry
                from flamepy_core.wire.payload_messages import read_task_result, task_context

                through = interleaved({**floors, "invoke": lambda: session.invoke(PAYLOAD)}, args.iterations)
                pids = [i.pid for i in default_connection().list_instances() if i.session_id == session.id]
                if len(pids) != 1 or not pids[0]:
                    raise SystemExit(f"the session {session.id} should have one running instance, not pids {pids}")
                endpoint = "uds://" + listening_socket_of(pids[0])
                channel = get_registry().transport(endpoint).connect(endpoint)
                log = os.open(tmp / "lane.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
                task_ids = iter(range(1 << 40, 1 << 41))

                def direct() -> None:
                    request = task_context(str(next(task_ids)), session.id, PAYLOAD)
                    reply = channel.unary("/flame.v1.Instance/OnTaskInvoke", request, timeout=60)
                    if read_task_result(reply)[1] != PAYLOAD:
                        raise SystemExit("the service process answered something else than its echo")
                    os.write(log, RECORD)

                try:
                    lane = interleaved({**floors, "direct": direct}, args.iterations)
                finally:
                    channel.close()
                    os.close(log)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    load = os.getloadavg()
    print(f"on {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, load average {load[0]:.2f}, 100 bytes each way")
    print(f"{'path':40}{'median':>10}{'p99':>10}{'/ pyzmq':>9}{'/ unix':>8}")
    for title, samples, name in (
        ("raw unix two hops", through, "unix"),
        ("raw pyzmq two hops", through, "pyzmq"),
        ("core invoke (warm), through the server", through, "invoke"),
        ("raw unix two hops", lane, "unix"),
        ("raw pyzmq two hops", lane, "pyzmq"),
        ("direct to the service process, + append", lane, "direct"),
    ):
        median = statistics.median(samples[name])
        ratios = [median / statistics.median(samples[floor]) for floor in ("pyzmq", "unix")]
        print(
            f"{title:40}{median * 1e6:8.1f}us{_percentile(samples[name], 99) * 1e6:8.1f}us"
            f"{ratios[0]:9.2f}{ratios[1]:8.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
