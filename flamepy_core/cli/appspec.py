"""Flame's application YAML: what ``flmctl register --file`` and ``flmctl update`` read.

A file holds one or more YAML documents separated by ``---``; each describes one application::

    metadata:
      name: echo-app                 # required; Flame's name rule (flamepy_core.validation)
    spec:                            # every field optional
      shim: Host                     # Host|host or Wasm|wasm|WASM, normalised to "Host"/"Wasm"
      image: ...
      description: ...
      labels: [a, b]                 # strings
      command: /usr/bin/python
      arguments: [echo_service.py]   # strings; quote numbers ('8080')
      environments: {FLAME_LOG_LEVEL: INFO}
      working_directory: examples/echo
      max_instances: 10              # integer >= 1
      delay_release: 60              # whole seconds >= 0
      schema: {input: '{"type": "string"}', output: '...', common_data: '...'}   # JSON strings
      url: file:///opt/pkg.whl
      installer: python              # python | binary
      serializer: cloudpickle        # flamepy only
      task_timeout: 300              # flamepy only: seconds > 0 a task may run

Decisions, and why:

* Unknown keys are errors, not warnings: a misspelt ``max_instance`` silently ignored would register an
  application that behaves differently from the file, and a registration is hard to notice afterwards.
  Every error names the file, the document (when there are several), the key path, the line, the bad
  value and what is accepted.
* ``arguments`` and ``labels`` must be strings. YAML 1.1 reads ``1.10`` as the float ``1.1``, ``010`` as
  8 and ``on`` as ``True``; turning those back into text would pass a different argument than the one
  written, so a non-string is refused with a hint to quote it.
* ``environments`` values that YAML reads as numbers, booleans or dates are accepted and kept *as
  written* (``PORT: 8080`` -> ``"8080"``, ``DEBUG: yes`` -> ``"yes"``, ``VERSION: 1.10`` -> ``"1.10"``),
  because environment variables are text and that is what people who write ``PORT: 8080`` expect.
  ``null`` and nested lists or mappings are refused.
* A relative ``working_directory`` is resolved against the folder of the YAML file (a flamepy extension:
  Flame requires an absolute path), so a project can ship its spec next to its code; ``~`` is expanded.
  Absolute paths are kept.
* ``serializer`` is flamepy's own key; it is returned in :attr:`AppSpec.serializer`, not in
  :attr:`AppSpec.attributes`, so that ``ApplicationAttributes(**spec.attributes)`` keeps working with
  Flame's field set. ``task_timeout`` likewise (:attr:`AppSpec.task_timeout`); ``flmctl register``
  carries both in ``environments`` (``FLAME_SERIALIZER``, ``FLAMEPY_TASK_TIMEOUT``), never in a field
  Flame's messages lack.
"""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flamepy_core import validation
from flamepy_core.config import YamlDocument, YamlPath, format_key_path, load_yaml_documents, read_yaml_file
from flamepy_core.contracts.errors import FlameError, FlameErrorCode

__all__ = ["AppSpec", "load_app_specs", "parse_app_specs"]

SHIMS: dict[str, str] = {"Host": "Host", "host": "Host", "Wasm": "Wasm", "wasm": "Wasm", "WASM": "Wasm"}
"""The spellings Flame's ``flmctl`` accepts, and what each normalises to."""
INSTALLERS = ("python", "binary")
TOP_KEYS = ("metadata", "spec")
METADATA_KEYS = ("name",)
SCHEMA_KEYS = ("input", "output", "common_data")
_UINT32_MAX = 2**32 - 1
_INT64_MAX = 2**63 - 1


@dataclass(frozen=True)
class AppSpec:
    """One application from a YAML file.

    ``attributes`` uses the field names of ``ApplicationAttributes`` and holds only the keys the file
    sets: ``shim`` as ``"Host"``/``"Wasm"``, ``labels``/``arguments`` lists of str, ``environments`` a
    dict of str, ``schema`` a dict with some of ``input``/``output``/``common_data``. ``source`` is the
    file (and ``, document N`` when the file holds several) for messages such as "registered from ...".
    """

    name: str
    attributes: dict[str, Any]
    source: str
    serializer: str | None = field(default=None)
    """flamepy's ``spec.serializer``; ``None`` when the file does not choose one."""
    task_timeout: float | None = field(default=None)
    """flamepy's ``spec.task_timeout`` in seconds; ``None`` when the file sets none (tasks may run forever)."""


class _Doc:
    """Validation of one document, producing errors that say exactly where and what."""

    def __init__(self, doc: YamlDocument, label: str, base_dir: Path) -> None:
        self.doc = doc
        self.label = label
        self.base_dir = base_dir

    # -- reporting ----------------------------------------------------------------------------------

    def error(self, path: YamlPath, problem: str) -> FlameError:
        return FlameError(
            FlameErrorCode.INVALID_ARGUMENT,
            f"{self.label}, line {self.doc.line_of(path)}: {format_key_path(path)}: {problem}",
        )

    def show(self, value: Any, path: YamlPath) -> str:
        """The value as the user wrote it: ``'Docker'``, ``-5``, ``yes``, ``a list``."""
        if isinstance(value, dict):
            return "a mapping"
        if isinstance(value, list):
            return "a list"
        if isinstance(value, str):
            return repr(value)
        if value is None:
            return "null (empty)"
        raw = self.doc.raw.get(path)
        if raw is None or raw == str(value):
            return repr(value)
        # YAML changed what was typed (1.10 -> 1.1, yes -> True): show both so the fix is obvious.
        return f"{raw} (read by YAML as {type(value).__name__} {value!r})"

    def bad(self, value: Any, path: YamlPath, expected: str) -> FlameError:
        return self.error(path, f"{self.show(value, path)} is not accepted; expected {expected}")

    def rule(
        self, check: Callable[[Any, str], None], value: Any, path: YamlPath, field: YamlPath | None = None
    ) -> None:
        """Apply one of the server's rules (:mod:`flamepy_core.validation`), reporting it with the line of
        ``path``; ``field`` (default ``path``) is how the rule names the value."""
        try:
            check(value, format_key_path(path if field is None else field))
        except FlameError as exc:
            raise FlameError(exc.code, f"{self.label}, line {self.doc.line_of(path)}: {exc.message}") from None

    # -- shapes -------------------------------------------------------------------------------------

    def mapping(self, value: Any, path: YamlPath, known: tuple[str, ...], what: str) -> dict[str, Any]:
        """A mapping whose keys are all in ``known`` (``None`` reads as empty)."""
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.bad(value, path, what)
        for key in value:
            if key not in known:
                hint = difflib.get_close_matches(key, known, n=1)
                suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
                raise self.error((*path, key), f"unknown key {key!r}{suggestion}; accepted keys: {', '.join(known)}")
        return value

    def string(self, value: Any, path: YamlPath, *, empty_ok: bool = False) -> str:
        if not isinstance(value, str):
            raise self.bad(value, path, "a string" + (" (quote it)" if value is not None else ""))
        if not empty_ok and not value.strip():
            raise self.bad(value, path, "a non-empty string")
        return value

    def string_list(self, value: Any, path: YamlPath) -> list[str]:
        if not isinstance(value, list):
            raise self.bad(value, path, "a list of strings")
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise self.bad(item, (*path, i), "a string; quote it so YAML keeps it as written (e.g. '8080')")
        return list(value)

    def arguments(self, value: Any, path: YamlPath) -> list[str]:
        arguments = self.string_list(value, path)
        for i, argument in enumerate(arguments):
            self.rule(validation.check_argument, argument, (*path, i))
        return arguments

    def command(self, value: Any, path: YamlPath) -> str:
        command = self.string(value, path)
        self.rule(validation.check_command, command, path)
        return command

    def integer(self, value: Any, path: YamlPath, low: int, high: int, unit: str = "") -> int:
        expected = f"an integer{unit} from {low} to {high}"
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.bad(value, path, expected)
        if not low <= value <= high:
            raise self.bad(value, path, expected)
        return value

    # -- fields -------------------------------------------------------------------------------------

    def shim(self, value: Any, path: YamlPath) -> str:
        if not isinstance(value, str) or value not in SHIMS:
            raise self.bad(value, path, "one of " + ", ".join(SHIMS))
        return SHIMS[value]

    def installer(self, value: Any, path: YamlPath) -> str:
        if not isinstance(value, str) or value not in INSTALLERS:
            raise self.bad(value, path, "one of " + ", ".join(INSTALLERS))
        return value

    def environments(self, value: Any, path: YamlPath) -> dict[str, str]:
        if not isinstance(value, dict):
            raise self.bad(value, path, "a mapping of variable names to values")
        out: dict[str, str] = {}
        for name, v in value.items():
            p: YamlPath = (*path, name)
            self.rule(validation.check_environment, {name: ""}, p, field=path)
            if isinstance(v, str):
                out[name] = v
            elif v is not None and not isinstance(v, (dict, list)) and p in self.doc.raw:
                # A number, boolean or date: keep the text as written, so "1.10" does not become
                # "1.1", "yes" does not become "True" and "2024-01-02" stays a string.
                out[name] = self.doc.raw[p]
            else:
                raise self.bad(v, p, "a string, number or boolean (write '' for an empty value)")
            self.rule(validation.check_environment, {name: out[name]}, p, field=path)
        return out

    def working_directory(self, value: Any, path: YamlPath) -> str:
        text = self.string(value, path)
        p = Path(text).expanduser()
        if not p.is_absolute():
            p = self.base_dir / p
        resolved = os.path.normpath(p)
        self.rule(validation.check_working_directory, resolved, path)
        return resolved

    def schema(self, value: Any, path: YamlPath) -> dict[str, str]:
        raw = self.mapping(value, path, SCHEMA_KEYS, "a mapping with input, output and common_data")
        out: dict[str, str] = {}
        for key, v in raw.items():
            p: YamlPath = (*path, key)
            if v is None:
                continue
            text = self.string(v, p)
            try:
                json.loads(text)
            except json.JSONDecodeError as exc:
                raise self.error(
                    p, f"{text!r} is not accepted; expected a JSON Schema as a JSON string ({exc})"
                ) from None
            out[key] = text
        return out

    # -- the document -------------------------------------------------------------------------------

    def app(self) -> AppSpec:
        if not isinstance(self.doc.value, dict):
            raise self.error(
                (),
                f"{self.show(self.doc.value, ())} is not accepted; an application document is a mapping "
                "with 'metadata' (and optionally 'spec')",
            )
        top = self.mapping(self.doc.value, (), TOP_KEYS, "a mapping")
        if "metadata" not in top:
            raise self.error(("metadata",), "missing; metadata.name is required")
        metadata = self.mapping(top["metadata"], ("metadata",), METADATA_KEYS, "a mapping with 'name'")
        if metadata.get("name") is None:
            raise self.error(("metadata", "name"), "missing; every application needs a name")
        name = self.string(metadata["name"], ("metadata", "name"))
        self.rule(validation.check_application_name, name, ("metadata", "name"))

        spec = self.mapping(top.get("spec"), ("spec",), (*_FIELDS, "serializer", "task_timeout"), "a mapping")
        attributes: dict[str, Any] = {}
        serializer: str | None = None
        task_timeout: float | None = None
        for key, value in spec.items():
            path: YamlPath = ("spec", key)
            if value is None:  # "key:" with nothing after it: not set, as in Flame.
                continue
            if key == "serializer":
                serializer = self.string(value, path).strip()
                continue
            if key == "task_timeout":
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
                    raise self.bad(value, path, "a number of seconds above 0 (such as 300 or 0.5)")
                task_timeout = float(value)
                continue
            attributes[key] = _FIELDS[key](self, value, path)
        # Flame's field order, whatever order the file used.
        ordered = {k: attributes[k] for k in _FIELDS if k in attributes}
        return AppSpec(
            name=name, attributes=ordered, source=self.label, serializer=serializer, task_timeout=task_timeout
        )


def _str(self: _Doc, v: Any, p: YamlPath) -> str:
    return self.string(v, p)


def _any_str(self: _Doc, v: Any, p: YamlPath) -> str:
    return self.string(v, p, empty_ok=True)


_FIELDS: dict[str, Callable[[_Doc, Any, YamlPath], Any]] = {
    "shim": _Doc.shim,
    "image": _str,
    "description": _any_str,
    "labels": _Doc.string_list,
    "command": _Doc.command,
    "arguments": _Doc.arguments,
    "environments": _Doc.environments,
    "working_directory": _Doc.working_directory,
    "max_instances": lambda d, v, p: d.integer(v, p, 1, _UINT32_MAX),
    "delay_release": lambda d, v, p: d.integer(v, p, 0, _INT64_MAX, " number of seconds"),
    "schema": _Doc.schema,
    "url": _str,
    "installer": _Doc.installer,
}
"""Flame's ``ApplicationAttributes`` fields, in Flame's order, each with its validator."""


def parse_app_specs(
    text: str, source: str = "<string>", base_dir: str | os.PathLike[str] | None = None
) -> list[AppSpec]:
    """Parse application YAML ``text``; ``source`` names it in errors.

    A relative ``working_directory`` is resolved against ``base_dir`` (the current directory, read now,
    when ``None``). Empty documents (a trailing ``---``) are skipped but still counted, so "document 3"
    is the third one in the file. No application at all, or two with the same name, is an error: the
    second would fail half-way through a registration.
    """
    base = Path(base_dir).expanduser().absolute() if base_dir is not None else Path.cwd()
    docs = load_yaml_documents(text, source, FlameErrorCode.INVALID_ARGUMENT)
    specs: list[AppSpec] = []
    first_seen: dict[str, AppSpec] = {}
    for doc in docs:
        if doc.value is None:
            continue
        label = f"{source}, document {doc.index}" if len(docs) > 1 else source
        spec = _Doc(doc, label, base).app()
        if spec.name in first_seen:
            raise FlameError(
                FlameErrorCode.INVALID_ARGUMENT,
                f"{label}, line {doc.line_of(('metadata', 'name'))}: metadata.name: application "
                f"{spec.name!r} is already defined in {first_seen[spec.name].source}",
            )
        first_seen[spec.name] = spec
        specs.append(spec)
    if not specs:
        raise FlameError(
            FlameErrorCode.INVALID_ARGUMENT,
            f"{source}: no application found; expected a YAML mapping with metadata.name",
        )
    return specs


def load_app_specs(path: str | os.PathLike[str]) -> list[AppSpec]:
    """Read the application YAML at ``path`` (what ``flmctl register --file`` names).

    Relative working directories are resolved against the file's folder. An unreadable file is a
    ``FlameError(INVALID_ARGUMENT)`` naming it, like every other problem with the file.
    """
    p = Path(path).expanduser()
    try:
        text = read_yaml_file(p, FlameErrorCode.INVALID_ARGUMENT, "application file ")
    except FileNotFoundError as exc:
        raise FlameError(FlameErrorCode.INVALID_ARGUMENT, f"cannot read application file {p}: {exc}") from None
    return parse_app_specs(text, str(p), p.absolute().parent)
