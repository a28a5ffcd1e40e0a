"""A small, strict BSON codec for the handful of types flamepy puts on the wire.

Why our own: Flame encodes :class:`~flamepy_core.objref.ObjectRef` (session common data, Runner task
outputs, cache put results) as a BSON document via pymongo's ``bson`` package. We need byte-identical
output for those documents, but not the rest of pymongo, so this module implements exactly the subset
of the BSON 1.1 specification (https://bsonspec.org/spec.html) we exchange:

=========  ======  =====================================================================
Python     type    encoding
=========  ======  =====================================================================
``float``  0x01    IEEE-754 binary64, little endian
``str``    0x02    int32 byte length (incl. NUL) + UTF-8 + NUL
``dict``   0x03    embedded document
``list``   0x04    embedded document with keys ``"0"``, ``"1"``, ...
``bytes``  0x05    int32 length + subtype 0x00 (generic binary) + data
``bool``   0x08    one byte, 0x00 or 0x01
``None``   0x0A    no payload
``int``    0x10    int32 when it fits, else 0x12 int64 (as pymongo does); wider -> ValueError
=========  ======  =====================================================================

"Strict" means decoding never guesses: a wrong length, a missing terminator, bad UTF-8, a duplicate key,
an out-of-order array index, a boolean byte other than 0/1, a non-generic binary subtype or any type
byte outside the table raises :class:`BSONDecodeError` (a ``ValueError``) naming the byte offset. Every
length is checked against the enclosing document before it is used, so hostile input can neither read
out of bounds nor make the decoder loop; nesting is capped at :data:`MAX_DEPTH` so it cannot exhaust
the Python stack either.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Any, cast

__all__ = ["MAX_DEPTH", "BSONDecodeError", "decode", "encode"]

MAX_DEPTH = 100
"""Deepest nesting of documents/arrays accepted by :func:`encode` and :func:`decode`.

Far beyond anything flamepy sends; it exists so a crafted (or self-referencing) input fails with a
clear error instead of a ``RecursionError``.
"""

_INT32_MIN = -(2**31)
_INT32_MAX = 2**31 - 1
_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1

_T_DOUBLE = 0x01
_T_STRING = 0x02
_T_DOCUMENT = 0x03
_T_ARRAY = 0x04
_T_BINARY = 0x05
_T_BOOL = 0x08
_T_NULL = 0x0A
_T_INT32 = 0x10
_T_INT64 = 0x12

_BINARY_GENERIC = 0x00

_I32 = struct.Struct("<i")
_I64 = struct.Struct("<q")
_F64 = struct.Struct("<d")


class BSONDecodeError(ValueError):
    """Raised when bytes are not a well-formed BSON document of the supported subset.

    ``offset`` is the byte offset (from the start of the outermost document) where the problem was found.
    """

    def __init__(self, message: str, offset: int) -> None:
        self.offset = offset
        super().__init__(f"invalid BSON at offset {offset}: {message}")


# --------------------------------------------------------------------------------------------------
# Encoding


def encode(doc: Mapping[str, Any]) -> bytes:
    """Encode ``doc`` as one BSON document, keeping its key order.

    Raises ``TypeError`` for a value or key of an unsupported type and ``ValueError`` for a value that
    BSON cannot represent (an int outside int64, a key containing NUL, a document over 2 GiB). The
    message names the key path (e.g. ``outer.inner[2]``) so the caller can find the culprit.
    """
    if not isinstance(doc, Mapping):
        raise TypeError(f"bson.encode() takes a mapping with str keys, not {type(doc).__name__}")
    out = bytearray()
    _encode_document(out, doc, "", 0)
    return bytes(out)


def _encode_document(out: bytearray, doc: Mapping[Any, Any], path: str, depth: int) -> None:
    if depth >= MAX_DEPTH:
        raise ValueError(
            f"BSON nesting deeper than {MAX_DEPTH} levels at {path or '<root>'} (is the document self-referencing?)"
        )
    start = len(out)
    out += b"\x00\x00\x00\x00"  # length placeholder, patched below
    for key, value in doc.items():
        if not isinstance(key, str):
            raise TypeError(
                f"BSON document keys must be str; got {type(key).__name__} key {key!r} at {path or '<root>'}"
            )
        _encode_element(out, key, value, _join(path, key), depth)
    out += b"\x00"
    _patch_length(out, start, path)


def _encode_array(out: bytearray, items: list[Any] | tuple[Any, ...], path: str, depth: int) -> None:
    if depth >= MAX_DEPTH:
        raise ValueError(f"BSON nesting deeper than {MAX_DEPTH} levels at {path} (is the list self-referencing?)")
    start = len(out)
    out += b"\x00\x00\x00\x00"
    for index, value in enumerate(items):
        _encode_element(out, str(index), value, f"{path}[{index}]", depth)
    out += b"\x00"
    _patch_length(out, start, path)


def _patch_length(out: bytearray, start: int, path: str) -> None:
    length = len(out) - start
    if length > _INT32_MAX:
        raise ValueError(f"BSON document at {path or '<root>'} is {length} bytes; the format's limit is 2**31-1")
    _I32.pack_into(out, start, length)


def _encode_element(out: bytearray, key: str, value: Any, path: str, depth: int) -> None:
    # bool before int: bool is an int subclass but has its own BSON type.
    if isinstance(value, bool):
        out.append(_T_BOOL)
        _encode_cstring(out, key, path)
        out.append(1 if value else 0)
    elif isinstance(value, int):
        if _INT32_MIN <= value <= _INT32_MAX:
            out.append(_T_INT32)
            _encode_cstring(out, key, path)
            out += _I32.pack(value)
        elif _INT64_MIN <= value <= _INT64_MAX:
            out.append(_T_INT64)
            _encode_cstring(out, key, path)
            out += _I64.pack(value)
        else:
            raise ValueError(f"int {value} at {path} does not fit in BSON int64 (range -2**63 .. 2**63-1)")
    elif isinstance(value, float):
        out.append(_T_DOUBLE)
        _encode_cstring(out, key, path)
        out += _F64.pack(value)
    elif isinstance(value, str):
        out.append(_T_STRING)
        _encode_cstring(out, key, path)
        data = _utf8(value, path)
        out += _I32.pack(len(data) + 1)
        out += data
        out += b"\x00"
    elif value is None:
        out.append(_T_NULL)
        _encode_cstring(out, key, path)
    elif isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
        out.append(_T_BINARY)
        _encode_cstring(out, key, path)
        out += _I32.pack(len(data))
        out.append(_BINARY_GENERIC)
        out += data
    elif isinstance(value, Mapping):
        out.append(_T_DOCUMENT)
        _encode_cstring(out, key, path)
        _encode_document(out, value, path, depth + 1)
    elif isinstance(value, (list, tuple)):
        out.append(_T_ARRAY)
        _encode_cstring(out, key, path)
        _encode_array(out, value, path, depth + 1)
    else:
        raise TypeError(
            f"cannot BSON-encode {type(value).__name__} at {path}; supported: str, int, float, bool, None, "
            "bytes, dict, list"
        )


def _encode_cstring(out: bytearray, key: str, path: str) -> None:
    data = _utf8(key, path)
    if b"\x00" in data:
        raise ValueError(f"BSON keys cannot contain NUL characters: {key!r} at {path}")
    out += data
    out += b"\x00"


def _utf8(text: str, path: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"string at {path} is not encodable as UTF-8 ({exc.reason})") from None


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


# --------------------------------------------------------------------------------------------------
# Decoding


def decode(data: bytes | bytearray | memoryview) -> dict[str, Any]:
    """Decode exactly one BSON document occupying all of ``data``.

    Trailing bytes after the document are an error (a truncated or concatenated buffer is almost
    always a bug upstream). Raises :class:`BSONDecodeError` for any malformed input and ``TypeError``
    when ``data`` is not bytes-like.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"bson.decode() takes bytes, not {type(data).__name__}")
    buf = bytes(data)
    if len(buf) < 5:
        raise BSONDecodeError(f"need at least 5 bytes for a document, got {len(buf)}", 0)
    declared = _I32.unpack_from(buf, 0)[0]
    if declared != len(buf):
        raise BSONDecodeError(f"document length field says {declared} bytes but {len(buf)} were given", 0)
    return cast("dict[str, Any]", _decode_document(buf, 0, len(buf), 0, array=False))


def _decode_document(buf: bytes, start: int, end: int, depth: int, *, array: bool) -> dict[str, Any] | list[Any]:
    """Decode the document spanning ``buf[start:end]`` (its length field already validated)."""
    if depth >= MAX_DEPTH:
        raise BSONDecodeError(f"nesting deeper than {MAX_DEPTH} levels", start)
    if buf[end - 1] != 0:
        raise BSONDecodeError("document does not end with a 0x00 terminator", end - 1)
    doc: dict[str, Any] = {}
    items: list[Any] = []
    pos = start + 4
    while True:
        if pos >= end:  # pragma: no cover - unreachable: the terminator check above stops the loop first
            raise BSONDecodeError("document ran past its declared length", pos)
        type_pos = pos
        etype = buf[pos]
        pos += 1
        if etype == 0:
            if pos != end:
                raise BSONDecodeError(f"terminator found {end - pos} bytes before the declared end", type_pos)
            break
        key_pos = pos
        key, pos = _read_cstring(buf, pos, end - 1)
        value, pos = _decode_value(buf, etype, type_pos, pos, end - 1, depth)
        if array:
            if key != str(len(items)):
                raise BSONDecodeError(f"array key {key!r} out of sequence (expected {str(len(items))!r})", key_pos)
            items.append(value)
        else:
            if key in doc:
                raise BSONDecodeError(f"duplicate key {key!r}", key_pos)
            doc[key] = value
    return items if array else doc


def _read_cstring(buf: bytes, pos: int, limit: int) -> tuple[str, int]:
    """Read a NUL-terminated UTF-8 string that must end before ``limit``."""
    nul = buf.find(b"\x00", pos, limit)
    if nul < 0:
        raise BSONDecodeError("key is not NUL-terminated inside its document", pos)
    return _decode_utf8(buf[pos:nul], pos, "key"), nul + 1


def _need(pos: int, count: int, limit: int, what: str) -> None:
    if pos + count > limit:
        raise BSONDecodeError(f"truncated {what}: needs {count} bytes, {max(limit - pos, 0)} left", pos)


def _decode_value(buf: bytes, etype: int, type_pos: int, pos: int, limit: int, depth: int) -> tuple[Any, int]:
    """Decode one value of type ``etype`` at ``pos``; it must end at or before ``limit``."""
    if etype == _T_DOUBLE:
        _need(pos, 8, limit, "double")
        return _F64.unpack_from(buf, pos)[0], pos + 8
    if etype == _T_STRING:
        _need(pos, 4, limit, "string length")
        length = _I32.unpack_from(buf, pos)[0]
        if length < 1:
            raise BSONDecodeError(f"string length {length} is below the minimum of 1", pos)
        body = pos + 4
        _need(body, length, limit, "string")
        if buf[body + length - 1] != 0:
            raise BSONDecodeError("string is not NUL-terminated", body + length - 1)
        return _decode_utf8(buf[body : body + length - 1], body, "string"), body + length
    if etype in (_T_DOCUMENT, _T_ARRAY):
        what = "array" if etype == _T_ARRAY else "embedded document"
        _need(pos, 4, limit, f"{what} length")
        length = _I32.unpack_from(buf, pos)[0]
        if length < 5:
            raise BSONDecodeError(f"{what} length {length} is below the minimum of 5", pos)
        _need(pos, length, limit, what)
        return _decode_document(buf, pos, pos + length, depth + 1, array=etype == _T_ARRAY), pos + length
    if etype == _T_BINARY:
        _need(pos, 5, limit, "binary header")
        length = _I32.unpack_from(buf, pos)[0]
        if length < 0:
            raise BSONDecodeError(f"binary length {length} is negative", pos)
        subtype = buf[pos + 4]
        if subtype != _BINARY_GENERIC:
            raise BSONDecodeError(f"binary subtype 0x{subtype:02x} is not supported (only 0x00)", pos + 4)
        body = pos + 5
        _need(body, length, limit, "binary data")
        return buf[body : body + length], body + length
    if etype == _T_BOOL:
        _need(pos, 1, limit, "boolean")
        flag = buf[pos]
        if flag > 1:
            raise BSONDecodeError(f"boolean byte 0x{flag:02x} is neither 0x00 nor 0x01", pos)
        return flag == 1, pos + 1
    if etype == _T_NULL:
        return None, pos
    if etype == _T_INT32:
        _need(pos, 4, limit, "int32")
        return _I32.unpack_from(buf, pos)[0], pos + 4
    if etype == _T_INT64:
        _need(pos, 8, limit, "int64")
        return _I64.unpack_from(buf, pos)[0], pos + 8
    raise BSONDecodeError(f"unsupported element type 0x{etype:02x}", type_pos)


def _decode_utf8(raw: bytes, pos: int, what: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BSONDecodeError(f"{what} is not valid UTF-8 ({exc.reason})", pos + exc.start) from None
