"""The msgpack serializer: compact binary, readable from most languages (needs ``pip install flamepy[msgpack]``)."""
