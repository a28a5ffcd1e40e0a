"""Which Python interpreter runs a snippet or a Runner package: Flame's version rule, on this machine.

A requested version (``"3.12"``, ``"python3.12"``, ``" 3.12 "``) picks, in order: the interpreter running
this code when it is that version (so flamepy is importable in it), else ``python<version>`` on ``PATH``.
No request means the running interpreter. A version that cannot be found is a clear error naming what
was looked for, never a silent fallback to another version.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

from flamepy_core.contracts.errors import FlameError, FlameErrorCode

__all__ = ["FLAME_PYTHON", "FLAME_PYTHON_VERSION", "normalise_version", "select_python"]

FLAME_PYTHON = "FLAME_PYTHON"
"""The interpreter an instance should run (set by the runtime; the built-in apps' command)."""
FLAME_PYTHON_VERSION = "FLAME_PYTHON_VERSION"
"""The Python version an application asks for (``Runner(python_version=...)`` sets it)."""

_VERSION = re.compile(r"^(\d+)\.(\d+)(?:\.\d+)?$")


def normalise_version(requested: str | None) -> str | None:
    """``"python3.12"`` / ``" 3.12 "`` / ``"3.12.1"`` -> ``"3.12"``; blank -> None; junk -> INVALID_ARGUMENT."""
    if requested is None or not requested.strip():
        return None
    text = requested.strip()
    if text.lower().startswith("python"):
        text = text[len("python") :]
    match = _VERSION.match(text)
    if match is None:
        raise FlameError(
            FlameErrorCode.INVALID_ARGUMENT,
            f"Python version {requested!r} is not a version like 3.12 (or python3.12)",
        )
    return f"{match.group(1)}.{match.group(2)}"


def current_version() -> str:
    return f"{sys.version_info[0]}.{sys.version_info[1]}"


def select_python(requested: str | None, path: str | None = None) -> str:
    """The interpreter for ``requested`` (see the module docstring); ``path`` is the ``PATH`` to search."""
    version = normalise_version(requested)
    if version is None or version == current_version():
        return sys.executable
    found = shutil.which(f"python{version}", path=path if path is not None else os.environ.get("PATH"))
    if found is None:
        raise FlameError(
            FlameErrorCode.INVALID_ARGUMENT,
            f"Python {version} is not available on this machine: this runtime runs Python {current_version()} "
            f"and no python{version} was found on PATH; install it, or ask for {current_version()}",
        )
    problem = _probe(found, version)
    if problem:
        raise FlameError(
            FlameErrorCode.INVALID_ARGUMENT,
            f"Python {version} is not usable: {found} {problem}; install it, or ask for {current_version()}",
        )
    return found


_probed: dict[tuple[str, str], str] = {}


def _probe(python: str, version: str) -> str:
    """'' when ``python`` runs and is ``version``; else what is wrong (remembered per path and version).

    A ``python3.12`` on PATH may be a shim that refuses to run (pyenv without that version selected).
    """
    key = (python, version)
    if key not in _probed:
        code = "import sys; print('%d.%d' % sys.version_info[:2])"
        try:
            done = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=30, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            _probed[key] = f"does not start: {exc}"
        else:
            if done.returncode != 0:
                last = done.stderr.strip().splitlines()[:1]
                _probed[key] = f"exits with status {done.returncode}" + (f" ({last[0]})" if last else "")
            elif done.stdout.strip() != version:
                _probed[key] = f"is Python {done.stdout.strip()}"
            else:
                _probed[key] = ""
    return _probed[key]
