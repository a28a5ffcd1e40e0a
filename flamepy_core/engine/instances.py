"""What the server says about its instance processes: ``flmctl list -e``, ``flmctl top``, and the wire.

Flame's ``ListExecutor`` answers with ``Executor`` messages (id, node, resources, shim, state, session);
on a flamepy server each instance process is one executor, so Flame's own tools see them. A process id
and the application of an idle instance have no field there, so flamepy's ``flamepy.ext.v1.Runtime``
service adds ``ListInstances`` with both (a Flame cluster answers it with UNIMPLEMENTED, and clients fall
back to ``ListExecutor``).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

from flamepy_core.wire.proto import ext_pb2
from flamepy_core.wire.proto import types_pb2 as pb


@dataclass(frozen=True)
class InstanceInfo:
    """One instance as the scheduler sees it at this moment."""

    id: str
    application: str
    state: int
    """A ``flame.v1.ExecutorState`` value: Void (starting), Binding, Bound, Unbinding, Idle (warm), Releasing."""
    session_id: str | None
    pid: int | None
    """None until the process is started."""
    start_time_ms: int
    tasks_served: int


def executor_message(info: InstanceInfo, node: str | None = None) -> pb.Executor:
    executor = pb.Executor()
    executor.metadata.id = info.id
    executor.metadata.name = f"{info.application}/{info.id}"
    executor.spec.node = node if node is not None else socket.gethostname()
    executor.spec.shim = pb.Shim.Host
    executor.status.state = info.state  # type: ignore[assignment]
    if info.session_id:
        executor.status.session_id = info.session_id
    return executor


def instance_message(info: InstanceInfo) -> ext_pb2.Instance:
    message = ext_pb2.Instance(
        id=info.id,
        application=info.application,
        state=info.state,  # type: ignore[arg-type]
        pid=info.pid or 0,
        start_time=info.start_time_ms,
        tasks_served=info.tasks_served,
    )
    if info.session_id:
        message.session_id = info.session_id
    return message
