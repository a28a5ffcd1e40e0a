"""A batch's results that the link brought together are handled together: one event, one dispatch and one
commit for up to ``RESULTS_TOGETHER`` of them, once they are all read (``Scheduler._send_batch``, through
the channel's ``after_reading``). Nothing about a task may change for it: every result reaches its
caller, in the order of the tasks, and a service process that dies in the middle of a batch loses none
of the results it had sent. Real service processes on uds, a real store."""

from __future__ import annotations

from concurrent.futures import wait

import pytest

import flamepy
from flamepy.testing import LocalRuntime
from flamepy_core.engine.scheduler import RESULTS_TOGETHER


@pytest.fixture(autouse=True)
def _through_the_server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLAMEPY_LANES", "0")  # run()'s tasks through the server, not on the client's lanes


def test_results_read_together_are_handled_together_and_each_reaches_its_caller(reverse_runtime: LocalRuntime) -> None:
    scheduler = reverse_runtime.server.scheduler
    session = flamepy.create_session("rev", min_instances=1, max_instances=1)
    session.invoke(b"warm")
    inputs = [f"task {n}".encode() for n in range(2000)]
    futures = [session.run(data) for data in inputs]
    _done, pending = wait(futures, timeout=120)
    assert not pending
    assert [future.result() for future in futures] == [data[::-1] for data in inputs]
    session.close()
    assert scheduler.results_together > 0, "no batch's results went through the grouped path"
    assert scheduler.result_groups < scheduler.results_together, "results read together were handled one by one"
    assert scheduler.results_together <= scheduler.result_groups * RESULTS_TOGETHER


def test_an_instance_that_dies_in_a_batch_loses_none_of_the_results_it_sent(reverse_runtime: LocalRuntime) -> None:
    session = flamepy.create_session("rev", min_instances=1, max_instances=1)
    session.invoke(b"warm")
    inputs = [f"before {n}".encode() for n in range(300)] + [b"die once"]
    inputs += [f"after {n}".encode() for n in range(300)]
    futures = [session.run(data) for data in inputs]
    _done, pending = wait(futures, timeout=120)
    assert not pending
    # The task that killed its instance ran again (it dies once), the others once each, every result kept.
    assert [future.result() for future in futures] == [data[::-1] for data in inputs]
    session.close()
