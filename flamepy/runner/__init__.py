"""``flamepy.runner``: run Python functions, classes and objects of this project as Flame services.

``Runner(name)`` packages the current directory and registers it from the ``flmrun`` template;
``runner.service(obj)`` gives a :class:`RunnerService` whose calls return :class:`ObjectFuture` s. See
docs/runner.md.
"""

from typing import Any

from flamepy.runner.helper import ErrorType, RunnerError, get_data
from flamepy.runner.runner import ObjectFuture, ObjectFutureIterator, Runner, RunnerService
from flamepy.runner.types import RunnerContext, RunnerRequest, SessionContext

__all__ = [
    "ErrorType",
    "FlameRunpyService",
    "ObjectFuture",
    "ObjectFutureIterator",
    "Runner",
    "RunnerContext",
    "RunnerError",
    "RunnerRequest",
    "RunnerService",
    "SessionContext",
    "get_data",
]


def __getattr__(name: str) -> Any:
    """``FlameRunpyService`` loads on first use: ``python -m flamepy.runner.runpy`` (the ``flmrun`` command)
    imports this package first, and had it imported ``runpy`` already, Python would warn that the module it is
    about to run as ``__main__`` was imported before."""
    if name == "FlameRunpyService":
        from flamepy.runner.runpy import FlameRunpyService

        return FlameRunpyService
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
