"""The store's ahead log: what it acknowledged survives a crash, is applied once and in order, and is seen
by every read.

The rules (``flamepy_core.engine.store``, "The ahead log"):

* a write whose callback got no error is in the store after a crash, applied exactly once (a start
  applies the records the marker does not cover, and none twice);
* writes are applied in the order they were queued, whether logged or committed to sqlite directly;
* a read through the store sees every write acknowledged before it;
* a log cut short (a full disk, a machine that stopped mid-write) loses only what was never acknowledged;
* a logged statement that fails for a reason of its own (a bug) is dropped alone, the others applied.

Crashes are real where it matters: a child process holding the store is killed with SIGKILL after its
writes were acknowledged and before its writer thread applied them.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_for
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, rule

from flamepy_core.contracts.errors import FlameError, FlameErrorCode
from flamepy_core.engine import store as store_module
from flamepy_core.engine.ahead_log import (
    SUFFIX,
    AheadLog,
    NotLoggable,
    decode_ops,
    encode_ops,
    read_records,
)
from flamepy_core.engine.store import Store

REPO = Path(__file__).resolve().parents[2]
ID = bytes(range(16))
"""A store's id, for logs written here without a store."""

params = st.one_of(
    st.none(),
    st.integers(-(1 << 63), (1 << 63) - 1),
    st.floats(allow_nan=False),
    st.text(max_size=50),
    st.binary(max_size=200),
)
statements = st.lists(
    st.tuples(st.text(min_size=1, max_size=80), st.lists(params, max_size=8).map(tuple)), min_size=1, max_size=5
)


def raw_rows(db: Path, sql: str) -> list[tuple[Any, ...]]:
    """What the database file itself holds now, read past the store (and its ahead log)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


@pytest.fixture
def logged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A store with its ahead log whose writer thread applies nothing by itself (what a crash finds)."""
    monkeypatch.setattr(store_module, "FOLD_DELAY", 3600.0)
    store = Store(tmp_path / "flame.db", ahead_log=True)
    store.write_wait([("CREATE TABLE t (k INTEGER PRIMARY KEY, v BLOB)", ())])
    store.query("SELECT 1")  # (a read applies what was logged: the table is in the file)
    try:
        yield store
    finally:
        store.close(timeout=5)


# -- the records -----------------------------------------------------------------------------------------


@given(statements)
def test_statements_come_back_from_their_record_as_they_were_written(ops: list[tuple[str, tuple[Any, ...]]]) -> None:
    assert decode_ops(encode_ops(ops)) == ops


def test_views_and_flags_are_written_as_sqlite_would_bind_them() -> None:
    ops = [("UPDATE t SET v = ?, f = ? WHERE k = ?", (memoryview(b"abc"), True, bytearray(b"z")))]
    assert decode_ops(encode_ops(ops)) == [("UPDATE t SET v = ?, f = ? WHERE k = ?", (b"abc", 1, b"z"))]


@pytest.mark.parametrize("value", [object(), 1 << 64, [1]])
def test_a_parameter_sqlite_does_not_store_as_it_is_is_not_logged(value: object) -> None:
    with pytest.raises(NotLoggable):
        encode_ops([("INSERT INTO t VALUES (?)", (value,))])


def test_applying_the_log_inserts_a_run_of_rows_with_a_statement_per_power_of_two(logged: Store) -> None:
    for k in range(27):
        logged.write_wait([("INSERT INTO t (k, v) VALUES (?, ?)", (k, b"x"))])
    ran: list[str] = []
    logged._write.set_trace_callback(ran.append)
    try:
        assert logged.query("SELECT COUNT(*) FROM t") == [(27,)]  # (a read applies the log first)
    finally:
        logged._write.set_trace_callback(None)
    inserts = [sql for sql in ran if sql.startswith("INSERT")]
    assert [sql.count("x'78')") for sql in inserts] == [16, 8, 2, 1], ran  # (the trace shows the values)


@settings(max_examples=50, deadline=None)
@given(st.lists(statements, min_size=1, max_size=6), st.data())
def test_a_log_cut_anywhere_reads_back_every_whole_record_before_the_cut(
    records: list[list[tuple[str, tuple[Any, ...]]]], data: st.DataObject
) -> None:
    folder = Path(tempfile.mkdtemp(prefix="ahead-"))
    try:
        path = str(folder / "log")
        log = AheadLog(path, ID)
        start = log.size
        ends = []
        for seq, ops in enumerate(records, 1):
            log.append(seq, [encode_ops(ops)])
            ends.append(log.size)
        log.close(remove=False)
        cut = data.draw(st.integers(start, ends[-1]), label="cut")
        os.truncate(path, cut)
        whole = sum(1 for end in ends if end <= cut)
        read, torn = read_records(path, ID)
        assert read == list(enumerate(records, 1))[:whole]
        assert torn == cut - (ends[whole - 1] if whole else start)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_a_changed_byte_ends_the_reading_at_its_record(tmp_path: Path) -> None:
    path = str(tmp_path / "log")
    log = AheadLog(path, ID)
    for seq in range(1, 4):
        log.append(seq, [encode_ops([("INSERT INTO t VALUES (?)", (seq,))])])
    log.close(remove=False)
    data = bytearray(Path(path).read_bytes())
    data[len(data) * 2 // 3 - 2] ^= 0x01  # inside the second record
    Path(path).write_bytes(bytes(data))
    read, torn = read_records(path, ID)
    assert [seq for seq, _ops in read] == [1]
    assert torn > 0


def test_several_writes_go_out_in_one_append_and_read_back_as_records_of_their_own(tmp_path: Path) -> None:
    path = str(tmp_path / "log")
    log = AheadLog(path, ID)
    log.append(7, [encode_ops([("A", (1,))]), encode_ops([("B", (2,))])])
    log.close(remove=False)
    assert read_records(path, ID) == ([(7, [("A", (1,))]), (8, [("B", (2,))])], 0)


def test_the_log_is_private_to_its_user(tmp_path: Path) -> None:
    log = AheadLog(str(tmp_path / "log"), ID)
    try:
        assert (tmp_path / "log").stat().st_mode & 0o777 == 0o600
    finally:
        log.close(remove=True)
    assert not (tmp_path / "log").exists()


# -- the store with its log ------------------------------------------------------------------------------


def test_an_acknowledged_write_is_logged_and_every_read_sees_it(logged: Store) -> None:
    db = Path(logged.path)
    commits = logged.commits
    logged.write_wait([("INSERT INTO t VALUES (1, x'01')", ())])
    assert logged.commits == commits, "an inline commit went to sqlite, not to the ahead log"
    assert raw_rows(db, "SELECT k FROM t") == [], "the write is in sqlite already: the log was not what acknowledged it"
    assert read_records(logged.path + SUFFIX, logged._log_id)[0][-1][1] == [("INSERT INTO t VALUES (1, x'01')", ())]
    assert logged.query("SELECT k FROM t") == [(1,)], "a read missed an acknowledged write"
    assert raw_rows(db, "SELECT k FROM t") == [(1,)]
    assert raw_rows(db, "SELECT seq FROM ahead_applied") == [(logged._logged_seq,)]


def test_the_fold_thread_applies_the_log_by_itself(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_module, "FOLD_DELAY", 0.01)
    store = Store(tmp_path / "flame.db", ahead_log=True)
    try:
        store.write_wait([("CREATE TABLE t (k INTEGER PRIMARY KEY)", ())])
        for k in range(5):
            store.write_wait([("INSERT INTO t VALUES (?)", (k,))])

        def applied() -> bool:
            try:
                return raw_rows(Path(store.path), "SELECT COUNT(*) FROM t") == [(5,)]
            except sqlite3.OperationalError:  # no table yet
                return False

        wait_for(applied, 10, "the fold thread to apply the logged writes")
    finally:
        store.close()


def test_the_fold_thread_applies_a_long_log_in_chunks_at_once(logged: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_module, "FOLD_CHUNK", 2)
    for k in range(5):
        logged.write_wait([("INSERT INTO t (k) VALUES (?)", (k,))])
    commits = logged.commits
    _fold_now(logged)  # the fold thread takes the first chunk, and the rest without waiting

    def applied() -> bool:
        return raw_rows(Path(logged.path), "SELECT COUNT(*) FROM t") == [(5,)]

    wait_for(applied, 10, "the fold thread to apply all five logged writes, two at a time")
    assert logged.commits - commits == 3, "five writes in chunks of two are three transactions"
    assert raw_rows(Path(logged.path), "SELECT seq FROM ahead_applied") == [(logged._logged_seq,)]


def _fold_now(store: Store) -> None:
    """Make what the store's ahead log holds due: its fold thread applies it at once."""
    with store._mutex:
        store._ahead_due = 0.0
        store._fold_cond.notify()


def test_the_fold_thread_applies_the_log_in_slices_with_pauses_between(
    logged: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    pauses: list[float] = []
    real_sleep = store_module.time.sleep

    def sleep(seconds: float) -> None:
        if threading.current_thread() is logged._folder:
            pauses.append(seconds)
        real_sleep(seconds)

    monkeypatch.setattr(store_module.time, "sleep", sleep)
    for k in range(27):
        logged.write_wait([("INSERT INTO t (k, v) VALUES (?, ?)", (k, b"x"))])
    ran: list[str] = []
    logged._write.set_trace_callback(ran.append)
    try:
        _fold_now(logged)
        wait_for(lambda: raw_rows(Path(logged.path), "SELECT COUNT(*) FROM t") == [(27,)], 10, "the fold")
    finally:
        logged._write.set_trace_callback(None)
    inserts = [sql for sql in ran if sql.startswith("INSERT")]
    assert [sql.count("x'78')") for sql in inserts] == [8, 8, 8, 2, 1], ran
    assert pauses == [store_module.FOLD_PAUSE] * 4, "one pause between two slices, none after the last"
    assert [sql for sql in ran if sql in ("BEGIN", "COMMIT")] == ["BEGIN", "COMMIT"], "one transaction"


def test_a_read_during_a_paced_fold_ends_its_pauses_and_sees_every_write(
    logged: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "FOLD_SLICE_ROWS", 1)
    monkeypatch.setattr(store_module, "FOLD_PAUSE", 0.3)  # 19 pauses: 5.7 s, far past a read's wait (READ_WAIT)
    pausing = threading.Event()
    real_sleep = store_module.time.sleep

    def sleep(seconds: float) -> None:
        if threading.current_thread() is logged._folder:
            pausing.set()
        real_sleep(seconds)

    monkeypatch.setattr(store_module.time, "sleep", sleep)
    for k in range(20):
        logged.write_wait([("INSERT INTO t (k, v) VALUES (?, ?)", (k, b"x"))])
    _fold_now(logged)
    assert pausing.wait(10), "the fold thread never paused"
    assert logged.query("SELECT COUNT(*) FROM t") == [(20,)], "the read gave up waiting for a pausing fold"


def test_a_fold_pauses_for_half_the_fold_delay_at_most(logged: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_module, "FOLD_SLICE_ROWS", 1)
    monkeypatch.setattr(store_module, "FOLD_PAUSE", 0.5)
    monkeypatch.setattr(store_module, "FOLD_DELAY", 2.0)  # 1 s of pauses: two, where unbounded would be 19
    for k in range(20):
        logged.write_wait([("INSERT INTO t (k, v) VALUES (?, ?)", (k, b"x"))])
    _fold_now(logged)
    wait_for(lambda: raw_rows(Path(logged.path), "SELECT COUNT(*) FROM t") == [(20,)], 5, "a fold of bounded pauses")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a thread's own priority is Linux's")
def test_the_fold_thread_runs_at_a_lower_priority_than_the_rest(tmp_path: Path) -> None:
    store = Store(tmp_path / "flame.db", ahead_log=True)
    try:
        fold = store._folder
        assert fold is not None and fold.native_id is not None  # (started by the store's constructor)
        fold_id = fold.native_id
        mine = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        wait_for(
            lambda: os.getpriority(os.PRIO_PROCESS, fold_id) == min(19, mine + store_module.FOLD_NICE),
            10,
            "the fold thread to lower its priority",
        )
        assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == mine, "the caller's priority moved"
    finally:
        store.close()


def test_reads_keep_working_while_another_process_holds_the_database(logged: Store) -> None:
    blocker = sqlite3.connect(logged.path, timeout=10, isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")
        logged.write_wait(
            [("INSERT INTO t VALUES (1, NULL)", ())]
        )  # acknowledged by the log: sqlite's lock is not asked
        assert logged.query("SELECT k FROM t") == [], "a read did not answer from what flame.db holds"
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert logged.query("SELECT k FROM t") == [(1,)], "the logged write was not applied once the lock was gone"


def test_a_commit_to_sqlite_applies_what_was_logged_before_it_first(logged: Store) -> None:
    logged.write_wait([("INSERT INTO t VALUES (1, x'01')", ())])
    big = b"b" * (store_module.AHEAD_RECORD_MAX + 1)  # too large to log: committed directly
    commits = logged.commits
    logged.write_wait([("INSERT OR REPLACE INTO t VALUES (1, ?)", (big,))])
    assert logged.commits == commits + 1
    assert raw_rows(Path(logged.path), "SELECT length(v) FROM t WHERE k = 1") == [(len(big),)], (
        "the older logged write was applied after the newer one"
    )


def test_a_logged_statement_that_fails_for_a_reason_of_its_own_is_dropped_alone(
    logged: Store, caplog: pytest.LogCaptureFixture
) -> None:
    results: list[object] = []
    logged.enqueue([("INSERT INTO t VALUES (1, NULL)", ())], results.append)
    logged.enqueue([("INSERT INTO t VALUES (1, NULL)", ())], results.append)  # a duplicate key: a bug
    logged.enqueue([("INSERT INTO t VALUES (2, NULL)", ())], results.append)
    logged.commit()
    assert results == [None, None, None], "the group was not acknowledged by the log"
    with caplog.at_level(logging.ERROR, logger="flamepy_core.engine.store"):
        assert logged.query("SELECT k FROM t ORDER BY k") == [(1,), (2,)]
    assert any("dropped" in record.getMessage() and "UNIQUE" in record.getMessage() for record in caplog.records)
    logged.write_wait([("INSERT INTO t VALUES (3, NULL)", ())])
    assert logged.query("SELECT k FROM t ORDER BY k") == [(1,), (2,), (3,)], "the store stopped after the bug"
    assert logged.failure is None


def test_a_full_log_is_emptied_once_a_commit_to_sqlite_applied_it(
    logged: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "AHEAD_LOG_LIMIT", 200)
    path = Path(logged.path + SUFFIX)
    k = 0
    while path.stat().st_size < 200:
        k += 1
        logged.write_wait([("INSERT INTO t VALUES (?, NULL)", (k,))])
    commits = logged.commits
    logged.write_wait([("INSERT INTO t VALUES (?, NULL)", (k + 1,))])  # the log is full: to sqlite, applying it all
    assert logged.commits == commits + 1
    assert read_records(str(path), logged._log_id) == ([], 0), "the log was not emptied once applied"
    assert raw_rows(Path(logged.path), "SELECT COUNT(*) FROM t") == [(k + 1,)]
    logged.write_wait([("INSERT INTO t VALUES (?, NULL)", (k + 2,))])
    assert [seq for seq, _ops in read_records(str(path), logged._log_id)[0]] == [logged._logged_seq], (
        "the log did not start over"
    )


def test_a_clean_close_applies_the_log_and_removes_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_module, "FOLD_DELAY", 3600.0)
    store = Store(tmp_path / "flame.db", ahead_log=True)
    store.write_wait([("CREATE TABLE t (k INTEGER PRIMARY KEY)", ())])
    store.write_wait([("INSERT INTO t VALUES (1)", ())])
    assert store.close() is True
    assert not Path(store.path + SUFFIX).exists()
    assert raw_rows(tmp_path / "flame.db", "SELECT k FROM t") == [(1,)]


def test_strict_durability_commits_to_sqlite_as_before(tmp_path: Path) -> None:
    store = Store(tmp_path / "flame.db", durability="strict", ahead_log=True)
    try:
        store.write_wait([("CREATE TABLE t (k INTEGER PRIMARY KEY)", ())])
        store.write_wait([("INSERT INTO t VALUES (1)", ())])
        assert raw_rows(tmp_path / "flame.db", "SELECT k FROM t") == [(1,)]
        assert not Path(store.path + SUFFIX).exists()
    finally:
        store.close()


# -- a crash ---------------------------------------------------------------------------------------------

CHILD = textwrap.dedent(
    """
    import sys
    from flamepy_core.engine import store as store_module
    from flamepy_core.engine.store import Store

    store_module.FOLD_DELAY = 3600.0  # nothing is applied to sqlite but by a commit that goes there
    store = Store(sys.argv[1], ahead_log=True)
    store.write_wait([("CREATE TABLE IF NOT EXISTS c (id INTEGER PRIMARY KEY, n INTEGER NOT NULL)", ())])
    store.write_wait([("INSERT OR IGNORE INTO c VALUES (0, 0)", ())])
    store.close()
    store = Store(sys.argv[1], ahead_log=True)
    for _ in range(int(sys.argv[2])):
        store.write_wait([("UPDATE c SET n = n + 1 WHERE id = 0", ())])  # counts each time it is applied
    print("acknowledged", flush=True)
    sys.stdin.read()  # killed here
    """
)


def test_writes_acknowledged_before_a_kill_are_applied_once_at_the_next_start(tmp_path: Path) -> None:
    db = tmp_path / "flame.db"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(db), "25"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "acknowledged"
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=30)
    assert raw_rows(db, "SELECT n FROM c") == [(0,)], "the writes reached sqlite: the log was not what kept them"
    log_id = raw_rows(db, "SELECT log_id FROM ahead_applied")[0][0]
    assert len(read_records(str(db) + SUFFIX, log_id)[0]) == 25

    for _start in range(2):  # a second start applies nothing again
        store = Store(db, ahead_log=True)
        try:
            assert store.query("SELECT n FROM c") == [(25,)], "an acknowledged write was lost, or applied twice"
        finally:
            store.close()
    assert not Path(str(db) + SUFFIX).exists()


def test_a_log_cut_short_by_a_crash_loses_only_the_record_it_was_writing(tmp_path: Path) -> None:
    db = tmp_path / "flame.db"
    store = Store(db)
    store.write_wait([("CREATE TABLE t (k INTEGER PRIMARY KEY)", ())])
    store.close()
    log = AheadLog(str(db) + SUFFIX, raw_rows(db, "SELECT log_id FROM ahead_applied")[0][0])
    for seq in (1, 2):
        log.append(seq, [encode_ops([("INSERT INTO t VALUES (?)", (seq,))])])
    whole = log.size
    log.append(3, [encode_ops([("INSERT INTO t VALUES (?)", (3,))])])
    log.close(remove=False)
    os.truncate(str(db) + SUFFIX, whole + 5)  # the third one was never acknowledged: its append did not end
    store = Store(db, ahead_log=True)
    try:
        assert store.query("SELECT k FROM t ORDER BY k") == [(1,), (2,)]
        store.write_wait([("INSERT INTO t VALUES (4)", ())])  # numbered after what was applied
        assert store.query("SELECT k FROM t ORDER BY k") == [(1,), (2,), (4,)]
    finally:
        store.close()


def test_a_log_beside_another_store_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    for folder in (first, second):
        folder.mkdir()
        store = Store(folder / "flame.db")
        store.write_wait([("CREATE TABLE t (k INTEGER PRIMARY KEY)", ())])
        store.close()
    log = AheadLog(
        str(first / "flame.db") + SUFFIX, raw_rows(first / "flame.db", "SELECT log_id FROM ahead_applied")[0][0]
    )
    log.append(1, [encode_ops([("INSERT INTO t VALUES (1)", ())])])
    log.close(remove=False)
    os.replace(str(first / "flame.db") + SUFFIX, str(second / "flame.db") + SUFFIX)  # the store moved aside alone
    with pytest.raises(FlameError) as caught:
        Store(second / "flame.db", ahead_log=True)
    assert caught.value.code == FlameErrorCode.INVALID_STATE
    assert str(second / "flame.db") + SUFFIX in caught.value.message and "Move" in caught.value.message
    assert raw_rows(second / "flame.db", "SELECT k FROM t") == []
    assert Path(str(second / "flame.db") + SUFFIX).exists(), "the other store's log was removed"


# -- order and crashes, against a model ------------------------------------------------------------------


class AheadLogMachine(RuleBasedStateMachine):
    """Writes go to the log or straight to sqlite, in any order; reads and crashes come at any point.

    A crash is taken as a copy of the store's files while no transaction and no append is under way (the
    store's connection and log locks held): what the operating system holds when the process dies there.
    """

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="ahead-machine-"))
        self.saved = store_module.FOLD_DELAY
        store_module.FOLD_DELAY = 3600.0  # folds happen when a rule says so
        self.store = Store(self.dir / "flame.db", ahead_log=True)
        self.store.write_wait([("CREATE TABLE t (k INTEGER PRIMARY KEY, v INTEGER NOT NULL)", ())])
        self.model: dict[int, int] = {}
        self.crashes = 0

    def teardown(self) -> None:
        store_module.FOLD_DELAY = self.saved
        self.store.close(timeout=5)
        shutil.rmtree(self.dir, ignore_errors=True)

    @rule(k=st.integers(0, 5), v=st.integers(0, 1000))
    def put(self, k: int, v: int) -> None:
        self.store.write_wait([("INSERT OR REPLACE INTO t VALUES (?, ?)", (k, v))])
        self.model[k] = v

    @rule(k=st.integers(0, 5), v=st.integers(0, 1000))
    def put_too_large_to_log(self, k: int, v: int) -> None:
        pad = "x" * (store_module.AHEAD_RECORD_MAX + 1)
        self.store.write_wait([("INSERT OR REPLACE INTO t VALUES (?, ? + 0 * length(?))", (k, v, pad))])
        self.model[k] = v

    @rule(k=st.integers(0, 5))
    def delete(self, k: int) -> None:
        self.store.write_wait([("DELETE FROM t WHERE k = ?", (k,))])
        self.model.pop(k, None)

    @rule(k=st.integers(0, 5), v=st.integers(0, 1000))
    def several_in_one_group(self, k: int, v: int) -> None:
        done = threading.Event()
        self.store.enqueue([("INSERT OR REPLACE INTO t VALUES (?, ?)", (k, v))])
        self.store.enqueue([("UPDATE t SET v = v + 1 WHERE k = ?", (k,))], lambda _error: done.set())
        self.store.commit()
        assert done.wait(10)
        self.model[k] = v + 1

    @rule()
    def writer_applies(self) -> None:
        assert self.store._fold_ahead() is None

    @rule(limit=st.integers(1, 3))
    def fold_thread_applies_a_chunk(self, limit: int) -> None:
        assert self.store._fold_ahead(limit) is None

    @rule()
    def crash_and_start_again(self) -> None:
        self.crashes += 1
        copy = self.dir / f"crash-{self.crashes}"
        copy.mkdir()
        with self.store._log_lock, self.store._conn_lock:
            for suffix in ("", "-wal", SUFFIX):
                source = Path(self.store.path + suffix)
                if source.exists():
                    shutil.copyfile(source, copy / ("flame.db" + suffix))
        started = Store(copy / "flame.db", ahead_log=True)
        try:
            assert dict(started.query("SELECT k, v FROM t")) == self.model, "the start after a crash lost or reordered"
        finally:
            started.close()

    @rule()
    def read(self) -> None:  # (a rule, not an invariant: a read applies the log, and crashes must find it full)
        assert dict(self.store.query("SELECT k, v FROM t")) == self.model, "a read missed an acknowledged write"


TestAheadLogMachine = AheadLogMachine.TestCase
TestAheadLogMachine.settings = settings(max_examples=30, stateful_step_count=20, deadline=None)
