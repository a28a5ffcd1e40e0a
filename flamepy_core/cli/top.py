"""``flmctl top``: what a server is doing, refreshed every second.

Three parts, so each can be tested on its own: :func:`take_snapshot` asks the server (sessions and
instances, two calls), :class:`Throughput` turns successive snapshots into tasks per second (from the
sessions' completed counters, so it needs nothing from the server beyond Flame's own counters), and
:func:`frame` lays a snapshot out as lines of text. The command (``commands/top.py``) draws the frames
in place on a terminal, with plain ANSI sequences, or prints them one after another when the output is
not a terminal.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from flamepy_core.cli.output import table
from flamepy_core.client.connection import Connection
from flamepy_core.client.session import Session
from flamepy_core.model import SessionState
from flamepy_core.wire.proto import ext_pb2
from flamepy_core.wire.proto import types_pb2 as pb

STATE_NAMES = {
    pb.ExecutorState.ExecutorUnknown: "Unknown",
    pb.ExecutorState.ExecutorVoid: "Starting",
    pb.ExecutorState.ExecutorIdle: "Idle",
    pb.ExecutorState.ExecutorBinding: "Binding",
    pb.ExecutorState.ExecutorBound: "Bound",
    pb.ExecutorState.ExecutorUnbinding: "Unbinding",
    pb.ExecutorState.ExecutorReleasing: "Releasing",
    pb.ExecutorState.ExecutorReleased: "Released",
}
"""Flame's executor states as top shows them (Void is an instance whose process is starting)."""


@dataclass(frozen=True)
class Snapshot:
    taken: float
    """``time.monotonic()`` when it was taken."""
    sessions: Sequence[Session]
    instances: Sequence[ext_pb2.Instance]


def take_snapshot(conn: Connection) -> Snapshot:
    sessions = conn.list_sessions()
    instances = conn.list_instances()
    return Snapshot(time.monotonic(), sessions, instances)


def _completed(session: Session) -> int:
    return session.succeed + session.failed + session.cancelled


@dataclass
class Throughput:
    """Tasks completed per second, per session and in all, between the last two snapshots."""

    per_session: dict[str, float] = field(default_factory=dict)
    total: float | None = None
    _last: Snapshot | None = None

    def update(self, snapshot: Snapshot) -> None:
        last = self._last
        self._last = snapshot
        if last is None:
            return
        elapsed = snapshot.taken - last.taken
        if elapsed <= 0:
            return
        before = {s.id: _completed(s) for s in last.sessions}
        self.per_session = {}
        done = 0
        for session in snapshot.sessions:
            delta = max(0, _completed(session) - before.get(session.id, 0))
            self.per_session[session.id] = delta / elapsed
            done += delta
        self.total = done / elapsed


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _uptime(start_ms: int, now_ms: int) -> str:
    seconds = max(0, (now_ms - start_ms) // 1000)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def frame(
    snapshot: Snapshot,
    rates: Throughput,
    *,
    server: str,
    interval: float,
    show_closed: bool = False,
    now_ms: int | None = None,
) -> list[str]:
    """The lines of one refresh: a header, the sessions, the instances per application, the throughput."""
    now_ms = now_ms if now_ms is not None else int(time.time() * 1000)
    sessions = [s for s in snapshot.sessions if show_closed or s.state == SessionState.OPEN]
    open_count = sum(1 for s in snapshot.sessions if s.state == SessionState.OPEN)
    clock = time.strftime("%H:%M:%S", time.localtime(now_ms / 1000))
    lines = [f"flmctl top - {server} - {clock} - every {interval:g}s (q or Ctrl-C quits)", ""]

    lines.append(f"SESSIONS: {open_count} open, {len(snapshot.sessions) - open_count} closed")
    session_rows = [
        [
            s.id,
            s.application,
            s.state.name.capitalize(),
            s.pending,
            s.running,
            s.succeed,
            s.failed,
            _rate(rates.per_session.get(s.id) if rates.total is not None else None),
        ]
        for s in sessions
    ]
    headers = ["ID", "APP", "STATE", "PENDING", "RUNNING", "SUCCEEDED", "FAILED", "TASKS/S"]
    lines += table(headers, session_rows).splitlines() if session_rows else ["(no open sessions)"]
    lines.append("")

    apps = sorted({i.application for i in snapshot.instances})
    lines.append(f"INSTANCES: {len(snapshot.instances)} in {len(apps)} application{'s' if len(apps) != 1 else ''}")
    instance_rows = [
        [
            i.application or "-",
            i.id,
            STATE_NAMES.get(i.state, str(i.state)),
            i.session_id if i.HasField("session_id") else "-",
            i.pid or "-",
            i.tasks_served,
            _uptime(i.start_time, now_ms) if i.start_time else "-",
        ]
        for app in apps
        for i in snapshot.instances
        if i.application == app
    ]
    headers = ["APP", "INSTANCE", "STATE", "SESSION", "PID", "TASKS", "UP"]
    lines += table(headers, instance_rows).splitlines() if instance_rows else ["(no instances)"]
    lines.append("")
    total_done = sum(_completed(s) for s in snapshot.sessions)
    lines.append(f"THROUGHPUT: {_rate(rates.total)} tasks/s; {total_done} tasks completed in all")
    return lines


def waiting_frame(server: str, reason: str, interval: float) -> list[str]:
    clock = time.strftime("%H:%M:%S")
    return [f"flmctl top - {server} - {clock} - every {interval:g}s (q or Ctrl-C quits)", "", reason]
