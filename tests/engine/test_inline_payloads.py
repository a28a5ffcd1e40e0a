"""Where a task's payloads are kept: small ones in the task's own row, large ones in rows of their own.

``INLINE_PAYLOAD_BYTES`` decides it for the input (at creation) and the output (at the result), on both
ways a task is created (``create_task``, acknowledged at once; ``run_task``, committed with its result).
Wherever they are kept, a task reads back the same, from memory and from the store after a restart.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from flamepy_core.engine.state import INLINE_PAYLOAD_BYTES, Engine
from flamepy_core.engine.store import Store
from flamepy_core.wire.proto import types_pb2 as pb

SIZES = st.sampled_from([0, 1, INLINE_PAYLOAD_BYTES - 1, INLINE_PAYLOAD_BYTES, INLINE_PAYLOAD_BYTES + 1, 5000])


def _engine(path: Path) -> Engine:
    engine = Engine(Store(path))
    if engine.store.query("SELECT 1 FROM applications WHERE name = 'app'") == []:
        engine.register_application("app", pb.ApplicationSpec(command="python"))
    return engine


def _where(store: Store, tid: int, kind: int, column: str) -> str:
    """Where the store keeps the task's payload of ``kind``: "row", "own row" or "none"."""
    (inline,) = store.query(f"SELECT {column} FROM tasks WHERE session_id = 's' AND id = ?", tid)[0]
    own = store.query("SELECT 1 FROM task_payloads WHERE session_id = 's' AND id = ? AND kind = ?", tid, kind)
    assert not (inline is not None and own), "a payload kept twice"
    return "row" if inline is not None else "own row" if own else "none"


def _expected(payload: bytes | None) -> str:
    if payload is None:
        return "none"
    return "row" if len(payload) <= INLINE_PAYLOAD_BYTES else "own row"


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.tuples(st.one_of(st.none(), SIZES), st.one_of(st.none(), SIZES), st.booleans()), min_size=1, max_size=6)
)
def test_payloads_are_kept_by_size_and_read_back_the_same(tasks: list[tuple[int | None, int | None, bool]]) -> None:
    with tempfile.TemporaryDirectory(prefix="fi-") as folder:
        path = Path(folder) / "flame.db"
        engine = _engine(path)
        engine.create_session("s", pb.SessionSpec(application="app"))
        made: list[tuple[int, bytes | None, bytes | None]] = []
        for index, (input_size, output_size, as_run_task) in enumerate(tasks):
            task_input = None if input_size is None else bytes([index % 256]) * input_size
            output = None if output_size is None else bytes([(index + 1) % 256]) * output_size
            if as_run_task:
                engine.run_task("s", task_input, lambda _task, _output, _status, _error: None)
            else:
                engine.create_task("s", task_input)
            started = engine.start_next("s")
            assert started is not None
            tid = started[0]
            assert engine.finish_task("s", tid, output=output)
            made.append((tid, task_input, output))
        engine.store.flush()  # results may linger for their group commit
        in_memory = {tid: engine.get_task("s", str(tid)) for tid, _, _ in made}
        for tid, task_input, output in made:
            assert _where(engine.store, tid, 0, "input") == _expected(task_input), (tid, task_input)
            assert _where(engine.store, tid, 1, "output") == _expected(output), (tid, output)
        engine.store.close()

        again = _engine(path)  # a restart: the tasks are read from the store
        try:
            for tid, task_input, output in made:
                task = again.get_task("s", str(tid))
                assert task.spec.HasField("input") == (task_input is not None)
                assert task.spec.input == (task_input or b"")
                assert task.spec.HasField("output") == (output is not None)
                assert task.spec.output == (output or b"")
                assert task.spec == in_memory[tid].spec
                assert task.status.state == pb.TaskState.Succeed
        finally:
            again.store.close()
