"""``flmctl server start|stop|status``: the local server of ``FLAME_HOME``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from flamepy_core.cli.common import SubParsers, add_command, config, format_examples

EXIT_NOT_RUNNING = 3
"""``server status`` when no server runs (so scripts can test for one without parsing text)."""

TLS_HELP = {
    "--tls-cert": "the server's certificate (PEM), to serve TLS on an https:// or grpcs:// --listen",
    "--tls-key": "its private key (PEM)",
    "--tls-client-ca": "mutual TLS: refuse clients without a certificate signed by this CA (PEM)",
    "--tls-ca": "the CA that signed --tls-cert, given to instances as FLAME_CA_FILE (default: $FLAME_CA_FILE)",
}


def add_parser(sub: SubParsers) -> None:
    p = add_command(
        sub,
        "server",
        run,
        "start, stop or inspect the local server of FLAME_HOME",
        [
            ("flmctl server status", "whether a server runs for FLAME_HOME, and where (exit status 3: none)"),
            ("flmctl server start --foreground --listen grpc://0.0.0.0:8080", "share a server over gRPC"),
            ("flmctl server stop", "stop it and its instances"),
        ],
    )
    actions = p.add_subparsers(dest="server_command", required=True, metavar="ACTION")
    start = actions.add_parser(
        "start",
        help="start the server (in the background unless --foreground)",
        description="Start the local server of FLAME_HOME (in the background unless --foreground).",
        epilog=format_examples(
            [
                ("flmctl server start", "a background server listening in FLAME_HOME"),
                ("flmctl server start --transport grpc --idle-exit 300", "over gRPC, exiting after 5 idle minutes"),
                ("flmctl server start --foreground --listen grpc://127.0.0.1:8080", "in this terminal, on TCP"),
            ]
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    start.add_argument(
        "--listen",
        default=None,
        metavar="URL",
        help="endpoint URL to listen on (with --foreground), e.g. grpc://0.0.0.0:8080",
    )
    start.add_argument("--foreground", action="store_true", help="run in this process, logging on stderr")
    start.add_argument(
        "--transport",
        default=None,
        metavar="NAME",
        help="the runtime's transport: zmq (default) or grpc; default: FLAME_TRANSPORT or flame.yaml",
    )
    start.add_argument(
        "--idle-exit",
        type=float,
        default=None,
        metavar="SECONDS",
        help="exit after this many idle seconds (0 = never; default: FLAME_IDLE_EXIT, 600)",
    )
    for flag, text in TLS_HELP.items():
        start.add_argument(flag, type=Path, default=None, metavar="FILE", help=f"{text} (with --foreground)")
    actions.add_parser(
        "stop",
        help="stop the server and its instances",
        description="Stop the local server of FLAME_HOME: SIGTERM, then SIGKILL after 30 seconds.",
        epilog=format_examples([("flmctl server stop", "stop it (says so when none was running)")]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions.add_parser(
        "status",
        help="say whether a server runs, and where (exit status 3 when none does)",
        description="Say whether a server runs for FLAME_HOME and where it listens; exit status 3 when none does.",
        epilog=format_examples([("flmctl server status", "pid and endpoint of the running server")]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def run(args: argparse.Namespace) -> int:
    from flamepy_core.client import local

    cfg = config(args)
    home = cfg.home
    if args.server_command == "status":
        info = local.live_server(home)
        if not info:
            print(f"no flamepy server is running for {home}")
            return EXIT_NOT_RUNNING
        print(f"flamepy server for {home}: pid {info['pid']}, listening on {info['endpoint']}")
        return 0
    if args.server_command == "stop":
        stopped = local.stop_server(home)
        print(f"stopped the flamepy server for {home}" if stopped else f"no flamepy server was running for {home}")
        return 0
    # start
    info = local.live_server(home)
    if info:
        print(f"a flamepy server is already running for {home}: pid {info['pid']}, {info['endpoint']}")
        return 0 if not args.listen or args.listen == info["endpoint"] else 1
    if args.foreground:
        from flamepy_core.engine.__main__ import main as serve

        argv = ["--home", str(home)]
        if args.listen:
            argv += ["--listen", args.listen]
        transport = args.transport or cfg.transport
        if transport:
            argv += ["--transport", transport]
        if args.idle_exit is not None:
            argv += ["--idle-exit", str(args.idle_exit)]
        for flag, value in _tls_flags(args):
            argv += [flag, str(value)]
        return serve(argv)
    if args.listen:
        print(
            "flmctl server start: --listen needs --foreground (the background server listens in FLAME_HOME)",
            file=sys.stderr,
        )
        return 2
    if _tls_flags(args):
        print(
            "flmctl server start: --tls-* need --foreground and an https:// or grpcs:// --listen endpoint",
            file=sys.stderr,
        )
        return 2
    info = local.start_server(home, transport=args.transport or cfg.transport, idle_exit=args.idle_exit)
    print(f"started a flamepy server for {home}: pid {info['pid']}, listening on {info['endpoint']}")
    return 0


def _tls_flags(args: argparse.Namespace) -> list[tuple[str, Path]]:
    """The TLS flags given to ``server start``, as passed on to ``python -m flamepy_core.engine``."""
    given = (
        ("--tls-cert", args.tls_cert),
        ("--tls-key", args.tls_key),
        ("--tls-client-ca", args.tls_client_ca),
        ("--tls-ca", args.tls_ca),
    )
    return [(flag, value) for flag, value in given if value is not None]
