"""The server's side of lanes: what it lent, and the lane logs it records tasks from.

Why. On a warm invoke through the server, the server's part (the request read, the task recorded, the
result made durable, the answer) is most of what the invoke costs above the raw two-hop floor, and after
years of trims it is work, not waiting (docs/benchmarks.md). A lane takes it off the path: the scheduler
lends a session's idle service process to one client (:meth:`flamepy_core.engine.scheduler.Scheduler.open_lane`),
the client sends its tasks to it directly, and the service process appends each result to the lane's log
before it answers (:mod:`flamepy_core.instance.lane`). The server records those tasks afterwards, from the
log, with the same rows, events and counters the warm path gives its own (:meth:`Engine.record_lane_results`).

When the server reads a log:

* before it answers a read of the session (``get_task``, ``list_tasks``, ``get_session``, a watch, a close):
  a client that read its lane's answer then asks the server sees its task (read your writes);
* every ``READ_EVERY`` seconds on the book's own thread, for everyone else (watchers, ``flmctl``);
* once the lane is over: the server took its instance back (any call it sends the instance closes the lane
  there, and the answer to that call means nothing more will be appended) or the instance exited. Then the
  ids not used are given back when nobody took ids after them, and the log is removed once everything read
  from it is committed to the store;
* at start (:meth:`LaneBook.recover`): the logs of a server that stopped before it recorded them. A task the
  store has already is skipped; a log the store refuses is kept for the next start.

Threads. A log is read and its tasks recorded by the book's thread, or by a frontend thread catching a
session up before a read: never by a thread that may hold the engine's or the scheduler's lock (the
scheduler tells the book a lane ended, :meth:`LaneBook.end`, and goes on).

Durability: a lane result is in its log (a ``write(2)``) before the client is told, as a warm result is in
the store's ahead log before RunTask answers; both survive the crash of any process, not a power loss.
"""

from __future__ import annotations

import dataclasses
import glob
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from flamepy_core.contracts.errors import FlameError
from flamepy_core.engine.payload_files import PayloadFile
from flamepy_core.privacy import private_dir
from flamepy_core.wire.lane_log import ForeignLaneLog, IncompleteLaneLog, LaneResult, payload_path, read_lane_log
from flamepy_core.wire.payload_handoff import Mapped, map_payload_file
from flamepy_core.wire.proto import types_pb2 as pb

if TYPE_CHECKING:
    from flamepy_core.engine.state import Engine

__all__ = ["LANE_IDS", "LaneBook", "LaneLease", "LaneRecord", "ending_when_heard"]

log = logging.getLogger(__name__)

LANE_IDS = 4096
"""Task ids lent with a lane. Its client asks for a new lane when it has used them all (one round trip to
the server per this many tasks); ids not used are given back when the lane ends, unless others were given
after them (then the session's ids have a gap, as Flame's have after a failed creation)."""

SUFFIX = ".lane"
"""A lane log's file name ends so (in the lanes' directory, the store's name with ``-lanes`` added)."""
DIRECTORY_SUFFIX = "-lanes"
CATCH_UP_WAIT = 30.0
"""Seconds a read of a session waits at most for its lanes' tasks to be committed (a store that stalls)."""
READ_EVERY = 0.1
"""Seconds between two reads of the open lanes' logs by the book's thread (the scheduler's tick)."""
FILE_GRACE = 1.0
"""Seconds a lane's payload file keeps its name beside the log once the server's own link to it is
committed: the lane's client reads an output there right after its answer (one that finds it gone asks the
server). Then the name goes, so that a long-lived lane holds no payload the retention purged."""


class LaneRecord(NamedTuple):
    """A record of a lane's log as the server records it: the result, with the payload files its service
    process wrote for it (:func:`flamepy_core.wire.lane_log.payload_path`) taken as the store's own
    (:meth:`PayloadFiles.adopt`: pending until the row naming them is committed or given up)."""

    result: LaneResult
    input_file: PayloadFile | None = None
    output_file: PayloadFile | None = None
    output: Mapped | None = None
    """The output: the record's bytes, or ``output_file`` mapped (what a watcher of the task is given)."""


@dataclass(eq=False)
class LaneLease:
    """One lane lent: to which session and instance, its ids, its log, and how far the server read it."""

    token: bytes
    session_id: str
    instance_id: str
    endpoint: str
    path: Path
    first: int
    end: int
    offset: int = 0
    """Where the next read of the log starts (0: at its first record)."""
    unsettled: int = 0
    """Groups of tasks recorded from the log whose commit has not been heard of."""
    over: bool = False
    """The log is complete (the lane ended) and was read to its end."""
    keep: bool = False
    """The store refused what was read from it: the log stays for the next start."""
    news_at: float = 0.0
    """When (``time.monotonic``) a read of its log last found tasks: the instance is in use, not idle."""
    running: set[int] = field(default_factory=set)
    """Tasks the log says began, and not (yet) what they gave."""
    why_ended: str = ""
    """Why the lane ended, when its instance did: a task it ran then is retried as any task so lost."""
    reread_from: int | None = None
    """The store refused what was read from here on: read again (what it has skipped) once it writes."""
    for_runs: bool = False
    """Lent for a client's ``run()`` tasks (``OpenLane`` with ``for_runs``), not only its invokes."""


class LaneBook:
    """The lanes lent and not over, by session; the one reader of their logs.

    Two locks: ``_reading`` serializes the reads of the logs (each record is recorded once, in order), and
    is taken before the engine's, never while it is held; ``_state`` guards the leases' books and takes no
    other lock (a commit's callback, :meth:`_settled`, takes it on the store's thread).
    """

    def __init__(self, engine: Engine, directory: Path, *, lends: bool = True) -> None:
        self.engine = engine
        self.directory = private_dir(directory, "the lanes' directory")
        self.lends = lends
        """Whether lanes are lent at all. Not in ``strict`` durability, which fsyncs every result before its
        client is told: a lane's log is only written (an fsync per task would cost what the lane saves). The
        book still recovers the logs an earlier server in ``batched`` mode left."""
        self._reading = threading.Lock()
        self._state = threading.Condition(threading.Lock())
        self._leases: dict[str, list[LaneLease]] = {}
        self._ended: list[LaneLease] = []
        """Lanes over whose logs the thread has to finish."""
        self._expiring: list[tuple[float, list[str]]] = []
        """Lane payload files whose server link is committed, and when (``time.monotonic``) their lane's name
        goes (``FILE_GRACE``): a few entries (the reads of the last second), looked at whole."""
        self._stopping = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the thread that reads the logs every ``READ_EVERY`` s and finishes the lanes that ended."""
        self._thread = threading.Thread(target=self._run, name="flamepy-lanes", daemon=True)
        self._thread.start()

    def close(self, timeout: float = 5.0) -> None:
        """Stop the thread (a log not finished stays, for the next start's :meth:`recover`)."""
        with self._state:
            self._stopping = True
            self._state.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._state:
                if not self._ended and not self._stopping:
                    self._state.wait(READ_EVERY if self._leases else 1.0)
                ended, self._ended = self._ended, []
                stopping = self._stopping
            try:
                for lease in ended:
                    self._finish(lease)
                if stopping:  # what the lanes ran until the server stopped, recorded while the store is open
                    self.catch_up_all()
                    return
                self.catch_up_all()
                self._remove_expired()
                self.engine.store.payloads.drop_due()  # (the files adopted from the lanes leave the page cache)
            except Exception:  # a bug here must not stop the reads of the other lanes
                log.exception("reading the lanes' logs failed")

    def lend(self, session_id: str, instance_id: str, endpoint: str, *, for_runs: bool = False) -> LaneLease | None:
        """A new lane's lease (ids reserved, its log's path chosen), or None when the session lends none now."""
        first = self.engine.lend_task_ids(session_id, LANE_IDS)
        if first is None:
            return None
        token = os.urandom(16)
        path = self.directory / f"{instance_id}-{token[:6].hex()}{SUFFIX}"
        lease = LaneLease(token, session_id, instance_id, endpoint, path, first, first + LANE_IDS, for_runs=for_runs)
        with self._state:
            self._leases.setdefault(session_id, []).append(lease)
        return lease

    def lent(self) -> bool:
        """Whether a lane is lent now (not over)."""
        with self._state:
            return any(not lease.over for group in self._leases.values() for lease in group)

    def leases(self, session_id: str) -> list[LaneLease]:
        with self._state:
            return list(self._leases.get(session_id, ()))

    def catch_up(self, session_id: str, timeout: float = CATCH_UP_WAIT) -> None:
        """Record what the session's lanes ran so far, and return once it is committed and applied (before
        the server answers a read of the session: the task a client just had from a lane is seen final)."""
        if not self._leases:  # (no lock: a server without lanes pays one check)
            return
        for lease in self.leases(session_id):
            self.read(lease)
        deadline = time.monotonic() + timeout
        with self._state:
            while any(lease.unsettled for lease in self._leases.get(session_id, ())):
                left = deadline - time.monotonic()
                if left <= 0:
                    log.warning("the lanes' tasks of session %s were not committed within %s s", session_id, timeout)
                    return
                self._state.wait(left)

    def catch_up_all(self) -> None:
        """Record what every lane ran so far (without waiting for its commit)."""
        with self._state:
            leases = [lease for group in self._leases.values() for lease in group]
        for lease in leases:
            self.read(lease)

    def read(self, lease: LaneLease) -> int:
        """Record the tasks appended to ``lease``'s log since the last read (and, once the store writes
        again, what it refused before); how many."""
        with self._reading:
            if lease.over and lease.reread_from is None:
                return 0
            count = self._read(lease)
            lost, remove = self._read_to_its_end(lease)  # (a lane over, read again after a refusal)
        self._after_its_end(lease, lost, remove)
        return count

    def _read(self, lease: LaneLease) -> int:
        again = lease.reread_from
        if again is not None and self.engine.store.failure is not None:
            return 0  # (still refused: read again once it writes)
        start = lease.offset if again is None else again
        try:
            header, results, offset = read_lane_log(str(lease.path), start)
        except (FileNotFoundError, IncompleteLaneLog):
            return 0  # not opened yet by its instance (or the grant was refused)
        except (OSError, ForeignLaneLog) as exc:
            log.error("the log of a lane of session %s cannot be read: %s", lease.session_id, exc)
            with self._state:
                lease.keep = True
            return 0
        if header.token != lease.token or header.session_id != lease.session_id:
            log.error("%s is not the log of the lane lent for session %s: not read", lease.path, lease.session_id)
            with self._state:
                lease.keep = True
            return 0
        lease.offset = offset
        if again is not None:
            lease.reread_from = None
            results = self._not_stored(lease.session_id, results)
        if not results:
            return 0
        lease.news_at = time.monotonic()
        with self._state:
            lease.unsettled += 1
            for record in results:
                if record.started:
                    lease.running.add(record.task_id)
                else:
                    lease.running.discard(record.task_id)
        records = self._adopt(lease.path, lease.session_id, results)
        taken = [
            payload_path(lease.path, record.result.task_id, field)
            for record in records
            for field, file in (("input", record.input_file), ("output", record.output_file))
            if file is not None
        ]
        self.engine.record_lane_results(
            lease.session_id, records, partial(self._settled, lease, start, taken), partial(self._refused, lease, start)
        )
        return len(results)

    def end(self, lease: LaneLease, why: str = "") -> None:
        """The lane is over and its log complete: the book's thread records the rest, and removes the log once
        all of it is committed. ``why``: its instance ended so (a task it ran
        then is retried, or CANCELLED if that was why). Safe under any lock; once is enough."""
        with self._state:
            if why and not lease.why_ended:
                lease.why_ended = why
            self._ended.append(lease)
            self._state.notify()

    def running_in(self, session_id: str) -> bool:
        """Whether a task of the session runs on one of its lanes now, as far as their logs say."""
        with self._state:
            return any(lease.running for lease in self._leases.get(session_id, ()))

    def running_on(self, session_id: str, task_id: int) -> LaneLease | None:
        """The lane a task of the session runs on now, as far as its log says."""
        with self._state:
            return next((lease for lease in self._leases.get(session_id, ()) if task_id in lease.running), None)

    def _finish(self, lease: LaneLease) -> None:
        with self._reading:
            if lease.over:
                return
            self._read(lease)
            with self._state:
                lease.over = True
            lost, remove = self._read_to_its_end(lease)
        # (The ids it did not use are not given back: its client may still hold the lane, and would ask the
        # server for a task of that id when the lane breaks; another task must never have it.)
        self._after_its_end(lease, lost, remove)

    def _read_to_its_end(self, lease: LaneLease) -> tuple[list[int], bool]:
        """After a read (``_reading`` held): for a lane over, the tasks that began and never ended (lost
        with its instance), and whether its log is to be removed now."""
        if not lease.over:
            return [], False
        with self._state:
            lost, lease.running = sorted(lease.running), set()
            return lost, self._settle_over(lease)

    def _after_its_end(self, lease: LaneLease, lost: list[int], remove: bool) -> None:
        """Retry the tasks lost with the lane's instance, as any task so lost; remove its log if read whole."""
        for tid in lost:
            why = lease.why_ended or "the instance of its lane ended while it ran"
            self.engine.retry_task(lease.session_id, str(tid), why)
        if remove:
            _unlink(lease.path)

    def _settle_over(self, lease: LaneLease) -> bool:
        """A lease over with nothing unsettled nor to read again leaves the book (with ``_state`` held);
        True when its log is to be removed."""
        if not lease.over or lease.unsettled or lease.reread_from is not None:
            return False
        group = self._leases.get(lease.session_id, [])
        if lease in group:
            group.remove(lease)
            if not group:
                del self._leases[lease.session_id]
        self._state.notify_all()
        return not lease.keep

    @staticmethod
    def _read_again_from(lease: LaneLease, start: int) -> None:
        """The store refused what was read from ``start`` on: read it again once it writes (``_state`` held)."""
        if lease.reread_from is None or start < lease.reread_from:
            lease.reread_from = start

    def _refused(self, lease: LaneLease, start: int, error: FlameError) -> None:
        """The store refused a task's start read from ``start`` on: read again from there once it writes."""
        with self._state:
            self._read_again_from(lease, start)
        log.warning("a lane task's start was not stored (%s): %s is read again once it writes", error, lease.path)

    def _remove_expired(self) -> None:
        """Remove the lane names of the payload files whose ``FILE_GRACE`` passed (the server's links stay)."""
        if not self._expiring:  # (read without the lock: one appended meanwhile is seen next time)
            return
        now = time.monotonic()
        with self._state:
            due = [name for when, names in self._expiring if when <= now for name in names]
            self._expiring = [(when, names) for when, names in self._expiring if when > now]
        for name in due:
            _remove(Path(name))

    def _settled(self, lease: LaneLease, start: int, taken: list[str], error: FlameError | None) -> None:
        with self._state:
            if error is None and taken:  # (refused: kept, for the read again)
                self._expiring.append((time.monotonic() + FILE_GRACE, taken))
            lease.unsettled -= 1
            if error is not None:  # read again from there once the store writes (what it has, skipped)
                log.warning(
                    "tasks of a lane of session %s were not stored (%s): they are recorded from %s once the "
                    "store writes again",
                    lease.session_id,
                    error,
                    lease.path,
                )
                self._read_again_from(lease, start)
            self._state.notify_all()
            remove = self._settle_over(lease)
        if remove:
            _unlink(lease.path)

    @staticmethod
    def _recovered(path: Path, refused: list[FlameError], error: FlameError | None) -> None:
        """A log read at start is removed once what it held is committed; kept when the store refused any of
        it (``error``, or a start in ``refused``): the next start reads it again."""
        if error is not None or refused:
            log.error("the lane log %s could not be recorded (%s): kept for the next start", path, error or refused[0])
        else:
            _unlink(path)

    def recover(self) -> int:
        """At start: record the tasks of the lane logs a previous server left (those its store lacks), and
        remove each log once they are committed. The number of tasks recorded."""
        recorded = 0
        for path in sorted(self.directory.glob(f"*{SUFFIX}")):
            try:
                header, results, _offset = read_lane_log(str(path), 0)
            except IncompleteLaneLog:
                _unlink(path)  # opened, nothing appended: nothing to record
                continue
            except (OSError, ForeignLaneLog) as exc:
                log.error("lane log %s cannot be read, kept: %s", path, exc)
                continue
            fresh = self._not_stored(header.session_id, results)
            if not fresh:
                _unlink(path)
                continue
            refused: list[FlameError] = []
            self.engine.record_lane_results(
                header.session_id,
                self._adopt(path, header.session_id, fresh),
                partial(self._recovered, path, refused),
                refused.append,
            )
            recorded += len(fresh)
            ended = {r.task_id for r in results if not r.started}
            for tid in sorted({r.task_id for r in fresh if r.started} - ended):  # running when all stopped
                self.engine.retry_task(header.session_id, str(tid), "the server restarted while it ran on a lane")
        for payload in self.directory.glob(f"*{SUFFIX}.*"):  # (files of logs gone: a crash as they were removed)
            if not payload.with_name(payload.name.split(f"{SUFFIX}.", 1)[0] + SUFFIX).exists():
                _remove(payload)
        if recorded:
            log.info("recorded %d tasks from the lanes of the previous server", recorded)
        return recorded

    def _adopt(self, log_path: Path, session_id: str, results: list[LaneResult]) -> list[LaneRecord]:
        """The records to record, each with its payload files beside the log (a large input its client
        wrote, a large output its service process wrote) taken as the store's (no copy:
        :meth:`PayloadFiles.adopt`). Without a lock held: a link is a system call.

        A file that is gone or holds another size than its record says was removed or damaged outside
        flamepy (each is written whole before the record naming it is appended): an input is then
        recorded as absent, an output makes its task Failed with a message naming the file (either way
        the server says so in its log)."""
        records: list[LaneRecord] = []
        files = self.engine.store.payloads
        for result in results:
            input_file = output_file = None
            output: Mapped | None = result.output
            if result.input_size is not None:
                source = payload_path(log_path, result.task_id, "input")
                try:
                    input_file = files.adopt(source, result.input_size)
                except (OSError, ValueError) as exc:
                    log.error(
                        "the input of lane task %s of session %s cannot be taken from %s (%s): it is recorded "
                        "without its input",
                        result.task_id,
                        session_id,
                        source,
                        exc,
                    )
            if result.output_size is not None:
                source = payload_path(log_path, result.task_id, "output")
                try:
                    output_file = files.adopt(source, result.output_size)
                    output = map_payload_file(files.path(output_file.name), output_file.size, populate=False)
                except (OSError, ValueError) as exc:
                    if output_file is not None:
                        files.release(output_file.name)
                        output_file = None
                    why = (
                        f"the service wrote the output of task {result.task_id} of session {session_id} to "
                        f"{source}, but it cannot be taken ({exc}): the file was removed or damaged outside "
                        f"flamepy. Run the task again"
                    )
                    log.error("%s", why)
                    result = dataclasses.replace(result, succeeded=False, output_size=None, message=why)
            records.append(LaneRecord(result, input_file, output_file, output))
        return records

    def _not_stored(self, session_id: str, results: list[LaneResult]) -> list[LaneResult]:
        if not results:
            return []
        low = min(r.task_id for r in results)
        high = max(r.task_id for r in results)
        stored = {
            row[0]: row[1] in _FINAL
            for row in self.engine.store.query(
                "SELECT id, state FROM tasks WHERE session_id = ? AND id BETWEEN ? AND ?", session_id, low, high
            )
        }
        # A start the store has is skipped; a result too, unless its task is stored unfinished (begun).
        return [r for r in results if r.task_id not in stored or (not r.started and not stored[r.task_id])]


_FINAL = frozenset(int(state) for state in (pb.TaskState.Succeed, pb.TaskState.Failed, pb.TaskState.Cancelled))


def ending_when_heard(
    heard: Callable[[object], None], on_item: Callable[[bytes], None], on_end: Callable[[FlameError | None], None]
) -> tuple[Callable[[bytes], None], Callable[[FlameError | None], None]]:
    """A stream's callbacks that call ``heard(what)`` first, once, at its first item (its bytes) or its end
    (its error, or None): a batch sent to an instance that was lent closes the lane, whose log is complete
    once the instance answered the batch."""
    pending = [True]

    def once(what: object) -> None:
        if pending:
            pending.clear()
            heard(what)

    def item(payload: bytes) -> None:
        once(payload)
        on_item(payload)

    def ended(error: FlameError | None) -> None:
        once(error)
        on_end(error)

    return item, ended


def _unlink(path: Path) -> None:
    """Remove a lane's log, its payload files first (a crash in between leaves a log whose records the
    store has: nothing asks for their files again)."""
    for payload in path.parent.glob(f"{glob.escape(path.name)}.*"):
        _remove(payload)
    _remove(path)


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("cannot remove %s of a lane: %s", path, exc)
