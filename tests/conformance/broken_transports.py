"""Deliberately broken transports, to prove the conformance suite catches real contract bugs.

Each wraps the in-memory transport (or patches a bundled one) and breaks exactly one rule, the way a real
transport might. The first four are here:

* ``broken-dropbyte``  - loses one byte of unary responses longer than 40 bytes (short ones pass, so
  only a suite that tries longer payloads notices);
* ``broken-reorder``   - swaps adjacent stream items;
* ``broken-swallow``   - turns every ``FlameError`` into ``INTERNAL`` (keeping the message);
* ``broken-deadlines`` - ignores the caller's deadline and waits for the handler however long it takes.

The others, one module per area of the contract, are ``broken_timing.py`` (deadlines), ``broken_streams.py``,
``broken_sizes.py`` (largest message, method paths, error messages), ``broken_ids.py`` (late replies) and
``broken_resources.py`` (stop, leaks, fork); each module's docstring lists its faults.

And one that is not broken but modest, ``limited-unary``: no streaming and no restart on a used endpoint,
declared in its capabilities, so the suite must skip those parts rather than fail it.

:class:`BrokenTransportsPlugin` declares them all for run-time registration in a registry of their own;
nothing here is an entry point, so no other test can pick them up by accident (a test that needs them in
another process names this module in ``FLAMEPY_PLUGINS``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from flamepy_transports.inmem.transport import DEFAULT_MAX_MESSAGE_SIZE, InMemoryTransport

from flamepy_core.contracts import TransportCapabilities, TransportSpec, hookimpl
from flamepy_core.contracts.errors import FlameError, FlameErrorCode
from flamepy_core.contracts.transport import DEFAULT_TIMEOUT, Channel, Handler, Server, Timeout, TransportFactory
from flamepy_core.transport_kit import DEFAULT_CALL_TIMEOUT

DROP_ABOVE = 40
"""broken-dropbyte only corrupts responses longer than this, so tiny probes would not notice."""


class _Wrapped:
    """Passes everything through to the in-memory channel; subclasses break one thing."""

    def __init__(self, inner: Channel) -> None:
        self._inner = inner

    @property
    def endpoint(self) -> str:
        return self._inner.endpoint

    def unary(self, method: str, request: bytes, timeout: Timeout = DEFAULT_TIMEOUT) -> bytes:
        return self._inner.unary(method, request, timeout)

    def stream(self, method: str, request: bytes, timeout: Timeout = DEFAULT_TIMEOUT) -> Iterator[bytes]:
        return self._inner.stream(method, request, timeout)

    def close(self) -> None:
        self._inner.close()


class DropByteChannel(_Wrapped):
    """Drops the middle byte of every unary response longer than :data:`DROP_ABOVE` bytes."""

    def unary(self, method: str, request: bytes, timeout: Timeout = DEFAULT_TIMEOUT) -> bytes:
        response = self._inner.unary(method, request, timeout)
        if len(response) > DROP_ABOVE:
            middle = len(response) // 2
            response = response[:middle] + response[middle + 1 :]
        return response


class ReorderChannel(_Wrapped):
    """Delivers stream items in swapped pairs (2, 1, 4, 3, ...); errors still arrive after the items."""

    def stream(self, method: str, request: bytes, timeout: Timeout = DEFAULT_TIMEOUT) -> Iterator[bytes]:
        items = self._inner.stream(method, request, timeout)

        def swapped() -> Iterator[bytes]:
            held: bytes | None = None
            try:
                for item in items:
                    if held is None:
                        held = item
                    else:
                        yield item
                        yield held
                        held = None
            except FlameError:
                if held is not None:
                    yield held
                raise
            if held is not None:
                yield held

        return swapped()


def _as_internal(err: FlameError) -> FlameError:
    return FlameError(FlameErrorCode.INTERNAL, err.message)


class SwallowCodesChannel(_Wrapped):
    """Reports every FlameError as INTERNAL, as a transport that maps no codes would."""

    def unary(self, method: str, request: bytes, timeout: Timeout = DEFAULT_TIMEOUT) -> bytes:
        try:
            return self._inner.unary(method, request, timeout)
        except FlameError as err:
            raise _as_internal(err) from err

    def stream(self, method: str, request: bytes, timeout: Timeout = DEFAULT_TIMEOUT) -> Iterator[bytes]:
        try:
            items = self._inner.stream(method, request, timeout)
        except FlameError as err:
            raise _as_internal(err) from err

        def swallowing() -> Iterator[bytes]:
            try:
                yield from items
            except FlameError as err:
                raise _as_internal(err) from err

        return swallowing()


class IgnoreDeadlinesChannel(_Wrapped):
    """Drops the caller's deadline: every call waits for the handler, however long it takes."""

    def unary(self, method: str, request: bytes, timeout: Timeout = DEFAULT_TIMEOUT) -> bytes:
        return self._inner.unary(method, request, None)

    def stream(self, method: str, request: bytes, timeout: Timeout = DEFAULT_TIMEOUT) -> Iterator[bytes]:
        return self._inner.stream(method, request, None)


CHANNEL_FLAWS: dict[str, Callable[[Channel], Channel]] = {
    "dropbyte": DropByteChannel,
    "reorder": ReorderChannel,
    "swallow": SwallowCodesChannel,
    "deadlines": IgnoreDeadlinesChannel,
}


class InmemWithFlaw:
    """The in-memory transport with one flaw; a subclass overrides the part it breaks.

    It declares (``capabilities``) what the option asks for; :meth:`wire_limit` is what its wire really
    carries, :meth:`wrap` what its channels do to calls, :meth:`serve` what its servers do.
    """

    name = "broken"
    schemes: tuple[str, ...] = ("inmem",)
    fault = "no fault"
    spec_capabilities = TransportCapabilities(max_message_size=DEFAULT_MAX_MESSAGE_SIZE, cross_process=False)
    spec_options = frozenset({"max_message_size", "default_timeout"})

    def __init__(
        self, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE, default_timeout: float | None = DEFAULT_CALL_TIMEOUT
    ) -> None:
        self.default_timeout = default_timeout
        self._inner = InMemoryTransport(
            max_message_size=self.wire_limit(max_message_size), default_timeout=default_timeout
        )
        self.capabilities = TransportCapabilities(max_message_size=max_message_size, cross_process=False)

    def wire_limit(self, declared: int) -> int:
        return declared

    def wrap(self, channel: Channel) -> Channel:
        return channel

    def connect(self, endpoint: str) -> Channel:
        return self.wrap(self._inner.connect(endpoint))

    def serve(self, endpoint: str, handlers: Mapping[str, Handler]) -> Server:
        return self._inner.serve(endpoint, handlers)


def channel_flaw(name: str, wrapper: Callable[[Channel], Channel]) -> type[InmemWithFlaw]:
    """An :class:`InmemWithFlaw` whose channels are wrapped in ``wrapper`` (whose docstring says the fault)."""
    return type(
        f"Broken_{name}",
        (InmemWithFlaw,),
        {"name": f"broken-{name}", "fault": (wrapper.__doc__ or name).strip(), "wrap": lambda self, c: wrapper(c)},
    )


class UnaryOnlyChannel(_Wrapped):
    """A channel of a transport that claims no streaming: any stream call is a crash, not an error."""

    def stream(self, method: str, request: bytes, timeout: Timeout = DEFAULT_TIMEOUT) -> Iterator[bytes]:
        raise NotImplementedError("limited-unary does not stream (and says so in its capabilities)")


class LimitedTransport:
    """Not broken but modest: no streaming, no restart on a used endpoint, and it declares exactly that.

    The suite must skip what this transport does not claim (naming the capability) and pass the rest: a
    stream call or a second ``serve`` on an endpoint would crash here, so any ungated test shows.
    """

    name = "limited-unary"
    schemes: tuple[str, ...] = ("inmem",)

    def __init__(self, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> None:
        self._inner = InMemoryTransport(max_message_size=max_message_size)
        self.capabilities = TransportCapabilities(
            max_message_size=max_message_size, streaming=False, cross_process=False, restart_same_endpoint=False
        )
        self._used: set[str] = set()

    def connect(self, endpoint: str) -> Channel:
        return UnaryOnlyChannel(self._inner.connect(endpoint))

    def serve(self, endpoint: str, handlers: Mapping[str, Handler]) -> Server:
        if endpoint in self._used:
            raise RuntimeError(f"limited-unary cannot serve {endpoint} twice (restart_same_endpoint=False)")
        self._used.add(endpoint)
        return self._inner.serve(endpoint, handlers)


def all_broken() -> list[type[Any]]:
    """Every broken transport class, from this module and the per-area ones."""
    import broken_deferred
    import broken_ids
    import broken_resources
    import broken_sizes
    import broken_streams
    import broken_timing

    found: list[type[Any]] = [channel_flaw(name, wrapper) for name, wrapper in CHANNEL_FLAWS.items()]
    for module in (broken_timing, broken_streams, broken_sizes, broken_ids, broken_resources, broken_deferred):
        found += module.BROKEN
    return found


def _loader(cls: type[Any]) -> Callable[[], TransportFactory]:
    return lambda: cls


class BrokenTransportsPlugin:
    """A flamepy plugin declaring every ``broken-<flaw>`` transport; register it at run time."""

    @hookimpl
    def flamepy_add_transports(self) -> list[TransportSpec]:
        return [
            TransportSpec(
                name=cls.name,
                schemes=cls.schemes,
                capabilities=cls.spec_capabilities,
                load=_loader(cls),
                options=cls.spec_options,
                description=f"a deliberately broken transport: {cls.fault}",
            )
            for cls in all_broken()
        ] + [
            TransportSpec(
                name=LimitedTransport.name,
                schemes=LimitedTransport.schemes,
                capabilities=TransportCapabilities(
                    max_message_size=DEFAULT_MAX_MESSAGE_SIZE,
                    streaming=False,
                    cross_process=False,
                    restart_same_endpoint=False,
                ),
                load=lambda: LimitedTransport,
                options=frozenset({"max_message_size"}),
                description="the in-memory transport without streaming or restarts, declared as such",
            )
        ]


@hookimpl
def flamepy_add_transports() -> list[TransportSpec]:
    """The same declarations at module level, so ``FLAMEPY_PLUGINS=broken_transports`` can load them."""
    return BrokenTransportsPlugin().flamepy_add_transports()
