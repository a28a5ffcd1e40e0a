"""``flmctl create``, ``close`` and ``cancel``: sessions and their tasks by hand."""

from __future__ import annotations

import argparse
import getpass
import socket

from flamepy_core import validation
from flamepy_core.cli.common import SubParsers, UsageError, add_command, connection
from flamepy_core.model import ResourceRequirement, SessionAttributes, short_name
from flamepy_core.wire.proto import types_pb2 as pb


def add_parser(sub: SubParsers) -> None:
    p = add_command(
        sub,
        "create",
        run_create,
        "create a session of an application",
        [
            ("flmctl create -a echo-app", "a session with a generated id, echo-app-XXXXXX"),
            ("flmctl create -a echo-app -i my-sess -r cpu=1,mem=1g -p 5", "with an id, resources and a priority"),
        ],
    )
    p.add_argument("-a", "--application", required=True, metavar="NAME", help="the application's name")
    p.add_argument(
        "-i",
        "--session",
        default=None,
        metavar="ID",
        help="the session id (default: <app>-<6 random>); Flame's name rule applies, checked before connecting",
    )
    p.add_argument(
        "-r", "--resreq", default=None, metavar="RESREQ", help='resources per instance, e.g. "cpu=2,mem=4g,gpu=0"'
    )
    p.add_argument(
        "-p",
        "--priority",
        type=int,
        default=0,
        metavar="N",
        help="the session's priority, stored and compared as Flame does (default: 0)",
    )
    p = add_command(
        sub,
        "close",
        run_close,
        "close a session (its pending tasks are cancelled)",
        [
            ("flmctl close -s echo-app-a1b2c3", "close it; refused while a task runs"),
            (
                "flmctl close --force -s echo-app-a1b2c3",
                "cancel its running tasks (stopping their instances), then close",
            ),
        ],
    )
    p.add_argument("-s", "--session", required=True, metavar="ID", help="the session id")
    p.add_argument(
        "--force",
        action="store_true",
        help="cancel the session's pending and running tasks first: a running task's instance is stopped "
        "(SIGTERM, then SIGKILL after the server's shutdown_grace); flamepy's server only",
    )
    p = add_command(
        sub,
        "cancel",
        run_cancel,
        "cancel one task of a session, or all its pending and running tasks",
        [
            ("flmctl cancel -s echo-app-a1b2c3 -t 3", "cancel task 3; a running task's instance is stopped"),
            ("flmctl cancel -s echo-app-a1b2c3", "cancel every pending and running task; the session stays open"),
        ],
    )
    p.add_argument("-s", "--session", required=True, metavar="ID", help="the session id")
    p.add_argument("-t", "--task", default=None, metavar="TASK", help="the task id (default: all pending and running)")


def run_create(args: argparse.Namespace) -> int:
    # The server applies the same rules; checking here refuses a bad value before any connection.
    validation.check_application_name(args.application, "-a/--application")
    if args.session is not None:
        validation.check_session_id(args.session, "-i/--session")
    attrs = SessionAttributes(
        application=args.application,
        id=args.session or short_name(args.application),
        resreq=ResourceRequirement.from_string(args.resreq) if args.resreq else None,
    )
    session = connection(args).create_session(attrs, priority=args.priority)
    print(f"Session {session.id} was created.")
    return 0


def _requested_by(command: str) -> str:
    """Who asks, as the tasks' events will say it."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid
        user = "an unknown user"
    return f"{command} (user {user} on {socket.gethostname()})"


def run_close(args: argparse.Namespace) -> int:
    validation.check_session_id(args.session, "-s/--session")
    conn = connection(args)
    if args.force:
        closed = conn.close_session(args.session, force=True, requested_by=_requested_by("flmctl close --force"))
        print(f"Session {args.session} was closed ({closed.cancelled} tasks cancelled in all).")
    else:
        conn.close_session(args.session)
        print(f"Session {args.session} was closed.")
    return 0


_STATE_WORDS = {
    pb.TaskState.Succeed: "had already succeeded",
    pb.TaskState.Failed: "had already failed",
}


def run_cancel(args: argparse.Namespace) -> int:
    validation.check_session_id(args.session, "-s/--session")
    if args.task is not None and not args.task.isdigit():
        raise UsageError(f"-t/--task must be a task id (a decimal number such as 3), got {args.task!r}")
    tasks = connection(args).cancel_tasks(args.session, args.task, requested_by=_requested_by("flmctl cancel"))
    cancelled = [t for t in tasks if t.status.state == pb.TaskState.Cancelled]
    for task in tasks:
        if task.status.state != pb.TaskState.Cancelled:
            word = _STATE_WORDS.get(task.status.state, "was not cancelled")
            print(f"Task {task.metadata.id} of session {args.session} {word}.")
    if args.task is None:
        print(f"Cancelled {len(cancelled)} tasks of session {args.session}; it stays open.")
    elif cancelled:
        print(f"Task {args.task} of session {args.session} was cancelled.")
    return 0
