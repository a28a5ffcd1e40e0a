"""``flmctl list``: applications, sessions, a session's tasks, executors (instances) or nodes."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from flamepy_core.cli.common import SubParsers, UsageError, add_command, add_output_flag, connection
from flamepy_core.cli.output import Column, field, first_line, render, when
from flamepy_core.cli.records import (
    application_record,
    executor_record,
    node_record,
    session_record,
    task_record,
)


def add_parser(sub: SubParsers) -> None:
    p = add_command(
        sub,
        "list",
        run,
        "list applications, sessions, a session's tasks, executors or nodes",
        [
            ("flmctl list", "applications (the same as -a)"),
            ("flmctl list -s", "sessions, with their task counts"),
            ("flmctl list -t -s echo-app-a1b2c3 -o json", "the session's tasks as JSON"),
            ("flmctl list -e -o wide", "instances: state, session, application and process id"),
        ],
    )
    p.add_argument("-a", "--application", action="store_true", help="applications (the default)")
    p.add_argument(
        "-s",
        "--session",
        nargs="?",
        const=True,
        default=None,
        metavar="ID",
        help="sessions; with -t, the id of the session whose tasks to list",
    )
    p.add_argument("-t", "--task", action="store_true", help="the tasks of the session given with -s ID")
    p.add_argument("-e", "--executor", action="store_true", help="executors: the server's instance processes")
    p.add_argument("-n", "--node", action="store_true", help="nodes (a Flame cluster's machines)")
    add_output_flag(p)


APPLICATION_COLUMNS = (
    Column("Name", field("name")),
    Column("State", lambda a: a["state"].name.capitalize()),
    Column("Shim", lambda a: a["shim"].name.capitalize() if a["shim"] is not None else "Host"),
    Column("Tags", lambda a: ",".join(a["labels"] or [])),
    Column("Created", lambda a: when(a["creation_time"])),
    Column("Command", lambda a: " ".join([a["command"] or "", *(a["arguments"] or [])]).strip()),
    Column("MaxInstances", field("max_instances"), wide=True),
    Column("DelayRelease", field("delay_release"), wide=True),
    Column("WorkingDirectory", field("working_directory"), wide=True),
)
SESSION_COLUMNS = (
    Column("ID", field("id")),
    Column("State", lambda s: s["state"].name.capitalize()),
    Column("App", field("application")),
    Column("Pending", field("pending")),
    Column("Running", field("running")),
    Column("Succeed", field("succeed")),
    Column("Failed", field("failed")),
    Column("Cancelled", field("cancelled"), wide=True),
    Column("Created", lambda s: when(s["creation_time"])),
    Column("Completed", lambda s: when(s["completion_time"]), wide=True),
)
TASK_COLUMNS = (
    Column("ID", field("id")),
    Column("State", lambda t: t["state"].name.capitalize()),
    Column("Created", lambda t: when(t["creation_time"])),
    Column("Completed", lambda t: when(t["completion_time"]), wide=True),
    Column("Duration", lambda t: "-" if t["duration"] is None else f"{t['duration']:.3f}s"),
    Column("Input", field("input_size"), wide=True),
    Column("Output", field("output_size"), wide=True),
    Column("Events", lambda t: len(t["events"]), wide=True),
    Column("Error", lambda t: first_line(t["error"])),
)
EXECUTOR_COLUMNS = (
    Column("ID", field("id")),
    Column("State", field("state")),
    Column("Session", field("session_id")),
    Column("Node", field("node")),
    Column("App", field("application"), wide=True),
    Column("PID", field("pid"), wide=True),
    Column("Tasks", field("tasks_served"), wide=True),
    Column("Started", lambda e: when(e["start_time"]), wide=True),
)
NODE_COLUMNS = (
    Column("NAME", field("name")),
    Column("HOSTNAME", field("hostname")),
    Column("STATUS", field("state")),
    Column("CPU", field("cpu")),
    Column("MEMORY", field("memory")),
    Column("ARCH", field("arch")),
    Column("OS", field("os")),
)


def _what(args: argparse.Namespace) -> str:
    """The one thing to list, or a usage error naming the combination that makes no sense."""
    session_id = args.session if isinstance(args.session, str) else None
    chosen = [name for name, on in (("-a", args.application), ("-e", args.executor), ("-n", args.node)) if on]
    if args.task:
        if session_id is None:
            raise UsageError("list -t needs the session: flmctl list -t -s SESSION_ID")
        if chosen:
            raise UsageError(f"list -t lists one session's tasks; drop {' '.join(chosen)}")
        return "tasks"
    if session_id is not None:
        raise UsageError(
            f"list -s {session_id}: add -t to list its tasks, or use `flmctl view -s {session_id}` to see the session"
        )
    if args.session is True:
        chosen.append("-s")
    if len(chosen) > 1:
        raise UsageError(f"list takes one of -a, -s, -e, -n, -t at a time, not {' and '.join(chosen)}")
    return {"-s": "sessions", "-e": "executors", "-n": "nodes"}.get(chosen[0] if chosen else "-a", "applications")


def run(args: argparse.Namespace) -> int:
    what = _what(args)
    conn = connection(args)
    records: list[dict[str, Any]]
    columns: Sequence[Column]
    if what == "sessions":
        records, columns = [session_record(s) for s in conn.list_sessions()], SESSION_COLUMNS
    elif what == "tasks":
        records, columns = [task_record(t) for t in conn.list_tasks(args.session)], TASK_COLUMNS
    elif what == "executors":
        instances = {i.id: i for i in conn.list_instances()}
        records = [executor_record(e, instances.get(e.metadata.id)) for e in conn.list_executors()]
        columns = EXECUTOR_COLUMNS
    elif what == "nodes":
        records, columns = [node_record(n) for n in conn.list_nodes()], NODE_COLUMNS
    else:
        records, columns = [application_record(a) for a in conn.list_applications()], APPLICATION_COLUMNS
    print(render(records, args.output, columns))
    return 0
