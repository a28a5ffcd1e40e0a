"""The runtime over a third-party transport: the guide's echo example through the tcp example plugin.

``examples/flamepy-transport-tcp`` is a separate distribution that flamepy knows nothing about; installed,
it is found through its ``flamepy.transports`` entry point. Here the server's frontend and object cache
listen on ``tcp://``, flmctl and the echo client reach them there by ``FLAME_ENDPOINT``, and the
instance's own process reaches the cache over it too; only the server-to-instance link stays gRPC.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import EXAMPLES, FlameEnv, echo_example_over

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("flamepy_transport_tcp") is None,
    reason="the example tcp transport is not installed: pip install ./examples/flamepy-transport-tcp",
)

SESSION_ID = re.compile(r"echo-app-[A-Za-z0-9]{6}")
VENV_BIN = str(Path(sys.executable).parent)
STARTUP_S = 30.0
SHUTDOWN_S = 20.0


def _wait_for_endpoint(home: Path, server: subprocess.Popen[str], log: Path) -> str:
    """The endpoint the server publishes in ``<home>/server.json`` once it accepts calls."""
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"the server exited with {server.returncode}:\n{log.read_text()}")
        try:
            endpoint = json.loads((home / "server.json").read_text()).get("endpoint", "")
        except (FileNotFoundError, ValueError):
            endpoint = ""  # not written yet (it is replaced atomically, so never half-written)
        if endpoint.startswith("tcp://"):
            return str(endpoint)
        time.sleep(0.05)
    raise AssertionError(f"the server published no tcp:// endpoint within {STARTUP_S} s:\n{log.read_text()}")


@pytest.fixture
def tcp_server(flame_env: FlameEnv) -> Iterator[str]:
    """A server for ``flame_env``'s home listening on tcp://127.0.0.1:<free port>; its endpoint."""
    # Instances run `python` (echo-app.yaml's command) from the server's PATH: this interpreter's.
    flame_env.env["PATH"] = os.pathsep.join([VENV_BIN, flame_env.env.get("PATH", "")])
    log = flame_env.home / "server-under-test.log"
    argv = [
        sys.executable, "-m", "flamepy_core.engine", "--home", str(flame_env.home),
        "--listen", "tcp://127.0.0.1:0", "--instance-transport", "grpc", "--idle-exit", "0",
    ]  # fmt: skip
    with open(log, "w") as out:
        server = subprocess.Popen(argv, env=flame_env.env, stdout=out, stderr=subprocess.STDOUT, text=True)
    try:
        yield _wait_for_endpoint(flame_env.home, server, log)
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(SHUTDOWN_S)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(5.0)


def test_echo_example_runs_over_the_tcp_plugin(flame_env: FlameEnv, tcp_server: str, tmp_path: Path) -> None:
    folder = tmp_path / "echo"
    shutil.copytree(EXAMPLES / "echo", folder)
    over_tcp = {"FLAME_ENDPOINT": tcp_server}

    registered = flame_env.run(
        [sys.executable, "-m", "flamepy_core.cli.main", "register", "--file", "echo-app.yaml"],
        cwd=folder,
        extra_env=over_tcp,
    )
    assert "echo-app" in registered.stdout, registered.stdout

    run = flame_env.run([sys.executable, "client.py"], cwd=folder, extra_env=over_tcp)
    lines = run.stdout.splitlines()
    assert len(lines) == 3, run.stdout + run.stderr
    assert lines[0] == "HELLO"
    assert lines[1] == "1"
    assert SESSION_ID.fullmatch(lines[2]), lines[2]

    # The session really went through the server on tcp://, not a local server started on the side.
    listed = flame_env.run(
        [sys.executable, "-m", "flamepy_core.cli.main", "list", "-s", "-o", "json"], extra_env=over_tcp
    )
    assert lines[2] in listed.stdout, listed.stdout
    assert json.loads((flame_env.home / "server.json").read_text())["endpoint"] == tcp_server


def test_flame_transport_tcp_carries_the_whole_runtime(flame_env: FlameEnv, tmp_path: Path) -> None:
    """By configuration alone: the local server listens on tcp+unix:// and links its instances with it."""
    lines, info = echo_example_over(flame_env, tmp_path / "echo", "tcp")
    assert lines[:2] == ["HELLO", "1"] and SESSION_ID.fullmatch(lines[2]), lines
    assert info["transport"] == "tcp" and info["endpoint"] == f"tcp+unix://{flame_env.home}/flame.sock", info
    links = [p.name for p in (flame_env.home / "s").iterdir()] if (flame_env.home / "s").exists() else []
    assert not any(name.endswith((".ipc", "-fast.sock")) for name in links), f"only tcp links: {links}"
