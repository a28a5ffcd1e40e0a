"""A cache client that speaks Flame's Arrow Flight protocol, behind flamepy's ``CacheClient`` interface.

``flamepy_core.client.objects.cache_client()`` returns one of these for a Flight endpoint (the rule is in
:mod:`flamepy_core.wire.flight`), so ``put_object``/``get_object``/``update_object``/``patch_object``/
``delete_objects``, ``FlameInstance.context()`` and ``Session.context()`` work unchanged against a Flame
cluster's cache or a flamepy server's ``--flight-listen`` cache.

Like flamepy's own client it keeps the newest copy of each object it read (base, patches, version) and
sends that version in the ticket, so an unchanged object costs an empty stream and a patched one only its
new patch rows. Payloads are translated at this boundary (:mod:`flamepy_core.wire.flight.payload`): what we
write, Flame's SDK reads as the same object, and the other way round.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import cloudpickle
import pyarrow as pa
import pyarrow.flight as flight

from flamepy_core.client.objects import LOCAL_CACHE_ENTRIES
from flamepy_core.config import resolve_config
from flamepy_core.contracts.errors import FlameError, FlameErrorCode
from flamepy_core.objref import ObjectRef, parse_delete_prefix, parse_full_key, parse_prefix
from flamepy_core.transport_kit import DEFAULT_CALL_TIMEOUT
from flamepy_core.wire.flight import flight_location
from flamepy_core.wire.flight.payload import from_flame, pickled_envelope, to_flame
from flamepy_core.wire.flight.protocol import (
    DELETE_ACTION,
    FIELD_DATA,
    FIELD_KIND,
    FIELD_VERSION,
    FLIGHT_ERRORS,
    KIND_BASE,
    KIND_PATCH,
    PATCH_COMMAND,
    PUT_SCHEMA,
    flame_error,
    is_native,
    native_value,
    native_version,
)

__all__ = ["FlightCacheClient", "FlightReply"]

T = TypeVar("T")

# Unlimited message sizes, as Flame's SDK sets them: a cached object is one row.
_GRPC_OPTIONS = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]


@dataclass
class FlightReply:
    """One decoded ``do_get`` answer: ``kind`` says which of Flame's three replies it was."""

    kind: Literal["full", "patches", "not_modified"]
    version: int
    base: bytes = b""
    patches: list[tuple[int, bytes]] = field(default_factory=list)
    rows: int = 0


@dataclass
class _Copy:
    version: int
    base: bytes
    patches: list[tuple[int, bytes]] = field(default_factory=list)


class FlightCacheClient:
    """A client of one Flight cache endpoint, with a small local copy of what it read.

    It keeps the :class:`~flamepy_core.client.objects.ObjectCacheClient` interface (``put``/``update``/
    ``patch``/``fetch``/``delete``, ``endpoint``, ``recover``) and none of the transport plumbing of
    flamepy's own ``CacheClient``. ``last_reply`` describes the latest ``do_get`` answer, for tests and
    diagnostics.
    """

    def __init__(
        self, endpoint: str, *, ca_file: str | os.PathLike[str] | None = None, timeout: float = DEFAULT_CALL_TIMEOUT
    ) -> None:
        self.endpoint = endpoint
        self.location = flight_location(endpoint)
        self.timeout = timeout
        self._entries: OrderedDict[str, _Copy] = OrderedDict()
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self.recover: Callable[[], bool] | None = None
        self.last_reply: FlightReply | None = None
        root_certs = None
        if self.location.startswith("grpc+tls"):
            if ca_file is None:  # as Flame's SDK: the cache's CA from flame.yaml, else FLAME_CA_FILE
                ca_file = resolve_config().cache_ca_file
            root_certs = Path(ca_file).read_bytes() if ca_file else None
        self._client = flight.FlightClient(self.location, tls_root_certs=root_certs, generic_options=_GRPC_OPTIONS)

    def close(self) -> None:
        """Close the underlying Flight client (its channel)."""
        self._client.close()

    # -- plumbing ------------------------------------------------------------------------------------

    def _options(self) -> Any:
        return flight.FlightCallOptions(timeout=self.timeout)

    def _flight_call(self, what: str, fn: Callable[[], T]) -> T:
        """Run one Flight call, mapping every pyarrow error to a FlameError naming ``what`` failed."""
        try:
            try:
                return fn()
            except FLIGHT_ERRORS as exc:
                # A runtime-managed cache that went away: restart it and repeat (each call is repeatable).
                error = flame_error(exc, what)
                if error.code != FlameErrorCode.UNAVAILABLE or self.recover is None or not self.recover():
                    raise error from exc
                return fn()
        except FLIGHT_ERRORS as exc:
            raise flame_error(exc, what) from exc

    def _put(self, descriptor: Any, blob: bytes, what: str) -> ObjectRef:
        batch = pa.RecordBatch.from_arrays(
            [pa.array([0], type=pa.uint64()), pa.array([to_flame(blob)], type=pa.binary())], schema=PUT_SCHEMA
        )

        def call() -> ObjectRef:
            writer, reader = self._client.do_put(descriptor, PUT_SCHEMA, self._options())
            try:
                writer.write_batch(batch)
                writer.done_writing()
                metadata = reader.read()
            finally:
                writer.close()
            if metadata is None:
                raise FlameError(FlameErrorCode.INTERNAL, f"failed to {what}: the cache server sent no PutResult")
            return ObjectRef.decode(metadata.to_pybytes())

        return self._flight_call(what, call)

    # -- the CacheClient interface ---------------------------------------------------------------------

    def put(self, key_prefix: str, blob: bytes) -> ObjectRef:
        parse_prefix(key_prefix)
        return self._put(flight.FlightDescriptor.for_path(key_prefix), blob, "put object")

    def update(self, key: str, blob: bytes) -> ObjectRef:
        parse_full_key(key)
        ref = self._put(flight.FlightDescriptor.for_path(key), blob, f"update object {key}")
        with self._lock:
            self._entries.pop(key, None)
        return ref

    def patch(self, key: str, delta: bytes) -> ObjectRef:
        # The local copy is kept: the next read then gets just the patches it lacks.
        parse_full_key(key)
        descriptor = flight.FlightDescriptor.for_command(PATCH_COMMAND + key.encode())
        return self._put(descriptor, delta, f"patch object {key}")

    def fetch(self, key: str, force_full: bool = False) -> tuple[bytes, list[bytes], int]:
        """(base, patches, version) of the newest version, reusing the local copy when it is current."""
        parse_full_key(key)
        with self._lock:
            copy = None if force_full else self._entries.get(key)
        known = copy.version if copy else 0
        reply = self._flight_call(f"get object {key}", lambda: self.get_reply(key, known))
        if reply.kind == "not_modified" and copy is not None:
            fresh = copy
        elif reply.kind == "patches" and copy is not None:
            fresh = _Copy(reply.version, copy.base, copy.patches + reply.patches)
        elif reply.kind != "full":  # raced with an eviction, or a server that answers oddly: ask for all
            if force_full:
                raise FlameError(FlameErrorCode.INTERNAL, f"failed to get object {key}: a full fetch got no base")
            return self.fetch(key, force_full=True)
        else:
            fresh = _Copy(reply.version, reply.base, reply.patches)
        with self._lock:
            self._entries[key] = fresh
            self._entries.move_to_end(key)
            while len(self._entries) > LOCAL_CACHE_ENTRIES:
                self._entries.popitem(last=False)
        return fresh.base, [data for _, data in fresh.patches], fresh.version

    def delete(self, key_prefix: str) -> int:
        """Delete a key, a session's objects or an app's; -1, as Flame's server answers "OK", not a count."""
        parsed = parse_delete_prefix(key_prefix)

        def call() -> list[Any]:
            return list(self._client.do_action(flight.Action(DELETE_ACTION, key_prefix.encode()), self._options()))

        results = self._flight_call("delete objects", call)
        if not results:
            raise FlameError(FlameErrorCode.INTERNAL, "failed to delete objects: the cache server sent no answer")
        with self._lock:
            stem = f"{parsed.app}/" if parsed.is_wildcard else f"{parsed.prefix}/"
            for key in [k for k in self._entries if k == key_prefix or (parsed.is_prefix and k.startswith(stem))]:
                del self._entries[key]
        return -1

    # -- the wire --------------------------------------------------------------------------------------

    def get_reply(self, key: str, known_version: int) -> FlightReply:
        """One ``do_get`` of ``"<key>:<known_version>"``, decoded (payloads translated to flamepy's envelope)."""
        reader = self._client.do_get(flight.Ticket(f"{key}:{known_version}".encode()), self._options())
        table = reader.read_all()
        reply = decode_reply(table)
        self.last_reply = reply
        return reply


def decode_reply(table: Any) -> FlightReply:
    """Read Flame's ``do_get`` answer: a native table, no rows, patch rows, or a base row then patches.

    Answers without a ``kind`` column (older servers) are a base row followed by patch rows.
    """
    if is_native(table.schema):
        value = native_value(table)
        base = pickled_envelope(bytes(cloudpickle.dumps(value)))
        return FlightReply("full", native_version(table.schema), base, rows=table.num_rows)
    if table.num_rows == 0:
        return FlightReply("not_modified", 0)
    names = table.column_names
    if FIELD_DATA not in names or FIELD_VERSION not in names:
        raise FlameError(
            FlameErrorCode.INTERNAL, f"the cache server answered with columns {names}; expected version, data"
        )
    versions = table.column(FIELD_VERSION).to_pylist()
    datas = table.column(FIELD_DATA).to_pylist()
    if FIELD_KIND in names:
        kinds = table.column(FIELD_KIND).to_pylist()
    else:
        kinds = [KIND_BASE] + [KIND_PATCH] * (len(versions) - 1)
    unknown = sorted({k for k in kinds if k not in (KIND_BASE, KIND_PATCH)})
    if unknown:
        raise FlameError(FlameErrorCode.INTERNAL, f"the cache server sent rows of unknown kind {unknown}")
    patches = [(int(v), from_flame(d)) for v, k, d in zip(versions, kinds, datas, strict=True) if k == KIND_PATCH]
    patch_versions = [v for v, _ in patches]
    if patch_versions != sorted(set(patch_versions)):
        raise FlameError(FlameErrorCode.INTERNAL, "the cache server sent patch rows out of order")
    version = max(int(v) for v in versions)
    bases = [i for i, k in enumerate(kinds) if k == KIND_BASE]
    if not bases:
        return FlightReply("patches", version, patches=patches, rows=len(versions))
    if bases != [0]:
        raise FlameError(FlameErrorCode.INTERNAL, "the cache server's full answer must start with one base row")
    return FlightReply("full", version, from_flame(datas[0]), patches, rows=len(versions))
