"""flamepy.ext.v1 (RunTask, WatchSession) and the client's fallback to plain flame.v1.

The server here is the real engine behind the in-memory transport; a thread plays the instance (takes
tasks, answers them), so the client paths are tested without processes. The same assertions run with
and without the extension handlers: results must not depend on which path the client took.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import wait
from pathlib import Path

import pytest
from flamepy_transports.inmem.transport import InMemoryTransport

from flamepy_core.client.connection import Connection
from flamepy_core.client.session import TaskFailedError, TaskFuture
from flamepy_core.contracts.errors import FlameError, FlameErrorCode
from flamepy_core.engine.frontend import ext_handlers, frontend_handlers
from flamepy_core.engine.state import Engine
from flamepy_core.engine.store import Store
from flamepy_core.model import SessionAttributes
from flamepy_core.transport_kit import adapt_handlers
from flamepy_core.wire.proto import types_pb2 as pb


class FakeInstance(threading.Thread):
    """Answers every task of a session: the reversed input, or a failure for b"fail"."""

    def __init__(self, engine: Engine, session_id: str) -> None:
        super().__init__(daemon=True)
        self.engine, self.session_id = engine, session_id
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                task = self.engine.take_task(self.session_id, timeout=0.05)
            except FlameError:
                return
            if task is None:
                continue
            if task.spec.input == b"fail":
                self.engine.fail_task(self.session_id, task.metadata.id, "ValueError: asked to fail")
            else:
                self.engine.complete_task(self.session_id, task.metadata.id, task.spec.input[::-1])


@pytest.fixture(params=["with-extensions", "flame-v1-only"])
def setup(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Connection, Engine, bool]]:
    store = Store(tmp_path / "flame.db")
    engine = Engine(store)
    engine.register_application("app", pb.ApplicationSpec(command="python"))
    handlers = frontend_handlers(engine)
    with_ext = request.param == "with-extensions"
    if with_ext:
        handlers.update(ext_handlers(engine))
    transport = InMemoryTransport()
    server = transport.serve("inmem://ext", adapt_handlers(handlers, transport.capabilities))
    conn = Connection("inmem://ext", transport.connect("inmem://ext"))
    try:
        yield conn, engine, with_ext
    finally:
        server.stop()
        store.close()


def test_invoke_and_run_give_the_same_answers_on_both_paths(setup: tuple[Connection, Engine, bool]) -> None:
    conn, engine, with_ext = setup
    session = conn.create_session(SessionAttributes("app", id="s1"))
    worker = FakeInstance(engine, "s1")
    worker.start()
    try:
        assert session.invoke(b"abc") == b"cba"
        assert conn.has_extensions is with_ext
        futures = [session.run(bytes([i, 1])) for i in range(60)]
        _done, not_done = wait(futures, timeout=20)
        assert not not_done
        assert [f.result() for f in futures] == [bytes([1, i]) for i in range(60)]
        with pytest.raises(TaskFailedError) as info:
            session.invoke(b"fail")
        assert "asked to fail" in info.value.message
        failing = session.run(b"fail")
        assert isinstance(failing.exception(timeout=10), TaskFailedError)
        assert engine.get_session("s1").status.succeed == 61
    finally:
        worker.stop.set()


def test_invoke_timeout_says_the_task_keeps_running(setup: tuple[Connection, Engine, bool]) -> None:
    conn, engine, _ = setup
    session = conn.create_session(SessionAttributes("app", id="s2"))  # no instance: the task never runs
    with pytest.raises(FlameError) as info:
        session.invoke(b"x", timeout=0.3)
    assert info.value.code == FlameErrorCode.DEADLINE_EXCEEDED
    assert "keeps running" in info.value.message
    assert engine.get_session("s2").status.pending == 1


def test_pending_futures_settle_when_the_session_closes(setup: tuple[Connection, Engine, bool]) -> None:
    conn, _engine, _ = setup
    session = conn.create_session(SessionAttributes("app", id="s3"))
    futures = [session.run(b"x") for _ in range(3)]
    conn.close_session("s3")
    for future in futures:
        error = future.exception(timeout=10)
        assert isinstance(error, FlameError) and "cancelled" in error.message


def test_runs_from_many_threads_get_distinct_ids_and_their_own_results(setup: tuple[Connection, Engine, bool]) -> None:
    """Submissions from several threads go out in shared batches: each future still learns its own
    task's id (``task_id``) and gets its own task's output."""
    conn, engine, _ = setup
    session = conn.create_session(SessionAttributes("app", id="m1"))
    worker = FakeInstance(engine, "m1")
    worker.start()
    futures: dict[bytes, TaskFuture] = {}
    lock = threading.Lock()

    def submit(thread: int) -> None:
        for i in range(40):
            data = f"{thread}-{i}".encode()
            future = session.run(data)
            with lock:
                futures[data] = future

    try:
        threads = [threading.Thread(target=submit, args=(t,)) for t in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        _done, not_done = wait(list(futures.values()), timeout=30)
        assert not not_done
        ids = {data: int(future.task_id) for data, future in futures.items()}
        assert sorted(ids.values()) == list(range(1, 161))
        for data, future in futures.items():
            assert future.result() == data[::-1]
            task = engine.get_task("m1", str(ids[data]))
            assert task.spec.input == data
    finally:
        worker.stop.set()


def test_a_refused_submission_fails_its_future_and_its_task_id(setup: tuple[Connection, Engine, bool]) -> None:
    """A session closed behind this client's back: the batch is refused, the future holds the refusal, and
    asking the future for its task's id raises it too (it was never created)."""
    conn, engine, _ = setup
    conn.create_session(SessionAttributes("app", id="r1"))
    session = conn.open_session("r1")
    engine.close_session("r1")
    future = session.run(b"x")
    error = future.exception(timeout=10)
    assert isinstance(error, FlameError) and error.code == FlameErrorCode.INVALID_STATE
    with pytest.raises(FlameError) as info:
        _ = future.task_id
    assert info.value is error
    with pytest.raises(FlameError):
        session.run(b"y")  # the connection remembers the refusal: raised at once


def test_refusals_reported_in_band_are_raised(tmp_path: Path) -> None:
    """A Flame server answers a refused register/unregister with Result(return_code=-1), not a status."""
    from flamepy_core.contracts.transport import UnaryHandler
    from flamepy_core.wire.methods import FRONTEND

    def refuse(message: str) -> UnaryHandler:
        return UnaryHandler(lambda data, ctx: pb.Result(return_code=-1, message=message).SerializeToString())

    transport = InMemoryTransport()
    handlers = {
        FRONTEND["RegisterApplication"].path: refuse("application echo already exists"),
        FRONTEND["UnregisterApplication"].path: refuse("2 open sessions in the application"),
        FRONTEND["UpdateApplication"].path: refuse("something else went wrong"),
    }
    server = transport.serve("inmem://flame-like", handlers)
    conn = Connection("inmem://flame-like", transport.connect("inmem://flame-like"))
    try:
        cases = [
            (lambda: conn.register_application("echo", {"command": "python"}), FlameErrorCode.ALREADY_EXISTS),
            (lambda: conn.unregister_application("echo"), FlameErrorCode.INVALID_STATE),
            (lambda: conn.update_application("echo", {"command": "python"}), FlameErrorCode.INTERNAL),
        ]
        for call, code in cases:
            with pytest.raises(FlameError) as info:
                call()
            assert info.value.code == code
            assert info.value.message.startswith("failed to ")
    finally:
        server.stop()


def test_cancel_goes_through_the_extension_and_says_so_without_it(setup: tuple[Connection, Engine, bool]) -> None:
    conn, engine, with_ext = setup
    session = conn.create_session(SessionAttributes("app", id="c1"))  # no instance: its tasks stay pending
    future, other = session.run(b"x"), session.run(b"y")
    if with_ext:
        assert future.cancel() is True and future.cancelled()
        done, _ = wait([future], timeout=5)
        assert done == {future}, "concurrent.futures.wait sees a cancelled future"
        cancelled = session.cancel_task(other.task_id)
        assert cancelled.state.name == "CANCELLED" and cancelled.input is None
        error = other.exception(timeout=10)  # cancelled by another call: the error says by whom
        assert isinstance(error, FlameError) and "cancelled by Session.cancel_task in process" in error.message
        assert engine.get_session("c1").status.cancelled == 2
        session.close(force=True)
        assert engine.get_session("c1").status.state == pb.SessionState.Closed
        return
    # A Flame session manager has no cancel: the future cannot be cancelled, and the calls say why.
    assert future.cancel() is False and not future.done()
    for call in (lambda: session.cancel_task(future.task_id), lambda: session.close(force=True)):
        with pytest.raises(FlameError) as info:
            call()
        assert info.value.code == FlameErrorCode.UNIMPLEMENTED
        assert "cannot cancel tasks (flame.v1 has no such call" in info.value.message
    session.close()  # the plain close cancels what waits, as Flame's does
    assert isinstance(future.exception(timeout=10), FlameError)


def test_a_purged_output_is_an_error_never_a_none_result(tmp_path: Path) -> None:
    """A result read back from the store after its retention (a watcher's replay) is NOT_FOUND, saying why."""
    from flamepy_core.client.session import TaskFuture
    from flamepy_core.engine.retention import Retention

    store = Store(tmp_path / "flame.db")
    engine = Engine(store)
    engine.register_application("app", pb.ApplicationSpec(command="python"))
    engine.create_session("s", pb.SessionSpec(application="app"))
    engine.create_task("s", b"in")
    task = engine.take_task("s", timeout=0)
    assert task is not None
    engine.complete_task("s", task.metadata.id, b"out")
    Retention(store, retention=0).collect(older_than=-1)  # everything finished is due
    transport = InMemoryTransport()
    handlers = {**frontend_handlers(engine), **ext_handlers(engine)}
    server = transport.serve("inmem://purged", adapt_handlers(handlers, transport.capabilities))
    conn = Connection("inmem://purged", transport.connect("inmem://purged"))
    try:
        session = conn.open_session("s")
        assert session.get_task("1").is_purged() and session.get_task("1").output is None
        future = TaskFuture(session, "1")
        assert conn.watches.add(session, 1, future)  # what run() does: the watcher replays it from the store
        error = future.exception(timeout=10)
        assert isinstance(error, FlameError) and error.code == FlameErrorCode.NOT_FOUND
        assert "the output of task 1 of session s is no longer kept: input and output purged" in error.message
    finally:
        conn.close()
        server.stop()
        store.close()
