"""A small worker pool for a server's handlers: a SimpleQueue and up to ``max_workers`` daemon threads.

Why not ``ThreadPoolExecutor``: every call would pay for a Future, a work item and a Python-level
semaphore, none of which a server that answers through its I/O thread needs; and its threads are joined
at interpreter exit, so one handler that never returns would hang the exit. Here a submit is a short
locked count and one ``SimpleQueue.put``; threads start on demand and are daemons.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

_Task = tuple[Callable[..., None], tuple[Any, ...]]


class WorkerPool:
    def __init__(self, max_workers: int, name: str) -> None:
        self._max = max_workers
        self._name = name
        self._queue: queue.SimpleQueue[_Task | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._idle = 0
        """Workers waiting for a task that no queued task has been promised to yet."""
        self._backlog = 0
        """Tasks queued at ``max_workers`` with no worker promised: the next workers to finish take them."""
        self._closed = False

    def submit(self, fn: Callable[..., None], *args: Any) -> None:
        """Run ``fn(*args)`` on a worker. RuntimeError once the pool is shut down.

        Each task is promised to a worker when it is queued: an idle worker nobody has claimed yet, else
        a new thread (below ``max_workers``), else the first worker to finish (``_backlog``). Counting
        the workers that merely *wait* would count one twice: a worker woken by the previous task but
        not yet running it still looks idle, and a task queued meanwhile would get no thread. Under a
        burst of handlers that block for long (server streams) such a task stayed queued until the next
        submit, with every thread busy and ``max_workers`` far away.
        """
        with self._lock:
            if self._closed:
                raise RuntimeError("the worker pool is shut down")
            if self._idle:
                self._idle -= 1
            elif len(self._threads) < self._max:
                thread = threading.Thread(target=self._work, name=f"{self._name}-{len(self._threads)}", daemon=True)
                self._threads.append(thread)
                thread.start()
            else:
                self._backlog += 1
            self._queue.put((fn, args))

    def _work(self) -> None:
        lock, tasks = self._lock, self._queue
        while True:
            task = tasks.get()
            if task is None:
                return
            fn, args = task
            try:
                fn(*args)
            except BaseException:  # the task reports its own errors; this is a bug in it
                log.exception("a task of %s failed", self._name)
            with lock:
                if self._backlog:
                    self._backlog -= 1  # a task queued while every worker was busy: this one takes it
                else:
                    self._idle += 1  # unclaimed until a submit promises it a task

    def shutdown(self) -> None:
        """Stop taking tasks; idle workers exit, busy ones when their task returns (never joined)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            count = len(self._threads)
        while True:  # drop what never started
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        for _ in range(count):
            self._queue.put(None)
