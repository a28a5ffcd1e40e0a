"""The plumbing every part of the serializer suite shares: the base class, its hooks, and helpers.

:class:`SerializerSuiteBase` builds the serializer under test and bounds hypothesis; it holds no tests.
The tests are grouped in :class:`~flamepy_conformance.SerializerTests` and the mixins it combines
(:mod:`.serializer_scale`, :mod:`.serializer_domain`), each deriving from this base. ``difference`` is the
exact comparison every round trip is judged by (types, float bits and dict order included).
"""

from __future__ import annotations

import datetime
import decimal
import math
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any, ClassVar

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st

from flamepy_conformance.options import SuiteOptions
from flamepy_conformance.strategies import values_for_domain, values_outside_domain
from flamepy_core.contracts.errors import FlameError
from flamepy_core.contracts.serializer import Serializer
from flamepy_core.plugins import PluginRegistry, get_registry


def _show(value: object, limit: int = 160) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def difference(sent: Any, got: Any, where: str = "value") -> str | None:
    """Where ``got`` differs from ``sent`` (types included), or None when it is an exact copy.

    Stricter than ``==``: ``1 == 1.0 == True`` and ``(1,) != [1]`` only by type, and ``0.0 == -0.0``;
    a serializer that promises a domain must give back the same types and the same float bits.
    """
    if type(sent) is not type(got):
        return f"{where}: sent {type(sent).__qualname__} {_show(sent)}, got {type(got).__qualname__} {_show(got)}"
    if isinstance(sent, float):
        same = (math.isnan(sent) and math.isnan(got)) or (
            sent == got and math.copysign(1.0, sent) == math.copysign(1.0, got)
        )
        return None if same else f"{where}: sent {sent!r}, got {got!r}"
    if isinstance(sent, complex):
        return difference(sent.real, got.real, f"{where}.real") or difference(sent.imag, got.imag, f"{where}.imag")
    if isinstance(sent, decimal.Decimal):
        return None if sent.as_tuple() == got.as_tuple() else f"{where}: sent {sent!r}, got {got!r}"
    if isinstance(sent, (list, tuple)):
        if len(sent) != len(got):
            return f"{where}: sent {len(sent)} items, got {len(got)}"
        for i, (a, b) in enumerate(zip(sent, got, strict=True)):
            found = difference(a, b, f"{where}[{i}]")
            if found:
                return found
        return None
    if isinstance(sent, dict):
        if list(sent) != list(got) and set(sent) == set(got):
            return f"{where}: keys came back in another order: sent {_show(list(sent))}, got {_show(list(got))}"
        if set(sent) != set(got):
            return f"{where}: sent keys {_show(list(sent))}, got {_show(list(got))}"
        got_keys = {k: k for k in got}
        for key, value in sent.items():
            found = difference(key, got_keys[key], f"{where} key {key!r}") or difference(
                value, got[key], f"{where}[{key!r}]"
            )
            if found:
                return found
        return None
    if isinstance(sent, (set, frozenset)):
        if sent != got:
            return f"{where}: sent {_show(sent)}, got {_show(got)}"
        got_items = {item: item for item in got}
        for item in sent:
            found = difference(item, got_items[item], f"{where} item {item!r}")
            if found:
                return found
        return None
    if isinstance(sent, datetime.datetime) and sent.tzinfo != got.tzinfo:
        return f"{where}: sent tzinfo {sent.tzinfo!r}, got {got.tzinfo!r}"
    return None if sent == got else f"{where}: sent {_show(sent)}, got {_show(got)}"


def assert_round_trip(serializer: Serializer, value: Any) -> bytes:
    """``dumps`` returns bytes and ``loads`` gives back an exact copy of ``value``; returns the bytes."""
    data = serializer.dumps(value)
    assert type(data) is bytes, (
        f"serializer {serializer.name!r}: dumps() returned {type(data).__qualname__}, not bytes, for {_show(value)}"
    )
    back = serializer.loads(data)
    found = difference(value, back)
    assert found is None, f"serializer {serializer.name!r} did not round-trip exactly: {found}"
    return data


def expect_flame_error(call: Callable[[], object], what: str, *must_mention: str, timeout: float) -> FlameError | None:
    """Run ``call`` on a helper thread; it must end within ``timeout`` s, and any error must be a FlameError.

    Returns the FlameError, or None when the call returned normally. Every text in ``must_mention`` must
    be in the error's message.
    """
    outcome: list[BaseException | None] = []

    def target() -> None:
        try:
            call()
        except BaseException as exc:  # report everything, including what the contract forbids
            outcome.append(exc)
        else:
            outcome.append(None)

    thread = threading.Thread(target=target, name="flamepy-conformance-call", daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"{what}: still running after {timeout} s (it must fail or finish, not hang)"
    error = outcome[0]
    if error is None:
        return None
    if not isinstance(error, FlameError):
        raise AssertionError(
            f"{what}: raised {type(error).__name__}: {error}; every failure must be a FlameError"
        ) from error
    for text in must_mention:
        assert text in error.message, f"{what}: the error does not mention {text!r}: {error.message!r}"
    return error


class SerializerSuiteBase(SuiteOptions):
    """What every serializer test stands on: the serializer under test, the values it promises, the bounds."""

    __flamepy_conformance__: ClassVar[bool] = True
    """Lets the pytest plugin mark the items of subclasses without importing this module."""

    serializer_name: ClassVar[str | None] = None
    """Registry name of the serializer; ``None`` means "take it from ``--flamepy-serializer``"."""
    serializer_options: ClassVar[Mapping[str, Any]] = {}
    """Keyword options for the serializer's factory (see :meth:`make_serializer`)."""
    max_examples: ClassVar[int] = 60
    """Hypothesis examples per property test (``--flamepy-max-examples`` overrides)."""
    call_timeout: ClassVar[float] = 10.0
    """Bound on one ``loads`` of garbage: a serializer that hangs fails instead of blocking the run."""
    threads: ClassVar[int] = 8
    """Threads of the concurrency tests."""
    shrink_failures: ClassVar[bool] = True
    """Shrink a failing example to the smallest one; False reports the first failure as found (faster)."""

    serializer: Serializer
    _flamepy_config: pytest.Config | None = None

    # -- hooks a subclass may override --------------------------------------------------------------

    def plugin_registry(self) -> PluginRegistry:
        """The registry the serializer is looked up in (override to use one with run-time plugins)."""
        return get_registry()

    def make_serializer(self) -> Serializer:
        """A fresh serializer under test: ``plugin_registry().serializer(name, **serializer_options)``."""
        return self.plugin_registry().serializer(self.resolved_serializer_name(), **dict(self.serializer_options))

    def values(self) -> st.SearchStrategy[Any]:
        """Values the serializer must round-trip exactly: by default, drawn from its declared domain."""
        try:
            return values_for_domain(self.serializer.domain)
        except ValueError as exc:
            pytest.skip(
                f"serializer {self.serializer.name} declares the domain {self.serializer.domain!r}, which the "
                f"suite cannot draw ({exc}); override SerializerTests.values() to supply a strategy"
            )

    def unencodable_values(self) -> st.SearchStrategy[Any] | None:
        """Values outside the domain, which ``dumps`` must refuse (None: the suite knows none)."""
        return values_outside_domain(self.serializer.domain)

    # -- plumbing ------------------------------------------------------------------------------------

    @pytest.fixture(autouse=True)
    def _flamepy_serializer_setup(self, request: pytest.FixtureRequest) -> Iterator[None]:
        """Per test: record the pytest config and build the serializer."""
        self._flamepy_config = request.config
        self.serializer = self.make_serializer()
        yield

    def resolved_serializer_name(self) -> str:
        """:attr:`serializer_name`, or the ``--flamepy-serializer`` option when that is ``None``."""
        return self._plugin_name(self.serializer_name, "flamepy_serializer", "serializer_name", "make_serializer")

    def examples(self, fraction: float = 1.0) -> int:
        """Hypothesis examples for a property test (a fraction of the budget for costly ones)."""
        base = int(self._option("flamepy_max_examples", self.max_examples))
        return max(1, int(base * fraction))

    def hypothesis_settings(self, fraction: float = 1.0) -> settings:
        """The suite's hypothesis settings: bounded examples, no per-example deadline, no database."""
        phases = list(Phase) if self.shrink_failures else [Phase.explicit, Phase.reuse, Phase.generate]
        return settings(
            max_examples=self.examples(fraction),
            deadline=None,
            database=None,
            print_blob=True,
            phases=phases,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
        )
