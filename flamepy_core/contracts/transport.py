"""The transport contract: move opaque byte messages for named methods.

A transport knows nothing of sessions or tasks. It owns one or more URL schemes, connects a
:class:`Channel` to an endpoint and serves a table of handlers on an endpoint. Method names are gRPC
paths (``/flame.v1.Frontend/CreateTask``) on every transport, so the gRPC transport speaks Flame's own
protocol with no translation.

Error rules every transport keeps (the conformance suite checks each one):

* a handler that raises ``FlameError(code, message)`` reaches the caller as the same ``FlameError``;
  any other exception reaches it as ``FlameError(INTERNAL, ...)`` naming the exception type;
* a method with no handler gives ``UNIMPLEMENTED``; a missed deadline ``DEADLINE_EXCEEDED``; a peer that
  is not there (or vanished mid-call) ``UNAVAILABLE``, promptly, never a hang;
* a message larger than ``capabilities.max_message_size`` is refused *before sending* with
  ``MESSAGE_TOO_LARGE`` naming both sizes.

The numbers behind these words - how long a method path or an error message must cross intact, how
soon "promptly" is, how much a handler's view of the deadline may differ from its caller's, how long a
stream may be - are in :mod:`flamepy_core.contracts.bounds`.

Four optional parts let long calls hold no thread (see :class:`DeferredHandler`,
:class:`DeferredStreamHandler`, :meth:`AsyncChannel.unary_async` and
:meth:`AsyncStreamChannel.stream_async`). A transport that implements them natively declares
``deferred_replies`` / ``deferred_streams`` / ``async_calls`` / ``async_streams`` in its capabilities; for
one that does not, the core adapts (:func:`flamepy_core.kit.adapt_handlers`, :func:`flamepy_core.kit.unary_async`,
:func:`flamepy_core.kit.stream_async`), so every transport carries every handler and every call.
"""

from __future__ import annotations

import mmap
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Final, Optional, Protocol, TypeVar, Union, runtime_checkable

from flamepy_core.contracts.errors import FlameError


class _DefaultTimeout:
    """Sentinel type: "use the channel's default deadline"."""

    _instance: _DefaultTimeout | None = None

    def __new__(cls) -> _DefaultTimeout:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "DEFAULT_TIMEOUT"


DEFAULT_TIMEOUT: Final = _DefaultTimeout()
"""Pass as ``timeout`` to use the channel's default deadline (the default for every call): the kit's
``DEFAULT_CALL_TIMEOUT`` (60 s) unless the transport's ``default_timeout`` option, or its documentation,
says otherwise. Never "no deadline": that is ``None``."""

Timeout = Union[float, None, _DefaultTimeout]  # noqa: UP007 - a runtime alias that must work on 3.10
"""Seconds; ``None`` = no deadline (an explicit choice); ``DEFAULT_TIMEOUT`` = the channel's default."""


class CallContext(Protocol):
    """What a handler knows about the call it serves."""

    @property
    def method(self) -> str:
        """The gRPC-style method path being served."""
        ...

    def time_remaining(self) -> float | None:
        """Seconds left before the caller's deadline, or ``None`` when the caller set none."""
        ...

    def is_active(self) -> bool:
        """False once the caller has gone away or the deadline passed: long handlers should stop."""
        ...


UnaryFn = Callable[[bytes, CallContext], bytes]
StreamFn = Callable[[bytes, CallContext], Iterator[bytes]]


class _HandlerFn:
    """A handler: one function, fixed at construction, compared and hashed by it (as a frozen dataclass is).

    A plain class with slots, not a ``@dataclass(frozen=True)``: the four handler kinds are built when
    every service process imports this module, and each dataclass costs that start about 0.3 ms (its
    methods are generated and compiled at class creation).
    """

    __slots__ = ("fn",)
    __match_args__ = ("fn",)
    fn: Callable[..., Any]

    def __init__(self, fn: Callable[..., Any]) -> None:
        object.__setattr__(self, "fn", fn)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable: cannot assign to {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable: cannot delete {name!r}")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, _HandlerFn) or other.__class__ is not self.__class__:
            return NotImplemented
        return bool(self.fn == other.fn)

    def __hash__(self) -> int:
        return hash((self.__class__, self.fn))

    def __repr__(self) -> str:
        return f"{type(self).__qualname__}(fn={self.fn!r})"


class UnaryHandler(_HandlerFn):
    """Answers one request with one response."""

    __slots__ = ()
    fn: UnaryFn

    def __init__(self, fn: UnaryFn) -> None:
        super().__init__(fn)


class StreamHandler(_HandlerFn):
    """Answers one request with a stream of responses, in order; ends when the iterator ends."""

    __slots__ = ()
    fn: StreamFn

    def __init__(self, fn: StreamFn) -> None:
        super().__init__(fn)


class Responder(Protocol):
    """Completes the reply of one deferred call: exactly once, from any thread.

    Both methods return True when this completion is the one that counts, False when the call was
    completed already, or its caller has gone (cancelled, deadline passed, server stopping): the reply
    is then dropped, never delivered to another call.
    """

    def send(self, response: bytes) -> bool:
        """Complete the call with ``response`` (checked against the largest message first)."""
        ...

    def fail(self, error: BaseException) -> bool:
        """Complete the call with an error: a ``FlameError`` as it is, anything else as INTERNAL."""
        ...


ReplyPart = Union[bytes, memoryview, mmap.mmap]  # noqa: UP007 - a runtime alias that must work on 3.10
"""A part of a reply sent as parts: ``bytes``, or another read-only buffer whose contents do not change (a
read-only mapping of a file nobody writes, a view of either)."""


@runtime_checkable
class PartsResponder(Responder, Protocol):
    """A responder that sends a reply given in parts as they are (optional: :func:`flamepy_core.kit.send_parts`
    calls it when a responder has it, and joins the parts for ``send`` otherwise). For a large reply built
    around a payload: the payload is not copied into one message first."""

    def send_parts(self, parts: Sequence[ReplyPart]) -> bool:
        """:meth:`Responder.send` of the concatenation of ``parts``, without joining them: the transport
        may hold the parts until the reply is written (read-only, they cannot change meanwhile; a writable
        buffer is copied first)."""
        ...


DeferredFn = Callable[[bytes, CallContext, Responder], None]


class DeferredHandler(_HandlerFn):
    """Answers one request later, without holding a server thread while it waits.

    ``fn(request, ctx, responder)`` must return promptly: it may run on the transport's receiving thread,
    so it starts work (queues it, sends a call of its own) and returns. The reply is completed through
    ``responder``, later, from any thread (a callback of another call, a worker, a timer). If ``fn``
    raises before completing the reply, the call fails with that error. A reply completed after the
    caller's deadline, or after the caller went away, is dropped; ``ctx.is_active()`` tells which.
    """

    __slots__ = ()
    fn: DeferredFn

    def __init__(self, fn: DeferredFn) -> None:
        super().__init__(fn)


class StreamWriter(Protocol):
    """Feeds the responses of one deferred stream, in order, from any thread (one call at a time).

    ``send`` never blocks: responses the caller has not taken yet wait in the transport. Every method
    returns True when it took effect, False once the stream has ended (closed, failed, its caller gone,
    its deadline passed, the server stopping): the caller of a False should stop producing.
    """

    def send(self, response: bytes) -> bool:
        """Queue one response (checked against the largest message first: a response too large is not
        sent, the stream fails with ``MESSAGE_TOO_LARGE`` naming both sizes, and ``send`` returns False)."""
        ...

    def close(self) -> bool:
        """End the stream normally, after the responses sent so far."""
        ...

    def fail(self, error: BaseException) -> bool:
        """End the stream with an error, after the responses sent so far (a ``FlameError`` as it is,
        anything else as INTERNAL)."""
        ...


DeferredStreamFn = Callable[[bytes, CallContext, StreamWriter], None]


class DeferredStreamHandler(_HandlerFn):
    """Answers one request with a stream fed later, without holding a server thread while it is open.

    ``fn(request, ctx, writer)`` must return promptly (it may run on the transport's receiving thread):
    it keeps ``writer`` and feeds it from whatever produces the responses (callbacks, timers), then
    closes it. If ``fn`` raises before the stream ends, the stream fails with that error. A stream whose
    caller has gone reports it through ``ctx.is_active()`` and through ``send`` returning False; a
    producer that may stay silent for long should check ``ctx.is_active()`` now and then, so it can let go.
    """

    __slots__ = ()
    fn: DeferredStreamFn

    def __init__(self, fn: DeferredStreamFn) -> None:
        super().__init__(fn)


Handler = Union[UnaryHandler, StreamHandler, DeferredHandler, DeferredStreamHandler]  # noqa: UP007 - a runtime alias that must work on 3.10


@dataclass(frozen=True)
class SecuritySetting:
    """One security option a transport takes, and where the runtime reads it from.

    ``role`` says who sets it: ``"client"`` settings are read for every connection a client (or an
    instance) makes to an endpoint of this transport: an explicit argument wins, then ``env``, then the
    ``flame.yaml`` context's ``cluster``/``cache`` section at ``config_key`` (a dotted path, e.g.
    ``tls.ca_file``) - or the file first when ``config_first`` (Flame's rule for CA files: a per-context
    CA is more specific than a global variable). ``"server"`` settings are what the server needs to
    listen securely: flags of ``python -m flamepy_core.engine`` and ``flmctl server start`` (``flag``),
    or ``env`` in the server's environment. ``pair`` names a setting of the same role that must be given
    with this one (a certificate and its key).
    """

    option: str
    role: str
    env: str | None = None
    flag: str | None = None
    config_key: str | None = None
    config_first: bool = False
    pair: str | None = None
    required: bool = False
    """A server setting without which the secure schemes cannot be served (a TLS certificate)."""
    help: str = ""


@dataclass(frozen=True)
class TransportSecurity:
    """How a transport authenticates its peers (TLS, CURVE...), declared so the runtime needs no names.

    ``schemes``: the schemes that are secure by themselves (``https``, ``grpcs``); empty means "every
    scheme of the transport, once the server's settings are given" (CURVE on ``zmq+tcp``). The runtime
    uses this to refuse a network listen that is neither loopback, local, nor secured (unless the server
    is started with ``--insecure``).
    """

    mechanism: str
    settings: tuple[SecuritySetting, ...] = ()
    schemes: tuple[str, ...] = ()

    def for_role(self, role: str) -> tuple[SecuritySetting, ...]:
        return tuple(s for s in self.settings if s.role == role)

    def secures(self, scheme: str, server_options: Mapping[str, Any]) -> bool:
        """Whether a server on ``scheme`` with ``server_options`` authenticates its clients."""
        if self.schemes:
            return scheme in self.schemes
        return any(server_options.get(s.option) for s in self.for_role("server") if s.required)


@dataclass(frozen=True)
class TransportCapabilities:
    """What a transport promises. Data, not code: the core and the conformance suite read it.

    ``max_message_size`` is the largest payload (bytes) a call may carry each way. The others gate the
    optional parts of the conformance suite (a transport is never failed for a feature it did not claim)
    and tell the runtime what it may use the transport for; ``docs/plugin-authors.md`` lists what the
    runtime does with each.
    """

    max_message_size: int
    streaming: bool = True
    cross_process: bool = True
    tls: bool = False
    auth: bool = False
    restart_same_endpoint: bool = True
    """A server stopped and started again on the same endpoint is reachable by an existing channel."""
    deferred_replies: bool = False
    """``serve`` runs :class:`DeferredHandler` natively: a deferred call holds no server thread."""
    deferred_streams: bool = False
    """``serve`` runs :class:`DeferredStreamHandler` natively: an open deferred stream holds no server thread."""
    async_calls: bool = False
    """Channels implement :meth:`AsyncChannel.unary_async` natively: a call in flight holds no thread."""
    async_streams: bool = False
    """Channels implement :meth:`AsyncStreamChannel.stream_async` natively: an open stream's responses reach
    callbacks on the transport's own thread, and no thread waits on the stream. Without it, the kit's
    :func:`~flamepy_core.kit.stream_async` gives each open stream a thread that reads it."""
    in_process: bool = False
    """Servers and channels of one transport object meet inside one process: the runtime can run its server
    inside a client (``FLAME_TRANSPORT`` = this transport) and instances in the server's process. Such a
    transport implements :meth:`LocalTransport.local_endpoint` (a name in the transport's own namespace)."""
    local_schemes: tuple[str, ...] = ()
    """Schemes whose endpoints are private to this machine (a unix socket file, an ipc path). The runtime
    listens there by default and links its instances there, through :meth:`LocalTransport.local_endpoint`;
    a listen on one needs no TLS or CURVE."""
    bare_path_scheme: str | None = None
    """This transport speaks Flame's own protocol (``flame.v1`` as Flame's gRPC services do) on a unix socket
    named by a bare path, the form Flame's executors pass in ``FLAME_INSTANCE_ENDPOINT``: a bare path ``P``
    means ``<bare_path_scheme>://P``. The runtime offers it to services written with Flame's SDK."""
    local_default_rank: int = 0
    """Preference for the runtime's local default: with nothing configured, the installed transport with
    ``local_schemes`` and the highest rank carries the runtime (0: never chosen by default)."""
    instance_link_rank: int = 0
    """Preference for linking the runtime's service processes written with this SDK (with nothing
    configured, the installed transport with ``local_schemes`` and the highest rank links them; 0: never
    chosen for that, and with none above 0 the local default links them)."""
    security: TransportSecurity | None = None
    """How it authenticates peers, and where the runtime reads the settings (see :class:`TransportSecurity`)."""

    def as_dict(self) -> dict[str, Any]:
        """The capabilities as plain data, for ``flmctl plugins`` and reports."""
        return {
            "max_message_size": self.max_message_size,
            "streaming": self.streaming,
            "cross_process": self.cross_process,
            "tls": self.tls,
            "auth": self.auth,
            "restart_same_endpoint": self.restart_same_endpoint,
            "deferred_replies": self.deferred_replies,
            "deferred_streams": self.deferred_streams,
            "async_calls": self.async_calls,
            "async_streams": self.async_streams,
            "in_process": self.in_process,
            "local_schemes": list(self.local_schemes),
            "bare_path_scheme": self.bare_path_scheme,
            "local_default_rank": self.local_default_rank,
            "instance_link_rank": self.instance_link_rank,
            "security": None if self.security is None else self.security.mechanism,
        }


@runtime_checkable
class Channel(Protocol):
    """A client's link to one endpoint. Thread-safe: many threads may call at once."""

    @property
    def endpoint(self) -> str: ...

    def unary(self, method: str, request: bytes, timeout: Timeout = DEFAULT_TIMEOUT) -> bytes:
        """Send one request, return the one response. Raises :class:`FlameError` on failure."""
        ...

    def stream(self, method: str, request: bytes, timeout: Timeout = DEFAULT_TIMEOUT) -> Iterator[bytes]:
        """Send one request, iterate the responses in order. The deadline covers the whole stream.

        Closing the returned iterator early (``close()`` or garbage collection) cancels the call.
        """
        ...

    def close(self) -> None:
        """Release the channel. Idempotent. Calls made afterwards raise ``FlameError(UNAVAILABLE)``."""
        ...


@runtime_checkable
class AsyncChannel(Channel, Protocol):
    """A channel whose unary calls can complete later, on another thread (``async_calls``)."""

    def unary_async(self, method: str, request: bytes, timeout: Timeout = DEFAULT_TIMEOUT) -> Future[bytes]:
        """Send one request now and return at once; the future completes with the response or a FlameError.

        Callbacks added to the future run on the thread that completes it (often the channel's I/O
        thread): they must not block. Errors are the same as :meth:`Channel.unary`'s.
        """
        ...


_Read = TypeVar("_Read")


@runtime_checkable
class ReadingChannel(Channel, Protocol):
    """A channel that sends a request made of parts as they are, and lets the caller read the response where
    it arrived (optional: :func:`flamepy_core.kit.unary_read` calls it when a channel has it, and joins the
    parts and reads ``unary``'s answer otherwise). For large payloads: the parts are not joined into one
    message first, and the caller copies out of the response only what it keeps."""

    def unary_read(
        self,
        method: str,
        request: Sequence[bytes | memoryview],
        read: Callable[[memoryview], _Read],
        timeout: Timeout = DEFAULT_TIMEOUT,
    ) -> _Read:
        """Send one request, the concatenation of ``request``'s parts (not kept after this returns), and
        return what ``read`` returns for the response. ``read`` gets the response as a buffer that is valid
        only while it runs (the transport may read its next message into it): it copies what it keeps. It
        may run on a thread of the transport's, and what it raises is raised here. Errors and deadlines are
        :meth:`Channel.unary`'s; ``read`` is not called for an error."""
        ...


@runtime_checkable
class CallbackChannel(Channel, Protocol):
    """A channel that hands a unary call's outcome to a callback rather than a future (optional:
    :func:`flamepy_core.kit.unary_then` calls it when a channel has it, and uses
    :meth:`AsyncChannel.unary_async`'s future otherwise). For the calls a server makes per task: a
    ``Future`` costs a lock, a condition and a list of callbacks per call."""

    def unary_then(
        self,
        method: str,
        request: bytes,
        on_done: Callable[[bytes | FlameError], None],
        timeout: Timeout = DEFAULT_TIMEOUT,
    ) -> Callable[[], None]:
        """Send one request now and return ``arm``. ``on_done(response)``, or ``on_done(error)`` with
        :meth:`Channel.unary`'s errors and deadline (a :class:`FlameError`), runs exactly once, and never
        before ``arm()`` was called: on a thread of the transport's (it must not block), or inside ``arm``
        on the caller's thread when the outcome came first. Between the two the caller records the call,
        sure that its answer is not handled before. An error before the request went out is raised here,
        and ``on_done`` is then never called."""
        ...


StreamItemFn = Callable[[bytes], None]
StreamEndFn = Callable[[Optional[FlameError]], None]  # noqa: UP045 - a runtime alias that must work on 3.10


@runtime_checkable
class AsyncStreamChannel(Channel, Protocol):
    """A channel that feeds a server stream's responses to callbacks as they arrive (``async_streams``)."""

    def stream_async(
        self,
        method: str,
        request: bytes,
        on_item: StreamItemFn,
        on_end: StreamEndFn,
        timeout: Timeout = DEFAULT_TIMEOUT,
    ) -> None:
        """Open a server stream and return at once.

        ``on_item(response)`` runs for each response, in order; then ``on_end(None)`` when the stream
        ended, or ``on_end(error)`` (a :class:`FlameError`, with the codes :meth:`Channel.stream` would
        raise) when it failed, exactly once, after the last ``on_item``. An error found before sending (a
        request too large, a closed channel) is given to ``on_end`` too, never raised. Both run on a
        thread of the transport's (or on the caller's, for an error found at once): they must not block,
        and what they raise is the caller's bug (logged; the stream is not retried). For a caller that
        reads many streams at once and holds no thread per stream (the server's batches of tasks to its
        instances).
        """
        ...


@runtime_checkable
class Server(Protocol):
    """A running server. ``endpoint`` is the bound address, with a requested port 0 resolved."""

    @property
    def endpoint(self) -> str: ...

    def stop(self, grace: float | None = None) -> None:
        """Stop accepting calls; let running ones finish for up to ``grace`` seconds, then cancel them.

        Idempotent. Returns once the endpoint is free to be bound again.
        """
        ...


@runtime_checkable
class Transport(Protocol):
    """A configured transport: the factory of channels and servers for its schemes."""

    name: str
    schemes: tuple[str, ...]
    capabilities: TransportCapabilities

    def connect(self, endpoint: str) -> Channel:
        """A channel to ``endpoint``. Connecting is lazy: an absent server shows on the first call."""
        ...

    def serve(self, endpoint: str, handlers: Mapping[str, Handler]) -> Server:
        """Serve ``handlers`` (keyed by method path) on ``endpoint`` and return once it accepts calls."""
        ...


@runtime_checkable
class LocalTransport(Transport, Protocol):
    """A transport that declares ``local_schemes`` or ``in_process``: it makes private endpoints."""

    def local_endpoint(self, directory: str, name: str) -> str:
        """A private endpoint called ``name`` for a server of this machine (or this process), in ``directory``.

        For a socket file this is ``<scheme>://<directory>/<name>.<suffix>``; when the path would be too
        long for a socket the transport may answer a loopback endpoint with port 0 instead. The runtime
        uses it for the server's default listen, for instance links (there the endpoint must be fixed
        before anyone listens: a port-0 answer is refused) and for an in-process server's cache socket.
        """
        ...


@runtime_checkable
class SecureTransport(Transport, Protocol):
    """A transport whose ``security`` needs its server to hand credentials to the runtime's own instances."""

    def instance_credentials(
        self, server_options: Mapping[str, Any], directory: str
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """``(server options, client options)``: the server's options extended so that the instances it
        starts are admitted, and the client options those instances use (files go in ``directory``, which
        is private to the server). The runtime passes the client options to instances through the
        ``env`` of the matching client settings."""
        ...


@runtime_checkable
class KeyPairTransport(Transport, Protocol):
    """A transport whose security uses key pairs it can make (``flmctl keygen``)."""

    def make_key_pair(self, directory: str, name: str) -> tuple[str, str]:
        """Write a new key pair called ``name`` in ``directory``: ``(public file, secret file)``, the secret
        file readable by its owner only. Existing files are never overwritten."""
        ...


TransportFactory = Callable[..., Transport]


@dataclass(frozen=True)
class TransportSpec:
    """What a transport plugin declares, cheaply, before anything heavy is imported.

    ``load`` imports the implementation and returns its factory; it runs only when the transport is
    chosen. ``options`` are the keyword options the factory accepts (checked before calling it), and
    ``requires`` names the distributions to install when ``load`` fails with ImportError.
    """

    name: str
    schemes: tuple[str, ...]
    capabilities: TransportCapabilities
    load: Callable[[], TransportFactory]
    options: frozenset[str] = field(default_factory=frozenset)
    requires: tuple[str, ...] = ()
    description: str = ""
