"""The flamepy server: engine + object cache + scheduler behind one endpoint, on any transport.

One server per ``FLAME_HOME``: it holds an exclusive lock on ``FLAME_HOME/server.lock`` for its whole
life and publishes where it listens in ``FLAME_HOME/server.json`` (both in :mod:`flamepy_core.home`).
Clients find it there, and start one when there is none (see :mod:`flamepy_core.client.local`). With
``idle_exit`` set it exits after that many seconds without a call and without a running task.
"""

from __future__ import annotations

import itertools
import logging
import os
import shutil
import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from flamepy_core.config import RuntimeSettings
from flamepy_core.contracts.errors import FlameError, FlameErrorCode
from flamepy_core.contracts.transport import (
    CallContext,
    DeferredHandler,
    DeferredStreamHandler,
    Handler,
    ReplyPart,
    Responder,
    SecureTransport,
    Server,
    StreamHandler,
    StreamWriter,
    Transport,
    UnaryHandler,
)
from flamepy_core.engine.builtins import seed_builtin_applications
from flamepy_core.engine.choice import (
    accepted_options,
    default_listen,
    in_process_transport,
    instance_link_choice,
    instance_link_transports,
    local_endpoint,
)
from flamepy_core.engine.executor import GenericSlot, InstanceLauncher, InstanceLink, Launcher, client_env
from flamepy_core.engine.frontend import cache_handlers, ext_handlers, frontend_handlers, maintenance_handlers
from flamepy_core.engine.inprocess import INSTANCE_MODES, InProcessLauncher
from flamepy_core.engine.installer import AppInstaller, object_cache_reader
from flamepy_core.engine.integrity import check_store, seal_store, store_damaged
from flamepy_core.engine.lanes import DIRECTORY_SUFFIX as LANES_SUFFIX
from flamepy_core.engine.lanes import LaneBook
from flamepy_core.engine.objects import ObjectCache
from flamepy_core.engine.retention import Retention
from flamepy_core.engine.scheduler import Scheduler
from flamepy_core.engine.security import check_listen
from flamepy_core.engine.state import Engine
from flamepy_core.engine.store import Store
from flamepy_core.home import (
    DB_FILE,
    publish_server_info,
    take_server_lock,
    withdraw_server_info,
)
from flamepy_core.plugins import PluginRegistry, get_registry
from flamepy_core.privacy import create_private_file, private_dir, private_subdir, private_umask
from flamepy_core.transport_kit import adapt_handlers, borrows_request, request_borrowed
from flamepy_core.transport_kit import send_parts as send_reply_parts
from flamepy_core.wire.flight import ENV_CACHE_PROTOCOL, PROTOCOL_FLAMEPY, PROTOCOL_FLIGHT

log = logging.getLogger(__name__)

SERVER_WORKERS = 512
SERVER_PENDING_CALLS = 16384
"""Calls the frontend holds at once (a transport's inbox bound, ZeroMQ's ``max_pending_calls``, 1024 by
default). An open watch is a call in flight that holds no thread but one slot, and every session using
``run()`` keeps one open: at the transport's default, a thousand watched sessions made the server refuse
every other call. A slot of an open watch costs a few KB."""
PRIVATE_DIR = "private"
"""Inside FLAME_HOME: credentials the server makes for its own instances (mode 0700)."""


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
            elif isinstance(handler, DeferredStreamHandler):
                wrapped[path] = DeferredStreamHandler(self._deferred_stream(handler))
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

        # It passes the request on as it gets it, while it runs: it borrows it if the handler does.
        return borrows_request(call) if request_borrowed(handler.fn) else call

    def _deferred_stream(self, handler: DeferredStreamHandler) -> Any:
        def call(data: bytes, ctx: CallContext, writer: StreamWriter) -> None:
            self._enter()
            counted = _ExitOnEnd(writer, self._exit)
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


class _Once:
    """Calls ``on_done`` once, on the first :meth:`settled` (the activity counter's exit for one call).

    Once without a lock: the first ``next`` of a counter is 0 for one caller only (one C call, atomic under
    the GIL). One of these is made for every deferred call (each warm invoke's RunTask), and a lock of its
    own cost an allocation and two calls more."""

    __slots__ = ("_on_done", "_turns")

    def __init__(self, on_done: Callable[[], None]) -> None:
        self._on_done = on_done
        self._turns = itertools.count()

    def settled(self) -> None:
        if next(self._turns) == 0:
            self._on_done()


class _ExitOnReply(_Once):
    """A responder that tells the activity counter once, when the reply is completed (or given up)."""

    __slots__ = ("_responder",)

    def __init__(self, responder: Responder, on_done: Callable[[], None]) -> None:
        super().__init__(on_done)
        self._responder = responder

    def send(self, response: bytes) -> bool:
        try:
            return self._responder.send(response)
        finally:
            self.settled()

    def send_parts(self, parts: Sequence[ReplyPart]) -> bool:
        """As :meth:`send`, the reply's parts passed on as they are (``kit.send_parts``)."""
        try:
            return send_reply_parts(self._responder, parts)
        finally:
            self.settled()

    def fail(self, error: BaseException) -> bool:
        try:
            return self._responder.fail(error)
        finally:
            self.settled()


class _ExitOnEnd(_Once):
    """A stream writer that tells the activity counter once, when the stream ends (or is given up)."""

    __slots__ = ("_writer",)

    def __init__(self, writer: StreamWriter, on_done: Callable[[], None]) -> None:
        super().__init__(on_done)
        self._writer = writer

    def send(self, response: bytes) -> bool:
        taken = self._writer.send(response)
        if not taken:  # the stream ended under us (its caller went away)
            self.settled()
        return taken

    def close(self) -> bool:
        try:
            return self._writer.close()
        finally:
            self.settled()

    def fail(self, error: BaseException) -> bool:
        try:
            return self._writer.fail(error)
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
        transport: str | None = None,
        instance_transport: str | None = None,
        durability: str = "batched",
        publish: bool = True,
        frontend_transport: Transport | None = None,
        db_path: Path | None = None,
        security: Mapping[str, tuple[str, str]] | None = None,
        insecure: bool = False,
        instance_mode: str = "process",
        flight_listen: str | None = None,
        flight_for_instances: bool = False,
    ) -> None:
        """``transport`` names the runtime's transport (default: the local default) for the default
        ``listen`` endpoint and the instance links; ``instance_transport`` is ``auto`` or a transport name
        for instance links, when they are to be another (:func:`~flamepy_core.engine.choice.instance_link_choice`).
        ``security`` maps a flag (or variable) to ``(option, value)`` of the listen transport's declared
        server settings (see :func:`flamepy_core.engine.security.security_from_args`); ``insecure`` allows a
        network listen without them, with a warning."""
        if instance_mode not in INSTANCE_MODES:
            raise FlameError(
                FlameErrorCode.INVALID_CONFIG,
                f"unknown instance mode {instance_mode!r}; choose one of {', '.join(INSTANCE_MODES)}",
            )
        self.instance_mode = instance_mode
        self.home = Path(home)
        self.settings = settings or RuntimeSettings.from_env()
        self.registry = registry or get_registry()
        self.listen = listen or default_listen(self.home, transport, self.registry)
        self.instance_transport = instance_link_choice(self.registry, transport, instance_transport)
        self.durability = durability
        self.publish = publish
        self.security = dict(security or {})
        self.insecure = insecure
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
        self.transport_name = ""
        # Flame's Flight cache protocol next to ours (optional extra); see _start_flight.
        if flight_for_instances and not flight_listen:
            raise FlameError(FlameErrorCode.INVALID_CONFIG, "flight_for_instances needs flight_listen")
        self.flight_listen = flight_listen
        self.flight_for_instances = flight_for_instances
        self.flight_server: Any = None
        self._store_sound = False
        """The start found the store sound (see engine.integrity): a clean stop seals it."""
        self.flight_cache_endpoint = ""

    def start(self) -> FlameServer:
        home = self.home
        reg = self.registry
        chosen = reg.transport_spec_for_endpoint(self.listen)
        # Refused before anything is taken: security that does not fit, an exposed listen without it.
        security_options = check_listen(self.listen, chosen, self.security, self.insecure)
        private_subdir(private_dir(home) / "logs")  # FLAME_HOME and its files are private (privacy.py)
        if self.publish:
            self._take_lock()
        limits = {"max_message_size": self.settings.max_message_size}
        instance_client_options: dict[str, Any] = {}
        frontend_transport = self._frontend_transport
        if frontend_transport is None:
            # Calls that block hold a worker; open watches hold a slot of the inbox: room for both.
            runtime_options = {**limits, "max_workers": SERVER_WORKERS, "max_pending_calls": SERVER_PENDING_CALLS}
            options = {**accepted_options(chosen, runtime_options), **security_options}
            frontend_transport = reg.create_transport(chosen, options)
            if security_options and isinstance(frontend_transport, SecureTransport):
                # Admit the instances this server starts: they reach the cache on the same endpoint.
                admitted, instance_client_options = frontend_transport.instance_credentials(
                    security_options, str(self._private_dir())
                )
                frontend_transport = reg.create_transport(chosen, {**options, **admitted})
        self.transport_name = frontend_transport.name
        # A damaged store is refused, never served; one found sound is sealed again at a clean stop.
        sound = check_store(self.db_path, self.settings.store_check_timeout)
        create_private_file(self.db_path)  # 0600 from the start; sqlite's -wal and -shm take its mode
        try:
            self.store = Store(
                self.db_path,
                durability=self.durability,
                retry_window=self.settings.store_retry_window,
                ahead_log=True,  # (in "batched" mode: a commit on an answer's path is one append; see Store)
            )
            self.engine = Engine(
                self.store,
                task_retry_limit=self.settings.task_retry_limit,
                delay_release=int(self.settings.delay_release),
            )
        except sqlite3.DatabaseError as exc:  # damage the bounded check did not reach, found while loading
            raise store_damaged(self.db_path, str(exc)) from None
        self._store_sound = sound
        # Lanes (engine.lanes): what clients' lanes ran while this store was last open is recorded first.
        self.lanes = self.engine.lanes = LaneBook(
            self.engine, Path(f"{self.db_path}{LANES_SUFFIX}"), lends=self.durability != "strict"
        )
        self.lanes.recover()
        self.lanes.start()
        self.retention = Retention(self.store, self.settings.payload_retention)
        self.retention.start()  # purges and compacts in the background from now on
        # The cache endpoint must be known before the cache answers, and the frontend server needs the
        # cache handlers: build the cache with a placeholder, then fix its public endpoint once bound.
        self.cache = ObjectCache(self.store, endpoint="")
        seed_builtin_applications(self.engine)  # flmrun, flmexec, flmping on a fresh store
        handlers = self.activity.wrap(
            {
                **frontend_handlers(self.engine, self.cache, on_freed=self.retention.wake),
                **ext_handlers(self.engine, on_freed=self.retention.wake),
                **maintenance_handlers(self.retention),
                **cache_handlers(self.cache),
            }
        )
        with private_umask():  # a socket file gets no mode when bound
            server = frontend_transport.serve(self.listen, adapt_handlers(handlers, frontend_transport.capabilities))
        self._servers.append(server)
        self.endpoint = server.endpoint
        compat, fast = instance_link_transports(reg, self.instance_transport, limits)
        if frontend_transport.capabilities.cross_process:
            self.cache_endpoint = self.endpoint
        else:
            # An in-process frontend: instances (separate processes) reach the cache over the link.
            self._socket_dir = Path(tempfile.mkdtemp(prefix="flame-"))
            self._own_socket_dir = True
            link = fast or compat
            assert link is not None
            listen = local_endpoint(link, self._socket_dir, "cache")
            with private_umask():
                cache_server = link.serve(listen, adapt_handlers(handlers, link.capabilities))
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
        self.launcher: InstanceLauncher
        if self.instance_mode == "inprocess":
            # The service file runs in this process, served on an in-process endpoint (see engine.inprocess).
            self.launcher = InProcessLauncher(home, in_process_transport(reg, frontend_transport))
        else:
            assert compat is not None
            self.launcher = Launcher(
                home,
                InstanceLink(compat, self._socket_dir, fast=fast),
                cache_endpoint=self.cache_endpoint,
                frontend_endpoint=self.endpoint,
                stderr_tail_lines=self.settings.stderr_tail_lines,
                heartbeat_interval=self.settings.heartbeat_interval,
                registry=reg,
            )
            self.launcher.extra_env.update(client_env(chosen, instance_client_options))
        if isinstance(self.launcher, Launcher):  # packages and interpreters (installer: python)
            self.launcher.prepare = AppInstaller(home, object_cache_reader(self.cache)).prepare
        self._start_flight()
        generic = None
        if isinstance(self.launcher, Launcher) and self.settings.generic_instance:
            generic = self.launcher.generic = GenericSlot(self.launcher)
        self.scheduler = Scheduler(self.engine, self.launcher, self.settings, generic)
        for session_id in self.engine.pending_sessions():
            self.scheduler.tasks_pending(session_id)
        if self.publish:
            self._publish()
        log.info(
            "flamepy server for %s listening on %s with transport %s (cache %s)",
            home,
            self.endpoint,
            self.transport_name,
            self.cache_endpoint,
        )
        return self

    def _private_dir(self) -> Path:
        return private_subdir(self.home / PRIVATE_DIR)

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
            from flamepy_core.wire.flight import require_pyarrow

            require_pyarrow("--flight-listen")
            from flamepy_core.engine.flight import FlightCacheServer

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

    def _take_lock(self) -> None:
        self._lock_file = take_server_lock(self.home)

    def _publish(self) -> None:
        publish_server_info(
            self.home,
            {
                "pid": os.getpid(),
                "endpoint": self.endpoint,
                "transport": self.transport_name,
                "cache_endpoint": self.cache_endpoint,
                "flight_cache_endpoint": self.flight_cache_endpoint or None,
                "home": str(self.home),
                "started_at": time.time(),
            },
        )

    def serve_forever(self, idle_exit: float | None = None) -> None:
        """Block until :meth:`stop` is called, or until idle for ``idle_exit`` seconds (0/None = never)."""
        while not self._stopped.wait(timeout=0.5):
            if idle_exit and self.activity.idle_for() > idle_exit and not self._busy():
                log.info("idle for %.0f s: exiting", idle_exit)
                break
        self.stop()

    def _busy(self) -> bool:
        # A lane lent is in use as far as the server knows (a client sends it tasks without a call here);
        # its instance leaves it after its application's delay_release without news, and the lane with it.
        lanes = getattr(self, "lanes", None)
        return any(s.status.running for s in self.engine.list_sessions()) or (lanes is not None and lanes.lent())

    def stop(self) -> None:
        if self._stopped.is_set() and not self._servers:
            return
        self._stopped.set()
        if self.publish:
            withdraw_server_info(self.home, os.getpid())
        scheduler = getattr(self, "scheduler", None)
        if scheduler is not None:
            scheduler.shutdown(timeout=self.settings.shutdown_grace + 5)
        for server in self._servers:
            server.stop(grace=1.0)
        self._servers.clear()
        if self.flight_server is not None:
            self.flight_server.stop()
            self.flight_server = None
        retention = getattr(self, "retention", None)
        if retention is not None:
            retention.stop()
        lanes = getattr(self, "lanes", None)
        if lanes is not None:
            lanes.close()
        store = getattr(self, "store", None)
        if store is not None and store.close() and self._store_sound:
            seal_store(self.db_path)  # the next start need not read it again (see engine.integrity)
        if self._socket_dir is not None and self._own_socket_dir:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None
