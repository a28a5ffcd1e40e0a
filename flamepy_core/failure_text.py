"""Failure texts the runtime stores and shows: bounded in size, with control characters escaped.

What a failed task or a failed bind says comes from the service (its exception message and traceback)
or from a dying process (the tail of its stderr). Either may be huge (a service that raises with a 10 MB
message), and either may hold terminal control sequences that would repaint the screen of whoever runs
``flmctl view``. The server stores such a text once and ships it to every client that asks, so it keeps
at most :data:`MAX_FAILURE_TEXT` characters of it: the head (where the exception type and message are)
and the tail (where the innermost traceback frames are), with a line in between that says how much was
cut. Control characters other than newline and tab are written as ``\\xNN`` escapes.
"""

from __future__ import annotations

import re

__all__ = ["MAX_FAILURE_TEXT", "bound_failure_text", "escape_controls"]

MAX_FAILURE_TEXT = 64 * 1024
"""Most characters of a failure text kept (escapes counted as written): half from the head, half from the tail."""

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
"""C0 controls except tab and newline, DEL, and the C1 controls."""


def _escape(match: re.Match[str]) -> str:
    return f"\\x{ord(match.group()):02x}"


def escape_controls(text: str) -> str:
    """``text`` with every control character except newline and tab written as ``\\xNN``."""
    return _CONTROL.sub(_escape, text)


def _token(ch: str) -> str:
    return f"\\x{ord(ch):02x}" if _CONTROL.match(ch) else ch


def bound_failure_text(text: str, limit: int = MAX_FAILURE_TEXT) -> str:
    """``text`` escaped and cut to about ``limit`` characters, keeping its head and its tail.

    A text that fits is returned escaped and otherwise unchanged. A longer one keeps ``limit // 2``
    characters from each end and says between them how many characters of the original were cut.
    """
    if len(text) <= limit:
        escaped = escape_controls(text)
        if len(escaped) <= limit:
            return escaped
    half = limit // 2
    head: list[str] = []
    size = 0
    for ch in text:
        token = _token(ch)
        if size + len(token) > half:
            break
        head.append(token)
        size += len(token)
    kept_head = len(head)
    tail: list[str] = []
    size = 0
    for ch in reversed(text[kept_head:]):
        token = _token(ch)
        if size + len(token) > half:
            break
        tail.append(token)
        size += len(token)
    cut = len(text) - kept_head - len(tail)
    if cut == 0:  # only escaping made it long, and both halves together still hold all of it
        return "".join(head) + "".join(reversed(tail))
    return f"{''.join(head)}\n[... {cut:,} characters cut ...]\n{''.join(reversed(tail))}"
