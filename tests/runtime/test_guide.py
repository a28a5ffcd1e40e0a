"""The service guide, end to end: every snippet of it runs as written, against a real local server.

The snippets are read from the guide's text at test time (not copied here), so when the guide changes
these tests follow it. Each snippet runs in its own process, as a user would run it; the services are
real instance processes started by the server of the test's private ``FLAME_HOME`` (``flame_env``).
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
GUIDE_NAME = "000_a82a64b39eee3be3.txt"
GUIDE_TITLE = "flamepy.service Guide"
SESSION_ID = re.compile(r"echo-app-[A-Za-z0-9]{6}")
VENV_BIN = str(Path(sys.executable).parent)


# -- the guide and its snippets -----------------------------------------------------------------------


def _find_guide() -> Path | None:
    """The service guide: ``$FLAMEPY_GUIDE``, the shared seed folder next to the repo, or a docs page."""
    candidates = [os.environ.get("FLAMEPY_GUIDE", ""), str(REPO.parent / "shared" / "seed" / GUIDE_NAME)]
    for candidate in filter(None, candidates):
        if Path(candidate).is_file():
            return Path(candidate)
    docs = REPO / "docs"
    if docs.is_dir():
        for path in sorted(docs.rglob("*")):
            if path.suffix in (".txt", ".md", ".rst") and path.is_file():
                text = path.read_text(errors="replace")
                if GUIDE_TITLE in text and "# echo_service.py" in text and "Open an Existing Session" in text:
                    return path
    return None


def _markdown_to_plain(text: str) -> str:
    """The guide's text from its docs page: no fences, markers, note boxes or heading marks.

    ``docs/guide.md`` holds the guide word for word as Markdown (headings, fenced code, notes marked as
    flamepy's additions); this gives back the plain text the helpers below read.
    """
    lines: list[str] = []
    in_note = False
    for line in text.splitlines():
        if line.startswith("!!! "):
            in_note = True
            continue
        if in_note and (line.startswith("    ") or not line.strip()):
            continue
        in_note = False
        if line.startswith(("```", "<!--")):
            continue
        if line.startswith("## ") or line.startswith("# flamepy.service Guide"):
            line = line.lstrip("#").strip()
        lines.append(line)
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def guide() -> str:
    path = _find_guide()
    if path is None:
        pytest.skip(f"the service guide ({GUIDE_NAME}) was not found; point FLAMEPY_GUIDE at it")
    text = path.read_text()
    return _markdown_to_plain(text) if path.suffix == ".md" else text


def _start(lines: list[str], first: str, after: str | None) -> int:
    begin = 0
    if after is not None:
        begin = next(i for i, line in enumerate(lines) if line.strip() == after) + 1
    for i in range(begin, len(lines)):
        if lines[i].rstrip() == first:
            return i
    raise AssertionError(f"the guide has no line {first!r}" + (f" after {after!r}" if after else ""))


def python_block(text: str, first: str, after: str | None = None) -> str:
    """The guide's Python snippet that starts with the line ``first`` (after the line ``after``).

    The guide's code is not fenced; a snippet is the longest run of lines from ``first`` that compiles,
    since the prose that follows it is not Python.
    """
    lines = text.splitlines()
    start = _start(lines, first, after)
    best = None
    for end in range(start + 1, len(lines) + 1):
        if not lines[end - 1].strip():
            continue
        chunk = "\n".join(lines[start:end]) + "\n"
        try:
            compile(chunk, "<guide>", "exec")
        except SyntaxError:
            continue
        best = chunk
    assert best is not None, f"the guide's snippet starting {first!r} does not compile"
    return best


def plain_block(text: str, first: str, after: str | None = None) -> str:
    """A non-Python snippet (YAML, shell): the lines from ``first`` to the next blank line."""
    lines = text.splitlines()
    start = _start(lines, first, after)
    end = start
    while end < len(lines) and lines[end].strip():
        end += 1
    return "\n".join(lines[start:end]) + "\n"


def echo_service(text: str) -> str:
    return python_block(text, "# echo_service.py")


def echo_client(text: str) -> str:
    return python_block(text, "# client.py")


# -- helpers ------------------------------------------------------------------------------------------


def with_venv_path(flame_env) -> None:
    """Put this interpreter's bin folder (python, flmctl) first on PATH, as an activated virtualenv does.

    The first call of a test starts the local server with this environment, so its instances find the
    same ``python`` (``command: python`` in examples/echo/echo-app.yaml).
    """
    flame_env.env["PATH"] = os.pathsep.join([VENV_BIN, flame_env.env.get("PATH", "")])
    assert Path(VENV_BIN, "flmctl").exists(), f"flmctl is not installed next to {sys.executable}"


def shell(flame_env, command: str, cwd: Path, check: bool = True):
    """Run one of the guide's shell lines as written."""
    return flame_env.run(["bash", "-c", command], cwd=cwd, check=check)


def register_echo(flame_env, guide_text: str, folder: Path) -> Path:
    """The guide's echo_service.py in ``folder``, registered as echo-app (this interpreter, this folder)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "echo_service.py").write_text(echo_service(guide_text))
    spec = folder / "app.yaml"
    spec.write_text(
        f"metadata:\n  name: echo-app\nspec:\n  working_directory: .\n  command: {sys.executable}\n"
        "  arguments: [echo_service.py]\n"
    )
    flame_env.flmctl("register", "--file", str(spec))
    return folder


def session_json(flame_env, session_id: str) -> dict:
    return json.loads(flame_env.flmctl("view", "-s", session_id, "-o", "json").stdout)


# -- the guide itself ---------------------------------------------------------------------------------


def test_guide_snippets_are_found_and_examples_are_verbatim(guide: str) -> None:
    service = echo_service(guide)
    client = echo_client(guide)
    assert service.startswith("# echo_service.py\n") and service.rstrip().endswith("ins.run()")
    assert "ins.update_context(history)" in service
    assert client.startswith("# client.py\n") and client.rstrip().endswith("print(session.id())")
    # examples/echo carries the guide's two files verbatim.
    assert (REPO / "examples/echo/echo_service.py").read_text() == service
    assert (REPO / "examples/echo/client.py").read_text() == client
    yaml_block = plain_block(guide, "metadata:")
    assert "working_directory: /opt/examples/echo" in yaml_block and yaml_block.rstrip().endswith("INFO")


def test_docs_guide_page_keeps_the_guide_text_word_for_word(guide: str) -> None:
    """docs/guide.md renders the guide as Markdown; its text, less the notes marked as ours, is the guide's."""
    page = REPO / "docs" / "guide.md"
    if not page.is_file() or _find_guide() == page:
        pytest.skip("needs both the seed guide and docs/guide.md")
    seed_lines = [line for line in guide.splitlines() if line.strip()]
    assert seed_lines.count(GUIDE_TITLE) == 2
    # The seed repeats its title as the first heading; the page shows it once.
    del seed_lines[seed_lines.index(GUIDE_TITLE, 1)]
    page_lines = [line.strip("*") for line in _markdown_to_plain(page.read_text()).splitlines() if line.strip()]
    assert page_lines == seed_lines


# -- 1. the echo example --------------------------------------------------------------------------------


@pytest.mark.parametrize("flame_env", ["zmq", "grpc"], indirect=True)
def test_echo_guide_end_to_end(flame_env, guide: str) -> None:
    """Register with flmctl as the guide says, list, then run client.py twice: new session, new context."""
    with_venv_path(flame_env)
    folder = flame_env.home / "echo"
    folder.mkdir()
    (folder / "echo_service.py").write_text(echo_service(guide))
    (folder / "client.py").write_text(echo_client(guide))
    shutil.copy(REPO / "examples/echo/echo-app.yaml", folder / "echo-app.yaml")

    commands = plain_block(guide, "flmctl register --file echo-app.yaml").splitlines()
    assert commands == ["flmctl register --file echo-app.yaml", "flmctl list --application"]
    registered = shell(flame_env, commands[0], folder)
    assert "echo-app" in registered.stdout
    listed = shell(flame_env, commands[1], folder).stdout.splitlines()
    assert listed[0].split()[:2] == ["Name", "State"]
    row = next(line.split() for line in listed[1:] if line.split()[0] == "echo-app")
    assert row[1] == "Enabled" and "echo_service.py" in row

    ids = []
    for _ in range(2):
        lines = flame_env.run([sys.executable, "client.py"], cwd=folder).stdout.splitlines()
        assert len(lines) == 3, lines
        assert lines[0] == "HELLO"
        assert lines[1] == "1", "a new session starts from ctx=[], so the count is 1 each run"
        assert SESSION_ID.fullmatch(lines[2]), lines[2]
        ids.append(lines[2])
    assert ids[0] != ids[1]
    for sid in ids:
        info = session_json(flame_env, sid)
        assert info["application"] == "echo-app"
        assert (info["succeed"], info["failed"], info["pending"]) == (1, 0, 0)
        assert info["completion_time"], "leaving the with block closes the session"


def test_guide_yaml_verbatim_registers_and_fails_clearly(flame_env, guide: str) -> None:
    """The guide's YAML (/usr/bin/python in /opt/examples/echo) registers; invoking it names what is missing."""
    with_venv_path(flame_env)
    folder = flame_env.home / "opt"
    folder.mkdir()
    yaml_block = plain_block(guide, "metadata:")
    (folder / "echo-app.yaml").write_text(yaml_block)
    (folder / "echo_service.py").write_text(echo_service(guide))
    (folder / "client.py").write_text(echo_client(guide))
    shell(flame_env, "flmctl register --file echo-app.yaml", folder)
    listed = shell(flame_env, "flmctl list --application", folder).stdout
    assert "/usr/bin/python echo_service.py" in listed

    workdir, command = "/opt/examples/echo", "/usr/bin/python"
    if Path(workdir).is_dir() and Path(command).exists():
        pytest.skip(f"{workdir} and {command} both exist here: the guide's spec may really run")
    failed = flame_env.run([sys.executable, "client.py"], cwd=folder, check=False, timeout=60)
    assert failed.returncode != 0
    assert "HELLO" not in failed.stdout
    if not Path(workdir).is_dir():
        assert f"working directory {workdir}" in failed.stderr and "does not exist" in failed.stderr, failed.stderr
    else:
        assert repr(command) in failed.stderr and "not found" in failed.stderr, failed.stderr
    assert "Traceback" in failed.stderr  # the client's own exception, not a hang or a silent exit
    assert "FlameError" in failed.stderr or "TaskFailedError" in failed.stderr


# -- 2. sessions by id, resources, context ---------------------------------------------------------------


@pytest.mark.parametrize("flame_env", ["zmq", "grpc"], indirect=True)
def test_open_existing_session_snippet_sees_context_from_another_process(flame_env, guide: str) -> None:
    """Process A makes echo-app-a1b2c3 and drives the service; the guide's snippet (process B) reads it."""
    folder = register_echo(flame_env, guide, flame_env.home / "echo")
    snippet = python_block(guide, "from flamepy.service import Session", after="Open an Existing Session")
    assert 'Session(session_id="echo-app-a1b2c3")' in snippet
    (folder / "open_existing.py").write_text(snippet)

    created = flame_env.python(
        """
        from flamepy.core import create_session, put_object
        from flamepy.service import Session
        from echo_service import EchoRequest

        ref = put_object("echo-app/echo-app-a1b2c3", [])
        create_session("echo-app", ref.encode(), session_id="echo-app-a1b2c3")
        session = Session(session_id="echo-app-a1b2c3")     # reopened, and left open
        print(session.invoke(EchoRequest("hello")).count)
        print(session.context())
        """,
        cwd=folder,
    )
    assert created.stdout.split("\n")[:2] == ["1", "['hello']"]

    shown = flame_env.run([sys.executable, "open_existing.py"], cwd=folder).stdout
    assert shown.strip() == "['hello']", "the snippet prints the context the service stored"
    info = session_json(flame_env, "echo-app-a1b2c3")
    assert info["completion_time"], "the snippet's finally: closes the session"
    assert info["succeed"] == 1


def test_resource_requirements_snippet_and_resreq_forms(flame_env, guide: str) -> None:
    flame_env.write_service(
        "ping",
        """
        from flamepy import service

        ins = service.FlameInstance()


        @ins.entrypoint
        def ping(req):
            return req


        if __name__ == "__main__":
            ins.run()
        """,
        app="echo-app",
    )
    snippet = python_block(guide, "from flamepy.service import Session", after="Resource Requirements")
    assert '"memory": "4g"' in snippet and 'session.invoke("ping")' in snippet
    run = flame_env.python(snippet, check=False)
    sessions_made = 5
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if (os.cpu_count() or 1) >= 2 and memory >= 4 << 30:
        assert run.returncode == 0, run.stderr
        assert run.stdout == "ping\n"
        sessions_made += 1
    else:  # a smaller machine refuses up front, naming what it lacks
        assert run.returncode != 0 and ("cpu=2" in run.stderr or "memory=4294967296" in run.stderr), run.stderr

    flame_env.python(
        """
        import flamepy
        from flamepy import FlameError, ResourceRequirement, SessionAttributes, open_session
        from flamepy.service import Session

        MiB, GiB = 1 << 20, 1 << 30
        r = flamepy.ResourceRequirement.from_string("cpu=2,mem=4g")
        assert (r.cpu, r.memory, r.gpu) == (2, 4 * GiB, 0), r

        forms = [
            (ResourceRequirement(cpu=1, memory=256 * MiB), (1, 256 * MiB, 0)),
            ({"cpu": 1, "memory": 512 * MiB, "gpu": 0}, (1, 512 * MiB, 0)),
            ({"cpu": 1, "mem": "1g"}, (1, GiB, 0)),
            ({"cpu": 1, "memory": "768m"}, (1, 768 * MiB, 0)),
            ("cpu=1,mem=128m", (1, 128 * MiB, 0)),
        ]
        for resreq, (cpu, memory, gpu) in forms:
            with Session("echo-app", resreq=resreq) as session:
                assert session.invoke("ping") == "ping"
                want = ResourceRequirement(cpu=cpu, memory=memory, gpu=gpu)
                # The server compares the stored resreq with a spec's: equal passes, different fails.
                open_session(session.id(), SessionAttributes(application="echo-app", resreq=want))
                other = ResourceRequirement(cpu=cpu, memory=memory + MiB, gpu=gpu)
                try:
                    open_session(session.id(), SessionAttributes(application="echo-app", resreq=other))
                except FlameError as exc:
                    assert "resreq" in str(exc) and "mismatch" in str(exc), exc
                else:
                    raise AssertionError(f"{resreq!r} was not stored as {want}")

        for resreq, named in [({"cpu": 4096}, "cpu=4096"), ({"memory": "64p"}, "memory="), ({"gpu": 64}, "gpu=64")]:
            try:
                Session("echo-app", resreq=resreq)
            except FlameError as exc:
                assert named in str(exc), exc
            else:
                raise AssertionError(f"{resreq} was accepted on this machine")
        try:
            Session("echo-app", resreq="cpu=1,disk=2")
        except ValueError as exc:
            assert "disk" in str(exc), exc
        else:
            raise AssertionError("an unknown resource key was accepted")
        print("resreq ok")
        """
    )
    sessions = json.loads(flame_env.flmctl("list", "-s", "-o", "json").stdout)
    assert len(sessions) == sessions_made, "a refused resreq creates no session"


@pytest.mark.parametrize("flame_env", ["zmq", "grpc"], indirect=True)
def test_session_context_snippets(flame_env, guide: str) -> None:
    """An agent-app whose entrypoint holds the guide's service lines; the guide's client lines print the state."""
    service_lines = python_block(guide, 'state = ins.context() or {"messages": []}')
    assert "ins.update_context(state)" in service_lines
    flame_env.write_service(
        "agent-app",
        "from flamepy import service\n\nins = service.FlameInstance()\n\n\n@ins.entrypoint\n"
        "def agent(question):\n"
        + textwrap.indent(service_lines, "    ")
        + '    return f"answer to {question}"\n\n\nif __name__ == "__main__":\n    ins.run()\n',
    )
    client_lines = python_block(guide, 'with Session("agent-app", ctx={"messages": []}) as session:')
    assert "print(session.context())" in client_lines
    out = flame_env.python("from flamepy.service import Session\n\n" + client_lines).stdout
    assert ast.literal_eval(out.strip()) == {"messages": ["handled one task"]}


def test_async_and_zero_parameter_entrypoints(flame_env) -> None:
    flame_env.write_service(
        "async-app",
        """
        import asyncio

        from flamepy import service

        ins = service.FlameInstance()


        @ins.entrypoint
        async def double(n):
            await asyncio.sleep(0.01)
            return {"double": n * 2, "loop_running": asyncio.get_running_loop().is_running()}


        if __name__ == "__main__":
            ins.run()
        """,
    )
    flame_env.write_service(
        "noarg-app",
        """
        import os

        from flamepy import service

        ins = service.FlameInstance()
        calls = []


        @ins.entrypoint
        def hello():
            calls.append(1)
            return ("no input", len(calls), os.getpid())


        if __name__ == "__main__":
            ins.run()
        """,
    )
    out = flame_env.python(
        """
        import os
        from flamepy.service import Session

        with Session("async-app") as session:
            assert session.invoke(21) == {"double": 42, "loop_running": True}
            assert session.invoke(-4)["double"] == -8
        with Session("noarg-app") as session:
            first = session.invoke()
            second = session.invoke("ignored by a zero-parameter entrypoint")
            assert first[:2] == ("no input", 1) and second[:2] == ("no input", 2), (first, second)
            assert first[2] == second[2] != os.getpid(), "one instance process served both tasks"
        print("entrypoints ok")
        """
    ).stdout
    assert out == "entrypoints ok\n"


# -- 3. the object cache through the public API -----------------------------------------------------------


@pytest.mark.parametrize("flame_env", ["zmq", "grpc"], indirect=True)
def test_object_cache_public_api(flame_env) -> None:
    out = flame_env.python(
        """
        import subprocess
        import sys

        import flamepy
        from flamepy.cache import ObjectRef, delete_objects, get_object, patch_object, put_object, update_object

        def both(base, patches):
            return [base, *patches]

        ref = put_object("cacheapp/s1", {"a": 1})
        assert ref.version == 1 and ref.key.startswith("cacheapp/s1/") and ref.key.count("/") == 2, ref
        assert get_object(ref) == {"a": 1}

        p1 = patch_object(ref, {"b": 2})
        p2 = patch_object(p1, {"c": 3})
        assert (p1.key, p2.key) == (ref.key, ref.key) and (p1.version, p2.version) == (2, 3)
        assert get_object(p2) == {"a": 1}, "without a deserializer: the base only, patches ignored"
        assert get_object(p2, deserializer=both) == [{"a": 1}, {"b": 2}, {"c": 3}]

        u = update_object(p2, {"z": 0})
        assert u.key == ref.key and u.version == 4
        assert get_object(u, deserializer=both) == [{"z": 0}], "an update drops the patches"

        # Another process changes the object; this one (which holds a local copy) sees the newest version.
        code = (
            "from flamepy.cache import ObjectRef, patch_object, update_object;"
            f"r = update_object(ObjectRef({u.endpoint!r}, {u.key!r}, 4), 'from another process');"
            "print(patch_object(r, 'and a patch').version)"
        )
        other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        assert other.returncode == 0 and other.stdout.strip() == "6", other
        assert get_object(u) == "from another process"
        assert get_object(u, deserializer=both) == ["from another process", "and a patch"]

        fresh = update_object(ObjectRef(u.endpoint, "cacheapp/s1/made-by-update", 0), 7)
        assert fresh.version == 1, "updating a key that does not exist creates it at version 1"
        second = put_object("cacheapp/s1", [1, 2])
        kept = put_object("cacheapp/s2", "other session")
        assert second.version == 1 and second.key != ref.key

        delete_objects("cacheapp/s1")
        for gone in (u, fresh, second):
            try:
                get_object(gone)
            except Exception as exc:
                assert "not found" in str(exc).lower(), exc
            else:
                raise AssertionError(f"{gone.key} survived delete_objects of its session prefix")
        assert get_object(kept) == "other session"
        delete_objects("cacheapp/*")
        try:
            get_object(kept)
        except Exception as exc:
            assert "not found" in str(exc).lower(), exc
        else:
            raise AssertionError("delete_objects('cacheapp/*') left an object")

        bad = [
            (lambda: put_object("no-session-part", 1), "no-session-part"),
            (lambda: put_object("cacheapp/s1/full-key", 1), "cacheapp/s1/full-key"),
            (lambda: put_object("cacheapp/..", 1), "cacheapp/.."),
            (lambda: get_object(ObjectRef(u.endpoint, "cacheapp/only-prefix", 1)), "cacheapp/only-prefix"),
            (lambda: update_object(ObjectRef(u.endpoint, "x/y/z/w", 1), 1), "x/y/z/w"),
            (lambda: delete_objects("*/s1"), "*/s1"),
        ]
        for call, key in bad:
            try:
                call()
            except ValueError as exc:
                assert key in str(exc), (key, exc)
            else:
                raise AssertionError(f"the bad key {key!r} was accepted")
        print("cache ok")
        """
    ).stdout
    assert out == "cache ok\n"


# -- 4. inmem:// --------------------------------------------------------------------------------------------


def test_inmem_endpoint_runs_engine_in_client_and_echo_works(flame_env, guide: str) -> None:
    folder = flame_env.home / "echo"
    folder.mkdir()
    (folder / "echo_service.py").write_text(echo_service(guide))
    (folder / "client.py").write_text(echo_client(guide))
    out = flame_env.python(
        """
        import os
        import runpy
        import sys

        import flamepy

        flamepy.register_application(
            "echo-app",
            {"command": sys.executable, "arguments": ["echo_service.py"], "working_directory": os.getcwd()},
        )
        runpy.run_path("client.py", run_name="__main__")
        runpy.run_path("client.py", run_name="__main__")
        logs = os.path.join(os.environ["FLAME_HOME"], "logs", "instances")
        print(sorted(name for name in os.listdir(logs) if name.endswith(".out")))
        """,
        cwd=folder,
        extra_env={"FLAME_ENDPOINT": "inmem://t"},
    ).stdout.splitlines()
    assert len(out) == 7, out
    for first in (0, 3):
        assert out[first : first + 2] == ["HELLO", "1"]
        assert SESSION_ID.fullmatch(out[first + 2])
    assert out[2] != out[5]
    instances = ast.literal_eval(out[6])
    assert instances and all(name.startswith("echo-app-") for name in instances), "instances are processes"
    # The engine ran inside the client: no local server was started for this home.
    assert not (flame_env.home / "server.json").exists()
    assert not (flame_env.home / "flame.sock").exists()
