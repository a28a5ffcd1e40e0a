"""Whether the server created a task that ``run()`` submitted: shared by the server's path (batches of
``CreateTasks``, :class:`flamepy_core.client.session.TaskSubmitter`) and the lanes' (ids of a lane,
:mod:`flamepy_core.client.lane_runs`)."""

from __future__ import annotations

import threading
from concurrent.futures import TimeoutError as FutureTimeout

__all__ = ["TaskCreation"]


class TaskCreation:
    """Whether the server created one task that ``run()`` submitted: its id, or the error that refused it.

    Not a ``Future``: ``run()`` makes one per task, and a future costs a lock and a condition of its own
    plus a callback; these share their submitter's condition (one batch answers many at once), and what
    happens once the answer is known is the submitter's call to :meth:`Session._created`.
    """

    __slots__ = ("_cond", "_done", "_error", "_moved", "_task_id")

    def __init__(self, cond: threading.Condition) -> None:
        self._cond = cond
        self._done = False
        self._task_id = 0
        self._error: BaseException | None = None
        self._moved = False
        """The task went another way (a lane's, then the server's): its future has another creation now."""

    @classmethod
    def known(cls, task_id: int) -> TaskCreation:
        """A task created before ``run()`` returned (against a Flame server)."""
        creation = cls(threading.Condition())
        creation._task_id, creation._done = task_id, True
        return creation

    def _settle(self, task_id: int, error: BaseException | None) -> None:
        """Record the answer (called with the condition held; the caller notifies)."""
        self._task_id, self._error, self._done = task_id, error, True

    def _forget(self) -> None:
        """The task's future has another creation now: wake this one's waiters, who look there."""
        with self._cond:
            self._moved = self._done = True
            self._cond.notify_all()

    def done(self) -> bool:
        return self._done

    def exception(self) -> BaseException | None:
        """The error that refused the task (None if it was created); only once :meth:`done`."""
        return self._error

    def wait(self, timeout: float | None) -> bool:
        """Wait at most ``timeout`` seconds for the answer; whether it came."""
        if not self._done:
            with self._cond:
                return self._cond.wait_for(self.done, timeout)
        return True

    def task_id(self, timeout: float | None) -> int:
        """The task's id, waiting at most ``timeout`` seconds (``FutureTimeout`` then); raises the refusal."""
        if not self.wait(timeout):
            raise FutureTimeout()
        if self._error is not None:
            raise self._error
        return self._task_id
