"""The flmctl reference as Markdown, generated from the parser (the docs site's CLI page embeds it).

Nothing here is written by hand: usage lines, flags, their help and the examples all come from
:func:`flamepy_core.cli.main.build_parser`, so the page cannot drift from the program.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator


def _subcommands(parser: argparse.ArgumentParser) -> Iterator[tuple[str, str, argparse.ArgumentParser]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            for name, sub in action.choices.items():
                yield name, helps.get(name, ""), sub


def _flag(action: argparse.Action) -> str:
    if not action.option_strings:
        return f"`{action.metavar or action.dest}`"
    names = ", ".join(f"`{option}`" for option in action.option_strings)
    if action.nargs == 0:
        return names
    metavar = action.metavar or action.dest.upper()
    shown = f"[{metavar}]" if action.nargs == "?" else metavar
    return f"{names} `{shown}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def flags_table(parser: argparse.ArgumentParser) -> str:
    """A Markdown table of ``parser``'s flags and their help (empty when it has none)."""
    return "\n".join(_flag_rows(parser))


def _flag_rows(parser: argparse.ArgumentParser) -> list[str]:
    rows = []
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        text = action.help or ""
        if action.required and action.option_strings:
            text += " (required)"
        rows.append(f"| {_flag(action)} | {_cell(text)} |")
    if not rows:
        return []
    return ["| flag | meaning |", "| --- | --- |", *rows, ""]


def _examples(parser: argparse.ArgumentParser) -> list[str]:
    examples = parser.get_default("examples") or ()
    if not examples and parser.epilog and parser.epilog.startswith("examples:"):
        lines = parser.epilog.splitlines()[1:]
        examples = tuple(zip(lines[0::2], lines[1::2], strict=False))
        examples = tuple((c.strip(), w.strip()) for c, w in examples)
    if not examples:
        return []
    out = ["Examples:", "", "```bash"]
    out += [f"{command:<58} # {what}" for command, what in examples]
    return [*out, "```", ""]


def _usage(parser: argparse.ArgumentParser) -> str:
    return " ".join(parser.format_usage().removeprefix("usage: ").split())


def _command(name: str, parser: argparse.ArgumentParser, level: int) -> list[str]:
    out = [f"{'#' * level} `{name}`", "", "```", _usage(parser), "```", ""]
    if parser.description:
        out += [" ".join(parser.description.split()), ""]
    out += _flag_rows(parser)
    out += _examples(parser)
    for sub_name, _help, sub in _subcommands(parser):
        out += _command(f"{name} {sub_name}", sub, level + 1)
    return out


def markdown(parser: argparse.ArgumentParser, level: int = 3) -> str:
    """Every command of ``parser``: usage, description, flags and examples, headings from ``level``."""
    out = ["| command | what it does |", "| --- | --- |"]
    out += [f"| [`flmctl {name}`](#flmctl-{name}) | {_cell(text)} |" for name, text, _ in _subcommands(parser)]
    out += ["", "Global flags (before the command):", ""]
    out += _flag_rows(parser)
    for name, _text, sub in _subcommands(parser):
        out += _command(f"flmctl {name}", sub, level)
    return "\n".join(out).rstrip() + "\n"
