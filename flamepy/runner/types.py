"""The Runner's data types: what a service session carries, what a call sends, and custom session ids.

``RunnerContext`` travels (cloudpickled, through the object cache) as a Runner session's common data;
``RunnerRequest`` is one call's task input. Both validate on construction, so a bad value fails where it
is made, with a ``ValueError`` naming the field, as Flame's do.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

__all__ = ["MAX_SESSION_ID", "RunnerContext", "RunnerRequest", "SessionContext", "object_kind"]

MAX_SESSION_ID = 128


def object_kind(obj: Any) -> str:
    """``"function"`` (callable, not a class: functions, lambdas, builtins, partials, callable
    instances), ``"class"``, or ``"object"`` (anything else: an instance whose methods are the service)."""
    if inspect.isclass(obj):
        return "class"
    if callable(obj):
        return "function"
    return "object"


@dataclass
class SessionContext:
    """Give a Runner service a session id of your choosing: set it as the object's ``_session_context``.

    Not to be confused with ``flamepy.SessionContext``, what a service's ``on_session_enter`` receives.
    ``application_name`` is informative only.
    """

    session_id: str | None = None
    application_name: str | None = None

    def __post_init__(self) -> None:
        if self.session_id is not None:
            if not isinstance(self.session_id, str):
                raise ValueError(f"session_id must be a string, got {type(self.session_id).__name__}")
            if self.session_id == "":
                raise ValueError("session_id cannot be empty")
            if len(self.session_id) > MAX_SESSION_ID:
                raise ValueError(f"session_id is too long: {len(self.session_id)} characters, at most {MAX_SESSION_ID}")
        if self.application_name is not None and not isinstance(self.application_name, str):
            raise ValueError(f"application_name must be a string, got {type(self.application_name).__name__}")


@dataclass
class RunnerRequest:
    """One call: ``method`` (None calls the object itself), positional ``args`` and ``kwargs``."""

    method: str | None = None
    args: tuple[Any, ...] | list[Any] | None = None
    kwargs: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.method is not None and not isinstance(self.method, str):
            raise ValueError(f"method must be a string or None, got {type(self.method).__name__}")
        if self.args is not None and not isinstance(self.args, (tuple, list)):
            raise ValueError(f"args must be a tuple or list, got {type(self.args).__name__}")
        if self.kwargs is not None and not isinstance(self.kwargs, dict):
            raise ValueError(f"kwargs must be a dict, got {type(self.kwargs).__name__}")


@dataclass
class RunnerContext:
    """What a Runner session runs, and how many instances it may use.

    ====================  ========  =========  ===========  =====================  ===================
    kind                  stateful  autoscale  warmup       min_instances          max_instances
    ====================  ========  =========  ===========  =====================  ===================
    function, class       False     None→True  >= 0         autoscale: warmup;     autoscale: None;
                                                            fixed: warmup or 1     fixed: = min
    object                True      False      0 or 1       1                      1
    ====================  ========  =========  ===========  =====================  ===================

    A class is instantiated (without arguments) in each instance; an object's state is written back to
    the cache after every call, so it outlives the process that ran it.
    """

    execution_object: Any
    stateful: bool | None = None
    autoscale: bool | None = None
    warmup: int = 0
    min_instances: int = field(init=False, repr=False, default=0)
    max_instances: int | None = field(init=False, repr=False, default=None)

    def __post_init__(self) -> None:
        if isinstance(self.warmup, bool) or not isinstance(self.warmup, int) or self.warmup < 0:
            raise ValueError("warmup must be a non-negative integer.")
        kind = object_kind(self.execution_object)
        if kind in ("function", "class"):
            if self.stateful:
                raise ValueError(f"a {kind} is always stateless: stateful=True is not allowed for {kind}s")
            self.stateful = False
            if self.autoscale is None:
                self.autoscale = True
            if self.autoscale:
                self.min_instances, self.max_instances = self.warmup, None
            else:
                self.min_instances = self.warmup or 1
                self.max_instances = self.min_instances
        else:
            if self.stateful is False:
                raise ValueError("an object instance is always stateful: stateful=False is not allowed for objects")
            self.stateful = True
            if self.autoscale:
                raise ValueError("an object instance always runs on one fixed instance: autoscale=True is not allowed")
            self.autoscale = False
            if self.warmup not in (0, 1):
                raise ValueError(f"object instances only support warmup=0 or warmup=1, got warmup={self.warmup}")
            self.min_instances, self.max_instances = 1, 1
