"""An invoke's result is in the store before the client reads it, though its creation was not committed first.

A real server is killed with SIGKILL right after the invokes returned: what the store's files hold then
(the database, its WAL and the store's ahead log) is what a crash keeps, and what the next start reads.
RunTask commits a task's creation with its result (docs/runtime.md, "What is committed when"); a result
reported before that commit would be missing here. On a lane (the default) the service process appends the
result to the lane's log before it answers, and a start records what the logs hold: the same check, after
the steps of a start.
"""

from __future__ import annotations

import os
import signal
import sqlite3
from pathlib import Path

import pytest
from conftest import FlameEnv, wait_for

import flamepy
from flamepy_core.client.local import live_server
from flamepy_core.engine.lanes import DIRECTORY_SUFFIX, LaneBook
from flamepy_core.engine.state import Engine
from flamepy_core.engine.store import Store
from flamepy_core.wire.proto import types_pb2 as pb

SERVICE = """
import flamepy
from flamepy.core import FlameService


class Reverse(FlameService):
    def on_task_invoke(self, context):
        return context.input[::-1]


if __name__ == "__main__":
    flamepy.run(Reverse())
"""


@pytest.mark.parametrize("lanes", ["1", "0"])
def test_every_reported_invoke_survives_a_kill_of_the_server(
    flame_env: FlameEnv, monkeypatch: pytest.MonkeyPatch, lanes: str
) -> None:
    monkeypatch.setenv("FLAMEPY_LANES", lanes)
    flame_env.write_service("rev", SERVICE)
    session = flamepy.create_session("rev")
    inputs = [b"invoke-%d" % i for i in range(20)]
    for data in inputs:
        assert session.invoke(data) == data[::-1]
    server = live_server(flame_env.home)
    assert server
    pid = int(server["pid"])
    os.kill(pid, signal.SIGKILL)  # no orderly close: only what was committed is in the file
    wait_for(lambda: not os.path.exists(f"/proc/{pid}") or _zombie(pid), 10, "the server to die")

    # What a start does first: apply what the store's ahead log holds, then record what the lanes' logs hold.
    db_path = flame_env.home / "flame.db"
    store = Store(db_path, ahead_log=True)
    LaneBook(Engine(store), Path(f"{db_path}{DIRECTORY_SUFFIX}")).recover()
    store.close()
    db = sqlite3.connect(f"file:{flame_env.home / 'flame.db'}?mode=ro", uri=True)
    try:
        rows = db.execute(
            "SELECT t.id, t.state, COALESCE(i.data, t.input), COALESCE(o.data, t.output) FROM tasks t "
            "LEFT JOIN task_payloads i ON i.session_id = t.session_id AND i.id = t.id AND i.kind = 0 "
            "LEFT JOIN task_payloads o ON o.session_id = t.session_id AND o.id = t.id AND o.kind = 1 "
            "WHERE t.session_id = ? ORDER BY t.id",
            (session.id,),
        ).fetchall()
    finally:
        db.close()
    succeed = int(pb.TaskState.Succeed)
    assert [(row[1], row[2], row[3]) for row in rows] == [(succeed, data, data[::-1]) for data in inputs], (
        "a result the client read was not committed (with its task) before it was reported"
    )


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True
