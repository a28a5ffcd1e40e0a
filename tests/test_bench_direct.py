"""``benchmarks/bench_direct.py``: a warm invoke beside the same call sent straight to the session's service
process, the measurement issue 10's notes give for the path past the server, so it must keep running.

The service process's socket is found in ``/proc`` (Linux only). No timing is asserted."""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path
from types import ModuleType

import pytest
from conftest import run_benchmark

REPO = Path(__file__).resolve().parent.parent
BENCHMARKS = REPO / "benchmarks"

pytestmark = pytest.mark.skipif(not Path("/proc/self/net/unix").exists(), reason="reads /proc (Linux)")


@pytest.fixture
def direct(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import bench_direct

    return bench_direct


def test_the_listening_socket_of_a_process_is_found_and_its_absence_named(direct: ModuleType) -> None:
    folder = tempfile.mkdtemp(prefix="fl-bd-", dir="/tmp")
    path = os.path.join(folder, "s.sock")
    connected = socket.socket(socket.AF_UNIX)  # (a socket that does not listen is not the one)
    listener = socket.socket(socket.AF_UNIX)
    try:
        listener.bind(path)
        listener.listen()
        assert direct.listening_socket_of(os.getpid()) == path
        listener.close()
        with pytest.raises(SystemExit, match=f"process {os.getpid()} listens on no unix socket"):
            direct.listening_socket_of(os.getpid())
    finally:
        connected.close()
        listener.close()
        os.unlink(path)
        os.rmdir(folder)


def test_a_tiny_run_prints_every_row_with_its_ratios() -> None:
    out = run_benchmark("bench_direct.py", "--iterations", "80")
    rows = [line for line in out.splitlines()[2:] if line.strip()]
    titles = [row[:40].strip() for row in rows]
    assert titles == [
        "raw unix two hops",
        "raw pyzmq two hops",
        "core invoke (warm), through the server",
        "raw unix two hops",
        "raw pyzmq two hops",
        "direct to the service process, + append",
    ], out
    for row in rows:
        median, p99, to_pyzmq, to_unix = row[40:].split()
        assert float(median.removesuffix("us")) > 0 and float(p99.removesuffix("us")) > 0, row
        assert float(to_pyzmq) > 0 and float(to_unix) > 0, row
