"""Shell completion scripts for flmctl (bash, zsh, fish), generated from its argparse parser.

The scripts hold no knowledge of their own: every subcommand, flag and choice comes from the parser
(``flmctl completion SHELL`` prints them), so a new subcommand or flag completes without touching this
module. Flag values complete from their ``choices``; flags that take a file (``type=Path``) complete
file names; other values (session ids, names) are left to the user, since looking them up would mean
talking to a server on every key press.
"""

from __future__ import annotations

import argparse
import shlex
from dataclasses import dataclass, field
from pathlib import Path

SHELLS = ("bash", "zsh", "fish")


@dataclass
class Level:
    """One command level: ``""`` for flmctl itself, ``"server"``, ``"server/start"``..."""

    path: str
    subcommands: dict[str, str] = field(default_factory=dict)
    """name -> one-line help"""
    flags: list[tuple[list[str], str, bool]] = field(default_factory=list)
    """(option strings, help, takes a value)"""
    choices: dict[str, list[str]] = field(default_factory=dict)
    files: set[str] = field(default_factory=set)


def levels(parser: argparse.ArgumentParser, path: str = "") -> list[Level]:
    """Every command level of ``parser``, depth first."""
    level = Level(path)
    found = [level]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            for name, subparser in action.choices.items():
                level.subcommands[name] = helps.get(name, "")
                found += levels(subparser, f"{path}/{name}" if path else name)
            continue
        if not action.option_strings:
            for choice in action.choices or ():  # a positional with choices (completion SHELL)
                level.subcommands[str(choice)] = action.help or ""
            continue
        takes_value = action.nargs != 0
        level.flags.append((list(action.option_strings), action.help or "", takes_value))
        for option in action.option_strings:
            if action.choices:
                level.choices[option] = [str(c) for c in action.choices]
            elif action.type is Path:
                level.files.add(option)
    return found


def _word_list(words: list[str]) -> str:
    return shlex.quote(" ".join(words))


def _case_functions(all_levels: list[Level]) -> str:
    """``_flmctl_subcommands PATH`` and ``_flmctl_flags PATH``, shared by bash and zsh."""
    subs = "\n".join(f'        "{lv.path}") echo {_word_list(list(lv.subcommands))} ;;' for lv in all_levels)
    flags = "\n".join(
        f'        "{lv.path}") echo {_word_list([o for opts, _, _ in lv.flags for o in opts])} ;;' for lv in all_levels
    )
    values = []
    for lv in all_levels:
        for opts, _, takes_value in lv.flags:
            for option in opts:
                if option in lv.choices:
                    values.append(f'        "{lv.path}|{option}") echo "choices {" ".join(lv.choices[option])}" ;;')
                elif option in lv.files:
                    values.append(f'        "{lv.path}|{option}") echo files ;;')
                elif takes_value:
                    values.append(f'        "{lv.path}|{option}") echo value ;;')
    value_cases = "\n".join(values)
    return f"""_flmctl_subcommands() {{
    case "$1" in
{subs}
    esac
}}

_flmctl_flags() {{
    case "$1" in
{flags}
    esac
}}

# What the word after "$1|FLAG" is: "choices A B C", "files", "value" (anything) or nothing (not a flag value).
_flmctl_value() {{
    case "$1" in
{value_cases}
    esac
}}

# The command path of the words typed so far: "", "list", "server/start"...
_flmctl_path() {{
    local cmdpath="" word subs
    for word in "$@"; do
        subs=" $(_flmctl_subcommands "$cmdpath") "
        if [[ "$subs" == *" $word "* ]]; then
            cmdpath="${{cmdpath:+$cmdpath/}}$word"
        fi
    done
    echo "$cmdpath"
}}
"""


def bash_script(parser: argparse.ArgumentParser) -> str:
    return f"""# bash completion for flmctl, generated from its parser by `flmctl completion bash`.
# Load it now:      source <(flmctl completion bash)
# or for good:      flmctl completion bash > ~/.local/share/bash-completion/completions/flmctl
{_case_functions(levels(parser))}
_flmctl() {{
    local cur="${{COMP_WORDS[COMP_CWORD]}}" prev="${{COMP_WORDS[COMP_CWORD-1]}}"
    local cmdpath value
    cmdpath="$(_flmctl_path "${{COMP_WORDS[@]:1:COMP_CWORD-1}}")"
    value="$(_flmctl_value "$cmdpath|$prev")"
    [[ -z "$value" ]] && value="$(_flmctl_value "|$prev")"
    case "$value" in
        choices*) COMPREPLY=($(compgen -W "${{value#choices }}" -- "$cur")); return ;;
        files) COMPREPLY=($(compgen -f -- "$cur")); return ;;
        value) COMPREPLY=(); return ;;
    esac
    if [[ "$cur" == -* ]]; then
        COMPREPLY=($(compgen -W "$(_flmctl_flags "$cmdpath")" -- "$cur"))
    else
        COMPREPLY=($(compgen -W "$(_flmctl_subcommands "$cmdpath")" -- "$cur"))
    fi
}}
complete -o bashdefault -F _flmctl flmctl
"""


def zsh_script(parser: argparse.ArgumentParser) -> str:
    return f"""#compdef flmctl
# zsh completion for flmctl, generated from its parser by `flmctl completion zsh`.
# Load it now (after compinit):  source <(flmctl completion zsh)
# or for good:  flmctl completion zsh > "${{fpath[1]}}/_flmctl"
{_case_functions(levels(parser))}
_flmctl() {{
    local cur="${{words[CURRENT]}}" prev="${{words[CURRENT-1]}}"
    local cmdpath value
    cmdpath="$(_flmctl_path "${{(@)words[2,CURRENT-1]}}")"
    value="$(_flmctl_value "$cmdpath|$prev")"
    [[ -z "$value" ]] && value="$(_flmctl_value "|$prev")"
    case "$value" in
        choices*) compadd -- ${{=value#choices }}; return ;;
        files) _files; return ;;
        value) return ;;
    esac
    if [[ "$cur" == -* ]]; then
        compadd -- ${{=$(_flmctl_flags "$cmdpath")}}
    else
        compadd -- ${{=$(_flmctl_subcommands "$cmdpath")}}
    fi
}}
compdef _flmctl flmctl
"""


def _fish_quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def fish_script(parser: argparse.ArgumentParser) -> str:
    all_levels = levels(parser)
    cases = []
    for lv in all_levels:
        if lv.subcommands:
            names = " ".join(lv.subcommands)
            step = "$cmdpath/$word" if lv.path else "$word"
            cases.append(
                f"            case {_fish_quote(lv.path)}\n"
                f"                contains -- $word {names}; and set cmdpath {step}"
            )
    lines = [
        "# fish completion for flmctl, generated from its parser by `flmctl completion fish`.",
        "# Load it now:  flmctl completion fish | source",
        "# or for good:  flmctl completion fish > ~/.config/fish/completions/flmctl.fish",
        "function __flmctl_path",
        "    set -l cmdpath ''",
        "    for word in (commandline -opc)[2..-1]",
        '        switch "$cmdpath"',
        *cases,
        "        end",
        "    end",
        "    echo $cmdpath",
        "end",
        "complete -c flmctl -f",
    ]
    for lv in all_levels:
        condition = f"-n {_fish_quote(f'test (__flmctl_path) = {_fish_quote(lv.path)}')}"
        for name, text in lv.subcommands.items():
            lines.append(f"complete -c flmctl {condition} -a {name} -d {_fish_quote(text)}")
        for opts, text, takes_value in lv.flags:
            parts = []
            for option in opts:
                if option.startswith("--"):
                    parts.append(f"-l {option[2:]}")
                else:
                    parts.append(f"-s {option[1:]}")
            if any(o in lv.choices for o in opts):
                choices = next(lv.choices[o] for o in opts if o in lv.choices)
                parts.append(f"-x -a {_fish_quote(' '.join(choices))}")
            elif any(o in lv.files for o in opts):
                parts.append("-r -F")
            elif takes_value:
                parts.append("-x")
            lines.append(f"complete -c flmctl {condition} {' '.join(parts)} -d {_fish_quote(text)}")
    return "\n".join(lines) + "\n"


def script(shell: str, parser: argparse.ArgumentParser) -> str:
    return {"bash": bash_script, "zsh": zsh_script, "fish": fish_script}[shell](parser)
