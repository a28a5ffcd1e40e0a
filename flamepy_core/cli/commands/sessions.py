"""``flmctl create`` and ``close``: sessions by hand."""

from __future__ import annotations

import argparse

from flamepy_core import validation
from flamepy_core.cli.common import SubParsers, add_command, connection
from flamepy_core.model import ResourceRequirement, SessionAttributes, short_name


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
        [("flmctl close -s echo-app-a1b2c3", "close it; refused while a task runs")],
    )
    p.add_argument("-s", "--session", required=True, metavar="ID", help="the session id")


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


def run_close(args: argparse.Namespace) -> int:
    connection(args).close_session(args.session)
    print(f"Session {args.session} was closed.")
    return 0
