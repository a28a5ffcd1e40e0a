"""``python -m flamepy_core.engine``: run the server in the foreground (what ``flmctl server start`` runs)."""

from __future__ import annotations

import argparse
import faulthandler
import logging
import os
import signal
import sys
from pathlib import Path
from types import FrameType

from flamepy_core.config import RuntimeSettings, flame_home
from flamepy_core.contracts.errors import FlameError
from flamepy_core.engine.choice import default_listen
from flamepy_core.engine.heap import keep_large_buffers
from flamepy_core.engine.security import add_security_arguments, security_from_args, server_security_options
from flamepy_core.engine.server import FlameServer
from flamepy_core.home import STARTUP_ERROR_PREFIX
from flamepy_core.plugins import get_registry
from flamepy_core.privacy import private_dir, private_subdir


def main(argv: list[str] | None = None) -> int:
    keep_large_buffers()  # before any thread starts (see flamepy_core.engine.heap)
    registry = get_registry()
    parser = argparse.ArgumentParser(prog="python -m flamepy_core.engine", description=__doc__)
    parser.add_argument("--home", type=Path, default=None, help="FLAME_HOME (default: $FLAME_HOME or ~/.flame)")
    parser.add_argument("--listen", default=None, help="endpoint URL to listen on (default: a socket in FLAME_HOME)")
    parser.add_argument(
        "--transport",
        default=None,
        help="the runtime's transport, for the default listen endpoint and the instance links "
        f"(installed: {', '.join(c.spec.name for c in registry.transports())}; default: the local default)",
    )
    parser.add_argument(
        "--instance-transport",
        default=os.environ.get("FLAME_INSTANCE_TRANSPORT") or None,
        help="transport between server and instances: auto (Flame's protocol on a bare socket path, plus the "
        "local default offered to services written with flamepy) or a transport name "
        "(default: $FLAME_INSTANCE_TRANSPORT, else auto, or --transport if given unless that is the bare-path "
        "transport, grpc, which auto already uses for Flame's services)",
    )
    parser.add_argument("--idle-exit", type=float, default=None, help="exit after N idle seconds (0 = never)")
    parser.add_argument("--durability", choices=("batched", "strict"), default="batched")
    parser.add_argument("--log-level", default="INFO")
    add_security_arguments(parser, registry)
    parser.add_argument(
        "--flight-listen",
        default=os.environ.get("FLAME_FLIGHT_LISTEN") or None,
        help="also serve Flame's Arrow Flight cache protocol on grpc://host:port, for clients written with "
        "Flame's SDK (needs the flight extra; default: $FLAME_FLIGHT_LISTEN)",
    )
    parser.add_argument(
        "--flight-for-instances",
        action="store_true",
        help="give instances the Flight cache (FLAME_CACHE_ENDPOINT + FLAME_CACHE_PROTOCOL=flight) instead of ours",
    )
    args = parser.parse_args(argv)
    home = (args.home or flame_home()).expanduser().resolve()
    try:
        security = security_from_args(args, registry)
        listen = args.listen or default_listen(home, args.transport, registry)
        # Settings that cannot fit are refused before anything is started (exit code 2, as argparse does).
        server_security_options(listen, registry.transport_spec_for_endpoint(listen), security)
    except FlameError as exc:
        print(f"{STARTUP_ERROR_PREFIX}{exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    try:
        private_subdir(private_dir(home) / "logs")
        settings = RuntimeSettings.from_env()
        server = FlameServer(
            home,
            listen,
            settings=settings,
            registry=registry,
            transport=args.transport,
            instance_transport=args.instance_transport,
            durability=args.durability,
            security=security,
            insecure=args.insecure,
            flight_listen=args.flight_listen,
            flight_for_instances=args.flight_for_instances,
        )
    except FlameError as exc:  # one line whoever started this server relays (see client.local)
        print(f"{STARTUP_ERROR_PREFIX}{exc}", file=sys.stderr)
        return 1
    idle_exit = settings.idle_exit if args.idle_exit is None else args.idle_exit

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        logging.getLogger(__name__).info("signal %d: stopping", signum)
        server._stopped.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    # A file that cannot grow (RLIMIT_FSIZE, as a full disk) must be a write error the store reports and
    # retries, not a signal that kills the server. Instances get the default back (subprocess restores it).
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    # `kill -USR1 <server pid>` writes every thread's stack to the server's log: a hang explains itself.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    try:
        server.start()
    except FlameError as exc:
        print(f"{STARTUP_ERROR_PREFIX}{exc}", file=sys.stderr)
        server.stop()
        return 1
    print(f"flamepy server listening on {server.endpoint} ({server.transport_name})", flush=True)
    if server.flight_cache_endpoint:
        print(f"Flame-compatible Flight cache on {server.flight_cache_endpoint}", flush=True)
    server.serve_forever(idle_exit)
    return 0


if __name__ == "__main__":
    sys.exit(main())
