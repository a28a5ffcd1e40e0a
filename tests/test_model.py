"""flamepy_core.model: Flame's public data types, their parsing rules and their wire conversions."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from enum import IntEnum
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flamepy_core.contracts.errors import FlameError, FlameErrorCode
from flamepy_core.model import (
    Application,
    ApplicationAttributes,
    ApplicationSchema,
    ApplicationState,
    Event,
    ResourceRequirement,
    SessionAttributes,
    SessionState,
    Shim,
    Task,
    TaskInformer,
    TaskState,
    application_attributes_from_spec,
    application_attributes_to_spec,
    application_from_proto,
    application_to_proto,
    datetime_to_ms,
    event_from_proto,
    event_to_proto,
    ms_to_datetime,
    parse_memory,
    resreq_from_proto,
    resreq_to_proto,
    session_attributes_from_spec,
    session_attributes_to_spec,
    short_name,
    task_from_proto,
    task_to_proto,
)
from flamepy_core.wire.proto import types_pb2

GIB = 1024**3
UTC = timezone.utc

# --------------------------------------------------------------------------------------------------
# Enums


@pytest.mark.parametrize(
    ("enum_cls", "expected", "wire_enum"),
    [
        (SessionState, {"OPEN": 0, "CLOSED": 1}, types_pb2.SessionState),
        (
            TaskState,
            {"PENDING": 0, "RUNNING": 1, "SUCCEED": 2, "FAILED": 3, "CANCELLED": 4},
            types_pb2.TaskState,
        ),
        (ApplicationState, {"ENABLED": 0, "DISABLED": 1}, types_pb2.ApplicationState),
        (Shim, {"HOST": 0, "WASM": 1}, types_pb2.Shim),
    ],
)
def test_enum_numbers_match_flame_and_the_wire(
    enum_cls: type[IntEnum], expected: dict[str, int], wire_enum: Any
) -> None:
    assert {m.name: int(m) for m in enum_cls} == expected
    # Same numbers as the flame.v1 enum (whose names are CamelCase: Open, Succeed, ...).
    assert {name.upper(): number for name, number in wire_enum.items()} == expected


# --------------------------------------------------------------------------------------------------
# ResourceRequirement.from_string


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("cpu=2,mem=4g", (2, 4 * GIB, 0)),  # Flame's documented example
        (" CPU = 1 , memory=512 ", (1, 512, 0)),  # Flame's documented example
        ("gpu=1", (0, 0, 1)),
        ("Mem=1Gi,GPU=2,cpu=8", (8, GIB, 2)),
        ("memory=1536MiB", (0, 1536 * 1024**2, 0)),
        ("cpu=1_000", (1000, 0, 0)),  # int() rules, as Flame
    ],
)
def test_from_string_examples(text: str, expected: tuple[int, int, int]) -> None:
    r = ResourceRequirement.from_string(text)
    assert (r.cpu, r.memory, r.gpu) == expected


def test_from_string_repeated_key_keeps_the_last_value_like_flame() -> None:
    assert ResourceRequirement.from_string("cpu=1,cpu=3") == ResourceRequirement(cpu=3)
    assert ResourceRequirement.from_string("mem=1k,memory=2k") == ResourceRequirement(memory=2048)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "cannot be empty"),
        ("   ", "cannot be empty"),
        ("cpu=2,", "entry 2 is empty"),  # trailing comma
        ("cpu=2,,gpu=1", "entry 2 is empty"),
        (",cpu=2", "entry 1 is empty"),
        ("cpu", "exactly one '='"),
        ("cpu==2", "exactly one '='"),
        ("cpu=2=3", "exactly one '='"),
        ("cpu=", "has no value"),
        ("cpu=  ", "has no value"),
        ("disk=10", "unknown key 'disk'"),
        ("=2", "unknown key ''"),
        ("mem=1.5g", "not an integer"),  # int() only: decimals are an error
        ("cpu=1.5", "cpu value '1.5' is not an integer"),
        ("gpu=one", "gpu value 'one' is not an integer"),
        ("mem=g", "not an integer"),
        ("mem=4x", "not an integer"),
        ("cpu=-1", "between 0 and"),  # flamepy refuses negatives up front
    ],
)
def test_from_string_rejects(text: str, fragment: str) -> None:
    with pytest.raises(ValueError) as info:
        ResourceRequirement.from_string(text)
    assert fragment in str(info.value)
    if text.strip():
        assert repr(text) in str(info.value)  # the message names the offending string


def test_from_string_type_error_for_non_str() -> None:
    with pytest.raises(TypeError, match="must be a str"):
        ResourceRequirement.from_string(b"cpu=1")  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------
# parse_memory

_SUFFIX_POWERS = [
    (suffix, power)
    for power, letter in enumerate("kmgtp", start=1)
    for suffix in (letter, letter + "b", letter + "i", letter + "ib")
]


@pytest.mark.parametrize(("suffix", "power"), _SUFFIX_POWERS)
def test_parse_memory_every_suffix_is_binary(suffix: str, power: int) -> None:
    assert parse_memory(f"3{suffix}") == 3 * 1024**power
    assert parse_memory(f"3{suffix.upper()}") == 3 * 1024**power
    assert parse_memory(f" 7 {suffix} ") == 7 * 1024**power


def test_parse_memory_plain_forms() -> None:
    assert parse_memory("") == 0
    assert parse_memory("512") == 512
    assert parse_memory(4096) == 4096
    assert parse_memory("0g") == 0


@pytest.mark.parametrize("bad", ["1.5g", "g", "4x", "4b", "k4", "1e3", "-1k", "4 g b"])
def test_parse_memory_rejects(bad: str) -> None:
    with pytest.raises(ValueError, match=re.escape(repr(bad))):
        parse_memory(bad)


@pytest.mark.parametrize("bad", [True, 1.5, None, b"4g"])
def test_parse_memory_type_errors(bad: object) -> None:
    with pytest.raises(TypeError):
        parse_memory(bad)  # type: ignore[arg-type]


def test_parse_memory_rejects_negative_int() -> None:
    with pytest.raises(ValueError, match="negative"):
        parse_memory(-1)


_resreqs = st.builds(
    ResourceRequirement,
    cpu=st.integers(0, 2**64 - 1),
    memory=st.integers(0, 2**64 - 1),
    gpu=st.integers(0, 2**31 - 1),
)


@given(_resreqs)
def test_to_string_round_trips(r: ResourceRequirement) -> None:
    assert ResourceRequirement.from_string(r.to_string()) == r


@given(
    cpu=st.integers(0, 10**6),
    gpu=st.integers(0, 64),
    count=st.integers(0, 2**14 - 1),  # x 1024**5 still fits the uint64 wire field
    suffix=st.sampled_from([("", 0), *_SUFFIX_POWERS]),
    mem_key=st.sampled_from(["mem", "memory", "MEM", "Memory"]),
    pad=st.sampled_from(["", " ", "  \t"]),
    order=st.permutations([0, 1, 2]),
    upper=st.booleans(),
)
def test_hand_rendered_strings_parse_back(
    cpu: int,
    gpu: int,
    count: int,
    suffix: tuple[str, int],
    mem_key: str,
    pad: str,
    order: list[int],
    upper: bool,
) -> None:
    text_suffix, power = suffix
    expected = ResourceRequirement(cpu=cpu, memory=count * 1024**power, gpu=gpu)
    entries = [
        f"{pad}cpu{pad}={pad}{cpu}{pad}",
        f"{pad}{mem_key}={count}{text_suffix.upper() if upper else text_suffix}{pad}",
        f"GPU={pad}{gpu}",
    ]
    text = ",".join(entries[i] for i in order)
    assert ResourceRequirement.from_string(text) == expected


def test_to_string_uses_the_largest_exact_suffix() -> None:
    assert ResourceRequirement(cpu=2, memory=4 * GIB).to_string() == "cpu=2,mem=4g,gpu=0"
    assert ResourceRequirement(memory=1536 * 1024**2).to_string() == "cpu=0,mem=1536m,gpu=0"
    assert ResourceRequirement(memory=1000).to_string() == "cpu=0,mem=1000,gpu=0"


# --------------------------------------------------------------------------------------------------
# ResourceRequirement construction and from_any


@pytest.mark.parametrize(
    ("kwargs", "exc", "fragment"),
    [
        ({"cpu": -1}, ValueError, "ResourceRequirement.cpu"),
        ({"memory": 2**64}, ValueError, "ResourceRequirement.memory"),
        ({"gpu": 2**31}, ValueError, "ResourceRequirement.gpu"),
        ({"cpu": 1.5}, TypeError, "ResourceRequirement.cpu must be an int, got float"),
        ({"gpu": True}, TypeError, "ResourceRequirement.gpu must be an int, got bool"),
        ({"memory": "4g"}, TypeError, "parse_memory"),
    ],
)
def test_resreq_validation(kwargs: dict[str, object], exc: type[Exception], fragment: str) -> None:
    with pytest.raises(exc, match=re.escape(fragment)):
        ResourceRequirement(**kwargs)  # type: ignore[arg-type]


def test_from_any_forms() -> None:
    r = ResourceRequirement(cpu=1)
    assert ResourceRequirement.from_any(None) is None
    assert ResourceRequirement.from_any(r) is r
    assert ResourceRequirement.from_any("cpu=2,mem=4g") == ResourceRequirement(2, 4 * GIB, 0)
    assert ResourceRequirement.from_any({"cpu": 2, "mem": "4g"}) == ResourceRequirement(2, 4 * GIB, 0)
    assert ResourceRequirement.from_any({"memory": 1024, "gpu": 1}) == ResourceRequirement(0, 1024, 1)
    assert ResourceRequirement.from_any({"memory": "1k"}) == ResourceRequirement(0, 1024, 0)
    assert ResourceRequirement.from_any({}) == ResourceRequirement()


def test_from_any_unknown_dict_key_names_it_and_the_accepted_keys() -> None:
    with pytest.raises(ValueError) as info:
        ResourceRequirement.from_any({"cpu": 1, "disk": 3})
    message = str(info.value)
    assert "'disk'" in message
    for key in ("cpu", "memory", "mem", "gpu"):
        assert key in message


def test_from_any_rejects_ambiguous_and_wrong_types() -> None:
    with pytest.raises(ValueError, match="both 'memory' and 'mem'"):
        ResourceRequirement.from_any({"mem": 1, "memory": 2})
    with pytest.raises(TypeError, match=r"ResourceRequirement\.cpu"):
        ResourceRequirement.from_any({"cpu": "2"})
    with pytest.raises(ValueError, match="memory"):
        ResourceRequirement.from_any({"mem": "1.5g"})
    with pytest.raises(TypeError, match="list"):
        ResourceRequirement.from_any([1, 2])  # type: ignore[call-overload]


@given(_resreqs)
def test_resreq_proto_round_trip(r: ResourceRequirement) -> None:
    pb = resreq_to_proto(r)
    assert (pb.cpu, pb.memory, pb.gpu) == (r.cpu, r.memory, r.gpu)
    assert resreq_from_proto(types_pb2.ResourceRequirement.FromString(pb.SerializeToString())) == r


def test_resreq_to_proto_revalidates_mutated_fields() -> None:
    r = ResourceRequirement()
    r.cpu = -3
    with pytest.raises(ValueError, match=r"ResourceRequirement\.cpu"):
        resreq_to_proto(r)


# --------------------------------------------------------------------------------------------------
# Time


def test_ms_to_datetime_is_exact_and_utc() -> None:
    assert ms_to_datetime(0) == datetime(1970, 1, 1, tzinfo=UTC)
    dt = ms_to_datetime(1_700_000_000_123)
    assert dt.tzinfo is not None and dt.utcoffset() == timedelta(0)
    assert dt == datetime(2023, 11, 14, 22, 13, 20, 123000, tzinfo=UTC)
    assert ms_to_datetime(-1) == datetime(1969, 12, 31, 23, 59, 59, 999000, tzinfo=UTC)


@given(st.integers(-(10**13), 10**14))
def test_ms_round_trip(ms: int) -> None:
    assert datetime_to_ms(ms_to_datetime(ms)) == ms


def test_datetime_to_ms_rules() -> None:
    plus_two = timezone(timedelta(hours=2))
    assert datetime_to_ms(datetime(1970, 1, 1, 2, 0, 0, tzinfo=plus_two)) == 0
    assert datetime_to_ms(datetime(1970, 1, 1, 0, 0, 0, 1999, tzinfo=UTC)) == 1  # truncates
    with pytest.raises(ValueError, match="naive"):
        datetime_to_ms(datetime(2024, 1, 1))
    with pytest.raises(ValueError, match="outside"):
        ms_to_datetime(2**63 - 1)
    with pytest.raises(TypeError):
        ms_to_datetime(1.5)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------
# Events and tasks

T0 = datetime(2024, 5, 1, 12, 0, 0, 250000, tzinfo=UTC)
T0_MS = datetime_to_ms(T0)


def test_event_defaults_and_proto() -> None:
    assert Event(code=1) == Event(1, None, None)
    pb = types_pb2.Event(code=3, creation_time=T0_MS)
    assert event_from_proto(pb) == Event(3, None, T0)
    pb.message = ""
    assert event_from_proto(pb).message == ""  # set-but-empty is not None
    back = event_to_proto(Event(3, "boom", T0))
    assert back.HasField("message") and back.message == "boom" and back.creation_time == T0_MS
    assert not event_to_proto(Event(1)).HasField("message")


_COMPLETED = {
    TaskState.PENDING: False,
    TaskState.RUNNING: False,
    TaskState.SUCCEED: True,
    TaskState.FAILED: True,
    TaskState.CANCELLED: True,  # terminal: flamepy counts it as completed
}


@pytest.mark.parametrize("state", list(TaskState))
def test_task_completion_for_every_state(state: TaskState) -> None:
    assert set(_COMPLETED) == set(TaskState)  # the table covers every member
    task = Task("1", "ssn", state, T0)
    assert task.is_completed() is _COMPLETED[state]
    assert task.is_failed() is (state == TaskState.FAILED)
    assert task.is_cancelled() is (state == TaskState.CANCELLED)


def test_task_state_coerced_and_validated() -> None:
    assert Task("1", "s", 2, T0).state is TaskState.SUCCEED  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"Task.state: 9 is not a TaskState number; accepted: .*CANCELLED \(4\)"):
        Task("1", "s", 9, T0)  # type: ignore[arg-type]


def _task_pb(**spec: object) -> types_pb2.Task:
    return types_pb2.Task(
        metadata=types_pb2.Metadata(id="7", name="7"),
        spec=types_pb2.TaskSpec(session_id="my-ssn", **spec),  # type: ignore[arg-type]
        status=types_pb2.TaskStatus(state=types_pb2.Running, creation_time=T0_MS),
    )


def test_task_from_proto_keeps_presence() -> None:
    task = task_from_proto(_task_pb())
    assert (task.id, task.session_id, task.state) == ("7", "my-ssn", TaskState.RUNNING)
    assert task.creation_time == T0
    assert task.input is None and task.output is None and task.completion_time is None
    assert task.events == []

    task = task_from_proto(_task_pb(input=b"", output=b"out"))
    assert task.input == b"" and task.output == b"out"


def test_task_from_proto_cancelled_and_events() -> None:
    pb = _task_pb(input=b"x")
    pb.status.state = types_pb2.Cancelled
    pb.status.completion_time = T0_MS + 5
    pb.status.events.add(code=0, creation_time=T0_MS)
    pb.status.events.add(code=3, message="kaboom", creation_time=T0_MS + 1)
    task = task_from_proto(pb)
    assert task.state is TaskState.CANCELLED and task.is_completed()
    assert task.completion_time == T0 + timedelta(milliseconds=5)
    assert task.events == [Event(0, None, T0), Event(3, "kaboom", T0 + timedelta(milliseconds=1))]


def test_task_from_proto_unknown_state_is_a_clear_error() -> None:
    pb = _task_pb()
    pb.status.state = 9  # type: ignore[assignment]
    with pytest.raises(ValueError, match="9 is not a TaskState"):
        task_from_proto(pb)


def test_task_proto_round_trip() -> None:
    task = Task(
        "3",
        "s",
        TaskState.FAILED,
        T0,
        input=b"in",
        output=None,
        completion_time=T0,
        events=[Event(3, "e", T0)],
    )
    pb = types_pb2.Task.FromString(task_to_proto(task).SerializeToString())
    assert not pb.spec.HasField("output")
    assert task_from_proto(pb) == task


def test_task_informer_is_a_no_op_base() -> None:
    # Both callbacks are optional to override: the base must accept calls silently (not raise
    # NotImplementedError), so a subclass overriding only on_update still works.
    seen: list[Task] = []

    class OnlyUpdates(TaskInformer):
        def on_update(self, task: Task) -> None:
            seen.append(task)

    informer = OnlyUpdates()
    task = Task("1", "s", TaskState.PENDING, T0)
    informer.on_update(task)
    informer.on_error(FlameError(FlameErrorCode.INTERNAL, "x"))
    TaskInformer().on_update(task)
    assert seen == [task]


# --------------------------------------------------------------------------------------------------
# Sessions


def test_session_attributes_defaults_and_validation() -> None:
    attrs = SessionAttributes("app")
    assert (attrs.id, attrs.common_data, attrs.min_instances, attrs.max_instances, attrs.batch_size) == (
        None,
        None,
        0,
        None,
        1,
    )
    assert attrs.resreq is None
    assert SessionAttributes("app", resreq="cpu=1").resreq == ResourceRequirement(cpu=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="application cannot be empty"):
        SessionAttributes("")
    with pytest.raises(ValueError, match=r"SessionAttributes.min_instances must be between 0 and \d+, got -1"):
        SessionAttributes("app", min_instances=-1)
    with pytest.raises(TypeError, match=r"SessionAttributes\.max_instances must be an int, got str"):
        SessionAttributes("app", max_instances="3")  # type: ignore[arg-type]


def test_session_spec_unset_optionals_stay_unset() -> None:
    spec = session_attributes_to_spec(SessionAttributes("app"))
    assert spec.application == "app" and spec.batch_size == 1 and spec.min_instances == 0
    for name in ("common_data", "max_instances", "resreq"):
        assert not spec.HasField(name), name
    back = session_attributes_from_spec(spec, "ssn-1")
    assert back == SessionAttributes("app", id="ssn-1")


def test_session_spec_set_values_keep_presence() -> None:
    attrs = SessionAttributes(
        "app",
        id="s",
        common_data=b"",
        min_instances=2,
        max_instances=0,
        batch_size=1,
        resreq=ResourceRequirement(1, 2, 3),
    )
    spec = types_pb2.SessionSpec.FromString(session_attributes_to_spec(attrs).SerializeToString())
    assert spec.HasField("common_data") and spec.common_data == b""
    assert spec.HasField("max_instances") and spec.max_instances == 0
    assert spec.HasField("resreq") and (spec.resreq.cpu, spec.resreq.memory, spec.resreq.gpu) == (1, 2, 3)
    assert session_attributes_from_spec(spec, "s") == attrs


@pytest.mark.parametrize("bad", ["text", bytearray(b"x"), 42, {"a": 1}])
def test_session_spec_common_data_must_be_bytes(bad: object) -> None:
    with pytest.raises(FlameError) as info:
        session_attributes_to_spec(SessionAttributes("app", common_data=bad))
    assert info.value.code is FlameErrorCode.INVALID_ARGUMENT
    assert info.value.message == "common_data must be bytes in core API"
    assert str(info.value) == "common_data must be bytes in core API (code: 2)"


# --------------------------------------------------------------------------------------------------
# Applications


def test_application_attributes_from_dict_unknown_key_lists_accepted() -> None:
    with pytest.raises(TypeError) as info:
        ApplicationAttributes.from_dict({"command": "python", "comand": "x"})
    message = str(info.value)
    assert "'comand'" in message
    for accepted in ("shim", "command", "working_directory", "delay_release", "installer"):
        assert accepted in message
    with pytest.raises(TypeError, match=r"unknown key\(s\) \['inptu'\]"):
        ApplicationAttributes.from_dict({"schema": {"inptu": "{}"}})


def test_application_attributes_normalisation() -> None:
    attrs = ApplicationAttributes.from_dict(
        {"shim": "host", "labels": ("a", "b"), "schema": {"input": "{}"}, "environments": {"K": "V"}}
    )
    assert attrs.shim is Shim.HOST
    assert attrs.labels == ["a", "b"]
    assert attrs.schema == ApplicationSchema(input="{}")
    assert ApplicationAttributes(shim=1).shim is Shim.WASM  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "exc", "fragment"),
    [
        ({"labels": "gpu"}, TypeError, "ApplicationAttributes.labels must be a list of str, got str"),
        ({"arguments": ["a", 1]}, TypeError, "ApplicationAttributes.arguments[1] must be a str, got int"),
        ({"environments": {"A": 1}}, TypeError, "ApplicationAttributes.environments must map str to str"),
        ({"environments": ["A=1"]}, TypeError, "ApplicationAttributes.environments must be a dict"),
        ({"max_instances": -1}, ValueError, "ApplicationAttributes.max_instances must be between 0 and"),
        ({"delay_release": -5}, ValueError, "ApplicationAttributes.delay_release must be between 0 and"),
        ({"shim": "docker"}, ValueError, "unknown Shim name 'docker'; accepted: HOST (0), WASM (1)"),
        ({"shim": 7}, ValueError, "ApplicationAttributes.shim: 7 is not a Shim number"),
        ({"command": 5}, TypeError, "ApplicationAttributes.command must be a str or None, got int 5"),
        ({"schema": "{}"}, TypeError, "ApplicationAttributes.schema must be an ApplicationSchema"),
    ],
)
def test_application_attributes_validation(kwargs: dict[str, object], exc: type[Exception], fragment: str) -> None:
    with pytest.raises(exc, match=re.escape(fragment)):
        ApplicationAttributes(**kwargs)  # type: ignore[arg-type]


def test_application_spec_defaults_shim_and_leaves_optionals_unset() -> None:
    spec = application_attributes_to_spec(ApplicationAttributes())
    assert spec.shim == types_pb2.Host
    for name in (
        "description",
        "image",
        "command",
        "working_directory",
        "max_instances",
        "delay_release",
        "schema",
        "url",
        "installer",
    ):
        assert not spec.HasField(name), name
    assert list(spec.labels) == [] and list(spec.environments) == []


@pytest.mark.parametrize("schema", [ApplicationSchema(), ApplicationSchema(input="", output="  ", common_data="\n")])
def test_blank_schema_is_not_sent(schema: ApplicationSchema) -> None:
    assert not application_attributes_to_spec(ApplicationAttributes(schema=schema)).HasField("schema")


def test_schema_sent_with_member_presence() -> None:
    spec = application_attributes_to_spec(
        ApplicationAttributes(schema=ApplicationSchema(input='{"type":"string"}', output=""))
    )
    assert spec.HasField("schema")
    assert spec.schema.input == '{"type":"string"}'
    assert spec.schema.HasField("output") and spec.schema.output == ""
    assert not spec.schema.HasField("common_data")
    back = application_attributes_from_spec(spec)
    assert back.schema == ApplicationSchema(input='{"type":"string"}', output="", common_data=None)


def test_application_spec_round_trip_from_dict() -> None:
    attrs = {
        "shim": Shim.WASM,
        "image": "img:1",
        "description": "",
        "labels": ["x", "y"],
        "command": "/usr/bin/python3",
        "arguments": ["-m", "svc"],
        "environments": {"B": "2", "A": "1"},
        "working_directory": "/tmp/w",
        "max_instances": 0,
        "delay_release": 30,
        "url": "file:///pkg.tar.gz",
        "installer": "pip",
    }
    spec = types_pb2.ApplicationSpec.FromString(application_attributes_to_spec(attrs).SerializeToString())
    assert [(e.name, e.value) for e in spec.environments] == [("B", "2"), ("A", "1")]  # order kept
    assert spec.HasField("description") and spec.description == ""
    back = application_attributes_from_spec(spec)
    assert back == ApplicationAttributes(**attrs)  # type: ignore[arg-type]
    assert list(back.environments or {}) == ["B", "A"]


def test_application_from_proto_server_shape() -> None:
    pb = types_pb2.Application(
        metadata=types_pb2.Metadata(id="flmping", name="flmping"),
        spec=types_pb2.ApplicationSpec(command="/bin/ping", max_instances=1_000_000, delay_release=60),
        status=types_pb2.ApplicationStatus(state=types_pb2.Disabled, creation_time=T0_MS),
    )
    app = application_from_proto(pb)
    assert (app.id, app.name, app.state) == ("flmping", "flmping", ApplicationState.DISABLED)
    assert app.creation_time == T0 and app.creation_time.tzinfo is not None
    assert app.shim is Shim.HOST  # always set from the wire
    assert app.command == "/bin/ping" and app.max_instances == 1_000_000 and app.delay_release == 60
    assert app.url is None and app.image is None and app.schema is None and app.description is None
    assert app.labels == [] and app.arguments == [] and app.environments == {}


def test_application_proto_round_trip() -> None:
    app = Application(
        id="a",
        name="a",
        state=ApplicationState.ENABLED,
        creation_time=T0,
        shim=Shim.HOST,
        labels=["l"],
        arguments=[],
        environments={},
        url="",
        schema=ApplicationSchema(common_data="{}"),
    )
    pb = types_pb2.Application.FromString(application_to_proto(app).SerializeToString())
    assert pb.spec.HasField("url") and not pb.spec.HasField("image")
    assert application_from_proto(pb) == app


# --------------------------------------------------------------------------------------------------
# short_name


def test_short_name_shape_and_randomness() -> None:
    names = [short_name("my-app") for _ in range(300)]
    assert all(re.fullmatch(r"my-app-[A-Za-z0-9]{6}", n) for n in names)
    assert len(set(names)) == len(names)
    alphabet = set("".join(n[len("my-app-") :] for n in names))
    # 1800 draws from 62 symbols: every class shows up (a digits-only or lowercase-only bug would not).
    assert alphabet & set("0123456789") and alphabet & set("abcdefghijklmnopqrstuvwxyz")
    assert alphabet & set("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
    assert re.fullmatch(r"x-[A-Za-z0-9]{12}", short_name("x", 12))


def test_short_name_rejects_bad_length() -> None:
    with pytest.raises(ValueError, match="short_name length"):
        short_name("x", 0)
    with pytest.raises(TypeError):
        short_name(3)  # type: ignore[arg-type]
