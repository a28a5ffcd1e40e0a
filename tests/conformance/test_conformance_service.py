"""The runtime keeps the service contract over each bundled server transport (the service suite).

``inmem`` runs the engine and its instances inside this process (in-process instances); ``zmq`` and
``grpc`` run a private server process whose instances are real processes, linked over that transport.
``flamepy-conformance --layer service`` runs the same suite by name.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from flamepy_conformance import ServiceTests


class TestInmemService(ServiceTests):
    transport_name = "inmem"
    serializer_name = "cloudpickle"


class TestZmqService(ServiceTests):
    transport_name = "zmq"
    serializer_name = "cloudpickle"


class TestGrpcService(ServiceTests):
    transport_name = "grpc"
    serializer_name = "cloudpickle"


def _command(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).with_name("flamepy-conformance")
    found = str(script) if script.exists() else shutil.which("flamepy-conformance")
    argv = [found] if found else [sys.executable, "-m", "flamepy_conformance.command"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "FLAME_"))}
    return subprocess.run(
        [*argv, *args], capture_output=True, text=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL
    )


def test_command_runs_the_service_layer_by_name() -> None:
    result = _command("--layer", "service", "--transport", "inmem", "--serializer", "json", timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "transport 'inmem'" in output and "serializer 'json'" in output, output
    assert "13 passed, 0 failed, 0 error, 0 skipped" in output, output


def test_command_service_layer_needs_a_transport() -> None:
    result = _command("--layer", "service", "--serializer", "json", timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "--transport NAME is required for --layer service" in result.stderr, result.stderr
