"""A transport that reuses call ids too soon (see ``broken_transports.py``).

* ``broken-recycle`` - a multiplexing client: each call gets an id, its reply is routed to whoever holds
  that id when it arrives. Ids come from a free list, and a call that gives up at its deadline puts its id
  back at once, although its reply may still come: that late reply is delivered to the next call holding
  the id.
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Future, ThreadPoolExecutor

from broken_transports import _Wrapped, channel_flaw

from flamepy_core.contracts.transport import DEFAULT_TIMEOUT, Channel, Timeout
from flamepy_core.transport_kit import DEFAULT_CALL_TIMEOUT, deadline_exceeded, resolve_timeout


class RecyclingIdsChannel(_Wrapped):
    """Routes replies by call id; ids come from a free list, and an abandoned call's id is free at once."""

    def __init__(self, inner: Channel) -> None:
        super().__init__(inner)
        self._lock = threading.Lock()
        self._free: list[int] = []
        self._next = 1
        self._waiting: dict[int, queue.SimpleQueue[Future[bytes]]] = {}
        self._wire = ThreadPoolExecutor(max_workers=48, thread_name_prefix="broken-recycle-wire")

    def _take(self) -> int:
        with self._lock:
            if self._free:
                return self._free.pop()
            self._next += 1
            return self._next - 1

    def _give_back(self, call_id: int) -> None:
        with self._lock:
            self._waiting.pop(call_id, None)
            self._free.append(call_id)

    def unary(self, method: str, request: bytes, timeout: Timeout = DEFAULT_TIMEOUT) -> bytes:
        seconds = resolve_timeout(timeout, DEFAULT_CALL_TIMEOUT)
        call_id = self._take()
        inbox: queue.SimpleQueue[Future[bytes]] = queue.SimpleQueue()
        with self._lock:
            self._waiting[call_id] = inbox

        def route(reply: Future[bytes]) -> None:
            with self._lock:
                holder = self._waiting.pop(call_id, None)  # whoever holds the id now
            if holder is not None:
                holder.put(reply)

        self._wire.submit(self._inner.unary, method, bytes(request), None).add_done_callback(route)
        try:
            reply = inbox.get(timeout=seconds)
        except queue.Empty:
            self._give_back(call_id)  # the flaw: free again while its reply is still on its way
            raise deadline_exceeded(method, self.endpoint, seconds) from None
        self._give_back(call_id)
        return reply.result()

    def close(self) -> None:
        self._wire.shutdown(wait=False)
        super().close()


BROKEN = [channel_flaw("recycle", RecyclingIdsChannel)]
