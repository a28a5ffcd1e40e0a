"""The ZeroMQ transport (``zmq+tcp://``, ``zmq+ipc://``), declared once: the class carries its name, schemes,
capabilities and options, and the ``flamepy.transports`` entry point names it
(``flamepy_transports.zmq.plugin:ZmqTransport``). This module imports no pyzmq: listing the installed
plugins stays cheap, and pyzmq loads when a transport is built.

Options (keyword arguments; every one has a default):

``max_message_size``
    Largest payload in bytes, each way (default 256 MiB). Checked before sending and on receipt on both
    sides, each failure a ``MESSAGE_TOO_LARGE`` naming both sizes. libzmq's own ``ZMQ_MAXMSGSIZE`` is set
    with headroom above it (twice it, at least 64 MiB more), so a peer configured with a larger limit
    gets that error rather than a dropped connection; configure client and server alike all the same.
``default_timeout``
    Seconds a call may take when the caller gives no timeout (default 60; ``None`` = no deadline).
``connect_timeout``
    Seconds a call waits for a connection before failing with ``UNAVAILABLE`` when no connection
    attempt has failed outright yet (default 2). A refused connection fails calls at the next attempt.
``heartbeat_ivl_ms``, ``heartbeat_timeout_ms``
    ZMTP heartbeats (default 1000 / 3000 ms): a peer silent for ``ivl + timeout`` is dropped and the calls
    in flight to it fail with ``UNAVAILABLE``. ``heartbeat_timeout_ms`` is also sent as the TTL.
``sndhwm``, ``rcvhwm``
    High-water marks in messages per connection (default 1000). See the package docstring.
``max_workers``
    Handler threads of a server (default 32).
``max_pending_calls``
    A server's inbox: calls accepted and not finished (queued + running, default 1024). One more is
    answered at once with ``RESOURCE_EXHAUSTED``.
``curve_server_secret_key_file``, ``curve_client_public_keys_dir``, ``curve_client_public_key_files``
    Server side of CURVE: its ``.key_secret`` file and the allowed clients' ``.key`` files (a directory
    of them, a list of them, or both).
``curve_server_public_key_file``, ``curve_client_secret_key_file``
    Client side of CURVE: the server's ``.key`` and this client's ``.key_secret``.
``direct_calls``
    A call on an idle channel uses the socket from the caller's thread, saving the hand-off to the
    channel's I/O thread (and back, for a synchronous call) (default ``True``; see :mod:`.channel`).

Deferred replies and deferred streams are native (a ``DeferredHandler``'s or ``DeferredStreamHandler``'s
``fn`` runs on the server's I/O thread, and its responder or stream writer queues the reply or each
response from any thread: an open deferred stream holds no thread) and so is ``unary_async`` (the
channel's I/O thread completes the future and expires it at its deadline).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from flamepy_core.contracts.transport import Handler, SecuritySetting, TransportCapabilities, TransportSecurity
from flamepy_core.transport_kit import DEFAULT_CALL_TIMEOUT
from flamepy_transports.zmq.defaults import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_HEARTBEAT_IVL_MS,
    DEFAULT_HEARTBEAT_TIMEOUT_MS,
    DEFAULT_HWM,
    DEFAULT_MAX_MESSAGE_SIZE,
    DEFAULT_MAX_PENDING_CALLS,
    DEFAULT_MAX_WORKERS,
    IPC,
    IPC_PATH_MAX,
    NAME,
    SCHEMES,
    TCP,
)

if TYPE_CHECKING:
    from flamepy_transports.zmq.channel import ZmqChannel
    from flamepy_transports.zmq.config import ZmqConfig
    from flamepy_transports.zmq.server import ZmqServer

CURVE = TransportSecurity(
    mechanism="CURVE",
    settings=(
        SecuritySetting(
            "curve_server_secret_key_file",
            "server",
            env="FLAME_CURVE_SECRET_KEY",
            flag="--curve-secret-key",
            required=True,
            help="the server's CURVE key pair (a '.key_secret' file, e.g. from `flmctl keygen`); only allowed "
            "client keys are admitted",
        ),
        SecuritySetting(
            "curve_client_public_keys_dir",
            "server",
            env="FLAME_CURVE_CLIENT_KEYS",
            flag="--curve-client-keys",
            help="a directory of the public keys ('.key' files) of the clients to admit",
        ),
        SecuritySetting(
            "curve_server_public_key_file",
            "client",
            env="FLAME_CURVE_SERVER_KEY",
            config_key="security.curve_server_key",
            pair="curve_client_secret_key_file",
            help="a CURVE client needs the server's public key ('.key') and its own key pair ('.key_secret')",
        ),
        SecuritySetting(
            "curve_client_secret_key_file",
            "client",
            env="FLAME_CURVE_CLIENT_KEY",
            config_key="security.curve_client_key",
            pair="curve_server_public_key_file",
            help="a CURVE client needs its own key pair ('.key_secret') and the server's public key ('.key')",
        ),
    ),
)
"""CURVE: the server admits only the configured client keys (the ZAP handler in :mod:`.auth`)."""

INSTANCE_KEY = "instances"
"""Name of the key pair a CURVE server makes for its own instances (in its private directory)."""


class ZmqTransport:
    """ZeroMQ DEALER/ROUTER transport for ``zmq+tcp://`` and ``zmq+ipc://`` (options: see the module)."""

    name: ClassVar[str] = NAME
    schemes: ClassVar[tuple[str, ...]] = SCHEMES
    capabilities: TransportCapabilities = TransportCapabilities(
        max_message_size=DEFAULT_MAX_MESSAGE_SIZE,
        streaming=True,
        cross_process=True,
        tls=False,
        auth=True,
        restart_same_endpoint=True,
        deferred_replies=True,
        deferred_streams=True,
        async_calls=True,
        async_streams=True,
        local_schemes=(IPC,),
        local_default_rank=20,
        security=CURVE,
    )
    options: ClassVar[frozenset[str]] = frozenset(
        {
            "max_message_size",
            "default_timeout",
            "connect_timeout",
            "heartbeat_ivl_ms",
            "heartbeat_timeout_ms",
            "sndhwm",
            "rcvhwm",
            "max_workers",
            "max_pending_calls",
            "curve_server_secret_key_file",
            "curve_client_public_keys_dir",
            "curve_client_public_key_files",
            "curve_server_public_key_file",
            "curve_client_secret_key_file",
            "direct_calls",
        }
    )
    serve_modules: ClassVar[tuple[str, ...]] = (
        "flamepy_transports.zmq.config",
        "flamepy_transports.zmq.endpoints",
        "flamepy_transports.zmq.server",
    )
    """What building and serving imports: a process about to serve may import them ahead (the runtime's
    generic instance process does, before it knows its application)."""
    requires: ClassVar[tuple[str, ...]] = ("pyzmq",)
    description: ClassVar[str] = "ZeroMQ DEALER/ROUTER over tcp or unix sockets; heartbeats, backpressure, CURVE auth"

    def __init__(
        self,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        default_timeout: float | None = DEFAULT_CALL_TIMEOUT,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        heartbeat_ivl_ms: int = DEFAULT_HEARTBEAT_IVL_MS,
        heartbeat_timeout_ms: int = DEFAULT_HEARTBEAT_TIMEOUT_MS,
        sndhwm: int = DEFAULT_HWM,
        rcvhwm: int = DEFAULT_HWM,
        max_workers: int = DEFAULT_MAX_WORKERS,
        max_pending_calls: int = DEFAULT_MAX_PENDING_CALLS,
        curve_server_secret_key_file: str | None = None,
        curve_client_public_keys_dir: str | None = None,
        curve_client_public_key_files: Sequence[str] | None = None,
        curve_server_public_key_file: str | None = None,
        curve_client_secret_key_file: str | None = None,
        direct_calls: bool = True,
    ) -> None:
        from flamepy_transports.zmq.config import build_config  # pyzmq: when a transport is built

        self.config: ZmqConfig = build_config(
            max_message_size=max_message_size,
            default_timeout=default_timeout,
            connect_timeout=connect_timeout,
            heartbeat_ivl_ms=heartbeat_ivl_ms,
            heartbeat_timeout_ms=heartbeat_timeout_ms,
            sndhwm=sndhwm,
            rcvhwm=rcvhwm,
            max_workers=max_workers,
            max_pending_calls=max_pending_calls,
            curve_server_secret_key_file=curve_server_secret_key_file,
            curve_client_public_keys_dir=curve_client_public_keys_dir,
            curve_client_public_key_files=curve_client_public_key_files,
            curve_server_public_key_file=curve_server_public_key_file,
            curve_client_secret_key_file=curve_client_secret_key_file,
            direct_calls=direct_calls,
        )
        self.capabilities = dataclasses.replace(type(self).capabilities, max_message_size=self.config.max_message_size)

    @property
    def liveness_bound(self) -> float:
        """Seconds within which a silently vanished peer is noticed (heartbeat interval + timeout)."""
        return self.config.liveness_bound

    def connect(self, endpoint: str) -> ZmqChannel:
        from flamepy_transports.zmq import endpoints
        from flamepy_transports.zmq.channel import ZmqChannel

        return ZmqChannel(endpoints.parse(endpoint, serving=False), self.config)

    def serve(self, endpoint: str, handlers: Mapping[str, Handler]) -> ZmqServer:
        from flamepy_transports.zmq import endpoints
        from flamepy_transports.zmq.server import ZmqServer

        return ZmqServer(endpoints.parse(endpoint, serving=True), handlers, self.config)

    def local_endpoint(self, directory: str, name: str) -> str:
        """``zmq+ipc://<directory>/<name>.ipc``; a free loopback port when that path is too long for a socket."""
        path = os.path.join(directory, f"{name}.ipc")
        if len(path.encode()) > IPC_PATH_MAX:
            return f"{TCP}://127.0.0.1:0"
        return f"{IPC}://{path}"

    def instance_credentials(
        self, server_options: Mapping[str, Any], directory: str
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """A key pair for the server's own instances, admitted next to the configured clients.

        The pair is made once in ``directory`` (private to the server) and reused by later servers of the
        same home; instances get the server's public key and this pair through ``FLAME_CURVE_SERVER_KEY``
        and ``FLAME_CURVE_CLIENT_KEY``.
        """
        from flamepy_transports.zmq.auth import make_key_pair, public_key_file

        secret = server_options.get("curve_server_secret_key_file")
        if not secret:
            return dict(server_options), {}
        public, instance_secret = make_key_pair(directory, INSTANCE_KEY, reuse=True)
        admitted = dict(server_options)
        admitted["curve_client_public_key_files"] = [*server_options.get("curve_client_public_key_files", ()), public]
        client = {
            "curve_server_public_key_file": public_key_file(str(secret), directory),
            "curve_client_secret_key_file": instance_secret,
        }
        return admitted, client

    def make_key_pair(self, directory: str, name: str) -> tuple[str, str]:
        """Write a new CURVE key pair ``<name>.key`` (public) and ``<name>.key_secret`` (private, 0600)."""
        from flamepy_transports.zmq.auth import make_key_pair

        return make_key_pair(directory, name, reuse=False)
