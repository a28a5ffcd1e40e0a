"""The published ``flamepy==0.6.0`` (Flame's own SDK) in a virtualenv of its own, for the interop tests.

Flame's SDK has the same import name as ours, so it cannot live in this project's environment: it is
installed into ``<tempdir>/flamepy-interop-venv-<python version>`` (outside the repository) and driven
as subprocesses. The virtualenv is reused by later runs once it works; creating it is serialised with a
lock file, so two test modules (or two pytest runs) never build it at the same time.

When it cannot be installed (PyPI unreachable), the tests that need it are skipped with the reason,
unless ``FLAMEPY_REQUIRE_INTEROP=1``: then they fail.
"""

from __future__ import annotations

import fcntl
import functools
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

FLAME_VERSION = "0.6.0"
REQUIRE_ENV = "FLAMEPY_REQUIRE_INTEROP"
RESULT_MARK = "RESULT "
LOCK_TIMEOUT = 480.0
INSTALL_TIMEOUT = 420.0
TEST_TIMEOUT = 600
"""Per test, for pytest-timeout: the first test of a module may have to build the virtualenv."""

# Loaded into every script run with Flame's interpreter or ours: error capture and the result line.
SCRIPT_PRELUDE = '''
import json as _json

def error_of(fn, *args, **kwargs):
    """None when ``fn`` returns; else the exception as a dict (code by name for FlameError)."""
    try:
        fn(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - reported to the test, which asserts on it
        code = getattr(exc, "code", None)
        return {
            "type": type(exc).__name__,
            "code": getattr(code, "name", None),
            "message": getattr(exc, "message", None) or str(exc),
            "text": str(exc),
        }
    return None

def text(data):
    return None if data is None else bytes(data).decode("latin-1")

def emit(result):
    print("RESULT " + _json.dumps(result, default=repr), flush=True)
'''


def venv_dir() -> Path:
    return Path(tempfile.gettempdir()) / f"flamepy-interop-venv-{sys.version_info[0]}.{sys.version_info[1]}"


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without anything that could make one SDK load the other's code."""
    drop = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith(("FLAME_", "FLAMEPY_"))}
    env["PYTHONNOUSERSITE"] = "1"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.update(extra)
    return env


def _python_of(venv: Path) -> Path:
    return venv / "bin" / "python"


def _works(venv: Path) -> bool:
    python = _python_of(venv)
    if not python.exists():
        return False
    check = (
        "import sys, flamepy, grpc, cloudpickle\n"
        "from flamepy.proto import shim_pb2_grpc\n"
        f"ok = flamepy.__version__ == {FLAME_VERSION!r} and flamepy.__file__.startswith(sys.prefix)\n"
        "sys.exit(0 if ok else 1)\n"
    )
    try:
        proc = subprocess.run([str(python), "-c", check], cwd=venv, env=clean_env(), capture_output=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0


def _run_step(argv: list[str], what: str, timeout: float) -> str | None:
    """Run one set-up step; None when it worked, else why it did not."""
    try:
        proc = subprocess.run(argv, env=clean_env(), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"{what} did not finish within {timeout:.0f} s"
    except OSError as exc:
        return f"{what} could not run: {exc}"
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-12:])
        return f"{what} exited with {proc.returncode}:\n{tail}"
    return None


@functools.cache
def _ensure_venv() -> tuple[Path | None, str]:
    """(python, "") once Flame's SDK is installed; (None, reason) when it cannot be."""
    venv = venv_dir()
    lock_path = venv.parent / f"{venv.name}.lock"
    with open(lock_path, "a+") as lock:
        deadline = time.monotonic() + LOCK_TIMEOUT
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    return None, f"another process held {lock_path} for {LOCK_TIMEOUT:.0f} s"
                time.sleep(0.2)
        try:
            if _works(venv):
                return _python_of(venv), ""
            error = _run_step(
                [sys.executable, "-m", "venv", "--clear", str(venv)], f"creating a virtualenv in {venv}", 120
            )
            if error is None:
                error = _run_step(
                    [str(_python_of(venv)), "-m", "pip", "install", "--no-input", f"flamepy=={FLAME_VERSION}"],
                    f"pip install flamepy=={FLAME_VERSION} (is PyPI reachable?)",
                    INSTALL_TIMEOUT,
                )
            if error is None and not _works(venv):
                error = f"flamepy=={FLAME_VERSION} was installed in {venv} but does not import"
            if error is not None:
                return None, error
            return _python_of(venv), ""
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def flame_python() -> Path:
    """The interpreter of the virtualenv holding Flame's SDK; skips (or fails, if required) without it."""
    python, reason = _ensure_venv()
    if python is None:
        message = f"Flame's published SDK (flamepy=={FLAME_VERSION}) is not available: {reason}"
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{message}\n({REQUIRE_ENV}=1 makes this a failure)", pytrace=False)
        pytest.skip(message)
    return python


def run_script(
    python: Path | str,
    code: str,
    *,
    env: dict[str, str],
    cwd: Path,
    timeout: float = 90,
    args: list[str] | None = None,
) -> Any:
    """Run ``code`` (with :data:`SCRIPT_PRELUDE`) and return what it passed to ``emit``."""
    script = SCRIPT_PRELUDE + textwrap.dedent(code)
    argv = [str(python), "-c", script, *(args or [])]
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    results = [line[len(RESULT_MARK) :] for line in proc.stdout.splitlines() if line.startswith(RESULT_MARK)]
    if proc.returncode != 0 or not results:
        raise AssertionError(
            f"script under {python} exited with {proc.returncode} (results: {len(results)})\n"
            f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
        )
    return json.loads(results[-1])
