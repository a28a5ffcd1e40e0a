"""Declares the ZeroMQ transport (``zmq+tcp://``, ``zmq+ipc://``). Light: zmq is imported only in ``load``.

Options (keyword arguments of the transport; every one has a default):

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
"""

from __future__ import annotations

from collections.abc import Sequence

from flamepy_core.contracts import TransportCapabilities, TransportSpec, hookimpl
from flamepy_core.contracts.transport import TransportFactory

DEFAULT_MAX_MESSAGE_SIZE = 256 * 1024 * 1024
DEFAULT_CONNECT_TIMEOUT = 2.0
DEFAULT_HEARTBEAT_IVL_MS = 1000
DEFAULT_HEARTBEAT_TIMEOUT_MS = 3000
DEFAULT_HWM = 1000
DEFAULT_MAX_WORKERS = 32
DEFAULT_MAX_PENDING_CALLS = 1024

OPTIONS = frozenset(
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
    }
)


def _load() -> TransportFactory:
    from flamepy_transports.zmq.transport import ZmqTransport

    return ZmqTransport


@hookimpl
def flamepy_add_transports() -> Sequence[TransportSpec]:
    return [
        TransportSpec(
            name="zmq",
            schemes=("zmq+tcp", "zmq+ipc"),
            capabilities=TransportCapabilities(
                max_message_size=DEFAULT_MAX_MESSAGE_SIZE, streaming=True, cross_process=True, auth=True
            ),
            load=_load,
            options=OPTIONS,
            requires=("pyzmq",),
            description="ZeroMQ DEALER/ROUTER over tcp or unix sockets; heartbeats, backpressure, CURVE auth",
        )
    ]
