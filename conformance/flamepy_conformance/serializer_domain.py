"""The edges of a serializer's domain (a mixin of :class:`~flamepy_conformance.SerializerTests`).

What the contract says and this module checks:

* a subclass of a domain type (an ``int`` subclass, an ``IntEnum``, a ``str``, ``list`` or ``dict``
  subclass, an ``OrderedDict``), alone or nested, comes back as exactly what was sent, or is refused in
  ``dumps``; it is never silently turned into its base type (``json.dumps`` would, and ``isinstance``
  checks let it through);
* a value outside the domain is refused with the same error every time: the same code
  (``INVALID_ARGUMENT``) and the same message, naming its type and the serializer, however often and from
  whichever thread it is tried; never a bare ``TypeError`` on the second try, never bytes.
"""

from __future__ import annotations

import collections
import threading
from typing import Any, ClassVar

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flamepy_conformance.serializer_base import SerializerSuiteBase, _show, difference
from flamepy_conformance.strategies import (
    ConformanceBytes,
    ConformanceColour,
    ConformanceDict,
    ConformanceFloat,
    ConformanceInt,
    ConformanceList,
    ConformanceStr,
    domain_subclass_values,
)
from flamepy_core.contracts.errors import FlameError, FlameErrorCode

_SUBCLASSES = (
    ConformanceInt,
    ConformanceFloat,
    ConformanceStr,
    ConformanceBytes,
    ConformanceList,
    ConformanceDict,
    ConformanceColour,
    collections.OrderedDict,
)


def _subclass_in(value: Any) -> type | None:
    """The type of the first subclass instance in ``value`` (it may sit in a plain list or dict)."""
    if isinstance(value, _SUBCLASSES):
        return type(value)
    if type(value) is list:
        return next((t for t in map(_subclass_in, value) if t is not None), None)
    if type(value) is dict:
        return next((t for t in map(_subclass_in, value.values()) if t is not None), None)
    return None


class SerializerDomainTests(SerializerSuiteBase):
    """Subclasses of domain types never change silently; refusals are the same every time."""

    refusal_repeats: ClassVar[int] = 3
    """How often the same refused value is tried (one of the tries on another thread)."""

    def subclass_values(self) -> st.SearchStrategy[Any]:
        """Values holding subclasses of domain types (override if your domain has other types)."""
        return domain_subclass_values()

    def _outcome(self, value: Any, what: str) -> bytes | tuple[FlameErrorCode, str]:
        """``dumps(value)``: its bytes, or its FlameError's (code, message); any other exception fails."""
        try:
            return self.serializer.dumps(value)
        except FlameError as err:
            return (err.code, err.message)
        except Exception as exc:
            raise AssertionError(
                f"{what}: raised {type(exc).__name__}: {exc}; every refusal must be a FlameError"
            ) from exc

    def _refused_alike(self, value: Any, kind: type, what: str) -> None:
        """``dumps(value)`` fails with INVALID_ARGUMENT naming ``kind`` and the serializer, the same every try."""
        name = self.serializer.name
        outcomes = [self._outcome(value, what) for _ in range(self.refusal_repeats - 1)]
        elsewhere: list[bytes | tuple[FlameErrorCode, str]] = []
        thread = threading.Thread(target=lambda: elsewhere.append(self._outcome(value, what)), daemon=True)
        thread.start()
        thread.join(self.call_timeout)
        assert elsewhere, f"{what}: dumps on another thread did not return within {self.call_timeout} s"
        outcomes += elsewhere
        first = outcomes[0]
        assert isinstance(first, tuple), f"{what}: dumps returned {len(first)} bytes for a value it cannot carry"
        code, message = first
        assert code == FlameErrorCode.INVALID_ARGUMENT, f"{what}: refused with {code.name}, not INVALID_ARGUMENT"
        assert name in message, f"{what}: the error does not name the serializer {name!r}: {message!r}"
        assert kind.__qualname__ in message, (
            f"{what}: the error does not name the type {kind.__qualname__}: {message!r}"
        )
        for n, other in enumerate(outcomes[1:], start=2):
            if other != first:
                got = (
                    f"{len(other)} bytes" if isinstance(other, bytes) else f"FlameError({other[0].name}, {other[1]!r})"
                )
                raise AssertionError(
                    f"{what}: try {n} gave {got}; the first gave FlameError({code.name}, {message!r}): a refused "
                    f"value must be refused the same way every time"
                )

    def test_serializer_never_silently_converts_subclasses_of_its_domain_types(self) -> None:
        """An ``IntEnum``, a ``str`` or ``dict`` subclass...: back exactly as sent, or refused, never converted."""
        name = self.serializer.name

        @self.hypothesis_settings(0.5)
        @given(value=self.subclass_values())
        def check(value: Any) -> None:
            kind = _subclass_in(value)
            assert kind is not None, f"the strategy drew no subclass: {value!r}"
            what = f"serializer {name!r}: dumps({_show(value, 60)}) holding a {kind.__qualname__}"
            outcome = self._outcome(value, what)
            if isinstance(outcome, tuple):
                self._refused_alike(value, kind, what)
                return
            try:
                back = self.serializer.loads(outcome)
            except FlameError as err:
                raise AssertionError(f"{what}: encoded, but its own bytes failed to decode: {err}") from err
            found = difference(value, back)
            assert found is None, f"{what}: silently converted (refuse it in dumps, or give it back as sent): {found}"

        check()

    def test_serializer_refuses_values_outside_its_domain_the_same_way_every_time(self) -> None:
        """A value it cannot carry: the same FlameError(INVALID_ARGUMENT) on every try, on any thread."""
        outside = self.unencodable_values()
        if outside is None:
            pytest.skip(f"the suite knows no values outside the domain {self.serializer.domain!r}")
        name = self.serializer.name

        @self.hypothesis_settings(0.25)
        @given(value=outside)
        def check(value: Any) -> None:
            kind = type(value)
            self._refused_alike(value, kind, f"serializer {name!r}: dumps({kind.__qualname__} {_show(value, 60)})")

        check()
