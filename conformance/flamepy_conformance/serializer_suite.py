"""``SerializerTests``: the conformance suite every flamepy serializer runs, bundled or third-party.

A plugin author subclasses it in a test module and names the serializer::

    from flamepy_conformance import SerializerTests

    class TestMySerializer(SerializerTests):
        serializer_name = "cbor"        # the name its flamepy.serializers entry point declares
        serializer_options = {}         # optional keyword options for the factory

What it proves, with hypothesis drawing values from the serializer's declared ``domain``
(:func:`flamepy_conformance.strategies.values_for_domain`):

* every value of the domain comes back *exactly*: same types all the way down (a tuple must not come
  back a list, ``1`` not ``1.0`` or ``True``), same values, same order, floats bit for bit;
* ``dumps`` returns ``bytes``, and decoding the same bytes twice gives the same value;
* a value outside the domain is refused when it is *encoded*, with ``FlameError(INVALID_ARGUMENT)`` that
  names the value's type and the serializer, so the error happens in the sender's process;
* bytes it did not write (random, truncated, corrupted) either decode or give a ``FlameError`` naming
  the serializer: never another exception type, and never a hang;
* payloads framed by :mod:`flamepy_core.serialization` are refused by a peer using another serializer,
  with an error naming both, and read back by a peer using this one; cloudpickle's stay plain bytes;
* it is thread-safe: concurrent calls do not mix up their values.

A serializer with a domain of its own (not one of :data:`~flamepy_conformance.strategies.DOMAINS`)
overrides :meth:`SerializerTests.values` (and :meth:`SerializerTests.unencodable_values`); until then
those tests skip, naming the domain. Other hooks: :meth:`SerializerTests.make_serializer` and
:meth:`SerializerTests.plugin_registry`.
"""

from __future__ import annotations

import functools
import threading
from typing import Any, TypeVar

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from flamepy_conformance.serializer_base import (
    SerializerSuiteBase,
    _show,
    assert_round_trip,
    difference,
    expect_flame_error,
)
from flamepy_conformance.serializer_domain import SerializerDomainTests
from flamepy_conformance.serializer_scale import SerializerScaleTests
from flamepy_conformance.strategies import garbage
from flamepy_core.contracts.errors import FlameError, FlameErrorCode
from flamepy_core.plugins import get_registry
from flamepy_core.serialization import (
    FRAME_MAGIC,
    PLAIN_SERIALIZER,
    decode_payload,
    encode_payload,
    frame_header,
)

T = TypeVar("T")

_GARBAGE_EXAMPLES = (
    b"",
    b"\x00",
    b"\xff" * 9,
    b"\x80\x05",
    b"not a payload",
    b"[[[[[[[[[[[[[[[[",
    b"\xdd\xff\xff\xff\xff",
    b"\xc1",
    FRAME_MAGIC + b"\x04json{}",
)
"""Fixed garbage tried on every serializer: empty, truncated headers, huge declared lengths, stray frames."""


class _Other:
    """A stand-in for "the peer's serializer": a different name, and bytes nobody else writes."""

    domain = "bytes"

    def __init__(self, name: str) -> None:
        self.name = name

    def dumps(self, obj: Any) -> bytes:
        return repr(obj).encode("utf-8", "surrogatepass")

    def loads(self, data: bytes) -> Any:
        return data


class SerializerTests(SerializerScaleTests, SerializerDomainTests, SerializerSuiteBase):
    """The serializer conformance suite. Subclass it as ``Test...`` and set :attr:`serializer_name`.

    The tests below are the core of the contract; the mixins add sizes, threads and the domain's edges.
    Hooks and knobs are those of :class:`~flamepy_conformance.serializer_base.SerializerSuiteBase`.
    """

    def _peer_name(self) -> str:
        """A serializer name that is not the one under test."""
        return "conformance-other" if self.serializer.name != "conformance-other" else "conformance-another"

    # -- the declaration -------------------------------------------------------------------------------

    def test_serializer_declares_its_contract(self) -> None:
        """Its name and domain are what its spec declares, and the name fits a payload frame."""
        name = self.resolved_serializer_name()
        s = self.serializer
        assert isinstance(s.name, str) and s.name, f"serializer {name!r}: name must be a non-empty str, not {s.name!r}"
        assert isinstance(s.domain, str) and s.domain, f"serializer {s.name!r}: domain must be a non-empty str"
        specs = [c.spec for c in self.plugin_registry().serializers() if c.spec.name == name]
        if specs:
            spec = specs[-1]
            assert s.name == spec.name, f"the spec declares the name {spec.name!r}; the serializer says {s.name!r}"
            assert s.domain == spec.domain, (
                f"serializer {s.name!r}: the spec declares the domain {spec.domain!r}; the serializer says {s.domain!r}"
            )
        assert 0 < len(s.name.encode("utf-8")) < 256, f"serializer name {s.name!r} must be 1 to 255 bytes of UTF-8"
        assert callable(s.dumps) and callable(s.loads)

    # -- round trips -------------------------------------------------------------------------------------

    def test_serializer_round_trips_its_domain_exactly(self) -> None:
        """Every value drawn from the declared domain comes back with the same types and values."""
        values = self.values()

        @self.hypothesis_settings()
        @example(value=None)
        @given(value=values)
        def check(value: Any) -> None:
            assert_round_trip(self.serializer, value)

        check()

    def test_serializer_dumps_returns_bytes_and_decodes_deterministically(self) -> None:
        """``dumps`` gives ``bytes`` (not bytearray or memoryview); decoding them twice gives equal values."""
        values = self.values()

        @self.hypothesis_settings(0.5)
        @given(value=values)
        def check(value: Any) -> None:
            data = self.serializer.dumps(value)
            assert type(data) is bytes, f"dumps() returned {type(data).__qualname__}, not bytes"
            first, second = self.serializer.loads(data), self.serializer.loads(data)
            found = difference(first, second)
            assert found is None, f"decoding the same {len(data)} bytes twice gave different values: {found}"

        check()

    # -- errors --------------------------------------------------------------------------------------------

    def test_serializer_refuses_values_outside_its_domain_when_encoding(self) -> None:
        """A value it cannot carry fails in ``dumps`` with FlameError(INVALID_ARGUMENT) naming type and serializer."""
        outside = self.unencodable_values()
        if outside is None:
            pytest.skip(f"the suite knows no values outside the domain {self.serializer.domain!r}")

        @self.hypothesis_settings(0.5)
        @given(value=outside)
        def check(value: Any) -> None:
            kind = type(value).__qualname__
            what = f"serializer {self.serializer.name!r}: dumps({kind} {_show(value, 60)})"
            try:
                data = self.serializer.dumps(value)
            except FlameError as err:
                assert err.code == FlameErrorCode.INVALID_ARGUMENT, (
                    f"{what}: code {err.code.name}, not INVALID_ARGUMENT"
                )
                assert self.serializer.name in err.message, f"{what}: the error does not name the serializer: {err}"
                assert kind in err.message, f"{what}: the error does not name the type {kind}: {err}"
                return
            except Exception as exc:
                raise AssertionError(f"{what}: raised {type(exc).__name__}: {exc}; it must be a FlameError") from exc
            raise AssertionError(f"{what}: returned {len(data)} bytes for a value outside the domain")

        check()

    def test_serializer_decodes_garbage_or_names_itself(self) -> None:
        """Bytes it did not write either decode or raise FlameError naming it: nothing else, and no hang."""
        name = self.serializer.name

        def check_one(data: bytes) -> None:
            what = f"serializer {name!r}: loads({_show(data, 60)})"
            err = expect_flame_error(lambda: self.serializer.loads(data), what, name, timeout=self.call_timeout)
            if err is not None:
                assert err.code == FlameErrorCode.INVALID_ARGUMENT, (
                    f"{what}: code {err.code.name}, not INVALID_ARGUMENT"
                )

        for data in _GARBAGE_EXAMPLES:
            check_one(data)

        @self.hypothesis_settings()
        @given(data=garbage())
        def check(data: bytes) -> None:
            check_one(data)

        check()

    def test_serializer_truncated_or_corrupted_output_is_a_flame_error(self) -> None:
        """Its own output cut short or with a byte flipped decodes or fails with a FlameError naming it."""
        values = self.values()
        name = self.serializer.name

        @self.hypothesis_settings(0.5)
        @given(value=values, cut=st.integers(min_value=0), flip=st.integers(min_value=0, max_value=255))
        def check(value: Any, cut: int, flip: int) -> None:
            data = self.serializer.dumps(value)
            if not data:
                return
            at = cut % len(data)
            for damaged in (data[:at], data[:at] + bytes([data[at] ^ (flip or 1)]) + data[at + 1 :]):
                what = f"serializer {name!r}: loads of its own output damaged at byte {at}"
                call = functools.partial(self.serializer.loads, damaged)
                expect_flame_error(call, what, name, timeout=self.call_timeout)

        check()

    # -- framing on the wire ----------------------------------------------------------------------------

    def test_serializer_payload_framing_detects_a_mismatch(self) -> None:
        """A peer using another serializer refuses this one's payloads, naming both; a peer using it reads them."""
        values = self.values()
        mine = self.serializer.name
        other = _Other(self._peer_name())

        @self.hypothesis_settings(0.5)
        @given(value=values)
        def check(value: Any) -> None:
            payload = encode_payload(value, self.serializer)
            if mine == PLAIN_SERIALIZER:
                assert payload == self.serializer.dumps(value), "cloudpickle payloads must stay plain (Flame's bytes)"
            else:
                assert payload.startswith(frame_header(mine)), f"the {mine!r} payload is not framed with its name"
            found = difference(value, decode_payload(payload, self.serializer, peer="client"))
            assert found is None, f"a framed payload did not round-trip: {found}"
            with pytest.raises(FlameError) as info:
                decode_payload(payload, other, peer="client")
            message = info.value.message
            assert info.value.code == FlameErrorCode.INVALID_ARGUMENT, message
            assert f"'{mine}'" in message and f"'{other.name}'" in message, f"both names must be in: {message}"
            assert "this service uses" in message, message

        check()

    def test_serializer_refuses_payloads_of_another_serializer(self) -> None:
        """A payload framed by another serializer (or plain cloudpickle bytes) is refused by name, not decoded."""
        mine = self.serializer.name
        other = _Other(self._peer_name())
        foreign = encode_payload([1, "two"], other)
        with pytest.raises(FlameError) as info:
            decode_payload(foreign, self.serializer, peer="service", what="result")
        message = info.value.message
        assert f"'{other.name}'" in message and f"'{mine}'" in message, message
        assert "this client uses" in message, message
        if mine != PLAIN_SERIALIZER:
            plain = get_registry().serializer(PLAIN_SERIALIZER).dumps([1, "two"])
            with pytest.raises(FlameError) as info:
                decode_payload(plain, self.serializer, peer="service", what="result")
            message = info.value.message
            assert f"'{PLAIN_SERIALIZER}'" in message and f"'{mine}'" in message, message

    # -- threads -------------------------------------------------------------------------------------------

    def test_serializer_is_thread_safe(self) -> None:
        """Threads encoding and decoding at once each get their own value back."""
        values = self.values()

        @self.hypothesis_settings(0.25)
        @given(batch=st.lists(values, min_size=self.threads, max_size=self.threads))
        def check(batch: list[Any]) -> None:
            barrier = threading.Barrier(len(batch))
            problems: list[str] = []

            def work(value: Any) -> None:
                barrier.wait(timeout=self.call_timeout)
                for _ in range(20):
                    try:
                        found = difference(value, self.serializer.loads(self.serializer.dumps(value)))
                    except Exception as exc:
                        found = f"{type(exc).__name__}: {exc}"
                    if found:
                        problems.append(found)
                        return

            workers = [threading.Thread(target=work, args=(v,), daemon=True) for v in batch]
            for w in workers:
                w.start()
            for w in workers:
                w.join(self.call_timeout)
            assert not any(w.is_alive() for w in workers), "a thread was still encoding after the timeout"
            assert not problems, f"concurrent use mixed values up: {problems[0]}"

        check()


__all__ = ["SerializerTests", "assert_round_trip", "difference", "expect_flame_error"]
