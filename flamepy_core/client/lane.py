"""A session's lane, as its client holds it: warm tasks sent to the session's service process directly.

Why. ``invoke`` through flamepy's server crosses it twice, and the server's part is most of what a warm
invoke costs above the raw two-hop floor (docs/benchmarks.md). With a lane (the default; ``FLAMEPY_LANES=0``
turns lanes off) the client asks the server once for the session's idle instance (``OpenLane``: its
endpoint, a token and a block of task ids), then sends each task there itself (``RunLaneTask``); the
service process keeps each result in the lane's log before it answers, and the server records the tasks from that log
(:mod:`flamepy_core.engine.lanes`). What the caller sees is what ``invoke`` through the server gives: the
output, or the same ``TaskFailedError``; and what the server shows after is the same task, with the same
events.

When the lane is not used (the call goes through the server, as without lanes):

* another thread of this session is on the lane (one task at a time: the instance runs one anyway, and
  the server's path lets the scheduler give the others more instances);
* the server lends none now (no idle instance, tasks queued, another client holds it...): asked again
  after ``RETRY_AFTER`` calls;
* the lane was closed by the server (it gave its instance other work): the task did not run there.

While a task runs on a lane the server shows it RUNNING (the service process logs that it began before it
runs it), and cancelling it stops its instance, as for any running task.

A lane broken while its task ran (the service process died, or was stopped to cancel the task) is the
server path's case: the client asks the server for the task. Finished, its outcome is the answer; begun,
the server runs it again as any task whose instance died (or records it CANCELLED), and the client waits
for it there; unknown to the server, it never began, and is sent through the server.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from flamepy_core.addresses import this_machine
from flamepy_core.contracts.errors import FlameError, FlameErrorCode
from flamepy_core.contracts.transport import Channel
from flamepy_core.model import Task
from flamepy_core.plugins import get_registry
from flamepy_core.wire.lane_log import FILE_BYTES, payload_path
from flamepy_core.wire.methods import EXT
from flamepy_core.wire.payload_handoff import read_payload_file, write_payload_file
from flamepy_core.wire.payload_messages import RUN_LANE_TASK, lane_task, read_task_result
from flamepy_core.wire.proto import ext_pb2

if TYPE_CHECKING:
    from flamepy_core.client.connection import Connection

__all__ = ["LANES_ENV", "NOT_TAKEN", "Lane", "LaneAnswer", "lanes_wanted"]

log = logging.getLogger(__name__)

LANES_ENV = "FLAMEPY_LANES"
"""``0`` (or ``false``, ``no``, ``off``): ``invoke`` never asks for a lane. Lanes are used by default."""

RETRY_AFTER = 64
"""At most this many calls go through the server before a refused client asks for a lane again: 1 after a
first refusal (a new session's first invoke starts its instance), then twice as many after each refusal in a
row, up to this."""

UNREACHABLE_LIMIT = 3
"""Lanes in a row that broke before their first answer, after which this client asks for no more."""

NOT_TAKEN = None
"""What :meth:`Lane.invoke` returns when the task did not run on the lane: send it through the server."""


class LaneAnswer(NamedTuple):
    """What a lane's task gave: its output, or why it failed (the service's text, as the server's path
    would have recorded it; the caller raises it as ``TaskFailedError``)."""

    task_id: int
    output: bytes | None
    failure: str | None = None


def lanes_wanted(env: Mapping[str, str] | None = None) -> bool:
    """Whether lanes are used: unless ``FLAMEPY_LANES`` says ``0``, ``false``, ``no`` or ``off``."""
    value = (os.environ if env is None else env).get(LANES_ENV, "")
    return value.strip().lower() not in ("0", "false", "no", "off")


def _files_beside(log_path: str) -> str:
    """``log_path`` when this process may write and read files beside the lane's log (the server's user:
    its folder is private to it), else "" (large payloads then travel in the lane's messages)."""
    if not log_path or not os.access(os.path.dirname(log_path), os.R_OK | os.W_OK | os.X_OK):
        return ""
    return log_path


def _input_to_file(log_path: str, tid: int, input_data: bytes | None) -> int | None:
    """Write a large input to its payload file beside the lane's log (the service process reads it there,
    and the server takes the file as it is: ``flamepy_core.wire.lane_log``); its size, or None to send it in
    the message (a small input, no files beside the log: :func:`_files_beside`, a file that cannot be
    written)."""
    if input_data is None or len(input_data) < FILE_BYTES or not log_path:
        return None
    path = payload_path(log_path, tid, "input")
    try:
        write_payload_file(Path(path), input_data, sync=False)
    except OSError as exc:
        log.debug("the input of lane task %s cannot be written to %s (%s): sent in the message", tid, path, exc)
        return None
    return len(input_data)


_NOT_RUN = (FlameErrorCode.INVALID_STATE, FlameErrorCode.INVALID_ARGUMENT)
"""A lane's refusals of a task it did not run: the lane closed, or the request (its input's file) refused.
The task goes through the server; its input's file, if any, is of no use."""


def _remove(path: str) -> None:
    with contextlib.suppress(OSError):  # (gone already, or the lane's folder with it: nothing to clean)
        os.unlink(path)


class Lane:
    """One session's lane from this client: lent by the server, used one task at a time, opened again when
    its ids are used up or the server took it back."""

    def __init__(self, connection: Connection, session_id: str) -> None:
        self._connection = connection
        self._session_id = session_id
        self._busy = threading.Lock()
        self._grant: ext_pb2.Lane | None = None
        self._next = 0
        self._end = 0
        self._channel: Channel | None = None
        self._endpoint = ""
        self._skip = 0
        """Calls left to send through the server before asking for a lane again."""
        self._backoff = 1
        """The next refusal's ``_skip``."""
        self._unsupported = False
        self._closing = False
        """The session is closed: no more tasks on the lane."""
        self._answered = False
        """The lane granted last has answered a task (its endpoint is reachable from here)."""
        self._unreachable = 0
        """Lanes in a row whose endpoint did not answer: after ``UNREACHABLE_LIMIT``, lanes are not asked for."""
        self._files = ""
        """The lane's log, beside which large payloads travel as files; empty: in the messages."""

    def invoke(self, input_data: bytes | None, timeout: float | None) -> LaneAnswer | Task | None:
        """Run one task on the lane: its answer; the task as the server has it (a lane that broke while the
        task ran: finished, or to wait for); or :data:`NOT_TAKEN` when it did not run here (the caller
        sends it through the server)."""
        if self._unsupported or self._closing or not self._busy.acquire(blocking=False):
            return NOT_TAKEN
        try:
            if not self._ready():
                return NOT_TAKEN
            grant, channel = self._grant, self._channel
            assert grant is not None and channel is not None
            tid = self._next
            self._next += 1
            files = self._files
            input_size = _input_to_file(files, tid, input_data)
            request = lane_task(
                grant.token,
                tid,
                input_data if input_size is None else None,
                input_size=input_size,
                output_file=bool(files),
            )
            try:
                reply = channel.unary(RUN_LANE_TASK, request, timeout=timeout)
            except FlameError as exc:
                if input_size is not None and exc.code in _NOT_RUN:
                    _remove(payload_path(files, tid, "input"))
                return self._failed_call(tid, exc, timeout, input_data)
            return self._outcome(tid, reply, files)
        finally:
            if self._closing:
                self._drop(close_channel=True)
            self._busy.release()

    def close(self) -> None:
        """Let the lane go (the session closes): its link to the service process is closed, now or, while a
        task of another thread is on it, once that task is answered (the close does not wait for it)."""
        self._closing = True
        if self._busy.acquire(blocking=False):
            try:
                self._drop(close_channel=True)
            finally:
                self._busy.release()

    # -- inside the lane's lock -----------------------------------------------------------------------------

    def _ready(self) -> bool:
        """A lane with ids left, asking the server for one if needed; False: use the server this time."""
        if self._grant is not None and self._next < self._end:
            return True
        if self._skip > 0:
            self._skip -= 1
            return False
        try:
            raw = self._connection.unary(
                "OpenLane",
                EXT["OpenLane"].path,
                ext_pb2.OpenLaneRequest(session_id=self._session_id).SerializeToString(),
            )
        except FlameError as exc:
            if exc.code == FlameErrorCode.UNIMPLEMENTED:  # a server without lanes (an older flamepy)
                self._unsupported = True
            else:
                log.debug("no lane for session %s: %s", self._session_id, exc.message)
                self._refused()
            self._drop(close_channel=False)
            return False
        grant = ext_pb2.Lane.FromString(raw)
        if grant.machine != this_machine():  # a server on another machine: its instances' endpoints are its own
            log.debug("no lanes for session %s: its server runs on another machine", self._session_id)
            self._unsupported = True
            return False
        if self._channel is None or grant.endpoint != self._endpoint:
            self._drop(close_channel=True)
            try:
                self._channel = get_registry().transport(grant.endpoint).connect(grant.endpoint)
            except FlameError as exc:
                log.debug("the lane of session %s cannot be reached at %s: %s", self._session_id, grant.endpoint, exc)
                self._refused()
                return False
            self._endpoint = grant.endpoint
        self._grant = grant
        self._files = _files_beside(grant.log_path)
        self._answered = False
        self._backoff = 1
        self._next = grant.first_task_id
        self._end = grant.first_task_id + grant.count
        return True

    def _refused(self) -> None:
        self._skip = self._backoff
        self._backoff = min(2 * self._backoff, RETRY_AFTER)

    def _drop(self, *, close_channel: bool) -> None:
        self._grant = None
        self._next = self._end = 0
        if close_channel and self._channel is not None:
            channel, self._channel, self._endpoint = self._channel, None, ""
            try:
                channel.close()
            except Exception:  # closing a link that broke: nothing more to do with it
                log.debug("closing a lane's link failed", exc_info=True)

    def _failed_call(self, tid: int, exc: FlameError, timeout: float | None, input_data: bytes | None) -> Task | None:
        if exc.code in _NOT_RUN:  # the task did not run: it goes through the server
            if exc.code == FlameErrorCode.INVALID_STATE:  # the lane was closed (a refused input's file: not)
                self._drop(close_channel=False)
            return NOT_TAKEN
        if exc.code == FlameErrorCode.DEADLINE_EXCEEDED:  # it keeps running, as through the server
            raise FlameError(
                FlameErrorCode.DEADLINE_EXCEEDED,
                f"task {tid} of session {self._session_id} did not finish within {timeout} s (it keeps running)",
            ) from None
        # The link broke while the task ran (its process died), or the result was not kept: the server
        # has it, if its log has it; otherwise it is sent through the server.
        if not self._answered:  # a lane that never answered: its endpoint may not be reachable from here
            self._unreachable += 1
            self._unsupported = self._unreachable >= UNREACHABLE_LIMIT
            self._refused()
        self._drop(close_channel=True)
        try:
            task = self._connection.get_task(self._session_id, str(tid))
        except FlameError as lookup:
            if lookup.code != FlameErrorCode.NOT_FOUND:
                raise
            log.info(
                "task %s of session %s did not finish on its lane (%s): sent through the server",
                tid,
                self._session_id,
                exc.message,
            )
            return NOT_TAKEN
        if task.input != input_data:  # another task's id: ours never began (its lane's ids were not kept)
            log.info(
                "task %s of session %s is not the one sent on the lane: sent through the server", tid, self._session_id
            )
            return NOT_TAKEN
        return task  # finished, or begun and run again by the server (the caller waits for it there)

    def _outcome(self, tid: int, reply: bytes, log_path: str) -> LaneAnswer | Task:
        self._answered = True
        self._unreachable = 0
        code, output, message, size = read_task_result(reply)
        if code != 0:
            return LaneAnswer(tid, None, message or "")
        if size is None:
            return LaneAnswer(tid, output)
        path = payload_path(log_path, tid, "output")
        try:
            return LaneAnswer(tid, read_payload_file(Path(path), size))
        except (OSError, ValueError) as exc:
            # The server may have recorded the task and removed the lane's files already (it took the
            # instance back meanwhile): it has the output.
            log.debug("the output of lane task %s is not in %s (%s): asked of the server", tid, path, exc)
            return self._connection.get_task(self._session_id, str(tid))
