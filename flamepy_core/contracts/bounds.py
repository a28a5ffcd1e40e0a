"""The numbers behind the contracts' words: how long is "intact", how soon is "promptly", how large "large".

The transport contract (:mod:`flamepy_core.contracts.transport`) says a handler's error reaches the caller
*intact*, a cancelled stream stops its handler *promptly*, ``stop(grace)`` does not wait for handlers
that ignore it; the serializer contract (:mod:`flamepy_core.contracts.serializer`) that documents of any
size round-trip. A plugin author needs numbers to build against, and the conformance suite needs the same
numbers to check; both come from here. Each constant says what it bounds and why it has its value.
"""

from __future__ import annotations

from typing import Final

MAX_METHOD_PATH_BYTES: Final = 4096
"""Method paths (ASCII gRPC paths, ``/package.Service/Method``) of up to this many bytes reach their
handler intact, and ``ctx.method`` is the same string. A wire format with a one-byte length field (255)
is too small; HTTP/2 header limits are far above this."""

MAX_ERROR_MESSAGE_BYTES: Final = 16 * 1024
"""A handler's ``FlameError`` message of up to this many bytes of UTF-8 reaches the caller unchanged,
any Unicode included. A longer one may be cut, but it keeps its code and its first
:data:`ERROR_MESSAGE_KEPT_CHARS` characters. (The zmq transport cuts at exactly this size so that an error
frame always fits; gRPC carries 256 KiB.)"""

ERROR_MESSAGE_KEPT_CHARS: Final = 1024
"""How much of an error message over :data:`MAX_ERROR_MESSAGE_BYTES` must survive: its first 1,024
characters (at most 4 KiB of UTF-8, well inside the limit), where the reason usually is."""

DEADLINE_ROUND_UP: Final = 0.05
"""How much more time a handler's ``ctx.time_remaining()`` may report than its caller has left, as a
fraction of the caller's timeout: gRPC sends a deadline rounded up to three significant digits (a 1000.5 s
timeout travels as 1010 s), and its header compression may send instead a deadline it sent before that is
up to 3 % longer. Less is always allowed by the time the request took to arrive."""

DEADLINE_RESOLUTION_S: Final = 0.002
"""Absolute slack on either side of the deadline a handler sees (clock reads, millisecond encodings)."""

CANCEL_NOTICE_S: Final = 2.0
"""A caller that closes a stream early, or drops it, is noticed by the handler within this many seconds:
``ctx.is_active()`` turns False, and a stream handler is not asked for more items."""

STOP_OVERHEAD_S: Final = 2.0
"""``server.stop(grace)`` returns within ``grace`` plus this many seconds, even while handlers ignore their
context and hang: it ends their calls, it does not wait for their threads."""

PROMPT_FAILURE_S: Final = 3.0
"""What "promptly" means for a failure the transport detects itself (nobody listening, a closed channel,
a channel inherited through ``fork()`` that cannot be used in the child): reported within this many
seconds, never left to the call's deadline."""

STREAM_WINDOW_ITEMS: Final = 1024
STREAM_WINDOW_BYTES: Final = 16 * 1024 * 1024
"""Flow control may hold up to this much of a stream ahead of its reader. Streams themselves have no
length limit: the suite's long streams run four times past these, and must arrive complete, in order,
once each, without stalling. (The zmq transport's window is 256 items / 8 MiB; gRPC's HTTP/2 window
starts at 64 KiB.)"""

LONG_STREAM_FACTOR: Final = 4
"""How far past the flow-control window the suite's long streams go."""

LEAK_TOLERANCE: Final = 0.01
"""Calls leave nothing behind: after a batch of calls has settled, the process holds at most this
fraction of the batch's size in extra threads or file descriptors (pools may grow a little, a thread or
descriptor per call may not)."""

LARGE_DOCUMENT_BYTES: Final = 8 * 1024 * 1024
"""A serializer round-trips documents of any size; the suite's large documents hold about this many bytes
each (a string, a list and a dict of long strings, a long list of numbers and, where the domain has them,
raw bytes), so a 16-bit length field, a fixed buffer of a few MiB or a decompression cap shows."""
