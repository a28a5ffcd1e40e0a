"""The built-in applications on a fresh embedded server: flmexec, flmping, flmrun.

Each test has its own ``FLAME_HOME`` and a real server; the built-ins run as real instance processes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

import flamepy
from flamepy_core.client.connection import reset_default_connection
from flamepy_core.client.local import stop_server
from flamepy_core.contracts.errors import FlameError, FlameErrorCode

BUILTINS = ["flmexec", "flmping", "flmrun"]


def _names() -> list[str]:
    return sorted(a.name for a in flamepy.list_applications())


def _restart(flame_env) -> None:  # type: ignore[no-untyped-def]
    reset_default_connection()
    assert stop_server(flame_env.home, timeout=20)


def test_a_fresh_server_lists_the_builtins(flame_env) -> None:  # type: ignore[no-untyped-def]
    assert _names() == BUILTINS
    for name in BUILTINS:
        app = flamepy.get_application(name)
        assert app is not None and app.state == flamepy.ApplicationState.ENABLED
    assert flamepy.get_application("flmrun").installer == "python"
    schema = json.loads(flamepy.get_application("flmexec").schema.input)
    assert schema["required"] == ["language", "code"]
    listed = flame_env.flmctl("list", "-a").stdout
    for name in BUILTINS:
        assert any(line.split()[0] == name and "Enabled" in line for line in listed.splitlines()[1:]), listed


def test_a_restart_neither_duplicates_nor_resurrects_them(flame_env) -> None:  # type: ignore[no-untyped-def]
    assert _names() == BUILTINS
    flamepy.unregister_application("flmping")
    flamepy.unregister_application("flmexec")
    flamepy.register_application("flmexec", {"command": "/bin/cat", "description": "mine"})
    _restart(flame_env)
    assert _names() == ["flmexec", "flmrun"]  # flmping stays gone; the user's flmexec is kept
    assert flamepy.get_application("flmexec").description == "mine"
    _restart(flame_env)
    assert _names() == ["flmexec", "flmrun"]


def test_flmping_echoes_and_pings(flame_env) -> None:  # type: ignore[no-untyped-def]
    session = flamepy.create_session("flmping")
    try:
        assert session.invoke(b"any bytes at all") == b"any bytes at all"
        assert session.invoke(None) is None
        answer = json.loads(session.invoke(json.dumps({"duration": 30, "memory": 4096}).encode()))
        assert answer["echo"] == {"duration": 30, "memory": 4096}
        assert answer["message"].startswith("Completed on ") and "milliseconds with 4.0KiB memory" in answer["message"]
        elapsed = int(answer["message"].split(" in ")[1].split()[0])
        assert elapsed >= 30
        with pytest.raises(FlameError, match="duration must be a whole number"):
            session.invoke(json.dumps({"duration": -1}).encode())
    finally:
        session.close()


def _exec(session: flamepy.Session, **request: object) -> bytes:
    output = session.invoke(json.dumps(request).encode())
    assert output is not None
    return bytes(json.loads(output)["data"])


def test_flmexec_runs_scripts(flame_env, tmp_path) -> None:  # type: ignore[no-untyped-def]
    session = flamepy.create_session("flmexec")
    try:
        assert _exec(session, language="python", code="print(1 + 2)") == b"3\n"
        assert _exec(session, language="PYTHON", runtime=None, code="print('x')", extra="ignored") == b"x\n"
        # stdin from input; stderr dropped; the exit status does not fail the task (as in Flame)
        code = "import sys; data = sys.stdin.read(); print(data.upper()); print('oops', file=sys.stderr); sys.exit(3)"
        assert _exec(session, language="python", code=code, input=list(b"abc")) == b"ABC\n"
        # stdin is empty, not left open, when input is null: a reader ends instead of hanging
        assert _exec(session, language="python", code="import sys; print(len(sys.stdin.read()))") == b"0\n"
        # each task runs in its own temporary folder, removed afterwards
        folder = _exec(session, language="shell", code="pwd").decode().strip()
        assert os.path.basename(folder).startswith("shell-") and not os.path.exists(folder)
        assert _exec(session, language="shell", runtime="/bin/sh", code="echo $((6 * 7))") == b"42\n"
        # the script can use flamepy against the same server
        code = "import flamepy; print(sorted(a.name for a in flamepy.list_applications()))"
        assert _exec(session, language="python", code=code) == f"{BUILTINS}\n".encode()
        failures = {
            "Unsupported language: cobol": {"language": "cobol", "code": "x"},
            "Unsupported shell runtime: powershell": {"language": "shell", "runtime": "powershell", "code": "x"},
            "is not available on this machine": {"language": "python", "runtime": "3.99", "code": "x"},
            "missing task input": None,
            "not JSON": "{",
            "code must be a string": {"language": "python", "code": 1},
            "list of byte values": {"language": "python", "code": "", "input": [256]},
        }
        for expected, request in failures.items():
            data = None if request is None else (request if isinstance(request, str) else json.dumps(request))
            with pytest.raises(FlameError, match=expected) as failed:
                session.invoke(None if data is None else data.encode())
            assert failed.value.code == FlameErrorCode.INTERNAL  # a failed task, as Flame reports it
    finally:
        session.close()


def _other_python() -> str | None:
    """A Python version other than this one that runs here (pyenv shims need PYENV_VERSION), or None."""
    mine = f"{sys.version_info[0]}.{sys.version_info[1]}"
    for minor in range(8, 16):
        version = f"3.{minor}"
        if version == mine or shutil.which(f"python{version}") is None:
            continue
        probe = subprocess.run(
            [f"python{version}", "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
            check=False,
        )
        if probe.returncode == 0 and probe.stdout.strip() == version:
            return version
    return None


def _select_every_pyenv_version(monkeypatch: pytest.MonkeyPatch) -> None:
    """pyenv's ``python3.X`` shims run only versions selected: select all installed (before the server starts)."""
    if shutil.which("pyenv") is None or os.environ.get("PYENV_VERSION"):
        return
    listed = subprocess.run(["pyenv", "versions", "--bare"], capture_output=True, text=True, check=False)
    versions = [v.strip() for v in listed.stdout.splitlines() if v.strip() and "/" not in v]
    if versions:
        monkeypatch.setenv("PYENV_VERSION", ":".join(versions))


def test_flmexec_picks_the_requested_python(flame_env, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    _select_every_pyenv_version(monkeypatch)
    mine = f"{sys.version_info[0]}.{sys.version_info[1]}"
    session = flamepy.create_session("flmexec")
    try:
        code = "import sys; print('%d.%d' % sys.version_info[:2])"
        assert _exec(session, language="python", runtime=f"python{mine}", code=code) == f"{mine}\n".encode()
        other = _other_python()
        if other is None:
            pytest.skip("no second Python version runs on this machine")
        assert _exec(session, language="python", runtime=f" {other} ", code=code) == f"{other}\n".encode()
    finally:
        session.close()
