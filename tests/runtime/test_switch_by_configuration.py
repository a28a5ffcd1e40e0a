"""The guide's echo example switched to another serializer by configuration alone (no code change)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from conftest import EXAMPLES, FlameEnv


def test_echo_example_runs_with_the_pickle_serializer(flame_env: FlameEnv, tmp_path: Path) -> None:
    echo = tmp_path / "echo"
    shutil.copytree(EXAMPLES / "echo", echo)
    env = {"FLAME_SERIALIZER": "pickle", "PATH": f"{Path(sys.executable).parent}:{flame_env.env.get('PATH', '')}"}
    flame_env.run(
        [sys.executable, "-m", "flamepy_core.cli.main", "register", "--file", "echo-app.yaml"], cwd=echo, extra_env=env
    )
    out = flame_env.run([sys.executable, "client.py"], cwd=echo, extra_env=env)
    lines = out.stdout.split()
    assert lines[:2] == ["HELLO", "1"], out.stdout
    # The service really used pickle: a cloudpickle client now gets the mismatch error naming both.
    wrong = flame_env.run(
        [sys.executable, "client.py"],
        cwd=echo,
        check=False,
        extra_env={"PATH": env["PATH"], "FLAME_SERIALIZER": "cloudpickle"},
    )
    assert wrong.returncode != 0
    assert "pickle" in wrong.stderr and "cloudpickle" in wrong.stderr, wrong.stderr
