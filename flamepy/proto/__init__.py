"""``flamepy.proto``: Flame's ``flame.v1`` protobuf and gRPC modules, under the names Flame ships.

``types_pb2``, ``frontend_pb2`` and ``shim_pb2`` are flamepy's own generated modules (the same message
classes and descriptors the runtime uses; ``tests/test_wire_descriptors.py`` checks them field for field
against Flame's published ones); the ``*_pb2_grpc`` modules hold the stubs, servicers and
``add_*_to_server`` functions, built from the same descriptors. Importing this package imports none of
them: import the module you need.
"""
