"""Translating cached values between flamepy's envelope and Flame's tagged payloads.

flamepy's cache clients hand the cache a blob in flamepy's envelope (``FPY`` + kind + serializer name,
see :mod:`flamepy_core.wire.envelope`); Flame's SDK writes ``FLM\\x00`` + cloudpickle (and, for numpy
arrays and Arrow values, ``FLM\\x01``..``FLM\\x04`` + Arrow IPC), and treats untagged bytes as plain
cloudpickle. The two meet in two places, each translating at its own boundary so the other side never
needs to know:

* the Flight *client* (:func:`to_flame` before sending, :func:`from_flame` after receiving), so values we
  write read back in Flame's SDK as the same object, and values Flame's SDK wrote decode in ours;
* the Flight *server* (:func:`to_store` on write, :func:`to_wire` on read), so the runtime's one
  ``ObjectCache`` holds flamepy envelopes that both our own protocol and Flight can serve.

Every translation of a cloudpickle value is a header swap: nothing is unpickled on the server. Bytes
values are the one case that is re-encoded: Flame's SDK cloudpickles ``bytes`` like any other value, so
flamepy's raw-bytes envelope becomes ``FLM\\x00`` + ``cloudpickle.dumps(raw)`` (pickling bytes is safe).
Blobs neither side recognises pass through unchanged, byte for byte (``upload_object`` files, say).
"""

from __future__ import annotations

from typing import Any

import cloudpickle

from flamepy_core.contracts.errors import FlameError, FlameErrorCode
from flamepy_core.wire.envelope import KIND_BYTES, decode_value, parse, serialized

__all__ = [
    "CLOUDPICKLE",
    "TAG_ARROW_ARRAY",
    "TAG_ARROW_BATCH",
    "TAG_ARROW_TABLE",
    "TAG_CLOUDPICKLE",
    "TAG_NUMPY",
    "from_flame",
    "pickled_envelope",
    "to_flame",
    "to_store",
    "to_wire",
]

TAG_CLOUDPICKLE = b"FLM\x00"
TAG_NUMPY = b"FLM\x01"
TAG_ARROW_TABLE = b"FLM\x02"
TAG_ARROW_ARRAY = b"FLM\x03"
TAG_ARROW_BATCH = b"FLM\x04"
_ARROW_TAGS = (TAG_NUMPY, TAG_ARROW_TABLE, TAG_ARROW_ARRAY, TAG_ARROW_BATCH)
TAG_LEN = 4

CLOUDPICKLE = "cloudpickle"


def _pickle(value: Any) -> bytes:
    """cloudpickle with its default protocol, as Flame's SDK pickles."""
    return bytes(cloudpickle.dumps(value))


def pickled_envelope(payload: bytes) -> bytes:
    """flamepy's envelope around cloudpickle bytes: what ``put_object`` writes with the default serializer."""
    return serialized(CLOUDPICKLE, payload)


# -- the client's side ---------------------------------------------------------------------------


def to_flame(blob: bytes) -> bytes:
    """What to send a Flight cache for an envelope from ``put_object``: ``FLM\\x00`` + cloudpickle.

    A value encoded by another serializer (json, msgpack...) is decoded and cloudpickled, because Flame's
    SDK reads only cloudpickle: the value survives, the choice of serializer does not.
    """
    parts = parse(blob)
    if parts is None:
        return blob
    kind, name, payload = parts
    if kind == KIND_BYTES:
        return TAG_CLOUDPICKLE + _pickle(payload)
    if name == CLOUDPICKLE:
        return TAG_CLOUDPICKLE + payload
    return TAG_CLOUDPICKLE + _pickle(decode_value(blob))


def from_flame(data: bytes) -> bytes:
    """The envelope ``get_object`` decodes, for a payload a Flight cache returned.

    ``FLM\\x00`` and untagged bytes are cloudpickle (a header swap); an envelope stored by a flamepy client
    with another serializer comes back as it was; Flame's Arrow-tagged values (numpy arrays, Arrow
    tables, arrays, batches) are decoded with pyarrow and cloudpickled, as only Flame's SDK writes them.
    """
    head = data[:TAG_LEN]
    if head == TAG_CLOUDPICKLE:
        return pickled_envelope(data[TAG_LEN:])
    if head in _ARROW_TAGS:
        return pickled_envelope(_pickle(decode_arrow_tagged(data)))
    if parse(data) is not None:
        return data
    return pickled_envelope(data)


def decode_arrow_tagged(data: bytes) -> Any:
    """Decode one of Flame's ``FLM\\x01``..``FLM\\x04`` values (needs pyarrow; numpy for ``FLM\\x01``)."""
    import pyarrow as pa

    head, payload = data[:TAG_LEN], pa.BufferReader(data[TAG_LEN:])
    if head == TAG_NUMPY:
        try:
            return pa.ipc.read_tensor(payload).to_numpy()
        except ImportError as exc:  # pyarrow without numpy
            raise FlameError(
                FlameErrorCode.INVALID_ARGUMENT,
                "this cached object is a numpy array written by Flame's SDK; install numpy to read it",
            ) from exc
    reader = pa.ipc.open_stream(payload)
    if head == TAG_ARROW_TABLE:
        return reader.read_all()
    batch = reader.read_next_batch()
    return batch if head == TAG_ARROW_BATCH else batch.column(0)


# -- the server's side ---------------------------------------------------------------------------


def to_store(data: bytes) -> bytes:
    """What the runtime's ``ObjectCache`` keeps for a payload a Flight client sent.

    Only ``FLM\\x00`` is swapped for flamepy's cloudpickle envelope (so flamepy's own protocol can serve
    it too); anything else is kept byte for byte, so :func:`to_wire` gives back exactly what was sent.
    """
    if data[:TAG_LEN] == TAG_CLOUDPICKLE:
        return pickled_envelope(data[TAG_LEN:])
    return data


def to_wire(blob: bytes) -> bytes:
    """What a Flight reader gets for a stored blob: Flame's tag for what Flame's SDK can read, else as is."""
    parts = parse(blob)
    if parts is None:
        return blob
    kind, name, payload = parts
    if kind == KIND_BYTES:
        return TAG_CLOUDPICKLE + _pickle(payload)
    if name == CLOUDPICKLE:
        return TAG_CLOUDPICKLE + payload
    return blob  # another serializer's envelope: only flamepy clients can read it
