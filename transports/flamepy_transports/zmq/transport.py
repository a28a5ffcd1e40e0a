"""The zmq transport object: validates its options once, then makes channels and servers."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from flamepy_core.contracts.transport import Handler, TransportCapabilities
from flamepy_core.transport_kit import DEFAULT_CALL_TIMEOUT
from flamepy_transports.zmq import endpoints
from flamepy_transports.zmq.channel import ZmqChannel
from flamepy_transports.zmq.config import ZmqConfig, build_config
from flamepy_transports.zmq.plugin import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_HEARTBEAT_IVL_MS,
    DEFAULT_HEARTBEAT_TIMEOUT_MS,
    DEFAULT_HWM,
    DEFAULT_MAX_MESSAGE_SIZE,
    DEFAULT_MAX_PENDING_CALLS,
    DEFAULT_MAX_WORKERS,
)
from flamepy_transports.zmq.server import ZmqServer


class ZmqTransport:
    """ZeroMQ DEALER/ROUTER transport for ``zmq+tcp://`` and ``zmq+ipc://`` (options: see ``plugin``)."""

    name: str = "zmq"
    schemes: tuple[str, ...] = endpoints.SCHEMES
    capabilities: TransportCapabilities

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
    ) -> None:
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
        )
        self.capabilities = TransportCapabilities(
            max_message_size=self.config.max_message_size,
            streaming=True,
            cross_process=True,
            tls=False,
            auth=True,
            restart_same_endpoint=True,
        )

    @property
    def liveness_bound(self) -> float:
        """Seconds within which a silently vanished peer is noticed (heartbeat interval + timeout)."""
        return self.config.liveness_bound

    def connect(self, endpoint: str) -> ZmqChannel:
        return ZmqChannel(endpoints.parse(endpoint, serving=False), self.config)

    def serve(self, endpoint: str, handlers: Mapping[str, Handler]) -> ZmqServer:
        return ZmqServer(endpoints.parse(endpoint, serving=True), handlers, self.config)
