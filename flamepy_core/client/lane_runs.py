"""``run()``'s tasks on lanes: many in flight to each of the session's service processes, the rest queued here.

Why. ``run()`` through flamepy's server costs the server about 100 µs of Python per task (creating it,
handing it to an instance, recording its result, telling the client), all under one interpreter lock:
that caps a session near 10,000 tasks/s on a machine with CPUs to spare (docs/benchmarks.md). A lane
(:mod:`flamepy_core.client.lane`) takes the server off a task's path; here many tasks are in flight on
each lane at once, and the server records them from the lanes' logs, a few hundred per read.

When. Only for a session that has all the instances it may have (its ``max_instances``, or its
application's): the server lends each of them (``OpenLane`` with ``for_runs``), and the tasks that do not
fit in the lanes' windows wait in this client's queue. A session that may still grow keeps the server's
path: its queue must be the server's, which starts instances for it. Nor for a task with a
``task_timeout`` (the server enforces it), nor for an input of ``FILE_BYTES`` or more (it travels as a
file on the server's path).

How many in flight. One batch per lane (``PIPELINE``), of as many tasks as the lane ran in ``BATCH_SPAN``
(up to ``BATCH_MOST``): a task of that long or longer goes alone, so none waits long in a service process
behind another while an instance may be idle (nor is it seen by the server until it begins).

When a task does not run on its lane:

* the lane refused it (the server took its instance back, ``INVALID_STATE``: it did not run): it goes
  back to the head of the queue, for another lane or the server's path, and may get another id;
* the link broke (its service process died): the server is asked for the task, as for
  :class:`~flamepy_core.client.lane.Lane`: finished, its outcome; begun, the server runs it again and the
  future waits for it there; unknown, it never began, and is queued again.

When no lane is left, the queue goes through the server; lanes are asked for again ``ASK_AGAIN`` seconds
later (twice as long after each refusal in a row, up to ``ASK_AGAIN_MOST``).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from flamepy_core.addresses import this_machine
from flamepy_core.client.creation import TaskCreation
from flamepy_core.contracts.errors import FlameError, FlameErrorCode
from flamepy_core.contracts.transport import Channel
from flamepy_core.kit import unary_then
from flamepy_core.plugins import get_registry
from flamepy_core.wire.methods import EXT
from flamepy_core.wire.payload_messages import RUN_LANE_TASKS, lane_task_batch, read_task_batch, read_task_result
from flamepy_core.wire.proto import ext_pb2

if TYPE_CHECKING:
    from flamepy_core.client.connection import Connection
    from flamepy_core.client.session import TaskFuture

__all__ = ["LaneRuns"]

log = logging.getLogger(__name__)

PIPELINE = 1
"""Batches in flight on one lane. One: the next goes once it is answered, so a lane's tasks run in the order
of their ``run()`` calls on every transport (a server that reads calls on a pool's threads, gRPC's, may
run two batches sent together in either order); a batch spans ``BATCH_SPAN`` of tasks, and the round trip
between two costs little beside it."""
BATCH_SPAN = 0.02
"""Seconds a batch of tasks takes at most, as the lane's last batches ran: a result waits no longer for the
others of its batch (a task that runs this long or longer goes alone)."""
BATCH_MOST = 1024
"""Tasks in one batch at most."""
ASK_AGAIN = 0.02
"""Seconds before asking for lanes again after a refusal (no idle instance yet, tasks queued on the server),
or for another one while the client holds fewer than the session has instances; doubled after each
refusal in a row..."""
ASK_AGAIN_MOST = 1.0
"""... up to this."""
BATCH_BYTES = 1 << 20
"""Inputs in one batch: once they reach this many bytes, no more tasks join it."""


class _Queued(TaskCreation):
    """A ``run()`` waiting for a place on a lane (or on one now), and its future's creation: its id is the
    lane's id it is sent with (one object per task, not two)."""

    __slots__ = ("data", "future")

    def __init__(self, cond: threading.Condition, data: bytes | None, future: TaskFuture) -> None:
        super().__init__(cond)
        self.data = data
        self.future = future


class _RunLane:
    """One lane lent for runs: its grant, its link, its ids, and how many of its tasks are in flight."""

    __slots__ = ("channel", "end", "endpoint", "gone", "inflight", "last_answer", "next", "renewing", "size", "token")

    def __init__(self, grant: ext_pb2.Lane, channel: Channel) -> None:
        self.channel = channel
        self.endpoint = grant.endpoint
        self.token = grant.token
        self.next = grant.first_task_id
        self.end = grant.first_task_id + grant.count
        self.inflight = 0
        """Batches in flight."""
        self.size = 1
        """Tasks in its next batch: as many as ran in ``BATCH_SPAN`` in its last one."""
        self.last_answer = 0.0
        self.gone = False
        """Closed by the server, or its link broke: no task is sent on it again."""
        self.renewing = False

    def regrant(self, grant: ext_pb2.Lane) -> None:
        self.token = grant.token
        self.next = grant.first_task_id
        self.end = grant.first_task_id + grant.count


class LaneRuns:
    """One session's lanes for ``run()`` and the queue of tasks waiting for them (see the module's docstring).

    ``through_server(data, future)`` sends a task the server's way; ``lost(tid, data, future)`` settles a
    task whose lane broke while it was in flight (on a pool thread: it asks the server), True when it never
    began; ``failed(tid, message)`` is the error of a task that failed, ``cancelled(why)`` that of one
    cancelled before it ran (the session module's errors, which imports this one).
    """

    def __init__(
        self,
        connection: Connection,
        session_id: str,
        through_server: Callable[[bytes | None, TaskFuture], None],
        lost: Callable[[int, bytes | None, TaskFuture], bool],
        failed: Callable[[int, str], BaseException],
        cancelled: Callable[[str], BaseException],
    ) -> None:
        self._connection = connection
        self._session_id = session_id
        self._through_server = through_server
        self._lost = lost
        self._failed = failed
        self._cancelled = cancelled
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        """Shared by the creations of the tasks queued here: notified when they get their ids."""
        self._lanes: list[_RunLane] = []
        self._queue: collections.deque[_Queued] = collections.deque()
        self._opening = False
        self._pumping = False
        self._off = False
        """Lanes are not asked for again (a server without them, on another machine)."""
        self._wanted = 0
        """The instances the session has, as the server said when it lent a lane: each may be lent."""
        self._next_ask = 0.0
        self._ask_gap = ASK_AGAIN
        """While fewer lanes are lent than ``_wanted``: when (``time.monotonic``) another is asked for, and
        the wait after a refusal (doubled each time, up to ``ASK_AGAIN_MOST``)."""
        self._closing: str | None = None
        """The session is closing: ``"force"`` (what is queued ends cancelled) or ``"close"`` (it goes to the
        server, which decides)."""

    # -- run() ------------------------------------------------------------------------------------------

    def submit(self, data: bytes | None, future: TaskFuture) -> bool:
        """Take ``future``'s task (sent on a lane, or queued for one): True; False: send it through the server."""
        with self._lock:
            if self._closing is not None or self._off:
                return False
            if not self._lanes and not self._opening:
                if time.monotonic() < self._next_ask:
                    return False
                self._opening = opener = True
            else:
                opener = False
            item = _Queued(self._cond, data, future)
            future.attach(item)
            self._queue.append(item)
            if not opener and (self._pumping or not any(ln.inflight < PIPELINE for ln in self._lanes)):
                return True  # (no room now: the thread that hears a lane's next answer sends it)
        if opener:
            self._open_lanes()
        self._pump()
        return True

    def withdraw(self, future: TaskFuture) -> bool:
        """Take a task still queued here out of the queue (it is cancelled before it ever ran): whether it was."""
        with self._lock:
            for item in self._queue:
                if item.future is future:
                    self._queue.remove(item)
                    return True
        return False

    def close(self, *, force: bool) -> None:
        """The session closes: what is queued ends cancelled (``force``) or goes through the server, and
        tasks a lane refuses from now on likewise; the lanes' links are closed once their tasks answered."""
        with self._lock:
            self._closing = "force" if force else "close"
            queued = list(self._queue)
            self._queue.clear()
        for item in queued:
            self._not_on_a_lane(item)
        self._close_idle_links()

    # -- the lanes --------------------------------------------------------------------------------------

    def _open_lanes(self) -> None:
        """Ask the server for every lane it lends the session for runs (one per instance), on the caller's
        thread; with none, the queue goes through the server."""
        opened: list[_RunLane] = []
        instances = 0
        try:
            while True:
                grant = self._ask(renew=b"")
                if grant is None:
                    break
                channel = self._channel_for(grant, opened)
                if channel is None:
                    break
                opened.append(_RunLane(grant, channel))
                instances = grant.instances
                if len(opened) >= instances:
                    break
        finally:
            with self._lock:
                self._opening = False
                if self._closing is not None:  # (closed meanwhile: these lanes take no task)
                    for lane in opened:
                        _close(lane.channel)
                    opened = []
                self._lanes.extend(opened)
                if opened:
                    self._wanted = max(self._wanted, len(opened), instances)
                    self._ask_gap = ASK_AGAIN
                else:
                    self._ask_gap = min(2 * self._ask_gap, ASK_AGAIN_MOST)
                self._next_ask = time.monotonic() + self._ask_gap
                orphans = self._orphans()
        for item in orphans:
            self._not_on_a_lane(item)

    def _ask(self, renew: bytes) -> ext_pb2.Lane | None:
        """``OpenLane`` for runs (``renew``: the token of a lane whose ids are used up): the grant, or None."""
        request = ext_pb2.OpenLaneRequest(session_id=self._session_id, for_runs=True, renew=renew)
        try:
            raw = self._connection.unary("OpenLane", EXT["OpenLane"].path, request.SerializeToString())
        except FlameError as exc:
            if exc.code == FlameErrorCode.UNIMPLEMENTED:  # a server without lanes (an older flamepy)
                self._off = True
            else:
                log.debug("no lane for the runs of session %s: %s", self._session_id, exc.message)
            return None
        grant = ext_pb2.Lane.FromString(raw)
        if grant.machine != this_machine():  # a server on another machine: its instances' endpoints are its own
            self._off = True
            return None
        return grant

    def _channel_for(self, grant: ext_pb2.Lane, opened: list[_RunLane]) -> Channel | None:
        try:
            return get_registry().transport(grant.endpoint).connect(grant.endpoint)
        except FlameError as exc:
            log.debug("the lane of session %s cannot be reached at %s: %s", self._session_id, grant.endpoint, exc)
            self._off = not opened  # (an endpoint this client cannot reach: no lanes from here)
            return None

    def _open_another(self) -> None:
        """One more lane, for an instance of the session that was not idle when the others were lent (on a
        pool thread)."""
        grant = None
        try:
            grant = self._ask(renew=b"")
            channel = None if grant is None else self._channel_for(grant, self._lanes)
        finally:
            with self._lock:
                self._opening = False
                if grant is not None and channel is not None and self._closing is None:
                    self._lanes.append(_RunLane(grant, channel))
                    self._ask_gap = ASK_AGAIN
                else:
                    self._ask_gap = min(2 * self._ask_gap, ASK_AGAIN_MOST)
                    if grant is not None and channel is not None:
                        _close(channel)
                self._next_ask = time.monotonic() + self._ask_gap
        self._pump()

    def _renew(self, lane: _RunLane) -> None:
        """A lane whose ids are used up, with no task in flight: lent again for new ids (on a pool thread)."""
        grant = self._ask(renew=lane.token)
        with self._lock:
            lane.renewing = False
            if grant is None or grant.endpoint != lane.endpoint or self._closing is not None:
                self._drop(lane)
                orphans = self._orphans()
            else:
                lane.regrant(grant)
                orphans = []
        for item in orphans:
            self._not_on_a_lane(item)
        self._pump()

    def _drop(self, lane: _RunLane) -> None:
        """No more tasks on ``lane`` (lock held); its link is closed once nothing is in flight on it."""
        lane.gone = True
        if lane in self._lanes:
            self._lanes.remove(lane)
        if lane.inflight == 0:
            _close(lane.channel)

    def _orphans(self) -> list[_Queued]:
        """With no lane left (and none being opened): what is queued, taken out to go through the server."""
        if self._lanes or self._opening or not self._queue:
            return []
        queued = list(self._queue)
        self._queue.clear()
        return queued

    def _close_idle_links(self) -> None:
        with self._lock:
            lanes = [lane for lane in self._lanes if lane.inflight == 0]
            for lane in lanes:
                self._drop(lane)

    # -- sending ----------------------------------------------------------------------------------------

    def _pump(self) -> None:
        """Send queued tasks while a lane has room. One thread at a time sends (the ids of a lane go out in
        order); another that finds it busy leaves its tasks to it."""
        with self._lock:
            if self._pumping:
                return
            self._pumping = True
        try:
            while True:
                with self._lock:
                    sends = self._assign()
                    if not sends:
                        self._pumping = False
                        return
                for lane, batch in sends:
                    self._send(lane, batch)
        except BaseException:
            with self._lock:
                self._pumping = False
            raise

    def _assign(self) -> list[tuple[_RunLane, list[tuple[int, _Queued]]]]:
        """Queued tasks put in batches, each for a lane with room, with ids of it (lock held)."""
        sends: list[tuple[_RunLane, list[tuple[int, _Queued]]]] = []
        queue = self._queue
        while queue:
            lane = min(
                (ln for ln in self._lanes if ln.inflight < PIPELINE and ln.next < ln.end and not ln.renewing),
                key=lambda ln: ln.inflight,
                default=None,
            )
            if lane is None:
                break
            most = min(lane.size, lane.end - lane.next)
            batch: list[tuple[int, _Queued]] = []
            size = 0
            while queue and len(batch) < most and size < BATCH_BYTES:
                item = queue.popleft()
                tid = lane.next
                lane.next = tid + 1
                item._settle(tid, None)
                batch.append((tid, item))
                size += 0 if item.data is None else len(item.data)
            lane.inflight += 1
            sends.append((lane, batch))
        if sends:
            self._cond.notify_all()
        return sends

    def _send(self, lane: _RunLane, batch: list[tuple[int, _Queued]]) -> None:
        request = lane_task_batch(lane.token, [(tid, item.data) for tid, item in batch])
        sent_at = time.monotonic()
        unary_then(
            lane.channel,
            RUN_LANE_TASKS,
            request,
            lambda answer: self._answered(lane, batch, sent_at, answer),
            None,
        )()

    def _answered(
        self, lane: _RunLane, batch: list[tuple[int, _Queued]], sent_at: float, answer: bytes | FlameError
    ) -> None:
        """A lane's answer to a batch (on the transport's thread: nothing here blocks)."""
        now = time.monotonic()
        results: list[bytes] = []
        if not isinstance(answer, FlameError):
            try:
                results = read_task_batch(answer)
            except ValueError as exc:
                answer = FlameError(FlameErrorCode.INTERNAL, f"a lane's answer did not parse: {exc}")
        renew = another = False
        with self._lock:
            dropped_before = lane.gone
            lane.inflight -= 1
            if isinstance(answer, FlameError):
                if answer.code == FlameErrorCode.UNIMPLEMENTED:  # a service process of an older flamepy
                    self._off = True
                if answer.code != FlameErrorCode.INVALID_ARGUMENT:  # (a request refused: the lane stays)
                    self._drop(lane)  # closed by the server, its link broke, or no batches there
            else:
                if results:
                    took = (now - max(lane.last_answer, sent_at)) / len(results)
                    lane.size = max(1, min(BATCH_MOST, int(BATCH_SPAN / max(took, 1e-6))))
                lane.last_answer = now
                if len(results) < len(batch):  # (its log refused the rest: the lane is closed)
                    self._drop(lane)
                elif lane.next >= lane.end and lane.inflight == 0 and not lane.renewing and not lane.gone:
                    lane.renewing = renew = True
            if dropped_before and lane.inflight == 0:  # (the last answer of a lane dropped with tasks in flight)
                _close(lane.channel)
            if 0 < len(self._lanes) < self._wanted and now >= self._next_ask and not self._opening:
                self._opening = another = True
            orphans = self._orphans()
        if renew:
            self._connection.watches.pool().submit(self._renew, lane)
        if another:
            self._connection.watches.pool().submit(self._open_another)
        if isinstance(answer, FlameError) and answer.code not in _NOT_RUN:
            # (the link broke: the server is asked what ran, task by task, in order)
            self._connection.watches.pool().submit(self._lost_batch, batch)
        else:
            self._again([item for _tid, item in batch[len(results) :]])
        for orphan in orphans:
            self._not_on_a_lane(orphan)
        self._pump()
        for (tid, item), result in zip(batch, results, strict=False):  # (those that ran)
            code, output, message, _size = read_task_result(result)  # (no output in a file: none was asked)
            if code != 0:
                item.future.set_exception(self._failed(tid, message or ""))
            else:
                item.future.set_result(output)

    def _again(self, items: list[_Queued]) -> None:
        """Tasks a lane refused (they did not run): first in the queue again, in order, for another lane or
        the server."""
        if not items:
            return
        with self._lock:
            back = [] if self._closing is not None else [item for item in items if not item.future._cancel_asked]
            self._queue.extendleft(reversed(back))
            ending = [item for item in items if item not in back] + self._orphans()
        for item in ending:
            self._not_on_a_lane(item)

    def _lost_batch(self, batch: list[tuple[int, _Queued]]) -> None:
        """A batch in flight when its lane broke (on a pool thread): each task settled as ``lost`` decides,
        in order, and those that never began queued again together, in their order, at the head."""
        again = [item for tid, item in batch if self._lost(tid, item.data, item.future)]
        self._again(again)
        self._pump()

    def _not_on_a_lane(self, item: _Queued) -> None:
        """A task that will not run on a lane: cancelled when that was asked (or the session is force-closed),
        else sent through the server."""
        future = item.future
        if future._cancel_asked:
            future.end_cancelled()
        elif self._closing == "force":
            future.set_exception(self._cancelled("the session was closed with force while the task waited for a lane"))
        else:
            self._through_server(item.data, future)
            item._forget()  # (after: its waiters find the server's creation)


_NOT_RUN = (FlameErrorCode.INVALID_STATE, FlameErrorCode.INVALID_ARGUMENT, FlameErrorCode.UNIMPLEMENTED)
"""A lane's refusals of tasks that did not run: closed, a request refused, or no batches there."""


def _close(channel: Channel) -> None:
    try:
        channel.close()
    except Exception:  # closing a link that broke: nothing more to do with it
        log.debug("closing a lane's link failed", exc_info=True)
