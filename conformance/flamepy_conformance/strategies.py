"""Public hypothesis strategies for testing flamepy transports, bound to a transport by factories.

Each function returns a fresh strategy sized by its arguments, so a plugin author's own tests draw the
same kinds of cases as the suite (``payloads_for(transport)`` sizes payloads by what the transport
declares). Large payloads are built from a drawn *size and seed* instead of drawn byte by byte: hypothesis
then shrinks the size (to the smallest failing length) without having to generate megabytes.
"""

from __future__ import annotations

import random

from hypothesis import strategies as st

from flamepy_core.contracts.errors import FlameErrorCode
from flamepy_core.contracts.transport import Transport

__all__ = [
    "error_codes",
    "error_messages",
    "method_paths",
    "payloads",
    "payloads_for",
    "stream_chunks",
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


def stream_chunks(max_items: int = 16, max_size: int = 256) -> st.SearchStrategy[list[bytes]]:
    """The items of one stream: up to ``max_items`` payloads of up to ``max_size`` bytes (empty ones too)."""
    return st.lists(payloads(max_size), max_size=max_items)
