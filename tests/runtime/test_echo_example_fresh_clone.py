"""The guide's echo example from a fresh clone: ``flmctl register --file echo-app.yaml`` in its own
folder, then ``python client.py``, exactly as the README and the example's YAML say.

The clone is made with git from this repository's committed state, so nothing a developer left in the
working tree (a registered app, a local ``.venv`` inside ``examples/``) can make it pass.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_echo_example_registers_and_runs_from_its_folder_in_a_fresh_clone(flame_env, tmp_path: Path) -> None:
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout: nothing to clone")
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "--quiet", "--depth", "1", f"file://{REPO}", str(clone)], check=True, timeout=120)
    folder = clone / "examples" / "echo"
    # As an activated virtualenv does: its python and flmctl first on PATH (the YAML says `command: python`).
    flame_env.env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), flame_env.env.get("PATH", "")])

    registered = flame_env.run(["flmctl", "register", "--file", "echo-app.yaml"], cwd=folder)
    assert registered.stdout.strip() == "Application echo-app was registered."
    assert registered.stderr == "", "the example's YAML needs no change: no warning"
    listed = flame_env.run(["flmctl", "list", "--application", "-o", "json"], cwd=folder).stdout
    assert f'"working_directory": "{folder}"' in listed, "working_directory '.' is the YAML file's folder"

    out = flame_env.run(["python", "client.py"], cwd=folder).stdout.splitlines()
    assert out[:2] == ["HELLO", "1"], out
    assert re.fullmatch(r"echo-app-[A-Za-z0-9]{6}", out[2]), out
