"""``benchmarks/bench_invoke.py``: the numbers issue 10 is judged by come from it, so it must keep running.

A tiny run through a real local server prints every row, each ratio being its median over its floor's;
no timing is asserted (the numbers are whatever this machine gives). ``interleaved`` is checked on its
own: each path measured as often as asked, in blocks alternated in a rotated order, so that a floor and a
path see the same moments of the machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parent.parent
BENCHMARKS = REPO / "benchmarks"
SCRIPT = BENCHMARKS / "bench_invoke.py"


@pytest.fixture
def bench(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import bench_invoke

    monkeypatch.setattr(bench_invoke, "QUIET", 0.0)
    return bench_invoke


def test_interleaved_measures_each_call_as_often_as_asked_in_blocks_of_rotated_order(bench: ModuleType) -> None:
    order: list[str] = []
    calls = {name: (lambda name=name: order.append(name)) for name in ("floor", "core", "service")}
    samples = bench.interleaved(calls, iterations=12, rounds=4, warmup=2)
    assert {name: len(values) for name, values in samples.items()} == {"floor": 12, "core": 12, "service": 12}
    assert all(value >= 0 for values in samples.values() for value in values)
    measured = order[3 * 2 :]  # after two warm-up calls each
    blocks = [measured[at] for at in range(0, len(measured), 3 + 10)]  # a block: 10 warm-up calls, then 3
    rounds = [["floor", "core", "service"], ["core", "service", "floor"], ["service", "floor", "core"]]
    assert blocks == [name for names in [*rounds, rounds[0]] for name in names]


def test_a_tiny_run_prints_every_row_with_its_ratio_to_its_floor() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLAME_")}
    tiny = ("--iterations", "16", "--tasks", "20", "--large-iterations", "1", "--cold-runs", "1", "--no-compile")
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *tiny, "--json"], cwd=REPO, env=env, capture_output=True, text=True, timeout=110
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    doc = json.loads(proc.stdout)
    rows = {label: (median, tail, ratio) for label, median, tail, ratio in doc["rows"]}
    floor = rows["raw unix two hops (floor)"][0]
    pyzmq = rows["raw pyzmq two hops (reference)"][0]
    for label in ("flamepy core invoke (warm)", "flamepy service invoke"):
        median, tail, ratio = rows[label]
        assert 0 < median <= tail and ratio == pytest.approx(median / floor)
    assert rows["  core invoke / pyzmq floor"][2] == pytest.approx(rows["flamepy core invoke (warm)"][0] / pyzmq)
    assert [label for label, *_ in doc["large_rows"]] == [
        "raw two hops, 16 MiB each way (floor)",
        "flamepy core invoke, 16 MiB",
    ]
    assert len(doc["start_rows"]) == 4
    assert doc["throughput_failed"] == 0 and doc["throughput_tasks_per_s"] > 0
    # The rate until the server recorded every task is the lower one (the close waits for it).
    assert 0 < doc["throughput_recorded_per_s"] <= doc["throughput_tasks_per_s"]
    assert 0 < doc["throughput_server_path_recorded_per_s"] <= doc["throughput_server_path_per_s"]
