"""A batch's results that the link brought together are handled together: one event, one dispatch and one
commit for up to ``RESULTS_TOGETHER`` of them, once they are all read (``Scheduler._send_batch``, through
the channel's ``after_reading``). Nothing about a task may change for it: every result reaches its
caller, in the order of the tasks, and a service process that dies in the middle of a batch loses none
of the results it had sent. Real service processes on uds, a real store."""

from __future__ import annotations

import os
import textwrap
from collections.abc import Iterator
from concurrent.futures import wait
from pathlib import Path

import pytest

import flamepy
from flamepy.testing import LocalRuntime, local_runtime
from flamepy_core.client.connection import reset_default_connection
from flamepy_core.engine.scheduler import RESULTS_TOGETHER

SERVICE = """
import os
import flamepy
from flamepy.core import FlameService


class Reverse(FlameService):
    def on_task_invoke(self, context):
        if context.input == b"die once" and not os.path.exists("died"):
            open("died", "w").close()
            os._exit(3)  # a crash in the middle of a batch: its instance is lost
        return context.input[::-1]


if __name__ == "__main__":
    flamepy.run(Reverse())
"""


@pytest.fixture
def runtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalRuntime]:
    for key in [k for k in os.environ if k.startswith("FLAME_")]:
        monkeypatch.delenv(key)
    reset_default_connection()
    service = tmp_path / "svc" / "reverse_service.py"
    service.parent.mkdir()
    service.write_text(textwrap.dedent(SERVICE))
    with local_runtime(tmp_path / "home", instances="process") as rt:
        rt.register("rev", service)
        yield rt
    reset_default_connection()


def test_results_read_together_are_handled_together_and_each_reaches_its_caller(runtime: LocalRuntime) -> None:
    scheduler = runtime.server.scheduler
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


def test_an_instance_that_dies_in_a_batch_loses_none_of_the_results_it_sent(runtime: LocalRuntime) -> None:
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
