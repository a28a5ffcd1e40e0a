"""In-process instances: the application's service file runs inside the server's own process.

Instead of starting ``command arguments``, the launcher loads the first ``.py`` argument (relative to
the application's ``working_directory``) with :func:`runpy.run_path` under the name
``__flamepy_inprocess__`` (so the file's ``if __name__ == "__main__": ins.run()`` does not fire), takes
the one :class:`~flamepy_core.instance.service.FlameService` object the file defines, and serves
:func:`~flamepy_core.instance.runtime.instance_handlers` for it on an endpoint of an in-process transport
(``inmem://``). The scheduler
drives it exactly as it drives a process (enter, invoke, leave, stop), through the same interface.

Why: a test of a service (or of a transport-free runtime, such as the ``inmem`` one) then needs no
process, no socket and no interpreter start-up, and a debugger or coverage sees the service's code.
Each instance loads its own copy of the file, so instances keep separate state as processes do.

What an in-process instance shares with its host, unlike a process: the interpreter (``sys.modules``,
the current directory, ``os.environ``), so the application's ``environments`` are not applied (except
``FLAME_SERIALIZER``, given to a ``FlameInstance`` that names no serializer, because the client picks the
same one from the registration), and the service's folder is put on ``sys.path`` (a process started in
it would import its siblings from there too). A task cannot be interrupted: stopping an instance stops
calls to it, while an entrypoint that is running finishes in its thread.
"""

from __future__ import annotations

import asyncio
import logging
import os
import runpy
import sys
import threading
import time
import uuid
from pathlib import Path

from flamepy_core.contracts.errors import FlameError, FlameErrorCode
from flamepy_core.contracts.transport import Channel, Server, Transport, TransportCapabilities
from flamepy_core.engine.choice import local_endpoint
from flamepy_core.engine.executor import LinkOption, _expand
from flamepy_core.instance.runtime import describe_exception, instance_handlers
from flamepy_core.instance.service import FlameService
from flamepy_core.transport_kit import adapt_handlers
from flamepy_core.wire.proto import types_pb2 as pb

log = logging.getLogger(__name__)

RUN_NAME = "__flamepy_inprocess__"
"""``__name__`` of a service file loaded in-process: not ``__main__``, so its ``ins.run()`` guard is skipped."""

INSTANCE_MODES = ("process", "inprocess")
"""How a server runs instances: ``process`` (the application's command) or ``inprocess`` (this module)."""

_SERIALIZER_ENV = "FLAME_SERIALIZER"

# runpy swaps sys.modules[RUN_NAME] and sys.argv[0] while a file runs: one load at a time.
_load_lock = threading.Lock()


def service_file(app: pb.Application, env: dict[str, str] | None = None) -> Path:
    """The service file an in-process instance of ``app`` loads: its first ``.py`` argument.

    Relative paths are taken from the application's ``working_directory`` (``$VAR`` expanded as the
    process launcher does), or from the current directory when it has none.
    """
    name = app.metadata.name
    spec = app.spec
    values = dict(os.environ if env is None else env)
    script = next((_expand(a, values) for a in spec.arguments if a.endswith(".py")), None)
    if script is None:
        shown = " ".join([spec.command, *spec.arguments]) if spec.command else "(no command)"
        raise FlameError(
            FlameErrorCode.INVALID_CONFIG,
            f"application {name} cannot run in-process: its arguments name no .py service file "
            f"(it runs `{shown}`); register it with arguments: [my_service.py], or run instances as processes",
        )
    path = Path(script)
    if not path.is_absolute() and spec.HasField("working_directory") and spec.working_directory:
        path = Path(_expand(spec.working_directory, values)) / path
    return path.resolve()


def load_service(path: Path) -> FlameService:
    """Run ``path`` as a fresh module and return the one ``FlameService`` object it defines.

    Every call runs the file again, so each instance has its own module state.
    """
    if not path.is_file():
        raise FlameError(
            FlameErrorCode.INVALID_CONFIG,
            f"the service file {path} does not exist; fix the application's working_directory/arguments",
        )
    folder = str(path.parent)
    with _load_lock:
        if folder not in sys.path:
            sys.path.insert(0, folder)  # as for `python service.py`: its siblings are importable
        try:
            namespace = runpy.run_path(str(path), run_name=RUN_NAME)
        except SystemExit as exc:
            raise FlameError(
                FlameErrorCode.INVALID_CONFIG,
                f"the service file {path} exited (code {exc.code}) while being loaded in-process; it runs "
                f'with __name__ == {RUN_NAME!r}: keep `ins.run()` under `if __name__ == "__main__":`',
            ) from exc
        except Exception as exc:
            raise FlameError(
                FlameErrorCode.INVALID_CONFIG,
                f"loading the service file {path} in-process failed: {describe_exception(exc)}",
            ) from exc
    found: dict[int, tuple[str, FlameService]] = {}
    for key, value in namespace.items():
        if isinstance(value, FlameService) and id(value) not in found:
            found[id(value)] = (key, value)
    if len(found) != 1:
        names = ", ".join(key for key, _ in found.values())
        detail = f"{len(found)} FlameService objects ({names})" if found else "no FlameService object"
        raise FlameError(
            FlameErrorCode.INVALID_CONFIG,
            f"the service file {path} defines {detail} at module level; an in-process instance serves "
            f"exactly one (e.g. `ins = flamepy.service.FlameInstance()`): keep one service per file",
        )
    return next(iter(found.values()))[1]


def _apply_serializer(service: FlameService, env: dict[str, str]) -> None:
    """Give a FlameInstance that names no serializer the application's ``FLAME_SERIALIZER``.

    A process instance would read it from its environment; in-process, ``os.environ`` is the host's.
    Duck-typed so the core does not import the public ``flamepy`` package (arrows point one way).
    """
    name = env.get(_SERIALIZER_ENV, "").strip()
    if name and getattr(service, "_serializer_name", "") is None and getattr(service, "_serializer", "") is None:
        service._serializer_name = name  # type: ignore[attr-defined]
        service._serializer_origin = f"the application's environment {_SERIALIZER_ENV}"  # type: ignore[attr-defined]


class InProcessInstance:
    """A loaded service served on an in-process endpoint: an :class:`~flamepy_core.engine.executor.Instance`.

    It listens from the moment it exists; it is alive until :meth:`stop`. It has no process of its own:
    ``pid`` is the host's, and it writes no log files (its output is the host's).
    """

    ready_at_once = True
    ready_fd: int | None = None
    last_beat: float | None = None
    """No heartbeats: it is the server's own process."""
    pidfd: int | None = None

    def __init__(
        self, instance_id: str, app_name: str, path: Path, service: FlameService, server: Server, transport: Transport
    ) -> None:
        self.id = instance_id
        self.app_name = app_name
        self.path = path
        self.service: FlameService | None = service
        self.url = server.endpoint
        self.command = str(path)
        self.started = time.monotonic()
        self.ready_fd = None
        self.pidfd = None
        self._server = server
        self._transport = transport
        self._channel: Channel | None = None
        self._link_capabilities = transport.capabilities
        self._stopped = False

    @property
    def channel(self) -> Channel:
        if self._channel is None:
            raise FlameError(FlameErrorCode.UNAVAILABLE, f"in-process instance {self.id} is not connected")
        return self._channel

    def listening(self) -> LinkOption | None:
        return None

    def connect(self, option: LinkOption | None = None) -> Channel:
        if self._stopped:
            raise FlameError(FlameErrorCode.UNAVAILABLE, f"in-process instance {self.id} was stopped")
        if self._channel is None:
            self._channel = self._transport.connect(self.url)
        return self._channel

    def connect_if_listening(self) -> bool:
        if self._stopped:
            return False
        self.connect()
        return True

    @property
    def pid(self) -> int:
        return os.getpid()

    def alive(self) -> bool:
        return not self._stopped

    def wait_exit(self, timeout: float) -> bool:
        return self._stopped

    def describe_exit(self, wait: float = 1.0) -> str:
        state = "was stopped" if self._stopped else "stopped answering"
        return f"in-process instance {self.id} of application {self.app_name} ({self.path}) {state}"

    def stderr_tail(self, lines: int | None = None) -> str:
        return ""  # its output is the host's own stderr

    @property
    def link_capabilities(self) -> TransportCapabilities | None:
        return self._link_capabilities

    def read_ready(self) -> bool | None:
        return True  # no pipe: it listens from the start

    def close_ready(self) -> None:
        return None

    def terminate(self) -> None:
        self.stop(0.0)

    def kill(self) -> None:
        self.stop(0.0)

    def close_channel(self) -> None:
        if self._channel is not None:
            channel, self._channel = self._channel, None
            try:
                channel.close()
            except Exception:  # closing must never stop the shutdown
                log.debug("closing the channel of in-process instance %s failed", self.id, exc_info=True)

    def signal_group(self, sig: int) -> None:
        """No process to signal: any stop request stops serving at once."""
        self.stop(0.0)

    def cleanup(self) -> None:
        self.close_channel()

    def stop(self, grace: float) -> None:
        """Stop serving and drop the module; a running entrypoint finishes in its thread."""
        if self._stopped:
            return
        self._stopped = True
        self.close_channel()
        self._server.stop(grace=grace)
        # A FlameInstance with an async entrypoint keeps one event loop; a process would take it along.
        loop = getattr(self.service, "_loop", None)
        if isinstance(loop, asyncio.AbstractEventLoop) and not loop.is_running() and not loop.is_closed():
            loop.close()
        self.service = None


class InProcessLauncher:
    """Starts in-process instances: an :class:`~flamepy_core.engine.executor.InstanceLauncher`.

    ``transport`` must declare ``in_process``: the same object serves the instances and connects to them.
    ``prefix`` keeps the endpoint names of two servers sharing one transport apart.
    """

    def __init__(self, home: Path, transport: Transport, *, prefix: str = "") -> None:
        if not transport.capabilities.in_process:
            raise FlameError(
                FlameErrorCode.INVALID_CONFIG,
                f"in-process instances need a transport that declares the capability 'in_process', "
                f"got '{transport.name}'",
            )
        self.home = home
        self.transport = transport
        self.prefix = prefix or uuid.uuid4().hex[:8]
        # The server may set them as for processes; an in-process instance uses the host's environment
        # and reaches the cache through the host's own client configuration.
        self.extra_env: dict[str, str] = {}
        self.cache_endpoint = ""

    def start(self, app: pb.Application, instance_id: str, *, awaited: bool = True) -> InProcessInstance:
        name = app.metadata.name
        env = dict(os.environ)
        for item in app.spec.environments:
            env[item.name] = _expand(item.value, env)
        path = service_file(app, env)
        service = load_service(path)
        _apply_serializer(service, env)
        endpoint = local_endpoint(
            self.transport, self.home, f"flamepy-instance-{self.prefix}-{name}-{instance_id}-{uuid.uuid4().hex[:6]}"
        )
        server = self.transport.serve(endpoint, adapt_handlers(instance_handlers(service), self.transport.capabilities))
        log.info("started in-process instance %s of %s from %s on %s", instance_id, name, path, server.endpoint)
        return InProcessInstance(instance_id, name, path, service, server, self.transport)
