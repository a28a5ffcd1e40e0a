"""Payload retention with a real server: finished tasks' payloads are purged after the retention, the
store gives its space back (under a steady load, after an application is unregistered, on ``flmctl gc``),
and clients see a purged task for what it is.

Sizes are of ``flame.db`` itself (the write-ahead log is bounded apart, and truncated at checkpoints).
Every wait has a deadline.
"""

from __future__ import annotations

import json
import os

from conftest import wait_for

import flamepy
from flamepy.service import Session

ECHO = """
from flamepy import service

ins = service.FlameInstance()


@ins.entrypoint
def handle(req):
    return req


if __name__ == "__main__":
    ins.run()
"""
BOUND = 60.0
MIB = 1024 * 1024


def db_size(flame_env) -> int:
    return os.path.getsize(flame_env.home / "flame.db")


def echo_app(flame_env, monkeypatch, name: str, retention: str | None) -> None:
    if retention is not None:  # for the server the first flmctl call starts, and for this process
        flame_env.env["FLAME_PAYLOAD_RETENTION"] = retention
        monkeypatch.setenv("FLAME_PAYLOAD_RETENTION", retention)
    flame_env.write_service(name, ECHO)


def purged(session_id: str) -> list[bool]:
    return [t.is_purged() for t in flamepy.get_session(session_id).list_tasks()]


def test_payloads_are_purged_after_the_retention_and_the_task_says_so(flame_env, monkeypatch):
    echo_app(flame_env, monkeypatch, "echo", retention="1")
    with Session("echo") as session:
        sid = session.id()
        assert session.invoke(b"hello") == b"hello"  # the result is delivered as it comes, never purged first
        futures = [session.run(bytes([i]) * 1000) for i in range(5)]
        assert [f.result(timeout=BOUND) for f in futures] == [bytes([i]) * 1000 for i in range(5)]
    wait_for(lambda: all(purged(sid)), BOUND, "the payloads to be purged after the retention of 1 s")
    task = flamepy.get_session(sid).get_task("2")
    assert task.state == flamepy.TaskState.SUCCEED and task.input is None and task.output is None
    assert task.completion_time is not None and [e.code for e in task.events or []][:3] == [0, 1, 2]
    assert (task.events or [])[-1].message.startswith("input and output purged: payload_retention of 1 s")
    view = flame_env.flmctl("view", "-s", sid, "-t", "2").stdout
    assert "input:            purged" in view and "output:           purged" in view
    listed = json.loads(flame_env.flmctl("list", "-t", "-s", sid, "-o", "json").stdout)
    assert [t["payloads_purged"] for t in listed] == [True] * 6
    assert flamepy.get_session(sid).succeed == 6, "purging changes no counter"


def test_a_steady_load_does_not_grow_the_store(flame_env, monkeypatch):
    echo_app(flame_env, monkeypatch, "steady", retention="0")
    sizes = []
    with Session("steady") as session:
        sid = session.id()
        for _round in range(10):
            futures = [session.run(os.urandom(128 * 1024)) for _ in range(16)]  # 4 MiB in and out per round
            assert all(len(f.result(timeout=BOUND)) == 128 * 1024 for f in futures)
            wait_for(lambda: all(purged(sid)), BOUND, "this round's payloads to be purged")
            sizes.append(db_size(flame_env))
    written = 10 * 16 * 2 * 128 * 1024
    assert max(sizes[5:]) <= max(sizes[:5]) + 2 * MIB, f"the store kept growing: {sizes}"
    assert sizes[-1] < written / 2, f"{sizes[-1]} bytes after writing {written}: {sizes}"


def test_unregistering_an_application_gives_its_space_back(flame_env, monkeypatch):
    echo_app(flame_env, monkeypatch, "bulky", retention=None)  # the default retention: nothing is due
    with Session("bulky") as session:
        sid = session.id()
        futures = [session.run(os.urandom(256 * 1024)) for _ in range(48)]  # 24 MiB in and out
        assert all(f.result(timeout=BOUND) for f in futures)
    assert len(list(flamepy.get_session(sid).list_tasks())) == 48
    # Under the checkpoint threshold the payloads sit in the write-ahead log until the store is idle.
    before = wait_for(lambda: (size := db_size(flame_env)) > 16 * MIB and size, BOUND, "the log copied back")
    flame_env.flmctl("unregister", "-a", "bulky")
    wait_for(lambda: db_size(flame_env) < before / 2, BOUND, f"flame.db ({before} bytes) to shrink")


def test_flmctl_gc_purges_and_compacts_now(flame_env, monkeypatch):
    echo_app(flame_env, monkeypatch, "kept", retention=None)
    with Session("kept") as session:
        sid = session.id()
        assert all(f.result(timeout=BOUND) for f in [session.run(os.urandom(256 * 1024)) for _ in range(40)])
    out = flame_env.flmctl("gc").stdout
    assert out.startswith("Purged the payloads of 0 tasks that finished more than 3600 s ago;"), out
    assert not any(purged(sid)), "nothing is past the default retention of an hour"
    before = db_size(flame_env)
    out = flame_env.flmctl("gc", "--older-than", "0").stdout
    assert out.startswith("Purged the payloads of 40 tasks that finished more than 0 s ago; the store went from")
    assert all(purged(sid))
    assert db_size(flame_env) < before / 4, (before, db_size(flame_env))
    bad = flame_env.flmctl("gc", "--older-than", "-5", check=False)
    assert bad.returncode == 2 and "--older-than must be a number of seconds, 0 or more" in bad.stderr
