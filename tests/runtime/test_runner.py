"""``flamepy.runner`` end to end on the embedded default: a fresh ``FLAME_HOME``, nothing configured.

Each program runs as a user runs it: a script in a project folder, in its own process, against the test's
private server, whose instances (the built-in ``flmrun`` service, installed from the package ``Runner``
uploaded to the object cache) are real processes.
"""

from __future__ import annotations

import base64
import hashlib
import json
import sys
import textwrap
import zipfile
from pathlib import Path
from typing import Any

import pytest

import flamepy
from flamepy_core.contracts.errors import FlameError

PROGRAM = """
import json
import sys

from flamepy import get_application, list_sessions
from flamepy.runner import Runner, SessionContext
from flamepy.core import FlameError

from shapes import Counter, area, square


class Adder:
    def add(self, a, b):
        return a + b

    def fail(self, text):
        raise ValueError(text)


class Pinned:
    _session_context = SessionContext(session_id="pinned-session-1")

    def who(self):
        return "pinned"


out = {}
with Runner("rt-app") as runner:
    out["registered"] = get_application("rt-app").url
    squares = runner.service(square)                    # a function from the project's module
    futures = [squares(i) for i in range(6)]
    out["get"] = runner.get(futures)
    out["select"] = sorted(f.get() for f in runner.select(futures + futures[:2]))
    out["select_count"] = len(list(runner.select(futures + futures[:2])))
    adder = runner.service(Adder, autoscale=False, warmup=1)   # a class defined in the script
    out["chained"] = adder.add(squares(3), squares(4)).get()   # futures as arguments
    shared = runner.put_object(100)
    out["shared"] = adder.add(shared, b=5).get()               # an ObjectRef argument, a keyword
    out["ref_key"] = squares(2).ref().key
    counter = runner.service(Counter(10))                      # an instance: state kept per session
    counter.add(1).wait()
    out["counter"] = [counter.add(3).get(), counter.add(counter.add(0)).get()]
    bad = adder.fail("no good")
    good = adder.add(1, 1)
    try:
        bad.get()
    except FlameError as exc:
        out["failure"] = exc.message
    out["good_after_failure"] = good.get()
    out["area"] = runner.service(area)(3, 4).get()
    pinned = runner.service(Pinned)
    out["pinned"] = [pinned.session_id, pinned.who().get()]
    out["big"] = len(runner.service(lambda n: list(range(n)))(10000).get())
out["after_close"] = get_application("rt-app") is None
out["open_sessions"] = [s.id for s in list_sessions() if s.application == "rt-app" and s.state.name == "OPEN"]
print(json.dumps(out))
"""

SHAPES = """
def square(x):
    return x * x


def area(w, h):
    return w * h


class Counter:
    def __init__(self, start=0):
        self.value = start

    def add(self, n):
        self.value += n
        return self.value
"""


def _project(tmp_path: Path, files: dict[str, str]) -> Path:
    project = tmp_path / "project"
    project.mkdir()
    for name, text in files.items():
        (project / name).write_text(textwrap.dedent(text).lstrip())
    return project


def _run(flame_env: Any, project: Path, program: str, timeout: float = 110) -> dict[str, Any]:
    (project / "main.py").write_text(textwrap.dedent(program).lstrip())
    done = flame_env.run([sys.executable, "main.py"], cwd=project, timeout=timeout)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_runner_program_on_the_embedded_default(flame_env, tmp_path) -> None:  # type: ignore[no-untyped-def]
    project = _project(tmp_path, {"shapes.py": SHAPES})
    out = _run(flame_env, project, PROGRAM)
    assert out["registered"].endswith("/rt-app/pkg/rt-app.tar.gz")
    assert out["get"] == [0, 1, 4, 9, 16, 25]
    assert out["select"] == [0, 1, 4, 9, 16, 25] and out["select_count"] == 6  # duplicates collapse
    assert out["chained"] == 25
    assert out["shared"] == 105
    assert out["ref_key"].startswith("rt-app/")
    assert out["counter"] == [14, 28]
    assert "ValueError: no good" in out["failure"]
    assert out["good_after_failure"] == 2
    assert out["area"] == 12
    assert out["pinned"] == ["pinned-session-1", "pinned"]
    assert out["big"] == 10000
    assert out["after_close"] is True and out["open_sessions"] == []
    # close() left nothing: the application, its objects, the package, the local archive.
    assert flamepy.get_application("rt-app") is None
    assert not (project / "dist").exists()
    with pytest.raises(FlameError):
        flamepy.get_object(flamepy.ObjectRef("", "rt-app/pkg/rt-app.tar.gz", 0))


RECURSIVE = """
import json
import os

from flamepy.runner import Runner, SessionContext

APP = "fib-app"


class Fib:
    _session_context = SessionContext(session_id="fib-session")

    def fib(self, n):
        if n < 2:
            return {"value": n, "pid": [os.getpid()]}
        with Runner(APP) as runner:              # the application exists: this Runner only uses it
            same = runner.service(type(self), autoscale=True)
            a, b = same.fib(n - 1), same.fib(n - 2)
            left, right = a.get(), b.get()
        return {"value": left["value"] + right["value"], "pid": [os.getpid()] + left["pid"] + right["pid"]}


with Runner(APP) as runner:
    fib = runner.service(Fib, autoscale=True)
    result = fib.fib(int(os.environ["DEPTH_N"])).get(), fib.session_id
print(json.dumps({"value": result[0]["value"], "pids": len(set(result[0]["pid"])), "session": result[1]}))
"""


def test_recursive_service_depth_1(flame_env, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """fib(2) runs fib(1) and fib(0) as tasks of its own session: 2 instances busy at once at most."""
    project = _project(tmp_path, {})
    flame_env.env["DEPTH_N"] = "2"
    out = _run(flame_env, project, RECURSIVE)
    assert out == {"value": 1, "pids": out["pids"], "session": "fib-session"}
    assert out["pids"] >= 2  # the parent task waits in one process while its children run in others


def test_recursive_service_depth_2(flame_env, tmp_path) -> None:  # type: ignore[no-untyped-def]
    project = _project(tmp_path, {})
    flame_env.env["DEPTH_N"] = "3"
    out = _run(flame_env, project, RECURSIVE, timeout=25)
    assert out["value"] == 2 and out["session"] == "fib-session"


def _wheel(folder: Path, name: str, version: str, module_text: str) -> Path:
    """A minimal pure-Python wheel, written by hand: the offline stand-in for a package index."""
    dist_info = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": module_text.encode(),
        f"{dist_info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{dist_info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append(f"{dist_info}/RECORD,,")
    files[f"{dist_info}/RECORD"] = ("\n".join(record) + "\n").encode()
    wheel = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for path, data in files.items():
            zf.writestr(path, data)
    return wheel


DEPENDENT = """
import json
import os
import sys

from flamepy.runner import Runner


def where(x):
    import localdep
    return {"value": localdep.VALUE + x, "from": os.path.basename(os.path.dirname(os.path.dirname(localdep.__file__))),
            "version": "%d.%d" % sys.version_info[:2], "env": os.environ.get("FLAME_PYTHON_VERSION")}


with Runner("dep-app", dependencies=[os.environ["DEP"]], python_version=os.environ.get("PYV")) as runner:
    out = runner.service(where)(1).get()
print(json.dumps(out))
"""


def test_dependencies_are_installed_into_the_application_environment(flame_env, tmp_path) -> None:  # type: ignore[no-untyped-def]
    wheel = _wheel(tmp_path, "localdep", "1.0", "VALUE = 41\n")
    project = _project(tmp_path, {})
    mine = f"{sys.version_info[0]}.{sys.version_info[1]}"
    flame_env.env.update({"DEP": f"localdep @ {wheel.as_uri()}", "PYV": mine})
    out = _run(flame_env, project, DEPENDENT)
    assert out == {"value": 42, "from": "deps", "version": mine, "env": mine}
    releases = list((flame_env.home / "apps" / "dep-app").iterdir())
    assert [r.name for r in releases if (r / ".complete").exists()], "the release is kept for later bindings"
    assert (flame_env.home / "logs" / "install" / "dep-app.log").read_text().count("localdep") >= 1


FAILING = """
import json
import os

from flamepy import get_session
from flamepy.core import FlameError
from flamepy.runner import Runner

with Runner("bad-app", dependencies=["nosuchdep @ file:///nonexistent/nosuchdep-1.0-py3-none-any.whl"]) as runner:
    service = runner.service(abs)
    try:
        service(-1).get()
        out = {"error": None}
    except FlameError as exc:
        events = [e.message for e in get_session(service.session_id).events if e.code == 1001]
        out = {"error": exc.message, "events": events}
print(json.dumps(out))
"""


def test_a_failed_install_is_a_bind_failure_with_the_installer_output(flame_env, tmp_path) -> None:  # type: ignore[no-untyped-def]
    out = _run(flame_env, _project(tmp_path, {}), FAILING)
    assert out["error"] and "application install failed (bind result 10)" in out["error"]
    assert out["events"] and all("application install failed (bind result 10)" in e for e in out["events"])
    assert "pip exited with status" in out["events"][0] and "nosuchdep" in out["events"][0]


def test_smoke_test_command(flame_env, tmp_path) -> None:  # type: ignore[no-untyped-def]
    done = flame_env.run([sys.executable, "-m", "flamepy.runner", "--tasks", "3", "--json", "--name", "smoke-app"])
    result = json.loads(done.stdout)
    assert result["function_results"] == [0, 1, 4] and result["chained_result"] == 9 + 16
    assert result["stateful_result"] == 6 and result["template"] == "flmrun" and result["app_name"] == "smoke-app"
    assert not Path(result["workdir"]).exists()
    zero = flame_env.run([sys.executable, "-m", "flamepy.runner", "--tasks", "0"], check=False)
    assert zero.returncode == 2 and "must be at least 1" in zero.stderr
    flamepy.unregister_application("flmrun")
    missing = flame_env.run([sys.executable, "-m", "flamepy.runner"], check=False)
    assert missing.returncode == 1 and "flmrun" in missing.stderr


def test_owners_and_users_of_an_application(flame_env, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from flamepy.runner import Runner

    monkeypatch.chdir(_project(tmp_path, {"shapes.py": SHAPES}))
    with Runner("shared-app") as owner:
        assert flamepy.get_application("shared-app") is not None
        with pytest.raises(FlameError) as exists:
            Runner("shared-app", fail_if_exists=True)
        assert exists.value.code == flamepy.FlameErrorCode.ALREADY_EXISTS
        user = Runner("shared-app")  # uses it; builds and registers nothing
        assert user.service(abs)(-3).get() == 3
        user.close()
        user.close()
        assert flamepy.get_application("shared-app") is not None  # a user's close keeps the application
        assert owner.service(abs)(-4).get() == 4
    assert flamepy.get_application("shared-app") is None
    owner.close()  # again: nothing happens
    with pytest.raises(FlameError) as bad:
        Runner("../escape")
    assert bad.value.code == flamepy.FlameErrorCode.INVALID_ARGUMENT


CONFIGURED = """
import json
import os

from flamepy import get_application
from flamepy.runner import Runner


def look():
    here = os.getcwd()
    src = [p for p in os.environ["PYTHONPATH"].split(os.pathsep) if p.endswith("src")][0]
    return {"mark": os.environ.get("MARK"), "files": sorted(os.listdir(src))}


with Runner("conf-app") as runner:
    app = get_application("conf-app")
    stored = sorted(os.listdir(os.environ["PKGS"]))
    out = runner.service(look)().get()
    out.update({"url": app.url, "stored": stored, "env": app.environments})
out["stored_after"] = sorted(os.listdir(os.environ["PKGS"]))
print(json.dumps(out))
"""


def test_flame_yaml_package_storage_excludes_and_template(flame_env, tmp_path) -> None:  # type: ignore[no-untyped-def]
    pkgs = tmp_path / "pkgs"
    pkgs.mkdir()
    (flame_env.home / "flame.yaml").write_text(
        "current-context: local\n"
        "contexts:\n"
        "  - name: local\n"
        f"    package: {{storage: 'file://{pkgs}', excludes: ['*.secret']}}\n"
        "    runner: {template: my-flmrun}\n"
    )
    flmrun = flamepy.get_application("flmrun")
    assert flmrun is not None
    flamepy.register_application(
        "my-flmrun",
        {
            "command": flmrun.command,
            "arguments": flmrun.arguments,
            "installer": flmrun.installer,
            "environments": {"MARK": "from-my-template"},
        },
    )
    project = _project(tmp_path, {"keep.py": "X = 1\n", "token.secret": "hidden\n"})
    flame_env.env["PKGS"] = str(pkgs)
    out = _run(flame_env, project, CONFIGURED)
    assert out["url"] == f"file://{pkgs}/conf-app.tar.gz" and out["stored"] == ["conf-app.tar.gz"]
    assert out["mark"] == "from-my-template" and out["env"] == {"MARK": "from-my-template"}
    assert "keep.py" in out["files"] and "main.py" in out["files"] and "pyproject.toml" in out["files"]
    assert "token.secret" not in out["files"]
    assert out["stored_after"] == []


MISSING_PYTHON = """
import json

from flamepy.core import FlameError
from flamepy.runner import Runner

with Runner("py-app", python_version="3.99") as runner:
    try:
        runner.service(abs)(-1).get()
        out = {"error": None}
    except FlameError as exc:
        out = {"error": exc.message}
print(json.dumps(out))
"""


def test_a_python_version_that_is_not_installed_fails_clearly(flame_env, tmp_path) -> None:  # type: ignore[no-untyped-def]
    out = _run(flame_env, _project(tmp_path, {}), MISSING_PYTHON)
    assert "application install failed (bind result 10)" in out["error"]
    assert "Python 3.99 is not available on this machine" in out["error"]
