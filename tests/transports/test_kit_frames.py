"""The kit's frames: what ``encode`` writes, ``decode`` reads back field for field, and anything that is not
a frame of this protocol is refused as a ``ProtocolError`` naming what was wrong."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flamepy_core.kit import frames
from flamepy_core.kit.frames import HEADER, Kind, ProtocolError

methods = st.text(max_size=60).map(lambda text: text.encode("utf-8"))
payloads = st.binary(max_size=300)


@given(
    kind=st.sampled_from(list(Kind)),
    call_id=st.integers(0, (1 << 64) - 1),
    payload=payloads,
    method=methods,
    code=st.integers(0, 255),
    timeout=st.one_of(st.none(), st.floats(0, 1e6, allow_nan=False)),
    a=st.integers(0, (1 << 32) - 1),
    b=st.integers(0, (1 << 32) - 1),
)
def test_a_frame_reads_back_as_it_was_written(
    kind: Kind, call_id: int, payload: bytes, method: bytes, code: int, timeout: float | None, a: int, b: int
) -> None:
    message = b"".join(
        bytes(part)
        for part in frames.encode(kind, call_id, payload, method=method, code=code, timeout=timeout, a=a, b=b)
    )
    frame = frames.decode(message)
    assert frame.kind is kind
    assert (frame.call_id, frame.method, bytes(frame.payload)) == (call_id, method.decode("utf-8"), payload)
    assert (frame.code, frame.timeout, frame.a, frame.b) == (code, timeout, a, b)


@given(number=st.integers(0, 255).filter(lambda n: n not in {int(k) for k in Kind}))
def test_an_unknown_kind_is_refused_naming_it(number: int) -> None:
    message = HEADER.pack(frames.MAGIC, frames.VERSION, number, 0, 0, 1, -1.0, 0, 0)
    with pytest.raises(ProtocolError, match=f"unknown frame kind {number}"):
        frames.decode(message)


def test_what_is_not_a_frame_is_refused_saying_why() -> None:
    with pytest.raises(ProtocolError, match="shorter than"):
        frames.decode(b"FK")
    with pytest.raises(ProtocolError, match="not a flamepy frame"):
        frames.decode(b"XX" + bytes(HEADER.size))
    newer = HEADER.pack(frames.MAGIC, frames.VERSION + 1, int(Kind.REPLY), 0, 0, 1, -1.0, 0, 0)
    with pytest.raises(ProtocolError, match="version"):
        frames.decode(newer)
    cut = HEADER.pack(frames.MAGIC, frames.VERSION, int(Kind.UNARY), 0, 10, 1, -1.0, 0, 0) + b"/abc"
    with pytest.raises(ProtocolError, match="cut short"):
        frames.decode(cut)


@given(kind=st.sampled_from(list(Kind)), call_id=st.integers(0, (1 << 64) - 1), method=methods)
def test_the_head_of_a_frame_too_large_to_keep_names_its_call(kind: Kind, call_id: int, method: bytes) -> None:
    head = b"".join(bytes(part) for part in frames.encode(kind, call_id, b"x" * 10, method=method))
    assert frames.peek(head) == (kind, call_id, method.decode("utf-8"))
    assert frames.peek(head[: HEADER.size - 1]) is None, "a head cut before its end was read as a frame"
    unknown = HEADER.pack(frames.MAGIC, frames.VERSION, 99, 0, 0, call_id, -1.0, 0, 0)
    assert frames.peek(unknown) is None, "a head of an unknown kind was read as a frame"


@given(
    kind=st.sampled_from(list(Kind)),
    call_id=st.integers(0, (1 << 64) - 1),
    payload=payloads,
    method=methods,
)
def test_reply_of_reads_a_reply_in_place_and_nothing_else(
    kind: Kind, call_id: int, payload: bytes, method: bytes
) -> None:
    """``reply_of`` (a caller reading its own answer asks it of every message) agrees with ``decode``: the
    call and payload of a REPLY, None for every other kind, a frame of another protocol or version, and one
    cut inside its header or method."""
    message = b"".join(bytes(part) for part in frames.encode(kind, call_id, payload, method=method))
    found = frames.reply_of(message)
    if kind is Kind.REPLY:
        assert found is not None and found[0] == call_id and bytes(found[1]) == payload
    else:
        assert found is None
    assert frames.reply_of(b"XY" + message[2:]) is None  # another protocol
    assert frames.reply_of(message[:2] + bytes([frames.VERSION + 1]) + message[3:]) is None  # another version
    assert frames.reply_of(message[: HEADER.size - 1]) is None
    if method:
        assert frames.reply_of(message[: HEADER.size + len(method) - 1]) is None  # its method cut short


@given(
    kind=st.sampled_from(list(Kind)),
    call_id=st.integers(min_value=0, max_value=2**64 - 1),
    payload=payloads,
    method=methods,
)
def test_item_of_reads_an_item_in_place_and_nothing_else(
    kind: Kind, call_id: int, payload: bytes, method: bytes
) -> None:
    """``item_of`` (each result of a batch of tasks) agrees with ``decode`` as ``reply_of`` does, for ITEM
    frames; ``is_item`` looks at the kind alone, and says no to what is not a message at all."""
    message = b"".join(bytes(part) for part in frames.encode(kind, call_id, payload, method=method))
    found = frames.item_of(message)
    if kind is Kind.ITEM:
        assert found is not None and found[0] == call_id and bytes(found[1]) == payload
        assert frames.decode(message).kind is Kind.ITEM
    else:
        assert found is None
    assert frames.is_item(message) == (kind is Kind.ITEM)
    assert frames.item_of(b"XY" + message[2:]) is None  # another protocol
    assert frames.item_of(message[:2] + bytes([frames.VERSION + 1]) + message[3:]) is None  # another version
    assert frames.item_of(message[: HEADER.size - 1]) is None
    assert not frames.is_item(object()) and not frames.is_item(b"FK")
    if method:
        assert frames.item_of(message[: HEADER.size + len(method) - 1]) is None  # its method cut short


@given(st.integers(min_value=0, max_value=2**64 - 1), st.binary(max_size=300))
def test_unary_head_is_what_encode_writes_for_a_request_without_a_deadline(call_id: int, method: bytes) -> None:
    """The warm call's header, packed by hand (``frames.unary_head``), is byte for byte :func:`frames.encode`'s."""
    assert frames.unary_head(call_id, method) == frames.encode(Kind.UNARY, call_id, method=method)[0]
    frame = frames.decode(frames.unary_head(call_id, method) + b"payload")
    assert (frame.kind, frame.call_id, frame.timeout, frame.payload) == (Kind.UNARY, call_id, None, b"payload")
