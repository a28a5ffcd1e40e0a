"""Open watch streams as subscriptions: fed by the engine when something happens, holding no thread.

A watcher (``WatchOutcomes``, ``WatchSession``, Flame's ``WatchTask``) used to be a generator waiting on
its session's condition variable, so each open stream held a server thread. Here a watch is an object
registered with its session entry. Whoever changes what it watches (the commit callback that makes a
task final, a close, a task starting) *claims* it under the engine lock and, after releasing the lock,
*pumps* it: reads what is new under the lock, sends it outside the lock through the watch's
:class:`WatchFeed` (whose sends never block), and repeats while more came meanwhile.

One thread at a time feeds a given watch (``busy``): a thread that finds it busy only marks it
(``again``), and the feeding thread takes that news on its next round. So responses leave in order,
and the stream writer is called by one thread at a time, as it requires.

A watch ends when what it watches ends (the session closes: after its last completions; the task
reaches a final state), or when its caller has gone: a send says so (returns False), or the engine's
sweep (:meth:`flamepy_core.engine.state.Engine.sweep_watches`, on the scheduler's tick) finds the
caller's context inactive. Either way the feed's ``end`` is called once, which lets the transport (and
the server's idle count) forget the stream.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from flamepy_core.contracts.errors import FlameError, FlameErrorCode
from flamepy_core.wire.proto import types_pb2 as pb

if TYPE_CHECKING:
    from flamepy_core.engine.state import SessionEntry

TERMINAL = frozenset({pb.TaskState.Succeed, pb.TaskState.Failed, pb.TaskState.Cancelled})
CALLER_GONE = "the caller of the watch went away"
"""Why a watch whose caller has gone is ended (the transport has usually ended its stream already)."""


class WatchFeed(Protocol):
    """Where a watch delivers: a stream's writer, with the encoding of its messages."""

    def deliver(self, tasks: list[pb.Task]) -> bool:
        """Send ``tasks`` (the engine's own objects: read them, never change them); False once the
        caller has gone. Must not block."""
        ...

    def end(self, error: FlameError | None) -> None:
        """End the stream: normally (``None``) or with ``error``. Called once, last."""
        ...

    def is_active(self) -> bool:
        """Whether the caller is still there (checked by the engine's sweep)."""
        ...


@dataclass
class StreamFeed:
    """A :class:`WatchFeed` from three callables (the frontend builds one per stream)."""

    send: Callable[[list[pb.Task]], bool]
    finish: Callable[[FlameError | None], object]
    active: Callable[[], bool]

    def deliver(self, tasks: list[pb.Task]) -> bool:
        return self.send(tasks)

    def end(self, error: FlameError | None) -> None:
        self.finish(error)

    def is_active(self) -> bool:
        return self.active()


class Watch:
    """What every watch has: its feed and the flags of the one-feeder-at-a-time rule.

    The flags, and everything a subclass reads from the session, are guarded by the engine lock.
    """

    def __init__(self, feed: WatchFeed) -> None:
        self.feed = feed
        self.busy = False
        """A thread is feeding it (or will: it was claimed)."""
        self.again = False
        """Something happened while it was being fed: the feeding thread looks once more."""
        self.gone = False
        """Its caller has gone: the next round ends it."""

    def take(self, entry: SessionEntry) -> tuple[list[pb.Task], bool]:
        """What to send now and whether the watch ends after it (called with the engine lock held)."""
        raise NotImplementedError

    def detach(self, entry: SessionEntry) -> None:
        """Unregister from ``entry`` (called with the engine lock held, once, when it ends)."""
        raise NotImplementedError

    def finish(self) -> None:
        """End the feed: normally, or as abandoned when the caller has gone."""
        self.feed.end(FlameError(FlameErrorCode.CANCELLED, CALLER_GONE) if self.gone else None)


class SessionWatch(Watch):
    """Completed tasks of a session with an id above ``after``, in completion order, each once.

    ``position`` is the absolute index in the session's ``completions`` read up to; ``seen`` the ids sent
    from the store's replay (a task committed just before the replay was read shows there and in
    ``completions``: it is sent once).
    """

    def __init__(self, token: int, feed: WatchFeed, after: int, seen: set[int], position: int) -> None:
        super().__init__(feed)
        self.token = token
        self.after = after
        self.seen = seen
        self.position = position
        self.registered = False

    def take(self, entry: SessionEntry) -> tuple[list[pb.Task], bool]:
        batch: list[pb.Task] = []
        if self.registered:
            for task in entry.completions[self.position - entry.completions_offset :]:
                tid = int(task.metadata.id)
                if tid > self.after and tid not in self.seen:
                    batch.append(task)  # final: never changed again, so shared, not copied
            self.position = entry.completions_offset + len(entry.completions)
        return batch, self.gone or not entry.is_open or not self.registered

    def detach(self, entry: SessionEntry) -> None:
        if self.registered:
            self.registered = False
            del entry.watches[self.token]


class TaskWatch(Watch):
    """One task's state changes (Flame's ``WatchTask``): a copy each time its state differs from the
    last one sent; ends after a final state, or when the session closed under a task that never got one.

    ``task`` is the engine's object for the task, changed in place (its final state too). ``add_input``,
    when given, completes each snapshot with what the engine keeps out of that object (a large input
    lives in its payload file only).
    """

    def __init__(self, feed: WatchFeed, task: pb.Task, add_input: Callable[[pb.Task], None] | None = None) -> None:
        super().__init__(feed)
        self.task = task
        self.add_input = add_input
        self.task_id = int(task.metadata.id)
        self.last = task.status.state

    def take(self, entry: SessionEntry) -> tuple[list[pb.Task], bool]:
        state = self.task.status.state
        batch: list[pb.Task] = []
        if state != self.last:
            snapshot = pb.Task()
            snapshot.CopyFrom(self.task)
            if self.add_input is not None:
                self.add_input(snapshot)
            batch.append(snapshot)
            self.last = state
        return batch, self.gone or state in TERMINAL or not entry.is_open

    def detach(self, entry: SessionEntry) -> None:
        watches = entry.task_watches.get(self.task_id)
        if watches is not None and self in watches:
            watches.remove(self)
            if not watches:
                del entry.task_watches[self.task_id]


def claim(watch: Watch, due: deque[tuple[SessionEntry, Watch]], entry: SessionEntry) -> None:
    """Mark ``watch`` as having news (called with the engine lock held): its feeder looks again, or, with
    none, it goes to ``due`` for the caller to pump once it has released the lock."""
    if watch.busy:
        watch.again = True
    else:
        watch.busy = True
        due.append((entry, watch))
