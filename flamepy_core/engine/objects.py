"""The object cache: versioned opaque blobs with patches, under Flame's key rules.

Versions follow Flame: a put creates version 1; an update replaces the base, drops the patches and adds
one; a patch appends a delta and adds one. A reader sends the version it holds and gets nothing (not
modified), only the patches it lacks, or the whole object. The payload is never decoded here.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from flamepy_core.contracts.errors import FlameError, FlameErrorCode
from flamepy_core.engine.store import Store
from flamepy_core.objref import parse_delete_prefix, parse_full_key, parse_prefix
from flamepy_core.wire.proto import cache_pb2

MAX_PATCHES = 1000


@dataclass
class CachedObject:
    version: int
    base_version: int
    base: bytes
    patches: list[tuple[int, bytes]] = field(default_factory=list)


def _checked(parse: Callable[[str], object], key: str) -> None:
    """Apply a key rule; a broken rule is the caller's INVALID_ARGUMENT, with the rule's own message."""
    try:
        parse(key)
    except ValueError as exc:
        raise FlameError(FlameErrorCode.INVALID_ARGUMENT, str(exc)) from exc


class ObjectCache:
    """The server side of ``flamepy.cache.v1.ObjectCache``. Thread-safe; a change is answered once committed."""

    def __init__(self, store: Store, endpoint: str) -> None:
        self.store = store
        self.endpoint = endpoint
        self._lock = threading.Lock()
        self._objects: dict[str, CachedObject] = {}

    def _ref(self, key: str, version: int) -> cache_pb2.ObjectRef:
        return cache_pb2.ObjectRef(endpoint=self.endpoint, key=key, version=version)

    def _lookup(self, key: str) -> CachedObject | None:
        obj = self._objects.get(key)
        if obj is not None:
            return obj
        # Not in memory: either never stored, or committed (a write is acknowledged only once committed).
        rows = self.store.query("SELECT version, base_version, base FROM objects WHERE key = ?", key)
        if not rows:
            return None
        version, base_version, base = rows[0]
        patches = self.store.query("SELECT version, data FROM object_patches WHERE key = ? ORDER BY version", key)
        obj = CachedObject(version, base_version, bytes(base), [(v, bytes(d)) for v, d in patches])
        self._objects[key] = obj
        return obj

    def _save_base(self, key: str, obj: CachedObject) -> None:
        """Write a new base and wait for its commit; the caller then makes it visible (lock held)."""
        self.store.write_wait(
            [
                ("DELETE FROM object_patches WHERE key = ?", (key,)),
                (
                    "INSERT OR REPLACE INTO objects (key, version, base_version, base) VALUES (?, ?, ?, ?)",
                    (key, obj.version, obj.base_version, obj.base),
                ),
            ]
        )

    # Every change is committed before it is visible or answered (the store's callbacks never take this
    # lock, so waiting for the commit while holding it cannot deadlock).

    def put(self, key_prefix: str, data: bytes) -> cache_pb2.ObjectRef:
        _checked(parse_prefix, key_prefix)
        key = f"{key_prefix}/{uuid.uuid4()}"
        with self._lock:
            obj = CachedObject(version=1, base_version=1, base=bytes(data))
            self._save_base(key, obj)
            self._objects[key] = obj
        return self._ref(key, 1)

    def update(self, key: str, data: bytes) -> cache_pb2.ObjectRef:
        _checked(parse_full_key, key)
        with self._lock:
            old = self._lookup(key)
            version = (old.version if old else 0) + 1
            obj = CachedObject(version=version, base_version=version, base=bytes(data))
            self._save_base(key, obj)
            self._objects[key] = obj
        return self._ref(key, version)

    def patch(self, key: str, delta: bytes) -> cache_pb2.ObjectRef:
        _checked(parse_full_key, key)
        with self._lock:
            obj = self._lookup(key)
            if obj is None:
                raise FlameError(FlameErrorCode.NOT_FOUND, f"object {key} not found; put it before patching it")
            if len(obj.patches) >= MAX_PATCHES:
                raise FlameError(
                    FlameErrorCode.RESOURCE_EXHAUSTED,
                    f"object {key} already has {MAX_PATCHES} patches; update it with a new base to compact it",
                )
            version = obj.version + 1
            patch = bytes(delta)
            self.store.write_wait(
                [
                    ("UPDATE objects SET version = ? WHERE key = ?", (version, key)),
                    (
                        "INSERT OR REPLACE INTO object_patches (key, version, data) VALUES (?, ?, ?)",
                        (key, version, patch),
                    ),
                ]
            )
            obj.version = version
            obj.patches.append((version, patch))
            return self._ref(key, version)

    def get(self, key: str, known_version: int) -> cache_pb2.GetObjectResponse:
        _checked(parse_full_key, key)
        with self._lock:
            obj = self._lookup(key)
            if obj is None:
                raise FlameError(FlameErrorCode.NOT_FOUND, f"object {key} not found")
            reply = cache_pb2.GetObjectResponse(version=obj.version)
            if known_version and known_version == obj.version:
                reply.not_modified = True
            elif known_version and obj.base_version <= known_version < obj.version:
                reply.delta_only = True
                reply.patches.extend(
                    cache_pb2.ObjectPatch(version=v, data=d) for v, d in obj.patches if v > known_version
                )
            else:
                reply.base = obj.base
                reply.patches.extend(cache_pb2.ObjectPatch(version=v, data=d) for v, d in obj.patches)
            return reply

    def part(self, key: str, index: int) -> cache_pb2.GetObjectPartResponse:
        """One part of an object (0 = the base, i = the i-th patch), so a large file crosses in chunks."""
        _checked(parse_full_key, key)
        with self._lock:
            obj = self._lookup(key)
            if obj is None:
                raise FlameError(FlameErrorCode.NOT_FOUND, f"object {key} not found")
            parts = 1 + len(obj.patches)
            if index >= parts:
                raise FlameError(
                    FlameErrorCode.INVALID_ARGUMENT,
                    f"object {key} has {parts} parts (0 to {parts - 1}); part {index} does not exist",
                )
            data = obj.base if index == 0 else obj.patches[index - 1][1]
            return cache_pb2.GetObjectPartResponse(version=obj.version, parts=parts, data=data)

    def delete(self, key_prefix: str) -> int:
        _checked(parse_delete_prefix, key_prefix)
        if key_prefix.endswith("/*"):
            like = key_prefix[:-1]
        elif key_prefix.count("/") == 1:
            like = key_prefix + "/"
        else:
            like = None
        with self._lock:
            if like is None:
                keys = [key_prefix] if self._lookup(key_prefix) is not None else []
            else:
                stored = {
                    k
                    for (k,) in self.store.query("SELECT key FROM objects WHERE substr(key, 1, ?) = ?", len(like), like)
                }
                keys = sorted(stored | {k for k in self._objects if k.startswith(like)})
            self.store.write_wait(
                [
                    op
                    for key in keys
                    for op in (
                        ("DELETE FROM objects WHERE key = ?", (key,)),
                        ("DELETE FROM object_patches WHERE key = ?", (key,)),
                    )
                ]
            )
            for key in keys:
                self._objects.pop(key, None)
            return len(keys)
