"""Deliberately broken serializers, to prove the serializer suite catches real contract bugs.

Each is a JSON serializer (domain ``json``) of the kind an author writes, with one fault:

* ``broken-sharedbuffer``   - reuses one ``io.StringIO`` for every ``dumps`` to save allocations: threads
  encoding at once write into each other's output;
* ``broken-zipcap``         - compressed JSON whose ``loads`` caps decompression at 1 MiB (a guard against
  zip bombs): larger documents come back cut, and fail to decode;
* ``broken-isinstance``     - checks the domain with ``isinstance`` instead of exact types, so an
  ``IntEnum``, a ``str`` or ``dict`` subclass passes and arrives as its base type;
* ``broken-negativecache``  - remembers the objects it refused (a small cache, so a caller that retries in
  a loop is cheap) and refuses them again on a fast path that raises a bare ``TypeError``: the second
  refusal of a value is not the first.

:class:`BrokenSerializersPlugin` declares them for run-time registration in a registry of their own.
"""

from __future__ import annotations

import io
import json
import math
import zlib
from collections.abc import Sequence
from typing import Any

from flamepy_serializers.json.serializer import JsonSerializer

from flamepy_core.contracts import SerializerSpec, hookimpl
from flamepy_core.contracts.errors import FlameError, FlameErrorCode

_COMPACT: dict[str, Any] = {"ensure_ascii": False, "allow_nan": False, "separators": (",", ":")}


class _Strict:
    """The bundled exact JSON serializer, its errors naming the broken serializer instead."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._json = JsonSerializer()

    def _renamed(self, err: FlameError) -> FlameError:
        return FlameError(err.code, err.message.replace("serializer 'json'", f"serializer {self._name!r}"))

    def dumps(self, obj: Any) -> bytes:
        try:
            return self._json.dumps(obj)
        except FlameError as err:
            raise self._renamed(err) from err

    def loads(self, data: bytes) -> Any:
        try:
            return self._json.loads(data)
        except FlameError as err:
            raise self._renamed(err) from err


class SharedBufferJson:
    """Exact JSON, but every ``dumps`` writes into the same buffer."""

    name = "broken-sharedbuffer"
    domain = "json"

    def __init__(self) -> None:
        self._strict = _Strict(self.name)
        self._buffer = io.StringIO()  # reused to save an allocation per call

    def dumps(self, obj: Any) -> bytes:
        self._strict.dumps(obj)  # the domain checks and refusals of the bundled serializer
        buffer = self._buffer
        buffer.seek(0)
        buffer.truncate()
        json.dump(obj, buffer, **_COMPACT)
        return buffer.getvalue().encode("utf-8")

    def loads(self, data: bytes) -> Any:
        return self._strict.loads(data)


class ZipCapJson:
    """Exact JSON, zlib-compressed; ``loads`` inflates at most 1 MiB."""

    name = "broken-zipcap"
    domain = "json"
    CAP = 1024 * 1024

    def __init__(self) -> None:
        self._strict = _Strict(self.name)

    def dumps(self, obj: Any) -> bytes:
        return zlib.compress(self._strict.dumps(obj), 1)

    def loads(self, data: bytes) -> Any:
        try:
            text = zlib.decompressobj().decompress(bytes(data), self.CAP)  # "never inflate more than 1 MiB"
        except zlib.error as exc:
            raise FlameError(
                FlameErrorCode.INVALID_ARGUMENT, f"serializer {self.name!r}: not zlib data: {exc}"
            ) from exc
        return self._strict.loads(text)


def _loosely_json(value: Any, where: str) -> None:
    """The domain check with ``isinstance``: subclasses of the JSON types pass (the fault)."""
    if value is None or isinstance(value, (str, bool, int)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise TypeError(f"{where}: float {value!r} has no JSON form")
        return
    if isinstance(value, list):
        for i, item in enumerate(value):
            _loosely_json(item, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{where}: dict key {key!r} ({type(key).__qualname__}) is not a str")
            _loosely_json(item, f"{where}[{key!r}]")
        return
    raise TypeError(f"{where}: {type(value).__qualname__} is not a JSON type")


class IsinstanceJson:
    """JSON whose domain check uses ``isinstance``."""

    name = "broken-isinstance"
    domain = "json"

    def __init__(self) -> None:
        self._strict = _Strict(self.name)

    def dumps(self, obj: Any) -> bytes:
        try:
            _loosely_json(obj, "value")
            return json.dumps(obj, **_COMPACT).encode("utf-8")
        except (TypeError, ValueError, RecursionError) as exc:
            raise FlameError(
                FlameErrorCode.INVALID_ARGUMENT,
                f"serializer {self.name!r} cannot encode a value of type {type(obj).__qualname__}: {exc}",
            ) from exc

    def loads(self, data: bytes) -> Any:
        return self._strict.loads(data)


class NegativeCacheJson:
    """Exact JSON that remembers the objects it refused, and refuses them again on a faster path."""

    name = "broken-negativecache"
    domain = "json"

    def __init__(self) -> None:
        self._strict = _Strict(self.name)
        self._refused: dict[int, Any] = {}  # id -> the object (kept, so its id is not reused)

    def dumps(self, obj: Any) -> bytes:
        if id(obj) in self._refused:
            raise TypeError(f"{type(obj).__name__} is not supported")  # the fast path forgot the FlameError
        try:
            return self._strict.dumps(obj)
        except FlameError:
            if len(self._refused) > 256:
                self._refused.clear()
            self._refused[id(obj)] = obj
            raise

    def loads(self, data: bytes) -> Any:
        return self._strict.loads(data)


BROKEN = (SharedBufferJson, ZipCapJson, IsinstanceJson, NegativeCacheJson)


class BrokenSerializersPlugin:
    """A flamepy plugin declaring every broken serializer; register it at run time."""

    @hookimpl
    def flamepy_add_serializers(self) -> Sequence[SerializerSpec]:
        return [
            SerializerSpec(name=cls.name, domain=cls.domain, load=_loader(cls), description=(cls.__doc__ or "").strip())
            for cls in BROKEN
        ]


def _loader(cls: type) -> Any:
    return lambda: cls
