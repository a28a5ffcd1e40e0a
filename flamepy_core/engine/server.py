"""The flamepy server: engine + object cache + scheduler behind one endpoint, on any transport.

One server per ``FLAME_HOME``: it holds an exclusive lock on ``FLAME_HOME/server.lock`` for its whole
life and publishes where it listens in ``FLAME_HOME/server.json``. Clients find it there, and start one
when there is none (see :mod:`flamepy_core.client.local`). With ``idle_exit`` set it exits after that
many seconds without a call and without a running task.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from flamepy_core.config import RuntimeSettings
from flamepy_core.contracts.errors import FlameError, FlameErrorCode
from flamepy_core.contracts.transport import CallContext, Handler, Server, StreamHandler, Transport, UnaryHandler
from flamepy_core.engine.executor import InstanceLink, Launcher
from flamepy_core.engine.frontend import cache_handlers, ext_handlers, frontend_handlers
from flamepy_core.engine.objects import ObjectCache
from flamepy_core.engine.scheduler import Scheduler
from flamepy_core.engine.state import Engine
from flamepy_core.engine.store import Store
from flamepy_core.plugins import PluginRegistry, get_registry

log = logging.getLogger(__name__)

SERVER_FILE = "server.json"
LOCK_FILE = "server.lock"
DB_FILE = "flame.db"
MAX_UNIX_PATH = 100
SERVER_WORKERS = 512


DEFAULT_TRANSPORT = "zmq"
"""The local server's transport when none is configured: the fastest bundled one (see benchmarks/)."""


def default_listen(home: Path, transport: str | None = None) -> str:
    """Where the embedded server listens: a socket in FLAME_HOME when the path is short enough."""
    if (transport or DEFAULT_TRANSPORT) == "zmq":
        path = home / "flame.ipc"
        return f"zmq+ipc://{path}" if len(str(path)) < MAX_UNIX_PATH else "zmq+tcp://127.0.0.1:0"
    path = home / "flame.sock"
    return f"unix://{path}" if len(str(path)) < MAX_UNIX_PATH else "grpc://127.0.0.1:0"


class _Activity:
    """Counts calls in flight and remembers the last one, for the idle exit."""

    def __init__(self) -> None:
        self.last = time.monotonic()
        self.in_flight = 0
        self._lock = threading.Lock()

    def wrap(self, handlers: Mapping[str, Handler]) -> dict[str, Handler]:
        wrapped: dict[str, Handler] = {}
        for path, handler in handlers.items():
            if isinstance(handler, UnaryHandler):
                wrapped[path] = UnaryHandler(self._unary(handler))
            else:
                wrapped[path] = StreamHandler(self._stream(handler))
        return wrapped

    def _enter(self) -> None:
        with self._lock:
            self.in_flight += 1
            self.last = time.monotonic()

    def _exit(self) -> None:
        with self._lock:
            self.in_flight -= 1
            self.last = time.monotonic()

    def _unary(self, handler: UnaryHandler) -> Any:
        def call(data: bytes, ctx: CallContext) -> bytes:
            self._enter()
            try:
                return handler.fn(data, ctx)
            finally:
                self._exit()

        return call

    def _stream(self, handler: StreamHandler) -> Any:
        def call(data: bytes, ctx: CallContext) -> Any:
            self._enter()
            try:
                yield from handler.fn(data, ctx)
            finally:
                self._exit()

        return call

    def idle_for(self) -> float:
        with self._lock:
            return 0.0 if self.in_flight else time.monotonic() - self.last


class FlameServer:
    """Assembles and runs the runtime for one FLAME_HOME."""

    def __init__(
        self,
        home: Path,
        listen: str | None = None,
        *,
        settings: RuntimeSettings | None = None,
        registry: PluginRegistry | None = None,
        instance_transport: str | None = None,
        durability: str = "batched",
        publish: bool = True,
        frontend_transport: Transport | None = None,
        db_path: Path | None = None,
    ) -> None:
        self.home = Path(home)
        self.settings = settings or RuntimeSettings.from_env()
        self.registry = registry or get_registry()
        self.listen = listen or default_listen(self.home)
        self.instance_transport = instance_transport
        self.durability = durability
        self.publish = publish
        self._frontend_transport = frontend_transport
        self.db_path = db_path or self.home / DB_FILE
        self.activity = _Activity()
        self._servers: list[Server] = []
        self._lock_file: IO[str] | None = None
        self._socket_dir: Path | None = None
        self._own_socket_dir = False
        self._stopped = threading.Event()
        self.endpoint = ""
        self.cache_endpoint = ""

    def start(self) -> FlameServer:
        home = self.home
        (home / "logs").mkdir(parents=True, exist_ok=True)
        if self.publish:
            self._take_lock()
        options = {"max_message_size": self.settings.max_message_size}
        # Watches and RunTask hold a server thread while they wait: give the frontend plenty.
        frontend_transport = self._frontend_transport or self.registry.transport(
            self.listen, **options, max_workers=SERVER_WORKERS
        )
        self.store = Store(self.db_path, durability=self.durability)
        self.engine = Engine(
            self.store,
            task_retry_limit=self.settings.task_retry_limit,
            delay_release=int(self.settings.delay_release),
        )
        # The cache endpoint must be known before the cache answers, and the frontend server needs the
        # cache handlers: build the cache with a placeholder, then fix its public endpoint once bound.
        self.cache = ObjectCache(self.store, endpoint="")
        handlers = self.activity.wrap(
            {**frontend_handlers(self.engine, self.cache), **ext_handlers(self.engine), **cache_handlers(self.cache)}
        )
        server = frontend_transport.serve(self.listen, handlers)
        self._servers.append(server)
        self.endpoint = server.endpoint
        link = self.instance_transport or "auto"
        if link == "auto":
            # gRPC behind FLAME_INSTANCE_ENDPOINT for services written for Flame; ZeroMQ offered to ours.
            link_transport = self.registry.transport("grpc", **options)
            fast_transport = self._optional_transport("zmq", options)
        else:
            link_transport = self.registry.transport(link, **options)
            fast_transport = None
        if frontend_transport.capabilities.cross_process:
            self.cache_endpoint = self.endpoint
        else:
            # An in-process frontend: instances (separate processes) reach the cache over the link.
            self._socket_dir = Path(tempfile.mkdtemp(prefix="flame-"))
            self._own_socket_dir = True
            listen = (
                f"unix://{self._socket_dir}/cache.sock"
                if "unix" in link_transport.schemes
                else f"zmq+ipc://{self._socket_dir}/cache.ipc"
            )
            cache_server = link_transport.serve(listen, handlers)
            self._servers.append(cache_server)
            self.cache_endpoint = cache_server.endpoint
        self.cache.endpoint = self.cache_endpoint
        if self._socket_dir is None:
            configured = os.environ.get("FLAME_SOCKET_DIR")
            if configured:
                self._socket_dir = Path(configured)
                self._socket_dir.mkdir(parents=True, exist_ok=True)
            else:
                self._socket_dir = Path(tempfile.mkdtemp(prefix="flame-"))
                self._own_socket_dir = True
        self.launcher = Launcher(
            home,
            InstanceLink(link_transport, self._socket_dir, fast=fast_transport),
            cache_endpoint=self.cache_endpoint,
            frontend_endpoint=self.endpoint,
            stderr_tail_lines=self.settings.stderr_tail_lines,
        )
        self.scheduler = Scheduler(self.engine, self.launcher, self.settings)
        for session_id in self.engine.pending_sessions():
            self.scheduler.tasks_pending(session_id)
        if self.publish:
            self._publish()
        log.info("flamepy server for %s listening on %s (cache %s)", home, self.endpoint, self.cache_endpoint)
        return self

    def _optional_transport(self, name: str, options: dict[str, Any]) -> Transport | None:
        try:
            return self.registry.transport(name, **options)
        except FlameError as exc:
            log.warning("transport %s is not available for instances (%s); using gRPC only", name, exc.message)
            return None

    def _take_lock(self) -> None:
        self._lock_file = open(self.home / LOCK_FILE, "a+")  # noqa: SIM115 - held for the server's life
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            self._lock_file = None
            info = read_server_info(self.home)
            where = f" (pid {info.get('pid')}, {info.get('endpoint')})" if info else ""
            raise FlameError(
                FlameErrorCode.ALREADY_EXISTS,
                f"another flamepy server is already running for {self.home}{where}; "
                f"use it, or stop it with `flmctl server stop`",
            ) from None

    def _publish(self) -> None:
        info = {
            "pid": os.getpid(),
            "endpoint": self.endpoint,
            "cache_endpoint": self.cache_endpoint,
            "home": str(self.home),
            "started_at": time.time(),
        }
        tmp = self.home / f".{SERVER_FILE}.{os.getpid()}"
        tmp.write_text(json.dumps(info))
        os.replace(tmp, self.home / SERVER_FILE)

    def serve_forever(self, idle_exit: float | None = None) -> None:
        """Block until :meth:`stop` is called, or until idle for ``idle_exit`` seconds (0/None = never)."""
        while not self._stopped.wait(timeout=0.5):
            if idle_exit and self.activity.idle_for() > idle_exit and not self._busy():
                log.info("idle for %.0f s: exiting", idle_exit)
                break
        self.stop()

    def _busy(self) -> bool:
        return any(s.status.running for s in self.engine.list_sessions())

    def stop(self) -> None:
        if self._stopped.is_set() and not self._servers:
            return
        self._stopped.set()
        if self.publish:
            try:
                info = read_server_info(self.home)
                if info and info.get("pid") == os.getpid():
                    (self.home / SERVER_FILE).unlink()
            except FileNotFoundError:
                pass
        scheduler = getattr(self, "scheduler", None)
        if scheduler is not None:
            scheduler.shutdown(timeout=self.settings.shutdown_grace + 5)
        for server in self._servers:
            server.stop(grace=1.0)
        self._servers.clear()
        store = getattr(self, "store", None)
        if store is not None:
            store.close()
        if self._socket_dir is not None and self._own_socket_dir:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None


def read_server_info(home: Path) -> dict[str, Any] | None:
    """What ``FLAME_HOME/server.json`` says, or None."""
    try:
        data = json.loads((Path(home) / SERVER_FILE).read_text())
    except (FileNotFoundError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def server_lock_held(home: Path) -> bool:
    """True when a server process holds FLAME_HOME's lock (so it is alive)."""
    path = Path(home) / LOCK_FILE
    if not path.exists():
        return False
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fh, fcntl.LOCK_UN)
        return False
