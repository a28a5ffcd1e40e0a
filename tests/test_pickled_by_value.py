"""A class of ``__main__`` that cloudpickle sends by value is logged once, at INFO, with its cost and
the fix; importable classes and plain values are not. Run as real scripts, since ``__main__`` is the point.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

SCRIPT = """
import logging, sys
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
from dataclasses import dataclass
from fractions import Fraction

from flamepy_core.plugins import get_registry

ser = get_registry().serializer("cloudpickle")


@dataclass
class EchoResponse:
    text: str
    count: int


for i in range(3):
    assert ser.loads(ser.dumps(EchoResponse("x", i))).count == i
ser.dumps([EchoResponse("in a list", 1)])   # another top-level type, the same class: not reported again
ser.dumps({"just a string": "__main__"})     # names __main__ but carries no class
ser.dumps(Fraction(1, 3))                   # importable: sent by reference
print("ok")
"""


def run_script(tmp_path: Path, name: str, code: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / name
    script.write_text(textwrap.dedent(code))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60, env=env)


def test_a_main_class_is_reported_once_with_its_cost_and_the_fix(tmp_path: Path) -> None:
    proc = run_script(tmp_path, "echo_service.py", SCRIPT)
    assert proc.returncode == 0 and proc.stdout == "ok\n", proc.stderr
    lines = [line for line in proc.stderr.splitlines() if "by value" in line]
    assert len(lines) == 1, proc.stderr
    line = lines[0]
    assert line.startswith("INFO flamepy_serializers.cloudpickle.serializer: cloudpickle sends class EchoResponse")
    assert "defined in __main__" in line and "isinstance" in line
    assert "echo_types.py" in line, "the hint is named after the script"
    size = int(line.split("about ")[1].split(" bytes")[0])
    assert size > 500, "the class definition travels, which takes far more than a reference"


def test_importable_classes_are_not_reported(tmp_path: Path) -> None:
    (tmp_path / "echo_types.py").write_text(
        "from dataclasses import dataclass\n\n\n@dataclass\nclass EchoResponse:\n    text: str\n"
    )
    proc = run_script(
        tmp_path,
        "client.py",
        """
        import logging, sys
        logging.basicConfig(level=logging.INFO, stream=sys.stderr)
        from echo_types import EchoResponse
        from flamepy_core.plugins import get_registry

        data = get_registry().serializer("cloudpickle").dumps(EchoResponse("x"))
        assert len(data) < 200, len(data)
        print("ok")
        """,
    )
    assert proc.returncode == 0 and proc.stdout == "ok\n", proc.stderr
    assert "by value" not in proc.stderr


def test_the_echo_service_logs_it_in_its_instance_log(flame_env) -> None:
    """The guide's service returns EchoResponse from __main__: its .err log says so, once per process."""
    folder = flame_env.home / "echo"
    shutil.copytree(REPO / "examples" / "echo", folder)
    flame_env.env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), flame_env.env.get("PATH", "")])
    flame_env.run(["flmctl", "register", "--file", "echo-app.yaml"], cwd=folder)
    for _ in range(2):
        client = flame_env.run([sys.executable, "client.py"], cwd=folder)
        assert client.stdout.splitlines()[:2] == ["HELLO", "1"]
        assert "by value" not in client.stderr, "the client's EchoRequest is importable: nothing to report"
    # Each session has a process of its own (one process per session binding): each says it once.
    logs = sorted((flame_env.home / "logs" / "instances").glob("echo-app-*.err"))
    text = "".join(path.read_text() for path in logs)
    said = [path.read_text().count("cloudpickle sends class EchoResponse by value") for path in logs]
    assert said.count(1) == 2 and set(said) <= {0, 1}, text
    assert " INFO flamepy_serializers.cloudpickle.serializer: " in text, "FLAME_LOG_LEVEL: INFO from the YAML"
