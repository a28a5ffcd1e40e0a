"""The runtime's transport, chosen by configuration and by capability, with real processes.

* a name that is not installed gets the registry's error (installed list, near match), and nothing starts;
* a transport that lacks what the local runtime needs is refused up front, naming what to choose;
* ``FLAME_TRANSPORT`` picks the local server's transport, recorded in ``server.json``;
* with gRPC, a service written with this SDK is linked over the local default, and Flame's bare path is
  still named for one written with Flame's SDK; ``--instance-transport grpc`` keeps gRPC alone;
* a live server on another transport is used with its own transport, and the client says so once;
* an in-process transport runs the runtime inside the client: no server process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import REPO, FlameEnv

from flamepy_core.engine.choice import instance_link_choice
from flamepy_core.home import live_server
from flamepy_core.plugins import get_registry

PLUGINS = REPO / "tests" / "plugins"

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
import logging, sys
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
import flamepy
from flamepy_core.client.connection import reset_default_connection
for attempt in range(2):  # two connections in one process: the transport note is said once
    s = flamepy.create_session("echo")
    print(s.invoke(b"hi"))
    s.close()
    reset_default_connection()
"""


def flmctl(
    env: FlameEnv, *args: str, check: bool = True, extra_env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return env.run([sys.executable, "-m", "flamepy_core.cli.main", *args], check=check, extra_env=extra_env)


def test_an_unknown_transport_name_is_the_registrys_error_and_nothing_starts(flame_env: FlameEnv) -> None:
    done = flmctl(flame_env, "list", "-a", check=False, extra_env={"FLAME_TRANSPORT": "zmqq"})
    assert done.returncode == 1, done.stdout + done.stderr
    assert "unknown transport 'zmqq' (did you mean 'zmq'?)" in done.stderr, done.stderr
    assert "Installed transports:" in done.stderr and "grpc (" in done.stderr, done.stderr
    assert done.stderr.count("(code:") == 1, "one error, not a server's error wrapped in another"
    assert "Traceback" not in done.stderr and "store is closed" not in done.stderr, done.stderr
    assert live_server(flame_env.home) is None and not (flame_env.home / "server.json").exists()


def test_a_transport_without_local_schemes_is_refused_up_front(flame_env: FlameEnv) -> None:
    extra = {
        "FLAME_TRANSPORT": "remoteonly",
        "FLAMEPY_PLUGINS": "remote_only_transport:RemoteOnlyTransport",
        "PYTHONPATH": os.pathsep.join([str(PLUGINS), flame_env.env["PYTHONPATH"]]),
    }
    done = flmctl(flame_env, "list", "-a", check=False, extra_env=extra)
    assert done.returncode == 1, done.stdout + done.stderr
    message = done.stderr
    assert "transport 'remoteonly'" in message and "'local_schemes'" in message, message
    assert "zmq" in message and "grpc" in message, f"the message must say what to choose instead: {message}"
    assert live_server(flame_env.home) is None


def test_flame_transport_picks_the_local_servers_transport(flame_env: FlameEnv) -> None:
    flame_env.write_service("echo", ECHO)  # flmctl starts the server: with the default, the local default
    info = json.loads((flame_env.home / "server.json").read_text())
    assert info["transport"] == "uds" and info["endpoint"].startswith("uds://"), info
    flame_env.flmctl("server", "stop")
    started = flmctl(flame_env, "server", "start", extra_env={"FLAME_TRANSPORT": "grpc"})
    assert "with grpc" in started.stdout, started.stdout
    info = json.loads((flame_env.home / "server.json").read_text())
    assert info["transport"] == "grpc" and info["endpoint"] == f"unix://{flame_env.home}/flame.sock", info
    out = flame_env.python(INVOKE, extra_env={"FLAME_TRANSPORT": "grpc"})
    assert out.stdout.split() == ["b'echo:hi'", "b'echo:hi'"], out.stdout + out.stderr
    assert "asks for transport" not in out.stderr, "the server runs the transport asked for: nothing to say"


LINKS = """
import os
from flamepy.core import FlameService
import flamepy

class Links(FlameService):
    def on_task_invoke(self, context):
        named = (os.environ.get(var, "-") for var in ("FLAMEPY_INSTANCE_ENDPOINT", "FLAME_INSTANCE_ENDPOINT"))
        return " ".join(named).encode()

if __name__ == "__main__":
    flamepy.run(Links())
"""

ASK_LINKS = """
import flamepy
s = flamepy.create_session("links")
print(s.invoke(b"").decode())
s.close()
"""


def test_a_grpc_server_links_a_flamepy_service_over_the_local_default(flame_env: FlameEnv) -> None:
    """gRPC for clients; the instance of a service written with this SDK gets the uds link offered, and
    Flame's bare socket path stays named for a service written with Flame's SDK. FLAME_INSTANCE_TRANSPORT
    (the server's --instance-transport) keeps gRPC alone."""
    on_grpc = {"FLAME_TRANSPORT": "grpc"}
    flmctl(flame_env, "server", "start", extra_env=on_grpc)
    flame_env.write_service("links", LINKS)
    fast, compat = flame_env.python(ASK_LINKS, extra_env=on_grpc).stdout.split()
    assert fast.startswith("uds://") and fast.endswith(".sock"), fast
    assert compat.startswith("/") and compat.endswith(".sock"), f"Flame's bare path, for gRPC: {compat}"
    flame_env.flmctl("server", "stop")
    alone = {**on_grpc, "FLAME_INSTANCE_TRANSPORT": "grpc"}  # what --instance-transport grpc does
    flmctl(flame_env, "server", "start", extra_env=alone)
    fast, compat = flame_env.python(ASK_LINKS, extra_env=alone).stdout.split()
    assert fast == "-" and compat.startswith("/") and compat.endswith(".sock"), (fast, compat)


def test_an_unknown_instance_transport_is_refused_naming_the_setting(flame_env: FlameEnv) -> None:
    done = flmctl(flame_env, "server", "start", check=False, extra_env={"FLAME_INSTANCE_TRANSPORT": "zmqq"})
    assert done.returncode != 0, done.stdout + done.stderr
    message = done.stdout + done.stderr
    assert "FLAME_INSTANCE_TRANSPORT" in message and "unknown transport 'zmqq'" in message, message
    assert "did you mean 'zmq'" in message, message
    assert live_server(flame_env.home) is None


def test_the_instance_link_follows_the_runtime_transport_except_for_flames_own() -> None:
    registry = get_registry()
    assert instance_link_choice(registry, None, None) == "auto"
    assert instance_link_choice(registry, "zmq", None) == "zmq", "one transport configured carries the runtime"
    assert instance_link_choice(registry, "grpc", None) == "auto", "auto already links Flame's services by gRPC"
    assert instance_link_choice(registry, "grpc", "grpc") == "grpc", "asked for: gRPC alone"
    assert instance_link_choice(registry, "zmq", "auto") == "auto"


def test_a_live_server_on_another_transport_is_used_and_the_client_says_so_once(flame_env: FlameEnv) -> None:
    flame_env.write_service("echo", ECHO)  # the server runs with uds, the local default
    out = flame_env.python(INVOKE, extra_env={"FLAME_TRANSPORT": "grpc"})
    assert out.stdout.split() == ["b'echo:hi'", "b'echo:hi'"], out.stdout + out.stderr
    notes = [line for line in out.stderr.splitlines() if "asks for transport grpc" in line]
    assert len(notes) == 1, out.stderr
    assert notes[0].startswith("INFO ") and "env:FLAME_TRANSPORT" in notes[0], notes[0]
    assert "already runs with uds" in notes[0] and "flmctl server stop" in notes[0], notes[0]
    status = flmctl(flame_env, "server", "status", extra_env={"FLAME_TRANSPORT": "grpc"})
    assert "with uds" in status.stdout, status.stdout


def test_an_in_process_transport_runs_the_runtime_inside_the_client(flame_env: FlameEnv) -> None:
    app = flame_env.home / "apps" / "echo"
    app.mkdir(parents=True)
    (app / "service.py").write_text(ECHO)
    code = f"""
    import flamepy
    flamepy.register_application("echo", {{"command": {sys.executable!r}, "arguments": ["service.py"],
                                           "working_directory": {str(app)!r}}})
    s = flamepy.create_session("echo")
    print(s.invoke(b"in-process"))
    s.close()
    """
    out = flame_env.python(code, extra_env={"FLAME_TRANSPORT": "inmem"})
    assert out.stdout.strip() == "b'echo:in-process'", out.stdout + out.stderr
    assert not (flame_env.home / "server.json").exists() and live_server(flame_env.home) is None
    # The state lives in FLAME_HOME: the next process's in-process runtime finds the application.
    again = flmctl(flame_env, "list", "-a", extra_env={"FLAME_TRANSPORT": "inmem"})
    assert "echo" in again.stdout, again.stdout
    assert any(Path(flame_env.home).glob("inmem-*.db")), list(Path(flame_env.home).iterdir())
