"""The supervisor: one thread that starts instance processes and watches them.

It does what may block, so that the scheduler's events never do: starting a process (fork/exec, and
before it an application's installer, which may take a while: on a small pool of ``SPAWN_WORKERS``
threads), making the channel to it, noticing that it listens, noticing that it exited, and timers.
Everything it learns goes to the scheduler as an event.

* **Readiness is signalled, not polled.** A service written with this SDK writes a byte to the pipe
  named by ``FLAMEPY_READY_FD`` once it listens; the supervisor waits on that pipe with the others in
  one ``select``. A service written with Flame's SDK knows no such pipe: it is found ready when its
  socket file appears (checked every ``SOCKET_POLL`` seconds while such an instance starts).
* **Heartbeats** come on the same pipe: an instance of this SDK writes a byte on it every
  ``heartbeat_interval`` from a thread of its own, and the supervisor notes when (``last_beat``); the
  scheduler handles an instance silent for ``liveness_timeout`` as crashed.
* **Exits are noticed at once** through a pidfd (Linux), else by polling every ``TICK`` seconds.
* **Timers**: ``later(delay, fn)``, and a tick to the scheduler every ``TICK`` seconds (start deadlines,
  spare expiry, SIGKILL after the grace period).

One thread serves every instance, whatever the number of sessions.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import os
import selectors
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from flamepy_core.config import RuntimeSettings
from flamepy_core.contracts.errors import FlameError, FlameErrorCode
from flamepy_core.engine.executor import Instance as InstanceHandle
from flamepy_core.wire.proto import types_pb2 as pb

if TYPE_CHECKING:
    from flamepy_core.engine.scheduler import Instance, Scheduler

log = logging.getLogger(__name__)

TICK = 0.1
"""Seconds between the scheduler's timer checks (and exit polls where there is no pidfd)."""
SOCKET_POLL = 0.005
"""Seconds between checks for the socket file of an instance that has not signalled readiness."""
SPAWN_WORKERS = 4
"""Threads that start processes (an application's installer may hold one for a long time)."""


class Supervisor(threading.Thread):
    """Starts and watches instance processes for a :class:`~flamepy_core.engine.scheduler.Scheduler`."""

    def __init__(self, scheduler: Scheduler, settings: RuntimeSettings) -> None:
        super().__init__(name="flame-supervisor", daemon=True)
        self.scheduler = scheduler
        self.settings = settings
        self._lock = threading.Lock()
        self._requests: deque[Callable[[], None]] = deque()
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_read, False)
        os.set_blocking(self._wake_write, False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._wake_read, selectors.EVENT_READ, None)
        self._starting: set[Instance] = set()
        """Started, not known to listen yet."""
        self._running: set[Instance] = set()
        """Processes not known to have exited."""
        self._stopping = False
        self._next_tick = 0.0
        self._spawner = ThreadPoolExecutor(max_workers=SPAWN_WORKERS, thread_name_prefix="flame-spawn")

    # -- requests from other threads ---------------------------------------------------------------------

    def _request(self, fn: Callable[[], None]) -> None:
        with self._lock:
            self._requests.append(fn)
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._wake_write, b"\0")

    def spawn(self, inst: Instance, app: pb.Application) -> None:
        """Start the process of ``inst``; the scheduler hears ``on_started`` then ``on_ready`` (or ``on_exit``)."""
        try:
            self._spawner.submit(self._spawn, inst, app)
        except RuntimeError:  # shutting down
            return

    def run_blocking(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` (which may block: it starts a process) on a spawner thread."""
        try:
            self._spawner.submit(fn)
        except RuntimeError:  # shutting down
            return

    def stop(self, inst: Instance, grace: float) -> None:
        """SIGTERM to its process group now (the scheduler sends SIGKILL after ``grace`` if needed)."""
        self._request(lambda: self._terminate(inst))

    def later(self, delay: float, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the supervisor thread after ``delay`` seconds (``fn`` must not block)."""
        when = time.monotonic() + delay
        with self._lock:
            heapq.heappush(self._timers, (when, next(self._seq), fn))
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._wake_write, b"\0")

    # -- the thread ----------------------------------------------------------------------------------------

    def run(self) -> None:
        while not self._stopping:
            try:
                self._step()
            except Exception:  # a bug here must not stop the supervision of every instance
                log.exception("the instance supervisor failed a step")
                time.sleep(0.05)

    def _timeout(self, now: float) -> float:
        timeout = max(0.0, self._next_tick - now)
        if self._starting:
            timeout = min(timeout, SOCKET_POLL)
        with self._lock:
            if self._timers:
                timeout = min(timeout, max(0.0, self._timers[0][0] - now))
            if self._requests:
                timeout = 0.0
        return timeout

    def _step(self) -> None:
        now = time.monotonic()
        for key, _mask in self._selector.select(self._timeout(now)):
            if key.data is None:
                with contextlib.suppress(BlockingIOError, OSError):
                    while os.read(self._wake_read, 4096):
                        pass
                continue
            kind, inst = key.data
            if kind == "ready":
                self._on_ready_pipe(inst)
            else:
                self._on_pidfd(inst)
        while True:
            with self._lock:
                if not self._requests:
                    break
                request = self._requests.popleft()
            request()
        for inst in list(self._starting):
            process = inst.process
            if process is not None and process.listening() is not None:
                self._became_ready(inst)
        now = time.monotonic()
        due: list[Callable[[], None]] = []
        with self._lock:
            while self._timers and self._timers[0][0] <= now:
                due.append(heapq.heappop(self._timers)[2])
        for fn in due:
            fn()
        if now >= self._next_tick:
            self._next_tick = now + TICK
            for inst in list(self._running):
                process = inst.process
                if process is not None and process.pidfd is None and not process.alive():
                    self._exited(inst)
            self.scheduler.post(self.scheduler.on_tick, now)

    # -- starting --------------------------------------------------------------------------------------------

    def _spawn(self, inst: Instance, app: pb.Application) -> None:
        """On a spawner thread: start the process, then hand it to the supervisor thread to watch."""
        try:
            process = self.scheduler.launcher.start(app, inst.id, awaited=inst.awaited)
        except FlameError as exc:
            self.scheduler.post(self.scheduler.on_started, inst, None, exc)
            return
        except Exception as exc:  # fork/exec failures and the like: a failed start, never a crash
            log.exception("starting instance %s of %s failed", inst.id, app.metadata.name)
            error = FlameError(FlameErrorCode.INVALID_CONFIG, f"{type(exc).__name__}: {exc}")
            self.scheduler.post(self.scheduler.on_started, inst, None, error)
            return
        if self._stopping:  # the server stopped while this one started: it must not outlive it
            process.stop(self.settings.shutdown_grace)
            return
        self._request(lambda: self._watch(inst, process))

    def _watch(self, inst: Instance, process: InstanceHandle) -> None:
        inst.process = process
        self._running.add(inst)
        self._starting.add(inst)
        if process.pidfd is not None:
            self._selector.register(process.pidfd, selectors.EVENT_READ, ("exit", inst))
        if process.ready_fd is not None:
            self._selector.register(process.ready_fd, selectors.EVENT_READ, ("ready", inst))
        self.scheduler.post(self.scheduler.on_started, inst, process, None)
        if process.ready_at_once:
            self._became_ready(inst)

    def _on_ready_pipe(self, inst: Instance) -> None:
        """Readiness, then (from an instance that sends them) heartbeats: ``process.last_beat``."""
        process = inst.process
        assert process is not None and process.ready_fd is not None
        fd = process.ready_fd
        said = process.read_ready()
        if process.ready_fd is None:
            self._unregister(fd)
        if said and inst in self._starting:
            self._became_ready(inst)
        # Without a byte (the pipe closed): the socket check or the exit decides.

    def _became_ready(self, inst: Instance) -> None:
        if inst not in self._starting:
            return
        self._starting.discard(inst)
        process = inst.process
        assert process is not None
        # The pipe stays watched: heartbeats may follow (or the readiness byte, when the socket file
        # was seen first); it is closed at its end of file or at the process's exit.
        try:
            process.connect()
        except FlameError as exc:
            log.warning("cannot connect to instance %s: %s", inst.id, exc.message)
            inst.cause = f"instance {inst.id} of application {inst.app} listens, but connecting failed: {exc.message}"
            self._terminate(inst)
            return
        self.scheduler.post(self.scheduler.on_ready, inst)

    # -- stopping and exits ----------------------------------------------------------------------------------

    def _terminate(self, inst: Instance) -> None:
        self._starting.discard(inst)
        process = inst.process
        if process is None:
            return
        process.close_channel()
        process.terminate()

    def _on_pidfd(self, inst: Instance) -> None:
        process = inst.process
        assert process is not None
        if process.pidfd is not None:
            self._unregister(process.pidfd)
        self._exited(inst)

    def _exited(self, inst: Instance) -> None:
        if inst not in self._running:
            return
        self._running.discard(inst)
        self._starting.discard(inst)
        process = inst.process
        assert process is not None
        if process.ready_fd is not None:
            self._unregister(process.ready_fd)
            process.close_ready()
        process.wait_exit(0)  # reap it, so its exit status is known
        self.scheduler.post(self.scheduler.on_exit, inst)

    def _unregister(self, fd: int) -> None:
        with contextlib.suppress(KeyError, ValueError, OSError):
            self._selector.unregister(fd)

    # -- shutdown ----------------------------------------------------------------------------------------------

    def shutdown(self, instances: list[Instance], timeout: float) -> None:
        """Stop every process (SIGTERM, then SIGKILL after the grace period) and end the thread.

        Blocking, on the caller's thread: the server is stopping.
        """
        self._stopping = True
        self._spawner.shutdown(wait=False, cancel_futures=True)
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._wake_write, b"\0")
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout=5)
        processes: list[InstanceHandle] = [i.process for i in instances if i.process is not None]
        for process in processes:
            process.close_channel()
            process.terminate()
        deadline = time.monotonic() + min(timeout, self.settings.shutdown_grace)
        for process in processes:
            process.wait_exit(max(0.0, deadline - time.monotonic()))
        for process in processes:
            if process.alive():
                process.kill()
                process.wait_exit(10)
            process.cleanup()
        self._selector.close()
        for fd in (self._wake_read, self._wake_write):
            with contextlib.suppress(OSError):
                os.close(fd)
