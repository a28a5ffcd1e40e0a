"""Flame's ``shim_pb2_grpc``: ``InstanceStub``, ``InstanceServicer``, ``add_InstanceServicer_to_server``."""

from flamepy.proto._stubs import servicer_adder, servicer_class, stub_class
from flamepy_core.wire.methods import INSTANCE

InstanceStub = stub_class("flame.v1.Instance", INSTANCE)
InstanceServicer = servicer_class("flame.v1.Instance", INSTANCE)
add_InstanceServicer_to_server = servicer_adder("flame.v1.Instance", INSTANCE)

__all__ = ["InstanceServicer", "InstanceStub", "add_InstanceServicer_to_server"]
