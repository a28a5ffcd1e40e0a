"""Flame's ``frontend_pb2``: the ``flame.v1`` messages of ``frontend.proto`` (flamepy's generated module, re-exported)."""

from flamepy_core.wire.proto.frontend_pb2 import *  # noqa: F403
from flamepy_core.wire.proto.frontend_pb2 import DESCRIPTOR as DESCRIPTOR
