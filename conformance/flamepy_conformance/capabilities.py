"""Capability gating: the suite demands only what a transport declares.

A transport's :class:`~flamepy_core.contracts.transport.TransportCapabilities` is data. Every optional
test asks for its capability by name and *skips* (never fails) with a reason that names the capability and
the transport when it is not declared, so a plugin is never failed for a feature it did not claim and the
skip list reads as the plugin's feature list.
"""

from __future__ import annotations

from enum import Enum

import pytest

from flamepy_core.contracts.transport import Transport

MARKER = "flamepy_capability"
"""``@pytest.mark.flamepy_capability("streaming")``: the test needs that capability (see :func:`requires`)."""


class Capability(str, Enum):
    """The optional features a transport may declare (the boolean fields of TransportCapabilities)."""

    STREAMING = "streaming"
    CROSS_PROCESS = "cross_process"
    TLS = "tls"
    AUTH = "auth"
    RESTART_SAME_ENDPOINT = "restart_same_endpoint"
    DEFERRED_REPLIES = "deferred_replies"
    DEFERRED_STREAMS = "deferred_streams"
    ASYNC_CALLS = "async_calls"
    ASYNC_STREAMS = "async_streams"

    def __str__(self) -> str:
        return self.value


def _name(capability: Capability | str) -> str:
    name = Capability(capability).value  # an unknown name is a typo in the test: fail loudly
    return name


def has_capability(transport: Transport, capability: Capability | str) -> bool:
    """Whether ``transport`` declares ``capability``."""
    return bool(getattr(transport.capabilities, _name(capability)))


def skip_reason(transport: Transport, capability: Capability | str) -> str:
    """The skip message for a missing capability, e.g. ``capability 'streaming' not declared by ...``."""
    return f"capability '{_name(capability)}' not declared by transport {transport.name}"


def skip_unless(transport: Transport, capability: Capability | str) -> None:
    """Skip the running test unless ``transport`` declares ``capability``."""
    if not has_capability(transport, capability):
        pytest.skip(skip_reason(transport, capability))


def requires(*capabilities: Capability | str) -> pytest.MarkDecorator:
    """Mark a :class:`~flamepy_conformance.TransportTests` test as needing ``capabilities``.

    The suite's set-up fixture reads the mark and skips the test, naming the first missing capability.
    """
    return pytest.mark.flamepy_capability(*(_name(c) for c in capabilities))
