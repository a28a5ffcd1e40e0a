"""The embedded default keeps working when its local server goes away, and bursts stay within the machine."""

from __future__ import annotations

from conftest import FlameEnv

SERVICE = """
import os
from flamepy import service

ins = service.FlameInstance()

@ins.entrypoint
def pid(req):
    return os.getpid()

if __name__ == "__main__":
    ins.run()
"""


def test_a_client_restarts_the_local_server_it_lost(flame_env: FlameEnv) -> None:
    flame_env.write_service("pids", SERVICE)
    out = flame_env.python(
        """
        import subprocess, sys
        import flamepy
        from flamepy.service import Session
        from flamepy_core.client.local import live_server
        from pathlib import Path
        import os

        home = Path(os.environ["FLAME_HOME"])
        first = live_server(home)["pid"]
        with Session("pids") as s:
            s.invoke(None)
        subprocess.run([sys.executable, "-m", "flamepy_core.cli.main", "server", "stop"], check=True)
        assert live_server(home) is None
        # Same process, same default connection: the next call starts a new server and goes through.
        with Session("pids", ctx={"n": 1}) as s:
            assert isinstance(s.invoke(None), int)
            assert s.context() == {"n": 1}
        second = live_server(home)["pid"]
        print("restarted", first != second)
        """
    )
    assert "restarted True" in out.stdout


def test_a_burst_of_tasks_starts_no_more_instances_than_cpus(flame_env: FlameEnv) -> None:
    flame_env.write_service("pids", SERVICE)
    out = flame_env.python(
        """
        import os
        from concurrent.futures import wait
        from flamepy.service import Session

        with Session("pids") as s:
            futures = [s.run(None) for _ in range(40)]
            done, pending = wait(futures, timeout=60)
            assert not pending
            pids = {f.result() for f in futures}
        print("instances", len(pids), "cpus", os.cpu_count())
        """
    )
    words = out.stdout.split()
    instances, cpus = int(words[1]), int(words[3])
    assert 1 <= instances <= cpus, out.stdout
