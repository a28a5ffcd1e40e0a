"""ZeroMQ peers configured with different limits: the smaller side answers MESSAGE_TOO_LARGE with both sizes.

libzmq drops the connection of a peer whose message is over its own limit (ZMQ_MAXMSGSIZE), and then the
caller saw only "connection lost". The transport sets libzmq's limit with headroom above
``max_message_size`` so such a message is read and refused (a request) or failed (a response) by
the transport itself, naming both sizes and the setting; the connection survives. Over both endpoint
kinds, since tcp and ipc are framed by different libzmq code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from flamepy_transports.zmq.config import RECEIVE_HEADROOM, receive_limit

from flamepy_core.contracts import FlameError, FlameErrorCode, UnaryHandler
from flamepy_core.contracts.transport import CallContext
from flamepy_core.plugins import get_registry

SMALL = 100_000
ECHO = "/test.Size/Echo"
GROW = "/test.Size/Grow"
FAST = {"heartbeat_ivl_ms": 200, "heartbeat_timeout_ms": 600, "connect_timeout": 1.0}


def transport(**options: Any) -> Any:
    return get_registry().transport("zmq", **{**FAST, **options})


def handlers() -> dict[str, UnaryHandler]:
    def echo(request: bytes, ctx: CallContext) -> bytes:
        return request

    def grow(request: bytes, ctx: CallContext) -> bytes:
        return b"r" * int(request)

    return {ECHO: UnaryHandler(echo), GROW: UnaryHandler(grow)}


def too_large(call: Any) -> FlameError:
    with pytest.raises(FlameError) as info:
        call()
    assert info.value.code == FlameErrorCode.MESSAGE_TOO_LARGE, info.value
    assert "FLAME_MAX_MESSAGE_SIZE" in info.value.message and "connection" not in info.value.message
    return info.value


@pytest.fixture(params=["tcp", "ipc"])
def endpoint(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return "zmq+tcp://127.0.0.1:0" if request.param == "tcp" else f"zmq+ipc://{tmp_path}/s.ipc"


def test_a_server_with_a_smaller_limit_refuses_a_request_naming_both_sizes(endpoint: str) -> None:
    server = transport(max_message_size=SMALL).serve(endpoint, handlers())
    channel = transport().connect(server.endpoint)  # the default limit: 256 MiB
    try:
        err = too_large(lambda: channel.unary(ECHO, b"q" * (SMALL * 3), timeout=10))
        assert f"of {SMALL * 3} bytes exceeds the largest message of {SMALL} bytes" in err.message, err.message
        assert channel.unary(ECHO, b"still connected", timeout=10) == b"still connected"
    finally:
        channel.close()
        server.stop()


@pytest.mark.parametrize("asynchronous", [False, True], ids=["unary", "unary_async"])
def test_a_client_with_a_smaller_limit_fails_a_response_naming_both_sizes(endpoint: str, asynchronous: bool) -> None:
    """Blocking and asynchronous calls alike: an asynchronous call's future fails (the engine's instance
    link uses those, and an oversized result must fail its task, not reach the store)."""
    server = transport().serve(endpoint, handlers())
    channel = transport(max_message_size=SMALL).connect(server.endpoint)
    request = str(SMALL * 2).encode()
    try:
        if asynchronous:
            err = too_large(lambda: channel.unary_async(GROW, request, timeout=10).result(timeout=10))
        else:
            err = too_large(lambda: channel.unary(GROW, request, timeout=10))
        assert f"of {SMALL * 2} bytes exceeds the largest message of {SMALL} bytes" in err.message, err.message
        assert channel.unary(ECHO, b"still connected", timeout=10) == b"still connected"
    finally:
        channel.close()
        server.stop()


def test_libzmqs_own_limit_leaves_headroom() -> None:
    assert receive_limit(SMALL) == SMALL + RECEIVE_HEADROOM
    assert receive_limit(256 * 1024 * 1024) == 512 * 1024 * 1024
    assert receive_limit(1) >= 64 * 1024, "control frames and error texts always fit"


@pytest.mark.parametrize("name", ["zmq", "grpc", "inmem"])
def test_flame_max_message_size_is_the_default_of_every_transport(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Server, instances and clients build their transports through the registry: one variable, one limit."""
    monkeypatch.setenv("FLAME_MAX_MESSAGE_SIZE", "1MiB")
    assert get_registry().transport(name).capabilities.max_message_size == 1024 * 1024
    assert get_registry().transport(name, max_message_size=SMALL).capabilities.max_message_size == SMALL
    monkeypatch.setenv("FLAME_MAX_MESSAGE_SIZE", "lots")
    with pytest.raises(FlameError) as info:
        get_registry().transport(name)
    assert info.value.code == FlameErrorCode.INVALID_CONFIG and "FLAME_MAX_MESSAGE_SIZE='lots'" in info.value.message
