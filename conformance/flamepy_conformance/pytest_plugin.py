"""The pytest plugin (``pytest11`` entry point ``flamepy_conformance``).

Loaded into *every* pytest run of an environment where flamepy is installed, so it is kept cheap and
inert: it only adds ``--flamepy-*`` options, registers the suite's markers and marks the suite's tests.
It imports neither hypothesis nor a plugin; the suites are imported only by test modules that subclass
:class:`~flamepy_conformance.TransportTests` or :class:`~flamepy_conformance.SerializerTests`.
"""

from __future__ import annotations

import re
import sys

import pytest

_REWRITE = (
    "flamepy_conformance.options",
    "flamepy_conformance.transport_base",
    "flamepy_conformance.transport_bytes",
    "flamepy_conformance.transport_concurrency",
    "flamepy_conformance.transport_deadlines",
    "flamepy_conformance.transport_resources",
    "flamepy_conformance.transport_streams",
    "flamepy_conformance.transport_suite",
    "flamepy_conformance.stateful",
    "flamepy_conformance.serializer_base",
    "flamepy_conformance.serializer_domain",
    "flamepy_conformance.serializer_scale",
    "flamepy_conformance.serializer_suite",
    "flamepy_conformance.service_suite",
)
"""The suite's modules use plain asserts; pytest rewrites them for readable failures if it is told before
they are imported (the lazy package ``__init__`` guarantees they are not imported early)."""

DEFAULT_MAX_MESSAGE = 16 * 1024 * 1024

_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 1000**2, "mb": 1000**2, "mib": 1024**2}
_UNITS.update({"g": 1000**3, "gb": 1000**3, "gib": 1024**3})


def parse_size(text: str) -> int:
    """``"16777216"``, ``"16MiB"``, ``"512k"`` -> bytes. Used by both the option and the command."""
    match = re.fullmatch(r"\s*(\d+)\s*([a-zA-Z]*)\s*", text)
    unit = match.group(2).lower() if match else ""
    if not match or unit not in _UNITS:
        raise ValueError(f"not a size in bytes: {text!r} (write e.g. 16777216, 16MiB or 512KiB)")
    return int(match.group(1)) * _UNITS[unit]


def _size_option(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise pytest.UsageError(str(exc)) from None


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("flamepy-conformance", "flamepy conformance suite (transports and serializers)")
    group.addoption(
        "--flamepy-transport",
        dest="flamepy_transport",
        metavar="NAME",
        default=None,
        help="transport (registry name) for TransportTests subclasses that leave transport_name unset",
    )
    group.addoption(
        "--flamepy-serializer",
        dest="flamepy_serializer",
        metavar="NAME",
        default=None,
        help="serializer (registry name) for SerializerTests subclasses that leave serializer_name unset",
    )
    group.addoption(
        "--flamepy-max-message",
        dest="flamepy_max_message",
        metavar="BYTES",
        type=_size_option,
        default=DEFAULT_MAX_MESSAGE,
        help="largest message the suite builds; transports that accept max_message_size are capped to it "
        "so the size boundary is probed affordably (default: 16MiB)",
    )
    group.addoption(
        "--flamepy-max-examples",
        dest="flamepy_max_examples",
        metavar="N",
        type=int,
        default=None,
        help="hypothesis examples per property test of the suite (default: the class's max_examples)",
    )


def pytest_configure(config: pytest.Config) -> None:
    # Here rather than at import: a process that imported this module before pytest.main() (the
    # flamepy-conformance command) had no rewrite hook yet; by configure time pytest has installed it.
    pending = [name for name in _REWRITE if name not in sys.modules]
    if pending:
        pytest.register_assert_rewrite(*pending)
    config.addinivalue_line("markers", "flamepy_conformance: a test of the flamepy conformance suite")
    config.addinivalue_line(
        "markers",
        "flamepy_capability(name, ...): needs transport capabilities; skipped, naming the first one "
        "missing, when the transport does not declare it",
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the suite's tests, so ``-m flamepy_conformance`` selects (or deselects) them."""
    for item in items:
        cls = getattr(item, "cls", None)
        if cls is not None and getattr(cls, "__flamepy_conformance__", False):
            item.add_marker(pytest.mark.flamepy_conformance)
