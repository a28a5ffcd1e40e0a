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
from flamepy_core.contracts.errors import FlameError, FlameErrorCode
from flamepy_core.engine.server import STARTUP_ERROR_PREFIX, FlameServer, ServerTls, default_listen
from flamepy_core.privacy import private_dir, private_subdir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flamepy_core.engine", description=__doc__)
    parser.add_argument("--home", type=Path, default=None, help="FLAME_HOME (default: $FLAME_HOME or ~/.flame)")
    parser.add_argument("--listen", default=None, help="endpoint URL to listen on (default: a socket in FLAME_HOME)")
    parser.add_argument("--transport", default=None, help="transport for the default listen endpoint (grpc, zmq)")
    parser.add_argument(
        "--instance-transport",
        default=None,
        help="transport between server and instances: auto (gRPC on Flame's bare unix path, ZeroMQ offered to "
        "services written with flamepy), grpc, zmq, ... (default: --transport if given, else auto)",
    )
    parser.add_argument("--idle-exit", type=float, default=None, help="exit after N idle seconds (0 = never)")
    parser.add_argument("--durability", choices=("batched", "strict"), default="batched")
    parser.add_argument("--log-level", default="INFO")
    add_tls_arguments(parser)
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
    try:
        tls = server_tls(args)
    except FlameError as exc:
        print(f"{STARTUP_ERROR_PREFIX}{exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    home = (args.home or flame_home()).expanduser().resolve()
    try:
        private_subdir(private_dir(home) / "logs")
        settings = RuntimeSettings.from_env()
        server = FlameServer(
            home,
            args.listen or default_listen(home, args.transport),
            settings=settings,
            instance_transport=args.instance_transport or args.transport or "auto",
            durability=args.durability,
            tls=tls,
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
    print(f"flamepy server listening on {server.endpoint}", flush=True)
    if server.flight_cache_endpoint:
        print(f"Flame-compatible Flight cache on {server.flight_cache_endpoint}", flush=True)
    server.serve_forever(idle_exit)
    return 0


def add_tls_arguments(parser: argparse.ArgumentParser) -> None:
    """The TLS flags, shared with ``flmctl server start --foreground``."""
    parser.add_argument(
        "--tls-cert",
        type=Path,
        default=None,
        metavar="FILE",
        help="the server's certificate (PEM); with --tls-key, serve TLS on an https:// or grpcs:// --listen",
    )
    parser.add_argument("--tls-key", type=Path, default=None, metavar="FILE", help="its private key (PEM)")
    parser.add_argument(
        "--tls-client-ca",
        type=Path,
        default=None,
        metavar="FILE",
        help="mutual TLS: refuse clients without a certificate signed by this CA (PEM)",
    )
    parser.add_argument(
        "--tls-ca",
        type=Path,
        default=None,
        metavar="FILE",
        help="the CA that signed --tls-cert, given to instances as FLAME_CA_FILE to reach the object cache "
        "(default: the server's own FLAME_CA_FILE)",
    )


def server_tls(args: argparse.Namespace) -> ServerTls | None:
    """The server's TLS from the flags, or None; flags that make no sense alone are refused."""
    if args.tls_cert is None and args.tls_key is None:
        alone = [flag for flag, value in (("--tls-client-ca", args.tls_client_ca), ("--tls-ca", args.tls_ca)) if value]
        if alone:
            raise FlameError(FlameErrorCode.INVALID_CONFIG, f"{' and '.join(alone)} need --tls-cert and --tls-key")
        return None
    if args.tls_cert is None or args.tls_key is None:
        given, missing = ("--tls-cert", "--tls-key") if args.tls_key is None else ("--tls-key", "--tls-cert")
        raise FlameError(
            FlameErrorCode.INVALID_CONFIG, f"{given} needs {missing}: the server's certificate and its private key"
        )
    return ServerTls(
        cert_file=str(args.tls_cert),
        key_file=str(args.tls_key),
        client_ca_file=str(args.tls_client_ca) if args.tls_client_ca else None,
        ca_file=str(args.tls_ca) if args.tls_ca else None,
    )


if __name__ == "__main__":
    sys.exit(main())
