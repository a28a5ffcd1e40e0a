"""Public hypothesis strategies for testing flamepy transports and serializers, bound by factories.

Each function returns a fresh strategy sized by its arguments, so a plugin author's own tests draw the
same kinds of cases as the suite (``payloads_for(transport)`` sizes payloads by what the transport
declares, ``values_for_domain(serializer.domain)`` draws what a serializer promises to round-trip). Large
payloads are built from a drawn *size and seed* instead of drawn byte by byte: hypothesis then shrinks the
size (to the smallest failing length) without having to generate megabytes.
"""

from __future__ import annotations

import collections
import datetime
import enum
import random
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

from flamepy_core.contracts.bounds import LARGE_DOCUMENT_BYTES, MAX_ERROR_MESSAGE_BYTES, MAX_METHOD_PATH_BYTES
from flamepy_core.contracts.errors import FlameErrorCode
from flamepy_core.contracts.transport import Transport

__all__ = [
    "DOMAINS",
    "ConformanceBytes",
    "ConformanceColour",
    "ConformanceDict",
    "ConformanceFloat",
    "ConformanceInt",
    "ConformanceList",
    "ConformanceRecord",
    "ConformanceStr",
    "domain_subclass_values",
    "error_codes",
    "error_messages",
    "garbage",
    "large_documents",
    "long_error_messages",
    "long_method_paths",
    "method_path_of_length",
    "method_paths",
    "payloads",
    "payloads_for",
    "stream_chunks",
    "utf8_text_of_size",
    "values_for_domain",
    "values_outside_domain",
]

_SMALL = 512
"""Up to this size payloads are drawn byte by byte (all values, shrinkable to the exact failing byte)."""


def _sized_bytes(size: int, seed: int, fill: int) -> bytes:
    """``size`` bytes from ``seed``: random bytes for odd fills, a run of one byte value for even ones."""
    if fill % 2:
        return random.Random(seed).randbytes(size)
    return bytes([seed % 256]) * size


def payloads(max_size: int = 64 * 1024, *, min_size: int = 0) -> st.SearchStrategy[bytes]:
    """Request or response bodies from ``min_size`` to ``max_size`` bytes (both inclusive).

    Mixes short arbitrary byte strings (every byte value, including NUL and 0xFF) with longer ones up to
    ``max_size`` (random bytes or runs of one value), and always allows the two ends of the range.
    """
    if max_size < min_size:
        raise ValueError(f"max_size {max_size} is smaller than min_size {min_size}")
    small = st.binary(min_size=min_size, max_size=min(max_size, _SMALL))
    if max_size <= _SMALL:
        return small
    large = st.builds(
        _sized_bytes,
        st.one_of(st.integers(min_size, max_size), st.sampled_from([min_size, max_size])),
        st.integers(0, 2**32 - 1),
        st.integers(0, 3),
    )
    return st.one_of(small, large)


def payloads_for(transport: Transport, *, limit: int = 1024 * 1024) -> st.SearchStrategy[bytes]:
    """Payloads a call on ``transport`` must carry: up to its largest message, capped at ``limit``."""
    return payloads(min(transport.capabilities.max_message_size, limit))


_PACKAGE_PART = st.from_regex(r"[a-z][a-z0-9_]{0,11}", fullmatch=True)
_CAMEL = st.from_regex(r"[A-Z][A-Za-z0-9_]{0,23}", fullmatch=True)


def method_paths() -> st.SearchStrategy[str]:
    """gRPC-style method paths, ``/pkg.sub.Service/Method``, as every transport must route them."""
    package = st.lists(_PACKAGE_PART, min_size=1, max_size=3).map(".".join)
    return st.builds(lambda pkg, svc, meth: f"/{pkg}.{svc}/{meth}", package, _CAMEL, _CAMEL)


_PATH_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_"


def method_path_of_length(length: int, seed: int = 0) -> str:
    """A gRPC path of exactly ``length`` ASCII bytes (``length`` >= 6): ``/pkg.Service/Method``."""
    rng = random.Random(seed)
    body = length - 3  # the two slashes and the dot
    package = rng.randint(1, body - 2)
    service = rng.randint(1, body - package - 1)
    method = body - package - service
    parts = ["".join(rng.choice(_PATH_CHARS) for _ in range(n)) for n in (package, service, method)]
    return f"/{parts[0]}.{parts[1]}/{parts[2]}"


def long_method_paths(max_bytes: int = MAX_METHOD_PATH_BYTES, *, min_bytes: int = 6) -> st.SearchStrategy[str]:
    """gRPC-style paths of ``min_bytes`` to ``max_bytes`` ASCII bytes, both ends and one-byte-length edges included.

    The length is drawn (and shrinks), the characters come from a seed: a path of 4 KiB costs one draw.
    """
    if not 6 <= min_bytes <= max_bytes:
        raise ValueError(f"need 6 <= min_bytes <= max_bytes, got {min_bytes} and {max_bytes}")
    edges = [n for n in (min_bytes, 255, 256, 257, max_bytes) if min_bytes <= n <= max_bytes]
    lengths = st.one_of(st.sampled_from(edges), st.integers(min_bytes, max_bytes))
    return st.builds(method_path_of_length, lengths, st.integers(0, 2**32 - 1))


def error_codes() -> st.SearchStrategy[FlameErrorCode]:
    """Every :class:`FlameErrorCode`: a handler may raise any of them and the caller must see it."""
    return st.sampled_from(list(FlameErrorCode))


_TEXT_CHAR = st.characters(exclude_categories=["Cs"])  # anything UTF-8 can carry: no lone surrogates
_ASTRAL_CHAR = st.characters(min_codepoint=0x10000, exclude_categories=["Cs"])


def error_messages(max_size: int = 200) -> st.SearchStrategy[str]:
    """Error messages: any Unicode text (controls, combining marks, RTL...), often with non-BMP characters.

    Half of the draws hold at least one character outside the Basic Multilingual Plane (emoji, math
    letters), which a transport that squeezes messages through UCS-2, Latin-1 or ASCII would mangle.
    """
    plain = st.text(_TEXT_CHAR, max_size=max_size)
    half = max(0, (max_size - 1) // 2)
    astral = st.tuples(st.text(_TEXT_CHAR, max_size=half), _ASTRAL_CHAR, st.text(_TEXT_CHAR, max_size=half)).map(
        "".join
    )
    return st.one_of(plain, astral)


_WIDE_CHARS = ("a", "Z", " ", "\n", "é", "ß", "✓", "日", "\u202e", "\U0001f525", "\U0001d509", "\x00")
"""Characters of every UTF-8 width (1 to 4 bytes), a bidi override and a NUL."""


def utf8_text_of_size(size: int, seed: int = 0) -> str:
    """Text of exactly ``size`` bytes of UTF-8, mixing characters of every width (see :data:`_WIDE_CHARS`)."""
    rng = random.Random(seed)
    parts: list[str] = []
    left = size
    while left:
        char = rng.choice(_WIDE_CHARS)
        width = len(char.encode("utf-8"))
        if width > left:
            char, width = "x", 1
        parts.append(char)
        left -= width
    return "".join(parts)


def long_error_messages(max_bytes: int = MAX_ERROR_MESSAGE_BYTES) -> st.SearchStrategy[str]:
    """Error messages of up to ``max_bytes`` bytes of UTF-8, any width of character, the limit itself included.

    The size is drawn (and shrinks); the text comes from a seed, so a 16 KiB message costs one draw.
    """
    sizes = st.one_of(st.sampled_from([0, 1023, 1024, 1025, 4096, max_bytes]), st.integers(0, max_bytes))
    return st.builds(utf8_text_of_size, sizes.filter(lambda n: n <= max_bytes), st.integers(0, 2**32 - 1))


def stream_chunks(max_items: int = 16, max_size: int = 256) -> st.SearchStrategy[list[bytes]]:
    """The items of one stream: up to ``max_items`` payloads of up to ``max_size`` bytes (empty ones too)."""
    return st.lists(payloads(max_size), max_size=max_items)


# -- serializer values -------------------------------------------------------------------------------

DOMAINS = ("python", "json", "msgpack", "bytes")
"""The value domains the suite knows how to draw (a serializer declares one as ``Serializer.domain``)."""


@dataclass(frozen=True)
class ConformanceRecord:
    """A user-defined class at module level: what "classes by reference" must carry (domain ``python``)."""

    name: str
    values: tuple[int, ...]


_UNICODE = st.text(st.characters(exclude_categories=["Cs"]), max_size=40)
"""Text that UTF-8 can carry: any character but lone surrogates (JSON and msgpack write real UTF-8)."""
_ANY_TEXT = st.text(max_size=40)
"""Any Python str, lone surrogates included (pickle carries them)."""
_FINITE = st.floats(allow_nan=False, allow_infinity=False)
_NO_NAN = st.floats(allow_nan=False)
_INT64 = st.integers(min_value=-(2**63), max_value=2**64 - 1)


def _containers(
    scalars: st.SearchStrategy[Any], extend: Callable[[st.SearchStrategy[Any]], st.SearchStrategy[Any]]
) -> st.SearchStrategy[Any]:
    return st.recursive(scalars, extend, max_leaves=25)


def _json_values() -> st.SearchStrategy[Any]:
    scalars = st.one_of(st.none(), st.booleans(), st.integers(), _FINITE, _UNICODE)
    return _containers(
        scalars,
        lambda inner: st.one_of(st.lists(inner, max_size=6), st.dictionaries(_UNICODE, inner, max_size=6)),
    )


def _msgpack_values() -> st.SearchStrategy[Any]:
    scalars = st.one_of(st.none(), st.booleans(), _INT64, _NO_NAN, _UNICODE, st.binary(max_size=64))
    keys = st.one_of(st.none(), st.booleans(), _INT64, _NO_NAN, _UNICODE, st.binary(max_size=16))
    return _containers(
        scalars,
        lambda inner: st.one_of(st.lists(inner, max_size=6), st.dictionaries(keys, inner, max_size=6)),
    )


def _python_values() -> st.SearchStrategy[Any]:
    hashable = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        _NO_NAN,
        _ANY_TEXT,
        st.binary(max_size=32),
        st.complex_numbers(allow_nan=False),
        st.decimals(allow_nan=False),
        st.fractions(),
        st.datetimes(timezones=st.none() | st.just(datetime.timezone.utc)),
        st.dates(),
        st.timedeltas(),
    )
    records = st.builds(ConformanceRecord, _ANY_TEXT, st.tuples(st.integers(), st.integers()))
    scalars = st.one_of(
        hashable,
        records,
        st.binary(max_size=32).map(bytearray),
        st.frozensets(hashable, max_size=5),
        st.sets(hashable, max_size=5),
    )
    keys = st.one_of(hashable, st.tuples(hashable, hashable))
    return _containers(
        scalars,
        lambda inner: st.one_of(
            st.lists(inner, max_size=6),
            st.lists(inner, max_size=6).map(tuple),
            st.dictionaries(keys, inner, max_size=6),
        ),
    )


def values_for_domain(domain: str) -> st.SearchStrategy[Any]:
    """Values a serializer of ``domain`` must round-trip exactly (same types, same values, same order).

    * ``"json"``: None, bool, int, finite float, str (no lone surrogates), list, dict with str keys.
    * ``"msgpack"``: None, bool, int in -2**63..2**64-1, float (no NaN: it equals nothing), str, bytes,
      list, dict whose keys are those scalars.
    * ``"python"``: what pickle carries, classes by reference: numbers of every kind, str (any), bytes,
      bytearray, dates, sets, tuples, lists, dicts with hashable keys, :class:`ConformanceRecord`.
    * ``"bytes"``: bytes.

    Unknown domains are a ``ValueError`` naming the known ones (a serializer with its own domain supplies
    its own strategy; see ``SerializerTests.values``).
    """
    makers: dict[str, Callable[[], st.SearchStrategy[Any]]] = {
        "json": _json_values,
        "msgpack": _msgpack_values,
        "python": _python_values,
        "bytes": lambda: st.binary(max_size=256),
    }
    maker = makers.get(domain)
    if maker is None:
        raise ValueError(f"no strategy for the value domain {domain!r}; known domains: {', '.join(DOMAINS)}")
    return maker()


class ConformanceInt(int):
    """A subclass of a domain type (module level, so pickle carries it by reference)."""


class ConformanceFloat(float):
    """A ``float`` subclass."""


class ConformanceStr(str):
    """A ``str`` subclass."""


class ConformanceBytes(bytes):
    """A ``bytes`` subclass."""


class ConformanceList(list):  # type: ignore[type-arg]
    """A ``list`` subclass."""


class ConformanceDict(dict):  # type: ignore[type-arg]
    """A ``dict`` subclass."""


class ConformanceColour(enum.IntEnum):
    """An ``IntEnum``: an ``int`` subclass that JSON and msgpack would quietly turn into its value."""

    RED = 1
    GREEN = 2


def domain_subclass_values() -> st.SearchStrategy[Any]:
    """Instances of subclasses of the domain types (``int``, ``float``, ``str``, ``bytes``, ``list``, ``dict``,
    ``IntEnum``, ``OrderedDict``), alone or nested in a plain list or dict.

    A serializer must give each back as exactly what was sent (pickle does: the classes live at module
    level) or refuse it in ``dumps``; turning one into its base type is a silent change of the value.
    """
    small = st.integers(-1000, 1000)
    text = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=8)
    alone = st.one_of(
        small.map(ConformanceInt),
        st.floats(allow_nan=False, allow_infinity=False).map(ConformanceFloat),
        text.map(ConformanceStr),
        st.binary(max_size=8).map(ConformanceBytes),
        st.lists(small, max_size=3).map(ConformanceList),
        st.dictionaries(text, small, max_size=3).map(ConformanceDict),
        st.sampled_from(list(ConformanceColour)),
        st.dictionaries(text, small, min_size=1, max_size=3).map(collections.OrderedDict),
    )
    return st.one_of(alone, alone.map(lambda v: [1, v]), st.tuples(text, alone).map(lambda kv: {kv[0]: kv[1]}))


def large_documents(domain: str, size: int = LARGE_DOCUMENT_BYTES) -> list[tuple[str, Any]]:
    """Named documents of ``domain`` for the round trip of large ones: megabytes each.

    A string of ``size`` bytes of UTF-8 (characters of every width), a list and a dict of ``size // 512``
    strings of about 512 bytes, a list of ``size // 128`` small numbers and, where the domain has them,
    ``size`` raw bytes. Built from a fixed seed, so every run sends the same documents. An unknown domain
    is a ``ValueError`` (a serializer with a domain of its own overrides ``SerializerTests.large_values``).
    """
    if domain not in DOMAINS:
        raise ValueError(f"no large documents for the value domain {domain!r}; known domains: {', '.join(DOMAINS)}")
    blob = random.Random(size).randbytes(size)
    if domain == "bytes":
        return [(f"bytes of {size}", blob)]
    chunk = utf8_text_of_size(64 * 1024, seed=size)  # repeated: drawing 8 MiB character by character is slow
    text = chunk * (size // len(chunk.encode("utf-8"))) + utf8_text_of_size(size % (64 * 1024))
    count = size // 512
    pieces = [text[i * 256 : i * 256 + 256] for i in range(count)]  # 256 characters, ~512 bytes each
    many = count * 4
    documents: list[tuple[str, Any]] = [
        (f"a str of {size} bytes of UTF-8", text),
        (f"a list of {count} strings of 256 characters", pieces),
        (f"a dict of {count} keys to strings of 256 characters", {f"key {i:06d}": p for i, p in enumerate(pieces)}),
        (f"a list of {many} small numbers", [i * (-1) ** i for i in range(many)]),
    ]
    if domain in ("msgpack", "python"):
        documents.append((f"bytes of {size}", blob))
    return documents


def _generator() -> Iterator[int]:
    yield 1


def values_outside_domain(domain: str) -> st.SearchStrategy[Any] | None:
    """Values a serializer of ``domain`` cannot carry, or None when the suite knows none for it.

    Each draw is a fresh object. They must be refused when *encoding*, with a ``FlameError`` that names
    the value's type and the serializer. For ``"python"`` these are objects no pickler can carry (a lock,
    a generator), since what is outside differs between pickle and cloudpickle beyond those.
    """
    unpicklable = st.one_of(st.builds(threading.Lock), st.builds(_generator))
    outside: dict[str, st.SearchStrategy[Any]] = {
        "json": st.one_of(
            st.tuples(st.integers()),
            st.sets(st.integers(), max_size=3),
            st.binary(max_size=8),
            st.sampled_from([float("nan"), float("inf"), float("-inf")]),
            st.dictionaries(st.integers(), st.integers(), min_size=1, max_size=3),
            st.complex_numbers(),
            st.decimals(allow_nan=False),
            st.builds(lambda: lambda: None),
            unpicklable,
        ),
        "msgpack": st.one_of(
            st.tuples(st.integers()),
            st.sets(st.integers(), max_size=3),
            st.integers(min_value=2**64),
            st.integers(max_value=-(2**63) - 1),
            st.complex_numbers(),
            st.fractions(),
            st.builds(lambda: lambda: None),
            unpicklable,
        ),
        "python": unpicklable,
        "bytes": st.one_of(st.text(max_size=8), st.integers(), st.none()),
    }
    return outside.get(domain)


def garbage(max_size: int = 256) -> st.SearchStrategy[bytes]:
    """Bytes no serializer wrote: what ``loads`` must refuse with a ``FlameError`` (or decode), never crash on."""
    return st.binary(max_size=max_size)
