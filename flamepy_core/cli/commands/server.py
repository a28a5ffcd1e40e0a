"""``flmctl server start|stop|status``: the local server of ``FLAME_HOME``."""

from __future__ import annotations

import argparse

from flamepy_core.cli.common import SubParsers, add_command, config, format_examples
from flamepy_core.client import local
from flamepy_core.engine.security import add_security_arguments, security_argv
from flamepy_core.plugins import get_registry

EXIT_NOT_RUNNING = 3
"""``server status`` when no server runs (so scripts can test for one without parsing text)."""


def add_parser(sub: SubParsers) -> None:
    p = add_command(
        sub,
        "server",
        run,
        "start, stop or inspect the local server of FLAME_HOME",
        [
            ("flmctl server status", "whether a server runs for FLAME_HOME, where and on which transport (3: none)"),
            (
                "flmctl server start --listen https://0.0.0.0:8443 --tls-cert s.crt --tls-key s.key",
                "share a server over gRPC with TLS",
            ),
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
                (
                    "flmctl server start --listen zmq+tcp://0.0.0.0:5555 --curve-secret-key keys/server.key_secret "
                    "--curve-client-keys clients",
                    "on the network, admitting only the listed CURVE keys",
                ),
            ]
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    start.add_argument(
        "--listen",
        default=None,
        metavar="URL",
        help="endpoint URL to listen on (default: the transport's private socket in FLAME_HOME)",
    )
    start.add_argument("--foreground", action="store_true", help="run in this process, logging on stderr")
    start.add_argument(
        "--transport",
        default=None,
        metavar="NAME",
        help="the runtime's transport, any installed one with local_schemes (default: FLAME_TRANSPORT, "
        "flame.yaml, else the local default)",
    )
    start.add_argument(
        "--idle-exit",
        type=float,
        default=None,
        metavar="SECONDS",
        help="exit after this many idle seconds (0 = never; default: FLAME_IDLE_EXIT, 600)",
    )
    add_security_arguments(start, get_registry())
    actions.add_parser(
        "stop",
        help="stop the server and its instances",
        description="Stop the local server of FLAME_HOME: SIGTERM, then SIGKILL after 30 seconds.",
        epilog=format_examples([("flmctl server stop", "stop it (says so when none was running)")]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions.add_parser(
        "status",
        help="say whether a server runs, where and with which transport (exit status 3 when none does)",
        description="Say whether a server runs for FLAME_HOME, where it listens and with which transport; exit "
        "status 3 when none does.",
        epilog=format_examples([("flmctl server status", "pid, endpoint and transport of the running server")]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def _with(info: dict[str, object]) -> str:
    return f" with {info['transport']}" if info.get("transport") else ""


def run(args: argparse.Namespace) -> int:
    cfg = config(args)
    home = cfg.home
    registry = get_registry()
    if args.server_command == "status":
        info = local.live_server(home)
        if not info:
            print(f"no flamepy server is running for {home}")
            return EXIT_NOT_RUNNING
        print(f"flamepy server for {home}: pid {info['pid']}, listening on {info['endpoint']}{_with(info)}")
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
    transport: str | None = args.transport or cfg.transport
    if transport and not args.listen:
        # An unknown name, or one that cannot listen privately in FLAME_HOME: refused before anything starts.
        purpose = "for the server's default listen endpoint (a private socket in FLAME_HOME)"
        registry.require(registry.transport_spec(transport), "local_schemes", purpose)
    argv: list[str] = []
    if args.listen:
        argv += ["--listen", args.listen]
    if args.idle_exit is not None:
        argv += ["--idle-exit", str(args.idle_exit)]
    argv += security_argv(args, registry)
    if args.foreground:
        from flamepy_core.engine.__main__ import main as serve  # the server only when it runs here

        return serve(["--home", str(home), *(["--transport", transport] if transport else []), *argv])
    info = local.start_server(home, transport=transport, extra_argv=argv)
    print(f"started a flamepy server for {home}: pid {info['pid']}, listening on {info['endpoint']}{_with(info)}")
    return 0
