"""``benchmarks/bench_peers.py`` runs where Ray and Dask are not installed (CI has neither).

A peer that is not installed must be a printed ``skipped: pip install ...`` row, never an error, and
flamepy's own rows must still be measured: a tiny workload through a real local server. No timing is
asserted (the numbers are whatever this machine gives); what is checked is that each row is there.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "benchmarks" / "bench_peers.py"
PIP_NAMES = {"ray": "ray", "dask": "dask[distributed]"}
MISSING = [
    peer
    for peer, modules in {"ray": ("ray",), "dask": ("dask", "distributed")}.items()
    if any(importlib.util.find_spec(module) is None for module in modules)
]


def _run(*args: str, timeout: float = 100) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLAME_")}
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_help_names_every_option() -> None:
    proc = _run("--help", timeout=60)
    assert proc.returncode == 0, proc.stderr
    for option in ("--iterations", "--tasks", "--large-iterations", "--cold-runs", "--peers", "--json"):
        assert option in proc.stdout


def test_an_unknown_peer_is_refused_by_name() -> None:
    proc = _run("--peers", "ray,spark", timeout=60)
    assert proc.returncode == 2
    assert "spark" in proc.stderr and "ray, dask" in proc.stderr


@pytest.mark.skipif(not MISSING, reason="Ray and Dask are both installed here: no peer to show as skipped")
def test_peers_not_installed_are_skipped_rows_and_flamepy_is_measured() -> None:
    tiny = ("--iterations", "3", "--tasks", "10", "--large-iterations", "1", "--cold-runs", "1")
    proc = _run(*tiny, "--peers", ",".join(MISSING))
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    lines = proc.stdout.splitlines()
    for peer in MISSING:
        skipped = [line for line in lines if line.strip().startswith(f"{peer}:")]
        # One skipped row under each of the four workloads, naming what to install.
        assert len(skipped) == 4, proc.stdout
        assert all(line.rstrip().endswith(f"skipped: pip install {PIP_NAMES[peer]}") for line in skipped)
    flamepy = [line for line in lines if line.strip().startswith("flamepy:")]
    assert len(flamepy) == 5, proc.stdout  # warm, throughput, 16 MiB, and two cold starts
    assert "(0 failed)" in next(line for line in flamepy if "Session.run()" in line)
