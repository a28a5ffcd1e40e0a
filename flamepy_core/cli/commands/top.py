"""``flmctl top``: a live view of a server's sessions, instances and throughput."""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import shutil
import sys
import termios
import time
import tty
from collections.abc import Iterator
from typing import Any, TextIO

from flamepy_core.cli.common import SubParsers, add_command, config
from flamepy_core.cli.top import Throughput, frame, take_snapshot, waiting_frame
from flamepy_core.client.connection import Connection, connect, connect_config
from flamepy_core.config import ClientConfig
from flamepy_core.contracts.errors import FlameError

ENTER_SCREEN = "\x1b[?1049h\x1b[?25l"  # the terminal's alternate screen, cursor hidden
LEAVE_SCREEN = "\x1b[?25h\x1b[?1049l"
HOME, CLEAR_LINE, CLEAR_BELOW = "\x1b[H", "\x1b[K", "\x1b[J"


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number of seconds")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive count")
    return value


def add_parser(sub: SubParsers) -> None:
    p = add_command(
        sub,
        "top",
        run,
        "a live view of sessions, instances and throughput, refreshed every second",
        [
            ("flmctl top", "watch the server; q or Ctrl-C quits"),
            ("flmctl top -n 1 > now.txt", "one snapshot, as plain text (as whenever the output is not a terminal)"),
            ("flmctl top -a -d 5", "closed sessions too, every 5 seconds"),
        ],
        description=(
            "A live view of a server: its sessions with their pending, running, succeeded and failed tasks\n"
            "and tasks per second, its instances per application with their state, session and process id,\n"
            "and the throughput of all sessions. On a terminal it redraws in place every second; otherwise\n"
            "it prints plain text frames. It never starts a server: with none running it waits for one.\n"
            "While it runs, its requests count as activity, so the local server does not idle-exit."
        ),
    )
    p.add_argument(
        "-d",
        "--interval",
        type=_positive_float,
        default=1.0,
        metavar="SECONDS",
        help="seconds between refreshes (default: 1)",
    )
    p.add_argument(
        "-n",
        "--iterations",
        type=_positive_int,
        default=None,
        metavar="N",
        help="stop after N refreshes (default: until q or Ctrl-C)",
    )
    p.add_argument("-a", "--all", action="store_true", help="show closed sessions too")


def _connect(cfg: ClientConfig) -> tuple[Connection | None, str]:
    """A connection to the server to watch, and its name; None (and why) when no local server runs.

    Unlike the other commands, top does not start the local server: watching should not change what
    it watches.
    """
    if cfg.endpoint is not None:
        return connect_config(cfg), cfg.endpoint
    from flamepy_core.client.local import live_server

    info = live_server(cfg.home)
    if not info:
        return None, f"no flamepy server is running for {cfg.home}; waiting for one (the first client starts it)"
    return connect(str(info["endpoint"])), str(info["endpoint"])


class _Keys:
    """Single key presses from a terminal, without echo, restored on exit."""

    def __init__(self, stream: TextIO) -> None:
        self.fd = stream.fileno()
        self._saved: list[Any] | None = None

    def __enter__(self) -> _Keys:
        self._saved = termios.tcgetattr(self.fd)
        tty.setcbreak(self.fd)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._saved is not None:
            termios.tcsetattr(self.fd, termios.TCSADRAIN, self._saved)

    def wait(self, timeout: float) -> str | None:
        """The key pressed within ``timeout`` seconds, or None."""
        ready, _, _ = select.select([self.fd], [], [], timeout)
        return os.read(self.fd, 1).decode(errors="replace") if ready else None


@contextlib.contextmanager
def _screen(out: TextIO) -> Iterator[None]:
    out.write(ENTER_SCREEN)
    out.flush()
    try:
        yield
    finally:
        out.write(LEAVE_SCREEN)
        out.flush()


def _draw(out: TextIO, lines: list[str], on_terminal: bool) -> None:
    if not on_terminal:
        out.write("\n".join(lines) + "\n\n")
    else:
        width = shutil.get_terminal_size().columns
        out.write(HOME + "".join(line[:width] + CLEAR_LINE + "\r\n" for line in lines) + CLEAR_BELOW)
    out.flush()


def run(args: argparse.Namespace) -> int:
    cfg = config(args)
    out = sys.stdout
    on_terminal = out.isatty()
    keys = _Keys(sys.stdin) if on_terminal and sys.stdin.isatty() else None
    rates = Throughput()
    conn: Connection | None = None
    server = str(cfg.endpoint or cfg.home)
    refreshes = 0
    with contextlib.ExitStack() as stack:
        if on_terminal:
            stack.enter_context(_screen(out))
        if keys is not None:
            stack.enter_context(keys)
        try:
            while True:
                started = time.monotonic()
                if conn is None:
                    conn, server = _connect(cfg)
                if conn is None:
                    lines = waiting_frame(str(cfg.home), server, args.interval)
                else:
                    try:
                        snapshot = take_snapshot(conn)
                        rates.update(snapshot)
                        lines = frame(snapshot, rates, server=server, interval=args.interval, show_closed=args.all)
                    except FlameError as exc:
                        conn.close()
                        conn, rates = None, Throughput()
                        lines = waiting_frame(server, f"lost the server: {exc}; trying again", args.interval)
                _draw(out, lines, on_terminal)
                refreshes += 1
                if args.iterations is not None and refreshes >= args.iterations:
                    break
                remaining = max(0.0, args.interval - (time.monotonic() - started))
                if keys is None:
                    time.sleep(remaining)
                elif (keys.wait(remaining) or "").lower() == "q":
                    break
        except KeyboardInterrupt:
            pass
        finally:
            if conn is not None:
                conn.close()
    return 0
