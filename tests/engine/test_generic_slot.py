"""The generic process's slot (``engine.executor.GenericSlot``): an instance to be started while the generic
process is itself being started waits for it and is handed it, rather than starting a process of its own
beside it (which, under a tight machine-wide cap, then pushed the generic process out unused).

The launcher's start is held on an event here, to make that window as long as the test needs; the process
handed over is a real child that reads the handover message as the generic process does.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

from flamepy_core.engine.executor import READY_FD_ENV, GenericProcess, GenericSlot

CHILD = "import json, sys; m = json.loads(sys.stdin.read()); open(m['out'], 'w').write(' '.join(m['argv'][1:]))"


class _HeldLauncher:
    """Starts a stand-in generic process once ``release`` is set."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.release = threading.Event()
        self.started: list[GenericProcess] = []

    def start_generic(self) -> GenericProcess:
        assert self.release.wait(30), "the test never released the start"
        popen = subprocess.Popen([sys.executable, "-c", CHILD], stdin=subprocess.PIPE, start_new_session=True)
        process = GenericProcess(popen, sys.executable, {READY_FD_ENV: "7"}, -1)
        self.started.append(process)
        return process


def test_an_instance_handed_over_while_the_generic_process_starts_waits_for_it(tmp_path: Path) -> None:
    launcher = _HeldLauncher(tmp_path)
    slot = GenericSlot(launcher)  # type: ignore[arg-type]  # the slot uses start_generic and log_dir only
    filling = threading.Thread(target=slot.fill, daemon=True)
    filling.start()
    assert slot.held() == 1, "a generic process being started counts as held"

    handed: list[GenericProcess | None] = []
    out = tmp_path / "instance.out"
    handing = threading.Thread(
        target=lambda: handed.append(
            slot.hand_over([sys.executable, "service.py", "a"], tmp_path, {}, out, tmp_path / "instance.err")
        ),
        daemon=True,
    )
    handing.start()
    handing.join(0.3)
    assert handing.is_alive(), "the handover did not wait for the generic process being started"

    launcher.release.set()
    filling.join(30)
    handing.join(30)
    assert handed == [launcher.started[0]], "the instance was not handed the generic process once it started"
    process = launcher.started[0]
    assert process.popen.wait(timeout=30) == 0
    assert out.read_text() == "service.py a"
    assert slot.held() == 0, "handed over: no longer the slot's"
