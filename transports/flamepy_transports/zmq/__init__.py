"""The ZeroMQ transport: ``zmq+tcp://HOST:PORT`` and ``zmq+ipc:///PATH``.

Shape. A channel owns one DEALER socket, a server one ROUTER socket; one thread at a time uses a socket
(zmq sockets are not thread-safe). A channel's I/O thread carries its calls: callers register a call under
a fresh correlation id, append its frames to a queue and wake the I/O thread, which sends, receives, and
hands each reply to the call with that correlation id. A call on an idle channel instead uses the socket
itself, lent by the I/O thread (``direct_calls``): a synchronous caller sends and reads its reply, an
asynchronous one sends and leaves the reply to the I/O thread, which waits on the socket's descriptor
(``ZMQ_FD``) and so needs no wake-up. Server handlers run on a worker pool; a deferred handler's ``fn``
runs on the I/O thread. Their replies are sent by the thread that completes them when the server's I/O
thread is waiting (it waits on the ROUTER's descriptor, leaving the socket free), else queued for it. The
wire format is in :mod:`.framing` (two frames, no pickling).

High-water marks (``sndhwm`` / ``rcvhwm``, default 1000 messages per connection). They bound the memory
libzmq queues per peer; they are never what sheds load, and nothing is ever dropped silently when one is
reached:

* a channel sends only on a connection its socket monitor has confirmed (and replaces its DEALER when an
  established connection is lost, so nothing queued for a dead server reaches the next one). When its
  send pipe is full (the server reads slower than callers write), the I/O thread keeps the request in
  its own queue and retries when the socket becomes writable; the caller sees its reply, or
  ``DEADLINE_EXCEEDED``;
* the server's ROUTER has ``ZMQ_ROUTER_MANDATORY``: a reply to a peer whose pipe is full is kept and
  retried (never dropped); a reply to a peer that has gone away is discarded and its call cancelled;
* the receiving sides are drained by their I/O threads at once; a full receive pipe stops libzmq
  reading the connection, which pushes back on the sender (TCP / unix socket flow control);
* the server's inbox is bounded by ``max_pending_calls`` (queued + running): one call more is answered
  at once with ``RESOURCE_EXHAUSTED``, so a flooded server keeps answering and every refusal is visible.

Streams carry their own credit-based flow control (:mod:`.config`: 256 items / 8 MiB in flight), so a
slow consumer holds the producing handler back instead of filling the HWM.

Heartbeats: ZMTP PING/PONG (``ZMQ_HEARTBEAT_IVL`` / ``_TIMEOUT`` / ``_TTL``, default 1 s / 3 s). A peer
that crashes closes its sockets and is noticed at once; one that vanishes silently (frozen process,
lost network) is dropped after at most ``heartbeat_ivl_ms + heartbeat_timeout_ms``. A channel watches
its socket monitor: on a disconnect every call in flight fails with ``UNAVAILABLE`` then, not at its
deadline; a call made while nobody listens fails with ``UNAVAILABLE`` at the first refused connection
attempt (about 0.1 s) or after ``connect_timeout``; the channel reconnects by itself when a server comes
back on the same endpoint.

CURVE (``auth.py``): the server admits only the configured client public keys through its ZAP handler;
a refused client fails with ``UNAUTHENTICATED`` as soon as the handshake is refused (the monitor reports
``HANDSHAKE_FAILED_AUTH``), never reaching a handler.

Fork: channels rebuild their context, socket and thread in a forked child (the parent's are left
alone); a server used from a child raises ``FlameError(INVALID_STATE)``.
"""
