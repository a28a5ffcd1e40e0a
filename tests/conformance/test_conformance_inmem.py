"""The bundled in-memory transport keeps the transport contract (the whole conformance suite)."""

from __future__ import annotations

from flamepy_conformance import Capability, TransportTests, requires


class TestInmem(TransportTests):
    transport_name = "inmem"

    @requires(Capability.TLS)
    def test_an_extension_gated_on_a_capability(self) -> None:
        """How a plugin author adds a test of their own: inmem declares no TLS, so this must skip."""
        raise AssertionError("ran although the transport does not declare 'tls'")
