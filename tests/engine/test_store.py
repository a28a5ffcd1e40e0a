"""The store's commit callbacks against a model, while the database fills up and frees up again.

A full database is real sqlite behaviour: ``PRAGMA max_page_count`` at the current size makes every
write that needs a new page fail with SQLITE_FULL, as a full disk does. The rules of the store:

* a callback that got no error means the write is committed (and it stays, in order);
* a withdrawable write that got an error was never committed, and never is later;
* a durable write is never given up: once the database has room again, it is committed.
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
import threading
import time
from pathlib import Path

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from flamepy_core.contracts.errors import FlameError, FlameErrorCode
from flamepy_core.engine import store as store_module
from flamepy_core.engine.store import Store

BLOB = 5000  # more than a page (4 KiB): every row needs new pages


class StoreMachine(RuleBasedStateMachine):
    ahead_log = False

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="fs-"))
        self.store = Store(self.dir / "flame.db", retry_window=0.0, ahead_log=self.ahead_log)
        self.store.write_wait([("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v BLOB)", ())])
        self.full = False
        self.next_id = 0
        self.outcomes: dict[int, FlameError | None] = {}
        self.durable: set[int] = set()
        self.lock = threading.Lock()

    def teardown(self) -> None:
        if self.full:
            self._set_full(False)
        self.store.close(timeout=5)
        shutil.rmtree(self.dir, ignore_errors=True)

    def _set_full(self, full: bool) -> None:
        self.store.flush(timeout=0.5) if not self.full else None
        pages = self.store.query("PRAGMA page_count")[0][0]
        # Between the writer's attempts: while the store is full, its writer retries on the write connection,
        # and a pragma run there from this thread in the middle of a retry's transaction could make an
        # attempt that committed look failed (then retried: a duplicate key).
        limit = pages if full else 1_000_000_000
        self.store.exclusive(lambda write: write.execute(f"PRAGMA max_page_count = {limit}"))
        self.full = full

    def _record(self, ident: int, error: FlameError | None) -> None:
        with self.lock:
            assert ident not in self.outcomes, f"write {ident} completed twice"
            self.outcomes[ident] = error

    @rule(durable=st.booleans(), count=st.integers(1, 3))
    def write(self, durable: bool, count: int) -> None:
        ident = self.next_id
        self.next_id += 1
        if durable:
            self.durable.add(ident)
        ops = [("INSERT INTO t (id, v) VALUES (?, ?)", (ident * 10 + i, b"x" * BLOB)) for i in range(count)]
        self.store.write(ops, lambda error, ident=ident: self._record(ident, error), durable=durable)

    @rule()
    def disk_fills(self) -> None:
        if not self.full:
            self._set_full(True)

    @rule()
    def space_returns(self) -> None:
        if self.full:
            self._set_full(False)
            self.store.flush(timeout=10)  # retried durable writes land now
            with self.lock:
                missing = self.durable - set(self.outcomes)
            assert not missing, f"durable writes {sorted(missing)} were not committed once space returned"

    @invariant()
    def what_was_acknowledged_is_stored_and_what_was_refused_is_not(self) -> None:
        if self.full:
            return  # a write may be in the middle of its retries
        self.store.flush(timeout=10)
        stored = {row[0] // 10 for row in self.store.query("SELECT id FROM t")}
        with self.lock:
            outcomes = dict(self.outcomes)
        assert set(outcomes) == set(range(self.next_id)), "every write got its callback"
        for ident, error in outcomes.items():
            if error is None:
                assert ident in stored, f"write {ident} was acknowledged but is not stored"
            else:
                assert ident not in self.durable, f"durable write {ident} was given up: {error}"
                assert ident not in stored, f"write {ident} was refused but is stored"
                assert error.code == FlameErrorCode.RESOURCE_EXHAUSTED, error
                assert "flame.db" in error.message and "SQLITE_FULL" in error.message, error.message


TestStoreMachine = StoreMachine.TestCase
TestStoreMachine.settings = settings(max_examples=25, stateful_step_count=25, deadline=None)


class LoggedStoreMachine(StoreMachine):
    """The same rules with the ahead log (the server's store): a write it acknowledged before the disk
    filled is kept, and applied once there is room."""

    ahead_log = True


TestLoggedStoreMachine = LoggedStoreMachine.TestCase
TestLoggedStoreMachine.settings = settings(max_examples=25, stateful_step_count=25, deadline=None)


def test_a_lazy_write_is_committed_without_anyone_committing(tmp_path: Path) -> None:
    store = Store(tmp_path / "flame.db")
    try:
        store.write_wait([("CREATE TABLE t (v INTEGER)", ())])
        done = threading.Event()
        store.enqueue([("INSERT INTO t VALUES (1)", ())], lambda error: done.set(), lazy=True)
        assert done.wait(5), "the writer thread did not commit a lazy write"
        assert store.query("SELECT v FROM t") == [(1,)]
    finally:
        store.close()


def test_a_bad_statement_fails_alone_and_the_others_commit(tmp_path: Path) -> None:
    store = Store(tmp_path / "flame.db")
    try:
        store.write_wait([("CREATE TABLE t (v INTEGER PRIMARY KEY)", ())])
        results: list[FlameError | None] = []
        store.enqueue([("INSERT INTO t VALUES (1)", ())], results.append)
        store.enqueue([("INSERT INTO t VALUES (1)", ())], results.append)  # a duplicate key: a bug
        store.enqueue([("INSERT INTO t VALUES (2)", ())], results.append)
        store.commit()
        store.flush()
        assert results[0] is None and results[2] is None
        assert isinstance(results[1], FlameError) and "UNIQUE" in results[1].message
        assert store.query("SELECT v FROM t ORDER BY v") == [(1,), (2,)]
        assert store.failure is None
    finally:
        store.close()


def test_a_store_left_idle_copies_its_log_back_and_truncates_it(tmp_path: Path, monkeypatch) -> None:
    """Writes smaller than the checkpoint threshold still reach the database file once the store is idle."""
    monkeypatch.setattr(store_module, "CHECKPOINT_IDLE", 0.2)
    store = Store(tmp_path / "flame.db")
    wal = tmp_path / "flame.db-wal"
    try:
        store.write_wait([("CREATE TABLE t (v BLOB)", ())])
        for _ in range(2):  # a second burst after the first truncation is copied back too
            store.write_wait([("INSERT INTO t VALUES (?)", (bytes(BLOB * 40),))])
            assert wal.stat().st_size > BLOB * 40, "the write is in the log first"
            deadline = time.monotonic() + 10
            while wal.exists() and wal.stat().st_size > 0 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert wal.stat().st_size == 0, "the idle store did not truncate its write-ahead log"
        assert (tmp_path / "flame.db").stat().st_size > 2 * BLOB * 40
        assert len(store.query("SELECT v FROM t")) == 2
    finally:
        store.close()


def test_a_checkpoint_runs_once_per_wal_grown_past_the_threshold(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Once the WAL has grown past ``CHECKPOINT_BYTES``, small commits must not each ask for a checkpoint.

    sqlite keeps a WAL file at its largest size when it starts it over; measured by file size, the WAL
    would look "too large" forever, and the checkpointer would run (and fsync) after every commit. What it
    holds is read from the WAL index instead.
    """
    from flamepy_core.engine import store as store_module

    monkeypatch.setattr(store_module, "CHECKPOINT_BYTES", 256 << 10)
    monkeypatch.setattr(store_module, "CHECKPOINT_MIN_INTERVAL", 0.0)
    store = Store(tmp_path / "flame.db")
    try:
        store.write_wait([("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)", ())])
        for i in range(40):  # ~400 KiB of pages: past the threshold
            store.write_wait([("INSERT INTO t VALUES (?, ?)", (i, b"x" * 10_000))])
        deadline = time.monotonic() + 5
        while store.checkpoints == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert store.checkpoints >= 1, "no checkpoint ran although the WAL passed the threshold"
        settled = -1
        while settled != store.checkpoints and time.monotonic() < deadline + 10:  # the rounds asked for ran
            settled = store.checkpoints
            time.sleep(0.5)
        # The last pages of the burst may sit in a log started over under the threshold: copy them back too.
        store.exclusive(lambda conn: conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall())
        for i in range(100, 150):  # small commits after the WAL was started over
            store.write_wait([("INSERT INTO t VALUES (?, ?)", (i, b"y"))])
        time.sleep(0.3)
        assert store.checkpoints == settled, (
            f"{store.checkpoints - settled} checkpoints for 50 small commits: the WAL file still reads as too large"
        )
        assert store.log_bytes() < store_module.CHECKPOINT_BYTES
        assert (tmp_path / "flame.db-wal").stat().st_size >= store_module.CHECKPOINT_BYTES, (
            "the log's file was cut back when started over: the commit that did it paid for the cut"
        )
    finally:
        store.close()


def test_what_the_log_holds_is_read_from_the_wal_index_as_sqlite_counts_it(tmp_path: Path) -> None:
    """``log_bytes`` is the frames sqlite says the log holds (its checkpoint's count), whatever the file's
    size: it grows with commits, and is back to nothing once the log is started over, in place."""
    store = Store(tmp_path / "flame.db")
    try:
        page = store.query("PRAGMA page_size")[0][0]
        store.write_wait([("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)", ())])
        before = store.log_bytes()
        for i in range(20):
            store.write_wait([("INSERT INTO t VALUES (?, ?)", (i, b"x" * 10_000))])
        held = store.log_bytes()
        assert held > before + 20 * 10_000, (before, held)
        checkpointed = store.exclusive(lambda conn: conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone())
        assert held == checkpointed[1] * (page + 24), (held, checkpointed)
        size = (tmp_path / "flame.db-wal").stat().st_size
        store.write_wait([("INSERT INTO t VALUES (?, ?)", (100, b"y"))])  # finds the log copied back: starts it over
        assert 0 < store.log_bytes() < 10 * (page + 24), store.log_bytes()
        assert (tmp_path / "flame.db-wal").stat().st_size == size, "started over in place, not cut back"
    finally:
        store.close()


def test_lazy_writes_alone_wait_for_the_next_commit(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """``commit(lazy=False)`` leaves a queue of lazy writes (nobody's acknowledgement) to the next commit,
    so a task becoming RUNNING does not cost a transaction of its own; an urgent write takes them along."""
    from flamepy_core.engine import store as store_module

    monkeypatch.setattr(store_module, "LAZY_DELAY", 60.0)  # the writer thread stays out of this test
    store = Store(tmp_path / "flame.db")
    try:
        store.write_wait([("CREATE TABLE t (v INTEGER)", ())])
        before = store.commits
        order: list[str] = []
        store.enqueue([("INSERT INTO t VALUES (1)", ())], lambda error: order.append("lazy"), lazy=True)
        store.commit(lazy=False)
        assert store.commits == before and order == [], "a queue of lazy writes was committed on its own"
        store.enqueue([("INSERT INTO t VALUES (2)", ())], lambda error: order.append("urgent"))
        store.commit(lazy=False)
        assert store.commits == before + 1, "the urgent write and the lazy one were not one transaction"
        assert order == ["lazy", "urgent"]
        assert store.query("SELECT v FROM t ORDER BY v") == [(1,), (2,)]
    finally:
        store.close()


def test_lazy_writes_queued_by_a_commits_callbacks_wait_for_the_next_commit(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A task created, committed, then sent to its instance queues its RUNNING (lazy) from the creation's
    commit callback: that write waits for the next commit (its result's) rather than costing a
    transaction of its own; an urgent write queued the same way is committed before ``commit`` returns."""
    from flamepy_core.engine import store as store_module

    monkeypatch.setattr(store_module, "LAZY_DELAY", 60.0)  # the writer thread stays out of this test
    store = Store(tmp_path / "flame.db")
    try:
        store.write_wait([("CREATE TABLE t (v INTEGER)", ())])
        before = store.commits
        order: list[str] = []

        def created(error: FlameError | None) -> None:
            order.append("created")
            store.enqueue([("INSERT INTO t VALUES (2)", ())], lambda error: order.append("running"), lazy=True)
            store.commit(lazy=False)  # what the scheduler does after sending the task: nothing to commit

        store.enqueue([("INSERT INTO t VALUES (1)", ())], created)
        store.commit()
        assert store.commits == before + 1, "the lazy write queued by the callback got a transaction of its own"
        assert order == ["created"]
        store.enqueue([("INSERT INTO t VALUES (3)", ())], lambda error: order.append("done"))
        store.commit()
        assert store.commits == before + 2 and order == ["created", "running", "done"]

        def urgent_follows(error: FlameError | None) -> None:
            store.enqueue([("INSERT INTO t VALUES (5)", ())], lambda error: order.append("urgent"))

        store.enqueue([("INSERT INTO t VALUES (4)", ())], urgent_follows)
        store.commit()
        assert order[-1] == "urgent", "an urgent write queued by a callback was left behind"
        assert store.query("SELECT v FROM t ORDER BY v") == [(1,), (2,), (3,), (4,), (5,)]
    finally:
        store.close()


def test_lazy_writes_that_commits_take_along_do_not_wake_the_writer_each_time(tmp_path: Path) -> None:
    """On a busy server each task's lazy write (RUNNING) goes out with the next commit: the writer thread
    is woken only when it would otherwise sleep past a lazy write's deadline, not once per write, and a
    lazy write nobody commits is still committed by it."""
    store = Store(tmp_path / "flame.db")
    try:
        store.write_wait([("CREATE TABLE t (v INTEGER)", ())])
        rounds = 200
        for i in range(rounds):
            store.enqueue([("INSERT INTO t VALUES (?)", (i,))], lazy=True)
            store.enqueue([("INSERT INTO t VALUES (?)", (-i - 1,))])
            store.commit(lazy=False)
        assert store.writer_wakeups < rounds // 2, f"the writer was woken {store.writer_wakeups} times"
        done = threading.Event()
        store.enqueue([("INSERT INTO t VALUES (1000)", ())], lambda error: done.set(), lazy=True)
        assert done.wait(5), "a lazy write alone was not committed by the writer"
        assert store.query("SELECT COUNT(*) FROM t") == [(2 * rounds + 1,)]
    finally:
        store.close()


def test_the_log_starts_over_under_a_steady_load(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Commits that never pause still let sqlite start the log over, again and again: the log does not grow
    with what is written. (Checkpoints alone, racing the commits, never finish copying the log back, and it
    is only started over at a write that finds it wholly copied.) Its file is not cut back meanwhile."""
    monkeypatch.setattr(store_module, "CHECKPOINT_BYTES", 256 << 10)
    monkeypatch.setattr(store_module, "CHECKPOINT_MIN_INTERVAL", 0.0)
    store = Store(tmp_path / "flame.db")
    wal = tmp_path / "flame.db-wal"
    try:
        store.write_wait([("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)", ())])
        held, files = [], []
        for i in range(3000):  # 30 MB written, one of 20 rows rewritten each time: the table stays small
            store.write_wait([("INSERT OR REPLACE INTO t VALUES (?, ?)", (i % 20, bytes(10_000)))])
            held.append(store.log_bytes())
            files.append(wal.stat().st_size)
        restarts = sum(1 for before, after in itertools.pairwise(held) if after < before)
        assert restarts >= 3, f"the log was started over {restarts} times; it grew to {max(held)} bytes"
        assert files == sorted(files), "the log's file was cut back under load (by the commit that started it over)"
    finally:
        store.close()


def test_rows_queued_as_one_write_are_made_when_a_commit_takes_them(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A batch's RUNNING rows (``RunningRows`` through ``enqueue_rows``): one write, whose statements are the
    rows still there when a commit takes it. A row discarded before that is never written; one discarded
    after it was written stays (its final row, queued later, overwrites it); the write keeps its place in
    the order of writes."""
    from flamepy_core.engine.state import RunningRows

    monkeypatch.setattr(store_module, "LAZY_DELAY", 60.0)  # the writer thread stays out of this test
    store = Store(tmp_path / "flame.db")
    try:
        store.write_wait([("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)", ())])
        store.write_wait([("INSERT INTO t VALUES (?, 'pending')", (k,)) for k in range(1, 5)])
        rows = RunningRows()
        for k in range(1, 5):
            rows.add(k, ("UPDATE t SET v = 'running' WHERE k = ?", (k,)))
        taken: list[int] = []

        def take() -> list[tuple[str, tuple[int, ...]]]:
            made = rows.take()
            taken.append(len(made))
            return made

        store.enqueue_rows(take)
        rows.discard(2)  # its result came before any commit: its RUNNING row is not needed
        store.enqueue([("UPDATE t SET v = 'done' WHERE k = ?", (2,))])
        assert taken == [], "the rows were made before a commit took them"
        store.commit()
        assert taken == [3], "the discarded row was made, or the rows were made twice"
        rows.discard(3)  # too late: it is written, and a final row written later overwrites it
        store.write_wait([("UPDATE t SET v = 'done' WHERE k = ?", (3,))])
        assert store.query("SELECT k, v FROM t ORDER BY k") == [
            (1, "running"),
            (2, "done"),
            (3, "done"),
            (4, "running"),
        ]
        assert taken == [3]
    finally:
        store.close()


def test_rows_queued_as_one_write_keep_their_place_before_a_later_write(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The rows are made at the commit, but written where the write was queued: before a write queued after
    it about the same row (a task requeued, its PENDING row), not after."""
    from flamepy_core.engine.state import RunningRows

    monkeypatch.setattr(store_module, "LAZY_DELAY", 60.0)
    store = Store(tmp_path / "flame.db")
    try:
        store.write_wait(
            [("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)", ()), ("INSERT INTO t VALUES (1, 'p')", ())]
        )
        rows = RunningRows()
        rows.add(1, ("UPDATE t SET v = 'running' WHERE k = ?", (1,)))
        store.enqueue_rows(rows.take)
        store.write_wait([("UPDATE t SET v = 'pending again' WHERE k = ?", (1,))])
        assert store.query("SELECT v FROM t") == [("pending again",)]
    finally:
        store.close()
