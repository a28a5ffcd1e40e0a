"""The conformance suite fails transports that break the contract, and fails the *right* tests.

Each deliberately broken transport (see ``broken_transports.py``) is registered at run time in a registry
of its own, and the suite runs against it in a separate pytest process (pytester), selecting with ``-k``
the tests about the flaw plus a few it must not affect. A flaw must make exactly the expected tests fail,
for the expected reason, while the unaffected ones still pass: a suite that fails everything, or the
wrong thing, proves nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

_TEST_MODULE = """
from broken_transports import BrokenTransportsPlugin
from flamepy_conformance import TransportTests
from flamepy_core.plugins import PluginRegistry

REGISTRY = PluginRegistry(autoload=False, strict=True)
REGISTRY.register(BrokenTransportsPlugin(), name="broken-transports")


class TestBroken(TransportTests):
    transport_name = "{transport}"

    def plugin_registry(self) -> PluginRegistry:
        return REGISTRY
"""

_RESULT_LINE = re.compile(r"^(PASSED|FAILED|ERROR) \S+::TestBroken::(test_\w+)")


@dataclass(frozen=True)
class Flaw:
    """One broken transport: which tests it must fail (and why) and which it must leave passing."""

    name: str
    select: str
    must_fail: frozenset[str]
    must_pass: frozenset[str]
    evidence: str
    """Text the failure report must contain: the suite failed for this flaw, not for something else."""


FLAWS = [
    Flaw(
        "dropbyte",
        "unary_round_trip or unary_empty_payload or payload_at_max_size or concurrent_callers or every_error_code",
        frozenset(
            {
                "test_unary_round_trip",
                "test_payload_at_max_size_round_trips",
                "test_concurrent_callers_get_their_own_answers",
            }
        ),
        frozenset({"test_unary_empty_payload", "test_every_error_code_crosses_intact"}),
        "first difference at offset",
    ),
    Flaw(
        "reorder",
        "stream_keeps_order or stream_error_after_items or stream_empty or unary_round_trip",
        frozenset({"test_stream_keeps_order", "test_stream_error_after_items"}),
        frozenset({"test_stream_empty", "test_unary_round_trip"}),
        "stream items differ",
    ),
    Flaw(
        "swallow",
        "every_error_code or error_code_and_message or unknown_method or plain_exception or stream_keeps_order",
        frozenset(
            {
                "test_every_error_code_crosses_intact",
                "test_error_code_and_message_cross_intact",
                "test_unknown_method_is_unimplemented",
            }
        ),
        frozenset({"test_plain_exception_becomes_internal", "test_stream_keeps_order"}),
        "got FlameError(INTERNAL",
    ),
    Flaw(
        "deadlines",
        "deadline_exceeded or sees_method_and_deadline or unary_round_trip",
        frozenset(
            {
                "test_unary_deadline_exceeded",
                "test_stream_deadline_exceeded",
                "test_handler_context_sees_method_and_deadline",
            }
        ),
        frozenset({"test_unary_round_trip"}),
        "expected FlameError(DEADLINE_EXCEEDED), but the call returned",
    ),
]


def _run_suite(pytester: pytest.Pytester, transport: str, *args: str) -> pytest.RunResult:
    """The suite against ``transport`` (from broken_transports.py) in a pytest subprocess, kept small."""
    pytester.makepyfile(broken_transports=Path(__file__).with_name("broken_transports.py").read_text("utf-8"))
    pytester.makepyfile(**{"test_" + transport.replace("-", "_"): _TEST_MODULE.format(transport=transport)})
    return pytester.runpytest_subprocess(
        "-p",
        "no:cacheprovider",
        "-o",
        "timeout=60",
        "-rA",
        "--flamepy-max-examples",
        "5",
        "--flamepy-max-message",
        "64KiB",
        *args,
        timeout=120,
    )


@pytest.mark.parametrize("flaw", FLAWS, ids=[f.name for f in FLAWS])
def test_suite_fails_the_broken_transport(pytester: pytest.Pytester, flaw: Flaw) -> None:
    result = _run_suite(pytester, f"broken-{flaw.name}", "-k", flaw.select)
    outcomes = {m.group(2): m.group(1) for m in map(_RESULT_LINE.match, result.outlines) if m}
    report = result.stdout.str()
    expected = {name: "FAILED" for name in flaw.must_fail} | {name: "PASSED" for name in flaw.must_pass}
    assert outcomes == expected, f"broken-{flaw.name}: outcomes {outcomes}, expected {expected}\n{report}"
    assert flaw.evidence in report, f"broken-{flaw.name}: no failure says {flaw.evidence!r}\n{report}"


def test_suite_skips_what_the_transport_does_not_claim(pytester: pytest.Pytester) -> None:
    """A transport without streaming or restarts passes the suite: those parts skip, naming the capability."""
    result = _run_suite(pytester, "limited-unary")
    report = result.stdout.str()
    outcomes = {m.group(2): m.group(1) for m in map(_RESULT_LINE.match, result.outlines) if m}
    assert "FAILED" not in outcomes.values() and "ERROR" not in outcomes.values(), report
    assert result.ret == 0, report
    for capability in ("streaming", "restart_same_endpoint", "cross_process"):
        assert f"capability '{capability}' not declared by transport limited-unary" in report, report
    # Tests that only partly stream still ran their unary part.
    for name in ("test_request_over_max_size_is_refused_before_sending", "test_channel_lifecycle_state_machine"):
        assert outcomes.get(name) == "PASSED", f"{name}: {outcomes.get(name)}\n{report}"
