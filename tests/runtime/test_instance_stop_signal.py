"""A service process stops on SIGTERM whichever of its threads the kernel hands the signal to.

Python runs a signal's handler on the main thread, when that thread next runs Python code. A service's
main thread waits for calls; if the kernel delivers SIGTERM to another thread (a transport's I/O thread,
the heartbeat), the handler, which is what ends that wait, must still run. The service here directs the
signal at one of its own other threads (``pthread_kill``), which is the case that used to leave the
process serving forever; it must end by SIGTERM, as the server expects.
"""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

from conftest import start_service_as_runtime

from flamepy_core.engine.executor import class_path
from flamepy_core.plugins import get_registry
from flamepy_core.wire.payload_messages import ON_TASK_INVOKE, task_context
from flamepy_core.wire.proto import types_pb2 as pb

SERVICE = """
import signal, threading
import flamepy

class Stopper(flamepy.FlameService):
    def on_task_invoke(self, context):
        parked = threading.Event()

        def other_thread():
            parked.wait(0.5)  # the answer is out and the main thread waits for the next call
            signal.pthread_kill(threading.get_ident(), signal.SIGTERM)
            parked.wait(60)

        threading.Thread(target=other_thread, daemon=True).start()
        return b"ok"

if __name__ == "__main__":
    flamepy.run(Stopper())
"""


def test_sigterm_handed_to_another_thread_still_stops_the_service(tmp_path: Path) -> None:
    endpoint = f"zmq+ipc://{tmp_path}/instance.ipc"
    transport = get_registry().transport(endpoint)
    process = start_service_as_runtime(tmp_path, SERVICE, endpoint, class_path(transport))
    channel = None
    try:
        channel = transport.connect(endpoint)
        reply = pb.TaskResult.FromString(channel.unary(ON_TASK_INVOKE, task_context("1", "s1", b""), 30))
        assert reply.return_code == 0, reply.message
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            raise AssertionError("SIGTERM handed to a thread other than the main one did not stop it") from None
        assert process.returncode == -signal.SIGTERM, f"ended with {process.returncode}, not by SIGTERM"
    finally:
        if channel is not None:
            channel.close()
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=30)
