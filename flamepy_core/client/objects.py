"""The object cache from a client's or an instance's side: ``put_object``, ``get_object`` and friends.

Values that are not bytes go through the serializer; bytes are stored as they are. Either way the blob
starts with a small envelope (``FPY`` + kind + serializer name) so a reader decodes with the serializer
that wrote it, or says clearly which one it lacks — never garbage. The server never decodes a blob.

Readers keep the newest copy of each object they fetched (base, patches, version) and send that version,
so an unchanged object costs a round trip but no payload, and a patched one only its new patches.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from flamepy_core.client.connection import default_connection
from flamepy_core.client.transports import shared_transport
from flamepy_core.config import DEFAULT_FLAME_CONF, ClientConfig, flame_home, resolve_config
from flamepy_core.contracts.errors import FlameError, FlameErrorCode
from flamepy_core.contracts.serializer import Serializer
from flamepy_core.contracts.transport import Channel
from flamepy_core.objref import ObjectRef, parse_delete_prefix, parse_full_key, parse_prefix
from flamepy_core.plugins import get_registry
from flamepy_core.wire.envelope import decode_value, encode_value
from flamepy_core.wire.flight import require_pyarrow, uses_flight
from flamepy_core.wire.methods import OBJECT_CACHE
from flamepy_core.wire.proto import cache_pb2

LOCAL_CACHE_ENTRIES = 1000


class ObjectCacheClient(Protocol):
    """What the cache functions below need from a client of one cache endpoint.

    Two implementations: :class:`CacheClient` (flamepy's ``flamepy.cache.v1`` over any transport) and
    :class:`~flamepy_core.client.flight.FlightCacheClient` (Flame's Arrow Flight protocol).
    """

    endpoint: str
    recover: Callable[[], bool] | None
    """Set for the embedded local server: restarts it if it has gone; True when it did."""

    def put(self, key_prefix: str, blob: bytes) -> ObjectRef: ...

    def update(self, key: str, blob: bytes) -> ObjectRef: ...

    def patch(self, key: str, delta: bytes) -> ObjectRef: ...

    def fetch(self, key: str, force_full: bool = False) -> tuple[bytes, list[bytes], int]: ...

    def delete(self, key_prefix: str) -> int: ...


@dataclass
class _Copy:
    version: int
    base: bytes
    patches: list[tuple[int, bytes]] = field(default_factory=list)


class CacheClient:
    """A client of one object-cache endpoint, with a small local copy of what it read."""

    def __init__(self, endpoint: str, channel: Channel) -> None:
        self.endpoint = endpoint
        self.channel = channel
        self._copies: OrderedDict[str, _Copy] = OrderedDict()
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self.recover: Callable[[], bool] | None = None

    def _call(self, rpc: str, request: Any, what: str) -> Any:
        method = OBJECT_CACHE[rpc]
        data = request.SerializeToString()
        try:
            try:
                raw = self.channel.unary(method.path, data)
            except FlameError as exc:
                # The local server went away: restart it and repeat the call. Each cache call is safe to
                # repeat; at worst a put that reached the dying server leaves one unreferenced object.
                if exc.code != FlameErrorCode.UNAVAILABLE or self.recover is None or not self.recover():
                    raise
                raw = self.channel.unary(method.path, data)
        except FlameError as exc:
            raise FlameError(exc.code, f"failed to {what}: {exc.message}") from exc
        return method.response.FromString(raw)

    def put(self, key_prefix: str, blob: bytes) -> ObjectRef:
        parse_prefix(key_prefix)
        reply = self._call("PutObject", cache_pb2.PutObjectRequest(key_prefix=key_prefix, data=blob), "put object")
        return ObjectRef.from_proto(reply)

    def update(self, key: str, blob: bytes) -> ObjectRef:
        parse_full_key(key)
        reply = self._call("UpdateObject", cache_pb2.UpdateObjectRequest(key=key, data=blob), f"update object {key}")
        with self._lock:
            self._copies.pop(key, None)
        return ObjectRef.from_proto(reply)

    def patch(self, key: str, delta: bytes) -> ObjectRef:
        parse_full_key(key)
        reply = self._call("PatchObject", cache_pb2.PatchObjectRequest(key=key, delta=delta), f"patch object {key}")
        return ObjectRef.from_proto(reply)

    def fetch(self, key: str, force_full: bool = False) -> tuple[bytes, list[bytes], int]:
        """(base, patches, version) of the newest version, reusing the local copy when it is current."""
        parse_full_key(key)
        with self._lock:
            copy = None if force_full else self._copies.get(key)
        known = copy.version if copy else 0
        reply = self._call("GetObject", cache_pb2.GetObjectRequest(key=key, known_version=known), f"get object {key}")
        if reply.not_modified and copy is not None:
            fresh = copy
        elif reply.delta_only and copy is not None:
            fresh = _Copy(reply.version, copy.base, copy.patches + [(p.version, p.data) for p in reply.patches])
        elif reply.not_modified or reply.delta_only:  # raced with an eviction: ask for everything
            return self.fetch(key, force_full=True)
        else:
            fresh = _Copy(reply.version, reply.base, [(p.version, p.data) for p in reply.patches])
        with self._lock:
            self._copies[key] = fresh
            self._copies.move_to_end(key)
            while len(self._copies) > LOCAL_CACHE_ENTRIES:
                self._copies.popitem(last=False)
        return fresh.base, [data for _, data in fresh.patches], fresh.version

    def delete(self, key_prefix: str) -> int:
        parse_delete_prefix(key_prefix)
        reply = self._call("DeleteObjects", cache_pb2.DeleteObjectsRequest(key_prefix=key_prefix), "delete objects")
        with self._lock:
            stem = key_prefix[:-1] if key_prefix.endswith("*") else key_prefix
            for key in [k for k in self._copies if k == key_prefix or k.startswith(stem.rstrip("/") + "/")]:
                del self._copies[key]
        return int(reply.deleted)


_clients_lock = threading.Lock()
_clients: dict[str, tuple[int, bool, ObjectCacheClient]] = {}
"""endpoint -> (pid that made it, whether it speaks Flight, the client)."""


def cache_client(endpoint: str | None = None) -> ObjectCacheClient:
    """The process's client for ``endpoint``, or for the configured cache (the frontend's by default)."""

    recover = None
    configured = True
    if endpoint is None:
        config = _config()
        if config.cache_endpoint:
            endpoint = config.cache_endpoint
        else:
            conn = default_connection()
            endpoint, recover, configured = conn.cache_endpoint, conn.recover, False
    # Flame's protocol for flight:// endpoints, and for a configured grpc:// one under FLAME_CACHE_PROTOCOL=flight.
    flight = uses_flight(endpoint, configured=configured)
    with _clients_lock:
        known = _clients.get(endpoint)
        client: ObjectCacheClient
        if known is not None and known[:2] == (os.getpid(), flight):
            client = known[2]
        else:
            if flight:
                require_pyarrow(f"cache endpoint {endpoint}")
                from flamepy_core.client.flight import FlightCacheClient  # pyarrow: only for a Flight cache

                client = FlightCacheClient(endpoint)
            else:
                client = CacheClient(endpoint, shared_transport(endpoint).connect(endpoint))
            _clients[endpoint] = (os.getpid(), flight, client)
        client.recover = client.recover or recover
        return client


# Every cache call needs the configuration, and a service calls the cache on every task (context(),
# update_context()): resolve it again only when a variable it reads or the flame.yaml file changed.
_CONFIG_VARIABLES = (
    "FLAME_HOME",
    "FLAME_ENDPOINT",
    "FLAME_CACHE_ENDPOINT",
    "FLAME_CACHE_PROTOCOL",
    "FLAME_CACHE_STORAGE",
    "FLAME_SERIALIZER",
    "FLAME_TRANSPORT",
    "FLAME_CA_FILE",
    "FLAME_CLIENT_CERT_FILE",
    "FLAME_CLIENT_KEY_FILE",
)
_memo_lock = threading.Lock()
_config_memo: tuple[tuple[object, ...], ClientConfig] | None = None
_serializers: dict[str, Serializer] = {}


def _config() -> ClientConfig:
    global _config_memo
    variables = tuple(os.environ.get(name) for name in _CONFIG_VARIABLES)
    try:
        stamp: object = os.stat(flame_home() / DEFAULT_FLAME_CONF).st_mtime_ns
    except OSError:
        stamp = None
    key = (*variables, stamp)
    memo = _config_memo
    if memo is not None and memo[0] == key:
        return memo[1]
    config = resolve_config()
    with _memo_lock:
        _config_memo = (key, config)
    return config


def _serializer() -> Serializer:
    name = _config().serializer
    serializer = _serializers.get(name)
    if serializer is None:
        serializer = _serializers.setdefault(name, get_registry().serializer(name))
    return serializer


def put_object(key_prefix: str, obj: Any, *, serializer: Serializer | None = None) -> ObjectRef:
    """Store ``obj`` under ``"<app>/<session>"``; the cache names it. Returns a ref at version 1.

    ``serializer`` (default: the configured one) encodes values that are not bytes; readers decode with
    the serializer named in the stored blob, whatever their own configuration.
    """
    return cache_client().put(key_prefix, encode_value(obj, serializer or _serializer()))


def get_object(ref: ObjectRef, deserializer: Callable[[Any, list[Any]], Any] | None = None) -> Any:
    """The object ``ref`` names, at its newest version.

    As in Flame: without ``deserializer`` the base value is returned and patches are ignored; with one,
    the result is ``deserializer(base, [patch, ...])`` (patches in the order they were applied).
    """
    base, patches, _version = cache_client().fetch(ref.key, force_full=ref.version == 0)
    serializer = _serializer()
    value = decode_value(base, serializer)
    if deserializer is None:
        return value
    return deserializer(value, [decode_value(p, serializer) for p in patches])


def update_object(ref: ObjectRef, new_obj: Any) -> ObjectRef:
    """Replace the object (patches dropped); the returned ref has the new version."""
    return cache_client().update(ref.key, encode_value(new_obj, _serializer()))


def patch_object(ref: ObjectRef, delta: Any) -> ObjectRef:
    """Append ``delta`` to the object's patches; the returned ref has the new version."""
    return cache_client().patch(ref.key, encode_value(delta, _serializer()))


def delete_objects(key_prefix: str) -> None:
    """Delete ``"<app>/<session>/<id>"``, everything under ``"<app>/<session>"``, or ``"<app>/*"``."""
    cache_client().delete(key_prefix)
