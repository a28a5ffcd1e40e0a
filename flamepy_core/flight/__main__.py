"""``python -m flamepy_core.flight``: a standalone Flame-compatible object cache (Arrow Flight).

For pointing Flame's SDK (``FLAME_CACHE_ENDPOINT=grpc://127.0.0.1:9090``) or flamepy with
``FLAME_CACHE_ENDPOINT=flight://127.0.0.1:9090`` at a cache without running the flamepy runtime. Next to
the runtime, use ``python -m flamepy_core.engine --flight-listen ...`` instead: it shares the runtime's store.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from flamepy_core.contracts.errors import FlameError
from flamepy_core.wire.flight import require_pyarrow

SIGNAL_CHECK = 0.5
"""Seconds between the main thread's looks for a signal handled on its behalf (see :func:`main`)."""
STOP_GRACE = 10.0
"""Seconds the calls in flight get to finish once a stop is asked for."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flamepy_core.flight", description=__doc__)
    parser.add_argument("--listen", default="grpc://127.0.0.1:9090", help="grpc://host:port (port 0 = any free)")
    parser.add_argument("--db", type=Path, default=None, help="sqlite file to keep objects in (default: temporary)")
    parser.add_argument("--storage", type=Path, default=None, help="Flame's shared local-storage directory")
    parser.add_argument("--public-endpoint", default=None, help="the grpc:// address put into ObjectRefs")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        require_pyarrow("python -m flamepy_core.flight")
        from flamepy_core.engine.flight import FlightCacheServer

        server = FlightCacheServer.standalone(
            args.listen, db_path=args.db, storage=args.storage, public_endpoint=args.public_endpoint
        )
    except FlameError as exc:
        print(f"flight cache: {exc}", file=sys.stderr)
        return 1
    stopped = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stopped.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    print(f"Flame-compatible Flight cache listening on {server.endpoint}", flush=True)
    # The kernel may hand SIGTERM to one of the Flight server's own threads: Python then runs the handler
    # only when the main thread next runs Python code, which a wait without a deadline never does. So the
    # wait is cut every SIGNAL_CHECK seconds (it hung the process under load).
    while not stopped.wait(SIGNAL_CHECK):
        pass
    # Arrow Flight's shutdown waits for the calls in flight, with no deadline of its own: a client that
    # never ends its call would keep this process for ever. They get STOP_GRACE seconds.
    stopping = threading.Thread(target=server.stop, name="flight-stop", daemon=True)
    stopping.start()
    stopping.join(STOP_GRACE)
    if stopping.is_alive():
        logging.getLogger(__name__).warning(
            "calls still in flight %.0f s after the stop was asked for: exiting without them", STOP_GRACE
        )
        logging.shutdown()
        os._exit(0)  # the server's own threads are still in its shutdown: do not wait for them at exit either
    return 0


if __name__ == "__main__":
    sys.exit(main())
