"""``benchmarks/bench_peers.py`` runs where Ray and Dask are not installed (CI has neither).

A peer that is not installed must be a printed ``skipped: pip install ...`` row, never an error, and
flamepy's own rows must still be measured: a tiny workload through a real local server. A peer that is
installed but cannot start is a ``failed: ...`` row naming why, and the run exits 1. No timing is
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


TINY = ("--iterations", "3", "--tasks", "10", "--large-iterations", "1", "--cold-runs", "1", "--no-compile")


def _run(*args: str, timeout: float = 100, pythonpath: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLAME_")}
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(pythonpath), env.get("PYTHONPATH", "")]))
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_help_names_every_option() -> None:
    proc = _run("--help", timeout=60)
    assert proc.returncode == 0, proc.stderr
    for option in ("--iterations", "--tasks", "--large-iterations", "--cold-runs", "--peers", "--no-compile", "--json"):
        assert option in proc.stdout


def test_an_unknown_peer_is_refused_by_name() -> None:
    proc = _run("--peers", "ray,spark", timeout=60)
    assert proc.returncode == 2
    assert "spark" in proc.stderr and "ray, dask" in proc.stderr


@pytest.mark.skipif(not MISSING, reason="Ray and Dask are both installed here: no peer to show as skipped")
def test_peers_not_installed_are_skipped_rows_and_flamepy_is_measured() -> None:
    proc = _run(*TINY, "--peers", ",".join(MISSING))
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


BROKEN_RAY = """
def remote(obj):
    return obj


def init(**options):
    raise RuntimeError("no cluster here")


def shutdown():
    pass
"""


def test_a_peer_that_cannot_start_is_a_failed_row_naming_why_and_exit_1(tmp_path: Path) -> None:
    (tmp_path / "ray").mkdir()
    (tmp_path / "ray" / "__init__.py").write_text(BROKEN_RAY)  # importable, but it cannot start
    proc = _run(*TINY, "--peers", "ray", pythonpath=tmp_path)
    assert proc.returncode == 1, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    failed = [line for line in proc.stdout.splitlines() if line.strip().startswith("ray:")]
    assert len(failed) == 4, proc.stdout
    assert all(line.rstrip().endswith("failed: RuntimeError: no cluster here") for line in failed)
    assert "RuntimeError: no cluster here" in proc.stderr  # the traceback, for whoever runs it
    assert sum(1 for line in proc.stdout.splitlines() if line.strip().startswith("flamepy:")) == 5
