"""msgpack, strict about types so that what arrives is what was sent.

The domain is ``"msgpack"``: ``None``, ``bool``, ``int`` from -2**63 to 2**64-1, ``float`` (64-bit, so
every float including inf and NaN is kept bit for bit), ``str`` (valid Unicode: no lone surrogates),
``bytes``, ``list``, and ``dict`` whose keys are any of the scalars (``None``, ``bool``, ``int``,
``float``, ``str``, ``bytes``), nested freely.

Decisions, and why:

* ``strict_types=True`` when packing: a tuple, a set, an ``int``/``str``/``dict`` subclass (``IntEnum``,
  ``OrderedDict``) and anything else outside the domain is refused in the sender's process, naming its
  type, instead of arriving as a list or its base type. The one conversion kept is ``bytearray`` (and
  other buffers msgpack packs natively): it arrives as ``bytes``, equal to what was sent.
* ``strict_map_key=False`` when unpacking: msgpack's default accepts only ``str``/``bytes`` map keys, so
  ``{1: "a"}`` would pack fine and then fail to unpack on the other side, after it was sent. Allowing the
  scalar keys makes the domain symmetric. (msgpack's default guards against hash-flooding by arbitrary
  keys from untrusted peers; a flamepy payload comes from the application's own client or service, and
  the keys are still only hashable scalars.)
* ``use_bin_type=True`` / ``raw=False``: ``str`` and ``bytes`` stay distinct, as in msgpack's spec.
"""

from __future__ import annotations

from typing import Any

import msgpack

from flamepy_core.contracts.errors import FlameError, FlameErrorCode

_DOMAIN_TEXT = "None, bool, int (-2**63..2**64-1), float, str, bytes, list and dict with scalar keys"


def _hint(exc: Exception) -> str:
    if isinstance(exc, OverflowError):
        return " (msgpack integers are 64-bit: from -2**63 to 2**64-1)"
    if isinstance(exc, UnicodeEncodeError):
        return " (a str holds a lone surrogate, which UTF-8 cannot carry)"
    if isinstance(exc, TypeError):
        return f" (the 'msgpack' serializer carries exactly {_DOMAIN_TEXT}; tuples, sets and subclasses are refused)"
    return ""


class MsgpackSerializer:
    """msgpack with the domain described in the module docstring."""

    name = "msgpack"
    domain = "msgpack"

    def dumps(self, obj: Any) -> bytes:
        try:
            return msgpack.packb(obj, use_bin_type=True, strict_types=True)  # type: ignore[no-any-return]
        except Exception as exc:  # TypeError (type outside the domain), OverflowError, ValueError (depth)...
            raise FlameError(
                FlameErrorCode.INVALID_ARGUMENT,
                f"serializer 'msgpack' cannot encode a value of type {type(obj).__qualname__}: "
                f"{type(exc).__name__}: {exc}{_hint(exc)}",
            ) from exc

    def loads(self, data: bytes) -> Any:
        try:
            return msgpack.unpackb(data, raw=False, strict_map_key=False, use_list=True)
        except Exception as exc:  # ExtraData, FormatError, StackError, ValueError, UnicodeDecodeError, TypeError
            raise FlameError(
                FlameErrorCode.INVALID_ARGUMENT,
                f"serializer 'msgpack' cannot decode {len(data)} bytes (starting {bytes(data[:8])!r}): "
                f"{type(exc).__name__}: {str(exc).rstrip('.')}; were they written by another serializer?",
            ) from exc
