"""What every ``flmctl`` command shares: adding itself to the parser, the connection, usage errors.

A command is a module in :mod:`flamepy_core.cli.commands` with an ``add_parser(sub)`` function that calls
:func:`add_command`; ``flmctl`` lists those modules in :data:`flamepy_core.cli.main.COMMANDS`. Everything
a user reads about a command (its help, each flag's help, its examples) lives on the parser, so the help
text, the shell completion scripts and the CLI reference page are all generated from the same place.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import TypeAlias

from flamepy_core.client.connection import Connection, connect_config
from flamepy_core.config import ClientConfig, resolve_config

SubParsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
"""What ``add_parser`` receives: the ``flmctl`` parser's subcommands (or a command's own, for ``server``)."""

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2

OUTPUT_FORMATS = ("table", "wide", "json", "yaml")
"""``-o``: ``table`` (the default), ``wide`` (more columns), ``json`` and ``yaml`` (every field)."""


class UsageError(Exception):
    """The command line asks for something that makes no sense; ``flmctl`` exits with 2 and says why."""


def add_command(
    sub: SubParsers,
    name: str,
    run: Callable[[argparse.Namespace], int],
    summary: str,
    examples: Sequence[tuple[str, str]],
    *,
    description: str | None = None,
) -> argparse.ArgumentParser:
    """Add the subcommand ``name``: one-line ``summary``, and ``examples`` as (command line, what it does)."""
    parser = sub.add_parser(
        name,
        help=summary,
        description=description or summary[:1].upper() + summary[1:] + ".",
        epilog=format_examples(examples),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(func=run, examples=tuple(examples))
    return parser


def format_examples(examples: Sequence[tuple[str, str]]) -> str:
    lines = ["examples:"]
    for command, what in examples:
        lines.append(f"  {command}")
        lines.append(f"      {what}")
    return "\n".join(lines)


def add_output_flag(parser: argparse.ArgumentParser, formats: Sequence[str] = OUTPUT_FORMATS) -> None:
    parser.add_argument(
        "-o",
        "--output",
        choices=tuple(formats),
        default=formats[0],
        metavar="FORMAT",
        help=f"output format: {', '.join(formats)} (default: {formats[0]})",
    )


def config(args: argparse.Namespace) -> ClientConfig:
    return resolve_config(endpoint=args.endpoint, config_file=args.config)


def connection(args: argparse.Namespace) -> Connection:
    return connect_config(config(args))
