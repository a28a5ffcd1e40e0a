"""flmctl: register, inspect and drive applications and sessions; run the local server; list plugins.

Commands and flags follow Flame's flmctl (``list -a``, ``view -s ID``, ``register -f FILE``...). The
endpoint comes from ``--endpoint``, then ``FLAME_ENDPOINT``, then ``flame.yaml``; with none, the local
server for ``FLAME_HOME`` (started on first use).
"""

from __future__ import annotations

import argparse
import platform
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from types import ModuleType

from flamepy_core.cli.commands import (
    applications,
    completion,
    gc,
    keys,
    listing,
    plugins,
    server,
    sessions,
    top,
    view,
)
from flamepy_core.cli.common import EXIT_ERROR, EXIT_USAGE, UsageError
from flamepy_core.client.embedded import provide_inprocess_servers
from flamepy_core.contracts.errors import FlameError
from flamepy_core.engine import IN_PROCESS_SERVERS

COMMANDS: tuple[ModuleType, ...] = (
    applications,
    sessions,
    listing,
    view,
    top,
    gc,
    server,
    keys,
    plugins,
    completion,
)
"""The subcommand modules, in the order ``flmctl --help`` lists them (see :mod:`flamepy_core.cli.commands`)."""

EPILOG = """\
exit status:
  0  success
  1  an error from the server or the input (printed as "flmctl: <message> (code: <n>)" on stderr)
  2  a usage error (unknown command or flag, a missing or contradictory argument)
  `flmctl server status` exits with 3 when no server runs.

Run `flmctl COMMAND --help` for a command's flags and examples."""


def version_text() -> str:
    __version__ = metadata.version("flamepy")  # the distribution's: the CLI sits below the flamepy package
    return f"flmctl {__version__} (flamepy {__version__}, Python {platform.python_version()})"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flmctl", description=__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=version_text(), help="print the version and exit")
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="FILE",
        help="the flame.yaml to read (default: $FLAME_HOME/flame.yaml); the file must exist",
    )
    parser.add_argument(
        "--endpoint",
        default=None,
        metavar="URL",
        help="the server to talk to, e.g. grpc://host:8080 (overrides FLAME_ENDPOINT and flame.yaml)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS:
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    provide_inprocess_servers(IN_PROCESS_SERVERS)  # flmctl assembles the process: in-process endpoints get the engine's
    try:
        return int(args.func(args))
    except UsageError as exc:
        print(f"flmctl {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (FlameError, ValueError, TypeError) as exc:
        print(f"flmctl: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
