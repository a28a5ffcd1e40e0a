"""Generated protobuf modules and their ``.proto`` sources.

``types``/``frontend``/``shim`` are Flame's published ``flame.v1`` protocol, written field for field
from the 0.6 wire table so the bytes interoperate with Flame itself; ``cache`` is flamepy's own
``flamepy.cache.v1`` object-cache service.  Do not edit the ``*_pb2.py``/``*_pb2.pyi`` files by
hand: change the ``.proto`` and run ``python scripts/gen_protos.py``.
"""
