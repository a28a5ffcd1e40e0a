"""Configuration: where the client connects, with what, and how the runtime times itself.

Three things live here, all resolved at call time (nothing is read at import, so tests and long-lived
processes see the environment as it is when they ask):

* :func:`resolve_config` -> :class:`ClientConfig`, the client's view. Precedence, highest first:
  explicit argument > environment > ``$FLAME_HOME/flame.yaml`` (its ``current-context``) > the embedded
  default. Every resolved field records where it came from in :attr:`ClientConfig.source`, so an error
  ("cannot reach grpc://x:1") can say *why* that endpoint was used ("from env:FLAME_ENDPOINT").
* :class:`FlameContext`, Flame's own configuration object with Flame's property names, for code written
  against Flame's SDK.
* :class:`RuntimeSettings`, every timing and limit of the runtime, so tests and fault-injection runs can
  shrink them to milliseconds.

The file keeps Flame's shape so one ``flame.yaml`` serves both Flame's tools and ours::

    current-context: flame
    contexts:
      - name: flame
        cluster: {endpoint: "http://127.0.0.1:8080", tls: {ca_file: ca.crt}}
        cache: {endpoint: "grpc://127.0.0.1:9090", tls: {ca_file: ca.crt}, storage: /var/cache/flame}
        package: {storage: "file:///shared/pkgs", excludes: ["*.log"]}
        runner: {template: flmrun}
        transport: zmq            # flamepy only: which transport plugin to use
        serializer: cloudpickle   # flamepy only: which serializer plugin to use

Unknown keys produce a :class:`FlameConfigWarning`, not an error: Flame's file may carry keys that only
Flame reads. Known keys with the wrong type are errors that name the file, the key and the line.

The YAML reader that keeps line numbers (:func:`load_yaml_documents`) is public because the application
spec loader (``flamepy_core.cli.appspec``) reports errors the same way.
"""

from __future__ import annotations

import json
import math
import os
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from flamepy_core.addresses import normalize_endpoint
from flamepy_core.contracts.errors import FlameError, FlameErrorCode

if TYPE_CHECKING:  # PyYAML loads when a YAML file is read: a service process starts without it
    import yaml
    from yaml.nodes import Node

__all__ = [
    "DEFAULT_FLAME_CACHE_ENDPOINT",
    "DEFAULT_FLAME_CONF",
    "DEFAULT_FLAME_ENDPOINT",
    "DEFAULT_SERIALIZER",
    "FLAME_INSTANCE_ENDPOINT",
    "ClientConfig",
    "ContextEntry",
    "FlameClientCache",
    "FlameClientTls",
    "FlameClusterConfig",
    "FlameConfigWarning",
    "FlameContext",
    "FlameContextRunner",
    "FlamePackage",
    "RuntimeSettings",
    "YamlDocument",
    "configured_max_message_size",
    "flame_home",
    "format_key_path",
    "load_flame_file",
    "load_yaml_documents",
    "normalize_endpoint",
    "read_yaml_file",
    "resolve_config",
]

DEFAULT_FLAME_CONF = "flame.yaml"
"""File name of the configuration inside ``FLAME_HOME``."""
DEFAULT_FLAME_ENDPOINT = "http://127.0.0.1:8080"
"""Flame's default session-manager address; shown by :attr:`FlameContext.endpoint` for compatibility only."""
DEFAULT_FLAME_CACHE_ENDPOINT = "grpc://127.0.0.1:9090"
"""Flame's default object-cache address; shown by :attr:`FlameContext.cache_endpoint` for compatibility."""
FLAME_INSTANCE_ENDPOINT = "FLAME_INSTANCE_ENDPOINT"
"""Environment variable through which an executor tells a service process where to listen."""
DEFAULT_SERIALIZER = "cloudpickle"
"""What Flame's own service layer sends, so default payloads interoperate with Flame."""
DEFAULT_RUNNER_TEMPLATE = "flmrun"
DEFAULT_PACKAGE_EXCLUDES: tuple[str, ...] = (".venv", "__pycache__", ".gitignore", "*.pyc")

ENV_HOME = "FLAME_HOME"
ENV_ENDPOINT = "FLAME_ENDPOINT"
ENV_CACHE_ENDPOINT = "FLAME_CACHE_ENDPOINT"
ENV_CACHE_STORAGE = "FLAME_CACHE_STORAGE"
ENV_CA_FILE = "FLAME_CA_FILE"
ENV_CLIENT_CERT_FILE = "FLAME_CLIENT_CERT_FILE"
"""flamepy only: the client certificate (PEM) presented to TLS servers that require one (mutual TLS)."""
ENV_CLIENT_KEY_FILE = "FLAME_CLIENT_KEY_FILE"
"""flamepy only: the private key (PEM, unencrypted) of ``FLAME_CLIENT_CERT_FILE``."""
ENV_TRANSPORT = "FLAME_TRANSPORT"
ENV_SERIALIZER = "FLAME_SERIALIZER"
ENV_TASK_TIMEOUT = "FLAMEPY_TASK_TIMEOUT"
"""flamepy only: an application's default task timeout in seconds, carried in its ``environments``.

``spec.task_timeout`` in an application's YAML is stored there by ``flmctl register`` (flame.v1's
ApplicationSpec has no such field, and flamepy adds none to Flame's messages)."""


def parse_task_timeout(value: object, origin: str) -> float:
    """A task timeout in seconds (a number > 0) from ``value``; ``origin`` names where it came from.

    Anything else is ``FlameError(INVALID_ARGUMENT)`` naming the origin and the value.
    """
    try:
        seconds = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        seconds = float("nan")
    if isinstance(value, bool) or not math.isfinite(seconds) or seconds <= 0:
        raise FlameError(
            FlameErrorCode.INVALID_ARGUMENT,
            f"{origin}: task timeout {value!r} is not a number of seconds above 0; give one such as 30 or 0.5, "
            f"or leave it out for no timeout",
        )
    return seconds


class FlameConfigWarning(UserWarning):
    """Something in ``flame.yaml`` is ignored (an unknown key); the configuration is still usable."""


# ---------------------------------------------------------------------------------------------------
# YAML with line numbers


YamlPath = tuple[str | int, ...]


@dataclass(frozen=True)
class YamlDocument:
    """One YAML document as plain Python values, plus where each value sits in the file.

    ``lines`` maps a key path (``("spec", "labels", 1)``) to its 1-based line: the line of the key for a
    mapping entry, the line of the item for a sequence entry. ``raw`` maps the path of every scalar to
    its text as written (``1.10``, ``yes``), so a caller can keep what the user typed instead of what
    YAML 1.1 made of it (``1.1``, ``True``).
    """

    value: Any
    index: int
    """1-based position of the document in the stream."""
    line: int
    """1-based line where the document's content starts."""
    lines: Mapping[YamlPath, int]
    raw: Mapping[YamlPath, str]

    def line_of(self, path: YamlPath) -> int:
        """The line of ``path``, or of its nearest recorded ancestor (the document start at worst)."""
        p = tuple(path)
        while p:
            if p in self.lines:
                return self.lines[p]
            p = p[:-1]
        return self.line


def format_key_path(path: YamlPath) -> str:
    """``("spec", "labels", 1)`` -> ``"spec.labels[1]"``; the empty path is ``"(document)"``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out or "(document)"


class _Walker:
    """Turns composed nodes into plain values, recording lines, and refusing what a config cannot mean."""

    def __init__(self, loader: yaml.SafeLoader, label: str, code: FlameErrorCode) -> None:
        self.loader = loader
        self.label = label
        self.code = code
        self.lines: dict[YamlPath, int] = {}
        self.raw: dict[YamlPath, str] = {}
        self._active: set[int] = set()

    def fail(self, node: Node, path: YamlPath, problem: str) -> FlameError:
        where = f"{self.label}, line {node.start_mark.line + 1}"
        return FlameError(self.code, f"{where}: {format_key_path(path)}: {problem}")

    def walk(self, node: Node, path: YamlPath) -> Any:
        from yaml.nodes import MappingNode, ScalarNode, SequenceNode

        if id(node) in self._active:
            raise self.fail(node, path, "recursive YAML alias; a configuration must be a tree")
        self._active.add(id(node))
        try:
            if isinstance(node, MappingNode):
                return self._mapping(node, path)
            if isinstance(node, SequenceNode):
                out = []
                for i, item in enumerate(node.value):
                    item_path: YamlPath = (*path, i)
                    self.lines[item_path] = item.start_mark.line + 1
                    out.append(self.walk(item, item_path))
                return out
            assert isinstance(node, ScalarNode)
            self.raw[path] = str(node.value)
            return self.loader.construct_object(node, deep=True)
        finally:
            self._active.discard(id(node))

    def _mapping(self, node: yaml.MappingNode, path: YamlPath) -> dict[str, Any]:
        from yaml.nodes import ScalarNode

        # Resolve "<<: *anchor" merge keys exactly as yaml.safe_load would.
        self.loader.flatten_mapping(node)
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, ScalarNode):
                raise self.fail(key_node, path, "a key must be a plain string, not a mapping or a list")
            key = self.loader.construct_object(key_node, deep=True)
            if not isinstance(key, str):
                raise self.fail(
                    key_node,
                    path,
                    f"key {key_node.value!r} is read by YAML as {type(key).__name__} {key!r}; "
                    f"keys must be strings (quote it: '{key_node.value}')",
                )
            key_path: YamlPath = (*path, key)
            if key in out:
                raise self.fail(key_node, key_path, "duplicate key")
            self.lines[key_path] = key_node.start_mark.line + 1
            out[key] = self.walk(value_node, key_path)
        return out


MAX_YAML_SIZE = 1024 * 1024
"""Largest YAML file read (``flame.yaml``, application files), in characters: 1 MiB."""
MAX_YAML_VALUES = 100_000
"""Most values (scalars, lists, mappings) one YAML document may expand to, aliases counted each time
they repeat their anchor: an alias bomb (a few lines that expand to billions of values) stops here."""
MAX_YAML_DEPTH = 64
"""Deepest nesting of lists and mappings in one YAML document."""


def read_yaml_file(path: Path, code: FlameErrorCode, what: str = "") -> str:
    """The text of a YAML file, refused (``FlameError(code)``) when larger than :data:`MAX_YAML_SIZE`.

    Read with a bound rather than after a size check, so a FIFO or a growing file cannot hold more.
    ``FileNotFoundError`` is left to the caller (a missing ``flame.yaml`` is fine); other read errors
    and non-UTF-8 text are ``FlameError(code)`` naming the file.
    """
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read(MAX_YAML_SIZE + 1)
    except FileNotFoundError:
        raise
    except (OSError, UnicodeDecodeError) as exc:
        raise FlameError(code, f"cannot read {what}{path}: {exc}") from None
    if len(text) > MAX_YAML_SIZE:
        raise FlameError(
            code,
            f"{path}: the file is larger than {MAX_YAML_SIZE} characters, the most a YAML file read here may "
            f"hold; is it the right file?",
        )
    return text


def _children(node: Node) -> list[Node]:
    from yaml.nodes import MappingNode, SequenceNode

    if isinstance(node, MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, SequenceNode):
        return list(node.value)
    return []


def _check_expansion(root: Node, label: str, code: FlameErrorCode) -> None:
    """Refuse a document that expands beyond :data:`MAX_YAML_VALUES` or :data:`MAX_YAML_DEPTH`, or loops.

    Measured on the composed graph, where an alias is a second reference to its anchor's node, with one
    memoised walk (no expansion): so a bomb is refused in time proportional to its text, before anything
    (merge keys included) expands it.
    """
    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[Node, bool]] = [(root, False)]

    def fail(node: Node, problem: str) -> FlameError:
        return FlameError(code, f"{label}, line {node.start_mark.line + 1}: {problem}")

    while stack:
        node, finished = stack.pop()
        key = id(node)
        if finished:
            on_path.discard(key)
            children = _children(node)
            size[key] = min(MAX_YAML_VALUES + 1, 1 + sum(size[id(c)] for c in children))
            depth[key] = 1 + max((depth[id(c)] for c in children), default=0)
            if size[key] > MAX_YAML_VALUES:
                raise fail(
                    node,
                    f"this YAML expands to more than {MAX_YAML_VALUES} values (its aliases repeat their "
                    f"anchors' content), the most a configuration may hold; write the values out, or use "
                    f"fewer aliases",
                )
            if depth[key] > MAX_YAML_DEPTH:
                raise fail(node, f"lists and mappings are nested more than {MAX_YAML_DEPTH} levels deep")
            continue
        if key in size:
            continue
        if key in on_path:
            raise fail(node, "recursive YAML alias; a configuration must be a tree")
        on_path.add(key)
        stack.append((node, True))
        stack.extend((child, False) for child in _children(node) if id(child) not in size)


def load_yaml_documents(text: str, source: str, code: FlameErrorCode) -> list[YamlDocument]:
    """Parse every document of ``text`` (``---``-separated) keeping line numbers.

    Empty documents come back with ``value=None`` so callers count documents as the user does. Any YAML
    error becomes ``FlameError(code, ...)`` naming ``source`` and the line and column, because a raw
    ``yaml.YAMLError`` would not say which file was being read. Input is bounded: at most
    :data:`MAX_YAML_SIZE` characters, and each document at most :data:`MAX_YAML_VALUES` values once its
    aliases are expanded and :data:`MAX_YAML_DEPTH` levels deep, so hostile YAML fails fast.
    """
    if len(text) > MAX_YAML_SIZE:
        raise FlameError(code, f"{source}: larger than {MAX_YAML_SIZE} characters, the most a YAML input may hold")
    import yaml

    loader = yaml.SafeLoader(text)
    docs: list[YamlDocument] = []
    try:
        # Compose every document first: a syntax error anywhere is reported before any content error,
        # and the count tells whether messages need to say which document they mean.
        nodes: list[Node] = []
        while loader.check_node():
            node = loader.get_node()
            if node is None:  # pragma: no cover - check_node() said there is one
                break
            nodes.append(node)
        for index, node in enumerate(nodes, start=1):
            label = f"{source}, document {index}" if len(nodes) > 1 else source
            _check_expansion(node, label, code)
            walker = _Walker(loader, label, code)
            value = walker.walk(node, ())
            docs.append(YamlDocument(value, index, node.start_mark.line + 1, walker.lines, walker.raw))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = " ".join(p for p in (exc.context, exc.problem) if p) or str(exc)
        raise FlameError(code, f"{source}{where}: malformed YAML: {problem}") from None
    except yaml.YAMLError as exc:
        raise FlameError(code, f"{source}: malformed YAML: {exc}") from None
    except RecursionError:
        # The composer recurses once per nesting level: far deeper than MAX_YAML_DEPTH ends here.
        raise FlameError(
            code, f"{source}: lists and mappings are nested more than {MAX_YAML_DEPTH} levels deep"
        ) from None
    finally:
        loader.dispose()
    return docs


# ---------------------------------------------------------------------------------------------------
# Endpoints and FLAME_HOME


def _environ(env: Mapping[str, str] | None) -> Mapping[str, str]:
    return os.environ if env is None else env


def _env_value(env: Mapping[str, str], name: str) -> str | None:
    """An environment variable's value, with an empty (or blank) value meaning unset, as shells use it."""
    value = env.get(name)
    if value is None or not value.strip():
        return None
    return value.strip()


def flame_home(env: Mapping[str, str] | None = None) -> Path:
    """``$FLAME_HOME`` or ``~/.flame``, absolute, ``~`` expanded now (not at import) so HOME changes apply."""
    value = _env_value(_environ(env), ENV_HOME)
    # Absolute, because the home names the embedded server (its lock, socket and database) and a
    # relative one would name another server after a chdir or in a child process.
    return Path(value if value is not None else "~/.flame").expanduser().absolute()


# ---------------------------------------------------------------------------------------------------
# flame.yaml


@dataclass(frozen=True)
class ContextEntry:
    """The current context of a ``flame.yaml``, validated, with ``None`` for what it does not set."""

    path: Path
    name: str
    endpoint: str | None = None
    ca_file: str | None = None
    has_cluster_tls: bool = False
    cache_endpoint: str | None = None
    cache_ca_file: str | None = None
    has_cache_tls: bool = False
    cache_storage: str | None = None
    package_storage: str | None = None
    package_excludes: tuple[str, ...] | None = None
    runner_template: str | None = None
    transport: str | None = None
    serializer: str | None = None
    sections: dict[str, dict[str, Any]] = field(default_factory=dict)
    """The ``cluster`` and ``cache`` sections as written (type-checked), where the transports' declared
    security settings are looked up (``SecuritySetting.config_key``: Flame's ``tls.ca_file``, or a key of
    flamepy's ``security`` mapping such as a CURVE key file)."""

    @property
    def source(self) -> str:
        """How :attr:`ClientConfig.source` names a value taken from this context."""
        return f"file:{self.path}#context {self.name}"


_TOP_KEYS = ("current-context", "contexts")
_CONTEXT_KEYS = ("name", "cluster", "cache", "package", "runner", "transport", "serializer")
_SECTION_KEYS: dict[str, tuple[str, ...]] = {
    "cluster": ("endpoint", "tls", "security"),
    "cache": ("endpoint", "tls", "storage", "security"),
    "package": ("storage", "excludes"),
    "runner": ("template",),
    "tls": ("ca_file",),
}


class _FileReader:
    """Type-checks one flame.yaml document, naming file, key path and line in every complaint."""

    def __init__(self, path: Path, doc: YamlDocument) -> None:
        self.path = path
        self.doc = doc

    def error(self, path: YamlPath, problem: str) -> FlameError:
        return FlameError(
            FlameErrorCode.INVALID_CONFIG,
            f"{self.path}, line {self.doc.line_of(path)}: {format_key_path(path)}: {problem}",
        )

    def mapping(self, value: Any, path: YamlPath, known: tuple[str, ...]) -> dict[str, Any]:
        """A mapping (``None`` reads as empty); unknown keys are warned about, not refused."""
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.error(path, f"expected a mapping, got {_describe(value)}")
        for key in value:
            if key not in known:
                kp = (*path, key)
                warnings.warn(
                    f"{self.path}, line {self.doc.line_of(kp)}: {format_key_path(kp)}: unknown key ignored "
                    f"(flamepy reads: {', '.join(known)})",
                    FlameConfigWarning,
                    stacklevel=2,
                )
        return value

    def string(self, value: Any, path: YamlPath, *, endpoint: bool = False) -> str | None:
        """A string (``None`` = not set). Endpoints are normalised and must not be empty."""
        if value is None:
            return None
        if not isinstance(value, str):
            raise self.error(path, f"expected a string, got {_describe(value)}")
        if endpoint:
            try:
                return normalize_endpoint(value)
            except FlameError as exc:
                raise self.error(path, exc.message) from None
        return value

    def string_mapping(self, value: Any, path: YamlPath) -> dict[str, str]:
        """A mapping of strings to strings (``None`` reads as empty); its keys are the transports' to judge."""
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.error(path, f"expected a mapping, got {_describe(value)}")
        for key, item in value.items():
            if not isinstance(item, str) or not item.strip():
                raise self.error((*path, key), f"expected a non-empty string, got {_describe(item)}")
        return {key: item.strip() for key, item in value.items()}

    def string_list(self, value: Any, path: YamlPath) -> tuple[str, ...] | None:
        if value is None:
            return None
        if not isinstance(value, list):
            raise self.error(path, f"expected a list of strings, got {_describe(value)}")
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise self.error((*path, i), f"expected a string, got {_describe(item)}")
        return tuple(value)

    def context(self, raw: Any, index: int) -> ContextEntry:
        p: YamlPath = ("contexts", index)
        ctx = self.mapping(raw, p, _CONTEXT_KEYS)
        name = self.string(ctx.get("name"), (*p, "name"))
        if not name:
            raise self.error((*p, "name"), "every context needs a non-empty name")
        cluster = self.mapping(ctx.get("cluster"), (*p, "cluster"), _SECTION_KEYS["cluster"])
        cluster_tls = self.mapping(cluster.get("tls"), (*p, "cluster", "tls"), _SECTION_KEYS["tls"])
        cache = self.mapping(ctx.get("cache"), (*p, "cache"), _SECTION_KEYS["cache"])
        cache_tls = self.mapping(cache.get("tls"), (*p, "cache", "tls"), _SECTION_KEYS["tls"])
        for section, values in (("cluster", cluster), ("cache", cache)):
            self.string_mapping(values.get("security"), (*p, section, "security"))
        package = self.mapping(ctx.get("package"), (*p, "package"), _SECTION_KEYS["package"])
        runner = self.mapping(ctx.get("runner"), (*p, "runner"), _SECTION_KEYS["runner"])
        transport = self.string(ctx.get("transport"), (*p, "transport"))
        serializer = self.string(ctx.get("serializer"), (*p, "serializer"))
        for key, val in (("transport", transport), ("serializer", serializer)):
            if val is not None and not val.strip():
                raise self.error((*p, key), "must not be empty (leave the key out for the default)")
        return ContextEntry(
            path=self.path,
            name=name,
            endpoint=self.string(cluster.get("endpoint"), (*p, "cluster", "endpoint"), endpoint=True),
            ca_file=self.string(cluster_tls.get("ca_file"), (*p, "cluster", "tls", "ca_file")),
            has_cluster_tls=cluster.get("tls") is not None,
            cache_endpoint=self.string(cache.get("endpoint"), (*p, "cache", "endpoint"), endpoint=True),
            cache_ca_file=self.string(cache_tls.get("ca_file"), (*p, "cache", "tls", "ca_file")),
            has_cache_tls=cache.get("tls") is not None,
            cache_storage=self.string(cache.get("storage"), (*p, "cache", "storage")),
            package_storage=self.string(package.get("storage"), (*p, "package", "storage")),
            package_excludes=(
                self.string_list(package.get("excludes"), (*p, "package", "excludes"))
                if "package" in ctx and ctx["package"] is not None
                else None
            ),
            runner_template=self.string(runner.get("template"), (*p, "runner", "template")),
            transport=transport.strip() if transport else None,
            serializer=serializer.strip() if serializer else None,
            sections={"cluster": dict(cluster), "cache": dict(cache)},
        )


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"{type(value).__name__} {json.dumps(value) if isinstance(value, str) else value!r}"


def load_flame_file(path: str | os.PathLike[str]) -> ContextEntry | None:
    """Read ``path`` (a ``flame.yaml``) and return its current context; ``None`` if the file is missing.

    Every context is type-checked, not only the current one, so a typo is reported the day it is made
    rather than the day someone switches context.
    """
    p = Path(path)
    try:
        text = read_yaml_file(p, FlameErrorCode.INVALID_CONFIG)
    except FileNotFoundError:
        return None
    docs = load_yaml_documents(text, str(p), FlameErrorCode.INVALID_CONFIG)
    if len(docs) > 1:
        raise FlameError(
            FlameErrorCode.INVALID_CONFIG,
            f"{p}, line {docs[1].line}: a flame.yaml holds one YAML document, found {len(docs)}",
        )
    doc = docs[0] if docs else YamlDocument(None, 1, 1, {}, {})
    reader = _FileReader(p, doc)
    top = reader.mapping(doc.value, (), _TOP_KEYS)
    current = reader.string(top.get("current-context"), ("current-context",))
    raw_contexts = top.get("contexts")
    if raw_contexts is None:
        raw_contexts = []
    if not isinstance(raw_contexts, list):
        raise reader.error(("contexts",), f"expected a list of contexts, got {_describe(raw_contexts)}")
    contexts = [reader.context(c, i) for i, c in enumerate(raw_contexts)]
    if not current:
        raise FlameError(FlameErrorCode.INVALID_CONFIG, f"current-context is not set in {p}")
    for ctx in contexts:
        if ctx.name == current:
            return ctx
    defined = ", ".join(c.name for c in contexts) or "none"
    raise FlameError(FlameErrorCode.INVALID_CONFIG, f"context {current} not found in {p}; contexts defined: {defined}")


# ---------------------------------------------------------------------------------------------------
# The client's resolved configuration


@dataclass(frozen=True)
class ClientConfig:
    """What a client uses, fully resolved. ``None`` endpoints mean "the embedded server for ``home``".

    ``source`` says, for every field, where its value came from: ``"argument"``, ``"env:FLAME_ENDPOINT"``,
    ``"file:<path>#context <name>"`` or ``"default"``. Error messages and ``flmctl`` print it so a user
    can see which of four places to fix.
    """

    home: Path
    endpoint: str | None = None
    cache_endpoint: str | None = None
    transport: str | None = None
    serializer: str = DEFAULT_SERIALIZER
    ca_file: str | None = None
    cache_ca_file: str | None = None
    cache_storage: str | None = None
    client_cert_file: str | None = None
    """Client certificate for mutual TLS (``FLAME_CLIENT_CERT_FILE``), used with ``https://``/``grpcs://``."""
    client_key_file: str | None = None
    """Its private key (``FLAME_CLIENT_KEY_FILE``)."""
    source: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    """The ``FLAME_*`` variables as they were when resolved (blank ones dropped): where the transports'
    declared security settings are read from, beside :attr:`context`."""
    context: ContextEntry | None = None
    """The ``flame.yaml`` context this configuration read, if any."""

    @property
    def config_file(self) -> Path:
        """The ``flame.yaml`` this configuration consults (it may not exist)."""
        return self.home / DEFAULT_FLAME_CONF

    def describe(self, name: str) -> str:
        """``"endpoint=grpc://x:1 (from env:FLAME_ENDPOINT)"``: a field and its origin, for messages."""
        return f"{name}={getattr(self, name)} (from {self.source.get(name, 'default')})"


def _choose(
    arg: str | None, env_value: str | None, var: str, file_value: str | None, file_source: str
) -> tuple[str | None, str]:
    """Argument > environment > file > default, with the origin of the winner."""
    if arg is not None:
        return arg, "argument"
    if env_value is not None:
        return env_value, f"env:{var}"
    if file_value is not None:
        return file_value, file_source
    return None, "default"


def _ca_choice(configured: str | None, file_source: str, env_ca: str | None) -> tuple[str | None, str]:
    """File > ``FLAME_CA_FILE`` > none: the reversed rule for CA files (see :func:`resolve_config`)."""
    if configured is not None:
        return configured, file_source
    if env_ca is not None:
        return env_ca, f"env:{ENV_CA_FILE}"
    return None, "default"


def _env_endpoint(env: Mapping[str, str], var: str) -> str | None:
    value = _env_value(env, var)
    if value is None:
        return None
    try:
        return normalize_endpoint(value)
    except FlameError as exc:  # pragma: no cover - _env_value already dropped blanks
        raise FlameError(FlameErrorCode.INVALID_CONFIG, f"{var}={value!r}: {exc.message}") from None


def resolve_config(
    *,
    endpoint: str | None = None,
    cache_endpoint: str | None = None,
    transport: str | None = None,
    serializer: str | None = None,
    home: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    config_file: str | os.PathLike[str] | None = None,
) -> ClientConfig:
    """Resolve the client configuration: argument > environment > ``flame.yaml`` > default.

    ``env`` defaults to ``os.environ``, read now. An empty environment variable counts as unset (the
    shell idiom ``FLAME_ENDPOINT= cmd``); an empty *argument* is an error, since it was asked for.
    ``config_file`` reads that file instead of ``$FLAME_HOME/flame.yaml`` and then it must exist (what
    ``flmctl --config`` means); ``home`` still names the embedded server's folder.

    ``FLAME_CA_FILE`` is the one reversed rule, as in Flame: it fills the cluster and cache CA only where
    the file configures none, because a per-context CA is more specific than a global variable.
    ``FLAME_CLIENT_CERT_FILE`` and ``FLAME_CLIENT_KEY_FILE`` (flamepy only; the file has no such keys)
    give the client certificate for mutual TLS, to the cluster and the cache alike.
    """
    e = _environ(env)
    source: dict[str, str] = {}

    if home is not None:
        home_path, source["home"] = Path(home).expanduser().absolute(), "argument"
    elif _env_value(e, ENV_HOME) is not None:
        home_path, source["home"] = flame_home(e), f"env:{ENV_HOME}"
    else:
        home_path, source["home"] = flame_home(e), "default"

    if config_file is not None:
        cfg_path = Path(config_file).expanduser()
        if not cfg_path.is_file():
            raise FlameError(FlameErrorCode.INVALID_CONFIG, f"configuration file {cfg_path} does not exist")
    else:
        cfg_path = home_path / DEFAULT_FLAME_CONF
    ctx = load_flame_file(cfg_path) or ContextEntry(path=cfg_path, name="")
    fsrc = ctx.source

    ep_arg = normalize_endpoint(endpoint) if endpoint is not None else None
    cache_arg = normalize_endpoint(cache_endpoint) if cache_endpoint is not None else None
    ep, source["endpoint"] = _choose(ep_arg, _env_endpoint(e, ENV_ENDPOINT), ENV_ENDPOINT, ctx.endpoint, fsrc)
    cep, source["cache_endpoint"] = _choose(
        cache_arg, _env_endpoint(e, ENV_CACHE_ENDPOINT), ENV_CACHE_ENDPOINT, ctx.cache_endpoint, fsrc
    )

    for name, arg in (("transport", transport), ("serializer", serializer)):
        if arg is not None and not arg.strip():
            raise FlameError(FlameErrorCode.INVALID_CONFIG, f"{name} cannot be empty")
    tr, source["transport"] = _choose(
        transport.strip() if transport else None,
        _env_value(e, ENV_TRANSPORT),
        ENV_TRANSPORT,
        ctx.transport,
        fsrc,
    )
    ser, source["serializer"] = _choose(
        serializer.strip() if serializer else None,
        _env_value(e, ENV_SERIALIZER),
        ENV_SERIALIZER,
        ctx.serializer,
        fsrc,
    )
    storage, source["cache_storage"] = _choose(
        None, _env_value(e, ENV_CACHE_STORAGE), ENV_CACHE_STORAGE, ctx.cache_storage, fsrc
    )
    # FLAME_CA_FILE ranks below the file: it only fills a CA the context does not set.
    env_ca = _env_value(e, ENV_CA_FILE)
    ca, source["ca_file"] = _ca_choice(ctx.ca_file, fsrc, env_ca)
    cache_ca, source["cache_ca_file"] = _ca_choice(ctx.cache_ca_file, fsrc, env_ca)
    cert, source["client_cert_file"] = _choose(
        None, _env_value(e, ENV_CLIENT_CERT_FILE), ENV_CLIENT_CERT_FILE, None, fsrc
    )
    key, source["client_key_file"] = _choose(None, _env_value(e, ENV_CLIENT_KEY_FILE), ENV_CLIENT_KEY_FILE, None, fsrc)

    return ClientConfig(
        home=home_path,
        endpoint=ep,
        cache_endpoint=cep,
        transport=tr,
        serializer=ser if ser is not None else DEFAULT_SERIALIZER,
        ca_file=ca,
        cache_ca_file=cache_ca,
        cache_storage=storage,
        client_cert_file=cert,
        client_key_file=key,
        source=source,
        env={name: value.strip() for name, value in e.items() if name.startswith("FLAME") and value.strip()},
        context=ctx if ctx.name else None,
    )


# ---------------------------------------------------------------------------------------------------
# Flame-compatible configuration classes (flamepy.core.types in Flame's SDK)


@dataclass
class FlameClientTls:
    """TLS settings of a connection: the CA bundle that verifies the server.

    ``cert_file`` and ``key_file`` are a flamepy extension: the client certificate and key presented to
    a server that requires one (mutual TLS). Left ``None``, ``connect`` takes them from
    ``FLAME_CLIENT_CERT_FILE`` / ``FLAME_CLIENT_KEY_FILE``.
    """

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None


@dataclass
class FlameClientCache:
    """Object-cache settings: its endpoint, TLS and optional local storage folder."""

    endpoint: str | None = None
    tls: FlameClientTls | None = None
    storage: str | None = None


@dataclass
class FlameClusterConfig:
    """Session-manager settings: its endpoint and TLS."""

    endpoint: str = ""
    tls: FlameClientTls | None = None


@dataclass
class FlamePackage:
    """Where Runner puts packaged projects (``None`` storage = the object cache) and what it leaves out."""

    storage: str | None
    excludes: list[str] = field(default_factory=lambda: list(DEFAULT_PACKAGE_EXCLUDES))


@dataclass
class FlameContextRunner:
    """Runner settings: the template application (``FlameContext.runner`` fills in ``"flmrun"``)."""

    template: str | None = None


class FlameContext:
    """Flame's configuration object, with Flame's property names, for code written against Flame's SDK.

    It reads ``$FLAME_HOME/flame.yaml`` (``~/.flame/flame.yaml`` when ``FLAME_HOME`` is unset, which is
    the only place Flame's SDK looks) and then the environment, which overrides the file.

    :attr:`endpoint` falls back to ``http://127.0.0.1:8080`` and :attr:`cache_endpoint` to
    ``grpc://127.0.0.1:9090`` *for display and upstream compatibility only*: flamepy's client does not
    dial those when nothing is configured, it uses (and if needed starts) the embedded local server for
    ``FLAME_HOME``. Use :func:`resolve_config` to know what the client will really use.
    """

    def __init__(self, *, home: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None) -> None:
        e = _environ(env)
        self._home = Path(home).expanduser().absolute() if home is not None else flame_home(e)
        self._entry = load_flame_file(self._home / DEFAULT_FLAME_CONF)
        ent = self._entry
        env_ca = _env_value(e, ENV_CA_FILE)

        def tls(configured: bool, ca: str | None) -> FlameClientTls | None:
            if ca is None and env_ca is not None:
                return FlameClientTls(ca_file=env_ca)
            if configured or ca is not None:
                return FlameClientTls(ca_file=ca)
            return None

        endpoint = _env_endpoint(e, ENV_ENDPOINT) or (ent.endpoint if ent else None)
        self._cluster = FlameClusterConfig(
            endpoint=endpoint or "",
            tls=tls(bool(ent and ent.has_cluster_tls), ent.ca_file if ent else None),
        )
        cache_endpoint = _env_endpoint(e, ENV_CACHE_ENDPOINT) or (ent.cache_endpoint if ent else None)
        storage = _env_value(e, ENV_CACHE_STORAGE) or (ent.cache_storage if ent else None)
        # Flame always has a cache section (defaulted), and FLAME_CA_FILE reaches it like the cluster's.
        self._cache = FlameClientCache(
            endpoint=cache_endpoint or DEFAULT_FLAME_CACHE_ENDPOINT,
            tls=tls(bool(ent and ent.has_cache_tls), ent.cache_ca_file if ent else None),
            storage=storage,
        )
        self._package: FlamePackage | None = None
        if ent is not None and (ent.package_storage is not None or ent.package_excludes is not None):
            excludes = list(DEFAULT_PACKAGE_EXCLUDES)
            excludes += [x for x in ent.package_excludes or () if x not in excludes]
            self._package = FlamePackage(storage=ent.package_storage, excludes=excludes)
        self._runner = FlameContextRunner(
            template=(ent.runner_template if ent and ent.runner_template else DEFAULT_RUNNER_TEMPLATE)
        )

    @property
    def home(self) -> Path:
        return self._home

    @property
    def context_name(self) -> str | None:
        """The current context's name, or ``None`` when there is no ``flame.yaml``."""
        return self._entry.name if self._entry else None

    @property
    def cluster(self) -> FlameClusterConfig:
        return self._cluster

    @property
    def endpoint(self) -> str:
        """The configured endpoint, else Flame's default (see the class docstring: display only)."""
        return self._cluster.endpoint or DEFAULT_FLAME_ENDPOINT

    @property
    def tls(self) -> FlameClientTls | None:
        return self._cluster.tls

    @property
    def cache(self) -> FlameClientCache:
        """The cache section; its endpoint is Flame's default when nothing sets it (display only)."""
        return self._cache

    @property
    def cache_endpoint(self) -> str:
        return self.cache.endpoint or DEFAULT_FLAME_CACHE_ENDPOINT

    @property
    def cache_tls(self) -> FlameClientTls | None:
        return self.cache.tls

    @property
    def package(self) -> FlamePackage | None:
        return self._package

    @property
    def runner(self) -> FlameContextRunner:
        return self._runner


# ---------------------------------------------------------------------------------------------------
# Runtime settings

_BINARY_SUFFIXES = {
    "": 1,
    "k": 1024, "kb": 1024, "ki": 1024, "kib": 1024,
    "m": 1024**2, "mb": 1024**2, "mi": 1024**2, "mib": 1024**2,
    "g": 1024**3, "gb": 1024**3, "gi": 1024**3, "gib": 1024**3,
}  # fmt: skip


MEMORY_PER_INSTANCE = 256 << 20
"""Physical memory counted per instance process when the machine-wide cap is computed (a Python service
with its imports typically takes 30 to 200 MiB)."""


def _setting(default: float, kind: str, minimum: str) -> Any:
    """A RuntimeSettings field: ``kind`` is seconds|count|bytes, ``minimum`` is ">=0" or ">0"."""
    return field(default=default, metadata={"kind": kind, "minimum": minimum})


@dataclass(frozen=True)
class RuntimeSettings:
    """Every timing and limit of the runtime, each with a sane default and an environment override.

    The variable for a setting is ``FLAME_`` + its name in upper case. Defaults suit interactive use;
    tests and fault-injection runs set small values so that a failure path takes milliseconds, not the
    minutes a production deadline allows.

    ===============================  =====================================  ===========================
    setting (variable FLAME_<NAME>)  meaning                                default
    ===============================  =====================================  ===========================
    instance_start_timeout           s for a started instance to listen     30
    session_enter_timeout            s for ``on_session_enter``             30
    instance_call_timeout            s for enter/leave calls to instance    60
    task_retry_limit                 re-runs of a task whose instance died  3
    instance_start_retry_limit       failed starts before the session's     3
                                     tasks fail
    shutdown_grace                   s between SIGTERM and SIGKILL          5
    delay_release                    s an idle instance stays warm when     60
                                     the application does not say
    idle_exit                        s the server lingers with no client,   600 (0 = never exit)
                                     session or instance, then exits
    max_message_size                 largest message, bytes (``64MiB``,     256 MiB
                                     ``1g`` accepted: binary suffixes)
    heartbeat_interval               s between liveness checks              1.0
    stderr_tail_lines                lines of a dead instance's stderr      20
                                     quoted in its error
    warm_pool_max                    idle warm instances kept per app       8
    store_retry_window               s a refused store write is retried     2
                                     before the call that made it fails
    store_check_timeout              s the start-up integrity check of the  10 (0 = no check)
                                     store may take; a larger store is
                                     checked that far
    payload_retention                s a finished task's input and output   3600 (0 = purge at once)
                                     are kept, then purged
    max_instance_processes           instance processes this machine runs   0 = automatic: 4 per CPU,
                                     at once, all sessions together         at most one per 256 MiB of
                                                                            memory, at least 2
    liveness_timeout                 s an instance may send no heartbeat    30
                                     (or stay stopped by a signal) before
                                     it is handled as crashed
    busy_overflow_delay              s every instance of a session must     1
                                     have waited (less than half a CPU)
                                     in its current task before one more
                                     may start beyond its CPU share
    generic_instance                 1: keep a generic process (runtime     1
                                     imported, no application) ready for
                                     the next new instance that fits it;
                                     0: none
    ===============================  =====================================  ===========================

    Seconds are floats; counts and bytes are integers. Negative values are refused, and so is zero where
    it cannot mean anything (timeouts, the heartbeat, the message size).
    """

    ENV_PREFIX: ClassVar[str] = "FLAME_"

    instance_start_timeout: float = _setting(30.0, "seconds", ">0")
    session_enter_timeout: float = _setting(30.0, "seconds", ">0")
    instance_call_timeout: float = _setting(60.0, "seconds", ">0")
    task_retry_limit: int = _setting(3, "count", ">=0")
    instance_start_retry_limit: int = _setting(3, "count", ">=0")
    shutdown_grace: float = _setting(5.0, "seconds", ">=0")
    delay_release: float = _setting(60.0, "seconds", ">=0")
    idle_exit: float = _setting(600.0, "seconds", ">=0")
    max_message_size: int = _setting(256 * 1024 * 1024, "bytes", ">0")
    heartbeat_interval: float = _setting(1.0, "seconds", ">0")
    stderr_tail_lines: int = _setting(20, "count", ">=0")
    warm_pool_max: int = _setting(8, "count", ">=0")
    store_retry_window: float = _setting(2.0, "seconds", ">=0")
    store_check_timeout: float = _setting(10.0, "seconds", ">=0")
    payload_retention: float = _setting(3600.0, "seconds", ">=0")
    max_instance_processes: int = _setting(0, "count", ">=0")
    liveness_timeout: float = _setting(30.0, "seconds", ">0")
    busy_overflow_delay: float = _setting(1.0, "seconds", ">=0")
    generic_instance: int = _setting(1, "count", ">=0")

    @classmethod
    def env_var(cls, name: str) -> str:
        """The environment variable that overrides setting ``name``."""
        return cls.ENV_PREFIX + name.upper()

    def __post_init__(self) -> None:
        # Validate values given directly too, so a bad override fails here, not deep in the scheduler.
        for f in fields(self):
            value = getattr(self, f.name)
            what = f"RuntimeSettings.{f.name} (env {self.env_var(f.name)})"
            kind, minimum = f.metadata["kind"], f.metadata["minimum"]
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise FlameError(FlameErrorCode.INVALID_CONFIG, f"{what} must be a number, got {value!r}")
            if kind == "seconds":
                value = float(value)
                object.__setattr__(self, f.name, value)
            elif not isinstance(value, int):
                if not (math.isfinite(value) and float(value).is_integer()):
                    raise FlameError(FlameErrorCode.INVALID_CONFIG, f"{what} must be a whole number, got {value!r}")
                value = int(value)
                object.__setattr__(self, f.name, value)
            _check_range(what, value, minimum)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: float) -> RuntimeSettings:
        """Defaults, overridden by ``FLAME_<NAME>`` variables, overridden by keyword ``overrides``.

        A variable that is not a number, is negative, or is zero where zero means nothing is a
        ``FlameError(INVALID_CONFIG)`` naming the variable and its value. An unknown keyword is a
        ``TypeError``, as for any function.
        """
        e = _environ(env)
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(overrides) - set(known))
        if unknown:
            raise TypeError(f"RuntimeSettings has no setting {', '.join(unknown)}; known: {', '.join(known)}")
        values: dict[str, float] = {}
        for name, f in known.items():
            if name in overrides:
                values[name] = overrides[name]
                continue
            var = cls.env_var(name)
            text = _env_value(e, var)
            if text is not None:
                values[name] = _parse_setting(var, text, f.metadata["kind"], f.metadata["minimum"])
        return cls(**values)  # type: ignore[arg-type]

    def instance_process_cap(self) -> int:
        """The machine-wide cap on instance processes: ``max_instance_processes``, or when it is 0 the
        automatic one, 4 per CPU but at most one per ``MEMORY_PER_INSTANCE`` of physical memory, at least 2.

        Four per CPU, not one: a session is held to its CPU share only softly (a session whose instances
        are all blocked may start more, see the scheduler), so the hard cap must leave room above the
        share, as a thread pool that lets blocked workers be replaced does.
        """
        if self.max_instance_processes:
            return self.max_instance_processes
        cpus = os.cpu_count() or 1
        try:
            memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (AttributeError, ValueError, OSError):
            memory = 0
        by_memory = memory // MEMORY_PER_INSTANCE if memory > 0 else 4 * cpus
        return max(2, min(4 * cpus, by_memory))


def configured_max_message_size(env: Mapping[str, str] | None = None) -> int | None:
    """``FLAME_MAX_MESSAGE_SIZE`` as bytes, or ``None`` when it is not set (a bad value is INVALID_CONFIG).

    The plugin registry gives it to every transport built without an explicit ``max_message_size``, so
    the server, its instances and its clients on this machine agree on the limit and an oversized
    message is refused by its sender, with both sizes, before it travels.
    """
    var = RuntimeSettings.env_var("max_message_size")
    text = _env_value(_environ(env), var)
    if text is None:
        return None
    return int(_parse_setting(var, text, "bytes", ">0"))


def _check_range(what: str, value: float, minimum: str) -> None:
    if not math.isfinite(value):
        raise FlameError(FlameErrorCode.INVALID_CONFIG, f"{what} must be finite, got {value!r}")
    if value < 0 or (minimum == ">0" and value == 0):
        bound = "greater than 0" if minimum == ">0" else "0 or more"
        raise FlameError(FlameErrorCode.INVALID_CONFIG, f"{what} must be {bound}, got {value!r}")


def _parse_setting(var: str, text: str, kind: str, minimum: str) -> float:
    what = f"{var}={text!r}"
    value: float
    if kind == "seconds":
        try:
            value = float(text)
        except ValueError:
            raise FlameError(
                FlameErrorCode.INVALID_CONFIG, f"{what} is not a number of seconds (e.g. 30 or 0.5)"
            ) from None
    elif kind == "bytes":
        m = re.fullmatch(r"\s*(-?[0-9]+)\s*([A-Za-z]*)\s*", text)
        if m is None or m.group(2).lower() not in _BINARY_SUFFIXES:
            raise FlameError(
                FlameErrorCode.INVALID_CONFIG,
                f"{what} is not a size in bytes (an integer, optionally with k, m, g, KiB, MiB, GiB)",
            )
        value = int(m.group(1)) * _BINARY_SUFFIXES[m.group(2).lower()]
    else:
        try:
            value = int(text)
        except ValueError:
            raise FlameError(FlameErrorCode.INVALID_CONFIG, f"{what} is not a whole number") from None
    _check_range(what, value, minimum)
    return value
