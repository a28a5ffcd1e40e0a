"""The service suite fails a runtime that breaks the service contract, and fails the *right* tests.

The flaws of ``broken_runtime.py`` are installed in one pytest subprocess that runs
:class:`~flamepy_conformance.ServiceTests` with transport ``inmem``, so the engine the flaws patch is the one
serving the suite (a ``zmq`` or ``grpc`` run would start its server in another process); each test class
switches on one flaw for its own tests. A flaw must fail exactly the tests about it, for its reason (the
evidence text), and leave the others passing; the control class, with no flaw, passes everything: a suite
that fails everything proves nothing.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

# The first test builds the module's one subprocess run (bounded by its own 900 s timeout); under a loaded
# CI machine that run alone can outlast the per-test default of 120 s.
pytestmark = pytest.mark.timeout(960)

_HEADER = """
import pytest
from flamepy_conformance import ServiceTests


class Base(ServiceTests):
    transport_name = "inmem"
    serializer_name = "cloudpickle"
    shrink_failures = False  # the verdict is what counts here; shrinking would add tens of seconds
"""

_CLASS = """

@pytest.mark.usefixtures("broken_runtime_flaw")
class {cls}(Base):
    flaw = "{flaw}"
"""

_RESULT_LINE = re.compile(r"^(PASSED|FAILED|ERROR) \S+::(\w+)::(test_\w+)")
_SECTION = re.compile(r"^_+ (\w+)\.(test_\w+) _+$", re.MULTILINE)
CONTROL = "TestIntactRuntime"

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
        "test_context_update_is_visible_when_its_task_returns",
        "test_invoke_timeout_is_honoured_end_to_end",
        "test_refused_close_is_reported_not_swallowed",
        "test_failed_task_message_and_traceback_arrive_whole",
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
            {
                "test_context_updates_reach_the_client",
                "test_objects_put_patch_update_get",
                "test_context_update_is_visible_when_its_task_returns",
                "test_service_state_machine",
            }
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
                "test_context_update_is_visible_when_its_task_returns",
                "test_invoke_timeout_is_honoured_end_to_end",
                "test_refused_close_is_reported_not_swallowed",
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
    Flaw(
        "context-written-behind",
        frozenset(
            {
                "test_context_update_is_visible_when_its_task_returns",
                "test_context_updates_reach_the_client",
                "test_service_state_machine",
            }
        ),
        ("(what the service stored)",),
    ),
    Flaw(
        "invoke-timeout-dropped",
        frozenset({"test_invoke_timeout_is_honoured_end_to_end"}),
        ("expected FlameError(DEADLINE_EXCEEDED), but it returned {'echo': 'slow'}",),
    ),
    Flaw(
        "refused-close-swallowed",
        frozenset({"test_refused_close_is_reported_not_swallowed"}),
        ("expected FlameError(INVALID_STATE), but it returned None",),
    ),
    Flaw(
        "failure-text-cut",
        frozenset({"test_failed_task_message_and_traceback_arrive_whole"}),
        ("the text must begin with the whole message",),
    ),
    Flaw(
        "traceback-dropped",
        frozenset({"test_failed_task_message_and_traceback_arrive_whole"}),
        ("no traceback in",),
    ),
]


@dataclass
class Run:
    """The one pytest run of every broken runtime: outcomes and failure reports by class."""

    output: str
    outcomes: dict[str, dict[str, str]] = field(default_factory=dict)
    reports: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, output: str) -> Run:
        run = cls(output)
        for match in map(_RESULT_LINE.match, output.splitlines()):
            if match:
                run.outcomes.setdefault(match.group(2), {})[match.group(3)] = match.group(1)
        sections = list(_SECTION.finditer(output))
        for i, section in enumerate(sections):
            end = sections[i + 1].start() if i + 1 < len(sections) else len(output)
            run.reports[section.group(1)] = run.reports.get(section.group(1), "") + output[section.start() : end]
        return run


def _class_name(flaw: str) -> str:
    return "TestBroken_" + flaw.replace("-", "_")


@pytest.fixture(scope="module")
def broken_runs(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """The service suite against the in-process engine, once per flaw and once intact, in one process."""
    workdir = tmp_path_factory.mktemp("broken-runtime")
    (workdir / "broken_runtime.py").write_text(Path(__file__).with_name("broken_runtime.py").read_text("utf-8"))
    classes = [_CLASS.format(cls=_class_name(f.name), flaw=f.name) for f in FLAWS]
    classes.append(_CLASS.format(cls=CONTROL, flaw=""))
    (workdir / "test_broken_runtime.py").write_text(_HEADER + "".join(classes), "utf-8")
    (workdir / "pytest.ini").write_text("[pytest]\n", "utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "FLAME_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(workdir), *sys.path])
    argv = [sys.executable, "-m", "pytest", "-p", "broken_runtime", "-p", "no:cacheprovider", "-o", "timeout=90"]
    argv += ["-rA", "--hypothesis-seed=0", "test_broken_runtime.py"]
    result = subprocess.run(
        argv, cwd=workdir, env=env, capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL
    )
    return Run.parse(result.stdout + result.stderr)


@pytest.mark.parametrize("flaw", FLAWS, ids=[f.name for f in FLAWS])
def test_service_suite_fails_the_broken_runtime(broken_runs: Run, flaw: Flaw) -> None:
    name = _class_name(flaw.name)
    outcomes = broken_runs.outcomes.get(name, {})
    report = broken_runs.reports.get(name, "") or broken_runs.output[-5000:]
    expected = {test: "FAILED" if test in flaw.must_fail else "PASSED" for test in ALL_TESTS}
    assert outcomes == expected, f"{flaw.name}: outcomes {outcomes}, expected {expected}\n{report}"
    for text in flaw.evidence:
        assert text in report, f"{flaw.name}: no failure says {text!r}\n{report}"


def test_service_suite_passes_the_intact_runtime(broken_runs: Run) -> None:
    """The control: the same run without a flaw passes every test, so the failures above are the flaws'."""
    outcomes = broken_runs.outcomes.get(CONTROL, {})
    assert outcomes == dict.fromkeys(ALL_TESTS, "PASSED"), (
        broken_runs.reports.get(CONTROL) or broken_runs.output[-5000:]
    )
