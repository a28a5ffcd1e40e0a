"""The bundled gRPC transport keeps the transport contract (the whole conformance suite).

Collected only once the transport can be imported, so the suite can land before (or without) it.
"""

from __future__ import annotations

import pytest

pytest.importorskip("flamepy_transports.grpc.transport")

from flamepy_conformance import TransportTests


class TestGrpc(TransportTests):
    transport_name = "grpc"


class TestGrpcUnix(TransportTests):
    """The same over a unix socket: the link Flame's executors use to reach an instance."""

    transport_name = "grpc"
    endpoint_scheme = "unix"
