"""Sizes and names: the largest message, method paths, error messages (a mixin of ``TransportTests``).

What the contract says and this module checks:

* the largest message a transport declares is what its wire carries: built with its defaults, it reports
  the size its spec declares and carries a message that large (up to what the run may allocate, the
  ``--flamepy-max-message`` cap); built with the ``max_message_size`` option, it reports that size,
  carries exactly that many bytes each way and refuses one more, whatever the size (a transport that
  rounds the option, or leaves a library's own default limit in place, fails here);
* method paths of any length up to :data:`~flamepy_core.contracts.bounds.MAX_METHOD_PATH_BYTES` reach their
  handler intact, and ``ctx.method`` is that path;
* a handler's error message of up to :data:`~flamepy_core.contracts.bounds.MAX_ERROR_MESSAGE_BYTES` of
  UTF-8, of any character width, reaches the caller unchanged; a longer one keeps its code and begins
  with the message's first :data:`~flamepy_core.contracts.bounds.ERROR_MESSAGE_KEPT_CHARS` characters.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from flamepy_conformance.probe import FAIL, REVERSE, pack_failure, probe_handlers
from flamepy_conformance.strategies import (
    error_codes,
    long_error_messages,
    long_method_paths,
    method_path_of_length,
    utf8_text_of_size,
)
from flamepy_conformance.transport_base import (
    TransportSuiteBase,
    _mentions,
    assert_same_bytes,
    expect_error,
)
from flamepy_core.contracts.bounds import ERROR_MESSAGE_KEPT_CHARS, MAX_ERROR_MESSAGE_BYTES, MAX_METHOD_PATH_BYTES
from flamepy_core.contracts.errors import FlameError, FlameErrorCode
from flamepy_core.contracts.transport import CallContext, Channel, Transport, UnaryHandler


def _check_boundary(channel: Channel, limit: int, timeout: float, what: str, *, over: bool) -> None:
    """``limit`` bytes cross both ways, byte-exact; with ``over``, ``limit + 1`` is refused naming both sizes."""
    payload = random.Random(limit).randbytes(limit)
    try:
        got = channel.unary(REVERSE, payload, timeout=timeout)
    except FlameError as err:
        raise AssertionError(
            f"{what}: a message of {limit} bytes (the declared largest) was refused: "
            f"FlameError({err.code.name}, {err.message!r})"
        ) from err
    assert_same_bytes(got, payload[::-1], f"{what}: response of {limit} bytes")
    if over:
        refused = expect_error(
            FlameErrorCode.MESSAGE_TOO_LARGE,
            lambda: channel.unary(REVERSE, bytes(limit + 1), timeout=timeout),
            f"{what}: a request of {limit + 1} bytes",
        )
        assert _mentions(refused.message, limit + 1) and _mentions(refused.message, limit), (
            f"{what}: the error must name both sizes ({limit + 1} and {limit}): {refused.message!r}"
        )


class BytesTests(TransportSuiteBase):
    """The largest message as declared and as configured, long method paths, long error messages."""

    def _declared(self) -> tuple[int, bool]:
        """The largest message the transport's spec declares, and whether it accepts the option to change it."""
        spec = self.plugin_registry().transport_spec(self.resolved_transport_name()).spec
        return spec.capabilities.max_message_size, "max_message_size" in spec.options

    # -- the tests -------------------------------------------------------------------------------------

    def test_default_largest_message_is_what_the_wire_carries(self) -> None:
        """Built with its defaults, it reports the size its spec declares and carries that much."""
        declared, configurable = self._declared()
        if "max_message_size" in self.transport_options:
            pytest.skip("transport_options sets max_message_size: the plugin's default is not what runs here")
        transport: Transport = self.make_transport_with(max_message_size=None) if configurable else self.transport
        reported = transport.capabilities.max_message_size
        assert reported == declared, (
            f"transport {transport.name} built with its defaults reports max_message_size {reported}, but its "
            f"spec declares {declared} (what `flmctl plugins` shows and the runtime relies on)"
        )
        size = min(declared, self.max_message_cap)
        what = f"transport {transport.name} built with its defaults (declared max_message_size {declared})"
        with self.served(probe_handlers(), transport=transport) as (_server, channel):
            _check_boundary(channel, size, max(self.call_timeout, 30.0), what, over=size == declared)

    def test_max_message_size_option_is_honoured(self) -> None:
        """Any ``max_message_size`` set: reported as set, carried exactly, one byte more refused."""
        declared, configurable = self._declared()
        if not configurable:
            pytest.skip(
                f"transport {self.transport.name} does not accept the option max_message_size (accept it to be checked)"
            )
        top = min(declared, self.max_message_cap)

        @self.hypothesis_settings(0.25)
        @example(limit=min(top, 64 * 1024 + 1))
        @example(limit=min(top, 1000))
        @given(limit=st.one_of(st.integers(1, min(top, 4096)), st.integers(1, top)))
        def check(limit: int) -> None:
            transport = self.make_transport_with(max_message_size=limit)
            reported = transport.capabilities.max_message_size
            assert reported == limit, f"built with max_message_size={limit}, the transport reports {reported}"
            with self.served(probe_handlers(), transport=transport) as (_server, channel):
                _check_boundary(channel, limit, self.call_timeout, f"max_message_size={limit}", over=True)

        check()

    def test_long_method_paths_arrive_intact(self) -> None:
        """Method paths up to the contract's longest reach their own handler; ``ctx.method`` is the path."""

        def answering(request: bytes, ctx: CallContext) -> bytes:
            return ctx.method.encode("ascii", "replace") + b"|" + request

        @self.hypothesis_settings(0.5)
        @example(paths=[method_path_of_length(MAX_METHOD_PATH_BYTES), method_path_of_length(256)])
        @given(paths=st.lists(long_method_paths(MAX_METHOD_PATH_BYTES), min_size=1, max_size=3, unique=True))
        def check(paths: list[str]) -> None:
            with self.served({p: UnaryHandler(answering) for p in paths}) as (_server, channel):
                for path in paths:
                    what = f"a call of a method path of {len(path)} bytes"
                    try:
                        got = channel.unary(path, b"request", timeout=self.call_timeout)
                    except FlameError as err:
                        raise AssertionError(
                            f"{what} (at most {MAX_METHOD_PATH_BYTES} must route): "
                            f"FlameError({err.code.name}, {err.message[:200]!r})"
                        ) from err
                    assert_same_bytes(got, path.encode("ascii") + b"|request", f"{what}: ctx.method and request")

        check()

    def test_long_error_messages_arrive_intact(self) -> None:
        """Error messages up to the contract's longest arrive unchanged; longer ones keep code and beginning."""
        room = self.max_message_size - 64  # the probe carries the message in its request
        limit = min(MAX_ERROR_MESSAGE_BYTES, room)
        with self.served(probe_handlers()) as (_server, channel):

            @self.hypothesis_settings(0.5)
            @example(code=FlameErrorCode.NOT_FOUND, message=utf8_text_of_size(limit))
            @given(code=error_codes(), message=long_error_messages(limit))
            def check(code: FlameErrorCode, message: str) -> None:
                size = len(message.encode("utf-8"))
                err = expect_error(
                    code,
                    lambda: channel.unary(FAIL, pack_failure(code, message), timeout=self.call_timeout),
                    f"a handler raising {code.name} with a message of {size} bytes",
                )
                if err.message != message:
                    at = next((i for i, (a, b) in enumerate(zip(message, err.message, strict=False)) if a != b), None)
                    at = min(len(message), len(err.message)) if at is None else at
                    raise AssertionError(
                        f"an error message of {size} bytes of UTF-8 ({len(message)} characters; up to "
                        f"{MAX_ERROR_MESSAGE_BYTES} bytes must arrive unchanged) came back as {len(err.message)} "
                        f"characters, differing from character {at} on: {err.message[at : at + 20]!r}"
                    )

            check()
            if room <= MAX_ERROR_MESSAGE_BYTES:
                return  # messages over the contract's limit do not fit this transport's requests
            message = utf8_text_of_size(min(4 * MAX_ERROR_MESSAGE_BYTES, room))
            err = expect_error(
                FlameErrorCode.INVALID_STATE,
                lambda: channel.unary(
                    FAIL, pack_failure(FlameErrorCode.INVALID_STATE, message), timeout=self.call_timeout
                ),
                f"a handler raising INVALID_STATE with a message of {len(message.encode())} bytes",
            )
            kept = message[:ERROR_MESSAGE_KEPT_CHARS]
            assert err.message.startswith(kept), (
                f"an error message over the limit must keep its first {ERROR_MESSAGE_KEPT_CHARS} characters; "
                f"it arrived as {err.message[:80]!r}..."
            )
