"""The options of the zmq transport, validated once, and the socket options they turn into."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import zmq

from flamepy_core.transport_kit import DEFAULT_CALL_TIMEOUT
from flamepy_transports.zmq.defaults import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_HEARTBEAT_IVL_MS,
    DEFAULT_HEARTBEAT_TIMEOUT_MS,
    DEFAULT_HWM,
    DEFAULT_MAX_MESSAGE_SIZE,
    DEFAULT_MAX_PENDING_CALLS,
    DEFAULT_MAX_WORKERS,
)
from flamepy_transports.zmq.endpoints import Address

if TYPE_CHECKING:  # CURVE (.auth) is imported only when keys are configured: not by every service instance
    from flamepy_transports.zmq.auth import CurveClientKeys, CurveServerKeys

RECONNECT_IVL_MS = 100
"""How often a channel retries a connection to an absent server (libzmq adds jitter up to this much)."""

MIN_FRAME_LIMIT = 64 * 1024
"""libzmq's ZMQ_MAXMSGSIZE is never set below this, so control frames and error texts always fit."""
RECEIVE_HEADROOM = 64 * 1024 * 1024


def receive_limit(max_message_size: int) -> int:
    """libzmq's own limit (ZMQ_MAXMSGSIZE): twice ``max_message_size``, and at least 64 MiB above it.

    libzmq drops the connection of a peer whose message is over its limit, and neither side learns why:
    the caller only sees the connection lost. With this headroom, a message over ``max_message_size``
    from a peer configured with a larger one is received, and refused (a request) or failed (a
    response) with ``MESSAGE_TOO_LARGE`` naming both sizes. Only a message beyond the headroom still
    costs the connection.
    """
    return max(MIN_FRAME_LIMIT, 2 * max_message_size, max_message_size + RECEIVE_HEADROOM)


STREAM_WINDOW_ITEMS = 256
STREAM_WINDOW_BYTES = 8 * 1024 * 1024
"""Flow control of a stream: at most this many items / bytes sent and not yet consumed by the caller
(one item is always allowed, however large)."""


@dataclass(frozen=True)
class ZmqConfig:
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    default_timeout: float | None = DEFAULT_CALL_TIMEOUT
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    heartbeat_ivl_ms: int = DEFAULT_HEARTBEAT_IVL_MS
    heartbeat_timeout_ms: int = DEFAULT_HEARTBEAT_TIMEOUT_MS
    sndhwm: int = DEFAULT_HWM
    rcvhwm: int = DEFAULT_HWM
    max_workers: int = DEFAULT_MAX_WORKERS
    max_pending_calls: int = DEFAULT_MAX_PENDING_CALLS
    curve_server: CurveServerKeys | None = None
    curve_client: CurveClientKeys | None = None
    direct_calls: bool = True
    """A synchronous call on an idle channel uses the socket from the caller's thread (see ``channel``)."""

    @property
    def liveness_bound(self) -> float:
        """Seconds within which a vanished peer is noticed: one heartbeat interval plus its timeout."""
        return (self.heartbeat_ivl_ms + self.heartbeat_timeout_ms) / 1000.0

    def validate(self) -> None:
        if self.max_message_size <= 0:
            raise ValueError(f"max_message_size must be positive, got {self.max_message_size}")
        if self.default_timeout is not None and self.default_timeout < 0:
            raise ValueError(f"default_timeout must be >= 0 or None, got {self.default_timeout}")
        if self.connect_timeout <= 0:
            raise ValueError(f"connect_timeout must be positive, got {self.connect_timeout}")
        if self.heartbeat_ivl_ms <= 0 or self.heartbeat_timeout_ms <= 0:
            raise ValueError(
                f"heartbeat_ivl_ms and heartbeat_timeout_ms must be positive, "
                f"got {self.heartbeat_ivl_ms} and {self.heartbeat_timeout_ms}"
            )
        for name in ("sndhwm", "rcvhwm", "max_workers", "max_pending_calls"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")


def build_config(
    *,
    max_message_size: int,
    default_timeout: float | None,
    connect_timeout: float,
    heartbeat_ivl_ms: int,
    heartbeat_timeout_ms: int,
    sndhwm: int,
    rcvhwm: int,
    max_workers: int,
    max_pending_calls: int,
    curve_server_secret_key_file: str | None,
    curve_client_public_keys_dir: str | None,
    curve_client_public_key_files: Sequence[str] | None,
    curve_server_public_key_file: str | None,
    curve_client_secret_key_file: str | None,
    direct_calls: bool = True,
) -> ZmqConfig:
    """Validate the options and read the CURVE key files (ValueError names the bad option)."""
    curve_server = None
    if curve_server_secret_key_file is not None:
        from flamepy_transports.zmq.auth import load_server_keys

        curve_server = load_server_keys(
            curve_server_secret_key_file, curve_client_public_keys_dir, curve_client_public_key_files
        )
    elif curve_client_public_keys_dir is not None or curve_client_public_key_files:
        raise ValueError("the allowed client keys need curve_server_secret_key_file too")
    curve_client = None
    if curve_server_public_key_file is not None or curve_client_secret_key_file is not None:
        if curve_server_public_key_file is None or curve_client_secret_key_file is None:
            raise ValueError(
                "a CURVE client needs both curve_server_public_key_file (the server's '.key') and "
                "curve_client_secret_key_file (its own '.key_secret')"
            )
        from flamepy_transports.zmq.auth import load_client_keys

        curve_client = load_client_keys(curve_server_public_key_file, curve_client_secret_key_file)
    config = ZmqConfig(
        max_message_size=int(max_message_size),
        default_timeout=None if default_timeout is None else float(default_timeout),
        connect_timeout=float(connect_timeout),
        heartbeat_ivl_ms=int(heartbeat_ivl_ms),
        heartbeat_timeout_ms=int(heartbeat_timeout_ms),
        sndhwm=int(sndhwm),
        rcvhwm=int(rcvhwm),
        max_workers=int(max_workers),
        max_pending_calls=int(max_pending_calls),
        curve_server=curve_server,
        curve_client=curve_client,
        direct_calls=bool(direct_calls),
    )
    config.validate()
    return config


def _common(sock: zmq.Socket[bytes], config: ZmqConfig, address: Address) -> None:
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, config.sndhwm)
    sock.setsockopt(zmq.RCVHWM, config.rcvhwm)
    sock.setsockopt(zmq.MAXMSGSIZE, receive_limit(config.max_message_size))
    sock.setsockopt(zmq.HEARTBEAT_IVL, config.heartbeat_ivl_ms)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, config.heartbeat_timeout_ms)
    sock.setsockopt(zmq.HEARTBEAT_TTL, config.heartbeat_timeout_ms)
    sock.setsockopt(zmq.HANDSHAKE_IVL, max(1000, int(config.connect_timeout * 1000)))
    if address.ipv6:
        sock.setsockopt(zmq.IPV6, 1)


def configure_router(sock: zmq.Socket[bytes], config: ZmqConfig, address: Address) -> None:
    """The server's ROUTER: never drop a reply silently (ROUTER_MANDATORY), bounded pipes, heartbeats."""
    _common(sock, config, address)
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)


def configure_dealer(sock: zmq.Socket[bytes], config: ZmqConfig, address: Address) -> None:
    """A channel's DEALER: fixed reconnect interval; deliberately *without* ``ZMQ_IMMEDIATE``.

    With IMMEDIATE, libzmq throws away replies that have arrived but were not read yet when the
    connection drops (a server's last answers before it stops). The channel gets what IMMEDIATE would
    give in another way: it sends only on a connection the monitor has confirmed, and replaces the
    socket when an established connection is lost, so nothing queued for a dead peer reaches the next.
    """
    _common(sock, config, address)
    sock.setsockopt(zmq.RECONNECT_IVL, RECONNECT_IVL_MS)
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, 0)
