"""Flame's ``shim_pb2``: the ``flame.v1`` messages of ``shim.proto`` (flamepy's generated module, re-exported)."""

from flamepy_core.wire.proto.shim_pb2 import *  # noqa: F403
from flamepy_core.wire.proto.shim_pb2 import DESCRIPTOR as DESCRIPTOR
