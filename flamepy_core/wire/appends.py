"""One record appended to a log file whole, or not at all: what the store's ahead log and a lane's log share.

Why. Both logs promise the same thing: a record the writer was told is in the file is whole, and a record
that failed (a full disk, a file size limit, a short write) leaves nothing behind, or a part of it would
stand in front of the records appended after it and hide them from the reader (which stops at the first
record that is not whole). So a failed append cuts the file back to where it ended before it.
"""

from __future__ import annotations

import os

__all__ = ["NotCutBack", "append_whole"]


class NotCutBack(OSError):
    """An append failed and the file could not be cut back either: its writer must cut it before the next."""


def append_whole(fd: int, record: bytes, end: int, path: str) -> int:
    """Append ``record`` with one ``write(2)`` (the file is open ``O_APPEND``, and ends at ``end``); return
    the file's new end. On a failure or a short write the file is cut back to ``end`` and ``OSError`` is
    raised; :class:`NotCutBack` when the cut failed too."""
    try:
        written = os.write(fd, record)
        if written != len(record):
            raise OSError(f"only {written} of {len(record)} bytes were written to {path}")
    except OSError as exc:
        try:
            os.ftruncate(fd, end)
        except OSError as cut:
            raise NotCutBack(cut.errno, f"{exc}; and {path} could not be cut back to {end} bytes: {cut}") from exc
        raise
    return end + written
