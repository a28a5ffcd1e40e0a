"""``flmexec``: Flame's script application — runs a Python or shell snippet and answers its stdout.

Request (JSON; unknown fields ignored)::

    {"language": "python" | "shell", "runtime": "3.12" | "bash" | null, "code": "...", "input": [bytes] | null}

Response: ``{"data": [bytes of stdout]}``. As in Flame: only stdout is returned (stderr goes to this
instance's log), the exit status does not fail the task, each task runs in a fresh folder
``$TMPDIR/flame/script/<language>-<random>`` (its working directory, removed afterwards), and ``input``
is the script's stdin. Where flamepy differs, deliberately: with ``input`` null stdin is empty (Flame's
stays open, so a script reading it hangs); a Python version that is not installed fails the task with a
message instead of being downloaded (no ``uv`` needed); PEP 723 inline dependencies are installed only
when ``uv`` is on ``PATH`` (the script then runs with ``uv run``). Run with
``python -m flamepy_core.apps.flmexec``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flamepy_core.apps.python_runtime import FLAME_PYTHON_VERSION, normalise_version, select_python
from flamepy_core.contracts.errors import FlameError, FlameErrorCode
from flamepy_core.instance.runtime import run
from flamepy_core.instance.service import FlameService, TaskContext

__all__ = ["ALLOWED_SHELLS", "FlmexecService", "Script", "main", "parse_script"]

log = logging.getLogger(__name__)

ALLOWED_SHELLS = ("sh", "bash", "zsh", "csh", "tcsh", "ksh", "fish")
LANGUAGES = ("python", "shell")
STDERR_LOG_LIMIT = 4096

INPUT_SCHEMA = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "type": "object",
    "properties": {
        "language": {"type": "string", "description": "python or shell (case-insensitive)"},
        "runtime": {"type": ["string", "null"], "description": "a Python version, or a shell"},
        "code": {"type": "string"},
        "input": {"type": ["array", "null"], "items": {"type": "integer", "minimum": 0, "maximum": 255}},
    },
    "required": ["language", "code"],
}
OUTPUT_SCHEMA = {"$schema": "http://json-schema.org/draft-07/schema#", "type": "string"}


def _invalid(message: str) -> FlameError:
    return FlameError(FlameErrorCode.INVALID_ARGUMENT, message)


@dataclass(frozen=True)
class Script:
    """One validated request."""

    language: str
    runtime: str | None
    code: str
    stdin: bytes | None


def parse_script(data: bytes | None) -> Script:
    """The request in ``data``, checked; each problem names the field and what it must be."""
    if not data:
        raise _invalid('missing task input: send {"language": ..., "code": ...} as JSON')
    try:
        request: Any = json.loads(data)
    except ValueError as exc:
        raise _invalid(f"the task input is not JSON: {exc}") from None
    if not isinstance(request, dict):
        raise _invalid(f"the task input must be a JSON object, got {type(request).__name__}")
    language = request.get("language")
    if not isinstance(language, str):
        raise _invalid(f"language must be a string (python or shell), got {language!r}")
    if language.strip().lower() not in LANGUAGES:
        raise _invalid(f"Unsupported language: {language}")
    code = request.get("code")
    if not isinstance(code, str):
        raise _invalid(f"code must be a string, got {type(code).__name__}")
    runtime = request.get("runtime")
    if runtime is not None and not isinstance(runtime, str):
        raise _invalid(f"runtime must be a string or null, got {runtime!r}")
    raw_input = request.get("input")
    stdin = None
    if raw_input is not None:
        if not isinstance(raw_input, list) or not all(
            isinstance(b, int) and not isinstance(b, bool) and 0 <= b <= 255 for b in raw_input
        ):
            raise _invalid("input must be null or a list of byte values (integers 0 to 255)")
        stdin = bytes(raw_input)
    return Script(language.strip().lower(), runtime.strip() if runtime else None, code, stdin)


def shell_command(runtime: str | None) -> str:
    """The shell to run: ``bash`` by default; an allowed name or ``/bin/<name>``/``/usr/bin/<name>``."""
    shell = runtime or "bash"
    name = shell
    for folder in ("/bin/", "/usr/bin/"):
        if shell.startswith(folder):
            name = shell[len(folder) :]
    if name not in ALLOWED_SHELLS:
        raise _invalid(
            f"Unsupported shell runtime: {runtime} "
            f"(allowed: {', '.join(ALLOWED_SHELLS)}, or /bin/<name>, /usr/bin/<name>)"
        )
    if shutil.which(shell) is None:
        raise _invalid(f"failed to start subprocess: the shell {shell} is not installed on this machine")
    return shell


def _has_inline_metadata(code: str) -> bool:
    return any(line.strip() == "# /// script" for line in code.splitlines())


def python_command(runtime: str | None, script: Path, code: str) -> list[str]:
    """How to run a Python script: ``uv run`` for PEP 723 scripts when uv exists, else the interpreter."""
    version = normalise_version(runtime) or normalise_version(os.environ.get(FLAME_PYTHON_VERSION))
    uv = shutil.which("uv")
    if uv is not None and _has_inline_metadata(code):
        return [uv, "run", "--python", version or f"{sys.version_info[0]}.{sys.version_info[1]}", str(script)]
    return [select_python(version), str(script)]


def _script_root() -> Path:
    root = Path(tempfile.gettempdir()) / "flame" / "script"
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    return root


class FlmexecService(FlameService):
    """Runs each task's script in a fresh folder and answers its stdout."""

    def on_task_invoke(self, context: TaskContext) -> bytes | None:
        script = parse_script(context.input)
        folder = Path(tempfile.mkdtemp(prefix=f"{script.language}-", dir=_script_root()))
        try:
            if script.language == "python":
                path = folder / "main.py"
                path.write_text(script.code)
                argv = python_command(script.runtime, path, script.code)
            else:
                path = folder / "main.sh"
                path.write_text(script.code)
                argv = [shell_command(script.runtime), str(path)]
            try:
                done = subprocess.run(
                    argv,
                    cwd=folder,
                    input=script.stdin if script.stdin is not None else b"",
                    capture_output=True,
                    env=dict(os.environ),
                    check=False,
                )
            except OSError as exc:
                raise FlameError(FlameErrorCode.INTERNAL, f"failed to start subprocess: {exc}") from None
            if done.stderr:
                tail = done.stderr[-STDERR_LOG_LIMIT:].decode("utf-8", "replace")
                log.info("task %s: the script wrote to stderr (exit %d):\n%s", context.task_id, done.returncode, tail)
            return json.dumps({"data": list(done.stdout)}).encode()
        finally:
            shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run(FlmexecService())


if __name__ == "__main__":
    main()
