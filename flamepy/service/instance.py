"""``FlameInstance``: a typed service with one entrypoint and a session context, over ``FlameService``.

Inputs and outputs travel through the serializer (cloudpickle by default: plain cloudpickle bytes, as
Flame's SDK sends). It is chosen per instance: ``FlameInstance(serializer=...)`` > ``FLAME_SERIALIZER``
(how the executor passes the serializer an application was registered with: it is one of the
application's ``environments``) > ``flame.yaml`` > cloudpickle. A request written by another serializer is
refused with an error naming both (:mod:`flamepy_core.serialization`), never decoded into garbage.

The session context lives in the object cache; the session's common data is its ``ObjectRef``, so every
instance of the session and the client see the same, newest version.
"""

from __future__ import annotations

import inspect
import logging
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from flamepy_core.config import resolve_config
from flamepy_core.contracts.errors import FlameError
from flamepy_core.contracts.serializer import Serializer
from flamepy_core.instance.runtime import ENDPOINT_ENV
from flamepy_core.instance.runtime import run as serve_instance
from flamepy_core.instance.service import FlameService, SessionContext, TaskContext
from flamepy_core.objref import ObjectRef
from flamepy_core.plugin_classes import SERIALIZER_HINT_ENV, serializer_of_class
from flamepy_core.serialization import decode_context, decode_payload, encode_payload

if TYPE_CHECKING:
    import asyncio

# Loaded when first needed, not at start: asyncio (an async entrypoint's first call) and the object-cache
# client (the first ins.context() / ins.update_context()). A service process listens sooner without them.

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])


class EntrypointError(TypeError, AssertionError):
    """An entrypoint with a signature FlameInstance cannot call.

    Also an ``AssertionError``, which is what Flame's SDK raises, so code written for either catches it.
    """


class FlameInstance(FlameService):
    """A service process with one entrypoint. Use ``@ins.entrypoint`` and call ``ins.run()``."""

    def __init__(self, serializer: str | None = None) -> None:
        self._serializer_name = serializer
        self._serializer: Serializer | None = None
        self._serializer_origin = "argument"
        self._entrypoint: Callable[..., Any] | None = None
        self._takes_input = False
        self._is_async = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ref: ObjectRef | None = None
        self._session_id: str | None = None
        self._warned_no_context = False

    @property
    def serializer(self) -> Serializer:
        """This instance's serializer, resolved on first use (so ``FLAME_SERIALIZER`` is read at run time).

        Started by the runtime, the process is told the class of the serializer its configuration names
        (``FLAMEPY_INSTANCE_SERIALIZER``) and builds it from that class alone; the plugin registry (pluggy
        and the scan of every installed plugin, a large part of a first task's time) is asked only when
        there is no such hint or it names another serializer than the one chosen here.
        """
        if self._serializer is None:
            name = self._chosen_serializer()
            hint = os.environ.get(SERIALIZER_HINT_ENV, "").strip()
            found = serializer_of_class(hint, name) if hint else None
            if found is None:
                from flamepy_core.plugins import get_registry

                found = get_registry().serializer(name)
            self._serializer = found
        return self._serializer

    def _chosen_serializer(self) -> str:
        """The serializer's name: the argument, else the configuration (no plugin is loaded to know it)."""
        if self._serializer_name is None:
            config = resolve_config()
            self._serializer_name = config.serializer
            self._serializer_origin = config.source.get("serializer", "default")
        return self._serializer_name

    def entrypoint(self, fn: F) -> F:
        """Register ``fn`` as the entrypoint: zero or one positional-or-keyword parameter, sync or async."""
        if self._entrypoint is not None:
            raise EntrypointError(
                f"this FlameInstance already has the entrypoint {self._entrypoint.__qualname__}; "
                f"a service has exactly one (register {fn.__qualname__} in another FlameInstance)"
            )
        signature = inspect.signature(fn)
        params = list(signature.parameters.values())
        if len(params) > 1 or (params and params[0].kind is not inspect.Parameter.POSITIONAL_OR_KEYWORD):
            raise EntrypointError(
                f"entrypoint {fn.__qualname__}{signature} must take zero or one positional-or-keyword "
                f"parameter, e.g. `def {fn.__name__}(req: MyRequest) -> MyResponse`"
            )
        self._entrypoint = fn
        self._takes_input = bool(params)
        self._is_async = inspect.iscoroutinefunction(fn)
        return fn

    # -- FlameService ------------------------------------------------------------------------------

    def on_session_enter(self, context: SessionContext) -> None:
        self._session_id = context.session_id
        data = context.common_data()
        self._ref = ObjectRef.decode(data) if data else None

    def on_session_leave(self) -> None:
        self._ref = None
        self._session_id = None

    def on_task_invoke(self, context: TaskContext) -> bytes | None:
        if self._entrypoint is None:
            raise FlameError(
                3, "this service has no entrypoint; decorate a function with @ins.entrypoint before ins.run()"
            )
        serializer = self.serializer
        request = None
        if context.input is not None:
            request = decode_payload(
                context.input, serializer, peer="client", what="request", chosen_by=self._serializer_origin
            )
        args = (request,) if self._takes_input else ()
        if self._is_async:
            if self._loop is None:
                import asyncio

                self._loop = asyncio.new_event_loop()  # one loop for the instance: async state survives tasks
            result = self._loop.run_until_complete(self._entrypoint(*args))
        else:
            result = self._entrypoint(*args)
        return None if result is None else encode_payload(result, serializer)

    # -- session context -----------------------------------------------------------------------------

    def context(self) -> Any:
        """The session's shared context (newest version), or None when the session has none."""
        if self._ref is None:
            return None
        from flamepy_core.client.objects import get_object

        return decode_context(get_object(self._ref), self.serializer, peer="client")

    def update_context(self, data: Any) -> None:
        """Store a new version of the session's context; clients and other instances see it next read."""
        if self._ref is None:
            if not self._warned_no_context:
                log.warning(
                    "update_context() ignored: session %s was created without ctx; "
                    "create it with Session(name, ctx=...) to share a context",
                    self._session_id,
                )
                self._warned_no_context = True
            return
        from flamepy_core.client.objects import update_object

        self._ref = update_object(self._ref, encode_payload(data, self.serializer))

    # -- running ---------------------------------------------------------------------------------------

    def run(self) -> None:
        """Serve this instance on ``$FLAME_INSTANCE_ENDPOINT`` (set by the runtime that starts it)."""
        if not os.environ.get(ENDPOINT_ENV):
            name = self._entrypoint.__name__ if self._entrypoint else "(none yet)"
            print(
                f"This is a flamepy service (entrypoint: {name}). The flamepy runtime starts it; it is not\n"
                f"run by hand ({ENDPOINT_ENV} is not set). To use it:\n"
                f"  1. describe it in an application file (command, arguments, working_directory),\n"
                f"  2. flmctl register --file app.yaml\n"
                f"  3. from a client: flamepy.service.Session('<app name>').invoke(request)",
                file=sys.stderr,
            )
            raise SystemExit(2)
        if self._chosen_serializer() != "cloudpickle":
            _name_main_module()
        serve_instance(self)


def _name_main_module() -> None:
    """Let serializers that pickle classes by reference find the types a service script defines.

    Run as ``python echo_service.py``, the script is ``__main__``, so its ``EchoResponse`` would be pickled
    as ``__main__.EchoResponse``, which the client's ``__main__`` does not have. Register the script under
    its file name (``echo_service``, what the client imports) and name its classes after that module.
    cloudpickle does not need this (it sends ``__main__`` classes by value), so it is left alone.
    """
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if main is None or not path or not path.endswith(".py"):
        return
    name = os.path.splitext(os.path.basename(path))[0]
    if not name.isidentifier() or name in sys.modules:
        return
    sys.modules[name] = main
    for value in list(vars(main).values()):
        if isinstance(value, type) and value.__module__ == "__main__":
            value.__module__ = name
