"""Session contexts across the two SDKs, through our server exposing Flame's cache protocol (Flight).

Flame's typed layer stores ``cloudpickle.dumps(ctx)`` with ``put_object`` and its service reads
``cloudpickle.loads(get_object(ref))``; ours stores the serializer's payload bytes the same way, so each
side reads the other's context. Every combination runs end to end against one of our servers started
with ``--flight-listen`` and ``--flight-for-instances`` (instances reach the Flight cache, as they would
on a Flame cluster).
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flame_venv import TEST_TIMEOUT, clean_env, flame_python, run_script

from flamepy_core.home import read_server_info

pytest.importorskip("pyarrow", reason="the Flight cache needs the flight extra (pyarrow)")
pytestmark = pytest.mark.timeout(TEST_TIMEOUT)

SERVICE = """
from flamepy import service

ins = service.FlameInstance()


@ins.entrypoint
def handle(req):
    history = ins.context() or []
    history.append(req)
    ins.update_context(history)
    return {"history": history}


if __name__ == "__main__":
    ins.run()
"""

CLIENT = """
import json, sys
import flamepy
from flamepy.service import Session

p = json.loads(sys.argv[1])
if flamepy.get_application(p["app"]) is None:
    flamepy.register_application(
        p["app"], {"command": p["python"], "arguments": ["service.py"], "working_directory": p["dir"]}
    )
with Session(p["app"], ctx=["from the client"]) as session:
    first = session.invoke("one")
    second = session.invoke("two")
    emit({"first": first, "second": second, "context": session.context()})
"""


@pytest.fixture(scope="module")
def flame() -> Path:
    return flame_python()


@pytest.fixture
def server() -> Iterator[dict[str, Any]]:
    """Our server on gRPC TCP (what Flame's client dials) with a Flight cache for clients and instances."""
    home = Path(tempfile.mkdtemp(prefix="fx-", dir=tempfile.gettempdir()))
    argv = [
        sys.executable, "-m", "flamepy_core.engine", "--home", str(home), "--listen", "grpc://127.0.0.1:0",
        "--flight-listen", "grpc://127.0.0.1:0", "--flight-for-instances", "--idle-exit", "0",
    ]  # fmt: skip
    env = clean_env(FLAME_HOME=str(home))
    with open(home / "server.log", "ab") as log:
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=log, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        info = None
        while time.monotonic() < deadline and proc.poll() is None:
            info = read_server_info(home)
            if info and info.get("pid") == proc.pid:
                break
            time.sleep(0.05)
        if not info or info.get("pid") != proc.pid:
            pytest.fail(f"our server did not start:\n{(home / 'server.log').read_text()[-3000:]}")
        yield {**info, "home": home}
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        shutil.rmtree(home, ignore_errors=True)


def app_dir(base: Path, name: str) -> Path:
    folder = base / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "service.py").write_text(textwrap.dedent(SERVICE))
    return folder


def run_client(python: Path, server: dict[str, Any], app: str, service_python: Path, folder: Path) -> Any:
    frontend = "http://" + str(server["endpoint"]).split("://", 1)[1]
    flight = str(server["flight_cache_endpoint"])
    env = clean_env(FLAME_ENDPOINT=frontend, FLAME_CACHE_ENDPOINT=flight, HOME=str(server["home"]))
    if python == Path(sys.executable):
        env["FLAME_CACHE_PROTOCOL"] = "flight"  # ours: read the grpc:// cache endpoint as Flight
        env["FLAME_HOME"] = str(server["home"])
    return run_script(
        python,
        CLIENT,
        env=env,
        cwd=folder,
        args=[json.dumps({"app": app, "python": str(service_python), "dir": str(folder)})],
        timeout=120,
    )


EXPECTED = {
    "first": {"history": ["from the client", "one"]},
    "second": {"history": ["from the client", "one", "two"]},
    "context": ["from the client", "one", "two"],
}


@pytest.mark.parametrize(
    ("client_sdk", "service_sdk"),
    [("flame", "flame"), ("ours", "flame"), ("flame", "ours")],
)
def test_a_session_context_crosses_the_sdks(
    flame: Path, server: dict[str, Any], tmp_path: Path, client_sdk: str, service_sdk: str
) -> None:
    ours = Path(sys.executable)
    client_python = flame if client_sdk == "flame" else ours
    service_python = flame if service_sdk == "flame" else ours
    folder = app_dir(tmp_path, f"{client_sdk}-{service_sdk}")
    result = run_client(client_python, server, f"ctx-{client_sdk}-{service_sdk}", service_python, folder)
    assert result == EXPECTED
