"""``flamepy-conformance`` runs the suite against an installed transport by name, and says what is wrong."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path


def _command() -> list[str]:
    """The installed console script next to this interpreter, else the module (same ``main``)."""
    script = Path(sys.executable).with_name("flamepy-conformance")
    if script.exists():
        return [str(script)]
    found = shutil.which("flamepy-conformance")
    return [found] if found else [sys.executable, "-m", "flamepy_conformance.command"]


def _run(*args: str, timeout: float, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the command with a clean pytest environment (no inherited PYTEST_* from this run)."""
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}, **(env or {})}
    return subprocess.run(
        [*_command(), *args], capture_output=True, text=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL
    )


def test_inmem_passes_the_whole_suite(tmp_path: Path) -> None:
    result = _run("--transport", "inmem", timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "transport 'inmem'" in output, output
    assert "0 failed" in output, output
    assert "capability 'cross_process' not declared by transport inmem" in output, output


def test_unknown_transport_exits_2_listing_installed_ones() -> None:
    result = _run("--transport", "nosuch", timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "unknown transport 'nosuch'" in result.stderr, result.stderr
    assert "Installed transports:" in result.stderr and "inmem (inmem)" in result.stderr, result.stderr


def test_unknown_layer_exits_2() -> None:
    result = _run("--transport", "inmem", "--layer", "nosuch", timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "layer 'nosuch'" in result.stderr, result.stderr
    assert "available: transport, serializer, service" in result.stderr, result.stderr


def test_a_failing_transport_exits_1_and_names_the_failed_tests() -> None:
    # A broken transport loaded the way a user's module plugin would be: FLAMEPY_PLUGINS.
    here = str(Path(__file__).parent)
    result = _run(
        "--transport",
        "broken-swallow",
        "-k",
        "every_error_code or plain_exception",
        timeout=120,
        env={"FLAMEPY_PLUGINS": "broken_transports", "PYTHONPATH": here},
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "1 passed, 1 failed" in output, output
    assert "failed:\n    test_every_error_code_crosses_intact: AssertionError" in output, output


def test_nothing_selected_passes_pytest_exit_code_through() -> None:
    result = _run("--transport", "inmem", "-k", "no_such_test_name", timeout=120)
    assert result.returncode == 5, result.stdout + result.stderr  # pytest: no tests collected
