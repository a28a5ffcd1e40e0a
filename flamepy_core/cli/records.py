"""Applications, sessions, tasks and instances as flmctl's records: plain data, the same in every format.

JSON and YAML print these dicts whole; tables pick columns from them. Keys are stable (scripts read
them), times are ISO 8601 with their zone, enums are names, payloads are sizes (the server holds them as
opaque bytes, so flmctl never decodes them).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from flamepy_core.client.session import Session
from flamepy_core.model import Application, Task, TaskState, ms_to_datetime
from flamepy_core.wire.proto import ext_pb2
from flamepy_core.wire.proto import types_pb2 as pb

SESSION_EVENT_BIND_FAILED = 1001


def application_record(app: Application) -> dict[str, Any]:
    return dataclasses.asdict(app)


def session_record(s: Session) -> dict[str, Any]:
    return {
        "id": s.id,
        "application": s.application,
        "state": s.state,
        "creation_time": s.creation_time,
        "completion_time": s.completion_time,
        "pending": s.pending,
        "running": s.running,
        "succeed": s.succeed,
        "failed": s.failed,
        "cancelled": s.cancelled,
        "events": [dataclasses.asdict(e) for e in s.events],
    }


def task_error(task: Task) -> str | None:
    """The failure text of a failed task: the last failed event's message (type, text and traceback)."""
    if task.state != TaskState.FAILED:
        return None
    for event in reversed(task.events or []):
        if event.code == int(TaskState.FAILED) and event.message:
            return event.message
    return "the task failed without a message"


def task_record(task: Task) -> dict[str, Any]:
    duration = None
    if task.completion_time is not None:
        duration = round((task.completion_time - task.creation_time).total_seconds(), 3)
    return {
        "id": task.id,
        "session_id": task.session_id,
        "state": task.state,
        "creation_time": task.creation_time,
        "completion_time": task.completion_time,
        "duration": duration,
        "input_size": None if task.input is None else len(task.input),
        "output_size": None if task.output is None else len(task.output),
        "payloads_purged": task.is_purged(),
        "error": task_error(task),
        "events": [dataclasses.asdict(e) for e in task.events or []],
    }


def executor_record(executor: pb.Executor, instance: ext_pb2.Instance | None = None) -> dict[str, Any]:
    """Flame's ``Executor`` message: on a flamepy server, one per instance process.

    ``instance`` (flamepy's ``ListInstances`` answer for the same id) adds the application, the process id,
    the tasks served and the start time; against a Flame cluster these stay None.
    """
    status = executor.status
    extra: dict[str, Any] = {"application": None, "pid": None, "tasks_served": None, "start_time": None}
    if instance is not None:
        extra = {
            "application": instance.application or None,
            "pid": instance.pid or None,
            "tasks_served": instance.tasks_served,
            "start_time": ms_to_datetime(instance.start_time) if instance.start_time else None,
        }
    return {
        "id": executor.metadata.id,
        "state": pb.ExecutorState.Name(status.state).removeprefix("Executor"),
        "session_id": status.session_id if status.HasField("session_id") else None,
        "node": executor.spec.node or None,
        "shim": pb.Shim.Name(executor.spec.shim),
        "resreq": {
            "cpu": executor.spec.resreq.cpu,
            "memory": executor.spec.resreq.memory,
            "gpu": executor.spec.resreq.gpu,
        },
        **extra,
    }


def node_record(node: pb.Node) -> dict[str, Any]:
    status = node.status
    return {
        "name": node.metadata.name or node.metadata.id,
        "hostname": node.spec.hostname,
        "state": pb.NodeState.Name(status.state),
        "cpu": status.capacity.cpu,
        "memory": status.capacity.memory,
        "arch": status.info.arch,
        "os": status.info.os,
    }
