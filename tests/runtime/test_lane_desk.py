"""The service process's side of a lane (``flamepy_core.instance.lane.LaneDesk``), driven as the runtime drives
it: calls received on the transport's thread, run in arrival order on the serving thread.

What the server relies on: once it has an answer to a call it sent after it took the lane back, the lane's
log is complete (nothing is appended to it again); every task the lane admitted is run once and is in the
log before its answer; a task the lane refused did not run. A wrong implementation breaks these.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flamepy_core.contracts.errors import FlameError, FlameErrorCode
from flamepy_core.instance.lane import LaneDesk
from flamepy_core.wire.lane_log import FILE_BYTES, payload_path, read_lane_log
from flamepy_core.wire.payload_messages import read_enter_result, read_task_result
from flamepy_core.wire.proto import ext_pb2

SESSION = "s-1"


class Service:
    """The entrypoint: reverses its input, fails on b"fail"; records what ran."""

    def __init__(self) -> None:
        self.ran: list[str] = []

    def __call__(self, task_id: str, session_id: str, task_input: bytes | None) -> tuple[bytes | None, str | None]:
        assert session_id == SESSION
        self.ran.append(task_id)
        if task_input == b"fail":
            return None, "ValueError: fail"
        return (task_input or b"")[::-1], None


def grant(token: bytes, first: int, count: int, path: Path) -> bytes:
    return ext_pb2.GrantLaneRequest(
        token=token, first_task_id=first, count=count, log_path=str(path)
    ).SerializeToString()


def lane_task(token: bytes, task_id: int, data: bytes | None = b"abc") -> bytes:
    message = ext_pb2.LaneTask(token=token, task_id=task_id)
    if data is not None:
        message.input = data
    return message.SerializeToString()


def opened(desk: LaneDesk, token: bytes, first: int, count: int, path: Path) -> None:
    code, message, _ = read_enter_result(desk.open(desk.grant_received(grant(token, first, count, path))))
    assert code == 0, message


def refused(call: Callable[[], object]) -> str:
    with pytest.raises(FlameError) as caught:
        call()
    assert caught.value.code == FlameErrorCode.INVALID_STATE, caught.value
    return caught.value.message


@pytest.fixture
def service() -> Service:
    return Service()


@pytest.fixture
def desk(service: Service) -> LaneDesk:
    return LaneDesk(service, lambda: SESSION)


def test_a_task_runs_and_is_in_the_log_before_its_answer(desk: LaneDesk, service: Service, tmp_path: Path) -> None:
    log = tmp_path / "a.lane"
    opened(desk, b"T", 10, 5, log)
    answer = desk.run(desk.admit(lane_task(b"T", 10, b"hello")))
    assert read_task_result(answer)[:2] == (0, b"olleh")
    header, records, _ = read_lane_log(str(log))
    assert (header.session_id, header.token) == (SESSION, b"T")
    # That it began (with its input: the server shows it running), then what it gave.
    assert [(r.task_id, r.started, r.succeeded, r.input, r.output) for r in records] == [
        (10, True, False, b"hello", None),
        (10, False, True, None, b"olleh"),
    ]
    assert records[0].start_ms == records[1].start_ms <= records[1].end_ms
    failed = desk.run(desk.admit(lane_task(b"T", 11, b"fail")))
    assert read_task_result(failed)[0] == -1 and read_task_result(failed)[2] == "ValueError: fail"
    last = read_lane_log(str(log))[1][-1]
    assert (last.task_id, last.succeeded, last.output, last.message) == (11, False, None, "ValueError: fail")
    assert service.ran == ["10", "11"]


def test_large_payloads_travel_in_their_files_and_a_missing_input_file_refuses_the_task(
    desk: LaneDesk, service: Service, tmp_path: Path
) -> None:
    log = tmp_path / "a.lane"
    opened(desk, b"T", 1, 5, log)
    large = os.urandom(FILE_BYTES)
    Path(payload_path(log, 1, "input")).write_bytes(large)  # as the client writes it
    request = ext_pb2.LaneTask(token=b"T", task_id=1, input_size=len(large), output_file=True)
    answer = desk.run(desk.admit(request.SerializeToString()))
    assert read_task_result(answer) == (0, None, None, FILE_BYTES), "the output was not named by its size"
    assert Path(payload_path(log, 1, "output")).read_bytes() == large[::-1]
    began, ended = read_lane_log(str(log))[1]
    assert (began.input, began.input_size, ended.output, ended.output_size) == (None, FILE_BYTES, None, FILE_BYTES)
    # A client that does not read files gets the output in the answer (and the log names its file).
    inline = desk.run(desk.admit(ext_pb2.LaneTask(token=b"T", task_id=2, input=large).SerializeToString()))
    assert read_task_result(inline)[:2] == (0, large[::-1])
    # An input file that is not there whole: the task does not run, and nothing is logged for it.
    Path(payload_path(log, 3, "input")).write_bytes(b"short")
    for tid in (3, 4):
        missing = ext_pb2.LaneTask(token=b"T", task_id=tid, input_size=len(large)).SerializeToString()
        with pytest.raises(FlameError) as caught:
            desk.run(desk.admit(missing))
        assert caught.value.code == FlameErrorCode.INVALID_ARGUMENT and "did not run" in caught.value.message
    assert service.ran == ["1", "2"]
    assert [r.task_id for r in read_lane_log(str(log))[1]] == [1, 1, 2, 2]


def test_a_task_with_another_token_or_id_is_refused_and_does_not_run(
    desk: LaneDesk, service: Service, tmp_path: Path
) -> None:
    opened(desk, b"T", 10, 4, tmp_path / "a.lane")
    assert "token" in refused(lambda: desk.admit(lane_task(b"X", 10)))
    assert "task id 14" in refused(lambda: desk.admit(lane_task(b"T", 14)))  # past the block
    desk.run(desk.admit(lane_task(b"T", 12)))  # ids in any order (a pool's threads may reorder calls)...
    assert "task id 12" in refused(lambda: desk.admit(lane_task(b"T", 12)))  # ... each once
    desk.run(desk.admit(lane_task(b"T", 10)))  # one passed over still comes
    assert "task id 10" in refused(lambda: desk.admit(lane_task(b"T", 10)))
    desk.run(desk.admit(lane_task(b"T", 13)))
    assert service.ran == ["12", "10", "13"]


@settings(max_examples=200, deadline=None)
@given(ids=st.lists(st.integers(min_value=0, max_value=12), max_size=30))
def test_each_id_of_a_lane_is_taken_once_in_any_order_and_none_outside_it(ids: list[int]) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        desk = LaneDesk(Service(), lambda: SESSION)
        opened(desk, b"T", 3, 6, Path(folder) / "a.lane")  # ids 3 to 8
        seen: set[int] = set()
        for tid in ids:
            try:
                desk.admit(lane_task(b"T", tid))
                taken = True
            except FlameError as exc:
                assert exc.code == FlameErrorCode.INVALID_STATE
                taken = False
            assert taken == (3 <= tid < 9 and tid not in seen), (tid, seen)
            seen.add(tid)


def batch(token: bytes, ids: list[int], data: bytes = b"abc") -> bytes:
    return ext_pb2.TaskBatch(tasks=[lane_task(token, tid, data + b"%d" % tid) for tid in ids]).SerializeToString()


def test_a_batch_runs_in_order_each_result_logged_before_the_answer(
    desk: LaneDesk, service: Service, tmp_path: Path
) -> None:
    log = tmp_path / "a.lane"
    opened(desk, b"T", 1, 10, log)
    answer = desk.run_batch(desk.admit_batch(batch(b"T", [1, 2, 3])))
    results = [read_task_result(entry) for entry in ext_pb2.TaskBatch.FromString(answer).tasks]
    assert [(code, output) for code, output, _message, _size in results] == [(0, b"1cba"), (0, b"2cba"), (0, b"3cba")]
    assert service.ran == ["1", "2", "3"]
    ended = [r for r in read_lane_log(str(log))[1] if not r.started]
    assert [(r.task_id, r.output) for r in ended] == [(1, b"1cba"), (2, b"2cba"), (3, b"3cba")]


def test_a_batch_with_any_task_not_of_the_lane_is_refused_whole_and_none_runs(
    desk: LaneDesk, service: Service, tmp_path: Path
) -> None:
    opened(desk, b"T", 1, 10, tmp_path / "a.lane")
    assert "token" in refused(lambda: desk.admit_batch(batch(b"X", [1, 2])))
    assert "[11]" in refused(lambda: desk.admit_batch(batch(b"T", [3, 11])))
    desk.server_call_received()  # the server took the instance back
    refused(lambda: desk.admit_batch(batch(b"T", [4])))
    assert service.ran == []


def test_a_batch_whose_log_fails_midway_stops_the_process_with_the_log_saying_what_began(
    service: Service, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stopped: list[str] = []
    desk = LaneDesk(service, lambda: SESSION, stop_process=lambda: stopped.append("stopped"))
    log = tmp_path / "a.lane"
    opened(desk, b"T", 1, 10, log)
    calls = desk.admit_batch(batch(b"T", [1, 2, 3]))
    real_write = os.write
    writes: list[int] = []

    def third_fails(fd: int, data: bytes) -> int:  # 1 began; 1 ended and 2 began; 2's result is not taken
        writes.append(fd)
        return real_write(fd, data) if len(writes) <= 2 else full_disk(fd, data)

    with monkeypatch.context() as patched:
        patched.setattr(os, "write", third_fails)
        with pytest.raises(OSError):
            desk.run_batch(calls)
    assert stopped == ["stopped"] and service.ran == ["1", "2"]
    records = [(r.task_id, r.started) for r in read_lane_log(str(log))[1]]
    assert records == [(1, True), (1, False), (2, True)], "the server must see 1 done and 2 begun, 3 never"


def test_a_batch_whose_first_task_cannot_begin_runs_none_and_closes_the_lane(
    desk: LaneDesk, service: Service, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened(desk, b"T", 1, 10, tmp_path / "a.lane")
    calls = desk.admit_batch(batch(b"T", [1, 2]))
    with monkeypatch.context() as patched:
        patched.setattr(os, "write", full_disk)
        assert "cannot be written" in refused(lambda: desk.run_batch(calls))
    assert service.ran == []
    refused(lambda: desk.admit_batch(batch(b"T", [3])))


def test_a_call_from_the_server_closes_the_lane_when_received(desk: LaneDesk, tmp_path: Path) -> None:
    log = tmp_path / "a.lane"
    opened(desk, b"T", 1, 100, log)
    before = desk.admit(lane_task(b"T", 1))  # received before the server's call: it runs
    desk.server_call_received()
    assert "took its instance back" in refused(lambda: desk.admit(lane_task(b"T", 2)))
    desk.run(before)
    desk.server_call_runs()  # the server's call runs after the lane's task: the log is complete
    assert [r.task_id for r in read_lane_log(str(log))[1] if not r.started] == [1]


def test_a_grant_overtaken_by_a_server_call_opens_nothing(desk: LaneDesk, tmp_path: Path) -> None:
    pending = desk.grant_received(grant(b"T", 1, 10, tmp_path / "a.lane"))
    desk.server_call_received()  # a task the server sent right after its grant
    code, message, _ = read_enter_result(desk.open(pending))
    assert code != 0 and "later call" in message
    refused(lambda: desk.admit(lane_task(b"T", 1)))


def test_a_grant_of_no_ids_closes_the_lane_and_opens_none(desk: LaneDesk, tmp_path: Path) -> None:
    opened(desk, b"T", 1, 10, tmp_path / "a.lane")
    code, _message, _ = read_enter_result(desk.open(desk.grant_received(grant(b"", 0, 0, tmp_path / "none"))))
    assert code == 0
    refused(lambda: desk.admit(lane_task(b"T", 1)))
    assert not (tmp_path / "none").exists()


def test_no_lane_outside_a_session(service: Service, tmp_path: Path) -> None:
    desk = LaneDesk(service, lambda: None)
    code, message, _ = read_enter_result(desk.open(desk.grant_received(grant(b"T", 1, 10, tmp_path / "a.lane"))))
    assert code != 0 and "no session" in message


def test_a_task_the_log_cannot_record_does_not_run_and_closes_the_lane(
    desk: LaneDesk, service: Service, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened(desk, b"T", 1, 10, tmp_path / "a.lane")
    call = desk.admit(lane_task(b"T", 1))
    with monkeypatch.context() as patched:
        patched.setattr(os, "write", full_disk)
        message = refused(lambda: desk.run(call))
    assert "cannot be written" in message and service.ran == []
    refused(lambda: desk.admit(lane_task(b"T", 2)))


def test_a_result_the_log_cannot_take_stops_the_process_before_any_answer(
    service: Service, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stopped: list[str] = []
    desk = LaneDesk(service, lambda: SESSION, stop_process=lambda: stopped.append("stopped"))
    opened(desk, b"T", 1, 10, tmp_path / "a.lane")
    call = desk.admit(lane_task(b"T", 1))
    real_write = os.write
    writes: list[int] = []

    def second_fails(fd: int, data: bytes) -> int:  # the record that it began goes in, its result does not
        writes.append(fd)
        return real_write(fd, data) if len(writes) == 1 else full_disk(fd, data)

    with monkeypatch.context() as patched:
        patched.setattr(os, "write", second_fails)
        with pytest.raises(OSError):
            desk.run(call)
    assert stopped == ["stopped"] and service.ran == ["1"]
    [began] = read_lane_log(str(tmp_path / "a.lane"))[1]
    assert began.started, "the log holds more than that the task began"


def full_disk(fd: int, data: bytes) -> int:
    raise OSError(28, "No space left on device")


# One interleaving after another: grants, the server's calls and lane tasks arrive on the receiving thread in
# any order, and the serving thread runs what was queued, in order, whenever it gets to it.
EVENTS = st.lists(st.sampled_from(["grant", "server call", "lane task", "serve one"]), max_size=40)


@settings(max_examples=150, deadline=None)
@given(events=EVENTS)
def test_once_a_server_call_has_run_nothing_is_added_to_the_lanes_it_closed(events: list[str]) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        service = Service()
        desk = LaneDesk(service, lambda: SESSION)
        queue: deque[Callable[[], object]] = deque()
        logs: list[Path] = []
        token = b""
        next_id = 0
        complete: dict[Path, int] = {}
        """Each log closed by a server call that ran, and how many records it had then."""
        admitted: list[int] = []

        def serve_one() -> None:
            queue.popleft()()
            for path, count in complete.items():
                assert len(read_lane_log(str(path))[1]) == count, "a task was appended after the lane closed"

        def server_call() -> None:
            desk.server_call_runs()
            for path in logs:
                if path.exists() and path not in complete:
                    complete[path] = len(read_lane_log(str(path))[1])

        for index, event in enumerate(events):
            if event == "grant":
                path = Path(folder) / f"{index}.lane"
                token = b"t%d" % index
                logs.append(path)
                pending = desk.grant_received(grant(token, next_id, 1000, path))
                queue.append(lambda pending=pending: desk.open(pending))
            elif event == "server call":
                desk.server_call_received()
                queue.append(server_call)
            elif event == "lane task":
                try:
                    call = desk.admit(lane_task(token, next_id))
                except FlameError:
                    continue
                admitted.append(next_id)
                next_id += 1
                queue.append(lambda call=call: desk.run(call))
            elif queue:
                serve_one()
        while queue:
            serve_one()
        ran = [int(task_id) for task_id in service.ran]
        assert ran == admitted, "an admitted task did not run once, in order"
        records = [r for path in logs if path.exists() for r in read_lane_log(str(path))[1]]
        assert sorted(r.task_id for r in records if not r.started) == admitted, "a task's result is not logged"
        assert sorted(r.task_id for r in records if r.started) == admitted, "a task ran before its start was logged"
