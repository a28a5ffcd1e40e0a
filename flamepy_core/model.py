"""The public data types of flamepy, with Flame 0.6's names, fields, defaults and semantics.

Everything users of Flame's SDK receive or construct (states, events, resource requirements, session
and application attributes, applications, tasks) lives here, together with the conversions to and from
the ``flame.v1`` wire messages. Keeping both in one module means the one place that knows what a field
means also decides how it travels.

Deliberate differences from Flame 0.6 (all of them make errors surface earlier or clearer):

* ``TaskState.CANCELLED = 4`` exists. Flame's server produces it for pending tasks of a closed session,
  but Flame's SDK has no member for it, so converting such a task raises ``ValueError`` there.
* Constructors validate field types and ranges (``TypeError``/``ValueError`` naming the field, the bad
  value and what to pass instead) instead of failing later inside protobuf with a bare message.
* ``ResourceRequirement.from_string`` follows Flame's grammar exactly, but a negative number is refused
  (Flame would only fail later, when the uint64 wire field rejects it).

Proto3 ``optional`` fields keep their presence both ways: an unset field becomes ``None`` and ``None``
leaves the field unset, while a set empty string stays ``""``. Repeated and map-like fields have no
presence on the wire, so they come back as (possibly empty) lists/dicts.
"""

from __future__ import annotations

import secrets
import string
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from datetime import datetime, timedelta, timezone
from enum import IntEnum
from typing import Any, TypeVar, overload

from flamepy_core.contracts.errors import FlameError, FlameErrorCode
from flamepy_core.wire.proto import types_pb2

__all__ = [
    "EVENT_PAYLOADS_PURGED",
    "Application",
    "ApplicationAttributes",
    "ApplicationSchema",
    "ApplicationState",
    "Event",
    "ResourceRequirement",
    "SessionAttributes",
    "SessionState",
    "Shim",
    "Task",
    "TaskInformer",
    "TaskState",
    "application_attributes_from_spec",
    "application_attributes_to_spec",
    "application_from_proto",
    "application_to_proto",
    "datetime_to_ms",
    "event_from_proto",
    "event_to_proto",
    "ms_to_datetime",
    "parse_memory",
    "resreq_from_proto",
    "resreq_to_proto",
    "session_attributes_from_spec",
    "session_attributes_to_spec",
    "short_name",
    "task_from_proto",
    "task_to_proto",
]

EVENT_PAYLOADS_PURGED = 1005
"""Task event of flamepy's server: the finished task's input and output were purged after the retention
(its message says when and why); the task keeps its state, times and other events."""

_UINT32_MAX = 2**32 - 1
_INT32_MAX = 2**31 - 1
_INT32_MIN = -(2**31)
_INT64_MAX = 2**63 - 1
_UINT64_MAX = 2**64 - 1

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


# --------------------------------------------------------------------------------------------------
# Enums (values are the flame.v1 wire numbers)


class SessionState(IntEnum):
    """State of a session (wire ``flame.v1.SessionState``)."""

    OPEN = 0
    CLOSED = 1


class TaskState(IntEnum):
    """State of a task (wire ``flame.v1.TaskState``).

    ``CANCELLED`` is flamepy's addition: Flame's server marks the pending tasks of a closed session
    Cancelled (wire value 4) but Flame 0.6's SDK has no member for it.
    """

    PENDING = 0
    RUNNING = 1
    SUCCEED = 2
    FAILED = 3
    CANCELLED = 4


class ApplicationState(IntEnum):
    """State of a registered application (wire ``flame.v1.ApplicationState``)."""

    ENABLED = 0
    DISABLED = 1


class Shim(IntEnum):
    """How an application's instances run (wire ``flame.v1.Shim``)."""

    HOST = 0
    WASM = 1


_E = TypeVar("_E", bound=IntEnum)


def _enum_value(enum_cls: type[_E], value: Any, where: str) -> _E:
    """Coerce ``value`` (member, wire number or member name in any case) to ``enum_cls``."""
    accepted = ", ".join(f"{m.name} ({int(m)})" for m in enum_cls)
    if isinstance(value, enum_cls):
        return value
    if isinstance(value, str):
        member = enum_cls.__members__.get(value.strip().upper())
        if member is None:
            raise ValueError(f"{where}: unknown {enum_cls.__name__} name {value!r}; accepted: {accepted}")
        return member
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{where} must be a {enum_cls.__name__}, got {type(value).__name__}; accepted: {accepted}")
    try:
        return enum_cls(value)
    except ValueError:
        raise ValueError(f"{where}: {value} is not a {enum_cls.__name__} number; accepted: {accepted}") from None


def _wire(member: IntEnum) -> Any:
    """The wire number of ``member``; typed Any because protobuf's stubs want their own enum wrapper."""
    return int(member)


# --------------------------------------------------------------------------------------------------
# Field validation helpers (messages always name the field, the value and the fix)


def _check_int(value: Any, where: str, lo: int, hi: int, hint: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{where} must be an int, got {type(value).__name__} {value!r}{hint}")
    if not lo <= value <= hi:
        raise ValueError(f"{where} must be between {lo} and {hi}, got {value}{hint}")
    return value


def _check_opt_int(value: Any, where: str, lo: int, hi: int, hint: str = "") -> int | None:
    return None if value is None else _check_int(value, where, lo, hi, hint)


def _check_opt_str(value: Any, where: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise TypeError(f"{where} must be a str or None, got {type(value).__name__} {value!r}")
    return value


def _check_opt_str_list(value: Any, where: str) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise TypeError(f"{where} must be a list of str, got {type(value).__name__} {value!r} (wrap one item in [...])")
    items = list(value)
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise TypeError(f"{where}[{i}] must be a str, got {type(item).__name__} {item!r}")
    return items


def _check_opt_str_dict(value: Any, where: str) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise TypeError(f"{where} must be a dict of str to str, got {type(value).__name__} {value!r}")
    out: dict[str, str] = {}
    for k, v in value.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise TypeError(
                f"{where} must map str to str; entry {k!r}: {v!r} has types "
                f"{type(k).__name__}: {type(v).__name__} (convert values with str())"
            )
        out[k] = v
    return out


# --------------------------------------------------------------------------------------------------
# Time


def ms_to_datetime(ms: int) -> datetime:
    """Wire time (int64 milliseconds since the epoch) to a tz-aware UTC ``datetime``.

    Uses exact integer arithmetic (no float division), so every millisecond value round-trips through
    :func:`datetime_to_ms`.
    """
    if isinstance(ms, bool) or not isinstance(ms, int):
        raise TypeError(f"wire time must be int milliseconds since the epoch, got {type(ms).__name__}")
    try:
        return _EPOCH + timedelta(milliseconds=ms)
    except OverflowError:
        raise ValueError(f"wire time {ms} ms since the epoch is outside the datetime range") from None


def datetime_to_ms(dt: datetime) -> int:
    """A tz-aware ``datetime`` to wire time (int64 ms since the epoch), truncating sub-millisecond parts.

    Naive datetimes are refused: Python would read them as local time, silently shifting every
    timestamp by the machine's UTC offset. Use ``datetime.now(timezone.utc)``.
    """
    if not isinstance(dt, datetime):
        raise TypeError(f"expected a datetime, got {type(dt).__name__}")
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError(f"datetime {dt.isoformat()} is naive; pass a tz-aware one, e.g. datetime.now(timezone.utc)")
    return (dt - _EPOCH) // timedelta(milliseconds=1)


# --------------------------------------------------------------------------------------------------
# Event


@dataclass
class Event:
    """A task or session event.

    Task events carry the task state number as ``code`` (0 created, 1 running, 2 succeeded, 3 failed;
    the failed event's ``message`` is the service's error text). Session events: 1001 = binding the
    session to an instance failed, 1002 = retry limit reached.
    """

    code: int
    message: str | None = None
    creation_time: datetime | None = None


def event_from_proto(pb: types_pb2.Event) -> Event:
    """``flame.v1.Event`` to :class:`Event` (an unset ``message`` becomes None)."""
    return Event(
        code=pb.code,
        message=pb.message if pb.HasField("message") else None,
        creation_time=ms_to_datetime(pb.creation_time),
    )


def event_to_proto(event: Event) -> types_pb2.Event:
    """:class:`Event` to ``flame.v1.Event`` (``message`` None stays unset; no time -> 0)."""
    pb = types_pb2.Event(code=_check_int(event.code, "Event.code", _INT32_MIN, _INT32_MAX))
    if event.message is not None:
        pb.message = event.message
    if event.creation_time is not None:
        pb.creation_time = datetime_to_ms(event.creation_time)
    return pb


# --------------------------------------------------------------------------------------------------
# Resource requirements

_KIB = 1024
# Every suffix is binary (k = 1024), as in Flame; matched longest first so "kib" wins over "b"-less forms.
_MEMORY_SUFFIXES: tuple[tuple[str, int], ...] = tuple(
    sorted(
        (
            (suffix, _KIB**power)
            for power, letter in enumerate("kmgtp", start=1)
            for suffix in (letter, f"{letter}b", f"{letter}i", f"{letter}ib")
        ),
        key=lambda item: len(item[0]),
        reverse=True,
    )
)
_MEMORY_HELP = (
    "use a whole number of bytes with an optional binary suffix k, m, g, t, p (also kb/ki/kib ...), "
    "e.g. 512, 4g, 1536mi; decimals such as 1.5g are not accepted"
)
_RESREQ_HELP = "expected comma-separated key=value pairs with keys cpu, mem (or memory), gpu, e.g. 'cpu=2,mem=4g'"


def parse_memory(value: int | str) -> int:
    """Parse a memory size into bytes: an int as is, or a string like ``"4g"`` (binary units).

    Flame's rules: case-insensitive; the suffix is matched longest first among ``k kb ki kib m mb mi mib
    g gb gi gib t tb ti tib p pb pi pib`` and every one of them is a power of 1024; the number before
    it must be an integer; no suffix means bytes; an empty string is 0. Negative sizes are refused.
    """
    if isinstance(value, bool):
        raise TypeError(f"memory size must be an int or a str like '4g', got bool {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"memory size must not be negative, got {value}")
        return value
    if not isinstance(value, str):
        raise TypeError(f"memory size must be an int or a str like '4g', got {type(value).__name__} {value!r}")
    text = value.strip().lower()
    if not text:
        return 0
    number, multiplier = text, 1
    for suffix, factor in _MEMORY_SUFFIXES:
        if text.endswith(suffix):
            number, multiplier = text[: -len(suffix)], factor
            break
    try:
        count = int(number)
    except ValueError:
        raise ValueError(
            f"invalid memory size {value!r}: {number.strip()!r} is not an integer; {_MEMORY_HELP}"
        ) from None
    if count < 0:
        raise ValueError(f"invalid memory size {value!r}: must not be negative")
    return count * multiplier


def _render_memory(size: int) -> str:
    """The shortest exact rendering of ``size`` bytes that :func:`parse_memory` reads back."""
    for letter, power in (("p", 5), ("t", 4), ("g", 3), ("m", 2), ("k", 1)):
        factor = _KIB**power
        if size and size % factor == 0:
            return f"{size // factor}{letter}"
    return str(size)


@dataclass
class ResourceRequirement:
    """Resources one instance of a session needs: whole CPUs, memory in bytes, GPUs.

    Omitted values are 0. On the wire ``cpu``/``memory`` are uint64 and ``gpu`` int32, so the
    constructor refuses values those fields cannot hold.
    """

    cpu: int = 0
    memory: int = 0
    gpu: int = 0

    def __post_init__(self) -> None:
        _check_int(self.cpu, "ResourceRequirement.cpu", 0, _UINT64_MAX, " (whole CPUs)")
        _check_int(self.memory, "ResourceRequirement.memory", 0, _UINT64_MAX, " (bytes; parse_memory('4g') helps)")
        _check_int(self.gpu, "ResourceRequirement.gpu", 0, _INT32_MAX, " (whole GPUs)")

    @classmethod
    def from_string(cls, s: str) -> ResourceRequirement:
        """Parse Flame's ``"cpu=2,mem=4g,gpu=1"`` form.

        Keys are case-insensitive (``cpu``, ``mem`` or ``memory``, ``gpu``), whitespace around entries,
        keys and values is ignored, omitted keys stay 0 and a repeated key keeps its last value (as in
        Flame). ``ValueError`` for: a blank string, an empty entry (e.g. a trailing comma), an entry
        without exactly one ``=``, an empty value, an unknown key, or a number that is not an integer.
        """
        if not isinstance(s, str):
            raise TypeError(f"resource requirement must be a str, got {type(s).__name__}; {_RESREQ_HELP}")
        if not s.strip():
            raise ValueError(f"resource requirement string cannot be empty; {_RESREQ_HELP}")
        values = {"cpu": 0, "memory": 0, "gpu": 0}
        for position, raw in enumerate(s.split(","), start=1):
            entry = raw.strip()
            if not entry:
                raise ValueError(
                    f"invalid resource requirement {s!r}: entry {position} is empty "
                    f"(stray or trailing comma?); {_RESREQ_HELP}"
                )
            if entry.count("=") != 1:
                raise ValueError(
                    f"invalid resource requirement {s!r}: entry {entry!r} must be key=value "
                    f"with exactly one '='; {_RESREQ_HELP}"
                )
            raw_key, raw_value = entry.split("=")
            key, value = raw_key.strip().lower(), raw_value.strip()
            if not value:
                raise ValueError(f"invalid resource requirement {s!r}: entry {entry!r} has no value; {_RESREQ_HELP}")
            if key in ("mem", "memory"):
                try:
                    values["memory"] = parse_memory(value)
                except ValueError as exc:
                    raise ValueError(f"invalid resource requirement {s!r}: {exc}") from None
            elif key in ("cpu", "gpu"):
                try:
                    number = int(value)
                except ValueError:
                    raise ValueError(
                        f"invalid resource requirement {s!r}: {key} value {value!r} is not an integer; "
                        f"use a whole number, e.g. {key}=2"
                    ) from None
                values[key] = number
            else:
                raise ValueError(
                    f"invalid resource requirement {s!r}: unknown key {raw_key.strip()!r}; "
                    "accepted keys: cpu, mem, memory, gpu"
                )
        try:
            return cls(**values)
        except ValueError as exc:
            raise ValueError(f"invalid resource requirement {s!r}: {exc}") from None

    def to_string(self) -> str:
        """Render in the form :meth:`from_string` reads (``"cpu=2,mem=4g,gpu=0"``); exact, never rounded."""
        return f"cpu={self.cpu},mem={_render_memory(self.memory)},gpu={self.gpu}"

    @overload
    @classmethod
    def from_any(cls, value: None) -> None: ...

    @overload
    @classmethod
    def from_any(cls, value: ResourceRequirement | Mapping[str, Any] | str) -> ResourceRequirement: ...

    @classmethod
    def from_any(cls, value: ResourceRequirement | Mapping[str, Any] | str | None) -> ResourceRequirement | None:
        """Accept every form users write a resource requirement in.

        ``None`` (let the server apply its default), a ``ResourceRequirement`` (returned as is), a dict
        with keys ``cpu``, ``memory`` or ``mem`` (int bytes or a size string like ``"4g"``), ``gpu``, or a
        ``"cpu=2,mem=4g"`` string. Unknown dict keys raise ``ValueError`` naming the key.
        """
        if value is None or isinstance(value, ResourceRequirement):
            return value
        if isinstance(value, str):
            return cls.from_string(value)
        if isinstance(value, Mapping):
            accepted = "accepted keys: cpu, memory (or mem), gpu"
            for key in value:
                if key not in ("cpu", "memory", "mem", "gpu"):
                    raise ValueError(f"unknown resource requirement key {key!r}; {accepted}")
            if "memory" in value and "mem" in value:
                raise ValueError(f"resource requirement has both 'memory' and 'mem'; give one of them ({accepted})")
            raw_memory = value.get("memory", value.get("mem", 0))
            try:
                memory = parse_memory(raw_memory)
            except (TypeError, ValueError) as exc:
                raise type(exc)(f"resource requirement memory: {exc}") from None
            return cls(cpu=value.get("cpu", 0), memory=memory, gpu=value.get("gpu", 0))
        raise TypeError(
            f"cannot make a ResourceRequirement from {type(value).__name__} {value!r}; "
            "pass a ResourceRequirement, a dict like {'cpu': 2, 'mem': '4g'}, "
            "a string like 'cpu=2,mem=4g', or None"
        )


def resreq_to_proto(resreq: ResourceRequirement) -> types_pb2.ResourceRequirement:
    """:class:`ResourceRequirement` to ``flame.v1.ResourceRequirement``."""
    # Re-validate: the dataclass is mutable, so fields may have changed since construction.
    checked = ResourceRequirement(resreq.cpu, resreq.memory, resreq.gpu)
    return types_pb2.ResourceRequirement(cpu=checked.cpu, memory=checked.memory, gpu=checked.gpu)


def resreq_from_proto(pb: types_pb2.ResourceRequirement) -> ResourceRequirement:
    """``flame.v1.ResourceRequirement`` to :class:`ResourceRequirement`.

    A negative wire ``gpu`` (int32) has no meaning and is refused with ``ValueError``.
    """
    return ResourceRequirement(cpu=pb.cpu, memory=pb.memory, gpu=pb.gpu)


# --------------------------------------------------------------------------------------------------
# Sessions


@dataclass
class SessionAttributes:
    """What a session is created with (``create_session`` / ``open_session(spec=...)``).

    ``id`` None lets the client pick ``short_name(application)``. ``common_data`` must be bytes (or
    None) for the core API; typed layers serialise into bytes first. ``resreq`` also accepts the forms
    of :meth:`ResourceRequirement.from_any` and is normalised to a ``ResourceRequirement``.
    """

    application: str
    id: str | None = None
    common_data: Any = None
    min_instances: int = 0
    max_instances: int | None = None
    batch_size: int = 1
    resreq: ResourceRequirement | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.application, str):
            raise TypeError(
                "SessionAttributes.application must be the application name (str), "
                f"got {type(self.application).__name__}"
            )
        if not self.application:
            raise ValueError("SessionAttributes.application cannot be empty; give the registered application's name")
        _check_opt_str(self.id, "SessionAttributes.id")
        _check_int(self.min_instances, "SessionAttributes.min_instances", 0, _UINT32_MAX)
        _check_opt_int(self.max_instances, "SessionAttributes.max_instances", 0, _UINT32_MAX, " (None = no limit)")
        _check_int(self.batch_size, "SessionAttributes.batch_size", 0, _UINT32_MAX)
        self.resreq = ResourceRequirement.from_any(self.resreq)


def _check_common_data(common_data: Any) -> bytes | None:
    if common_data is not None and not isinstance(common_data, bytes):
        raise FlameError(FlameErrorCode.INVALID_ARGUMENT, "common_data must be bytes in core API")
    return common_data


def session_attributes_to_spec(attrs: SessionAttributes) -> types_pb2.SessionSpec:
    """:class:`SessionAttributes` to ``flame.v1.SessionSpec`` (``id`` travels in the request, not here).

    ``common_data`` that is neither bytes nor None raises ``FlameError(INVALID_ARGUMENT, "common_data
    must be bytes in core API")``, Flame's error for it. None optionals stay unset, so the server applies
    its own defaults (e.g. the cluster's default resource requirement).
    """
    common_data = _check_common_data(attrs.common_data)
    spec = types_pb2.SessionSpec(
        application=attrs.application,
        min_instances=attrs.min_instances,
        batch_size=attrs.batch_size,
    )
    if common_data is not None:
        spec.common_data = common_data
    if attrs.max_instances is not None:
        spec.max_instances = attrs.max_instances
    resreq = ResourceRequirement.from_any(attrs.resreq)
    if resreq is not None:
        spec.resreq.CopyFrom(resreq_to_proto(resreq))
    return spec


def session_attributes_from_spec(spec: types_pb2.SessionSpec, session_id: str | None = None) -> SessionAttributes:
    """``flame.v1.SessionSpec`` (plus the session id, which the spec does not carry) to attributes."""
    return SessionAttributes(
        application=spec.application,
        id=session_id,
        common_data=spec.common_data if spec.HasField("common_data") else None,
        min_instances=spec.min_instances,
        max_instances=spec.max_instances if spec.HasField("max_instances") else None,
        batch_size=spec.batch_size,
        resreq=resreq_from_proto(spec.resreq) if spec.HasField("resreq") else None,
    )


# --------------------------------------------------------------------------------------------------
# Applications


@dataclass
class ApplicationSchema:
    """JSON-Schema strings describing an application's task input, output and common data."""

    input: str | None = None
    output: str | None = None
    common_data: str | None = None

    def __post_init__(self) -> None:
        for f in fields(self):
            _check_opt_str(getattr(self, f.name), f"ApplicationSchema.{f.name} (a JSON Schema string)")

    def is_blank(self) -> bool:
        """True when no member has non-whitespace content; such a schema is not sent to the server."""
        return all(v is None or not v.strip() for v in (self.input, self.output, self.common_data))


def _schema_value(value: Any, where: str) -> ApplicationSchema | None:
    if value is None or isinstance(value, ApplicationSchema):
        return value
    if isinstance(value, Mapping):
        accepted = [f.name for f in fields(ApplicationSchema)]
        unknown = [k for k in value if k not in accepted]
        if unknown:
            raise TypeError(f"{where}: unknown key(s) {unknown}; accepted keys: {accepted}")
        return ApplicationSchema(**value)
    raise TypeError(f"{where} must be an ApplicationSchema, a dict or None, got {type(value).__name__}")


@dataclass
class ApplicationAttributes:
    """What an application is registered with; every field optional.

    ``shim`` None means HOST. ``delay_release`` is in seconds. ``shim`` also accepts a wire number or a
    member name (``"host"``), ``schema`` a dict, ``labels``/``arguments`` any iterable of str; all are
    normalised on construction. Use :meth:`from_dict` to build from a config mapping with a helpful
    error for misspelt keys.
    """

    shim: Shim | None = None
    image: str | None = None
    description: str | None = None
    labels: list[str] | None = None
    command: str | None = None
    arguments: list[str] | None = None
    environments: dict[str, str] | None = None
    working_directory: str | None = None
    max_instances: int | None = None
    delay_release: int | None = None
    schema: ApplicationSchema | None = None
    url: str | None = None
    installer: str | None = None

    def __post_init__(self) -> None:
        _normalise_app_fields(self, type(self).__name__)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ApplicationAttributes:
        """Build from a mapping; an unknown key raises ``TypeError`` listing the accepted keys."""
        if not isinstance(data, Mapping):
            raise TypeError(f"application attributes must be a dict, got {type(data).__name__}")
        accepted = [f.name for f in fields(cls)]
        unknown = [k for k in data if k not in accepted]
        if unknown:
            raise TypeError(f"unknown application attribute(s) {unknown}; accepted keys: {accepted}")
        return cls(**data)

    @classmethod
    def from_any(cls, value: ApplicationAttributes | Mapping[str, Any]) -> ApplicationAttributes:
        """Return an ``ApplicationAttributes`` as is, or build one from a dict (as registration accepts)."""
        if isinstance(value, ApplicationAttributes):
            return value
        if isinstance(value, Mapping):
            return cls.from_dict(value)
        raise TypeError(f"application attributes must be ApplicationAttributes or a dict, got {type(value).__name__}")


def _normalise_app_fields(obj: ApplicationAttributes | Application, owner: str) -> None:
    """Validate and normalise the spec fields shared by ApplicationAttributes and Application."""
    if obj.shim is not None:
        obj.shim = _enum_value(Shim, obj.shim, f"{owner}.shim")
    for name in ("image", "description", "command", "working_directory", "url", "installer"):
        _check_opt_str(getattr(obj, name), f"{owner}.{name}")
    obj.labels = _check_opt_str_list(obj.labels, f"{owner}.labels")
    obj.arguments = _check_opt_str_list(obj.arguments, f"{owner}.arguments")
    obj.environments = _check_opt_str_dict(obj.environments, f"{owner}.environments")
    _check_opt_int(obj.max_instances, f"{owner}.max_instances", 0, _UINT32_MAX)
    _check_opt_int(obj.delay_release, f"{owner}.delay_release", 0, _INT64_MAX, " (seconds)")
    obj.schema = _schema_value(obj.schema, f"{owner}.schema")


@dataclass
class Application:
    """A registered application as the server reports it.

    From Flame's server: ``id == name``, ``shim`` always set, ``labels``/``arguments`` lists and
    ``environments`` a dict (possibly empty), ``max_instances``/``delay_release`` filled with the
    server's defaults; other unset optionals are None. ``creation_time`` is tz-aware UTC.
    """

    id: str
    name: str
    state: ApplicationState
    creation_time: datetime
    shim: Shim | None = None
    image: str | None = None
    description: str | None = None
    labels: list[str] | None = None
    command: str | None = None
    arguments: list[str] | None = None
    environments: dict[str, str] | None = None
    working_directory: str | None = None
    max_instances: int | None = None
    delay_release: int | None = None
    schema: ApplicationSchema | None = None
    url: str | None = None
    installer: str | None = None

    def __post_init__(self) -> None:
        self.state = _enum_value(ApplicationState, self.state, "Application.state")
        _normalise_app_fields(self, type(self).__name__)


_APP_SPEC_FIELDS = tuple(f.name for f in fields(ApplicationAttributes))
_OPTIONAL_STR_SPEC_FIELDS = ("description", "image", "command", "working_directory", "url", "installer")


def application_attributes_to_spec(
    attrs: ApplicationAttributes | Mapping[str, Any],
) -> types_pb2.ApplicationSpec:
    """:class:`ApplicationAttributes` (or a dict of them) to ``flame.v1.ApplicationSpec``.

    ``shim`` defaults to HOST. ``schema`` is sent only when at least one member is non-blank (Flame's
    server validates each sent member as JSON Schema, and an all-blank schema means "no schema"); its
    None members stay unset. Other None fields stay unset so the server applies its defaults.
    """
    attrs = ApplicationAttributes.from_any(attrs)
    # Re-run normalisation: the dataclass is mutable, so fields may have changed since construction.
    _normalise_app_fields(attrs, "ApplicationAttributes")
    spec = types_pb2.ApplicationSpec(shim=_wire(attrs.shim if attrs.shim is not None else Shim.HOST))
    for name in _OPTIONAL_STR_SPEC_FIELDS:
        value = getattr(attrs, name)
        if value is not None:
            setattr(spec, name, value)
    if attrs.labels:
        spec.labels.extend(attrs.labels)
    if attrs.arguments:
        spec.arguments.extend(attrs.arguments)
    if attrs.environments:
        spec.environments.extend(types_pb2.Environment(name=k, value=v) for k, v in attrs.environments.items())
    if attrs.max_instances is not None:
        spec.max_instances = attrs.max_instances
    if attrs.delay_release is not None:
        spec.delay_release = attrs.delay_release
    if attrs.schema is not None and not attrs.schema.is_blank():
        members = {f.name: getattr(attrs.schema, f.name) for f in fields(ApplicationSchema)}
        spec.schema.CopyFrom(types_pb2.ApplicationSchema(**{k: v for k, v in members.items() if v is not None}))
    return spec


def _schema_from_proto(pb: types_pb2.ApplicationSchema) -> ApplicationSchema:
    return ApplicationSchema(
        input=pb.input if pb.HasField("input") else None,
        output=pb.output if pb.HasField("output") else None,
        common_data=pb.common_data if pb.HasField("common_data") else None,
    )


def application_attributes_from_spec(spec: types_pb2.ApplicationSpec) -> ApplicationAttributes:
    """``flame.v1.ApplicationSpec`` to :class:`ApplicationAttributes`.

    Unset optionals become None; ``shim`` is always set (it has no presence on the wire); labels,
    arguments and environments come back as (possibly empty) list/list/dict.
    """
    values: dict[str, Any] = {
        name: getattr(spec, name) if spec.HasField(name) else None for name in _OPTIONAL_STR_SPEC_FIELDS
    }
    return ApplicationAttributes(
        shim=_enum_value(Shim, spec.shim, "ApplicationSpec.shim"),
        labels=list(spec.labels),
        arguments=list(spec.arguments),
        environments={env.name: env.value for env in spec.environments},
        max_instances=spec.max_instances if spec.HasField("max_instances") else None,
        delay_release=spec.delay_release if spec.HasField("delay_release") else None,
        schema=_schema_from_proto(spec.schema) if spec.HasField("schema") else None,
        **values,
    )


def application_from_proto(pb: types_pb2.Application) -> Application:
    """``flame.v1.Application`` to :class:`Application` (presence kept as in
    :func:`application_attributes_from_spec`)."""
    attrs = application_attributes_from_spec(pb.spec)
    return Application(
        id=pb.metadata.id,
        name=pb.metadata.name,
        state=_enum_value(ApplicationState, pb.status.state, "Application.status.state"),
        creation_time=ms_to_datetime(pb.status.creation_time),
        **{name: getattr(attrs, name) for name in _APP_SPEC_FIELDS},
    )


def application_to_proto(app: Application) -> types_pb2.Application:
    """:class:`Application` to ``flame.v1.Application`` (for servers; same spec rules as registration)."""
    attrs = ApplicationAttributes(**{name: getattr(app, name) for name in _APP_SPEC_FIELDS})
    return types_pb2.Application(
        metadata=types_pb2.Metadata(id=app.id, name=app.name),
        spec=application_attributes_to_spec(attrs),
        status=types_pb2.ApplicationStatus(
            state=_wire(_enum_value(ApplicationState, app.state, "Application.state")),
            creation_time=datetime_to_ms(app.creation_time),
        ),
    )


# --------------------------------------------------------------------------------------------------
# Tasks


@dataclass
class Task:
    """A snapshot of one task. ``id`` is the per-session sequence number as a decimal string ("1", "2" ...).

    ``input``/``output`` are None when unset on the wire (``b""`` when set but empty).
    """

    id: str
    session_id: str
    state: TaskState
    creation_time: datetime
    input: bytes | None = None
    output: bytes | None = None
    completion_time: datetime | None = None
    events: list[Event] | None = None

    def __post_init__(self) -> None:
        self.state = _enum_value(TaskState, self.state, "Task.state")

    def is_completed(self) -> bool:
        """True once the task reached a terminal state: SUCCEED, FAILED or CANCELLED.

        Flame 0.6 counts only SUCCEED and FAILED because it has no CANCELLED member; we count CANCELLED
        too, since a cancelled task never changes again and anyone waiting for completion (watchers,
        ``run()`` futures) must stop waiting.
        """
        return self.state in (TaskState.SUCCEED, TaskState.FAILED, TaskState.CANCELLED)

    def is_failed(self) -> bool:
        """True only for FAILED (a cancelled task did not fail; check :meth:`is_cancelled`)."""
        return self.state == TaskState.FAILED

    def is_cancelled(self) -> bool:
        """True for CANCELLED (cancelled, or pending when its session was closed)."""
        return self.state == TaskState.CANCELLED

    def is_purged(self) -> bool:
        """True once the server purged this finished task's input and output (its retention passed):
        ``input`` and ``output`` are then None whatever they were, and an event says so."""
        return any(e.code == EVENT_PAYLOADS_PURGED for e in self.events or ())


def task_from_proto(pb: types_pb2.Task) -> Task:
    """``flame.v1.Task`` to :class:`Task`; unset input/output/completion_time become None."""
    return Task(
        id=pb.metadata.id,
        session_id=pb.spec.session_id,
        state=_enum_value(TaskState, pb.status.state, "Task.status.state"),
        creation_time=ms_to_datetime(pb.status.creation_time),
        input=pb.spec.input if pb.spec.HasField("input") else None,
        output=pb.spec.output if pb.spec.HasField("output") else None,
        completion_time=ms_to_datetime(pb.status.completion_time) if pb.status.HasField("completion_time") else None,
        events=[event_from_proto(e) for e in pb.status.events],
    )


def task_to_proto(task: Task) -> types_pb2.Task:
    """:class:`Task` to ``flame.v1.Task`` (for servers); None optionals stay unset."""
    spec = types_pb2.TaskSpec(session_id=task.session_id)
    if task.input is not None:
        spec.input = task.input
    if task.output is not None:
        spec.output = task.output
    status = types_pb2.TaskStatus(
        state=_wire(_enum_value(TaskState, task.state, "Task.state")),
        creation_time=datetime_to_ms(task.creation_time),
        events=[event_to_proto(e) for e in task.events or ()],
    )
    if task.completion_time is not None:
        status.completion_time = datetime_to_ms(task.completion_time)
    return types_pb2.Task(metadata=types_pb2.Metadata(id=task.id, name=task.id), spec=spec, status=status)


class TaskInformer:
    """Callback interface for task progress; subclass and override what you need (both default to no-ops)."""

    def on_update(self, task: Task) -> None:
        """Called with each new snapshot of a watched task."""

    def on_error(self, error: FlameError) -> None:
        """Called when watching fails."""


# --------------------------------------------------------------------------------------------------
# Names

_NAME_ALPHABET = string.ascii_letters + string.digits


def short_name(prefix: str, length: int = 6) -> str:
    """``f"{prefix}-{length random [A-Za-z0-9]}"``, e.g. ``my-app-a1B2c3`` (Flame's default session ids).

    Uses the OS CSPRNG (like Flame's ``SystemRandom``) so forked workers never repeat each other's ids.
    """
    if not isinstance(prefix, str):
        raise TypeError(f"short_name prefix must be a str, got {type(prefix).__name__}")
    _check_int(length, "short_name length", 1, 1024)
    return f"{prefix}-{''.join(secrets.choice(_NAME_ALPHABET) for _ in range(length))}"
