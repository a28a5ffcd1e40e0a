"""The unix-socket transport (``uds:///PATH``): the framed kit over a plain unix socket, this machine only.

The caller writes its request on the socket itself, and the server's reader thread (or a host thread it
lent the link to) is the only thread woken to receive it: no libzmq I/O thread on either side. Chosen by
configuration (``FLAME_TRANSPORT=uds``); ZeroMQ stays the local default until uds is measured faster
on every row of ``benchmarks/bench_invoke.py`` (docs/transports/uds.md says where it is not yet).
"""
