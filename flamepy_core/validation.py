"""What the runtime accepts as application names, session ids, commands, arguments, environments and
working directories: the rules in one place.

The server calls :func:`check_application` and :func:`check_session_id` before it stores anything, so
every client is held to them (ours, Flame's, or raw gRPC); ``flmctl`` calls the same functions while it
reads a file, so a bad value is refused with its line number before any connection is made.

The rules, and why:

* **Names** of applications and **session ids**: 1 to 253 characters of ``A-Z a-z 0-9 . _ -``, not
  starting with ``.`` or ``-``, without ``..``. This is the rule Flame's server publishes for names.
  Names become parts of object-cache keys and of file names (instance logs, working directories), so
  anything else (``/``, spaces, control characters, a leading ``-`` read as an option) is refused.
* **command**: non-empty, at most :data:`MAX_PATH` bytes, no NUL or other control character. A NUL
  cannot be passed to ``exec`` at all (it would cut the command short); a newline in a path is a
  mistake, never a name.
* **arguments**: each at most :data:`MAX_ARGUMENT` bytes (Linux's limit for one argument) and without
  NUL. Tabs and newlines are allowed: ``python -c`` scripts carry them.
* **environments**: names non-empty, without ``=`` (it ends the name for ``exec``), NUL or control
  characters; values without NUL; ``name=value`` at most :data:`MAX_ARGUMENT` bytes.
* **working_directory**: absolute (Flame's rule), at most :data:`MAX_PATH` bytes, no NUL or control
  character, and no ``..`` component: the path that is registered is the path that runs.

Every refusal is ``FlameError(INVALID_ARGUMENT)`` naming the field, the offending value (escaped and
shortened, so a hostile value is never echoed whole) and the rule.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from flamepy_core.contracts.errors import FlameError, FlameErrorCode
from flamepy_core.wire.proto import types_pb2 as pb

__all__ = [
    "MAX_ARGUMENT",
    "MAX_NAME",
    "MAX_PATH",
    "NAME_RULE",
    "check_application",
    "check_application_name",
    "check_argument",
    "check_arguments",
    "check_command",
    "check_environment",
    "check_session_id",
    "check_working_directory",
    "show",
]

MAX_NAME = 253
"""Longest application name or session id (Flame's rule)."""
MAX_PATH = 4096
"""Longest command or working directory, in bytes (Linux's PATH_MAX)."""
MAX_ARGUMENT = 128 * 1024
"""Longest argument, or ``name=value`` environment entry, in bytes (Linux's MAX_ARG_STRLEN)."""

NAME_RULE = (
    f"a name is 1 to {MAX_NAME} characters of letters A-Z a-z, digits, '.', '_' and '-', "
    "not starting with '.' or '-', and without '..'"
)
_NAME_CHARS = re.compile(r"[A-Za-z0-9._-]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_SHOWN = 60


def _refuse(field: str, value: str, problem: str, rule: str) -> FlameError:
    return FlameError(FlameErrorCode.INVALID_ARGUMENT, f"{field}: {show(value)} is not accepted: {problem}; {rule}")


def show(value: str, limit: int = _SHOWN) -> str:
    """``value`` as a quoted, escaped literal of at most ``limit`` characters, with its length if cut."""
    if len(value) <= limit:
        return repr(value)
    return f"{value[:limit]!r}... ({len(value)} characters)"


def _describe_char(ch: str) -> str:
    if ch == "\0":
        return "a NUL character"
    if _CONTROL.fullmatch(ch):
        return f"the control character {ch!r}"
    if ch.isspace():
        return f"whitespace ({ch!r})"
    return repr(ch)


def _check_name(field: str, value: str) -> None:
    if not isinstance(value, str):
        raise FlameError(FlameErrorCode.INVALID_ARGUMENT, f"{field}: expected a string, got {type(value).__name__}")
    if not value:
        raise _refuse(field, value, "it is empty", NAME_RULE)
    if len(value) > MAX_NAME:
        raise _refuse(field, value, f"it is {len(value)} characters long", NAME_RULE)
    for i, ch in enumerate(value):
        if not _NAME_CHARS.fullmatch(ch):
            raise _refuse(field, value, f"it contains {_describe_char(ch)} at position {i}", NAME_RULE)
    if value[0] in ".-":
        raise _refuse(field, value, f"it starts with {value[0]!r}", NAME_RULE)
    if ".." in value:
        raise _refuse(field, value, "it contains '..'", NAME_RULE)


def check_application_name(name: str, field: str = "application name") -> None:
    """Refuse an application name that breaks :data:`NAME_RULE`."""
    _check_name(field, name)


def check_session_id(session_id: str, field: str = "session id") -> None:
    """Refuse a session id that breaks :data:`NAME_RULE` (session ids follow the name rule)."""
    _check_name(field, session_id)


def _utf8_size(value: str) -> int:
    return len(value.encode("utf-8", "surrogatepass"))


def _no_nul(field: str, value: str, rule: str) -> None:
    if "\0" in value:
        raise _refuse(field, value, f"it contains a NUL character at position {value.index(chr(0))}", rule)


def _no_control(field: str, value: str, rule: str, *, allow_tab_newline: bool = False) -> None:
    for i, ch in enumerate(value):
        if ch == "\0" or (_CONTROL.fullmatch(ch) and not (allow_tab_newline and ch in "\t\n\r")):
            raise _refuse(field, value, f"it contains {_describe_char(ch)} at position {i}", rule)


_COMMAND_RULE = f"a command is a non-empty program name or path of at most {MAX_PATH} bytes, without control characters"
_ARGUMENT_RULE = f"an argument is at most {MAX_ARGUMENT} bytes and cannot contain NUL (exec cannot pass it)"
_ENV_NAME_RULE = "an environment variable name is non-empty, without '=', NUL or control characters"
_ENV_VALUE_RULE = (
    f"an environment value cannot contain NUL (exec cannot pass it), and name=value is at most {MAX_ARGUMENT} bytes"
)
_WORKDIR_RULE = (
    f"a working directory is an absolute path of at most {MAX_PATH} bytes, without control characters "
    "and without '..' components"
)


def check_command(command: str, field: str = "command") -> None:
    """Refuse an empty, oversized or control-character command."""
    if not command or not command.strip():
        raise _refuse(field, command, "it is empty", _COMMAND_RULE)
    if _utf8_size(command) > MAX_PATH:
        raise _refuse(field, command, f"it is {_utf8_size(command)} bytes long", _COMMAND_RULE)
    _no_control(field, command, _COMMAND_RULE)


def check_argument(argument: str, field: str = "argument") -> None:
    """Refuse an argument with NUL, or longer than :data:`MAX_ARGUMENT` bytes."""
    _no_nul(field, argument, _ARGUMENT_RULE)
    size = _utf8_size(argument)
    if size > MAX_ARGUMENT:
        raise _refuse(field, argument, f"it is {size} bytes long", _ARGUMENT_RULE)


def check_arguments(arguments: Iterable[str], field: str = "arguments") -> None:
    """:func:`check_argument` for each, named ``field[i]``."""
    for i, argument in enumerate(arguments):
        check_argument(argument, f"{field}[{i}]")


def check_environment(environment: Mapping[str, str] | Iterable[tuple[str, str]], field: str = "environments") -> None:
    """Refuse a variable whose name is empty or holds ``=``/NUL/control characters, or whose value holds NUL."""
    items = environment.items() if isinstance(environment, Mapping) else environment
    for name, value in items:
        if not name:
            raise _refuse(f"{field} name", name, "it is empty", _ENV_NAME_RULE)
        if "=" in name:
            raise _refuse(f"{field} name", name, f"it contains '=' at position {name.index('=')}", _ENV_NAME_RULE)
        _no_control(f"{field} name", name, _ENV_NAME_RULE)
        where = f"{field}[{name!r}]" if len(name) <= _SHOWN else f"{field}[{show(name)}]"
        if "\0" in value:
            raise _refuse(
                where, value, f"it contains a NUL character at position {value.index(chr(0))}", _ENV_VALUE_RULE
            )
        size = _utf8_size(name) + 1 + _utf8_size(value)
        if size > MAX_ARGUMENT:
            raise _refuse(where, value, f"name=value is {size} bytes long", _ENV_VALUE_RULE)


def check_working_directory(path: str, field: str = "working_directory") -> None:
    """Refuse a working directory that is relative, oversized, has control characters or a ``..`` part."""
    if not path.startswith("/"):
        raise _refuse(
            field,
            path,
            "it is not an absolute path (flmctl register resolves relative paths against the YAML file)",
            _WORKDIR_RULE,
        )
    if _utf8_size(path) > MAX_PATH:
        raise _refuse(field, path, f"it is {_utf8_size(path)} bytes long", _WORKDIR_RULE)
    _no_control(field, path, _WORKDIR_RULE)
    if ".." in path.split("/"):
        raise _refuse(field, path, "it has a '..' component", _WORKDIR_RULE)


def check_application(name: str, spec: pb.ApplicationSpec) -> None:
    """Every rule that applies to a registration or update: the server's one-line hook."""
    check_application_name(name)
    field = f"application {name}: spec"
    if spec.HasField("command"):
        check_command(spec.command, f"{field}.command")
    check_arguments(spec.arguments, f"{field}.arguments")
    check_environment(((e.name, e.value) for e in spec.environments), f"{field}.environments")
    if spec.HasField("working_directory") and spec.working_directory:
        check_working_directory(spec.working_directory, f"{field}.working_directory")
