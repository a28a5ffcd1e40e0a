"""The tcp transport keeps flamepy's transport contract: the whole conformance suite, unchanged."""

from __future__ import annotations

from flamepy_conformance import TransportTests


class TestTcp(TransportTests):
    transport_name = "tcp"
