"""The contracts every plugin and every layer agrees on.

Re-exported here so a plugin author imports one module: ``from flamepy_core.contracts import ...``.
"""

from flamepy_core.contracts.errors import FlameError, FlameErrorCode
from flamepy_core.contracts.hookspecs import PROJECT_NAME, hookimpl, hookspec
from flamepy_core.contracts.serializer import Serializer, SerializerSpec
from flamepy_core.contracts.transport import (
    DEFAULT_TIMEOUT,
    CallContext,
    Channel,
    Handler,
    Server,
    StreamHandler,
    Timeout,
    Transport,
    TransportCapabilities,
    TransportSpec,
    UnaryHandler,
)

__all__ = [
    "DEFAULT_TIMEOUT",
    "PROJECT_NAME",
    "CallContext",
    "Channel",
    "FlameError",
    "FlameErrorCode",
    "Handler",
    "Serializer",
    "SerializerSpec",
    "Server",
    "StreamHandler",
    "Timeout",
    "Transport",
    "TransportCapabilities",
    "TransportSpec",
    "UnaryHandler",
    "hookimpl",
    "hookspec",
]
