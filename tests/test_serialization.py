"""Task payload framing (``flamepy_core.serialization``): plain cloudpickle for Flame, framed otherwise,
and a mismatch between client and service is an error naming both serializers, in both directions."""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from typing import Any

import cloudpickle
import pytest
from flamepy_serializers.cloudpickle.serializer import CloudpickleSerializer
from hypothesis import given, settings
from hypothesis import strategies as st

from flamepy_core.contracts.errors import FlameError, FlameErrorCode
from flamepy_core.plugins import get_registry
from flamepy_core.serialization import (
    FRAME_MAGIC,
    application_environments,
    decode_payload,
    encode_payload,
    frame_header,
    payload_serializer,
)

CHOOSE = (
    "choose the same serializer on both sides (Session(serializer=...), FlameInstance(serializer=...), "
    "FLAME_SERIALIZER or the application's `serializer`)"
)


@dataclass
class Point:
    x: int
    y: int


def ser(name: str) -> Any:
    return get_registry().serializer(name)


@pytest.mark.parametrize("value", [None, 1, "text", [1, 2, {"a": (3, 4)}], Point(1, 2), b"\x00\x80raw", {1, 2}])
def test_cloudpickle_payloads_are_plain_cloudpickle_bytes(value: Any) -> None:
    payload = encode_payload(value, ser("cloudpickle"))
    assert payload == cloudpickle.dumps(value)  # byte-identical to what Flame's SDK sends
    assert not payload.startswith(FRAME_MAGIC)
    assert decode_payload(payload, ser("cloudpickle"), peer="client") == value


@settings(max_examples=300)
@given(
    value=st.binary(max_size=70000)
    | st.text()
    | st.integers()
    | st.integers(min_value=-(1 << 2000), max_value=1 << 2000)
    | st.floats()
    | st.booleans()
    | st.none(),
    protocol=st.none() | st.integers(min_value=2, max_value=pickle.HIGHEST_PROTOCOL),
)
def test_plain_values_are_the_bytes_cloudpickle_writes(value: Any, protocol: int | None) -> None:
    """bytes, str, int, float, bool and None are written by pickle itself (cloudpickle's pickler costs
    four times as much to set up): byte for byte what cloudpickle writes, at every protocol."""
    serializer = CloudpickleSerializer(protocol)
    assert serializer.dumps(value) == cloudpickle.dumps(value, protocol=protocol)


def test_flame_sdk_plain_bytes_decode_with_cloudpickle() -> None:
    flame_payload = cloudpickle.dumps({"from": "flame"}, protocol=pickle.DEFAULT_PROTOCOL)
    assert decode_payload(flame_payload, ser("cloudpickle"), peer="client") == {"from": "flame"}


@pytest.mark.parametrize(
    ("name", "value"),
    [("json", {"a": [1, 2.5, None, True]}), ("msgpack", {"b": b"\x00", 1: [2]}), ("pickle", (1, Point(3, 4)))],
)
def test_other_serializers_are_framed_with_their_name(name: str, value: Any) -> None:
    s = ser(name)
    payload = encode_payload(value, s)
    assert payload == FRAME_MAGIC + bytes([len(name)]) + name.encode() + s.dumps(value)
    assert payload.startswith(frame_header(name))
    assert payload_serializer(payload) == (name, len(FRAME_MAGIC) + 1 + len(name))
    assert decode_payload(payload, s, peer="client") == value
    assert decode_payload(bytearray(payload), s, peer="client") == value


def test_framed_payload_of_another_serializer_is_refused_naming_both() -> None:
    payload = encode_payload({"a": 1}, ser("json"))
    with pytest.raises(FlameError) as info:
        decode_payload(payload, ser("cloudpickle"), peer="client", what="request")
    assert info.value.code == FlameErrorCode.INVALID_ARGUMENT
    assert info.value.message == (
        f"the client's request was encoded with 'json' but this service uses 'cloudpickle'; {CHOOSE}"
    )


def test_plain_bytes_reaching_a_non_cloudpickle_side_name_cloudpickle_and_the_local_one() -> None:
    payload = encode_payload([1, 2], ser("cloudpickle"))
    with pytest.raises(FlameError) as info:
        decode_payload(payload, ser("json"), peer="service", what="result", chosen_by="argument")
    assert info.value.code == FlameErrorCode.INVALID_ARGUMENT
    assert info.value.message == (
        "the service's result was encoded with 'cloudpickle' (plain bytes, Flame's default) but this client "
        f"uses 'json' (from argument); {CHOOSE}"
    )


def test_framed_mismatch_between_two_framed_serializers() -> None:
    payload = encode_payload([1, 2], ser("msgpack"))
    with pytest.raises(FlameError) as info:
        decode_payload(payload, ser("json"), peer="service", what="result")
    assert "encoded with 'msgpack' but this client uses 'json'" in info.value.message


def test_msgpack_bytes_are_never_read_as_json_or_vice_versa() -> None:
    # Unframed, msgpack's 49 is the byte b"1", which JSON reads as 1: the frame prevents the silent misread.
    assert ser("msgpack").dumps(49) == b"1" and ser("json").loads(b"1") == 1
    payload = encode_payload(49, ser("msgpack"))
    with pytest.raises(FlameError, match=r"'msgpack' but this service uses 'json'"):
        decode_payload(payload, ser("json"), peer="client")


def test_truncated_frame_header_is_a_clear_error() -> None:
    with pytest.raises(FlameError) as info:
        decode_payload(FRAME_MAGIC + b"\x09js", ser("json"), peer="client")
    assert info.value.code == FlameErrorCode.INVALID_ARGUMENT
    assert "malformed flamepy payload" in info.value.message


def test_encode_failure_names_type_and_serializer_and_happens_before_sending() -> None:
    with pytest.raises(FlameError) as info:
        encode_payload(lambda: 1, ser("json"))
    assert info.value.code == FlameErrorCode.INVALID_ARGUMENT
    assert "serializer 'json' cannot encode a value of type function" in info.value.message
    with pytest.raises(FlameError, match="serializer 'json' cannot encode a value of type tuple"):
        encode_payload((1, 2), ser("json"))
    with pytest.raises(FlameError, match="serializer 'pickle' cannot encode a value of type function"):
        encode_payload(lambda: 1, ser("pickle"))
    with pytest.raises(FlameError, match="serializer 'msgpack' cannot encode a value of type int"):
        encode_payload(2**64, ser("msgpack"))


def test_decode_failure_names_the_serializer() -> None:
    with pytest.raises(FlameError, match="serializer 'json' cannot decode"):
        decode_payload(frame_header("json") + b"{not json", ser("json"), peer="client")
    with pytest.raises(FlameError, match="serializer 'cloudpickle' cannot decode"):
        decode_payload(b"\x80\x05garbage", ser("cloudpickle"), peer="client")


class _Sloppy:
    """A third-party serializer that raises plain exceptions: the framing layer still names it."""

    name = "sloppy"
    domain = "bytes"

    def dumps(self, obj: Any) -> bytes:
        if not isinstance(obj, bytes):
            raise TypeError("bytes only")
        return obj

    def loads(self, data: bytes) -> Any:
        if data == b"bad":
            raise ValueError("no")
        return data


def test_third_party_errors_are_wrapped_naming_the_serializer() -> None:
    with pytest.raises(FlameError) as info:
        encode_payload("text", _Sloppy())
    assert info.value.code == FlameErrorCode.INVALID_ARGUMENT
    assert "serializer 'sloppy' cannot encode a value of type str: TypeError: bytes only" in info.value.message
    with pytest.raises(FlameError, match="serializer 'sloppy' cannot decode the client's request"):
        decode_payload(frame_header("sloppy") + b"bad", _Sloppy(), peer="client", what="request")


def test_json_refuses_what_it_would_change() -> None:
    json_ser = ser("json")
    for value, fragment in [
        ((1, 2), "tuple is not a JSON type"),
        ({1: "a"}, "dict key 1 (int) is not a str"),
        (float("nan"), "float nan has no JSON form"),
        ({"a": [{1, 2}]}, "at value['a'][0]: set is not a JSON type"),
    ]:
        with pytest.raises(FlameError) as info:
            json_ser.dumps(value)
        assert fragment in info.value.message, info.value.message


def test_msgpack_keeps_int_keys_and_bytes() -> None:
    m = ser("msgpack")
    value = {1: b"\x00\xff", "s": [None, True, 2**64 - 1, -(2**63), 1.5]}
    assert m.loads(m.dumps(value)) == value


def test_application_environments_carries_the_serializer() -> None:
    assert application_environments(None, "json") == {"FLAME_SERIALIZER": "json"}
    assert application_environments({"A": "1"}, "json") == {"A": "1", "FLAME_SERIALIZER": "json"}
    assert application_environments({"A": "1"}, None) == {"A": "1"}
    assert application_environments({"FLAME_SERIALIZER": "json"}, "json") == {"FLAME_SERIALIZER": "json"}
    with pytest.raises(FlameError) as info:
        application_environments({"FLAME_SERIALIZER": "msgpack"}, "json", source="app.yaml")
    assert info.value.code == FlameErrorCode.INVALID_ARGUMENT
    assert "app.yaml: serializer 'json' contradicts environments FLAME_SERIALIZER='msgpack'" in info.value.message
