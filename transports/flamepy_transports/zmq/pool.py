"""A small worker pool for a server's handlers: a SimpleQueue and up to ``max_workers`` daemon threads.

Why not ``ThreadPoolExecutor``: every call would pay for a Future, a work item and a Python-level
semaphore, none of which a server that answers through its I/O thread needs; and its threads are joined
at interpreter exit, so one handler that never returns would hang the exit. Here a submit is one
``SimpleQueue.put``; threads start on demand and are daemons.
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
        self._closed = False

    def submit(self, fn: Callable[..., None], *args: Any) -> None:
        """Run ``fn(*args)`` on a worker. RuntimeError once the pool is shut down."""
        if self._closed:
            raise RuntimeError("the worker pool is shut down")
        self._queue.put((fn, args))
        if self._queue.qsize() > self._idle and len(self._threads) < self._max:
            with self._lock:
                if len(self._threads) < self._max and not self._closed:
                    thread = threading.Thread(target=self._work, name=f"{self._name}-{len(self._threads)}", daemon=True)
                    self._threads.append(thread)
                    thread.start()

    def _work(self) -> None:
        lock, tasks = self._lock, self._queue
        while True:
            with lock:
                self._idle += 1
            task = tasks.get()
            with lock:
                self._idle -= 1
            if task is None:
                return
            fn, args = task
            try:
                fn(*args)
            except BaseException:  # the task reports its own errors; this is a bug in it
                log.exception("a task of %s failed", self._name)

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
