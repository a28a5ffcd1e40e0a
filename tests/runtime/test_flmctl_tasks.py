"""flmctl's task views and output formats against a real local server: ``list -t -s``, ``view -t -s``,
``-o json|yaml|wide``, and the register checks that say what to change.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime

import yaml

SERVICE = """
import time

from flamepy import service

ins = service.FlameInstance()


def explode(text):
    raise ValueError(f"cannot shout {text!r}")


@ins.entrypoint
def shout(text):
    if text.startswith("bad"):
        explode(text)
    time.sleep(0.01)
    return text.upper()


if __name__ == "__main__":
    ins.run()
"""


def drive(flame_env) -> str:
    """A session with three tasks: two succeed, the third fails in the service. Returns its id."""
    flame_env.write_service("shout", SERVICE)
    out = flame_env.python(
        """
        from flamepy.service import Session
        session = Session("shout")
        print(session.id())
        print(session.invoke("a"), session.invoke("bb"))
        try:
            session.invoke("bad input")
        except Exception as exc:
            print(type(exc).__name__)
        """
    ).stdout.splitlines()
    assert out[1:] == ["A BB", "TaskFailedError"], out
    return out[0]


def test_list_tasks_json_yaml_table_and_wide(flame_env) -> None:
    sid = drive(flame_env)
    tasks = json.loads(flame_env.flmctl("list", "-t", "-s", sid, "-o", "json").stdout)
    assert [t["id"] for t in tasks] == ["1", "2", "3"]
    assert [t["state"] for t in tasks] == ["SUCCEED", "SUCCEED", "FAILED"]
    assert all(t["session_id"] == sid for t in tasks)
    for task in tasks:
        created = datetime.fromisoformat(task["creation_time"])
        completed = datetime.fromisoformat(task["completion_time"])
        assert created.tzinfo is not None and completed >= created
        assert task["duration"] == round((completed - created).total_seconds(), 3)
        assert task["input_size"] > 0
    assert tasks[0]["output_size"] > 0 and tasks[2]["output_size"] is None
    assert tasks[0]["error"] is None
    error = tasks[2]["error"]
    assert error.startswith("ValueError: cannot shout 'bad input'"), error
    assert "Traceback" in error and "explode" in error, "the service's traceback is kept"

    as_yaml = yaml.safe_load(flame_env.flmctl("list", "-t", "-s", sid, "-o", "yaml").stdout)
    assert as_yaml == tasks, "YAML and JSON carry the same records"

    lines = flame_env.flmctl("list", "-t", "-s", sid).stdout.splitlines()
    assert lines[0].split() == ["ID", "State", "Created", "Duration", "Error"]
    assert lines[1].split()[:2] == ["1", "Succeed"] and lines[3].split()[:2] == ["3", "Failed"]
    assert lines[3].endswith("ValueError: cannot shout 'bad input'"), "one line of the error"
    assert len(lines) == 4, "one line per task, the traceback stays out of the table"
    wide = flame_env.flmctl("list", "-t", "-s", sid, "-o", "wide").stdout.splitlines()
    assert wide[0].split() == ["ID", "State", "Created", "Completed", "Duration", "Input", "Output", "Events", "Error"]

    missing = flame_env.flmctl("list", "-t", "-s", "no-such-session", check=False)
    assert missing.returncode == 1 and "no-such-session" in missing.stderr


def test_view_task_shows_sizes_events_and_traceback(flame_env) -> None:
    sid = drive(flame_env)
    text = flame_env.flmctl("view", "-t", "3", "-s", sid).stdout
    assert "state:            FAILED" in text
    assert "output:           -" in text and "input:" in text and " bytes" in text
    events = text.split("events:\n", 1)[1].split("error:\n", 1)[0].splitlines()
    assert [line.split()[0] for line in events] == ["0", "1", "3"], "created, running, failed"
    error = text.split("error:\n", 1)[1]
    assert error.startswith("  ValueError: cannot shout 'bad input'")
    assert "Traceback (most recent call last)" in error and 'raise ValueError(f"cannot shout' in error

    data = yaml.safe_load(flame_env.flmctl("view", "-t", "1", "-s", sid, "-o", "yaml").stdout)
    assert (data["id"], data["state"], data["error"]) == ("1", "SUCCEED", None)
    assert [e["code"] for e in data["events"]] == [0, 1, 2]

    app = yaml.safe_load(flame_env.flmctl("view", "-a", "shout", "-o", "yaml").stdout)
    assert app["name"] == "shout" and app["command"] == sys.executable
    session = json.loads(flame_env.flmctl("view", "-s", sid, "-o", "json").stdout)
    assert (session["succeed"], session["failed"]) == (2, 1)
    sessions = yaml.safe_load(flame_env.flmctl("list", "-s", "-o", "yaml").stdout)
    assert [s["id"] for s in sessions] == [sid]
    wide = flame_env.flmctl("list", "-s", "-o", "wide").stdout.splitlines()[0].split()
    assert "Cancelled" in wide and "Completed" in wide


def test_every_listing_honours_json(flame_env) -> None:
    flame_env.write_service("shout", SERVICE)
    for flag in ("-a", "-s", "-e", "-n"):
        out = flame_env.flmctl("list", flag, "-o", "json").stdout
        assert isinstance(json.loads(out), list), f"list {flag} -o json printed {out!r}"
        assert isinstance(yaml.safe_load(flame_env.flmctl("list", flag, "-o", "yaml").stdout), (list, type(None)))


def test_register_says_what_to_change_and_update_fixes_it(flame_env) -> None:
    """The guide's YAML names /opt/examples/echo and /usr/bin/python: registered, with what to change."""
    folder = flame_env.home / "guide"
    folder.mkdir()
    spec = folder / "echo-app.yaml"
    spec.write_text(
        "metadata:\n  name: echo-app\nspec:\n  working_directory: /no/such/folder/echo\n"
        "  command: /no/such/bin/python\n  arguments:\n    - echo_service.py\n"
    )
    proc = flame_env.flmctl("register", "--file", str(spec))
    assert proc.stdout.strip() == "Application echo-app was registered."
    assert "spec.working_directory /no/such/folder/echo does not exist on this machine" in proc.stderr
    assert "spec.command '/no/such/bin/python' was not found" in proc.stderr
    assert f"flmctl update -a {spec}" in proc.stderr, "the warning names the command that applies the fix"

    again = flame_env.flmctl("register", "--file", str(spec), check=False)
    assert again.returncode == 1
    assert "already exists" in again.stderr and f"flmctl update -a {spec}" in again.stderr

    spec.write_text(f"metadata:\n  name: echo-app\nspec:\n  working_directory: .\n  command: {sys.executable}\n")
    fixed = flame_env.flmctl("update", "-a", str(spec))
    assert fixed.stdout.strip() == "Application echo-app was updated." and fixed.stderr == ""
