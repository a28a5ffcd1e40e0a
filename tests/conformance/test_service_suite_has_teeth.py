"""The service suite fails a runtime that breaks the service contract, and fails the *right* tests.

Each flaw of ``broken_runtime.py`` is injected into a pytester subprocess that runs
:class:`~flamepy_conformance.ServiceTests` with transport ``inmem``, so the engine the flaw patches is the
one serving the suite (a ``zmq`` or ``grpc`` run would start its server in another process). A flaw must
fail exactly the tests about it, for its reason (the evidence text), and leave the others passing; the
control run, with no flaw, passes everything: a suite that fails everything proves nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

_TEST_MODULE = """
from flamepy_conformance import ServiceTests


class TestBrokenRuntime(ServiceTests):
    transport_name = "inmem"
    serializer_name = "cloudpickle"
    shrink_failures = False  # the verdict is what counts here; shrinking would add tens of seconds
"""

_RESULT_LINE = re.compile(r"^(PASSED|FAILED|ERROR) \S+::TestBrokenRuntime::(test_\w+)")

ALL_TESTS = frozenset(
    {
        "test_echo_returns_each_task_its_own_answer",
        "test_concurrent_invokes_each_get_their_own_answer",
        "test_run_futures_each_hold_their_own_answer",
        "test_context_updates_reach_the_client",
        "test_session_without_context",
        "test_failed_task_raises_its_message",
        "test_session_lifecycle_error_codes",
        "test_objects_put_patch_update_get",
        "test_service_state_machine",
    }
)


@dataclass(frozen=True)
class Flaw:
    """One broken behaviour: the tests it must fail (all others must pass) and the text proving why."""

    name: str
    must_fail: frozenset[str]
    evidence: tuple[str, ...]


FLAWS = [
    Flaw(
        "lost-context-updates",
        frozenset(
            {"test_context_updates_reach_the_client", "test_objects_put_patch_update_get", "test_service_state_machine"}
        ),
        ("session.context() of", "(what the service stored)", "get_object("),
    ),
    Flaw(
        "another-tasks-answer",
        frozenset(
            {
                "test_echo_returns_each_task_its_own_answer",
                "test_concurrent_invokes_each_get_their_own_answer",
                "test_run_futures_each_hold_their_own_answer",
                "test_context_updates_reach_the_client",
                "test_session_without_context",
                "test_service_state_machine",
            }
        ),
        ("expected {'echo':", "the future holds"),
    ),
    Flaw(
        "not-found-becomes-internal",
        frozenset({"test_session_lifecycle_error_codes", "test_service_state_machine"}),
        ("expected FlameError(NOT_FOUND), got FlameError(INTERNAL)",),
    ),
]


def _run_suite(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, flaw: str) -> pytest.RunResult:
    """The service suite against the in-process engine with ``flaw`` injected (none when empty)."""
    pytester.makepyfile(broken_runtime=Path(__file__).with_name("broken_runtime.py").read_text("utf-8"))
    pytester.makepyfile(test_broken_runtime=_TEST_MODULE)
    monkeypatch.setenv("FLAMEPY_BROKEN_RUNTIME", flaw)
    return pytester.runpytest_subprocess(
        "-p",
        "broken_runtime",
        "-p",
        "no:cacheprovider",
        "-o",
        "timeout=90",
        "-rA",
        "--hypothesis-seed=0",
        timeout=150,
    )


def _outcomes(result: pytest.RunResult) -> dict[str, str]:
    return {m.group(2): m.group(1) for m in map(_RESULT_LINE.match, result.outlines) if m}


@pytest.mark.parametrize("flaw", FLAWS, ids=[f.name for f in FLAWS])
def test_service_suite_fails_the_broken_runtime(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, flaw: Flaw
) -> None:
    result = _run_suite(pytester, monkeypatch, flaw.name)
    report = result.stdout.str()
    expected = {name: "FAILED" if name in flaw.must_fail else "PASSED" for name in ALL_TESTS}
    assert _outcomes(result) == expected, f"{flaw.name}: outcomes {_outcomes(result)}, expected {expected}\n{report}"
    for text in flaw.evidence:
        assert text in report, f"{flaw.name}: no failure says {text!r}\n{report}"


def test_service_suite_passes_the_intact_runtime(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    """The control: the same run without a flaw passes every test, so the failures above are the flaws'."""
    result = _run_suite(pytester, monkeypatch, "")
    report = result.stdout.str()
    assert _outcomes(result) == dict.fromkeys(ALL_TESTS, "PASSED"), report
    assert result.ret == 0, report
