"""The contracts every plugin and every layer agrees on.

Re-exported here so a plugin author imports one module: ``from flamepy_core.contracts import ...``.
The hook markers (``hookimpl``, ``hookspec``, ``PROJECT_NAME``) load pluggy, so they are imported on
first use: a service process, which reads only the errors and the transport protocols, starts without it.
"""

from typing import TYPE_CHECKING, Any

from flamepy_core.contracts.errors import FlameError, FlameErrorCode
from flamepy_core.contracts.serializer import Serializer, SerializerSpec
from flamepy_core.contracts.transport import (
    DEFAULT_TIMEOUT,
    AsyncChannel,
    CallContext,
    Channel,
    DeferredHandler,
    DeferredStreamHandler,
    Handler,
    KeyPairTransport,
    LocalTransport,
    Responder,
    SecureTransport,
    SecuritySetting,
    Server,
    StreamHandler,
    StreamWriter,
    Timeout,
    Transport,
    TransportCapabilities,
    TransportSecurity,
    TransportSpec,
    UnaryHandler,
)

if TYPE_CHECKING:
    from flamepy_core.contracts.hookspecs import PROJECT_NAME, hookimpl, hookspec

__all__ = [
    "DEFAULT_TIMEOUT",
    "PROJECT_NAME",
    "AsyncChannel",
    "CallContext",
    "Channel",
    "DeferredHandler",
    "DeferredStreamHandler",
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
    "StreamWriter",
    "Timeout",
    "Transport",
    "TransportCapabilities",
    "TransportSecurity",
    "TransportSpec",
    "UnaryHandler",
    "hookimpl",
    "hookspec",
]


_FROM_HOOKSPECS = frozenset({"PROJECT_NAME", "hookimpl", "hookspec"})


def __getattr__(name: str) -> Any:
    if name in _FROM_HOOKSPECS:
        from flamepy_core.contracts import hookspecs

        return getattr(hookspecs, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
