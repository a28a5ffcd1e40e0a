"""``flmping``: Flame's ping application — answers what it gets.

Input, as Flame's: an optional JSON object ``{"duration": ms, "memory": bytes}`` (either may be null or
absent). The service holds ``memory`` zero bytes for ``duration`` milliseconds and answers
``{"message": "Completed on <host> in <N> milliseconds with <size> memory"}``, plus ``"echo"``: the
request object it got. Input that is not a JSON object (including no input, which Flame refuses) is sent
back unchanged, so ``flmping`` also echoes raw bytes. Run with ``python -m flamepy_core.apps.flmping``.
"""

from __future__ import annotations

import json
import socket
import time
from typing import Any

from flamepy_core.contracts.errors import FlameError, FlameErrorCode
from flamepy_core.instance.runtime import run
from flamepy_core.instance.service import FlameService, TaskContext

__all__ = ["FlmpingService", "main"]

MAX_DURATION_MS = 24 * 3600 * 1000
MAX_MEMORY = 1 << 34


def _size(nbytes: int) -> str:
    value = float(nbytes)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    return f"{nbytes}B"  # pragma: no cover


def _number(request: dict[str, Any], name: str, limit: int) -> int:
    value = request.get(name)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= limit:
        raise FlameError(
            FlameErrorCode.INVALID_ARGUMENT, f"flmping: {name} must be a whole number from 0 to {limit}, got {value!r}"
        )
    return value


class FlmpingService(FlameService):
    """Echo, or Flame's ping: hold some memory for some time and say where and how long."""

    def on_task_invoke(self, context: TaskContext) -> bytes | None:
        data = context.input
        try:
            request = json.loads(data) if data else None
        except ValueError:
            request = None
        if not isinstance(request, dict):
            return data  # not a ping request: answer what was sent
        duration = _number(request, "duration", MAX_DURATION_MS)
        memory = _number(request, "memory", MAX_MEMORY)
        started = time.monotonic()
        held = bytearray(memory)
        if duration:
            time.sleep(duration / 1000)
        elapsed = round((time.monotonic() - started) * 1000)
        message = f"Completed on {socket.gethostname()} in {elapsed} milliseconds with {_size(len(held))} memory"
        del held
        return json.dumps({"message": message, "echo": request}).encode()


def main() -> None:
    run(FlmpingService())


if __name__ == "__main__":
    main()
