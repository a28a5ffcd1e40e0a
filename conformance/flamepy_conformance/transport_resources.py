"""Stopping, leaks and fork: what a transport leaves behind (a mixin of :class:`~flamepy_conformance.TransportTests`).

What the contract says and this module checks:

* ``server.stop(grace)`` returns within ``grace`` plus :data:`~flamepy_core.contracts.bounds.STOP_OVERHEAD_S`
  even while handlers ignore their context and hang, and the calls they were serving end;
* calls leave nothing behind: a thousand calls of every kind (answers, errors, unknown methods, missed
  deadlines, streams read to the end and streams left early), with a channel and a server opened and
  closed around them, leave no thread and no file descriptor, *counted from the process*
  (``/proc/self/task``, ``/proc/self/fd``), not from what the plugin reports, beyond
  :data:`~flamepy_core.contracts.bounds.LEAK_TOLERANCE` of the calls;
* a channel used in a ``fork()`` child either works there or fails promptly
  (:data:`~flamepy_core.contracts.bounds.PROMPT_FAILURE_S`) with a ``FlameError``, and never shares the
  parent's connection: parent and child call at the same time and each gets its own answers, and the
  parent's channel still works after the child has gone.

The fork test runs in fresh processes (:data:`FORKING_CLIENT`, and for a cross-process transport a server
in another process): forking the test process itself, with its own servers' threads, is what gRPC's
fork support advises against.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest

from flamepy_conformance.probe import (
    CHUNKS,
    FAIL,
    MISSING,
    PROBE_SERVICE,
    chunk_answers,
    pack_chunks,
    pack_failure,
    probe_handlers,
)
from flamepy_conformance.transport_base import TransportSuiteBase, _Background, _close_iterator
from flamepy_core.contracts.bounds import LEAK_TOLERANCE, PROMPT_FAILURE_S, STOP_OVERHEAD_S
from flamepy_core.contracts.errors import FlameError, FlameErrorCode
from flamepy_core.contracts.transport import CallContext, Channel, StreamHandler, UnaryHandler

_HANG = f"{PROBE_SERVICE}/Hang"
_HANG_STREAM = f"{PROBE_SERVICE}/HangStream"
_SLEEPY = f"{PROBE_SERVICE}/Sleepy"

FORKING_CLIENT = """\
import ast, json, os, select, sys, threading, time
from flamepy_core.contracts.errors import FlameError
from flamepy_core.plugins import get_registry
from flamepy_conformance.probe import ECHO, echo_answer, probe_handlers

name, options, where, tag = sys.argv[1], ast.literal_eval(sys.argv[2]), sys.argv[3], sys.argv[4]
calls, timeout, children = int(sys.argv[5]), float(sys.argv[6]), int(sys.argv[7])
transport = get_registry().transport(name, **options)
server = None
if where.startswith("serve:"):  # an in-process transport: this process serves, its child calls in
    server = transport.serve(where[len("serve:"):], probe_handlers(tag))
    where = server.endpoint
channel = transport.connect(where)
report = {"parent": [], "children": []}

def run(who, count):
    outcome = {"answers": 0, "wrong": [], "error": None}
    for i in range(count):
        payload = f"{who} call {i}".encode()
        started = time.monotonic()
        try:
            got = channel.unary(ECHO, payload, timeout=timeout)
        except BaseException as exc:
            code = exc.code.name if isinstance(exc, FlameError) else None
            message = exc.message if isinstance(exc, FlameError) else str(exc)
            outcome["error"] = {"call": i, "code": code, "type": type(exc).__name__, "message": message[:300],
                                "after": time.monotonic() - started}
            return outcome
        if got == echo_answer(payload, ECHO, tag):
            outcome["answers"] += 1
        else:
            outcome["wrong"].append(f"{who} call {i} got {got[:120]!r}")
    return outcome

report["parent"].append(run("parent before fork", 3))
for k in range(children):
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        try:
            result = run(f"child {k}", calls)
        except BaseException as exc:
            result = {"answers": 0, "wrong": [], "error": {"call": -1, "code": None, "type": type(exc).__name__,
                                                          "message": str(exc)[:300], "after": 0.0}}
        os.write(write_fd, json.dumps(result).encode())
        os._exit(0)
    os.close(write_fd)
    report["parent"].append(run(f"parent beside child {k}", calls))
    waited = select.select([read_fd], [], [], timeout + 10.0)[0]
    data = os.read(read_fd, 1 << 20) if waited else b""
    os.close(read_fd)
    if not data:
        try:
            os.kill(pid, 9)
        except OSError:
            pass
    os.waitpid(pid, 0)
    report["children"].append(json.loads(data) if data else {"hung": True})
report["parent"].append(run("parent after the children", 3))
channel.close()
if server is not None:
    server.stop(1.0)
print("REPORT " + json.dumps(report), flush=True)
"""
"""The fork test's client: connect (or serve here, for an in-process transport), call, fork children that
call on the same channel while the parent does too, then call again; print ``REPORT <json>``."""


def _count(directory: str) -> int | None:
    try:
        return len(os.listdir(directory))
    except OSError:
        return None


def process_resources() -> dict[str, int]:
    """This process's threads and open file descriptors, as the operating system counts them."""
    counts: dict[str, int] = {}
    threads = _count("/proc/self/task")
    counts["threads"] = threads if threads is not None else threading.active_count()
    fds = _count("/proc/self/fd")
    if fds is None:
        fds = _count("/dev/fd")
    if fds is not None:
        counts["file descriptors"] = fds
    return counts


def _sleepy(request: bytes, ctx: CallContext) -> bytes:
    time.sleep(0.01)
    return b"late"


class ResourceTests(TransportSuiteBase):
    """``stop(grace)`` with hanging handlers, calls that leave nothing behind, channels across ``fork()``."""

    fork_children: ClassVar[int] = 2
    """Children the fork test forks (one after the other), each calling beside the parent."""
    fork_calls: ClassVar[int] = 30
    """Calls each of them (and the parent beside it) makes."""

    # -- stop ------------------------------------------------------------------------------------------

    def test_stop_returns_within_grace_while_handlers_hang(self) -> None:
        """Handlers that ignore their context and hang: ``stop(grace)`` still returns within grace + the bound."""
        grace = self.stop_grace
        hang_s = grace + STOP_OVERHEAD_S + 1.0  # a stop that waits for the handlers shows, and still ends
        release = threading.Event()
        started = threading.Semaphore(0)

        def hang(request: bytes, ctx: CallContext) -> bytes:
            started.release()
            release.wait(hang_s)
            return b"too late"

        def hang_stream(request: bytes, ctx: CallContext) -> Iterator[bytes]:
            yield b"first"
            started.release()
            release.wait(hang_s)
            yield b"too late"

        server = self.transport.serve(
            self.new_endpoint(), {_HANG: UnaryHandler(hang), _HANG_STREAM: StreamHandler(hang_stream)}
        )
        channel = self.transport.connect(server.endpoint)
        calls: list[_Background[object]] = []
        try:
            for _ in range(3):
                calls.append(_Background(lambda: channel.unary(_HANG, b"", timeout=self.call_timeout)))
            if self.capabilities.streaming:
                calls.append(_Background(lambda: list(channel.stream(_HANG_STREAM, b"", timeout=self.call_timeout))))
            for _ in calls:
                assert started.acquire(timeout=self.call_timeout), "a handler never started"
            begin = time.monotonic()
            server.stop(grace)
            took = time.monotonic() - begin
            assert took <= grace + STOP_OVERHEAD_S, (
                f"stop({grace}) took {took:.2f} s with {len(calls)} handlers hanging; it must return within the "
                f"grace plus {STOP_OVERHEAD_S} s (end their calls, do not wait for their threads)"
            )
            for call in calls:
                assert call.join(PROMPT_FAILURE_S), "a call was still waiting after its server stopped"
                assert isinstance(call.error, FlameError), (
                    f"a call whose server stopped got {call.error or call.result!r}; expected FlameError"
                )
                assert call.error.code in (FlameErrorCode.UNAVAILABLE, FlameErrorCode.CANCELLED), repr(call.error)
        finally:
            release.set()
            channel.close()
            server.stop(self.stop_grace)

    # -- leaks -----------------------------------------------------------------------------------------

    def _calls(self, channel: Channel, count: int) -> None:
        """``count`` calls of every kind, one at a time."""
        streaming = self.capabilities.streaming
        for i in range(count):
            kind = i % 10
            try:
                if kind == 5:
                    channel.unary(FAIL, pack_failure(FlameErrorCode.NOT_FOUND, "not here"), timeout=self.call_timeout)
                elif kind == 6:
                    channel.unary(MISSING, b"", timeout=self.call_timeout)
                elif kind == 7 and streaming:
                    chunks = [b"a", b"bb"]
                    got = list(channel.stream(CHUNKS, pack_chunks(chunks), timeout=self.call_timeout))
                    assert got == chunk_answers(chunks), got
                elif kind == 8 and streaming:
                    items = channel.stream(CHUNKS, pack_chunks([b"x"] * 20), timeout=self.call_timeout)
                    next(items)
                    _close_iterator(items)
                elif kind == 9:
                    channel.unary(_SLEEPY, b"", timeout=0.001)
                else:
                    self.echo(channel, b"call %d" % i)
            except FlameError as err:
                expected = {5: FlameErrorCode.NOT_FOUND, 6: FlameErrorCode.UNIMPLEMENTED}.get(kind)
                if kind == 9 and err.code == FlameErrorCode.DEADLINE_EXCEEDED:
                    continue
                if expected is None or err.code != expected:
                    raise

    def _round(self, count: int) -> tuple[dict[str, int], dict[str, int]]:
        """Serve, connect, make ``count`` calls, close, stop: resources (channel open, after it all)."""
        handlers = {_SLEEPY: UnaryHandler(_sleepy), **probe_handlers()}
        with self.served(handlers) as (_server, channel):
            self._calls(channel, count)
            during = self._settled(None)
        return during, self._settled(None)

    def _settled(self, limit: dict[str, int] | None, slack: int = 0) -> dict[str, int]:
        """The resources once they have settled: at or under ``limit + slack``, or after a bounded wait."""
        deadline = time.monotonic() + STOP_OVERHEAD_S
        while True:
            now = process_resources()
            if limit is None:
                time.sleep(0.05)  # let finished calls' threads exit, then read once more
                return process_resources()
            if all(now[k] <= limit[k] + slack for k in now) or time.monotonic() >= deadline:
                return now
            time.sleep(0.05)

    def test_calls_leave_no_threads_or_descriptors_behind(self) -> None:
        """A thousand calls of every kind leave no thread and no descriptor behind (counted from the process)."""
        if "threads" not in process_resources():
            pytest.skip("cannot count this process's threads here")
        count = self.leak_calls
        slack = max(1, int(count * LEAK_TOLERANCE))
        warm_during, warm_after = self._round(max(1, count // 10))  # pools and lazy state come to be here
        during, _ = self._round(count)
        after = self._settled(warm_after, slack)
        problems = [
            f"{kind}: {during[kind]} with the channel open after {count} calls (after {count // 10}: "
            f"{warm_during[kind]})"
            for kind in during
            if during[kind] > warm_during[kind] + slack
        ] + [
            f"{kind}: {after[kind]} after the channel closed and the server stopped (before: {warm_after[kind]})"
            for kind in after
            if after[kind] > warm_after[kind] + slack
        ]
        assert not problems, (
            f"{count} calls left resources behind (at most {slack} more are allowed):\n  " + "\n  ".join(problems)
        )

    # -- fork ------------------------------------------------------------------------------------------

    def test_channel_in_a_forked_child_works_or_fails_fast(self) -> None:
        """A channel used in a ``fork()`` child works there or fails promptly, and never shares the parent's
        connection: parent and child call at once and each gets its own answers."""
        if not hasattr(os, "fork"):
            pytest.skip("this platform has no fork()")
        if self.capabilities.cross_process:
            with self.child_server() as endpoint:
                report = self._run_forking_client(endpoint, "child")
        else:
            report = self._run_forking_client("serve:" + self.new_endpoint(), "here")
        problems: list[str] = []
        for part in report["parent"]:
            problems += part["wrong"]
            if part["error"] is not None:
                problems.append(f"the parent's call failed: {part['error']}")
        for k, child in enumerate(report["children"]):
            problems += self._judge_child(k, child)
        assert not problems, "a channel across fork():\n  " + "\n  ".join(problems)

    def _judge_child(self, k: int, child: dict[str, Any]) -> list[str]:
        if child.get("hung"):
            return [f"child {k} neither answered nor failed: killed after its calls' deadline"]
        shared = "(the child's channel shares the parent's connection)"
        problems = [f"child {k}: {line} {shared}" for line in child["wrong"]]
        error = child["error"]
        if error is None:
            return problems
        if error["code"] is None:
            problems.append(f"child {k} failed with {error['type']}: {error['message']!r}; it must be a FlameError")
        elif error["call"] != 0 or child["answers"]:
            problems.append(f"child {k} worked for {child['answers']} calls, then failed: {error}")
        elif error["after"] > PROMPT_FAILURE_S:
            problems.append(
                f"child {k} failed after {error['after']:.1f} s with {error['code']}: {error['message']!r}; a channel "
                f"that cannot be used after fork() must say so within {PROMPT_FAILURE_S} s"
            )
        elif not str(error["message"]).strip():
            problems.append(f"child {k} failed with {error['code']} and no message")
        return problems

    def _run_forking_client(self, where: str, tag: str) -> dict[str, list[dict[str, Any]]]:
        timeout = PROMPT_FAILURE_S + 1.0  # long enough to work; a child that waits it out has failed anyway
        argv = [*self.forking_client_argv(), where, tag, str(self.fork_calls), str(timeout), str(self.fork_children)]
        budget = 60.0 + self.fork_children * (timeout + 10.0)
        result = subprocess.run(
            argv, capture_output=True, text=True, timeout=budget, env=self.subprocess_env(), stdin=subprocess.DEVNULL
        )
        line = next((x for x in result.stdout.splitlines() if x.startswith("REPORT ")), None)
        if line is None:
            raise AssertionError(
                f"the forking client exited with {result.returncode} without a report; stderr:\n{result.stderr[-3000:]}"
            )
        report: dict[str, list[dict[str, Any]]] = json.loads(line[len("REPORT ") :])
        return report
