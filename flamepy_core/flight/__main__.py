"""``python -m flamepy_core.flight``: a standalone Flame-compatible object cache (Arrow Flight).

For pointing Flame's SDK (``FLAME_CACHE_ENDPOINT=grpc://127.0.0.1:9090``) or flamepy with
``FLAME_CACHE_ENDPOINT=flight://127.0.0.1:9090`` at a cache without running the flamepy runtime. Next to
the runtime, use ``python -m flamepy_core.engine --flight-listen ...`` instead: it shares the runtime's store.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from flamepy_core.contracts.errors import FlameError
from flamepy_core.wire.flight import require_pyarrow


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
    stopped.wait()
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
