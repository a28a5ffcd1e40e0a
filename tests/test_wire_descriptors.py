"""Our hand-written flame.v1 protos are wire-compatible with Flame's published ones.

The ``.proto`` files in ``flamepy_core/wire/proto`` were written from the 0.6 wire table, not
copied.  This module proves they describe the same wire format as the published ``flamepy==0.6.0``
wheel: it downloads the wheel, reads the serialized ``FileDescriptorProto`` each of its ``*_pb2.py``
hands to ``AddSerializedFile`` (parsing the source with :mod:`ast`, never importing the package),
and compares every message, field, enum and rpc with ours.  Source file names and import paths
differ on purpose (``types.proto`` vs ``flamepy_core/wire/proto/types.proto``) and play no part on
the wire, so they are not compared.

The download needs PyPI.  Without a network the comparison tests skip and say so; set
``FLAMEPY_REQUIRE_WHEEL=1`` (e.g. in CI) to make that a failure instead.
"""

from __future__ import annotations

import ast
import os
import socket
import subprocess
import sys
import urllib.parse
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import FileDescriptor
from google.protobuf.descriptor_pb2 import (
    DescriptorProto,
    EnumDescriptorProto,
    FieldDescriptorProto,
    FileDescriptorProto,
)
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from hypothesis import given
from hypothesis import strategies as st

from flamepy_core.wire import methods, payload_messages
from flamepy_core.wire.proto import frontend_pb2, shim_pb2, types_pb2

UPSTREAM_REQUIREMENT = "flamepy==0.6.0"
PACKAGE = "flame.v1"
OURS: dict[str, FileDescriptor] = {
    "types": types_pb2.DESCRIPTOR,
    "frontend": frontend_pb2.DESCRIPTOR,
    "shim": shim_pb2.DESCRIPTOR,
}

# pip output that means "could not reach the index" rather than "the index said no".
_NETWORK_ERRORS = (
    "NewConnectionError",
    "Failed to establish a new connection",
    "Temporary failure in name resolution",
    "Name or service not known",
    "nodename nor servname provided",
    "Network is unreachable",
    "ConnectTimeoutError",
    "ConnectionResetError",
    "ProxyError",
    "connection broken by",
    "Read timed out",
)


# --------------------------------------------------------------------------------------------
# Reading the published descriptors


def _index_reachable() -> bool:
    """Whether a TCP connection to the package index opens (pip hides some connection errors)."""
    url = urllib.parse.urlsplit(os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple"))
    if url.scheme not in ("http", "https") or not url.hostname:
        return True  # a local index: not a network question
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=10):
            return True
    except OSError:
        return False


def _download_wheel(dest: Path) -> Path:
    """Fetch the published wheel with pip into ``dest``; skip only when the index is unreachable."""
    dest.mkdir(parents=True, exist_ok=True)
    cached = sorted(dest.glob("flamepy-0.6.0-*.whl"))
    if cached:
        return cached[0]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check"]
    cmd += ["--only-binary=:all:", UPSTREAM_REQUIREMENT, "-d", str(dest)]
    try:  # 100 s: inside the suite's per-test timeout, so a stuck index yields this message instead
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=100, check=False)
    except subprocess.TimeoutExpired as exc:
        output = f"pip timed out after {exc.timeout}s (Read timed out)"
        returncode = -1
    else:
        output = proc.stdout + proc.stderr
        returncode = proc.returncode
    wheels = sorted(dest.glob("flamepy-0.6.0-*.whl"))
    if returncode == 0 and wheels:
        return wheels[0]
    offline = any(marker in output for marker in _NETWORK_ERRORS) or not _index_reachable()
    if offline and os.environ.get("FLAMEPY_REQUIRE_WHEEL", "") in ("", "0"):
        pytest.skip(
            f"no network: could not download {UPSTREAM_REQUIREMENT} from the package index to compare "
            f"descriptors (set FLAMEPY_REQUIRE_WHEEL=1 to fail instead). pip said:\n{output[-2000:]}"
        )
    pytest.fail(f"pip download {UPSTREAM_REQUIREMENT} failed (exit {returncode}):\n{output[-4000:]}")


def serialized_descriptor(source: str, filename: str = "<pb2>") -> bytes:
    """The bytes literal a generated ``*_pb2.py`` passes to ``AddSerializedFile``, read with ``ast``."""
    found = [
        node.args[0].value
        for node in ast.walk(ast.parse(source, filename))
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "AddSerializedFile"
        and node.args
        and isinstance(node.args[0], ast.Constant)
        and isinstance(node.args[0].value, bytes)
    ]
    if len(found) != 1:
        raise AssertionError(f"{filename}: expected one AddSerializedFile(b'...') call, found {len(found)}")
    return found[0]


@pytest.fixture(scope="module")
def upstream_descriptors(tmp_path_factory: pytest.TempPathFactory) -> dict[str, FileDescriptorProto]:
    """The published wheel's flame.v1 file descriptors, keyed by ``types``/``frontend``/``shim``.

    The wheel is downloaded once per test session into pytest's base temp dir and read as a zip:
    importing it would register a second ``flame.v1`` in the default descriptor pool.
    """
    wheel = _download_wheel(tmp_path_factory.getbasetemp() / "flamepy-0.6.0-wheel")
    out: dict[str, FileDescriptorProto] = {}
    with zipfile.ZipFile(wheel) as zf:
        for stem in OURS:
            member = f"flamepy/proto/{stem}_pb2.py"
            source = zf.read(member).decode("utf-8")
            out[stem] = FileDescriptorProto.FromString(serialized_descriptor(source, member))
    return out


def ours(stem: str) -> FileDescriptorProto:
    """Our compiled descriptor of ``<stem>.proto`` as a ``FileDescriptorProto``."""
    proto = FileDescriptorProto()
    OURS[stem].CopyToProto(proto)
    return proto


# --------------------------------------------------------------------------------------------
# The comparison


def _type_name(name: str) -> str:
    """Type references are fully qualified in compiled descriptors; drop the leading dot."""
    return name.lstrip(".")


def _messages(prefix: str, protos: Iterable[DescriptorProto]) -> Iterator[tuple[str, DescriptorProto]]:
    """Messages with their full names, nested ones after their parent."""
    for msg in protos:
        full = f"{prefix}.{msg.name}"
        yield full, msg
        yield from _messages(full, msg.nested_type)


def _index(
    fdp: FileDescriptorProto,
) -> tuple[dict[str, DescriptorProto], dict[str, EnumDescriptorProto]]:
    """Every message and enum of a file (nested ones included) by full name."""
    messages = dict(_messages(fdp.package, fdp.message_type))
    enums = {f"{fdp.package}.{e.name}": e for e in fdp.enum_type}
    for full, msg in messages.items():
        enums.update({f"{full}.{e.name}": e for e in msg.enum_type})
    return messages, enums


def _real_oneof(msg: DescriptorProto, field: FieldDescriptorProto) -> str | None:
    """The name of the real oneof holding ``field``; proto3 ``optional``'s synthetic oneofs don't count."""
    if field.HasField("oneof_index") and not field.proto3_optional:
        return msg.oneof_decl[field.oneof_index].name
    return None


def _field_facts(msg: DescriptorProto, field: FieldDescriptorProto) -> dict[str, object]:
    return {
        "number": field.number,
        "type": FieldDescriptorProto.Type.Name(field.type),
        "type_name": _type_name(field.type_name),
        "label": FieldDescriptorProto.Label.Name(field.label),
        "proto3_optional": field.proto3_optional,
        "oneof": _real_oneof(msg, field),
    }


def _compare_names(what: str, expected: set[str], actual: set[str]) -> list[str]:
    """Names present on one side only; ``what`` is the kind plus any owner prefix (``"rpc Frontend."``)."""
    sep = "" if what.endswith(".") else " "
    diffs = [f"{what}{sep}{name}: missing from ours" for name in sorted(expected - actual)]
    diffs += [f"{what}{sep}{name}: not in upstream" for name in sorted(actual - expected)]
    return diffs


def descriptor_differences(expected: FileDescriptorProto, actual: FileDescriptorProto) -> list[str]:
    """Every wire-relevant difference between two file descriptors, as readable sentences.

    ``expected`` is upstream, ``actual`` ours.  Compared: package and syntax; the set of message and
    enum full names (nested included); per field its number, name, type, type name, label, proto3
    ``optional`` flag and real-oneof membership; per enum its value names and numbers; per service
    its rpc names, input/output types and streaming flags.
    """
    diffs: list[str] = []
    for attr in ("package", "syntax"):
        if getattr(expected, attr) != getattr(actual, attr):
            diffs.append(f"file {attr}: upstream {getattr(expected, attr)!r}, ours {getattr(actual, attr)!r}")

    exp_msgs, exp_enums = _index(expected)
    act_msgs, act_enums = _index(actual)
    diffs += _compare_names("message", set(exp_msgs), set(act_msgs))
    diffs += _compare_names("enum", set(exp_enums), set(act_enums))

    for full in sorted(set(exp_msgs) & set(act_msgs)):
        exp_fields = {f.name: f for f in exp_msgs[full].field}
        act_fields = {f.name: f for f in act_msgs[full].field}
        diffs += _compare_names(f"field {full}.", set(exp_fields), set(act_fields))
        for name in sorted(set(exp_fields) & set(act_fields)):
            exp = _field_facts(exp_msgs[full], exp_fields[name])
            act = _field_facts(act_msgs[full], act_fields[name])
            diffs += [
                f"field {full}.{name}: {key} upstream {exp[key]!r}, ours {act[key]!r}"
                for key in exp
                if exp[key] != act[key]
            ]

    for full in sorted(set(exp_enums) & set(act_enums)):
        exp_values = {v.name: v.number for v in exp_enums[full].value}
        act_values = {v.name: v.number for v in act_enums[full].value}
        diffs += _compare_names(f"enum value {full}.", set(exp_values), set(act_values))
        diffs += [
            f"enum value {full}.{name}: number upstream {exp_values[name]}, ours {act_values[name]}"
            for name in sorted(set(exp_values) & set(act_values))
            if exp_values[name] != act_values[name]
        ]

    exp_services = {s.name: s for s in expected.service}
    act_services = {s.name: s for s in actual.service}
    diffs += _compare_names("service", set(exp_services), set(act_services))
    for svc in sorted(set(exp_services) & set(act_services)):
        exp_rpcs = {m.name: m for m in exp_services[svc].method}
        act_rpcs = {m.name: m for m in act_services[svc].method}
        diffs += _compare_names(f"rpc {svc}.", set(exp_rpcs), set(act_rpcs))
        for name in sorted(set(exp_rpcs) & set(act_rpcs)):
            exp_m, act_m = exp_rpcs[name], act_rpcs[name]
            for key in ("input_type", "output_type"):
                e, a = _type_name(getattr(exp_m, key)), _type_name(getattr(act_m, key))
                if e != a:
                    diffs.append(f"rpc {svc}.{name}: {key} upstream {e}, ours {a}")
            for key in ("server_streaming", "client_streaming"):
                if getattr(exp_m, key) != getattr(act_m, key):
                    diffs.append(f"rpc {svc}.{name}: {key} upstream {getattr(exp_m, key)}, ours {getattr(act_m, key)}")
    return diffs


# --------------------------------------------------------------------------------------------
# Compatibility with the published wheel


@pytest.mark.parametrize("stem", list(OURS))
def test_descriptor_matches_published_wheel(stem: str, upstream_descriptors: dict[str, FileDescriptorProto]) -> None:
    published = upstream_descriptors[stem]
    assert published.package == PACKAGE
    diffs = descriptor_differences(published, ours(stem))
    assert diffs == [], f"{stem}.proto differs from {UPSTREAM_REQUIREMENT}:\n  " + "\n  ".join(diffs)


def test_upstream_descriptor_is_not_empty(upstream_descriptors: dict[str, FileDescriptorProto]) -> None:
    """Guard against a vacuous pass: the published files really carry the expected contents."""
    counts = {
        stem: (len(fdp.message_type), len(fdp.enum_type), [(x.name, len(x.method)) for x in fdp.service])
        for stem, fdp in upstream_descriptors.items()
    }
    assert counts == {
        "types": (29, 6, []),
        "frontend": (19, 0, [("Frontend", 18)]),
        "shim": (3, 0, [("Instance", 3)]),
    }


def _upstream_pool(upstream_descriptors: dict[str, FileDescriptorProto]) -> descriptor_pool.DescriptorPool:
    """A private pool holding the published descriptors, so their classes never clash with ours."""
    pool = descriptor_pool.DescriptorPool()
    for stem in ("types", "frontend", "shim"):
        pool.Add(upstream_descriptors[stem])
    return pool


@pytest.fixture(scope="module")
def upstream_task_class(upstream_descriptors: dict[str, FileDescriptorProto]) -> type[Message]:
    """The published ``flame.v1.Task``, built from the wheel's descriptors without importing it."""
    return GetMessageClass(_upstream_pool(upstream_descriptors).FindMessageTypeByName("flame.v1.Task"))


@given(
    session_id=st.text(max_size=20),
    task_input=st.none() | st.binary(max_size=64),
    task_output=st.none() | st.binary(max_size=64),
    completion_time=st.none() | st.integers(min_value=-(2**63), max_value=2**63 - 1),
    state=st.sampled_from(list(types_pb2.TaskState.values())),
)
def test_task_bytes_interchange_with_published_task(
    upstream_task_class: type[Message],
    session_id: str,
    task_input: bytes | None,
    task_output: bytes | None,
    completion_time: int | None,
    state: int,
) -> None:
    """Our bytes parse as the published Task and back, keeping every value and every presence bit."""
    task = types_pb2.Task(
        metadata=types_pb2.Metadata(id="7", name="7"),
        spec=types_pb2.TaskSpec(session_id=session_id, input=task_input, output=task_output),
        status=types_pb2.TaskStatus(state=state, creation_time=1, completion_time=completion_time),  # type: ignore[arg-type]
    )
    theirs = upstream_task_class.FromString(task.SerializeToString())
    back = types_pb2.Task.FromString(theirs.SerializeToString())
    assert back == task
    spec = theirs.spec  # type: ignore[attr-defined]
    assert spec.HasField("input") is (task_input is not None)
    assert spec.HasField("output") is (task_output is not None)
    assert theirs.status.HasField("completion_time") is (completion_time is not None)  # type: ignore[attr-defined]


# --------------------------------------------------------------------------------------------
# Local checks (no network)


def test_task_round_trip_keeps_presence() -> None:
    """proto3 ``optional``: an empty-but-set field survives the wire, an unset one stays unset."""
    task = types_pb2.Task(
        metadata=types_pb2.Metadata(id="1", name="1"),
        spec=types_pb2.TaskSpec(session_id="ssn", input=b""),
        status=types_pb2.TaskStatus(state=types_pb2.Succeed, creation_time=5, completion_time=0),
    )
    data = task.SerializeToString()
    back = types_pb2.Task.FromString(data)
    assert back == task
    assert back.SerializeToString() == data
    assert back.spec.HasField("input") and back.spec.input == b""
    assert not back.spec.HasField("output")
    assert back.status.HasField("completion_time") and back.status.completion_time == 0

    empty = types_pb2.Task.FromString(types_pb2.Task(spec=types_pb2.TaskSpec()).SerializeToString())
    assert not empty.spec.HasField("input") and not empty.status.HasField("completion_time")

    spec = types_pb2.SessionSpec.FromString(
        types_pb2.SessionSpec(application="app", resreq=types_pb2.ResourceRequirement()).SerializeToString()
    )
    assert spec.HasField("resreq") and not spec.HasField("max_instances")
    assert not spec.HasField("common_data")


FRONTEND_RPCS = {
    "RegisterApplication": ("RegisterApplicationRequest", "Result"),
    "UnregisterApplication": ("UnregisterApplicationRequest", "Result"),
    "UpdateApplication": ("UpdateApplicationRequest", "Result"),
    "GetApplication": ("GetApplicationRequest", "Application"),
    "ListApplication": ("ListApplicationRequest", "ApplicationList"),
    "ListExecutor": ("ListExecutorRequest", "ExecutorList"),
    "ListNodes": ("ListNodesRequest", "NodeList"),
    "GetNode": ("GetNodeRequest", "GetNodeResponse"),
    "CreateSession": ("CreateSessionRequest", "Session"),
    "DeleteSession": ("DeleteSessionRequest", "Session"),
    "OpenSession": ("OpenSessionRequest", "Session"),
    "CloseSession": ("CloseSessionRequest", "Session"),
    "GetSession": ("GetSessionRequest", "Session"),
    "ListSession": ("ListSessionRequest", "SessionList"),
    "CreateTask": ("CreateTaskRequest", "Task"),
    "GetTask": ("GetTaskRequest", "Task"),
    "WatchTask": ("WatchTaskRequest", "Task"),
    "ListTask": ("ListTaskRequest", "Task"),
}


def test_method_tables() -> None:
    assert len(methods.FRONTEND) == 18
    for name, (request, response) in FRONTEND_RPCS.items():
        method = methods.FRONTEND[name]
        assert method.path == f"/flame.v1.Frontend/{name}"
        assert method.request.DESCRIPTOR.full_name == f"flame.v1.{request}"
        assert method.response.DESCRIPTOR.full_name == f"flame.v1.{response}"
    assert set(methods.FRONTEND) == set(FRONTEND_RPCS)

    assert {name: (m.request.DESCRIPTOR.name, m.response.DESCRIPTOR.name) for name, m in methods.INSTANCE.items()} == {
        "OnSessionEnter": ("SessionContext", "Result"),
        "OnTaskInvoke": ("TaskContext", "TaskResult"),
        "OnSessionLeave": ("EmptyRequest", "Result"),
    }
    assert methods.INSTANCE["OnTaskInvoke"].path == "/flame.v1.Instance/OnTaskInvoke"

    assert set(methods.OBJECT_CACHE) == {
        "PutObject",
        "UpdateObject",
        "PatchObject",
        "GetObject",
        "DeleteObjects",
        "GetObjectPart",
    }
    assert methods.OBJECT_CACHE["GetObject"].path == "/flamepy.cache.v1.ObjectCache/GetObject"

    streaming = {m.path for m in methods.ALL_METHODS.values() if m.server_streaming}
    assert streaming == {
        "/flame.v1.Frontend/WatchTask",
        "/flame.v1.Frontend/ListTask",
        "/flamepy.ext.v1.Tasks/WatchSession",
        "/flamepy.ext.v1.Tasks/WatchOutcomes",
        "/flamepy.ext.v1.InstanceTasks/RunTasks",
    }
    # The batch paths the instance runtime and the scheduler use without loading the descriptors.
    assert methods.INSTANCE_TASKS["RunTasks"].path == payload_messages.RUN_TASKS
    assert methods.INSTANCE_TASKS["WithdrawTasks"].path == payload_messages.WITHDRAW_TASKS
    assert methods.INSTANCE_TASKS["GrantLane"].path == payload_messages.GRANT_LANE
    assert methods.INSTANCE_TASKS["RunLaneTask"].path == payload_messages.RUN_LANE_TASK
    assert methods.INSTANCE_TASKS["RunLaneTasks"].path == payload_messages.RUN_LANE_TASKS
    assert methods.INSTANCE_TASKS["RunTasks"].response.DESCRIPTOR.full_name == "flame.v1.TaskResult"
    assert set(methods.EXT) == {"RunTask", "WatchSession", "CreateTasks", "WatchOutcomes", "OpenLane"}
    assert methods.RUNTIME["ListInstances"].path == "/flamepy.ext.v1.Runtime/ListInstances"
    assert set(methods.RUNTIME) == {"ListInstances", "CollectGarbage"}
    assert {
        name: (m.request.DESCRIPTOR.name, m.response.DESCRIPTOR.full_name) for name, m in methods.CONTROL.items()
    } == {
        "CancelTasks": ("CancelTasksRequest", "flamepy.ext.v1.CancelTasksReply"),
        "CloseSession": ("CloseSessionRequest", "flame.v1.Session"),
    }
    assert methods.CONTROL["CancelTasks"].path == "/flamepy.ext.v1.Control/CancelTasks"
    # Frontend, Instance, ObjectCache, flamepy.ext.v1 (Tasks, Runtime, Control, InstanceTasks)
    assert len(methods.ALL_METHODS) == 18 + 3 + 6 + 5 + 2 + 2 + 5
    assert all(path == m.path for path, m in methods.ALL_METHODS.items())

    # The tables hand out the generated classes themselves, not look-alikes.
    assert methods.FRONTEND["CreateTask"].request is frontend_pb2.CreateTaskRequest
    assert methods.FRONTEND["CreateTask"].response is types_pb2.Task
    assert methods.INSTANCE["OnTaskInvoke"].request is shim_pb2.TaskContext


def test_method_tables_are_read_only() -> None:
    with pytest.raises(TypeError):
        methods.FRONTEND["Bogus"] = methods.FRONTEND["CreateTask"]  # type: ignore[index]


# --------------------------------------------------------------------------------------------
# The comparison has teeth


def _message(fdp: FileDescriptorProto, name: str) -> DescriptorProto:
    return next(m for m in fdp.message_type if m.name == name)


def _field(msg: DescriptorProto, name: str) -> FieldDescriptorProto:
    return next(f for f in msg.field if f.name == name)


def test_comparison_of_identical_descriptors_is_empty() -> None:
    for stem in OURS:
        assert descriptor_differences(ours(stem), ours(stem)) == []


def test_comparison_reports_each_alteration() -> None:
    """Alter a copy of our types.proto in ways that break the wire; every change must be named."""
    reference = ours("types")
    altered = FileDescriptorProto()
    altered.CopyFrom(reference)

    # A renumbered field.
    _field(_message(altered, "SessionSpec"), "min_instances").number = 15
    # A dropped ``optional``: TaskSpec.output loses presence (and its synthetic oneof, the last one).
    task_spec = _message(altered, "TaskSpec")
    output = _field(task_spec, "output")
    assert output.proto3_optional and output.oneof_index == len(task_spec.oneof_decl) - 1
    output.proto3_optional = False
    output.ClearField("oneof_index")
    del task_spec.oneof_decl[-1]
    # A field whose message type changed.
    _field(_message(altered, "Task"), "status").type_name = ".flame.v1.SessionStatus"
    # A field moved into a real oneof (in a message without synthetic ones, which must come last).
    metadata = _message(altered, "Metadata")
    metadata.oneof_decl.add(name="key")
    _field(metadata, "id").oneof_index = 0
    # A repeated field made singular.
    _field(_message(altered, "NodeList"), "nodes").label = FieldDescriptorProto.LABEL_OPTIONAL
    # An enum value renumbered and one added.
    task_state = next(e for e in altered.enum_type if e.name == "TaskState")
    next(v for v in task_state.value if v.name == "Cancelled").number = 9
    task_state.value.add(name="Retrying", number=5)
    # A message removed and a nested message added.
    del altered.message_type[[m.name for m in altered.message_type].index("EmptyRequest")]
    _message(altered, "Event").nested_type.add(name="Detail")

    # The altered file is still a valid proto (the comparison sees realistic descriptors).
    descriptor_pool.DescriptorPool().Add(altered)

    diffs = descriptor_differences(reference, altered)
    assert set(diffs) == {
        "field flame.v1.SessionSpec.min_instances: number upstream 5, ours 15",
        "field flame.v1.TaskSpec.output: proto3_optional upstream True, ours False",
        "field flame.v1.Task.status: type_name upstream 'flame.v1.TaskStatus', ours 'flame.v1.SessionStatus'",
        "field flame.v1.Metadata.id: oneof upstream None, ours 'key'",
        "field flame.v1.NodeList.nodes: label upstream 'LABEL_REPEATED', ours 'LABEL_OPTIONAL'",
        "enum value flame.v1.TaskState.Cancelled: number upstream 4, ours 9",
        "enum value flame.v1.TaskState.Retrying: not in upstream",
        "message flame.v1.EmptyRequest: missing from ours",
        "message flame.v1.Event.Detail: not in upstream",
    }, "\n".join(diffs)


def test_comparison_reports_service_alterations() -> None:
    reference = ours("frontend")
    altered = FileDescriptorProto()
    altered.CopyFrom(reference)
    rpcs = {m.name: m for m in altered.service[0].method}
    rpcs["WatchTask"].server_streaming = False
    rpcs["CreateTask"].client_streaming = True
    rpcs["GetTask"].output_type = ".flame.v1.Session"
    rpcs["ListNodes"].name = "ListNode"
    del altered.service[0].method[[m.name for m in altered.service[0].method].index("GetNode")]

    assert set(descriptor_differences(reference, altered)) == {
        "rpc Frontend.WatchTask: server_streaming upstream True, ours False",
        "rpc Frontend.CreateTask: client_streaming upstream False, ours True",
        "rpc Frontend.GetTask: output_type upstream flame.v1.Task, ours flame.v1.Session",
        "rpc Frontend.ListNodes: missing from ours",
        "rpc Frontend.ListNode: not in upstream",
        "rpc Frontend.GetNode: missing from ours",
    }


def test_serialized_descriptor_is_read_from_source() -> None:
    """The ast reader finds exactly the bytes the generated module registers."""
    source = Path(types_pb2.__file__).read_text(encoding="utf-8")
    fdp = FileDescriptorProto.FromString(serialized_descriptor(source))
    assert descriptor_differences(ours("types"), fdp) == []
    assert fdp.name == "flamepy_core/wire/proto/types.proto"
    with pytest.raises(AssertionError, match="found 0"):
        serialized_descriptor("x = 1\n")
    assert isinstance(fdp, descriptor_pb2.FileDescriptorProto)
