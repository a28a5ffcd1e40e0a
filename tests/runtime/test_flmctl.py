"""flmctl against a real local server: applications, sessions, the server itself, and plugins.

Every test has its own ``FLAME_HOME`` and server (``flame_env``); flmctl runs as a separate process, as
users run it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

SESSION_CREATED = re.compile(r"Session (app-one-[A-Za-z0-9]{6}) was created\.")

SERVICE = """
from flamepy import service

ins = service.FlameInstance()


@ins.entrypoint
def shout(text):
    if text == "fail":
        raise RuntimeError("asked to fail")
    return text.upper()


if __name__ == "__main__":
    ins.run()
"""


def two_apps(folder: Path) -> Path:
    """One YAML file, two documents: app-one (a real service) and app-two (no command)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "service.py").write_text(SERVICE)
    path = folder / "apps.yaml"
    path.write_text(
        "metadata:\n"
        "  name: app-one\n"
        "spec:\n"
        f"  command: {sys.executable}\n"
        "  arguments: [service.py]\n"
        "  working_directory: .\n"
        "  labels: [demo, test]\n"
        "  max_instances: 3\n"
        "  environments:\n"
        "    PORT: 8080\n"
        "---\n"
        "metadata:\n"
        "  name: app-two\n"
        "spec:\n"
        "  description: the second document\n"
        "  delay_release: 5\n"
    )
    return path


BUILTIN_APPS = ("flmexec", "flmping", "flmrun")


def apps_json(flame_env) -> dict[str, dict]:
    """The applications the test registered (every fresh server also has the built-ins)."""
    listed = json.loads(flame_env.flmctl("list", "-a", "-o", "json").stdout)
    assert {a["name"] for a in listed} >= set(BUILTIN_APPS)
    return {a["name"]: a for a in listed if a["name"] not in BUILTIN_APPS}


def table_rows(text: str) -> tuple[list[str], list[list[str]]]:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[0].split(), [line.split() for line in lines[1:]]


def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie left for a reaper that never comes counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def engine_pids(home: Path) -> list[int]:
    """Processes running the flamepy server for ``home``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"flamepy_core.engine" in argv and str(home).encode() in argv and pid_alive(int(entry.name)):
            pids.append(int(entry.name))
    return pids


# -- applications ---------------------------------------------------------------------------------------


def test_register_two_documents_list_and_view(flame_env) -> None:
    path = two_apps(flame_env.home / "apps")
    out = flame_env.flmctl("register", "--file", str(path)).stdout
    assert out.splitlines() == ["Application app-one was registered.", "Application app-two was registered."]

    headers, rows = table_rows(flame_env.flmctl("list", "-a").stdout)
    assert headers == ["Name", "State", "Shim", "Tags", "Created", "Command"]
    by_name = {row[0]: row for row in rows}
    assert set(by_name) == {"app-one", "app-two", "flmexec", "flmping", "flmrun"}  # with the built-ins
    assert by_name["app-one"][1:4] == ["Enabled", "Host", "demo,test"]
    assert by_name["app-one"][-2:] == [sys.executable, "service.py"]

    apps = apps_json(flame_env)
    one, two = apps["app-one"], apps["app-two"]
    assert one["command"] == sys.executable and one["arguments"] == ["service.py"]
    assert one["working_directory"] == str(path.parent), "a relative working_directory is the YAML's folder"
    assert one["labels"] == ["demo", "test"] and one["max_instances"] == 3
    assert one["environments"] == {"PORT": "8080"}
    assert two["description"] == "the second document" and two["delay_release"] == 5
    assert two["command"] is None and two["max_instances"] == 1_000_000, "the server fills Flame's defaults"
    assert one["creation_time"] and one["id"] == "app-one"
    assert (one["state"], one["shim"]) == ("ENABLED", "HOST"), "enums are shown by name, not number"

    view = flame_env.flmctl("view", "-a", "app-one").stdout
    assert re.search(r"^name:\s+app-one$", view, re.M) and re.search(r"^state:\s+ENABLED$", view, re.M)
    assert re.search(rf"^command:\s+{re.escape(sys.executable)}$", view, re.M)
    assert re.search(rf"^working_directory:\s+{re.escape(str(path.parent))}$", view, re.M)
    assert json.loads(flame_env.flmctl("view", "-a", "app-two", "-o", "json").stdout)["delay_release"] == 5
    missing = flame_env.flmctl("view", "-a", "no-such-app", check=False)
    assert missing.returncode != 0 and "no-such-app" in missing.stderr

    again = flame_env.flmctl("register", "--file", str(path), check=False)
    assert again.returncode != 0
    assert "app-one" in again.stderr and "already exists" in again.stderr

    assert flame_env.flmctl("unregister", "-a", "app-two").stdout.strip() == "Application app-two was unregistered."
    assert set(apps_json(flame_env)) == {"app-one"}
    gone = flame_env.flmctl("unregister", "-a", "app-two", check=False)
    assert gone.returncode != 0 and "app-two" in gone.stderr and "not found" in gone.stderr


def test_register_bad_yaml_names_file_key_and_line(flame_env, tmp_path: Path) -> None:
    bad_key = tmp_path / "bad-key.yaml"
    bad_key.write_text(
        "metadata:\n  name: good-one\nspec:\n  command: python\n"
        "---\n"
        "metadata:\n  name: bad-two\nspec:\n  description: fine\n  comand: python\n"
    )
    proc = flame_env.flmctl("register", "--file", str(bad_key), check=False)
    assert proc.returncode != 0
    assert str(bad_key) in proc.stderr and "document 2" in proc.stderr
    assert "spec.comand" in proc.stderr and "line 10" in proc.stderr
    assert "did you mean 'command'" in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""

    bad_value = tmp_path / "bad-value.yaml"
    bad_value.write_text("metadata:\n  name: x\nspec:\n  command: python\n  max_instances: -3\n")
    proc = flame_env.flmctl("register", "-f", str(bad_value), check=False)
    assert proc.returncode != 0
    assert str(bad_value) in proc.stderr and "spec.max_instances" in proc.stderr and "line 5" in proc.stderr
    assert "-3" in proc.stderr

    bad_shim = tmp_path / "bad-shim.yaml"
    bad_shim.write_text("metadata:\n  name: x\nspec:\n  shim: Docker\n")
    proc = flame_env.flmctl("register", "-f", str(bad_shim), check=False)
    assert proc.returncode != 0
    assert "spec.shim" in proc.stderr and "line 4" in proc.stderr and "'Docker'" in proc.stderr

    # A file with an error registers nothing, not even its good first document.
    assert apps_json(flame_env) == {}


# -- sessions -------------------------------------------------------------------------------------------


def test_sessions_create_list_view_close_and_unregister(flame_env) -> None:
    path = two_apps(flame_env.home / "apps")
    crash = flame_env.home / "apps" / "crash.yaml"
    crash.write_text(
        f"metadata:\n  name: crash\nspec:\n  command: {sys.executable}\n"
        "  arguments: ['-c', 'import sys; print(\"boom at start\", file=sys.stderr); sys.exit(3)']\n"
    )
    flame_env.flmctl("register", "-f", str(path))
    flame_env.flmctl("register", "-f", str(crash))

    created = flame_env.flmctl("create", "-a", "app-one").stdout.strip()
    match = SESSION_CREATED.fullmatch(created)
    assert match, created
    sid = match.group(1)

    headers, rows = table_rows(flame_env.flmctl("list", "-s").stdout)
    assert headers[:3] == ["ID", "State", "App"] and "Pending" in headers and "Succeed" in headers
    assert [row[:3] for row in rows] == [[sid, "Open", "app-one"]]

    # Drive the session from a client: two tasks succeed, one fails in the service.
    out = flame_env.python(
        f"""
        import json
        from flamepy.service import Session
        session = Session(session_id={sid!r})
        print(session.invoke("a"), session.invoke("b"))
        try:
            session.invoke("fail")
        except Exception as exc:
            print("failed:", json.dumps(str(exc)))
        session = Session("crash")
        print(session.id())
        try:
            session.invoke("x")
        except Exception as exc:
            print("crash:", type(exc).__name__)
        """,
    ).stdout.splitlines()
    assert out[0] == "A B" and out[1].startswith("failed:")
    assert "RuntimeError" in out[1] and "asked to fail" in out[1], "the service's error reaches the client"
    crash_sid = out[2]
    assert out[3].startswith("crash:")

    view = flame_env.flmctl("view", "-s", sid).stdout
    assert re.search(rf"^Session:\s+{sid}$", view, re.M) and re.search(r"^Application:\s+app-one$", view, re.M)
    assert re.search(r"^State:\s+Open$", view, re.M)
    assert re.search(r"pending 0, running 0, succeed 2, failed 1", view), view
    task = flame_env.flmctl("view", "-s", sid, "-t", "3").stdout
    assert "FAILED" in task and "asked to fail" in task

    data = json.loads(flame_env.flmctl("view", "-s", crash_sid, "-o", "json").stdout)
    assert (data["id"], data["application"], data["failed"], data["succeed"]) == (crash_sid, "crash", 1, 0)
    codes = [e["code"] for e in data["events"]]
    assert 1001 in codes and codes[-1] == 1002, codes
    assert "failed to bind session" in data["events"][0]["message"]
    assert "boom at start" in data["events"][-1]["message"], "the cause reaches the session's events"
    crash_view = flame_env.flmctl("view", "-s", crash_sid).stdout
    assert "Events:" in crash_view and "1002" in crash_view and "exited with code 3" in crash_view

    sessions = {s["id"]: s for s in json.loads(flame_env.flmctl("list", "-s", "-o", "json").stdout)}
    assert set(sessions) == {sid, crash_sid}
    assert {"id", "application", "state", "pending", "running", "succeed", "failed", "events"} <= set(sessions[sid])
    assert (sessions[sid]["succeed"], sessions[sid]["failed"]) == (2, 1)
    assert sessions[sid]["state"] == "OPEN"

    refused = flame_env.flmctl("unregister", "-a", "app-one", check=False)
    assert refused.returncode != 0
    assert "1 open sessions" in refused.stderr and "app-one" in refused.stderr
    assert "app-one" in apps_json(flame_env)

    assert flame_env.flmctl("close", "-s", sid).stdout.strip() == f"Session {sid} was closed."
    assert re.search(r"^State:\s+Closed$", flame_env.flmctl("view", "-s", sid).stdout, re.M)
    closed = json.loads(flame_env.flmctl("view", "-s", sid, "-o", "json").stdout)
    assert closed["state"] == "CLOSED" and closed["completion_time"]
    assert flame_env.flmctl("close", "-s", sid).returncode == 0, "closing a closed session is fine"
    flame_env.flmctl("unregister", "-a", "app-one")
    assert "app-one" not in apps_json(flame_env)
    left = {s["id"] for s in json.loads(flame_env.flmctl("list", "-s", "-o", "json").stdout)}
    assert left == {crash_sid}, "unregistering removes the application's closed sessions"
    unknown = flame_env.flmctl("create", "-a", "app-one", check=False)
    assert unknown.returncode != 0 and "app-one" in unknown.stderr


# -- the local server -----------------------------------------------------------------------------------


def test_server_status_stop_start(flame_env) -> None:
    home = flame_env.home
    status = flame_env.flmctl("server", "status", check=False)
    assert status.returncode == 3 and "no flamepy server" in status.stdout
    assert not engine_pids(home)

    started = flame_env.flmctl("server", "start").stdout
    pid = int(re.search(r"pid (\d+)", started).group(1))
    info = json.loads((home / "server.json").read_text())
    assert info["pid"] == pid and pid_alive(pid) and engine_pids(home) == [pid]
    status = flame_env.flmctl("server", "status")
    assert status.returncode == 0 and f"pid {pid}" in status.stdout and info["endpoint"] in status.stdout
    again = flame_env.flmctl("server", "start").stdout
    assert "already running" in again and f"pid {pid}" in again

    assert "stopped" in flame_env.flmctl("server", "stop").stdout
    deadline = time.monotonic() + 10
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pid_alive(pid)
    assert flame_env.flmctl("server", "status", check=False).returncode == 3
    assert "no flamepy server was running" in flame_env.flmctl("server", "stop").stdout

    # The next call starts a new one by itself.
    flame_env.flmctl("list", "-a")
    status = flame_env.flmctl("server", "status")
    new_pid = json.loads((home / "server.json").read_text())["pid"]
    assert status.returncode == 0 and new_pid != pid and f"pid {new_pid}" in status.stdout


def test_two_clients_at_once_start_one_server(flame_env) -> None:
    home = flame_env.home
    gate = home / "go"
    code = textwrap.dedent(
        """
        import os, sys, time
        import flamepy
        name, gate = sys.argv[1], sys.argv[2]
        deadline = time.monotonic() + 30
        while not os.path.exists(gate) and time.monotonic() < deadline:
            time.sleep(0.001)
        flamepy.register_application(name, {"command": sys.executable})
        print(name, sorted(a.name for a in flamepy.list_applications()))
        """
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, name, str(gate)],
            env=flame_env.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in ("client-a", "client-b")
    ]
    time.sleep(1.0)  # both have imported flamepy and wait at the gate
    gate.write_text("")
    results = []
    for proc in procs:
        try:
            out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        results.append((proc.returncode, out, err))
    for name, (code_, out, err) in zip(("client-a", "client-b"), results, strict=True):
        assert code_ == 0, err
        assert out.startswith(name) and name in out.split(" ", 1)[1]

    info = json.loads((home / "server.json").read_text())
    assert engine_pids(home) == [info["pid"]], "exactly one server for the home"
    # Both registrations went to that one server.
    assert set(apps_json(flame_env)) == {"client-a", "client-b"}
    assert json.loads((home / "server.json").read_text())["pid"] == info["pid"]


# -- plugins --------------------------------------------------------------------------------------------


def test_plugins_lists_bundled_transports_and_serializers(flame_env) -> None:
    text = flame_env.flmctl("plugins").stdout
    assert "Failed to load" not in text
    transports_part, serializers_part = text.split("Serializers:")
    headers, rows = table_rows(transports_part.split("Transports:", 1)[1])
    assert headers == ["NAME", "SCHEMES", "DISTRIBUTION", "VERSION", "CAPABILITIES"]
    by_name = {row[0]: row for row in rows}
    assert {"inmem", "grpc", "zmq"} <= set(by_name)
    assert by_name["inmem"][1] == "inmem"
    assert {"grpc", "unix"} <= set(by_name["grpc"][1].split(","))
    assert {"zmq+tcp", "zmq+ipc"} <= set(by_name["zmq"][1].split(","))
    assert "cross_process" in by_name["grpc"][-1] and "cross_process" not in by_name["inmem"][-1]
    assert "cloudpickle" in serializers_part

    data = json.loads(flame_env.flmctl("plugins", "-o", "json").stdout)
    transports = {t["name"]: t for t in data["transports"]}
    for name in ("inmem", "grpc", "zmq"):
        caps = transports[name]["capabilities"]
        assert {"max_message_size", "streaming", "cross_process"} <= set(caps), caps
        assert caps["max_message_size"] > 0
        assert transports[name]["distribution"] == "flamepy"
    assert transports["inmem"]["schemes"] == ["inmem"] and transports["inmem"]["capabilities"]["cross_process"] is False
    assert transports["grpc"]["capabilities"]["cross_process"] is True
    assert "cloudpickle" in {s["name"] for s in data["serializers"]}
    assert data["failed"] == []


def test_broken_plugin_is_reported_and_does_not_break_flamepy(flame_env, tmp_path: Path) -> None:
    """A distribution whose flamepy.transports entry point raises ImportError on import."""
    site = tmp_path / "site"
    dist_info = site / "brokenplug-0.1.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: brokenplug\nVersion: 0.1\n")
    (dist_info / "entry_points.txt").write_text("[flamepy.transports]\nbroken = brokenplug_transport\n")
    (site / "brokenplug_transport.py").write_text('raise ImportError("needs libfoo>=9; pip install libfoo")\n')
    env = {"PYTHONPATH": os.pathsep.join([str(site), flame_env.env["PYTHONPATH"]])}

    proc = flame_env.run([sys.executable, "-m", "flamepy_core.cli.main", "plugins"], extra_env=env)
    assert "Failed to load:" in proc.stdout
    failed = proc.stdout.split("Failed to load:", 1)[1]
    assert "broken = brokenplug_transport" in failed and "flamepy.transports" in failed
    assert "brokenplug" in failed and "ImportError: needs libfoo>=9" in failed
    transports = proc.stdout.split("Serializers:")[0]
    assert all(re.search(rf"^{name}\s", transports, re.M) for name in ("inmem", "grpc", "zmq"))

    data = json.loads(
        flame_env.run([sys.executable, "-m", "flamepy_core.cli.main", "plugins", "-o", "json"], extra_env=env).stdout
    )
    assert [(f["group"], f["distribution"]) for f in data["failed"]] == [("flamepy.transports", "brokenplug")]
    assert "needs libfoo" in data["failed"][0]["cause"]
    assert {"inmem", "grpc", "zmq"} <= {t["name"] for t in data["transports"]}

    imported = flame_env.run([sys.executable, "-c", "import flamepy; print('imported')"], extra_env=env)
    assert imported.stdout == "imported\n"
    assert "Traceback" not in imported.stderr
    assert not imported.stderr.strip() or "PluginLoadWarning" in imported.stderr, imported.stderr

    used = flame_env.run(
        [
            sys.executable,
            "-c",
            "import flamepy\nfrom flamepy_core.plugins import get_registry\n"
            "print(sorted(c.spec.name for c in get_registry().transports()))",
        ],
        extra_env=env,
    )
    assert "'grpc'" in used.stdout and "'inmem'" in used.stdout and "'zmq'" in used.stdout
    assert "PluginLoadWarning" in used.stderr and "brokenplug" in used.stderr and "needs libfoo" in used.stderr
    assert "Traceback" not in used.stderr
