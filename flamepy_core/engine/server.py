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
import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from flamepy_core.config import RuntimeSettings
from flamepy_core.contracts.errors import FlameError, FlameErrorCode
from flamepy_core.contracts.transport import (
    CallContext,
    DeferredHandler,
    Handler,
    Responder,
    Server,
    StreamHandler,
    Transport,
    UnaryHandler,
)
from flamepy_core.engine.builtins import seed_builtin_applications
from flamepy_core.engine.executor import InstanceLink, Launcher
from flamepy_core.engine.frontend import cache_handlers, ext_handlers, frontend_handlers
from flamepy_core.engine.inprocess import INSTANCE_MODES, InProcessLauncher
from flamepy_core.engine.installer import AppInstaller, object_cache_reader
from flamepy_core.engine.integrity import check_store, store_damaged
from flamepy_core.engine.objects import ObjectCache
from flamepy_core.engine.scheduler import Scheduler
from flamepy_core.engine.state import Engine
from flamepy_core.engine.store import Store
from flamepy_core.flight import ENV_CACHE_PROTOCOL, PROTOCOL_FLAMEPY, PROTOCOL_FLIGHT
from flamepy_core.plugins import PluginRegistry, get_registry
from flamepy_core.privacy import (
    create_private_file,
    open_private,
    private_dir,
    private_subdir,
    private_umask,
    write_private_file,
)
from flamepy_core.transport_kit import adapt_handlers

log = logging.getLogger(__name__)

SERVER_FILE = "server.json"
STARTUP_ERROR_PREFIX = "flamepy server: "
"""How ``python -m flamepy_core.engine`` prints the error that stopped it from starting (one line, ending
with ``(code: N)``), so whoever started it can relay it rather than a traceback."""
LOCK_FILE = "server.lock"
DB_FILE = "flame.db"
MAX_UNIX_PATH = 100
SERVER_WORKERS = 512


DEFAULT_TRANSPORT = "zmq"
"""The local server's transport when none is configured: the fastest bundled one (see benchmarks/)."""

TLS_SCHEMES = ("https", "grpcs")
"""Listen endpoints served with TLS (by the gRPC transport)."""


@dataclass(frozen=True)
class ServerTls:
    """TLS of the server's endpoint (``https://`` or ``grpcs://``), as the gRPC transport's options.

    ``cert_file``/``key_file``: the server's certificate (chain) and private key, PEM. ``client_ca_file``:
    require every client to present a certificate signed by it (mutual TLS). ``ca_file``: the CA that
    verifies the server's certificate; instances get it as ``FLAME_CA_FILE`` so they reach the object
    cache, which is served on the same TLS endpoint (without it they inherit the server's own
    ``FLAME_CA_FILE``, if any). Under mutual TLS instances present ``FLAME_CLIENT_CERT_FILE`` and
    ``FLAME_CLIENT_KEY_FILE`` from the server's environment.
    """

    cert_file: str
    key_file: str
    client_ca_file: str | None = None
    ca_file: str | None = None

    def transport_options(self) -> dict[str, str]:
        options = {"cert_file": _abs(self.cert_file), "key_file": _abs(self.key_file)}
        if self.client_ca_file:
            options["client_ca_file"] = _abs(self.client_ca_file)
        return options


def _abs(path: str) -> str:
    return os.path.abspath(os.path.expanduser(path))


def is_tls_endpoint(endpoint: str) -> bool:
    return endpoint.partition("://")[0].lower() in TLS_SCHEMES


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
            elif isinstance(handler, DeferredHandler):
                wrapped[path] = DeferredHandler(self._deferred(handler))
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

    def _deferred(self, handler: DeferredHandler) -> Any:
        def call(data: bytes, ctx: CallContext, responder: Responder) -> None:
            self._enter()
            counted = _ExitOnReply(responder, self._exit)
            try:
                handler.fn(data, ctx, counted)
            except BaseException:
                counted.settled()
                raise

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


class _ExitOnReply:
    """A responder that tells the activity counter once, when the reply is completed (or given up)."""

    def __init__(self, responder: Responder, on_done: Callable[[], None]) -> None:
        self._responder = responder
        self._on_done: Callable[[], None] | None = on_done
        self._lock = threading.Lock()

    def settled(self) -> None:
        with self._lock:
            on_done, self._on_done = self._on_done, None
        if on_done is not None:
            on_done()

    def send(self, response: bytes) -> bool:
        try:
            return self._responder.send(response)
        finally:
            self.settled()

    def fail(self, error: BaseException) -> bool:
        try:
            return self._responder.fail(error)
        finally:
            self.settled()


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
        tls: ServerTls | None = None,
        instance_mode: str = "process",
        flight_listen: str | None = None,
        flight_for_instances: bool = False,
    ) -> None:
        if instance_mode not in INSTANCE_MODES:
            raise FlameError(
                FlameErrorCode.INVALID_CONFIG,
                f"unknown instance mode {instance_mode!r}; choose one of {', '.join(INSTANCE_MODES)}",
            )
        self.instance_mode = instance_mode
        self.home = Path(home)
        self.settings = settings or RuntimeSettings.from_env()
        self.registry = registry or get_registry()
        self.listen = listen or default_listen(self.home)
        self.instance_transport = instance_transport
        self.durability = durability
        self.publish = publish
        self.tls = tls
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
        # Flame's Flight cache protocol next to ours (optional extra); see _start_flight.
        if flight_for_instances and not flight_listen:
            raise FlameError(FlameErrorCode.INVALID_CONFIG, "flight_for_instances needs flight_listen")
        self.flight_listen = flight_listen
        self.flight_for_instances = flight_for_instances
        self.flight_server: Any = None
        self.flight_cache_endpoint = ""

    def start(self) -> FlameServer:
        home = self.home
        tls_options = self._tls_options()  # a TLS mismatch is refused before anything is taken
        private_subdir(private_dir(home) / "logs")  # FLAME_HOME and its files are private (privacy.py)
        if self.publish:
            self._take_lock()
        options = {"max_message_size": self.settings.max_message_size}
        # Watches and RunTask hold a server thread while they wait: give the frontend plenty.
        frontend_transport = self._frontend_transport or self.registry.transport(
            self.listen, **options, **tls_options, max_workers=SERVER_WORKERS
        )
        check_store(self.db_path, self.settings.store_check_timeout)  # a damaged store is refused, never served
        create_private_file(self.db_path)  # 0600 from the start; sqlite's -wal and -shm take its mode
        try:
            self.store = Store(self.db_path, durability=self.durability, retry_window=self.settings.store_retry_window)
            self.engine = Engine(
                self.store,
                task_retry_limit=self.settings.task_retry_limit,
                delay_release=int(self.settings.delay_release),
            )
        except sqlite3.DatabaseError as exc:  # damage the bounded check did not reach, found while loading
            raise store_damaged(self.db_path, str(exc)) from None
        # The cache endpoint must be known before the cache answers, and the frontend server needs the
        # cache handlers: build the cache with a placeholder, then fix its public endpoint once bound.
        self.cache = ObjectCache(self.store, endpoint="")
        seed_builtin_applications(self.engine)  # flmrun, flmexec, flmping on a fresh store
        handlers = self.activity.wrap(
            {**frontend_handlers(self.engine, self.cache), **ext_handlers(self.engine), **cache_handlers(self.cache)}
        )
        with private_umask():  # a socket file gets no mode when bound
            server = frontend_transport.serve(self.listen, adapt_handlers(handlers, frontend_transport.capabilities))
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
            with private_umask():
                cache_server = link_transport.serve(listen, adapt_handlers(handlers, link_transport.capabilities))
            self._servers.append(cache_server)
            self.cache_endpoint = cache_server.endpoint
        self.cache.endpoint = self.cache_endpoint
        if self._socket_dir is None:
            configured = os.environ.get("FLAME_SOCKET_DIR")
            if configured:
                self._socket_dir = private_dir(Path(configured), "FLAME_SOCKET_DIR")
            else:
                self._socket_dir = Path(tempfile.mkdtemp(prefix="flame-"))
                self._own_socket_dir = True
        self.launcher: Launcher
        if self.instance_mode == "inprocess":
            # The service file runs in this process, served on an in-memory endpoint (see engine.inprocess).
            inmem = frontend_transport if "inmem" in frontend_transport.schemes else self.registry.transport("inmem")
            self.launcher = InProcessLauncher(home, inmem)
        else:
            self.launcher = Launcher(
                home,
                InstanceLink(link_transport, self._socket_dir, fast=fast_transport),
                cache_endpoint=self.cache_endpoint,
                frontend_endpoint=self.endpoint,
                stderr_tail_lines=self.settings.stderr_tail_lines,
            )
        if isinstance(self.launcher, Launcher):  # packages and interpreters (installer: python)
            self.launcher.prepare = AppInstaller(home, object_cache_reader(self.cache)).prepare
        self._start_flight()
        if isinstance(self.launcher, Launcher):
            self.launcher.extra_env.update(self._instance_env())
        self.scheduler = Scheduler(self.engine, self.launcher, self.settings)
        for session_id in self.engine.pending_sessions():
            self.scheduler.tasks_pending(session_id)
        if self.publish:
            self._publish()
        log.info("flamepy server for %s listening on %s (cache %s)", home, self.endpoint, self.cache_endpoint)
        return self

    def _start_flight(self) -> None:
        """Serve Flame's Flight cache protocol over the same ObjectCache when ``flight_listen`` is set.

        Clients written for Flame's SDK use ``flight_cache_endpoint`` (published in server.json). Instances
        keep FLAME_CACHE_ENDPOINT on our own cache, whose protocol is faster to reach locally, unless
        ``flight_for_instances``: then they get the Flight endpoint with FLAME_CACHE_PROTOCOL=flight, which
        services written for Flame's SDK need. Either way the launcher states the protocol, so a
        FLAME_CACHE_PROTOCOL in the server's own environment never misleads an instance.
        """
        protocol = PROTOCOL_FLAMEPY
        if self.flight_listen:
            from flamepy_core.flight import require_pyarrow

            require_pyarrow("--flight-listen")
            from flamepy_core.flight.server import FlightCacheServer

            def touch() -> None:  # Flight calls count as activity for the idle exit
                self.activity._enter()
                self.activity._exit()

            self.flight_server = FlightCacheServer(self.cache, self.flight_listen, on_call=touch)
            self.flight_cache_endpoint = self.flight_server.endpoint
            if self.flight_for_instances:
                protocol = PROTOCOL_FLIGHT
                self.launcher.cache_endpoint = self.flight_cache_endpoint
        if self.instance_mode == "process" and (self.flight_listen or ENV_CACHE_PROTOCOL in os.environ):
            self.launcher.extra_env[ENV_CACHE_PROTOCOL] = protocol

    def _tls_options(self) -> dict[str, str]:
        """The frontend transport's TLS options; a TLS endpoint without a certificate (or the reverse) is refused."""
        tls_listen = is_tls_endpoint(self.listen)
        if self.tls is None:
            if tls_listen:
                raise FlameError(
                    FlameErrorCode.INVALID_CONFIG,
                    f"cannot serve {self.listen}: a TLS endpoint needs the server's certificate and private key "
                    f"(--tls-cert FILE --tls-key FILE)",
                )
            return {}
        if not tls_listen:
            raise FlameError(
                FlameErrorCode.INVALID_CONFIG,
                f"a TLS certificate was given but the listen endpoint {self.listen} is not TLS; listen on "
                f"https://HOST:PORT or grpcs://HOST:PORT",
            )
        return self.tls.transport_options()

    def _instance_env(self) -> dict[str, str]:
        """What instances need, beyond the server's environment, to reach the cache on a TLS endpoint."""
        if self.tls is None or not is_tls_endpoint(self.cache_endpoint):
            return {}
        env: dict[str, str] = {}
        if self.tls.ca_file:
            env["FLAME_CA_FILE"] = _abs(self.tls.ca_file)
        elif not os.environ.get("FLAME_CA_FILE"):
            log.warning(
                "instances will verify the object cache at %s with gRPC's default roots: pass the CA that signed "
                "the server's certificate (--tls-ca, or FLAME_CA_FILE in the server's environment)",
                self.cache_endpoint,
            )
        if self.tls.client_ca_file and not (
            os.environ.get("FLAME_CLIENT_CERT_FILE") and os.environ.get("FLAME_CLIENT_KEY_FILE")
        ):
            log.warning(
                "mutual TLS: instances present no client certificate, so they cannot reach the object cache at %s; "
                "set FLAME_CLIENT_CERT_FILE and FLAME_CLIENT_KEY_FILE in the server's environment",
                self.cache_endpoint,
            )
        return env

    def _optional_transport(self, name: str, options: dict[str, Any]) -> Transport | None:
        try:
            return self.registry.transport(name, **options)
        except FlameError as exc:
            log.warning("transport %s is not available for instances (%s); using gRPC only", name, exc.message)
            return None

    def _take_lock(self) -> None:
        # Held for the server's life.
        self._lock_file = os.fdopen(open_private(self.home / LOCK_FILE, os.O_RDWR | os.O_APPEND), "a+")
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
            "flight_cache_endpoint": self.flight_cache_endpoint or None,
            "home": str(self.home),
            "started_at": time.time(),
        }
        write_private_file(self.home / SERVER_FILE, json.dumps(info).encode())

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
        if self.flight_server is not None:
            self.flight_server.stop()
            self.flight_server = None
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
    with os.fdopen(open_private(path, os.O_RDWR | os.O_APPEND), "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fh, fcntl.LOCK_UN)
        return False
