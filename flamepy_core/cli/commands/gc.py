"""``flmctl gc``: purge finished tasks' payloads and give the store's free space back, now."""

from __future__ import annotations

import argparse
import math

from flamepy_core.cli.common import SubParsers, UsageError, add_command, connection


def add_parser(sub: SubParsers) -> None:
    p = add_command(
        sub,
        "gc",
        run,
        "purge finished tasks' payloads past the retention and compact the server's store, now",
        [
            ("flmctl gc", "purge what is past the server's payload_retention and shrink flame.db"),
            ("flmctl gc --older-than 0", "purge the input and output of every finished task"),
        ],
        description=(
            "Purge the input and output of finished tasks past the retention and give the store's free "
            "pages back to the file system, now; the server also does both in the background. Goes through "
            "the server (started if needed): the database is never opened behind its back. A store created "
            "before incremental compaction is converted with one full VACUUM, which holds up the server "
            "meanwhile."
        ),
    )
    p.add_argument(
        "--older-than",
        type=float,
        default=None,
        metavar="SECONDS",
        help="purge tasks that finished more than SECONDS ago (default: the server's payload_retention)",
    )


def _size(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    raise AssertionError("unreachable")


def run(args: argparse.Namespace) -> int:
    if args.older_than is not None and not (math.isfinite(args.older_than) and args.older_than >= 0):
        raise UsageError(f"--older-than must be a number of seconds, 0 or more, got {args.older_than}")
    reply = connection(args).collect_garbage(args.older_than)
    print(
        f"Purged the payloads of {reply.tasks_purged} tasks that finished more than {reply.older_than:g} s ago; "
        f"the store went from {_size(reply.bytes_before)} to {_size(reply.bytes_after)} in {reply.seconds:.2f} s"
        + (" (converted to incremental compaction by one full VACUUM)." if reply.rebuilt else ".")
    )
    return 0
