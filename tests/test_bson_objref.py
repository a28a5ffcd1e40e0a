"""flamepy_core.bson and flamepy_core.objref: the BSON subset, Flame's ObjectRef bytes and key rules."""

from __future__ import annotations

import re
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flamepy_core import bson
from flamepy_core.contracts.errors import FlameError, FlameErrorCode
from flamepy_core.objref import (
    WILDCARD_SESSION,
    InvalidObjectRefError,
    ObjectKey,
    ObjectRef,
    parse_delete_prefix,
    parse_full_key,
    parse_key_or_prefix,
    parse_prefix,
)
from flamepy_core.wire.proto import cache_pb2

# --------------------------------------------------------------------------------------------------
# Strategies and helpers

_keys = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=12)
_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text(st.characters(codec="utf-8"), max_size=20)
    | st.binary(max_size=20)
)
_values = st.recursive(
    _scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_keys, children, max_size=4),
    max_leaves=25,
)
_documents = st.dictionaries(_keys, _values, max_size=6)


def _canon(value: Any) -> Any:
    """A form where equality also checks types and key order (plain ``==`` says ``True == 1``)."""
    if isinstance(value, dict):
        return ("dict", [(k, _canon(v)) for k, v in value.items()])
    if isinstance(value, list):
        return ("list", [_canon(v) for v in value])
    if isinstance(value, float):
        return ("float", struct.pack("<d", value))  # tells -0.0 from 0.0
    return (type(value).__name__, value)


def _doc(body: bytes) -> bytes:
    """Wrap element bytes into a document with a correct length and terminator (for hand-built inputs)."""
    return struct.pack("<i", len(body) + 5) + body + b"\x00"


# --------------------------------------------------------------------------------------------------
# BSON: round trips and exact encodings


@given(_documents)
def test_round_trip_keeps_values_types_and_key_order(doc: dict[str, Any]) -> None:
    encoded = bson.encode(doc)
    assert struct.unpack_from("<i", encoded)[0] == len(encoded)
    assert _canon(bson.decode(encoded)) == _canon(doc)


@given(st.dictionaries(_keys, st.floats(), max_size=4))
def test_any_float_including_nan_re_encodes_identically(doc: dict[str, float]) -> None:
    encoded = bson.encode(doc)
    assert bson.encode(bson.decode(encoded)) == encoded


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        ({}, b"\x05\x00\x00\x00\x00"),
        ({"f": 1.0}, _doc(b"\x01f\x00" + b"\x00\x00\x00\x00\x00\x00\xf0\x3f")),
        ({"s": "hé"}, _doc(b"\x02s\x00\x04\x00\x00\x00h\xc3\xa9\x00")),
        ({"d": {}}, _doc(b"\x03d\x00\x05\x00\x00\x00\x00")),
        ({"l": ["a"]}, _doc(b"\x04l\x00" + b"\x0e\x00\x00\x00\x020\x00\x02\x00\x00\x00a\x00\x00")),
        ({"x": b"hi"}, _doc(b"\x05x\x00\x02\x00\x00\x00\x00hi")),
        ({"t": True, "f": False}, _doc(b"\x08t\x00\x01\x08f\x00\x00")),
        ({"n": None}, _doc(b"\x0an\x00")),
        ({"i": -2}, _doc(b"\x10i\x00\xfe\xff\xff\xff")),
        ({"i": 2**40}, _doc(b"\x12i\x00" + struct.pack("<q", 2**40))),
    ],
)
def test_exact_encoding_per_type(doc: dict[str, Any], expected: bytes) -> None:
    assert bson.encode(doc) == expected
    assert _canon(bson.decode(expected)) == _canon(doc)


@pytest.mark.parametrize(
    ("value", "type_byte"),
    [
        (0, 0x10),
        (2**31 - 1, 0x10),
        (-(2**31), 0x10),
        (2**31, 0x12),
        (-(2**31) - 1, 0x12),
        (2**63 - 1, 0x12),
        (-(2**63), 0x12),
    ],
)
def test_int32_int64_boundaries(value: int, type_byte: int) -> None:
    encoded = bson.encode({"v": value})
    assert encoded[4] == type_byte
    assert len(encoded) == (4 + 1 + 2 + (4 if type_byte == 0x10 else 8) + 1)
    assert bson.decode(encoded) == {"v": value}


@pytest.mark.parametrize("value", [2**63, -(2**63) - 1, 10**30])
def test_int_out_of_int64_range_is_refused(value: int) -> None:
    with pytest.raises(ValueError, match="int64"):
        bson.encode({"outer": {"v": value}})
    with pytest.raises(ValueError, match=r"outer\.v"):  # the message names the key path
        bson.encode({"outer": {"v": value}})


def test_encode_refusals() -> None:
    with pytest.raises(TypeError, match="keys must be str"):
        bson.encode({1: "x"})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="NUL"):
        bson.encode({"a\x00b": 1})
    with pytest.raises(TypeError, match=r"cannot BSON-encode set at a\[1\]"):
        bson.encode({"a": [1, {2}]})
    with pytest.raises(ValueError, match="UTF-8"):
        bson.encode({"s": "\ud800"})
    with pytest.raises(TypeError, match="mapping"):
        bson.encode([("a", 1)])  # type: ignore[arg-type]


def test_self_reference_and_deep_nesting_fail_cleanly() -> None:
    loop: dict[str, Any] = {}
    loop["me"] = loop
    with pytest.raises(ValueError, match="nesting deeper"):
        bson.encode(loop)
    deep: dict[str, Any] = {}
    for _ in range(bson.MAX_DEPTH + 5):
        deep = {"d": deep}
    with pytest.raises(ValueError, match="nesting deeper"):
        bson.encode(deep)


# --------------------------------------------------------------------------------------------------
# BSON: corrupted input

_SAMPLE = bson.encode({"a": "xyz", "b": [1, 2**40], "c": {"d": b"\x01\x02", "e": None, "f": True}, "g": 2.5})


def test_every_truncation_is_rejected() -> None:
    for cut in range(len(_SAMPLE)):
        with pytest.raises(bson.BSONDecodeError):
            bson.decode(_SAMPLE[:cut])


def test_every_trailing_extension_is_rejected() -> None:
    with pytest.raises(bson.BSONDecodeError, match="length field says"):
        bson.decode(_SAMPLE + b"\x00")


@pytest.mark.parametrize("delta", [-1, 1, 1000, -(2**31) - 1 + 2**32])
def test_bad_outer_length(delta: int) -> None:
    length = (len(_SAMPLE) + delta) % 2**32
    corrupted = struct.pack("<I", length) + _SAMPLE[4:]
    with pytest.raises(bson.BSONDecodeError, match="offset 0"):
        bson.decode(corrupted)


def test_missing_terminator() -> None:
    corrupted = _SAMPLE[:-1] + b"\x01"
    with pytest.raises(bson.BSONDecodeError, match=rf"offset {len(_SAMPLE) - 1}: .*terminator"):
        bson.decode(corrupted)


@pytest.mark.parametrize("type_byte", [0x06, 0x07, 0x09, 0x0B, 0x11, 0x13, 0x7F, 0xFF])
def test_unknown_type_byte_names_type_and_offset(type_byte: int) -> None:
    corrupted = bytearray(_SAMPLE)
    corrupted[4] = type_byte
    with pytest.raises(bson.BSONDecodeError, match=rf"offset 4: unsupported element type 0x{type_byte:02x}"):
        bson.decode(bytes(corrupted))


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"\x02s\x00\x00\x00\x00\x00\x00", "string length 0"),  # length below 1
        (b"\x02s\x00\xff\xff\xff\xff\x00", "string length -1"),
        (b"\x02s\x00\x10\x00\x00\x00ab\x00", "truncated string"),  # claims more than the document holds
        (b"\x02s\x00\x03\x00\x00\x00abc", "not NUL-terminated"),
        (b"\x02s\x00\x02\x00\x00\x00\xff\x00", "string is not valid UTF-8"),
        (b"\x10\xc3\x28\x00\x01\x00\x00\x00", "key is not valid UTF-8"),
        (b"\x10abc", "key is not NUL-terminated"),
        (b"\x10a\x00\x01\x00", "truncated int32"),
        (b"\x12a\x00\x01\x00\x00\x00", "truncated int64"),
        (b"\x01a\x00\x01\x00", "truncated double"),
        (b"\x08a\x00\x02", "boolean byte 0x02"),
        (b"\x05a\x00\x01\x00\x00\x00\x04z", "binary subtype 0x04"),
        (b"\x05a\x00\xff\xff\xff\xff\x00", "binary length -1"),
        (b"\x05a\x00\x09\x00\x00\x00\x00z", "truncated binary data"),
        (b"\x03a\x00\x04\x00\x00\x00", "embedded document length 4"),
        (b"\x03a\x00\x40\x00\x00\x00\x00", "truncated embedded document"),
        (b"\x03a\x00\x06\x00\x00\x00\x00\x00", "terminator found 1 bytes before"),
        (b"\x03a\x00\x05\x00\x00\x00\x01", "does not end with a 0x00"),
        (b"\x04a\x00\x0c\x00\x00\x00\x101\x00\x07\x00\x00\x00\x00", "array key '1' out of sequence"),
        (b"\x0aa\x00\x0aa\x00", "duplicate key 'a'"),
    ],
)
def test_malformed_elements(body: bytes, fragment: str) -> None:
    with pytest.raises(bson.BSONDecodeError, match=re.escape(fragment)) as info:
        bson.decode(_doc(body))
    assert 0 <= info.value.offset < len(body) + 5
    assert isinstance(info.value, ValueError)


def test_hostile_nesting_is_refused_without_recursion_error() -> None:
    depth = 5000
    inner = b"\x05\x00\x00\x00\x00"
    for _ in range(depth):
        inner = _doc(b"\x03a\x00" + inner)
    with pytest.raises(bson.BSONDecodeError, match="nesting deeper"):
        bson.decode(inner)


def test_decode_requires_bytes() -> None:
    with pytest.raises(TypeError, match="bytes"):
        bson.decode("not bytes")  # type: ignore[arg-type]
    assert bson.decode(bytearray(b"\x05\x00\x00\x00\x00")) == {}
    assert bson.decode(memoryview(b"\x05\x00\x00\x00\x00")) == {}


@settings(max_examples=300)
@given(st.binary(max_size=64))
def test_random_bytes_decode_or_raise_value_error(data: bytes) -> None:
    try:
        result = bson.decode(data)
    except bson.BSONDecodeError:
        return
    assert isinstance(result, dict)


@settings(max_examples=300)
@given(st.integers(0, len(_SAMPLE) - 1), st.integers(0, 255))
def test_single_byte_corruption_never_crashes(index: int, byte: int) -> None:
    corrupted = bytearray(_SAMPLE)
    corrupted[index] = byte
    try:
        result = bson.decode(bytes(corrupted))
    except bson.BSONDecodeError:
        return
    assert isinstance(result, dict)


# --------------------------------------------------------------------------------------------------
# ObjectRef

# Computed by hand from the BSON spec (§8.1): int32 total 75 = 0x4b; "grpc://127.0.0.1:9090" is 21 bytes
# so its length field is 22 = 0x16; "app/ssn/obj" is 11 bytes -> 12 = 0x0c; version 1 as int32 (0x10).
FLAME_REF_BYTES = bytes.fromhex(
    "4b000000"
    "02" + b"endpoint\x00".hex() + "16000000" + b"grpc://127.0.0.1:9090\x00".hex()
    + "02" + b"key\x00".hex() + "0c000000" + b"app/ssn/obj\x00".hex()
    + "10" + b"version\x00".hex() + "01000000"
    + "00"
)  # fmt: skip


def test_flame_example_is_byte_identical() -> None:
    assert len(FLAME_REF_BYTES) == 75
    ref = ObjectRef("grpc://127.0.0.1:9090", "app/ssn/obj", 1)
    assert ref.encode() == FLAME_REF_BYTES
    assert ObjectRef.decode(FLAME_REF_BYTES) == ref


def test_int64_version_from_the_cache_server_decodes() -> None:
    body = (
        b"\x02endpoint\x00\x16\x00\x00\x00grpc://127.0.0.1:9090\x00"
        b"\x02key\x00\x0c\x00\x00\x00app/ssn/obj\x00"
        b"\x12version\x00" + struct.pack("<q", 1)
    )
    data = _doc(body)
    assert len(data) == 79
    assert ObjectRef.decode(data) == ObjectRef("grpc://127.0.0.1:9090", "app/ssn/obj", 1)


def test_large_version_is_int64_and_round_trips() -> None:
    ref = ObjectRef("e", "a/b/c", 2**31)
    data = ref.encode()
    # From the end: terminator (1) + int64 (8) + "version\0" (8), then the type byte.
    assert data[-18] == 0x12
    assert len(data) == len(ObjectRef("e", "a/b/c", 2**31 - 1).encode()) + 4
    assert ObjectRef.decode(data) == ref


def test_decode_accepts_any_key_order_and_missing_version() -> None:
    assert ObjectRef.decode(bson.encode({"version": 3, "key": "a/b/c", "endpoint": "e"})) == ObjectRef("e", "a/b/c", 3)
    assert ObjectRef.decode(bson.encode({"endpoint": "e", "key": "a/b/c"})) == ObjectRef("e", "a/b/c", 0)


@pytest.mark.parametrize(
    ("doc", "fragment"),
    [
        ({"endpoint": "e", "key": "k", "version": 1, "extra": 2}, "unexpected key(s) ['extra']"),
        ({"key": "k", "version": 1}, "missing key(s) ['endpoint']"),
        ({"endpoint": "e"}, "missing key(s) ['key']"),
        ({"endpoint": 5, "key": "k"}, "endpoint must be a BSON string, got int"),
        ({"endpoint": "e", "key": b"k"}, "key must be a BSON string, got bytes"),
        ({"endpoint": "e", "key": "k", "version": "1"}, "version must be a non-negative"),
        ({"endpoint": "e", "key": "k", "version": -1}, "version must be a non-negative"),
        ({"endpoint": "e", "key": "k", "version": True}, "version must be a non-negative"),
        ({"endpoint": "e", "key": "k", "version": 1.0}, "version must be a non-negative"),
    ],
)
def test_decode_rejects_documents_that_are_not_refs(doc: dict[str, Any], fragment: str) -> None:
    with pytest.raises(InvalidObjectRefError, match=re.escape(fragment)) as info:
        ObjectRef.decode(bson.encode(doc))
    assert info.value.code is FlameErrorCode.INVALID_ARGUMENT


@pytest.mark.parametrize(
    "data",
    [b"", b"hello", b"\x80\x05\x95\x0b\x00\x00\x00\x00\x00\x00\x00\x8c\x01x\x94.", FLAME_REF_BYTES[:-1]],
)
def test_decode_of_non_bson_says_so(data: bytes) -> None:
    with pytest.raises(InvalidObjectRefError) as info:
        ObjectRef.decode(data)
    err = info.value
    assert isinstance(err, ValueError) and isinstance(err, FlameError)
    assert err.code is FlameErrorCode.INVALID_ARGUMENT
    assert f"these {len(data)} bytes" in err.message and "are not an encoded ObjectRef" in err.message
    assert isinstance(err.__cause__, bson.BSONDecodeError)


def test_decode_type_error_for_non_bytes() -> None:
    with pytest.raises(TypeError, match=r"ObjectRef\.encode"):
        ObjectRef.decode("grpc://x")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "exc"),
    [
        ({"endpoint": 1, "key": "k"}, TypeError),
        ({"endpoint": "e", "key": None}, TypeError),
        ({"endpoint": "e", "key": "k", "version": "1"}, TypeError),
        ({"endpoint": "e", "key": "k", "version": False}, TypeError),
        ({"endpoint": "e", "key": "k", "version": -1}, ValueError),
        ({"endpoint": "e", "key": "k", "version": 2**63}, ValueError),
    ],
)
def test_ref_constructor_validation(kwargs: dict[str, Any], exc: type[Exception]) -> None:
    with pytest.raises(exc, match="ObjectRef"):
        ObjectRef(**kwargs)


_text = st.text(st.characters(codec="utf-8"), max_size=40)


@given(_text, _text, st.integers(0, 2**63 - 1))
def test_ref_bson_and_proto_round_trips(endpoint: str, key: str, version: int) -> None:
    ref = ObjectRef(endpoint, key, version)
    data = ref.encode()
    assert list(bson.decode(data)) == ["endpoint", "key", "version"]
    assert ObjectRef.decode(data) == ref
    pb = cache_pb2.ObjectRef.FromString(ref.to_proto().SerializeToString())
    assert (pb.endpoint, pb.key, pb.version) == (endpoint, key, version)
    assert ObjectRef.from_proto(pb) == ref


def test_from_proto_refuses_versions_bson_cannot_carry() -> None:
    with pytest.raises(ValueError, match="2\\*\\*63-1"):
        ObjectRef.from_proto(cache_pb2.ObjectRef(endpoint="e", key="a/b/c", version=2**64 - 1))


# --------------------------------------------------------------------------------------------------
# Key rules

ACCEPT = [
    # (parser, text, (app, session, object_id))
    (parse_prefix, "app/ssn", ("app", "ssn", None)),
    (parse_prefix, "my-app/s.1", ("my-app", "s.1", None)),
    (parse_prefix, "app/shared", ("app", "shared", None)),
    (parse_prefix, "a b/c*d", ("a b", "c*d", None)),  # only '/', '\\', '..' and a lone '*' are special
    (parse_full_key, "app/ssn/obj", ("app", "ssn", "obj")),
    (parse_full_key, "app/pkg/app.tar.gz", ("app", "pkg", "app.tar.gz")),
    (parse_full_key, "a/b/.", ("a", "b", ".")),
    (parse_key_or_prefix, "app/ssn", ("app", "ssn", None)),
    (parse_key_or_prefix, "app/ssn/obj", ("app", "ssn", "obj")),
    (parse_delete_prefix, "app/*", ("app", "*", None)),
    (parse_delete_prefix, "app/ssn", ("app", "ssn", None)),
    (parse_delete_prefix, "app/ssn/obj", ("app", "ssn", "obj")),
]


@pytest.mark.parametrize(("parser", "text", "parts"), ACCEPT)
def test_key_acceptance(parser: Any, text: str, parts: tuple[str, str, str | None]) -> None:
    key = parser(text)
    assert (key.app, key.session, key.object_id) == parts
    assert str(key) == text
    assert key.is_prefix is (parts[2] is None)
    assert key.is_wildcard is (parts[1] == WILDCARD_SESSION)


REJECT = [
    # (parser, text, fragment naming what is wrong)
    (parse_prefix, "app/ssn/obj", "full key with an object id is not accepted here"),
    (parse_prefix, "app/*", "only accepted when deleting"),
    (parse_prefix, "app", "has 1 part(s)"),
    (parse_prefix, "", "has 1 part(s)"),
    (parse_prefix, "app/", "session id is empty"),
    (parse_prefix, "/ssn", "application name is empty"),
    (parse_prefix, "*/ssn", "application name cannot be '*'"),
    (parse_prefix, "app/ss..n", "session id 'ss..n' contains '..'"),
    (parse_prefix, "app/a\\b", "session id 'a\\\\b' contains '\\'"),
    (parse_prefix, "../ssn", "application name '..' contains '..'"),
    (parse_prefix, "a\\x/ssn", "application name 'a\\\\x' contains '\\'"),
    (parse_prefix, "a/b/c/d", "has 4 part(s)"),
    (parse_full_key, "app/ssn", "the object id is missing"),
    (parse_full_key, "app/*", "only accepted when deleting"),
    (parse_full_key, "app/*/obj", "session '*' (every session) is only allowed in the prefix"),
    (parse_full_key, "app/ssn/*", "object id cannot be '*'"),
    (parse_full_key, "app/ssn/", "object id is empty"),
    (parse_full_key, "app/ssn/..", "object id '..' contains '..'"),
    (parse_full_key, "app/ssn/a\\b", "object id 'a\\\\b' contains '\\'"),
    (parse_full_key, "app//obj", "session id is empty"),
    (parse_full_key, "*/s/o", "application name cannot be '*'"),
    (parse_full_key, "a/b/c/d", "has 4 part(s)"),
    (parse_key_or_prefix, "app/*", "only accepted when deleting"),
    (parse_key_or_prefix, "app", "has 1 part(s)"),
    (parse_delete_prefix, "*/*", "application name cannot be '*'"),
    (parse_delete_prefix, "app/*/obj", "session '*' (every session) is only allowed in the prefix"),
    (parse_delete_prefix, "app", "has 1 part(s)"),
    (parse_delete_prefix, "", "has 1 part(s)"),
    (parse_delete_prefix, "a/b/c/d", "has 4 part(s)"),
]


@pytest.mark.parametrize(("parser", "text", "fragment"), REJECT)
def test_key_rejection(parser: Any, text: str, fragment: str) -> None:
    with pytest.raises(ValueError) as info:
        parser(text)
    message = str(info.value)
    assert fragment in message
    assert f"invalid object key {text!r}" in message  # names the string
    assert "accepted: " in message and "'<app>/<session>" in message  # and the accepted forms


def test_accepted_forms_listed_per_parser() -> None:
    with pytest.raises(ValueError) as info:
        parse_full_key("x")
    assert "'<app>/<session>/<object-id>' (full key)" in str(info.value)
    assert "(prefix)" not in str(info.value) and "'<app>/*'" not in str(info.value)
    with pytest.raises(ValueError) as info:
        parse_delete_prefix("x")
    for form in ("(prefix)", "(full key)", "'<app>/*'"):
        assert form in str(info.value)


def test_key_parsers_type_error() -> None:
    with pytest.raises(TypeError, match="must be a str"):
        parse_prefix(None)  # type: ignore[arg-type]


def test_object_key_direct_construction_validates() -> None:
    with pytest.raises(ValueError, match="session id 'a/b' contains '/'"):
        ObjectKey("app", "a/b")
    with pytest.raises(ValueError, match="only allowed in the prefix"):
        ObjectKey("app", "*", "obj")
    assert ObjectKey("app", "*").is_wildcard


def test_object_key_prefix_and_covers() -> None:
    full = parse_full_key("app/ssn/obj")
    assert full.prefix == ObjectKey("app", "ssn") and str(full.prefix) == "app/ssn"
    assert parse_delete_prefix("app/*").covers("app/ssn/obj")
    assert parse_delete_prefix("app/*").covers("app/other")
    assert not parse_delete_prefix("app/*").covers("app2/ssn/obj")
    assert parse_prefix("app/ssn").covers(full)
    assert parse_prefix("app/ssn").covers("app/ssn")
    assert not parse_prefix("app/ssn").covers("app/ssn2/obj")
    assert not parse_prefix("app/ssn").covers("app/*")
    assert full.covers("app/ssn/obj") and not full.covers("app/ssn/obj2") and not full.covers("app/ssn")


_part = st.text(st.characters(codec="utf-8", exclude_characters="/\\"), min_size=1, max_size=10).filter(
    lambda s: ".." not in s and s != "*"
)


@given(_part, _part, _part)
def test_valid_parts_always_parse_back(app: str, ssn: str, obj: str) -> None:
    key = parse_full_key(f"{app}/{ssn}/{obj}")
    assert (key.app, key.session, key.object_id) == (app, ssn, obj)
    assert parse_prefix(f"{app}/{ssn}") == key.prefix
    assert parse_delete_prefix(f"{app}/*").covers(key)


@given(_part, _part, st.sampled_from(["/", "\\", ".."]), st.sampled_from([0, 1, 2]))
def test_a_forbidden_sequence_in_any_part_is_rejected(app: str, ssn: str, bad: str, where: int) -> None:
    parts = [app, ssn, "obj"]
    parts[where] = parts[where] + bad + "x"
    with pytest.raises(ValueError, match="invalid object key"):
        parse_full_key("/".join(parts))
