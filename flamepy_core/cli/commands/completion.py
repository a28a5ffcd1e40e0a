"""``flmctl completion SHELL``: print a completion script for bash, zsh or fish."""

from __future__ import annotations

import argparse

from flamepy_core.cli.common import SubParsers, add_command
from flamepy_core.cli.shells import SHELLS, script


def add_parser(sub: SubParsers) -> None:
    p = add_command(
        sub,
        "completion",
        run,
        "print a shell completion script (bash, zsh or fish)",
        [
            ("source <(flmctl completion bash)", "complete flmctl in this bash session"),
            ('flmctl completion zsh > "${fpath[1]}/_flmctl"', "install it for zsh"),
            ("flmctl completion fish | source", "complete flmctl in this fish session"),
        ],
    )
    p.add_argument("shell", choices=SHELLS, metavar="SHELL", help=f"the shell: {', '.join(SHELLS)}")


def run(args: argparse.Namespace) -> int:
    from flamepy_core.cli.main import build_parser

    print(script(args.shell, build_parser()), end="")
    return 0
