"""Progress where work is long: shown on a terminal, silent everywhere else.

Three uses: starting the local server (:func:`flamepy_core.client.local.ensure_local_server`), waiting for
an instance to start for a task (:class:`flamepy_core.client.session.Session.invoke`, after a second), and
many futures at once (:func:`progress`, exported as ``flamepy.util.progress``). Everything is drawn on
stderr, one line redrawn in place, and only when stderr is a terminal; ``FLAMEPY_PROGRESS=0`` turns it
off, so a program's output (and a log file, a CI run, a pipe) never has a progress line in it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, as_completed
from typing import TextIO, TypeVar

T = TypeVar("T")

DISABLE_ENV = "FLAMEPY_PROGRESS"


_stderr_seen: tuple[object, bool] = (None, False)
"""The ``sys.stderr`` last asked about and whether it is a terminal: ``isatty`` is a system call (an
``ioctl``) and ``invoke`` asks on every call. A stream keeps its descriptor; a replaced ``sys.stderr`` is
another object, asked again, and so is a closed one."""


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # closed, or not a real stream
        return False


def _stderr_isatty() -> bool:
    global _stderr_seen
    stream = sys.stderr
    seen, answer = _stderr_seen
    if seen is not stream or getattr(stream, "closed", True):
        answer = _isatty(stream)
        _stderr_seen = (stream, answer)
    return answer


def enabled(stream: TextIO | None = None) -> bool:
    """Whether progress may be drawn on ``stream`` (stderr by default): a terminal, and not turned off."""
    # First: where stderr is not a terminal (a pipe, a log file) this settles it, without reading the
    # environment (twice) on every invoke.
    if not (_stderr_isatty() if stream is None else _isatty(stream)):
        return False
    if os.environ.get(DISABLE_ENV, "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    return os.environ.get("TERM") != "dumb"


class StatusLine:
    """One line of text redrawn in place on a terminal; on anything else, nothing at all."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.on = enabled(self.stream)
        self._shown = False
        self._lock = threading.Lock()

    def show(self, text: str) -> None:
        if not self.on:
            return
        width = max(20, shutil.get_terminal_size().columns - 1)
        with self._lock:
            self.stream.write("\r" + text[:width] + "\x1b[K")
            self.stream.flush()
            self._shown = True

    def clear(self, final: str | None = None) -> None:
        """Remove the line; with ``final``, leave that text in its place."""
        if not self.on:
            return
        with self._lock:
            if self._shown:
                self.stream.write("\r\x1b[K")
            if final:
                self.stream.write(final + "\n")
            self.stream.flush()
            self._shown = False


class Waiting:
    """While a block runs: after ``delay`` seconds, a line saying what is awaited and for how long.

    ``describe()`` is called every ``interval`` seconds from a background thread; it returns the text to
    show, or None to show nothing now (and it may ask a server: it runs only on a terminal, never in the
    hot path of a program whose output goes elsewhere). A fast block shows nothing.
    """

    def __init__(
        self,
        describe: Callable[[float], str | None],
        *,
        delay: float = 1.0,
        interval: float = 0.5,
        stream: TextIO | None = None,
    ) -> None:
        self.describe = describe
        self.delay = delay
        self.interval = interval
        self.line = StatusLine(stream)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Waiting:
        if self.line.on:
            self._thread = threading.Thread(target=self._run, name="flame-progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        self.line.clear()

    def _run(self) -> None:
        started = time.monotonic()
        if self._stop.wait(self.delay):
            return
        while not self._stop.is_set():
            try:
                text = self.describe(time.monotonic() - started)
            except Exception:  # a progress line must never break what it watches
                text = None
            if text is None:
                self.line.clear()
            else:
                self.line.show(text)
            if self._stop.wait(self.interval):
                return


_NO_WAITING = contextlib.nullcontext()


def waiting(
    describe: Callable[[float], str | None], *, delay: float = 1.0, interval: float = 0.5
) -> contextlib.AbstractContextManager[object]:
    """:class:`Waiting` on stderr when it is a terminal, else a shared no-op: what hot paths use, so a
    program whose stderr is not a terminal pays one ``isatty`` per call and starts no thread."""
    if not enabled():
        return _NO_WAITING
    return Waiting(describe, delay=delay, interval=interval)


def _bar(done: int, total: int, width: int = 24) -> str:
    filled = width if total == 0 else width * done // total
    return "[" + "#" * filled + "." * (width - filled) + "]"


def progress(
    futures: Iterable[Future[T]], *, description: str = "tasks", stream: TextIO | None = None
) -> Iterator[Future[T]]:
    """Yield ``futures`` as they complete, drawing a progress bar on a terminal (stderr) as they do.

    ::

        futures = [session.run(request) for request in requests]
        for future in flamepy.util.progress(futures):
            results.append(future.result())

    The bar shows how many are done and failed, the rate and the time left; at the end one summary line
    stays. When stderr is not a terminal (a pipe, a log, CI) nothing is drawn and this is
    ``concurrent.futures.as_completed``. Futures that fail are yielded like the others; their
    ``result()`` raises.
    """
    pending = list(futures)
    total = len(pending)
    line = StatusLine(stream)
    if not line.on:
        yield from as_completed(pending)
        return
    started = time.monotonic()
    done = failed = 0
    last_draw = 0.0

    def draw(final: bool = False) -> None:
        elapsed = max(time.monotonic() - started, 1e-6)
        rate = done / elapsed
        text = f"{_bar(done, total)} {done}/{total} {description}"
        if failed:
            text += f", {failed} failed"
        if final:
            line.clear(f"{text} in {elapsed:.1f} s ({rate:.1f}/s)")
            return
        text += f", {rate:.1f}/s"
        if 0 < done < total and rate > 0:
            text += f", {(total - done) / rate:.0f} s left"
        line.show(text)

    draw()
    try:
        for future in as_completed(pending):
            done += 1
            if future.cancelled() or future.exception() is not None:
                failed += 1
            now = time.monotonic()
            if now - last_draw >= 0.1 or done == total:
                draw()
                last_draw = now
            yield future
    finally:
        draw(final=True)
