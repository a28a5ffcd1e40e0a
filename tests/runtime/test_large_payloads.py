"""Large payloads with a real server: they round-trip byte for byte through files of their own, private,
read back after a restart, removed by the purge; and a file whose commit never came (the server was
killed while its commit waited) is removed at the next start.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import wait_for

import flamepy
from flamepy_core.client.connection import reset_default_connection
from flamepy_core.client.local import live_server

REVERSE = """
import flamepy
from flamepy.core import FlameService


class Reverse(FlameService):
    def on_task_invoke(self, context):
        return context.input[::-1]


if __name__ == "__main__":
    flamepy.run(Reverse())
"""
MIB = 1 << 20


@pytest.fixture
def open_umask() -> Iterator[None]:
    """Modes then come from creation alone, not from a friendly umask (the server inherits it)."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def payload_files(home: Path) -> dict[str, os.stat_result]:
    directory = home / "payloads"
    return {p.name: p.stat() for p in directory.iterdir()} if directory.exists() else {}


def test_large_payloads_live_in_private_files_survive_a_restart_and_are_purged(flame_env, open_umask):
    flame_env.write_service("rev", REVERSE)
    session = flamepy.create_session("rev")
    two, sixteen = os.urandom(2 * MIB), os.urandom(16 * MIB)
    assert session.invoke(two) == two[::-1]
    assert session.invoke(sixteen) == sixteen[::-1]
    assert session.invoke(b"small") == b"llams"

    files = payload_files(flame_env.home)
    assert sorted(f.st_size for f in files.values()) == [2 * MIB, 2 * MIB, 16 * MIB, 16 * MIB], "input and output"
    assert stat.S_IMODE((flame_env.home / "payloads").stat().st_mode) == 0o700
    assert {stat.S_IMODE(f.st_mode) for f in files.values()} == {0o600}

    flame_env.flmctl("server", "stop")
    reset_default_connection()
    tasks = list(flamepy.get_session(session.id).list_tasks())  # a new server reads them back
    assert [(t.input, t.output) for t in tasks] == [(two, two[::-1]), (sixteen, sixteen[::-1]), (b"small", b"llams")]
    view = json.loads(flame_env.flmctl("view", "-s", session.id, "-t", "2", "-o", "json").stdout)
    assert (view["state"], view["input_size"], view["output_size"]) == ("SUCCEED", 16 * MIB, 16 * MIB)

    flame_env.flmctl("gc", "--older-than", "0")
    assert payload_files(flame_env.home) == {}, "the purge removed the files with the rows"
    assert all(t.is_purged() for t in flamepy.get_session(session.id).list_tasks())


def test_a_file_whose_commit_never_came_is_removed_at_the_next_start(flame_env):
    # A server in strict mode, whose commits go to sqlite (in batched mode a commit is an append to the
    # store's ahead log, which sqlite's lock does not hold up: docs/configuration.md#durability).
    argv = [sys.executable, "-m", "flamepy_core.engine", "--home", str(flame_env.home), "--durability", "strict"]
    strict = subprocess.Popen(argv, env=flame_env.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        server = wait_for(lambda: live_server(flame_env.home), 30, "the strict server to start")
        assert int(server["pid"]) == strict.pid
        flame_env.write_service("rev", REVERSE)
        _orphan_after_a_kill(flame_env, strict.pid, dead=lambda: strict.poll() is not None)
    finally:
        if strict.poll() is None:
            strict.kill()
        strict.wait(timeout=30)


def _orphan_after_a_kill(flame_env, pid: int, dead: Callable[[], bool]) -> None:
    session = flamepy.create_session("rev")
    assert session.invoke(b"warm") == b"mraw"

    # Another connection holds sqlite's write lock: the server writes the input's file, then its commit
    # waits for the lock, and the server is killed meanwhile.
    blocker = sqlite3.connect(flame_env.home / "flame.db", timeout=10, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    with ThreadPoolExecutor(1) as pool:
        try:
            call = pool.submit(session.create_task, os.urandom(2 * MIB))
            (orphan,) = wait_for(
                lambda: [n for n in payload_files(flame_env.home) if not n.endswith(".part")],
                30,
                "the input's file to be written",
            )
            assert not call.done(), "the task was not acknowledged: its commit waits"
            os.kill(pid, signal.SIGKILL)
            wait_for(dead, 10, "the server to die")
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        assert (flame_env.home / "payloads" / orphan).exists(), "a crash leaves the file behind"
        reset_default_connection()
        with contextlib.suppress(flamepy.FlameError):  # the client may retry on the next server: fine too
            call.result(timeout=60)

    tasks = list(flamepy.get_session(session.id).list_tasks())  # the next server runs
    assert tasks[0].output == b"mraw"
    assert not (flame_env.home / "payloads" / orphan).exists(), "removed at start: no row names it"
    with contextlib.closing(sqlite3.connect(flame_env.home / "flame.db")) as db:
        named = {name for (name,) in db.execute("SELECT file FROM task_payloads WHERE file IS NOT NULL")}
    assert set(payload_files(flame_env.home)) == named, "any file left is a retried task's, named by its row"
