"""Payload retention and compaction against a real sqlite store, without processes.

What is purged is exactly what is due (a hypothesis property over tasks in every state and of every
age), a purged task keeps everything but its payloads and says why, the file gives its free pages back,
and a store from before incremental compaction is converted (at start when small, by ``collect``
otherwise) and given its ``finished`` column without losing a payload early.
"""

from __future__ import annotations

import logging
import sqlite3
import tempfile
import time
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from flamepy_core.engine import retention as retention_module
from flamepy_core.engine.retention import Retention, store_bytes
from flamepy_core.engine.state import Engine
from flamepy_core.engine.store import Store
from flamepy_core.model import EVENT_PAYLOADS_PURGED
from flamepy_core.wire.proto import types_pb2 as pb

S = pb.TaskState
HOUR_MS = 3_600_000


def _engine(path: Path) -> Engine:
    engine = Engine(Store(path))
    engine.register_application("app", pb.ApplicationSpec(command="python"))
    engine.create_session("s", pb.SessionSpec(application="app"))
    return engine


def _finish(engine: Engine, outcome: str, payload: bytes | None, sid: str = "s") -> str:
    """One task of session ``sid``, left in the given state; its id. Its session must have no pending task."""
    task = engine.create_task(sid, payload)
    tid = task.metadata.id
    if outcome == "pending":
        return tid
    taken = engine.take_task(sid, timeout=0)
    assert taken is not None and taken.metadata.id == tid
    if outcome == "succeed":
        engine.complete_task(sid, tid, payload[::-1] if payload else None)
    elif outcome == "failed":
        engine.fail_task(sid, tid, "ValueError: no")
    elif outcome == "cancelled":
        engine.cancel_task(sid, tid, "the test", lambda _t: None)
    return tid


def _age(store: Store, tid: str, finished_ms_ago: int, sid: str = "s") -> None:
    """Pretend the task finished that long ago (the column the retention reads)."""
    finished = int(time.time() * 1000) - finished_ms_ago
    store.write_wait([("UPDATE tasks SET finished = ? WHERE session_id = ? AND id = ?", (finished, sid, int(tid)))])


OUTCOMES = st.sampled_from(["pending", "running", "succeed", "failed", "cancelled"])


AGES = st.one_of(st.integers(0, HOUR_MS - 60_000), st.integers(HOUR_MS + 60_000, 3 * HOUR_MS))
"""How long ago a task finished: clearly within the hour's retention, or clearly past it."""


@settings(max_examples=25, deadline=None)
@given(tasks=st.lists(st.tuples(OUTCOMES, AGES, st.sampled_from([0, 20, 300])), max_size=12))
def test_exactly_the_finished_tasks_past_the_retention_are_purged(tasks: list[tuple[str, int, int]]) -> None:
    """Inputs of 20 bytes are kept in the task's row, of 300 in rows of their own (``INLINE_PAYLOAD_BYTES``):
    both are purged alike."""
    with tempfile.TemporaryDirectory(prefix="fr-") as folder:
        engine = _engine(Path(folder) / "flame.db")
        store = engine.store
        made = []
        for i, (outcome, age_ms, input_size) in enumerate(tasks):
            sid = f"s{i}"  # a session each: a pending task stays pending
            engine.create_session(sid, pb.SessionSpec(application="app"))
            _finish(engine, outcome, b"in" * (input_size // 2) if input_size else None, sid)
            if outcome in ("succeed", "failed", "cancelled"):
                _age(store, "1", age_ms, sid)
            made.append((sid, outcome, age_ms))

        def everything() -> dict[str, pb.Task]:
            return {sid: engine.get_task(sid, "1") for sid, _, _ in made}

        before = everything()
        counters = [engine.get_session(sid).status for sid, _, _ in made]
        Retention(store, retention=3600).collect()
        after = everything()
        for tid, outcome, age_ms in made:
            old, new = before[tid], after[tid]
            due = outcome in ("succeed", "failed", "cancelled") and age_ms > HOUR_MS
            holds_payload = old.spec.HasField("input") or old.spec.HasField("output")
            purged = any(e.code == EVENT_PAYLOADS_PURGED for e in new.status.events)
            assert purged == (due and holds_payload), (tid, outcome, age_ms)
            # Whatever happened, state, times and earlier events are as they were.
            assert new.status.state == old.status.state
            assert new.status.completion_time == old.status.completion_time
            assert list(new.status.events)[: len(old.status.events)] == list(old.status.events)
            if purged:
                assert not new.spec.HasField("input") and not new.spec.HasField("output")
                assert new.status.events[-1].message.startswith(
                    "input and output purged: flmctl gc (older than 3600 s)"
                )
            else:
                assert new.spec == old.spec
        assert [engine.get_session(sid).status for sid, _, _ in made] == counters, "purging changes no counter"
        store.close()


def test_a_purged_task_says_why_and_a_second_sweep_does_not_touch_it(tmp_path: Path) -> None:
    engine = _engine(tmp_path / "flame.db")
    tid = _finish(engine, "succeed", b"payload")
    _age(engine.store, tid, 10_000)
    keeper = Retention(engine.store, retention=5)
    assert keeper.purge_step(keeper._cutoff(5), "payload_retention of 5 s") == 1
    task = engine.get_task("s", tid)
    assert task.status.state == S.Succeed and not task.spec.HasField("output")
    assert task.status.events[-1].code == EVENT_PAYLOADS_PURGED
    assert task.status.events[-1].message == "input and output purged: payload_retention of 5 s (finished 10 s before)"
    assert keeper.purge_step(keeper._cutoff(0), "again") == 0, "a purged task left the index"
    engine.store.close()


def test_collect_gives_the_free_pages_back(tmp_path: Path) -> None:
    engine = _engine(tmp_path / "flame.db")
    for _ in range(40):
        _finish(engine, "succeed", b"x" * 200_000)
    engine.store.flush()
    before = store_bytes(engine.store.path)
    assert before > 16_000_000
    report = Retention(engine.store, retention=3600).collect(older_than=0)
    assert report.tasks_purged == 40 and not report.rebuilt
    assert report.bytes_before == before and report.bytes_after == store_bytes(engine.store.path)
    assert report.bytes_after < before / 10, report
    assert _auto_vacuum(engine.store.path) == 2
    engine.store.close()


def test_the_sweep_keeps_some_free_pages_for_reuse_and_gives_back_the_rest(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(retention_module, "KEEP_FREE_PAGES", 256)
    engine = _engine(tmp_path / "flame.db")
    for _ in range(20):
        _finish(engine, "succeed", b"x" * 200_000)
    keeper = Retention(engine.store, retention=0)
    with keeper._work:
        keeper._purge_due(keeper._cutoff(0), "test")
        freed = keeper._compact(keep=keeper._keep_free())
    assert freed > 0
    free, pages = keeper._free_pages(), keeper._pragma("page_count")
    assert free <= max(256, int(pages * retention_module.KEEP_FREE_FRACTION)) + retention_module.COMPACT_STEP_PAGES
    assert free >= min(256, int(pages * retention_module.KEEP_FREE_FRACTION)) - retention_module.COMPACT_STEP_PAGES
    engine.store.close()


def _auto_vacuum(path: Path | str) -> int:
    """The store's mode as a fresh connection reads it (0 none, 2 incremental)."""
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("PRAGMA auto_vacuum").fetchone()[0])
    finally:
        conn.close()


def _old_store(path: Path) -> None:
    """A store as flamepy wrote it before retention: auto_vacuum NONE, no ``finished`` column."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.executescript(
        """
        CREATE TABLE applications (name TEXT PRIMARY KEY, data BLOB NOT NULL);
        CREATE TABLE sessions (id TEXT PRIMARY KEY, application TEXT NOT NULL, state INTEGER NOT NULL,
                               data BLOB NOT NULL);
        CREATE TABLE tasks (session_id TEXT NOT NULL, id INTEGER NOT NULL, state INTEGER NOT NULL, input BLOB,
                            output BLOB, status BLOB NOT NULL, PRIMARY KEY (session_id, id)) WITHOUT ROWID;
        """
    )
    app = pb.Application(metadata=pb.Metadata(id="app", name="app"), spec=pb.ApplicationSpec(command="python"))
    session = pb.Session(metadata=pb.Metadata(id="s", name="s"), spec=pb.SessionSpec(application="app"))
    session.status.state = pb.SessionState.Closed
    status = pb.TaskStatus(state=S.Succeed, creation_time=1, completion_time=2)  # finished long ago
    conn.execute("INSERT INTO applications VALUES (?, ?)", ("app", app.SerializeToString()))
    conn.execute("INSERT INTO sessions VALUES (?, ?, ?, ?)", ("s", "app", 1, session.SerializeToString()))
    for tid in range(1, 4):
        conn.execute(
            "INSERT INTO tasks VALUES (?, ?, ?, ?, ?, ?)",
            ("s", tid, 2, b"i" * 50_000, b"o", status.SerializeToString()),
        )
    conn.close()


def test_an_old_store_gets_its_column_and_keeps_its_payloads_one_retention_longer(tmp_path: Path) -> None:
    _old_store(tmp_path / "flame.db")
    engine = Engine(Store(tmp_path / "flame.db"))
    keeper = Retention(engine.store, retention=600, convert_at_start_bytes=0)
    assert keeper.purge_step(keeper._cutoff(600), "due") == 0, "they count as finished at the upgrade"
    assert keeper.purge_step(keeper._cutoff(-1), "later") == 3
    assert [t.spec.HasField("input") for t in engine.list_tasks("s")] == [False] * 3
    engine.store.close()


def test_a_small_old_store_is_converted_at_start_a_large_one_by_collect(tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.INFO, logger=retention_module.__name__)
    for limit, converted_at_start in ((1 << 30, True), (0, False)):
        path = tmp_path / f"{limit}" / "flame.db"
        path.parent.mkdir()
        _old_store(path)
        store = Store(path)
        assert _auto_vacuum(path) == 0
        keeper = Retention(store, retention=3600, convert_at_start_bytes=limit)
        caplog.clear()
        keeper.start()
        keeper.stop()
        assert _auto_vacuum(path) == (2 if converted_at_start else 0)
        if not converted_at_start:
            assert "shrinks only after `flmctl gc`" in caplog.text
            report = keeper.collect()
            assert report.rebuilt and _auto_vacuum(path) == 2
            assert not keeper.collect().rebuilt, "converted once"
        assert Engine(store).get_task("s", "1").spec.input == b"i" * 50_000, "converting purges nothing"
        store.close()
