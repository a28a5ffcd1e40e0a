"""The runtime: store (sqlite), session/task state, scheduler, executor (instance processes), object cache,
and the server that exposes them over any transport.

The engine never deserializes a user payload: task inputs, outputs, session common data and cached objects
are opaque bytes here.
"""
