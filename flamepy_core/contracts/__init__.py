"""The contracts every plugin and every layer agrees on.

Re-exported here so a plugin author imports one module: ``from flamepy_core.contracts import ...``.
The hook markers (``hookimpl``, ``hookspec``, ``PROJECT_NAME``) load pluggy, so they are imported on
first use: a service process, which reads only the errors and the transport protocols, starts without it.
Every other name is imported on first use too (PEP 562), from its own module, so importing
``flamepy_core.contracts.errors`` loads the errors alone.
"""

from typing import TYPE_CHECKING, Any

from flamepy_core.lazy_names import LazyNames

if TYPE_CHECKING:
    from flamepy_core.contracts.errors import FlameError, FlameErrorCode
    from flamepy_core.contracts.hookspecs import PROJECT_NAME, hookimpl, hookspec
    from flamepy_core.contracts.serializer import Serializer, SerializerSpec
    from flamepy_core.contracts.transport import (
        DEFAULT_TIMEOUT,
        AsyncChannel,
        AsyncStreamChannel,
        CallbackChannel,
        CallContext,
        Channel,
        DeferredHandler,
        DeferredStreamHandler,
        Handler,
        KeyPairTransport,
        LocalTransport,
        PartsResponder,
        ReadingChannel,
        ReplyPart,
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

__all__ = [
    "DEFAULT_TIMEOUT",
    "PROJECT_NAME",
    "AsyncChannel",
    "AsyncStreamChannel",
    "CallContext",
    "CallbackChannel",
    "Channel",
    "DeferredHandler",
    "DeferredStreamHandler",
    "FlameError",
    "FlameErrorCode",
    "Handler",
    "KeyPairTransport",
    "LocalTransport",
    "PartsResponder",
    "ReadingChannel",
    "ReplyPart",
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


_WHERE: dict[str, str] = {
    "AsyncChannel": "flamepy_core.contracts.transport",
    "AsyncStreamChannel": "flamepy_core.contracts.transport",
    "CallbackChannel": "flamepy_core.contracts.transport",
    "CallContext": "flamepy_core.contracts.transport",
    "Channel": "flamepy_core.contracts.transport",
    "ReadingChannel": "flamepy_core.contracts.transport",
    "PartsResponder": "flamepy_core.contracts.transport",
    "ReplyPart": "flamepy_core.contracts.transport",
    "DEFAULT_TIMEOUT": "flamepy_core.contracts.transport",
    "DeferredHandler": "flamepy_core.contracts.transport",
    "DeferredStreamHandler": "flamepy_core.contracts.transport",
    "FlameError": "flamepy_core.contracts.errors",
    "FlameErrorCode": "flamepy_core.contracts.errors",
    "Handler": "flamepy_core.contracts.transport",
    "KeyPairTransport": "flamepy_core.contracts.transport",
    "LocalTransport": "flamepy_core.contracts.transport",
    "Responder": "flamepy_core.contracts.transport",
    "SecureTransport": "flamepy_core.contracts.transport",
    "SecuritySetting": "flamepy_core.contracts.transport",
    "Serializer": "flamepy_core.contracts.serializer",
    "SerializerSpec": "flamepy_core.contracts.serializer",
    "Server": "flamepy_core.contracts.transport",
    "StreamHandler": "flamepy_core.contracts.transport",
    "StreamWriter": "flamepy_core.contracts.transport",
    "Timeout": "flamepy_core.contracts.transport",
    "Transport": "flamepy_core.contracts.transport",
    "TransportCapabilities": "flamepy_core.contracts.transport",
    "TransportSecurity": "flamepy_core.contracts.transport",
    "TransportSpec": "flamepy_core.contracts.transport",
    "UnaryHandler": "flamepy_core.contracts.transport",
    **dict.fromkeys(("PROJECT_NAME", "hookimpl", "hookspec"), "flamepy_core.contracts.hookspecs"),
}


_names = LazyNames(__name__, _WHERE, __all__)


def __getattr__(name: str) -> Any:
    return _names.load(name)


def __dir__() -> list[str]:
    return _names.listing()
