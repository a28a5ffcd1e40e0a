"""``flmctl view``: one application, session or task, with everything the server knows about it."""

from __future__ import annotations

import argparse
from typing import Any

from flamepy_core.cli.common import SubParsers, UsageError, add_command, add_output_flag, connection
from flamepy_core.cli.output import render, when
from flamepy_core.cli.records import application_record, session_record, task_record
from flamepy_core.contracts.errors import FlameError, FlameErrorCode


def add_parser(sub: SubParsers) -> None:
    p = add_command(
        sub,
        "view",
        run,
        "show one application, session or task",
        [
            ("flmctl view -a echo-app", "the application's whole spec"),
            ("flmctl view -s echo-app-a1b2c3", "the session: state, task counts, events"),
            ("flmctl view -t 3 -s echo-app-a1b2c3", "task 3: sizes, events, and its error with the traceback"),
        ],
    )
    p.add_argument("-a", "--application", metavar="NAME", help="the application to show")
    p.add_argument("-s", "--session", metavar="ID", help="the session to show (with -t: the task's session)")
    p.add_argument("-t", "--task", metavar="TASK", help="with -s: the id of the task to show")
    add_output_flag(p)


def run(args: argparse.Namespace) -> int:
    if args.task and not args.session:
        raise UsageError("view -t needs the task's session: flmctl view -t TASK -s SESSION_ID")
    if args.application and args.session:
        raise UsageError("view shows one thing: -a NAME, -s SESSION_ID, or -t TASK -s SESSION_ID")
    if not (args.application or args.session):
        raise UsageError("view needs -a NAME, -s SESSION_ID or -t TASK -s SESSION_ID")
    conn = connection(args)
    if args.application:
        app = conn.get_application(args.application)
        if app is None:
            raise FlameError(
                FlameErrorCode.NOT_FOUND,
                f"application {args.application} not found; `flmctl list -a` shows the registered ones",
            )
        record = application_record(app)
        print(render(record, args.output) if args.output in ("json", "yaml") else _application_text(record))
    elif args.task:
        record = task_record(conn.get_task(args.session, args.task))
        print(render(record, args.output) if args.output in ("json", "yaml") else _task_text(record))
    else:
        record = session_record(conn.get_session(args.session))
        print(render(record, args.output) if args.output in ("json", "yaml") else _session_text(record))
    return 0


def _shown(value: Any) -> Any:
    return getattr(value, "name", value)


def _application_text(record: dict[str, Any]) -> str:
    lines = []
    for key, value in record.items():
        shown = when(value) if key == "creation_time" else _shown(value)
        lines.append(f"{key + ':':<20}{shown}")
    return "\n".join(lines)


def _session_text(s: dict[str, Any]) -> str:
    lines = [
        f"Session:      {s['id']}",
        f"Application:  {s['application']}",
        f"State:        {s['state'].name.capitalize()}",
        f"Created:      {when(s['creation_time'])}",
        f"Completed:    {when(s['completion_time'])}",
        f"Tasks:        pending {s['pending']}, running {s['running']}, succeed {s['succeed']}, "
        f"failed {s['failed']}, cancelled {s['cancelled']}",
    ]
    if s["events"]:
        lines.append("Events:")
        for event in s["events"]:
            lines.append(f"  {event['code']:<6}{when(event['creation_time'])}  {event['message'] or ''}".rstrip())
    return "\n".join(lines)


def _size(value: int | None) -> str:
    return "-" if value is None else f"{value} bytes"


def _task_text(t: dict[str, Any]) -> str:
    duration = "-" if t["duration"] is None else f"{t['duration']:.3f} s"
    lines = [
        f"{'id:':<18}{t['id']}",
        f"{'session_id:':<18}{t['session_id']}",
        f"{'state:':<18}{t['state'].name}",
        f"{'creation_time:':<18}{when(t['creation_time'])}",
        f"{'completion_time:':<18}{when(t['completion_time'])}",
        f"{'duration:':<18}{duration}",
        f"{'input:':<18}{'purged' if t['payloads_purged'] else _size(t['input_size'])}",
        f"{'output:':<18}{'purged' if t['payloads_purged'] else _size(t['output_size'])}",
    ]
    if t["events"]:
        lines.append("events:")
        for event in t["events"]:
            message = (event["message"] or "").splitlines()
            first = message[0] if message else ""
            code = f"{event['code']} "  # 1003 is wider than the column
            lines.append(f"  {code:<3}{when(event['creation_time'])}  {first}".rstrip())
    if t["error"]:
        lines.append("error:")
        lines.extend(f"  {line}".rstrip() for line in t["error"].rstrip().splitlines())
    return "\n".join(lines)
