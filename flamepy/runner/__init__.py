"""``flamepy.runner``: run Python functions, classes and objects of this project as Flame services.

``Runner(name)`` packages the current directory and registers it from the ``flmrun`` template;
``runner.service(obj)`` gives a :class:`RunnerService` whose calls return :class:`ObjectFuture` s. See
docs/runner.md.
"""

from flamepy.runner.helper import ErrorType, RunnerError, get_data
from flamepy.runner.runner import ObjectFuture, ObjectFutureIterator, Runner, RunnerService
from flamepy.runner.runpy import FlameRunpyService
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
