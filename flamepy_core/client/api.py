"""Flame's module-level client functions, over the process's default connection."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flamepy_core.client.connection import default_connection
from flamepy_core.client.session import Session, requester
from flamepy_core.model import (
    Application,
    ApplicationAttributes,
    ResourceRequirement,
    SessionAttributes,
)
from flamepy_core.wire.proto import types_pb2 as pb


def register_application(name: str, app_attrs: ApplicationAttributes | Mapping[str, Any]) -> None:
    """Register an application (a dict is accepted, with Flame's attribute names)."""
    default_connection().register_application(name, app_attrs)


def update_application(name: str, app_attrs: ApplicationAttributes | Mapping[str, Any]) -> None:
    """Replace an application's spec (refused while it has open sessions)."""
    default_connection().update_application(name, app_attrs)


def unregister_application(name: str) -> None:
    """Remove an application and its closed sessions (refused while it has open sessions)."""
    default_connection().unregister_application(name)


def get_application(name: str) -> Application | None:
    """The application, or None when it is not registered."""
    return default_connection().get_application(name)


def list_applications() -> list[Application]:
    return default_connection().list_applications()


def list_executors() -> list[pb.Executor]:
    return default_connection().list_executors()


def list_nodes() -> list[pb.Node]:
    return default_connection().list_nodes()


def create_session(
    application: str,
    common_data: bytes | None = None,
    session_id: str | None = None,
    min_instances: int = 0,
    max_instances: int | None = None,
    batch_size: int = 1,
    resreq: ResourceRequirement | Mapping[str, Any] | str | None = None,
) -> Session:
    """Create a session of ``application``; its id defaults to ``<application>-<6 random characters>``."""
    attrs = SessionAttributes(
        application=application,
        id=session_id,
        common_data=common_data,
        min_instances=min_instances,
        max_instances=max_instances,
        batch_size=batch_size,
        resreq=ResourceRequirement.from_any(resreq),
    )
    return default_connection().create_session(attrs)


def open_session(session_id: str, spec: SessionAttributes | None = None) -> Session:
    """Get-or-create: open an existing session (checking ``spec`` if given) or create it from ``spec``."""
    return default_connection().open_session(session_id, spec)


def get_session(session_id: str) -> Session:
    return default_connection().get_session(session_id)


def list_sessions() -> list[Session]:
    return default_connection().list_sessions()


def close_session(session_id: str, force: bool = False) -> Session:
    """Close a session; refused while a task runs, unless ``force`` (its tasks are cancelled first)."""
    return default_connection().close_session(
        session_id, force=force, requested_by=requester("close_session(force=True)")
    )
