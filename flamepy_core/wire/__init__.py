"""flame.v1 messages and method tables.

``flamepy_core.wire.proto`` holds the protobuf messages (Flame's ``flame.v1`` protocol plus our
``flamepy.cache.v1`` object cache); ``flamepy_core.wire.methods`` maps every rpc to its gRPC path
and message classes, so transports can move opaque bytes while callers still get typed messages.
"""
