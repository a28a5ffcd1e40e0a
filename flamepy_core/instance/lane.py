"""The service process's side of a lane: the one lane it holds open, which tasks it takes, and when it closes.

Why. A warm invoke through the server crosses it twice, and the server's part of it is most of what the
invoke costs above the raw two-hop floor (docs/benchmarks.md). A lane takes the server off that path: the
server lends this instance to one client (``GrantLane``: a token, a block of task ids, a log file), the
client sends its tasks here itself (``RunLaneTask``), and this process makes each result durable by
appending it to the lane's log (:mod:`flamepy_core.wire.lane_log`) before it answers. The server records
the tasks from that log later.

When a lane closes. The server owns the instance: any call it sends (a task, a batch, a withdrawal, a
leave, another grant) closes the lane at once, *when it is received*. A lane task received before that
call runs before it (the serving thread runs calls in arrival order), and is in the log before the
server's call is answered; one received after is refused (``INVALID_STATE``: it did not run, the
client sends it through the server). So once the server has an answer to a call it sent after it took
the lane back, the lane's log is complete: nothing is ever appended to it again.

Threads. :meth:`LaneDesk.admit` and the ``*_received`` methods run on the transport's receiving thread;
:meth:`LaneDesk.open`, :meth:`LaneDesk.run` and :meth:`LaneDesk.close_stale` on the serving thread only
(the log's writer is used there alone).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from flamepy_core.contracts.errors import FlameError, FlameErrorCode
from flamepy_core.wire.lane_log import LaneLogWriter, LaneResult, payload_path
from flamepy_core.wire.payload_handoff import read_payload_file
from flamepy_core.wire.payload_messages import (
    read_grant_lane,
    read_lane_task,
    read_task_batch,
    result,
    task_batch,
    task_result,
)

__all__ = ["LaneDesk", "LaneGrant"]

log = logging.getLogger(__name__)

RunTask = Callable[[str, str, "bytes | None"], "tuple[bytes | bytearray | memoryview | None, str | None]"]
"""``(task_id, session_id, input) -> (output, None)`` or ``(None, failure message)``: the service's entrypoint."""


@dataclass(frozen=True, slots=True)
class LaneGrant:
    """A ``GrantLane`` as received: what the lane will be, and the epoch it was received in."""

    token: bytes
    first: int
    end: int
    log_path: str
    epoch: int


@dataclass(slots=True)
class _Lane:
    token: bytes
    next: int
    """Every id below it was taken, but those in ``skipped``."""
    end: int
    epoch: int
    session_id: str
    writer: LaneLogWriter
    skipped: set[int] = field(default_factory=set)
    """Ids passed over by a later one: a client sends many tasks at a time (``run()``), and a transport
    whose server reads each call on a thread of a pool may hand them over out of order."""

    def take(self, tid: int) -> bool:
        """Take ``tid`` for a task: each of the lane's ids once, in any order."""
        if tid == self.next < self.end:  # (the usual case first)
            self.next = tid + 1
        elif self.next < tid < self.end:
            self.skipped.update(range(self.next, tid))
            self.next = tid + 1
        elif tid in self.skipped:
            self.skipped.discard(tid)
        else:
            return False
        return True


@dataclass(frozen=True, slots=True)
class LaneCall:
    """A lane task admitted (received while its lane was open): it runs, in turn, on the serving thread."""

    task_id: int
    input: bytes | None
    lane: _Lane
    input_size: int | None = None
    """Set: the client wrote the input to its payload file beside the lane's log (``input`` is None)."""
    output_file: bool = False
    """The client reads a large output from its payload file (the answer names only its size)."""


LOG_FAILED_EXIT = 75
"""The exit status of a service process whose lane's log could not take a result (``EX_TEMPFAIL``)."""


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _began(call: LaneCall, start: int) -> LaneResult:
    """The record that a lane task began (its input with it: the server can run it again)."""
    return LaneResult(call.task_id, start, start, False, call.input, None, None, True, call.input_size)


def _closed(why: str) -> FlameError:
    return FlameError(
        FlameErrorCode.INVALID_STATE,
        f"the lane is closed ({why}); the task did not run: send it through the server",
    )


class LaneDesk:
    """The lane this instance holds open, if any, and the tasks it admits (see the module's docstring)."""

    def __init__(
        self,
        run_task: RunTask,
        session_id: Callable[[], str | None],
        stop_process: Callable[[], None] = lambda: os._exit(LOG_FAILED_EXIT),
    ) -> None:
        self._run_task = run_task
        self._stop_process = stop_process
        self._session_id = session_id
        self._lock = threading.Lock()
        self._epoch = 0
        """Bumped by every call from the server as it is received: a lane opened in an older one is closed."""
        self._open: _Lane | None = None
        """The lane granted last (closed once ``_epoch`` moved past its own)."""
        self._granted = False
        """A grant was ever received: until then no lane can be open, and a server call need not count."""

    # -- the receiving thread ---------------------------------------------------------------------------

    def server_call_received(self) -> None:
        """A call from the server arrived: the lane open now (if any) takes no task received after it."""
        if self._granted:  # (every task of the server's path asks: one check for a process never lent)
            with self._lock:
                self._epoch += 1

    def server_call_runs(self) -> None:
        """A call from the server is about to run on the serving thread (received then, when the server's
        own transport hands it there): the lane is closed, and its log with it."""
        if self._granted:
            with self._lock:
                self._epoch += 1
            if self._open is not None:
                self.close_stale()

    def grant_received(self, data: bytes) -> LaneGrant:
        """A ``GrantLane`` arrived: it closes the lane open (as any call from the server does) and names the
        next one, opened when the serving thread reaches it (:meth:`open`)."""
        with self._lock:
            self._granted = True
            self._epoch += 1
            epoch = self._epoch
        token, first, count, log_path = read_grant_lane(data)
        return LaneGrant(token, first, first + count, log_path, epoch)

    def admit(self, data: bytes) -> LaneCall:
        """A ``RunLaneTask`` arrived: the call to run, or ``INVALID_STATE`` (it will not run)."""
        try:
            request = read_lane_task(data)
        except ValueError as exc:  # the client's bytes, not a bug of ours
            raise FlameError(FlameErrorCode.INVALID_ARGUMENT, f"a RunLaneTask request did not parse: {exc}") from None
        tid = request.task_id
        with self._lock:
            lane = self._open
            if lane is None or lane.epoch != self._epoch:
                raise _closed("the server took its instance back")
            if request.token != lane.token:
                raise _closed("another lane's token")
            if not lane.take(tid):
                raise _closed(
                    f"task id {tid} is not one of the lane's ids not used yet ({lane.next} to {lane.end - 1})"
                )
        return LaneCall(tid, request.input, lane, request.input_size, request.output_file)

    def admit_batch(self, data: bytes) -> list[LaneCall]:
        """A ``RunLaneTasks`` arrived: its calls, run in turn on the serving thread; or ``INVALID_STATE`` for
        all of them (none will run)."""
        try:
            requests = [read_lane_task(entry) for entry in read_task_batch(data)]
        except ValueError as exc:  # the client's bytes, not a bug of ours
            raise FlameError(FlameErrorCode.INVALID_ARGUMENT, f"a RunLaneTasks request did not parse: {exc}") from None
        if any(request.input_size is not None for request in requests):
            raise FlameError(FlameErrorCode.INVALID_ARGUMENT, "a RunLaneTasks task names an input file: send it alone")
        with self._lock:
            lane = self._open
            if lane is None or lane.epoch != self._epoch:
                raise _closed("the server took its instance back")
            if any(request.token != lane.token for request in requests):
                raise _closed("another lane's token")
            refused = [request.task_id for request in requests if not lane.take(request.task_id)]
            if refused:  # (the ids taken with them are not used: none of these tasks runs)
                raise _closed(f"task ids {refused} are not among the lane's unused ids")
        return [LaneCall(request.task_id, request.input, lane, None, request.output_file) for request in requests]

    # -- the serving thread -----------------------------------------------------------------------------

    def open(self, grant: LaneGrant, _data: bytes = b"") -> bytes:
        """Open the lane ``grant`` names (``flame.v1.Result``); refused when another call from the server came
        after the grant, which then closed it already."""
        self.close_stale()
        if grant.first == grant.end:  # a grant of no ids: the server closes the lane, and opens none
            return result(0)
        session_id = self._session_id()
        if session_id is None:
            return result(-1, "no lane: the instance is in no session")
        with self._lock:
            if grant.epoch != self._epoch:
                return result(-1, "no lane: a later call from the server closed it")
        try:
            writer = LaneLogWriter(grant.log_path, session_id, grant.token)
        except (OSError, ValueError) as exc:
            return result(-1, f"no lane: its log {grant.log_path} cannot be opened ({exc})")
        with self._lock:
            if grant.epoch != self._epoch:  # (a call came while the file was opened)
                writer.close()
                return result(-1, "no lane: a later call from the server closed it")
            self._open = _Lane(grant.token, grant.first, grant.end, grant.epoch, session_id, writer)
        return result(0)

    def close_stale(self) -> None:
        """Close the lane's log if the server took the lane back: a call of the server's is about to run, so
        every lane task received before it has run (and none is taken after it)."""
        with self._lock:
            lane = self._open
            if lane is None or lane.epoch == self._epoch:
                return
            self._open = None
        lane.writer.close()

    def run(self, call: LaneCall, _data: bytes = b"") -> bytes:
        """Run an admitted lane task and return its ``flame.v1.TaskResult`` (see :meth:`_run_in_order`)."""
        return self._run_in_order([call])[0]

    def run_batch(self, calls: list[LaneCall], _data: bytes = b"") -> bytes:
        """Run admitted lane tasks in order and return the ``TaskBatch`` of their results (see
        :meth:`_run_in_order`)."""
        return task_batch(self._run_in_order(calls) if calls else [])

    def _run_in_order(self, calls: list[LaneCall]) -> list[bytes]:
        """Run admitted lane tasks in order; their ``flame.v1.TaskResult``s. The log gets a record that each
        began (the server shows it running, and can cancel it) and then its result, before the answer; the
        result of one and the record that the next began go together, in one write.

        A log that does not take the record that the first began refuses them (``INVALID_STATE``: none
        ran, the client sends them another way) and closes the lane. One that does not take a result stops
        this process: the task is then as any task whose instance died, begun and not finished, and the
        server runs it again (its client waits for it there); answering it here could not be kept. Only
        the first may have its input in a file (a batch's are in its message: ``admit_batch``).
        """
        first = calls[0]
        lane = first.lane
        writer = lane.writer
        first_input = first.input if first.input_size is None else self._input_file(first)
        start = _now_ms()
        try:
            writer.append(_began(first, start))
        except (OSError, ValueError) as exc:
            self._lose(lane)
            log.error("the lane's log could not take task %s: %s", first.task_id, exc)
            raise _closed(f"its log cannot be written: {exc}") from None
        answers: list[bytes] = []
        run_task = self._run_task
        session_id = lane.session_id
        last = len(calls) - 1
        for index, call in enumerate(calls):
            produced, failure = run_task(str(call.task_id), session_id, first_input if index == 0 else call.input)
            output = None if produced is None else bytes(produced)
            end = _now_ms()
            done = LaneResult(call.task_id, start, end, failure is None, None, output, failure)
            try:
                written = writer.append_many([done, _began(calls[index + 1], end)] if index < last else [done])[0]
            except (OSError, ValueError) as exc:
                log.critical(
                    "the lane's log could not take the result of task %s (%s): this service process stops, and "
                    "the server runs the task again",
                    call.task_id,
                    exc,
                )
                self._stop_process()
                raise  # (where the process could not be stopped: the client gets the error)
            start = end
            if failure is not None:
                answers.append(task_result(-1, message=failure))
            elif written.output_size is not None and call.output_file:  # (the client reads it from the file)
                answers.append(task_result(0, output_size=written.output_size))
            else:
                answers.append(task_result(0, output))
        return answers

    @staticmethod
    def _input_file(call: LaneCall) -> bytes:
        """The input the client wrote to its payload file (``INVALID_ARGUMENT`` if it is not there whole: the
        task does not run, and the client sends it through the server)."""
        assert call.input_size is not None
        path = payload_path(call.lane.writer.path, call.task_id, "input")
        try:
            return read_payload_file(Path(path), call.input_size)
        except (OSError, ValueError) as exc:
            raise FlameError(
                FlameErrorCode.INVALID_ARGUMENT,
                f"the input of lane task {call.task_id} is not in its file {path} ({exc}); the task did not run",
            ) from None

    def _lose(self, lane: _Lane) -> None:
        with self._lock:
            if self._open is lane:
                self._open = None
        lane.writer.close()
