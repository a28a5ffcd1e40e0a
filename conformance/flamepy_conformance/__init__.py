"""flamepy's conformance suite: proves that a transport or serializer plugin keeps its contract.

Ships in the wheel as a pytest plugin (``flamepy_conformance.pytest_plugin``, registered through the
``pytest11`` entry point) and a command, ``flamepy-conformance --transport NAME`` /
``flamepy-conformance --serializer NAME``. A plugin author runs it from a ten-line test module::

    from flamepy_conformance import SerializerTests, TransportTests

    class TestMyTransport(TransportTests):
        transport_name = "mytcp"

    class TestMySerializer(SerializerTests):
        serializer_name = "cbor"

Public pieces: :class:`TransportTests` and :class:`SerializerTests` (the suites),
:mod:`flamepy_conformance.strategies` (hypothesis strategies, ``values_for_domain`` among them),
:class:`Capability` with :func:`requires` / :func:`has_capability` / :func:`skip_unless` (capability
gating) and :class:`ChannelLifecycleMachine` (the stateful test). Attributes are imported
lazily: pytest imports this package on every run through the plugin, which must stay cheap and must not
pull in hypothesis or a transport for test runs that never use the suite.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flamepy_conformance import strategies
    from flamepy_conformance.capabilities import Capability, has_capability, requires, skip_unless
    from flamepy_conformance.serializer_suite import SerializerTests
    from flamepy_conformance.stateful import ChannelLifecycleMachine
    from flamepy_conformance.transport_suite import TransportTests

__all__ = [
    "Capability",
    "ChannelLifecycleMachine",
    "SerializerTests",
    "TransportTests",
    "has_capability",
    "requires",
    "skip_unless",
    "strategies",
]

_LAZY = {
    "Capability": "flamepy_conformance.capabilities",
    "has_capability": "flamepy_conformance.capabilities",
    "requires": "flamepy_conformance.capabilities",
    "skip_unless": "flamepy_conformance.capabilities",
    "ChannelLifecycleMachine": "flamepy_conformance.stateful",
    "SerializerTests": "flamepy_conformance.serializer_suite",
    "ServiceTests": "flamepy_conformance.service_suite",
    "TransportTests": "flamepy_conformance.transport_suite",
}


def __getattr__(name: str) -> Any:
    if name == "strategies":
        return importlib.import_module("flamepy_conformance.strategies")
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'flamepy_conformance' has no attribute '{name}'")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
