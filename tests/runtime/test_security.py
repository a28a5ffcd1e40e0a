"""Authenticated, or explicitly insecure: a network listen needs TLS or CURVE, or --insecure.

Real servers, real sockets. CURVE is exercised over ``zmq+tcp`` on 127.0.0.1 with keys made by
``flmctl keygen``: a server started with ``flmctl server start`` serves a client whose key it lists (and its
own instances, which reach its object cache on the same endpoint), and refuses an unknown key during the
handshake, before any handler runs.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

from conftest import FlameEnv, wait_for

from flamepy_core.home import live_server

ECHO = """
from flamepy.core import FlameService
import flamepy

class Echo(FlameService):
    def on_task_invoke(self, context):
        return b"echo:" + context.input

if __name__ == "__main__":
    flamepy.run(Echo())
"""

INVOKE = """
import flamepy
s = flamepy.create_session("echo")
print(s.invoke(b"hi"))
s.close()
"""


def flmctl(
    env: FlameEnv, *args: str, check: bool = True, extra: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return env.run([sys.executable, "-m", "flamepy_core.cli.main", *args], check=check, extra_env=extra)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_network_listen_without_authentication_is_refused(flame_env: FlameEnv) -> None:
    for listen in ("zmq+tcp://0.0.0.0:0", "grpc://0.0.0.0:0"):
        done = flame_env.run(
            [sys.executable, "-m", "flamepy_core.engine", "--home", str(flame_env.home), "--listen", listen],
            check=False,
            timeout=60,
        )
        assert done.returncode == 1, done.stdout + done.stderr
        assert f"refusing to serve {listen} without authentication" in done.stderr, done.stderr
        assert "--insecure" in done.stderr and "Traceback" not in done.stderr, done.stderr
        assert live_server(flame_env.home) is None
    refused = flmctl(flame_env, "server", "start", "--listen", "zmq+tcp://0.0.0.0:0", check=False)
    assert refused.returncode == 1 and "without authentication" in refused.stderr, refused.stderr
    assert "CURVE" in refused.stderr and "--curve-secret-key" in refused.stderr, refused.stderr
    assert live_server(flame_env.home) is None


def test_insecure_starts_with_a_warning_and_loopback_needs_nothing(flame_env: FlameEnv) -> None:
    started = flmctl(flame_env, "server", "start", "--listen", "grpc://0.0.0.0:0", "--insecure")
    assert "started a flamepy server" in started.stdout, started.stdout
    log = (flame_env.home / "logs" / "server.log").read_text()
    assert "WITHOUT authentication (--insecure)" in log and "run as code" in log, log
    flmctl(flame_env, "server", "stop")
    before = len(log)
    started = flmctl(flame_env, "server", "start", "--listen", f"zmq+tcp://127.0.0.1:{free_port()}")
    assert "started a flamepy server" in started.stdout, started.stdout
    assert "WITHOUT authentication" not in (flame_env.home / "logs" / "server.log").read_text()[before:]


def test_keygen_makes_a_private_pair_and_never_overwrites(flame_env: FlameEnv, tmp_path: Path) -> None:
    made = flmctl(flame_env, "keygen", "alice", "--dir", str(tmp_path))
    public, secret = tmp_path / "alice.key", tmp_path / "alice.key_secret"
    assert str(public) in made.stdout and str(secret) in made.stdout, made.stdout
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert "secret-key" in secret.read_text() and "secret-key" not in public.read_text()
    again = flmctl(flame_env, "keygen", "alice", "--dir", str(tmp_path), check=False)
    assert again.returncode == 1 and "already exist" in again.stderr, again.stderr


def test_a_curve_server_serves_a_listed_key_and_refuses_an_unknown_one(flame_env: FlameEnv, tmp_path: Path) -> None:
    keys, clients, strangers = tmp_path / "keys", tmp_path / "clients", tmp_path / "strangers"
    flmctl(flame_env, "keygen", "server", "--dir", str(keys))
    flmctl(flame_env, "keygen", "alice", "--dir", str(clients))
    flmctl(flame_env, "keygen", "mallory", "--dir", str(strangers))
    endpoint = f"zmq+tcp://127.0.0.1:{free_port()}"
    flame_env.env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), flame_env.env.get("PATH", "")])
    started = flmctl(
        flame_env,
        "server",
        "start",
        "--listen",
        endpoint,
        "--curve-secret-key",
        str(keys / "server.key_secret"),
        "--curve-client-keys",
        str(clients),
    )
    assert endpoint in started.stdout and "with zmq" in started.stdout, started.stdout
    alice = {
        "FLAME_ENDPOINT": endpoint,
        "FLAME_CURVE_SERVER_KEY": str(keys / "server.key"),
        "FLAME_CURVE_CLIENT_KEY": str(clients / "alice.key_secret"),
    }
    # A listed key: registration, a session, a task run by an instance that reaches the server's cache.
    flame_env.env.update(alice)
    flame_env.write_service("echo", ECHO)
    ran = flame_env.python(INVOKE)
    assert ran.stdout.strip() == "b'echo:hi'", ran.stdout + ran.stderr

    # An unknown key: refused in the handshake, before any handler runs.
    mallory = dict(alice, FLAME_CURVE_CLIENT_KEY=str(strangers / "mallory.key_secret"))
    start = time.monotonic()
    refused = flame_env.python(
        'import flamepy\nflamepy.register_application("mallory-app", {"command": "/bin/true"})',
        check=False,
        extra_env=mallory,
    )
    assert refused.returncode != 0, refused.stdout
    assert "refused this client's CURVE key" in refused.stderr and "(code: 11)" in refused.stderr, refused.stderr
    assert time.monotonic() - start < 30
    listed = flmctl(flame_env, "list", "-a", "-o", "json", extra=alice)
    names = [a["name"] for a in json.loads(listed.stdout)]
    assert "echo" in names and "mallory-app" not in names, names  # nothing of mallory's reached the server
    mallory_public = (strangers / "mallory.key").read_text().split('"')[1]
    wait_for(lambda: mallory_public in (flame_env.home / "logs" / "server.log").read_text(), 10, "the refusal logged")

    # No key at all: told that the server requires CURVE, not a hang.
    bare = {"FLAME_ENDPOINT": endpoint, "FLAME_CURVE_SERVER_KEY": "", "FLAME_CURVE_CLIENT_KEY": ""}
    none = flame_env.python(INVOKE, check=False, extra_env=bare)
    assert none.returncode != 0 and "CURVE" in none.stderr, none.stderr
