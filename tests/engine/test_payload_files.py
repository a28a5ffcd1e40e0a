"""Large payloads in files of their own, against a real sqlite store and real files, without processes.

A hypothesis state machine creates, runs, purges and deletes tasks with payloads on both sides of the
threshold, restarts the engine on the same files, and drops stray files in the folder; after every step
the files on disk are exactly those the rows name (strays aside, until a start or ``gc`` removes them),
each private, and every task reads back byte for byte. Then the faults: a missing or short file is an
error naming the file (and a pending task whose input is gone fails, saying so, rather than stopping the
start), a file that cannot be written leaves the payload in the row, and a file still being committed is
never taken for an orphan. A store from before payload files gains their columns and keeps its rows.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import stat
import tempfile
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from flamepy_core.contracts.errors import FlameError, FlameErrorCode
from flamepy_core.engine.payload_files import FILE_PAYLOAD_BYTES, PayloadFiles
from flamepy_core.engine.retention import Retention
from flamepy_core.engine.state import Engine
from flamepy_core.engine.store import Store
from flamepy_core.engine.watches import StreamFeed
from flamepy_core.wire.proto import types_pb2 as pb

S = pb.TaskState
THRESHOLD = 64
"""The machine's threshold (the real one is 1 MiB): small payloads keep the steps fast."""
SIZES = st.sampled_from([None, 0, 5, THRESHOLD - 1, THRESHOLD, 3 * THRESHOLD])


def open_engine(folder: Path, *, threshold: int = THRESHOLD, durability: str = "batched") -> Engine:
    store = Store(folder / "flame.db", durability=durability)
    store.payloads.threshold = threshold
    return Engine(store)


def payload(size: int | None, tag: int) -> bytes | None:
    return None if size is None else bytes((tag + i) % 251 for i in range(size))


def files_in(folder: Path) -> set[str]:
    directory = folder / "payloads"
    return {p.name for p in directory.iterdir()} if directory.exists() else set()


def run_one(engine: Engine, sid: str, data: bytes | None, output: bytes | None) -> str:
    """Create a task in ``sid`` (which has no other pending task) and finish it with ``output``."""
    tid = engine.create_task(sid, data).metadata.id
    taken = engine.take_task(sid, timeout=0)
    assert taken is not None and taken.metadata.id == tid and taken.spec.input == (data or b"")
    engine.complete_task(sid, tid, output)
    return tid


class PayloadFilesMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="fpf-"))
        self.engine = open_engine(self.dir)
        self.engine.register_application("app", pb.ApplicationSpec(command="python"))
        self.engine.create_session("waiting", pb.SessionSpec(application="app"))  # its tasks stay pending
        self.sessions = ["waiting"]
        self.model: dict[tuple[str, str], tuple[bytes | None, bytes | None]] = {}
        """(session, task) -> the input and output it must read back (None: absent or purged)."""
        self.strays: set[str] = set()
        self.count = 0

    def teardown(self) -> None:
        self.engine.store.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _tag(self) -> int:
        self.count += 1
        return self.count

    @rule()
    def new_session(self) -> None:
        sid = f"s{self._tag()}"
        self.engine.create_session(sid, pb.SessionSpec(application="app"))
        self.sessions.append(sid)

    @precondition(lambda self: len(self.sessions) > 1)
    @rule(data=st.data(), in_size=SIZES, out_size=SIZES)
    def run_task(self, data: st.DataObject, in_size: int | None, out_size: int | None) -> None:
        sid = data.draw(st.sampled_from(self.sessions[1:]))
        tag = self._tag()
        inp, out = payload(in_size, tag), payload(out_size, tag + 7)
        tid = run_one(self.engine, sid, inp, out)
        self.model[(sid, tid)] = (inp, out)

    @rule(in_size=SIZES)
    def leave_pending(self, in_size: int | None) -> None:
        inp = payload(in_size, self._tag())
        tid = self.engine.create_task("waiting", inp).metadata.id
        self.model[("waiting", tid)] = (inp, None)

    @precondition(lambda self: len(self.sessions) > 1)
    @rule(data=st.data())
    def delete_session(self, data: st.DataObject) -> None:
        sid = data.draw(st.sampled_from(self.sessions[1:]))
        self.engine.delete_session(sid)
        self.sessions.remove(sid)
        self.model = {key: value for key, value in self.model.items() if key[0] != sid}

    @rule()
    def gc(self) -> None:
        """``flmctl gc --older-than 0``: every finished task's payloads go, strays too."""
        Retention(self.engine.store, 3600).collect(older_than=0)
        self.model = {key: (value if key[0] == "waiting" else (None, None)) for key, value in self.model.items()}
        self.strays.clear()

    @rule()
    def stray_file(self) -> None:
        """What a crash between a file and its commit leaves: a payload file no row names."""
        directory = self.dir / "payloads"
        directory.mkdir(mode=0o700, exist_ok=True)
        name = f"p-stray{self._tag()}"
        (directory / name).write_bytes(b"left behind")
        os.chmod(directory / name, 0o600)
        self.strays.add(name)

    @rule()
    def restart(self) -> None:
        self.engine.store.close()
        self.engine = open_engine(self.dir)
        retention = Retention(self.engine.store, 3600)
        retention.start()  # as the server does: strays are removed before anything is served
        retention.stop()
        self.strays.clear()

    @invariant()
    def the_files_are_exactly_the_rows(self) -> None:
        on_disk = files_in(self.dir)
        assert on_disk - self.strays == self.engine.store.payload_file_names()
        directory = self.dir / "payloads"
        if directory.exists():
            assert stat.S_IMODE(directory.stat().st_mode) == 0o700
        for name in on_disk:
            assert stat.S_IMODE((directory / name).stat().st_mode) == 0o600, name

    @invariant()
    def a_waiting_input_in_a_file_is_not_also_in_memory(self) -> None:
        entry = self.engine._sessions["waiting"]
        for tid, task in entry.tasks.items():
            inp = self.model[("waiting", str(tid))][0]
            in_file = inp is not None and len(inp) >= THRESHOLD
            assert (tid in entry.input_files) == in_file, (tid, inp)
            assert task.spec.HasField("input") == (inp is not None and not in_file), (tid, inp)

    @invariant()
    def every_task_reads_back(self) -> None:
        listed: dict[tuple[str, str], pb.Task] = {}
        for sid in self.sessions:
            listed.update({(sid, t.metadata.id): t for t in self.engine.list_tasks(sid)})
        assert set(listed) == set(self.model)
        for (sid, tid), (inp, out) in self.model.items():
            for task in (listed[(sid, tid)], self.engine.get_task(sid, tid)):
                assert task.spec.input == (inp or b"") and task.spec.HasField("input") == (inp is not None)
                assert task.spec.output == (out or b"") and task.spec.HasField("output") == (out is not None)


PayloadFilesMachine.TestCase.settings = settings(max_examples=30, stateful_step_count=15, deadline=None)
test_payload_files_machine = PayloadFilesMachine.TestCase


@pytest.fixture
def folder():  # type: ignore[no-untyped-def]
    path = Path(tempfile.mkdtemp(prefix="fpf-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _session(engine: Engine, sid: str = "s") -> None:
    engine.register_application("app", pb.ApplicationSpec(command="python"))
    engine.create_session(sid, pb.SessionSpec(application="app"))


def test_the_real_threshold_is_one_mib_and_a_large_task_reads_back_in_strict_mode(folder: Path) -> None:
    assert FILE_PAYLOAD_BYTES == 1 << 20
    engine = open_engine(folder, threshold=FILE_PAYLOAD_BYTES, durability="strict")
    _session(engine)
    small, large = b"s" * (FILE_PAYLOAD_BYTES - 1), b"L" * FILE_PAYLOAD_BYTES
    run_one(engine, "s", small, large)
    assert len(files_in(folder)) == 1, "only the output reaches the threshold"
    engine.store.close()
    engine = open_engine(folder, threshold=FILE_PAYLOAD_BYTES)
    task = engine.get_task("s", "1")
    assert (task.spec.input, task.spec.output) == (small, large)
    engine.store.close()


@pytest.mark.parametrize("damage", ["missing", "short"])
def test_a_missing_or_short_file_is_an_error_naming_it(folder: Path, damage: str) -> None:
    engine = open_engine(folder)
    _session(engine)
    run_one(engine, "s", b"i" * 100, b"o" * 100)
    names = sorted(files_in(folder))
    assert len(names) == 2 and set(names) == engine.store.payload_file_names()
    victim = folder / "payloads" / names[0]
    if damage == "missing":
        victim.unlink()
    else:
        victim.write_bytes(b"cut")
    for read in (lambda: engine.get_task("s", "1"), lambda: list(engine.list_tasks("s"))):
        with pytest.raises(FlameError) as info:
            read()
        assert info.value.code == FlameErrorCode.INTERNAL
        assert str(victim) in info.value.message and "task 1 of session s" in info.value.message
        if damage == "short":
            assert "holds 3 bytes where 100 were written" in info.value.message
    answers: list[pb.Task] = []
    engine.cancel_task("s", "1", "the test", answers.append)  # answers with the state: reads no payload
    assert [t.status.state for t in answers] == [S.Succeed]
    engine.store.close()


def _two_waiting_tasks(folder: Path) -> tuple[Engine, str]:
    """An engine whose session s has two pending tasks: 1, whose input is in a file (its name returned), and
    2, whose input is not."""
    engine = open_engine(folder)
    _session(engine)
    engine.create_task("s", b"x" * 100)
    engine.create_task("s", b"kept")
    (name,) = files_in(folder)
    return engine, name


def test_a_pending_task_whose_input_file_is_gone_fails_at_start_saying_why(folder: Path) -> None:
    engine, name = _two_waiting_tasks(folder)
    engine.store.close()
    (folder / "payloads" / name).unlink()
    engine = open_engine(folder)  # starts: the other task is still served
    lost = engine.get_task("s", "1")
    assert lost.status.state == S.Failed
    assert name in lost.status.events[-1].message and "cannot be read" in lost.status.events[-1].message
    taken = engine.take_task("s", timeout=0)
    assert taken is not None and taken.spec.input == b"kept"
    engine.store.close()


def test_a_file_that_cannot_be_written_leaves_the_payload_in_the_row(folder: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    engine = open_engine(folder)
    _session(engine)
    (folder / "payloads").write_bytes(b"not a folder")  # every payload file write fails
    run_one(engine, "s", b"i" * 100, b"o" * 100)
    assert "stored in the database instead" in caplog.text
    assert engine.store.payload_file_names() == set()
    engine.store.close()
    engine = open_engine(folder)
    task = engine.get_task("s", "1")
    assert (task.spec.input, task.spec.output) == (b"i" * 100, b"o" * 100)
    engine.store.close()


def test_a_file_whose_row_is_not_committed_yet_is_no_orphan(folder: Path) -> None:
    files = PayloadFiles(folder / "payloads", sync=False, threshold=1)
    written = files.spill(b"data")
    assert written is not None and written.size == 4
    name = written.name
    files.remove_orphans(set)  # no row names it, but it is being committed
    assert files_in(folder) == {name}
    files.settled([written], None)  # committed: from now on only a row keeps it
    assert files.remove_orphans(lambda: {name}) == 0
    assert files.remove_orphans(set) == 1 and files_in(folder) == set()
    withdrawn = files.spill(b"data")
    files.settled([withdrawn], "refused")  # a creation the store refused: its file goes at once
    assert files_in(folder) == set()


def test_a_store_from_before_payload_files_gains_the_columns_and_keeps_its_rows(folder: Path) -> None:
    with contextlib.closing(sqlite3.connect(folder / "flame.db")) as old:
        old.execute(
            "CREATE TABLE task_payloads (session_id TEXT NOT NULL, id INTEGER NOT NULL, kind INTEGER NOT NULL, "
            "data BLOB NOT NULL, PRIMARY KEY (session_id, id, kind))"
        )
        old.execute("INSERT INTO task_payloads VALUES ('s', 1, 0, ?)", (b"old input",))
        old.commit()
    store = Store(folder / "flame.db")
    columns = [row[1] for row in store.query("PRAGMA table_info(task_payloads)")]
    assert columns == ["session_id", "id", "kind", "data", "file", "file_size"]
    assert store.query("SELECT data, file FROM task_payloads") == [(b"old input", None)]
    plan = " ".join(
        str(row) for row in store.query("EXPLAIN QUERY PLAN SELECT file FROM task_payloads WHERE file IS NOT NULL")
    )
    assert "task_payload_files" in plan, plan
    store.close()


def test_the_folder_is_made_private_when_first_needed_and_again_if_removed(folder: Path) -> None:
    engine = open_engine(folder)
    _session(engine)
    run_one(engine, "s", b"small", b"tiny")
    assert not (folder / "payloads").exists(), "no large payload yet: no folder"
    for _ in range(2):
        tid = run_one(engine, "s", b"i" * 100, None)
        assert stat.S_IMODE((folder / "payloads").stat().st_mode) == 0o700
        assert engine.get_task("s", tid).spec.input == b"i" * 100
        shutil.rmtree(folder / "payloads")  # removed by hand while the server runs
    engine.store.close()


def test_a_large_input_waits_in_its_file_only_and_every_way_to_start_or_read_it_reads_the_file(folder: Path) -> None:
    """Only the file holds a large pending input; get_task, CreateTask's answer, WatchTask, take_task and
    both of the scheduler's starts (file-taking instance or not) hand out the same bytes."""
    engine = open_engine(folder)
    _session(engine)
    inputs = {str(n): payload(THRESHOLD + n, n) for n in range(1, 6)}
    for data in inputs.values():
        assert engine.create_task("s", data).spec.input == data  # echoed, as Flame's CreateTask does
    entry = engine._sessions["s"]
    assert all(not task.spec.HasField("input") for task in entry.tasks.values())
    assert sorted(entry.input_files) == [1, 2, 3, 4, 5]
    assert engine.get_task("s", "1").spec.input == inputs["1"]
    seen: list[pb.Task] = []
    engine.watch_task("s", "1", StreamFeed(lambda tasks: seen.extend(tasks) or True, lambda _e: None, lambda: True))
    taken = engine.take_task("s", timeout=0)
    assert taken is not None and (taken.metadata.id, taken.spec.input) == ("1", inputs["1"])
    engine.complete_task("s", "1", b"done")  # the final snapshot carries the input too, as Flame's does
    assert [(t.status.state, t.spec.input) for t in seen] == [(S.Running, inputs["1"]), (S.Succeed, inputs["1"])]
    tid, data, file = engine.start_next("s") or (0, None, None)
    assert (tid, data, file) == (2, inputs["2"], None)
    tid, data, file = engine.start_next("s", input_as_file=True) or (0, None, None)
    assert (tid, data, file) == (3, None, entry.input_files[3])
    assert engine.start_many("s", 8, 1, 1 << 20) == [(4, inputs["4"], None), (5, inputs["5"], None)]
    engine.store.close()


def test_a_waiting_input_whose_file_is_removed_fails_its_task_when_started_saying_why(folder: Path) -> None:
    engine, name = _two_waiting_tasks(folder)
    (folder / "payloads" / name).unlink()  # removed by hand while the server runs
    with pytest.raises(FlameError) as info:
        engine.get_task("s", "1")
    assert name in info.value.message and "task 1 of session s" in info.value.message
    started = engine.start_next("s")
    assert started == (2, b"kept", None), "the lost one failed; the next one starts"
    engine.store.commit()
    lost = engine.get_task("s", "1")
    assert lost.status.state == S.Failed and name in lost.status.events[-1].message
    engine.store.close()


def test_a_restart_leaves_a_waiting_input_in_its_file_and_hands_it_out_from_there(folder: Path) -> None:
    engine = open_engine(folder)
    _session(engine)
    engine.create_task("s", b"i" * 100)
    engine.store.close()
    engine = open_engine(folder)
    entry = engine._sessions["s"]
    assert not entry.tasks[1].spec.HasField("input") and entry.input_files[1].size == 100
    started = engine.start_next("s", input_as_file=True)
    assert started is not None and started[2] is not None
    assert (folder / "payloads" / started[2].name).read_bytes() == b"i" * 100
    engine.store.close()


def test_files_leave_the_page_cache_at_the_first_drop_due_after_their_time_never_before(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``cached`` only notes a file; ``drop_due`` lets go of those whose time came, at each step of
    ``DROP_CACHED_AFTER``, and of nothing earlier (the server calls it off the path of an answer)."""
    from flamepy_core.engine import payload_files as module

    now = [100.0]
    dropped: list[str] = []
    monkeypatch.setattr(module.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(module, "drop_cached", lambda path: dropped.append(path.name))
    files = PayloadFiles(folder, sync=False)
    files.cached("p-a")
    files.drop_due()
    assert dropped == [], "dropped before its writeback could end"
    now[0] += module.DROP_CACHED_AFTER[0]
    files.cached("p-b")
    assert dropped == [], "cached() dropped something itself: it must not (it runs on an answer's path)"
    files.drop_due()
    assert dropped == ["p-a"]
    now[0] += module.DROP_CACHED_AFTER[-1]
    files.drop_due()
    assert sorted(dropped) == ["p-a", "p-a", "p-b"], "the second drop of the first file, the first of the next"
    now[0] += module.DROP_CACHED_AFTER[-1]
    files.drop_due()
    assert sorted(dropped) == ["p-a", "p-a", "p-b", "p-b"]
    files.drop_due()
    assert len(dropped) == 4, "a file was dropped more often than DROP_CACHED_AFTER has steps"


def test_a_task_sent_to_its_instance_drops_what_is_due(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Creating tasks with a large input lets go of the payload files whose time came (the RunTask
    handler does it after its task went to the instance, while the instance runs it)."""
    engine = open_engine(folder)
    try:
        _session(engine)
        calls: list[int] = []
        monkeypatch.setattr(engine.store.payloads, "drop_due", lambda: calls.append(1))
        engine.create_task("s", b"small")
        assert calls == [], "no payload file, nothing to look at"
        engine.create_task("s", b"x" * THRESHOLD)
        assert calls == [1]
    finally:
        engine.store.close(timeout=5)


@pytest.mark.parametrize("sync", [False, True])
def test_a_file_written_here_has_its_writeback_started_at_the_next_drop_due(
    folder: Path, monkeypatch: pytest.MonkeyPatch, sync: bool
) -> None:
    """In ``batched`` durability the writer starts a payload file's writeback; the server does it at its
    next ``drop_due`` (after the task went to its instance) rather than on the way there. ``strict``
    fsyncs the file before its row anyway: nothing to start."""
    from flamepy_core.engine import payload_files as module

    started: list[str] = []
    writes: list[bool] = []
    real_write = module.write_payload_file

    def write(path: Path, data: bytes, *, sync: bool, start_writeback: bool = True) -> None:
        writes.append(start_writeback)
        real_write(path, data, sync=sync, start_writeback=start_writeback)

    monkeypatch.setattr(module, "write_payload_file", write)
    monkeypatch.setattr(module, "drop_cached", lambda path: started.append(path.name))
    files = PayloadFiles(folder, sync=sync, threshold=THRESHOLD)
    spilled = files.spill(b"x" * THRESHOLD)
    assert spilled is not None and files.path(spilled.name).read_bytes() == b"x" * THRESHOLD
    assert writes == [False] and started == []
    files.drop_due()
    assert started == ([] if sync else [spilled.name])
    files.drop_due()
    assert started == ([] if sync else [spilled.name]), "started twice"


def _lane_file(folder: Path, data: bytes) -> Path:
    source = folder / "x.lane.1.output"
    source.write_bytes(data)
    return source


def test_an_adopted_file_is_the_same_file_linked_and_pending_until_settled(folder: Path) -> None:
    files = PayloadFiles(folder / "payloads", sync=False)
    data = os.urandom(1000)
    source = _lane_file(folder, data)
    taken = files.adopt(str(source), len(data))
    path = files.path(taken.name)
    assert taken.size == len(data) and path.read_bytes() == data
    assert path.stat().st_ino == source.stat().st_ino and source.stat().st_nlink == 2, "not a hard link"
    assert files.remove_orphans(set) == 0, "an adopted file whose row is not committed is no orphan"
    files.settled([taken], "refused")  # the store refused its row: the link goes, the lane's name stays
    assert not path.exists() and source.read_bytes() == data
    again = files.adopt(str(source), len(data))  # taken again once it writes
    files.settled([again], None)
    source.unlink()  # (the lane's log and its files go once all is committed)
    assert files.path(again.name).read_bytes() == data and files.path(again.name).stat().st_nlink == 1


def test_a_file_of_another_size_or_gone_is_not_adopted_and_reserves_nothing(folder: Path) -> None:
    files = PayloadFiles(folder / "payloads", sync=False)
    source = _lane_file(folder, b"abc")
    with pytest.raises(ValueError, match="holds 3 bytes where 4 were written"):
        files.adopt(str(source), 4)
    with pytest.raises(FileNotFoundError):
        files.adopt(str(folder / "gone"), 3)
    assert files._pending == set() and files_in(folder) == set()


def test_a_file_on_another_file_system_is_copied(folder: Path) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == folder.stat().st_dev:
        pytest.skip("no tmpfs on another device than the test's folder")
    files = PayloadFiles(folder / "payloads", sync=False)
    data = os.urandom(5000)
    with tempfile.TemporaryDirectory(dir=shm) as other:
        source = _lane_file(Path(other), data)
        taken = files.adopt(str(source), len(data))  # os.link: EXDEV
        assert files.path(taken.name).read_bytes() == data
        assert source.stat().st_nlink == 1 and stat.S_IMODE(files.path(taken.name).stat().st_mode) == 0o600
