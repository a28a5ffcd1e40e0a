"""The engine's session/task rules against a plain model, driven by a hypothesis state machine.

Each step is checked against the model: results, counters, task states and error codes. A ``restart``
rule closes the store and builds a new engine on the same sqlite file, so persistence is checked by the
same machine (what survives a server restart must equal what the model says).
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from flamepy_core.contracts.errors import FlameError, FlameErrorCode
from flamepy_core.engine.ahead_log import SUFFIX
from flamepy_core.engine.state import Engine
from flamepy_core.engine.store import Store
from flamepy_core.wire.proto import types_pb2 as pb

APPS = st.sampled_from(["a", "b"])
SESSIONS = st.sampled_from(["s1", "s2", "s3"])
S = pb.TaskState


@dataclass
class ModelSession:
    app: str
    open: bool = True
    tasks: dict[int, int] = field(default_factory=dict)  # id -> state
    outputs: dict[int, bytes] = field(default_factory=dict)


def expect_error(code: FlameErrorCode, fn, *args) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(FlameError) as info:
        fn(*args)
    assert info.value.code == code, f"{fn.__name__}{args}: expected {code.name}, got {info.value!r}"


class EngineMachine(RuleBasedStateMachine):
    ahead_log = False

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="fe-"))
        self.store = Store(self.dir / "flame.db", ahead_log=self.ahead_log)
        self.engine = Engine(self.store)
        self.apps: set[str] = set()
        self.sessions: dict[str, ModelSession] = {}

    def teardown(self) -> None:
        self.store.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    @rule(name=APPS)
    def register(self, name: str) -> None:
        spec = pb.ApplicationSpec(command="python")
        if name in self.apps:
            expect_error(FlameErrorCode.ALREADY_EXISTS, self.engine.register_application, name, spec)
            return
        app = self.engine.register_application(name, spec)
        assert app.metadata.name == name and app.spec.max_instances > 0
        self.apps.add(name)

    @rule(name=APPS)
    def unregister(self, name: str) -> None:
        if name not in self.apps:
            expect_error(FlameErrorCode.NOT_FOUND, self.engine.unregister_application, name)
            return
        if any(s.app == name and s.open for s in self.sessions.values()):
            expect_error(FlameErrorCode.INVALID_STATE, self.engine.unregister_application, name)
            return
        self.engine.unregister_application(name)
        self.apps.discard(name)
        self.sessions = {k: v for k, v in self.sessions.items() if v.app != name}

    @rule(sid=SESSIONS, app=APPS)
    def create_session(self, sid: str, app: str) -> None:
        spec = pb.SessionSpec(application=app)
        if app not in self.apps:
            expect_error(FlameErrorCode.NOT_FOUND, self.engine.create_session, sid, spec)
        elif sid in self.sessions:
            expect_error(FlameErrorCode.ALREADY_EXISTS, self.engine.create_session, sid, spec)
        else:
            session = self.engine.create_session(sid, spec)
            assert session.status.state == pb.SessionState.Open
            self.sessions[sid] = ModelSession(app)

    @rule(sid=SESSIONS)
    def open_session(self, sid: str) -> None:
        model = self.sessions.get(sid)
        if model is None:
            expect_error(FlameErrorCode.NOT_FOUND, self.engine.open_session, sid, None)
        elif not model.open:
            expect_error(FlameErrorCode.INVALID_STATE, self.engine.open_session, sid, None)
        else:
            assert self.engine.open_session(sid, None).spec.application == model.app
            other = "b" if model.app == "a" else "a"
            expect_error(
                FlameErrorCode.INVALID_ARGUMENT, self.engine.open_session, sid, pb.SessionSpec(application=other)
            )

    @rule(sid=SESSIONS, data=st.binary(max_size=16))
    def create_task(self, sid: str, data: bytes) -> None:
        model = self.sessions.get(sid)
        if model is None:
            expect_error(FlameErrorCode.NOT_FOUND, self.engine.create_task, sid, data)
        elif not model.open:
            expect_error(FlameErrorCode.INVALID_STATE, self.engine.create_task, sid, data)
        else:
            task = self.engine.create_task(sid, data)
            tid = len(model.tasks) + 1
            assert task.metadata.id == str(tid), "task ids are sequential per session from 1"
            assert task.spec.input == data
            model.tasks[tid] = S.Pending

    @precondition(lambda self: any(s.open and S.Pending in s.tasks.values() for s in self.sessions.values()))
    @rule(data=st.data(), succeed=st.booleans())
    def run_one(self, data: st.DataObject, succeed: bool) -> None:
        """What an instance driver does: take the oldest pending task, then settle it."""
        sid = data.draw(
            st.sampled_from(sorted(k for k, s in self.sessions.items() if s.open and S.Pending in s.tasks.values()))
        )
        model = self.sessions[sid]
        task = self.engine.take_task(sid, timeout=0)
        assert task is not None
        oldest = min(t for t, state in model.tasks.items() if state == S.Pending)
        assert int(task.metadata.id) == oldest, "tasks are dispatched in submission order"
        if succeed:
            out = task.spec.input[::-1]
            self.engine.complete_task(sid, task.metadata.id, out)
            model.tasks[oldest] = S.Succeed
            model.outputs[oldest] = out
        else:
            self.engine.fail_task(sid, task.metadata.id, "boom ü")
            model.tasks[oldest] = S.Failed

    @rule(sid=SESSIONS)
    def close(self, sid: str) -> None:
        model = self.sessions.get(sid)
        if model is None:
            expect_error(FlameErrorCode.NOT_FOUND, self.engine.close_session, sid)
            return
        closed = self.engine.close_session(sid)
        assert closed.status.state == pb.SessionState.Closed
        model.open = False
        for tid, state in model.tasks.items():
            if state == S.Pending:
                model.tasks[tid] = S.Cancelled

    @rule()
    def restart(self) -> None:
        self.store.close()
        self.store = Store(self.dir / "flame.db", ahead_log=self.ahead_log)
        self.engine = Engine(self.store)

    @rule(sid=SESSIONS, data=st.binary(max_size=16), first=st.sampled_from(["nothing", "create", "complete"]))
    def crash(self, sid: str, data: bytes, first: str) -> None:
        """The server dies right after a call (the invariant's reads apply the ahead log: a crash after
        them alone would find it applied): its files as they are then (no transaction or append under
        way), read by a new server."""
        model = self.sessions.get(sid)
        if first == "create":
            self.create_task(sid, data)
        elif first == "complete" and model is not None and model.open and S.Pending in model.tasks.values():
            task = self.engine.take_task(sid, timeout=0)
            assert task is not None
            self.engine.complete_task(sid, task.metadata.id, b"done")
            model.tasks[int(task.metadata.id)] = S.Succeed
            model.outputs[int(task.metadata.id)] = b"done"
        crashed = Path(tempfile.mkdtemp(prefix="fe-crash-"))
        with self.store._log_lock, self.store._conn_lock:
            for suffix in ("", "-wal", SUFFIX):
                if Path(f"{self.store.path}{suffix}").exists():
                    shutil.copyfile(f"{self.store.path}{suffix}", crashed / f"flame.db{suffix}")
        self.store.close()
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir = crashed
        self.store = Store(self.dir / "flame.db", ahead_log=self.ahead_log)
        self.engine = Engine(self.store)

    @invariant()
    def counters_and_tasks_match(self) -> None:
        for sid, model in self.sessions.items():
            session = self.engine.get_session(sid)
            status = session.status
            counts = {
                s: list(model.tasks.values()).count(s) for s in (S.Pending, S.Running, S.Succeed, S.Failed, S.Cancelled)
            }
            assert (status.pending, status.running, status.succeed, status.failed, status.cancelled) == (
                counts[S.Pending],
                counts[S.Running],
                counts[S.Succeed],
                counts[S.Failed],
                counts[S.Cancelled],
            ), f"counters of {sid}"
            assert (status.state == pb.SessionState.Open) == model.open
            tasks = {int(t.metadata.id): t for t in self.engine.list_tasks(sid)}
            assert {t: x.status.state for t, x in tasks.items()} == model.tasks
            for tid, out in model.outputs.items():
                assert tasks[tid].spec.output == out
        listed = {s.metadata.id for s in self.engine.list_sessions()}
        assert listed == set(self.sessions)
        assert {a.metadata.name for a in self.engine.list_applications()} == self.apps


TestEngineMachine = EngineMachine.TestCase
TestEngineMachine.settings = settings(max_examples=40, stateful_step_count=30, deadline=None)


class LoggedEngineMachine(EngineMachine):
    """The same rules on the server's store, with its ahead log: what the engine was told is committed is
    read back, across restarts and crashes, as the model says."""

    ahead_log = True


TestLoggedEngineMachine = LoggedEngineMachine.TestCase
TestLoggedEngineMachine.settings = settings(max_examples=40, stateful_step_count=30, deadline=None)
