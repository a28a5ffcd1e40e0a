"""Hostile input against a real server and a real flmctl: refused early, clearly, and nothing is stored.

* ``flmctl register`` refuses a hostile file before it connects (no server is even started);
* the server refuses the same values from any client (here the Python API, which checks nothing
  itself), naming the field and the rule, and registers nothing;
* a service that raises with a 10 MB message full of terminal escapes fails its task with a bounded,
  escaped text: its head, its tail, and how much was cut.
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

import pytest

import flamepy
from flamepy.service import Session
from flamepy_core.client.session import TaskFailedError
from flamepy_core.contracts.errors import FlameError, FlameErrorCode
from flamepy_core.failure_text import MAX_FAILURE_TEXT
from flamepy_core.home import SERVER_FILE
from flamepy_core.validation import NAME_RULE


def alias_bomb() -> str:
    lines = ["anchors:", '  - &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"  - &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)]
    return "\n".join(lines) + "\nmetadata:\n  name: bomb\nspec:\n  labels: *a9\n"


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        (alias_bomb(), ["more than 100000 values", "aliases"]),
        ('metadata: {name: "my app"}\n', ["metadata.name", "whitespace", NAME_RULE]),
        (f"metadata: {{name: {'a' * 254}}}\n", ["254 characters long"]),
        ('metadata: {name: app}\nspec: {command: "py\\0thon"}\n', ["spec.command", "NUL"]),
        ('metadata: {name: app}\nspec: {arguments: ["x\\0y"]}\n', ["spec.arguments[0]", "NUL"]),
        ("metadata: {name: app}\nspec: {environments: {'A=B': x}}\n", ["spec.environments", "'='"]),
    ],
    ids=["alias-bomb", "space-in-name", "254-char-name", "nul-command", "nul-argument", "equals-in-env-key"],
)
def test_flmctl_refuses_a_hostile_file_before_connecting(flame_env, tmp_path: Path, text: str, fragments) -> None:
    spec = tmp_path / "app.yaml"
    spec.write_text(text)
    started = time.monotonic()
    proc = flame_env.flmctl("register", "--file", str(spec), check=False)
    assert time.monotonic() - started < 10, "a hostile file fails fast"
    assert proc.returncode == 1, proc
    assert proc.stderr.startswith(f"flmctl: {spec}, line "), proc.stderr
    for fragment in fragments:
        assert fragment in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (flame_env.home / SERVER_FILE).exists(), "refused before any server was started or called"


def test_a_bomb_in_flame_yaml_fails_flmctl_fast(flame_env) -> None:
    (flame_env.home / "flame.yaml").write_text("current-context: c\ncontexts: []\n" + alias_bomb())
    started = time.monotonic()
    proc = flame_env.flmctl("list", check=False)
    assert time.monotonic() - started < 10
    assert proc.returncode == 1 and "flame.yaml" in proc.stderr and "more than 100000 values" in proc.stderr


@pytest.mark.parametrize(
    ("name", "attrs", "fragments"),
    [
        ("nul\0name", {"command": sys.executable}, ["application name", "NUL"]),
        ("a" * 254, {"command": sys.executable}, ["254 characters long"]),
        ("my app", {"command": sys.executable}, ["whitespace", NAME_RULE]),
        ("app", {"command": "py\0thon"}, ["spec.command", "NUL"]),
        ("app", {"command": sys.executable, "arguments": ["ok", "x\0y"]}, ["spec.arguments[1]", "NUL"]),
        ("app", {"command": sys.executable, "working_directory": "/tmp/../etc"}, ["working_directory", "'..'"]),
        ("app", {"command": sys.executable, "environments": {"A=B": "x"}}, ["environments name", "'='"]),
    ],
    ids=["nul-name", "254-char-name", "space-name", "nul-command", "nul-argument", "dotdot-workdir", "equals-env"],
)
def test_the_server_refuses_hostile_registrations_from_any_client(flame_env, name: str, attrs, fragments) -> None:
    with pytest.raises(FlameError) as info:
        flamepy.register_application(name, attrs)
    assert info.value.code == FlameErrorCode.INVALID_ARGUMENT, info.value
    for fragment in fragments:
        assert fragment in info.value.message, info.value.message
    assert [a.name for a in flamepy.list_applications()] == ["flmexec", "flmping", "flmrun"]  # the built-ins only


def test_the_server_refuses_bad_session_ids(flame_env) -> None:
    flamepy.register_application("app", {"command": sys.executable})
    for bad in ("a b", "s/../x", "-x", "x" * 254):
        with pytest.raises(FlameError) as info:
            flamepy.create_session("app", session_id=bad)
        assert info.value.code == FlameErrorCode.INVALID_ARGUMENT and "session id" in info.value.message
    assert flamepy.list_sessions() == []
    proc = flame_env.flmctl("create", "-a", "app", "-i", "a b", check=False)
    assert proc.returncode == 1 and "-i/--session" in proc.stderr and NAME_RULE in proc.stderr


def test_a_huge_failure_text_is_cut_and_escaped(flame_env) -> None:
    flame_env.write_service(
        "loud",
        """
        from flamepy import service

        ins = service.FlameInstance()


        @ins.entrypoint
        def handle(req):
            raise ValueError("\\x1b[2J" + "E" * 10_000_000 + " the very end")


        if __name__ == "__main__":
            ins.run()
        """,
    )
    with Session("loud") as session, pytest.raises(TaskFailedError) as info:
        session.invoke("go", timeout=60)
    message = info.value.message
    assert len(message) <= MAX_FAILURE_TEXT + 100, len(message)
    assert message.startswith("ValueError: \\x1b[2JEEEE"), message[:80]
    assert re.search(r"\n\[\.\.\. [0-9,]+ characters cut \.\.\.\]\n", message)
    assert "\x1b" not in message, "control characters are escaped"
    assert message.rstrip().endswith("EEEE the very end"), "the tail (the traceback's last line) is kept"
    failed = [e.message or "" for e in info.value.task.events or [] if e.code == 3]
    assert failed and failed[-1] == message, "what is stored is what the client got"
