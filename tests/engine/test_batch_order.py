"""A batch of tasks never overtakes what was sent to the same instance before it.

On a transport whose server reads each call's request on a thread of a pool (gRPC's synchronous server),
two ``RunTasks`` in flight to one instance may be read in either order, and an ``OnTaskInvoke`` left for
the thread that answers its ``RunTask`` (the kit's ``answering``) goes out only after that handler has
returned. So the scheduler sends a batch only when nothing sent before can still be overtaken
(``may_send_batch``), and the kit says which calls are left for later (``left_to_waiting_thread``).
The whole path, with real processes on ZeroMQ and gRPC, is in ``tests/runtime/test_task_batches.py``.
"""

from __future__ import annotations

import time

from flamepy_core.contracts.transport import CallContext, DeferredHandler, Responder
from flamepy_core.engine.scheduler import BATCH_MAX, Instance, State, may_send_batch
from flamepy_core.kit import SimpleCallContext, answering, blocking_unary, left_to_waiting_thread


def _ready() -> Instance:
    """An instance that may be sent a batch: it takes them, its tasks are short, one task is in flight."""
    inst = Instance(id="i", app="a", state=State.BUSY, since=time.monotonic(), session_id="s")
    inst.batches = True
    inst.short = True
    inst.inflight[1] = time.monotonic()
    return inst


def test_a_batch_waits_for_every_earlier_batch_to_answer_once() -> None:
    inst = _ready()
    assert may_send_batch(inst)
    inst.unheard = 1  # a batch sent, no result or end back yet: it may still be on its way
    assert not may_send_batch(inst)
    inst.unheard = 0
    assert may_send_batch(inst)


def test_no_batch_goes_behind_a_task_whose_call_is_made_later() -> None:
    inst = _ready()
    inst.lone = 1  # its OnTaskInvoke is left for the RunTask thread to make
    assert not may_send_batch(inst)
    del inst.inflight[1]  # answered: nothing left to overtake
    inst.inflight[2] = time.monotonic()
    assert may_send_batch(inst)


def test_the_other_conditions_still_hold() -> None:
    for change in ("batches", "short"):
        inst = _ready()
        setattr(inst, change, False)
        assert not may_send_batch(inst), change
    inst = _ready()
    inst.withdrawing = True
    assert not may_send_batch(inst)
    inst = _ready()
    inst.inflight.update({tid: 0.0 for tid in range(2, BATCH_MAX // 2 + 2)})
    assert not may_send_batch(inst)


def test_the_kit_says_which_calls_the_waiting_thread_makes_later() -> None:
    seen: dict[str, bool] = {}

    def handler(request: bytes, ctx: CallContext, responder: Responder) -> None:
        seen["outside"] = left_to_waiting_thread("task")
        with answering("task"):
            seen["its own"] = left_to_waiting_thread("task")
            seen["another"] = left_to_waiting_thread("other")
        responder.send(b"ok")

    assert blocking_unary(DeferredHandler(handler)).fn(b"", SimpleCallContext("/m", 5.0)) == b"ok"
    assert seen == {"outside": False, "its own": True, "another": False}
    assert not left_to_waiting_thread("task")  # no adapter's thread here: every call goes out at once
