"""The conformance suite fails transports that break the contract, and fails the *right* tests.

Each deliberately broken transport (the ``broken_*.py`` modules) is registered at run time in a registry of
its own, and the suite runs against all of them in one separate pytest process: a class per broken
transport, each selecting with ``-k`` the tests about its flaw plus a few it must not affect. A flaw must
make exactly the expected tests fail, for the expected reason, while the unaffected ones still pass: a
suite that fails everything, or the wrong thing, proves nothing. The same run holds ``limited-unary``,
which is not broken but modest and must pass with the parts it does not claim skipped.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

# The first test builds the module's one subprocess run (bounded by its own 600 s timeout); under a loaded
# CI machine that run alone can outlast the per-test default of 120 s.
pytestmark = pytest.mark.timeout(660)

_HEADER = """
from broken_transports import BrokenTransportsPlugin
from flamepy_conformance import TransportTests
from flamepy_core.plugins import PluginRegistry

REGISTRY = PluginRegistry(autoload=False, strict=True)
REGISTRY.register(BrokenTransportsPlugin(), name="broken-transports")


class Broken(TransportTests):
    shrink_failures = False  # the verdict is what counts here, not the smallest example
    fork_children = 1
    call_timeout = 4.0  # a stalled stream or a hung call fails sooner

    def plugin_registry(self) -> PluginRegistry:
        return REGISTRY
"""

_CLASS = """

class {cls}(Broken):
    transport_name = "{transport}"
{extra}"""

_RESULT_LINE = re.compile(r"^(PASSED|FAILED|ERROR) \S+::(\w+)::(test_\w+)")
_SECTION = re.compile(r"^_+ (\w+)\.(test_\w+) _+$", re.MULTILINE)


@dataclass(frozen=True)
class Flaw:
    """One broken transport: which tests it must fail (and why) and which it must leave passing."""

    name: str
    select: str
    must_fail: frozenset[str]
    must_pass: frozenset[str]
    evidence: str
    """Text the failure report must contain: the suite failed for this flaw, not for something else."""
    max_message: int | None = None
    """A larger ``max_message_cap`` than the run's 64 KiB, where the flaw hides below it."""

    @property
    def cls(self) -> str:
        return f"TestBroken_{self.name}"

    @property
    def source(self) -> str:
        extra = f"    max_message_cap = {self.max_message}\n" if self.max_message else ""
        return _CLASS.format(cls=self.cls, transport=f"broken-{self.name}", extra=extra)


def _flaw(name: str, select: str, fail: str, passing: str, evidence: str, **extra: object) -> Flaw:
    """A :class:`Flaw` from space-separated test names (without their ``test_`` prefix)."""
    names = lambda text: frozenset(f"test_{n}" for n in text.split())  # noqa: E731
    return Flaw(name, select, names(fail), names(passing), evidence, **extra)  # type: ignore[arg-type]


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
    # -- deadlines (broken_timing.py) --
    _flaw(
        "itemdeadline",
        "whole_stream or stream_deadline_exceeded or stream_keeps_order",
        "stream_deadline_covers_the_whole_stream",
        "stream_deadline_exceeded stream_keeps_order",
        "covers the whole stream, not each item",
    ),
    _flaw(
        "nodefault",
        "documented_default or handler_context_sees or unary_round_trip",
        "default_timeout_is_the_documented_default",
        "handler_context_sees_method_and_deadline unary_round_trip",
        "ctx.time_remaining() is None",
    ),
    _flaw(
        "roundup",
        "callers_deadline or handler_context_sees or unary_deadline_exceeded",
        "handler_sees_the_callers_deadline",
        "handler_context_sees_method_and_deadline unary_deadline_exceeded",
        "the caller set 2.5 s",
    ),
    _flaw(
        "noneisdefault",
        "no_deadline or documented_default or unary_round_trip",
        "no_deadline_means_no_deadline",
        "default_timeout_is_the_documented_default unary_round_trip",
        "with timeout=None to a handler idle for 0.9 s was cut",
    ),
    _flaw(
        "idlecut",
        "no_deadline or stream_keeps_order or stream_deadline_exceeded",
        "no_deadline_means_no_deadline",
        "stream_keeps_order stream_deadline_exceeded",
        "a stream with timeout=None idle for 0.9 s after 1 item(s) was cut: FlameError(UNAVAILABLE",
    ),
    # -- streams (broken_streams.py) --
    _flaw(
        "keepopen",
        "cancels_its_handler or stream_keeps_order or stream_error_after",
        "closing_or_dropping_a_stream_cancels_its_handler",
        "stream_keeps_order stream_error_after_items",
        "its handler was still running",
    ),
    _flaw(
        "dropnocancel",
        "cancels_its_handler or stream_keeps_order or stream_error_after",
        "closing_or_dropping_a_stream_cancels_its_handler",
        "stream_keeps_order stream_error_after_items",
        "a stream dropped (its last reference gone) after 3 items: its handler was still running",
    ),
    _flaw(
        "ringbuffer",
        "long_streams or stream_keeps_order",
        "long_streams_arrive_whole_in_order_without_stalling",
        "stream_keeps_order",
        "out of order or missing items",
    ),
    _flaw(
        "bytecredit",
        "long_streams or stream_keeps_order",
        "long_streams_arrive_whole_in_order_without_stalling",
        "stream_keeps_order",
        "(a stall ends at the",
    ),
    # -- sizes and names (broken_sizes.py) --
    _flaw(
        "wirelimit",
        "default_largest or unary_round_trip",
        "default_largest_message_is_what_the_wire_carries",
        "unary_round_trip",
        "(the declared largest) was refused",
        max_message=8 * 1024 * 1024,
    ),
    _flaw(
        "kibround",
        "option_is_honoured or payload_at_max_size or request_over_max_size",
        "max_message_size_option_is_honoured",
        "payload_at_max_size_round_trips request_over_max_size_is_refused_before_sending",
        "max_message_size=1000: a request of 1001 bytes",
    ),
    _flaw(
        "methodcut",
        "long_method or method_paths_route",
        "long_method_paths_arrive_intact",
        "method_paths_route_to_their_handlers",
        "(at most 4096 must route)",
    ),
    _flaw(
        "errorcut",
        "long_error or every_error_code or error_code_and_message",
        "long_error_messages_arrive_intact",
        "every_error_code_crosses_intact error_code_and_message_cross_intact",
        "must arrive unchanged) came back as 1024 characters",
    ),
    # -- late replies (broken_ids.py) --
    _flaw(
        "recycle",
        "late_replies or concurrent_callers",
        "late_replies_and_abandoned_calls_never_reach_another_call",
        "concurrent_callers_get_their_own_answers",
        "(another call's reply?)",
    ),
    # -- stop, leaks, fork (broken_resources.py) --
    _flaw(
        "hangstop",
        "stop_returns_within or stop_with_grace_lets or stop_cancels_calls_after_grace or server_stop_is_idempotent",
        "stop_returns_within_grace_while_handlers_hang",
        "stop_with_grace_lets_running_call_finish stop_cancels_calls_after_grace server_stop_is_idempotent",
        "it must return within the grace plus",
    ),
    _flaw(
        "timerleak",
        "leave_no or unary_round_trip",
        "calls_leave_no_threads_or_descriptors_behind",
        "unary_round_trip",
        "threads: ",
    ),
    _flaw(
        "socketleak",
        "leave_no or unary_round_trip",
        "calls_leave_no_threads_or_descriptors_behind",
        "unary_round_trip",
        "file descriptors: ",
    ),
    _flaw(
        "noforkcheck",
        "forked or unary_round_trip",
        "channel_in_a_forked_child_works_or_fails_fast",
        "unary_round_trip",
        "must say so within 3.0 s",
    ),
    _flaw(
        "sharedzmq",
        "forked or unary_round_trip or cross_process",
        "channel_in_a_forked_child_works_or_fails_fast",
        "unary_round_trip cross_process_call",
        "must say so within 3.0 s",
    ),
    # -- deferred streams (broken_deferred.py) --
    _flaw(
        "threadperstream",
        "hold_no_server_thread or sends_arrive_in_order",
        "open_deferred_streams_hold_no_server_thread",
        "deferred_stream_sends_arrive_in_order_then_its_end",
        "holds no thread per open stream",
    ),
    _flaw(
        "blockingsend",
        "far_past_the_window or sends_arrive_in_order",
        "sends_far_past_the_window_before_any_read_all_arrive",
        "deferred_stream_sends_arrive_in_order_then_its_end",
        "send must never wait for the caller",
    ),
    _flaw(
        "keepsending",
        "left_by_its_caller or sends_arrive_in_order",
        "a_deferred_stream_left_by_its_caller_refuses_sends",
        "deferred_stream_sends_arrive_in_order_then_its_end",
        "send() still returned True",
    ),
    _flaw(
        "endtwice",
        "ends_once or sends_arrive_in_order",
        "a_deferred_stream_ends_once",
        "deferred_stream_sends_arrive_in_order_then_its_end",
        "a second close() must return False",
    ),
    # -- streams read by callbacks (broken_deferred.py) --
    _flaw(
        "readerthread",
        "hold_no_caller_thread or hands_over_every_item",
        "open_async_streams_hold_no_caller_thread",
        "stream_async_hands_over_every_item_in_order_then_the_end",
        "holds a thread per stream, which async_streams says it does not",
    ),
    _flaw(
        "asyncendtwice",
        "ends_with_the_handlers_error or hands_over_every_item",
        "stream_async_ends_with_the_handlers_error_after_its_items",
        "stream_async_hands_over_every_item_in_order_then_the_end",
        "on_end was called 2 times",
    ),
]

BROKEN_MODULES = (
    "broken_transports",
    "broken_timing",
    "broken_streams",
    "broken_sizes",
    "broken_ids",
    "broken_resources",
    "broken_deferred",
)
LIMITED = "TestLimited"


@dataclass
class Run:
    """The one pytest run of every broken transport: outcomes and failure reports by class."""

    output: str
    returncode: int
    outcomes: dict[str, dict[str, str]] = field(default_factory=dict)
    reports: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, output: str, returncode: int) -> Run:
        run = cls(output, returncode)
        for match in map(_RESULT_LINE.match, output.splitlines()):
            if match:
                run.outcomes.setdefault(match.group(2), {})[match.group(3)] = match.group(1)
        sections = list(_SECTION.finditer(output))
        for i, section in enumerate(sections):
            end = sections[i + 1].start() if i + 1 < len(sections) else len(output)
            run.reports[section.group(1)] = run.reports.get(section.group(1), "") + output[section.start() : end]
        return run


@pytest.fixture(scope="module")
def broken_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """Run the suite against every broken transport, and ``limited-unary``, in one pytest process."""
    workdir = tmp_path_factory.mktemp("broken")
    here = Path(__file__).parent
    for name in BROKEN_MODULES:
        (workdir / f"{name}.py").write_text((here / f"{name}.py").read_text("utf-8"), "utf-8")
    source = _HEADER + "".join(f.source for f in FLAWS)
    source += _CLASS.format(cls=LIMITED, transport="limited-unary", extra="")
    (workdir / "test_broken.py").write_text(source, "utf-8")
    (workdir / "pytest.ini").write_text("[pytest]\n", "utf-8")
    select = " or ".join([f"({f.cls} and ({f.select}))" for f in FLAWS] + [LIMITED])
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    # The suite's child processes (cross-process server, fork test client) must find them too.
    env.update(FLAMEPY_PLUGINS="broken_transports", PYTHONPATH=os.pathsep.join([str(workdir), *sys.path]))
    argv = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-o", "timeout=60", "-rA"]
    argv += ["--flamepy-max-examples", "5", "--flamepy-max-message", "64KiB", "-k", select, "test_broken.py"]
    result = subprocess.run(
        argv, cwd=workdir, env=env, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL
    )
    return Run.parse(result.stdout + result.stderr, result.returncode)


@pytest.mark.parametrize("flaw", FLAWS, ids=[f.name for f in FLAWS])
def test_suite_fails_the_broken_transport(broken_run: Run, flaw: Flaw) -> None:
    outcomes = broken_run.outcomes.get(flaw.cls, {})
    report = broken_run.reports.get(flaw.cls, "")
    expected = {name: "FAILED" for name in flaw.must_fail} | {name: "PASSED" for name in flaw.must_pass}
    assert outcomes == expected, f"broken-{flaw.name}: outcomes {outcomes}, expected {expected}\n{report}"
    assert flaw.evidence in report, f"broken-{flaw.name}: no failure says {flaw.evidence!r}\n{report}"


def test_suite_skips_what_the_transport_does_not_claim(broken_run: Run) -> None:
    """A transport without streaming or restarts passes the suite: those parts skip, naming the capability."""
    outcomes = broken_run.outcomes.get(LIMITED, {})
    report = broken_run.output
    assert outcomes, report
    assert "FAILED" not in outcomes.values() and "ERROR" not in outcomes.values(), broken_run.reports.get(LIMITED)
    for capability in ("streaming", "restart_same_endpoint", "cross_process"):
        assert f"capability '{capability}' not declared by transport limited-unary" in report, report
    # Tests that only partly stream still ran their unary part.
    for name in ("test_request_over_max_size_is_refused_before_sending", "test_channel_lifecycle_state_machine"):
        assert outcomes.get(name) == "PASSED", f"{name}: {outcomes.get(name)}\n{report}"
