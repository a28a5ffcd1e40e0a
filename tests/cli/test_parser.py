"""flmctl's parser: the version, help on every flag and an example per command, usage errors, and the
shell completion scripts, run in real shells.

These run flmctl in a subprocess where the exit status matters, and never start a server: everything
here is decided before a connection is made.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import flamepy
from flamepy_core.cli.main import COMMANDS, build_parser
from flamepy_core.cli.shells import levels

FLMCTL = [sys.executable, "-m", "flamepy_core.cli.main"]


def flmctl(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLAME_")}
    env["FLAME_HOME"] = str(home)
    return subprocess.run([*FLMCTL, *args], capture_output=True, text=True, timeout=60, env=env)


def all_parsers(parser: argparse.ArgumentParser, path: str = "flmctl") -> list[tuple[str, argparse.ArgumentParser]]:
    found = [(path, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += all_parsers(sub, f"{path} {name}")
    return found


def subcommands(parser: argparse.ArgumentParser) -> list[str]:
    return [
        name for action in parser._actions if isinstance(action, argparse._SubParsersAction) for name in action.choices
    ]


def test_version_comes_from_the_package_metadata(tmp_path: Path) -> None:
    from importlib.metadata import version

    assert flamepy.__version__ == version("flamepy"), "one version: the distribution's"
    proc = flmctl("--version", home=tmp_path)
    assert proc.returncode == 0
    assert proc.stdout.startswith(f"flmctl {flamepy.__version__} ")
    assert not (tmp_path / "server.json").exists(), "--version starts no server"


def test_every_flag_has_help_and_every_command_an_example() -> None:
    parsers = all_parsers(build_parser())
    assert {p for p, _ in parsers} >= {"flmctl list", "flmctl view", "flmctl server start", "flmctl completion"}
    for path, parser in parsers:
        for action in parser._actions:
            if action.option_strings:
                assert action.help and action.help != argparse.SUPPRESS, f"{path} {action.option_strings}: no help"
        leaf = not any(isinstance(a, argparse._SubParsersAction) for a in parser._actions)
        if path != "flmctl":
            assert parser.epilog and "examples:" in parser.epilog, f"{path} has no examples"
            if leaf:
                assert path.split()[1] in parser.epilog, f"{path}: its examples do not run it"
    assert len(COMMANDS) == len({m.__name__ for m in COMMANDS})


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["list", "-t"], "-s SESSION_ID"),
        (["list", "-s", "some-id"], "add -t"),
        (["list", "-a", "-e"], "-a and -e"),
        (["list", "-o", "xml"], "invalid choice: 'xml'"),
        (["view", "-o", "csv", "-a", "x"], "invalid choice: 'csv'"),
        (["view", "-t", "3"], "-t TASK -s SESSION_ID"),
        (["view"], "needs -a NAME"),
        (["view", "-a", "x", "-s", "y"], "shows one thing"),
        (["completion", "powershell"], "invalid choice: 'powershell'"),
        (["no-such-command"], "invalid choice: 'no-such-command'"),
    ],
)
def test_usage_errors_exit_2_and_say_what_to_do(tmp_path: Path, argv: list[str], named: str) -> None:
    proc = flmctl(*argv, home=tmp_path)
    assert proc.returncode == 2, proc
    assert named in proc.stderr, proc.stderr
    assert not (tmp_path / "server.json").exists(), "a usage error starts no server"


def test_help_lists_exit_codes_and_every_command(tmp_path: Path) -> None:
    text = flmctl("--help", home=tmp_path).stdout
    for line in ("0  success", "1  an error", "2  a usage error"):
        assert line in text
    for name in subcommands(build_parser()):
        assert f"\n    {name} " in text, f"flmctl --help does not list {name}"


# -- completion ---------------------------------------------------------------------------------------------


def bash_complete(script: Path, line: str) -> list[str]:
    """What bash offers after typing ``line`` (words split on spaces; a trailing space starts a new word)."""
    words = line.split(" ")
    program = (
        f"source {script}\n"
        f"COMP_WORDS=({' '.join(repr(w) for w in words)})\n"
        f"COMP_CWORD={len(words) - 1}\n"
        "_flmctl\n"
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    proc = subprocess.run(["bash", "-c", program], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    return [w for w in proc.stdout.splitlines() if w]


def test_bash_completion_offers_commands_flags_and_choices(tmp_path: Path) -> None:
    proc = flmctl("completion", "bash", home=tmp_path)
    assert proc.returncode == 0
    script = tmp_path / "flmctl.bash"
    script.write_text(proc.stdout)
    assert "complete -o bashdefault -F _flmctl flmctl" in proc.stdout

    assert set(bash_complete(script, "flmctl ")) >= {"list", "view", "register", "server", "completion"}
    assert bash_complete(script, "flmctl li") == ["list"]
    assert sorted(bash_complete(script, "flmctl server st")) == ["start", "status", "stop"]
    assert set(bash_complete(script, "flmctl server start --")) >= {"--foreground", "--listen", "--idle-exit"}
    assert bash_complete(script, "flmctl list -o ") == ["table", "wide", "json", "yaml"]
    assert bash_complete(script, "flmctl view -s abc -o y") == ["yaml"]
    assert bash_complete(script, "flmctl completion ") == ["bash", "zsh", "fish"]
    assert "--file" in bash_complete(script, "flmctl register --")
    (tmp_path / "echo-app.yaml").write_text("")
    files = bash_complete(script, f"flmctl register --file {tmp_path}/echo")
    assert files == [f"{tmp_path}/echo-app.yaml"], "a file flag completes file names"
    assert bash_complete(script, "flmctl create -a ") == [], "names are not guessed"


def test_completion_levels_come_from_the_parser() -> None:
    parser = build_parser()
    by_path = {lv.path: lv for lv in levels(parser)}
    assert list(by_path[""].subcommands) == subcommands(parser)
    assert {"register", "update", "unregister", "create", "close", "list", "view", "server"} <= set(
        by_path[""].subcommands
    )
    assert list(by_path["server"].subcommands) == ["start", "stop", "status"]
    assert by_path["list"].choices["-o"] == ["table", "wide", "json", "yaml"]
    assert "--file" in by_path["register"].files


@pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh is not installed")
def test_zsh_completion_script_loads_and_completes(tmp_path: Path) -> None:
    script = tmp_path / "_flmctl"
    script.write_text(flmctl("completion", "zsh", home=tmp_path).stdout)
    assert subprocess.run(["zsh", "-n", str(script)], capture_output=True, timeout=30).returncode == 0
    # The completion function's logic, driven outside zle: compadd is replaced by a printer.
    program = (
        "compdef() { :; }\n_files() { print FILES; }\ncompadd() { shift; print -l -- $@; }\n"
        f"source {script}\n"
        "words=(flmctl list -o ''); CURRENT=4; _flmctl\n"
        "words=(flmctl server ''); CURRENT=3; _flmctl\n"
    )
    proc = subprocess.run(["zsh", "-f", "-c", program], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["table", "wide", "json", "yaml", "start", "stop", "status"]


@pytest.mark.skipif(shutil.which("fish") is None, reason="fish is not installed")
def test_fish_completion_script_completes(tmp_path: Path) -> None:
    script = tmp_path / "flmctl.fish"
    script.write_text(flmctl("completion", "fish", home=tmp_path).stdout)
    program = f"source {script}; complete -C 'flmctl server '; complete -C 'flmctl list -o '"
    proc = subprocess.run(["fish", "--no-config", "-c", program], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    offered = [line.split("\t")[0] for line in proc.stdout.splitlines()]
    assert offered[:3] == ["start", "status", "stop"] or set(offered[:3]) == {"start", "status", "stop"}
    assert {"table", "wide", "json", "yaml"} <= set(offered)


def test_cli_reference_page_names_every_command_flag_and_example() -> None:
    from flamepy_core.cli.reference import markdown

    page = markdown(build_parser())
    for path, parser in all_parsers(build_parser()):
        if path != "flmctl":
            assert f"`{path}`" in page, f"{path} is missing from the reference"
        for action in parser._actions:
            for option in action.option_strings:
                if option not in ("-h", "--help"):
                    assert f"`{option}`" in page, f"{path} {option} is missing from the reference"
        for command, _what in parser.get_default("examples") or ():
            assert command in page
    assert "flmctl list -t -s echo-app-a1b2c3 -o json" in page
