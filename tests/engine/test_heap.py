"""The server's heap settings for large buffers (flamepy_core.engine.heap): applied on glibc (in a process of
their own here: they change the heap of the process that calls them), by the server's main before anything
else; the user's own malloc settings are left alone.

What they save is measured, not asserted (docs/benchmarks.md, "Large payloads: the server's heap"): a
server's page faults per 16 MiB invoke without them were 4,096 to 8,192 in most runs but 0 in some, and
with them 0 in most but a buffer's worth now and then, so no fault count tells the two apart every time."""

from __future__ import annotations

import subprocess
import sys

import pytest

from flamepy_core.engine import __main__ as engine_main
from flamepy_core.engine.heap import keep_large_buffers


def _is_glibc() -> bool:
    try:
        import ctypes

        ctypes.CDLL(None).gnu_get_libc_version  # noqa: B018 - present in glibc only
    except (OSError, AttributeError):
        return False
    return sys.platform.startswith("linux")


@pytest.mark.skipif(not _is_glibc(), reason="the settings are glibc's")
def test_the_settings_are_accepted_by_glibc() -> None:
    code = "from flamepy_core.engine.heap import keep_large_buffers; print(keep_large_buffers({}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "True", out.stderr


@pytest.mark.parametrize(
    "environ",
    [
        {"GLIBC_TUNABLES": "glibc.malloc.arena_max=4"},
        {"GLIBC_TUNABLES": "glibc.rtld.optional_static_tls=512:glibc.malloc.trim_threshold=0"},
        {"MALLOC_ARENA_MAX": "2"},
        {"MALLOC_MMAP_THRESHOLD_": "131072"},
    ],
)
def test_the_users_own_malloc_settings_win(environ: dict[str, str]) -> None:
    assert keep_large_buffers(environ) is False


def test_the_servers_main_applies_them_before_anything_else(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    monkeypatch.setattr(engine_main, "keep_large_buffers", lambda: calls.append("heap"))
    registry = engine_main.get_registry
    monkeypatch.setattr(engine_main, "get_registry", lambda: calls.append("registry") or registry())
    with pytest.raises(SystemExit):
        engine_main.main(["--help"])  # argparse answers --help and exits: nothing is started
    assert calls[:1] == ["heap"], calls
