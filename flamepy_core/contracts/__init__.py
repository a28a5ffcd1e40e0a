"""The contracts every plugin and every layer agrees on.

Re-exported here so a plugin author imports one module: ``from flamepy_core.contracts import ...``.
"""

from flamepy_core.contracts.errors import FlameError, FlameErrorCode
from flamepy_core.contracts.hookspecs import PROJECT_NAME, hookimpl, hookspec
from flamepy_core.contracts.serializer import Serializer, SerializerSpec
from flamepy_core.contracts.transport import (
    DEFAULT_TIMEOUT,
    AsyncChannel,
    CallContext,
    Channel,
    DeferredHandler,
    Handler,
    KeyPairTransport,
    LocalTransport,
    Responder,
    SecureTransport,
    SecuritySetting,
    Server,
    StreamHandler,
    Timeout,
    Transport,
    TransportCapabilities,
    TransportSecurity,
    TransportSpec,
    UnaryHandler,
)

__all__ = [
    "DEFAULT_TIMEOUT",
    "PROJECT_NAME",
    "AsyncChannel",
    "CallContext",
    "Channel",
    "DeferredHandler",
    "FlameError",
    "FlameErrorCode",
    "Handler",
    "KeyPairTransport",
    "LocalTransport",
    "Responder",
    "SecureTransport",
    "SecuritySetting",
    "Serializer",
    "SerializerSpec",
    "Server",
    "StreamHandler",
    "Timeout",
    "Transport",
    "TransportCapabilities",
    "TransportSecurity",
    "TransportSpec",
    "UnaryHandler",
    "hookimpl",
    "hookspec",
]
