"""``flmctl keygen``: a key pair for a transport that authenticates with key pairs (CURVE for ZeroMQ)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from flamepy_core.cli.common import EXIT_ERROR, SubParsers, UsageError, add_command
from flamepy_core.contracts.transport import KeyPairTransport
from flamepy_core.plugins import get_registry


def add_parser(sub: SubParsers) -> None:
    p = add_command(
        sub,
        "keygen",
        run,
        "make a key pair for a transport's authentication (CURVE for ZeroMQ)",
        [
            ("flmctl keygen server --dir keys", "keys/server.key (public) and keys/server.key_secret (private)"),
            ("flmctl keygen alice --dir clients", "a client's pair; a server admits clients/*.key"),
        ],
    )
    p.add_argument("name", help="the pair's name: writes NAME.key (public) and NAME.key_secret (private, 0600)")
    p.add_argument("--dir", default=".", metavar="DIR", help="where to write them (default: the current directory)")
    p.add_argument(
        "--transport", default=None, metavar="NAME", help="the transport whose keys to make (default: the one able)"
    )


def run(args: argparse.Namespace) -> int:
    registry = get_registry()
    makers = [c for c in registry.transports() if isinstance(registry.create_transport(c), KeyPairTransport)]
    able = ", ".join(c.spec.name for c in makers) or "none is installed"
    if args.transport:
        chosen = registry.transport_spec(args.transport)
        if chosen not in makers:
            raise UsageError(f"transport '{args.transport}' makes no key pairs; these do: {able}")
    elif len(makers) == 1:
        chosen = makers[0]
    else:
        raise UsageError(f"choose the transport with --transport ({able})")
    transport = registry.create_transport(chosen)
    assert isinstance(transport, KeyPairTransport)
    try:
        public, secret = transport.make_key_pair(str(Path(args.dir).expanduser().resolve()), args.name)
    except FileExistsError as exc:
        print(f"flmctl keygen: {exc}", file=sys.stderr)
        return EXIT_ERROR
    security = chosen.spec.capabilities.security
    mechanism = security.mechanism if security is not None else chosen.spec.name
    print(f"{mechanism} key pair '{args.name}' for transport {chosen.spec.name}:")
    print(f"  public key  {public}   (hand it out: servers list it to admit this key, clients name a server's)")
    print(f"  key pair    {secret}   (keep it private: readable by you only)")
    return 0
