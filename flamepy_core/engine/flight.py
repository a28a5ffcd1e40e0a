"""A Flight server for Flame's object-cache protocol, in front of flamepy's ``ObjectCache``.

Why: code written against Flame's SDK (``flamepy==0.6.0``: ``put_object``, ``get_object``,
``service.Session(ctx=...)``, Runner) talks to its cache with Arrow Flight. Serving that protocol from
the runtime's own ``ObjectCache`` lets such code use a flamepy runtime, and — because both protocols
share one store — objects written through either are readable through the other (payload translation in
:mod:`flamepy_core.wire.flight.payload`; only cloudpickle values and bytes cross, which is what Flame writes).

Versions, patches, key rules and the patch cap are the ``ObjectCache``'s, which follow Flame's rules: a
put or update is the current version + 1 (1 for a new key), a patch is + 1, an update drops the patches.
Native Arrow tables (Flame's ``arrow-table-v1`` uploads) are stored as an Arrow IPC stream behind
:data:`NATIVE_MARKER` and returned whole with their own schema, as Flame's server does.

Run next to the runtime with ``python -m flamepy_core.engine --flight-listen grpc://127.0.0.1:9090``, or
alone (its own store) with ``python -m flamepy_core.flight --listen grpc://127.0.0.1:9090``.
"""

from __future__ import annotations

import logging
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.flight as flight

from flamepy_core.contracts.errors import FlameError, FlameErrorCode
from flamepy_core.engine.objects import ObjectCache
from flamepy_core.engine.store import Store
from flamepy_core.objref import parse_delete_prefix, parse_full_key, parse_key_or_prefix
from flamepy_core.wire.flight.payload import to_store, to_wire
from flamepy_core.wire.flight.protocol import (
    CACHE_VERSION_KEY,
    DELETE_ACTION,
    FIELD_DATA,
    KIND_BASE,
    KIND_PATCH,
    OK,
    PATCH_COMMAND,
    REPLY_SCHEMA,
    encode_put_result,
    flight_error,
    is_native,
    parse_ticket,
)

__all__ = ["NATIVE_MARKER", "FlightCacheServer", "FlightStats"]

log = logging.getLogger(__name__)

NATIVE_MARKER = b"FLM\xfeARROW\x00"
"""Prefix of a stored native table (an Arrow IPC stream). Neither an envelope nor one of Flame's tags,
so flamepy's own protocol refuses it with a clear message instead of decoding garbage."""

_WILDCARD_HOSTS = ("0.0.0.0", "::", "[::]", "")


@dataclass
class FlightStats:
    """What the server answered to ``do_get``, counted: tests assert on these to see the protocol work."""

    full: int = 0
    patches: int = 0
    not_modified: int = 0
    native: int = 0
    rows: int = 0

    def snapshot(self) -> dict[str, int]:
        return dict(vars(self))


def _public_endpoint(listen: str, port: int) -> str:
    """``grpc://host:port`` as clients should write it: the bound port, loopback for a wildcard host."""
    parts = urlsplit(listen)
    host = parts.hostname or ""
    if host in _WILDCARD_HOSTS:
        host = "127.0.0.1"
    elif ":" in host:
        host = f"[{host}]"
    return f"grpc://{host}:{port}"


class FlightCacheServer(flight.FlightServerBase):  # type: ignore[misc]
    """Flame's cache protocol over an :class:`ObjectCache`; listening as soon as it is constructed.

    ``endpoint`` is what every ``ObjectRef`` it hands out names (Flame's SDK sends later reads and
    updates of an object to its ref's endpoint, so it must be reachable by clients). ``storage`` is
    Flame's shared local-storage directory: an object a Flame client wrote there as
    ``<storage>/<app>/<session>/<id>.arrow`` is loaded on first use. ``on_call`` runs at the start of
    every call: the runtime counts Flight calls as activity, so it does not idle-exit under a Flame client.
    """

    def __init__(
        self,
        cache: ObjectCache,
        listen: str = "grpc://127.0.0.1:0",
        *,
        public_endpoint: str | None = None,
        storage: str | Path | None = None,
        on_call: Callable[[], None] | None = None,
    ) -> None:
        scheme = urlsplit(listen).scheme
        if scheme not in ("grpc", "grpc+tcp"):
            raise FlameError(
                FlameErrorCode.INVALID_CONFIG,
                f"the Flight cache listens on grpc://host:port, not {listen!r} (TLS is not offered by this server)",
            )
        # Everything a handler uses is set before the base class starts listening.
        self.cache = cache
        self.endpoint = public_endpoint or ""
        self.storage = Path(storage) if storage else None
        self.on_call = on_call
        self.stats = FlightStats()
        self._stats_lock = threading.Lock()
        self._owned_store: Store | None = None
        self._owned_dir: tempfile.TemporaryDirectory[str] | None = None
        self._stopped = False
        self._stop_lock = threading.Lock()
        try:
            super().__init__(listen.replace("grpc+tcp://", "grpc://"))
        except pa.ArrowException as exc:  # pyarrow only says "did not start"; the cause is in gRPC's log
            raise FlameError(
                FlameErrorCode.UNAVAILABLE,
                f"the Flight cache cannot listen on {listen} ({exc}); is the port taken or the host not local?",
            ) from exc
        self.endpoint = self.endpoint or _public_endpoint(listen, self.port)
        log.info("Flame-compatible Flight cache listening on %s", self.endpoint)

    @classmethod
    def standalone(
        cls, listen: str = "grpc://127.0.0.1:0", *, db_path: str | Path | None = None, **kwargs: Any
    ) -> FlightCacheServer:
        """A server with a store of its own (a temporary one unless ``db_path`` is given)."""
        owned_dir = None
        if db_path is None:
            owned_dir = tempfile.TemporaryDirectory(prefix="flame-flight-")
            db_path = Path(owned_dir.name) / "cache.db"
        store = Store(db_path)
        try:
            server = cls(ObjectCache(store, endpoint=""), listen, **kwargs)
        except BaseException:
            store.close()
            if owned_dir is not None:
                owned_dir.cleanup()
            raise
        server.cache.endpoint = server.endpoint
        server._owned_store, server._owned_dir = store, owned_dir
        return server

    def stop(self) -> None:
        """Stop serving (in-flight calls finish) and close the store if this server owns it."""
        with self._stop_lock:
            if self._stopped:
                return
            self._stopped = True
        self.shutdown()
        if self._owned_store is not None:
            self._owned_store.close()
        if self._owned_dir is not None:
            self._owned_dir.cleanup()

    # -- helpers -------------------------------------------------------------------------------------

    @staticmethod
    def _key_of(descriptor: Any) -> str:
        if descriptor.descriptor_type != flight.DescriptorType.PATH or not descriptor.path:
            raise pa.ArrowInvalid("expected a path descriptor naming '<app>/<session>[/<object-id>]'")
        return "/".join(p.decode("utf-8") if isinstance(p, bytes) else str(p) for p in descriptor.path)

    def _import_from_storage(self, key: str) -> bool:
        """Load ``<storage>/<key>.arrow`` written by a Flame client's local-storage put; True if found."""
        if self.storage is None:
            return False
        path = self.storage / f"{key}.arrow"
        if not path.is_file():
            return False
        with pa.memory_map(str(path)) as source:
            table = pa.ipc.open_file(source).read_all()
        self.cache.update(key, self._stored_form(table))
        return True

    @staticmethod
    def _stored_form(table: Any) -> bytes:
        """A native table as an IPC stream behind the marker; else the uploaded rows' data, concatenated."""
        if is_native(table.schema):
            sink = pa.BufferOutputStream()
            with pa.ipc.new_stream(sink, table.schema) as writer:
                writer.write_table(table)
            return NATIVE_MARKER + bytes(sink.getvalue().to_pybytes())
        if FIELD_DATA not in table.column_names:
            raise pa.ArrowInvalid(f"an upload needs a binary '{FIELD_DATA}' column; got {table.column_names}")
        if table.num_rows == 0:
            raise pa.ArrowInvalid("an upload needs at least one row")
        data = b"".join(d or b"" for d in table.column(FIELD_DATA).to_pylist())
        return to_store(data)

    def _lookup(self, key: str, known: int) -> Any:
        try:
            return self.cache.get(key, known)
        except FlameError as exc:
            if exc.code == FlameErrorCode.NOT_FOUND and self._import_from_storage(key):
                return self.cache.get(key, known)
            raise

    # -- Flight --------------------------------------------------------------------------------------

    def do_put(self, context: Any, descriptor: Any, reader: Any, writer: Any) -> None:
        self._touch()
        try:
            table = reader.read_all()
            if descriptor.descriptor_type == flight.DescriptorType.CMD:
                command = bytes(descriptor.command)
                if not command.startswith(PATCH_COMMAND):
                    raise pa.ArrowInvalid(f"unknown do_put command {command[:32]!r}; expected PATCH:<key>")
                key = command[len(PATCH_COMMAND) :].decode("utf-8")
                if is_native(table.schema):
                    raise pa.ArrowInvalid("a patch is opaque rows (version, data), not a native table")
                ref = self.cache.patch(key, self._stored_form(table))
            else:
                target = self._key_of(descriptor)
                parsed = parse_key_or_prefix(target)
                blob = self._stored_form(table)
                ref = self.cache.put(target, blob) if parsed.is_prefix else self.cache.update(target, blob)
        except FlameError as exc:
            flight_error(exc)
        except ValueError as exc:  # key rules (ObjectKey) and bad UTF-8
            raise pa.ArrowInvalid(str(exc)) from None
        writer.write(pa.py_buffer(encode_put_result(self.endpoint, ref.key, int(ref.version))))

    def do_get(self, context: Any, ticket: Any) -> Any:
        self._touch()
        key, known = parse_ticket(bytes(ticket.ticket))
        try:
            reply = self._lookup(key, known)
        except FlameError as exc:
            flight_error(exc)
        if reply.base.startswith(NATIVE_MARKER):
            return self._native_reply(reply)
        # Unlike Flame's server, a native table is also answered "not modified" (or with its new patches)
        # when the reader is current: Flame's SDK handles that answer the same way for every object.
        rows: list[tuple[int, str, bytes]] = []
        patches = [(int(p.version), KIND_PATCH, to_wire(p.data)) for p in reply.patches]
        if reply.not_modified:
            kind = "not_modified"
        elif reply.delta_only:
            kind, rows = "patches", patches
        else:
            kind, rows = "full", [(int(reply.version) - len(patches), KIND_BASE, to_wire(reply.base)), *patches]
        self._count(kind, len(rows))
        table = pa.Table.from_arrays(
            [
                pa.array([r[0] for r in rows], type=pa.uint64()),
                pa.array([r[1] for r in rows], type=pa.utf8()),
                pa.array([r[2] for r in rows], type=pa.binary()),
            ],
            schema=REPLY_SCHEMA,
        )
        return flight.RecordBatchStream(table)

    def _touch(self) -> None:
        if self.on_call is not None:
            self.on_call()

    def _count(self, kind: str, rows: int) -> None:
        with self._stats_lock:
            setattr(self.stats, kind, getattr(self.stats, kind) + 1)
            self.stats.rows += rows

    def _native_reply(self, reply: Any) -> Any:
        table = self._native_table(reply.base)
        metadata = dict(table.schema.metadata or {})
        metadata[CACHE_VERSION_KEY] = str(int(reply.version)).encode()
        table = table.replace_schema_metadata(metadata)
        self._count("native", table.num_rows)
        return flight.RecordBatchStream(table)

    @staticmethod
    def _native_table(blob: bytes) -> Any:
        return pa.ipc.open_stream(pa.BufferReader(blob[len(NATIVE_MARKER) :])).read_all()

    def _store_rows(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        """Query the cache's store once everything submitted is written (the cache writes behind)."""
        self.cache.store.flush()
        return self.cache.store.query(sql, *params)

    def get_flight_info(self, context: Any, descriptor: Any) -> Any:
        self._touch()
        key = self._key_of(descriptor)
        try:
            parse_full_key(key)
        except ValueError as exc:
            raise pa.ArrowInvalid(str(exc)) from None
        rows = self._store_rows("SELECT length(base), substr(base, 1, ?) FROM objects WHERE key = ?", 64, key)
        if not rows and self._import_from_storage(key):
            rows = self._store_rows("SELECT length(base), substr(base, 1, ?) FROM objects WHERE key = ?", 64, key)
        schema, size = REPLY_SCHEMA, -1
        if rows:
            size = int(rows[0][0])
            if bytes(rows[0][1]).startswith(NATIVE_MARKER):
                schema = self._native_table(self.cache.get(key, 0).base).schema
        # Flame's SDK asks this for objects it wrote to local storage and the server has not seen: the
        # answer is where to read them, whether or not the object is known yet.
        endpoint = flight.FlightEndpoint(key.encode(), [flight.Location(self.endpoint)])
        return flight.FlightInfo(schema, descriptor, [endpoint], -1, size)

    def list_flights(self, context: Any, criteria: bytes) -> Iterator[Any]:
        self._touch()
        prefix = bytes(criteria or b"").decode("utf-8", errors="replace")
        rows = self._store_rows(
            "SELECT o.key, length(o.base) + coalesce((SELECT sum(length(p.data)) FROM object_patches p "
            "WHERE p.key = o.key), 0) FROM objects o WHERE substr(o.key, 1, ?) = ? ORDER BY o.key",
            len(prefix),
            prefix,
        )
        for key, size in rows:
            endpoint = flight.FlightEndpoint(key.encode(), [flight.Location(self.endpoint)])
            yield flight.FlightInfo(REPLY_SCHEMA, flight.FlightDescriptor.for_path(key), [endpoint], -1, int(size))

    def list_actions(self, context: Any) -> list[tuple[str, str]]:
        return [(DELETE_ACTION, "delete '<app>/<session>/<id>', '<app>/<session>' or '<app>/*'")]

    def do_action(self, context: Any, action: Any) -> Iterator[bytes]:
        self._touch()
        if action.type != DELETE_ACTION:
            raise pa.ArrowNotImplementedError(f"unknown action {action.type!r}; this server knows {DELETE_ACTION}")
        body = action.body.to_pybytes() if action.body is not None else b""
        try:
            key_prefix = body.decode("utf-8")
            parse_delete_prefix(key_prefix)
            self.cache.delete(key_prefix)
        except FlameError as exc:
            flight_error(exc)
        except ValueError as exc:
            raise pa.ArrowInvalid(str(exc)) from None
        return iter([OK])
