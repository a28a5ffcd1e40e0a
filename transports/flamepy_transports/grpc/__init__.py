"""The gRPC transport (``grpc://HOST:PORT``, ``http://HOST:PORT``, ``unix:///PATH``): Flame's own protocol.

Method names are gRPC paths and payloads are the raw message bytes, so a Flame client calling
``/flame.v1.Frontend/CreateTask`` lands on our handler, and our client can call Flame's servers.
The implementation (:mod:`flamepy_transports.grpc.transport`) is imported only when this transport is
chosen; this package and its plugin module import nothing heavy.
"""
