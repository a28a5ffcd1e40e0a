"""Flame's ``frontend_pb2_grpc``: ``FrontendStub``, ``FrontendServicer``, ``add_FrontendServicer_to_server``."""

from flamepy.proto._stubs import servicer_adder, servicer_class, stub_class
from flamepy_core.wire.methods import FRONTEND

FrontendStub = stub_class("flame.v1.Frontend", FRONTEND)
FrontendServicer = servicer_class("flame.v1.Frontend", FRONTEND)
add_FrontendServicer_to_server = servicer_adder("flame.v1.Frontend", FRONTEND)

__all__ = ["FrontendServicer", "FrontendStub", "add_FrontendServicer_to_server"]
