"""Files in the object cache: ``upload_object`` and ``download_object``, in chunks.

A file is stored as one cached object whose base is the first chunk and whose patches are the following
chunks, each a bytes value. So no single message carries more than one chunk, whatever the file's size,
and the server stores and serves it as it does any object (deleted with its application's prefix, never
decoded). Reading it back fetches one part per call (``GetObjectPart``) and checks that the object's
version did not move under the reader. ``get_object(ref, deserializer=lambda b, ps: b + b"".join(ps))``
returns the whole file too, for files small enough for one message.

Errors are :class:`CacheFileError`, a ``FlameError`` that is also the ``ValueError`` Flame's SDK raises
here, so code written for either catches it.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from flamepy_core.client.objects import CacheClient, cache_client
from flamepy_core.config import RuntimeSettings
from flamepy_core.contracts.errors import FlameError, FlameErrorCode
from flamepy_core.objref import ObjectRef, parse_full_key, parse_key_or_prefix
from flamepy_core.wire.envelope import KIND_BYTES, MAGIC, decode_value
from flamepy_core.wire.proto import cache_pb2

__all__ = ["CacheFileError", "chunk_size", "download_object", "upload_object"]

MAX_CHUNK = 4 * 1024 * 1024
"""Largest chunk sent in one call; smaller when the configured message size is smaller."""
ENVELOPE_ROOM = 64 * 1024
"""Room left in each message for the request's own fields and the value envelope."""
MAX_PARTS = 1001
"""A base and the server's cap of 1,000 patches."""
READ_ATTEMPTS = 3
"""Downloads restarted when the object changes while it is read, before giving up."""


class CacheFileError(FlameError, ValueError):
    """A file could not be moved to or from the object cache (a ``FlameError`` and a ``ValueError``)."""


def chunk_size(settings: RuntimeSettings | None = None) -> int:
    """Bytes per chunk: 4 MiB, or less when ``FLAME_MAX_MESSAGE_SIZE`` is smaller."""
    limit = (settings or RuntimeSettings.from_env()).max_message_size
    return max(1024, min(MAX_CHUNK, limit - ENVELOPE_ROOM))


def _chunks(path: Path, size: int) -> Iterator[bytes]:
    with open(path, "rb") as fh:
        first = fh.read(size)
        yield first  # an empty file is one empty chunk
        while chunk := fh.read(size):
            yield chunk


def upload_object(key_or_prefix: str, file_path: str | os.PathLike[str]) -> ObjectRef:
    """Store the file at ``file_path`` under a full key (replacing it) or a prefix (a new object id).

    Returns the ref of the stored file. A missing file raises ``FileNotFoundError``; a bad key, a file
    larger than the cache can hold in parts, or a failed call raises :class:`CacheFileError` (the
    partial object is removed first).
    """
    path = Path(file_path)
    if not path.is_file():
        raise FileNotFoundError(f"cannot upload {path}: no such file")
    try:
        key = parse_key_or_prefix(key_or_prefix)
    except ValueError as exc:
        raise CacheFileError(FlameErrorCode.INVALID_ARGUMENT, str(exc)) from None
    size = chunk_size()
    total = path.stat().st_size
    parts = max(1, -(-total // size))
    if parts > MAX_PARTS:
        raise CacheFileError(
            FlameErrorCode.INVALID_ARGUMENT,
            f"{path} is {total} bytes: more than the object cache holds as one file ({MAX_PARTS} chunks of "
            f"{size} bytes); raise FLAME_MAX_MESSAGE_SIZE (chunks are at most {MAX_CHUNK} bytes) or split it",
        )
    client = cache_client()
    ref: ObjectRef | None = None
    try:
        for chunk in _chunks(path, size):
            blob = MAGIC + bytes([KIND_BYTES]) + chunk  # a bytes value, as put_object stores bytes
            if ref is None:
                ref = client.put(str(key), blob) if key.is_prefix else client.update(str(key), blob)
            else:
                ref = client.patch(ref.key, blob)
    except FlameError as exc:
        if ref is not None:
            with contextlib.suppress(FlameError):
                client.delete(ref.key)
        raise CacheFileError(exc.code, f"Failed to upload file to cache server: {exc.message}") from exc
    assert ref is not None
    return ref


def _read_parts(client: CacheClient, key: str) -> Iterator[bytes]:
    """Every part of ``key`` at one version; restarts (a few times) if the object changes meanwhile."""
    for _attempt in range(READ_ATTEMPTS):
        first = _part(client, key, 0)
        parts = [decode_value(first.data)]
        changed = False
        for index in range(1, first.parts):
            reply = _part(client, key, index)
            if reply.version != first.version:
                changed = True
                break
            parts.append(decode_value(reply.data))
        if not changed:
            yield from parts
            return
    raise CacheFileError(
        FlameErrorCode.UNAVAILABLE,
        f"object {key} changed {READ_ATTEMPTS} times while it was being read; try again when uploads stop",
    )


def _part(client: CacheClient, key: str, index: int) -> cache_pb2.GetObjectPartResponse:
    reply: cache_pb2.GetObjectPartResponse = client._call(
        "GetObjectPart", cache_pb2.GetObjectPartRequest(key=key, index=index), f"read object {key}"
    )
    return reply


def download_object(ref: ObjectRef, dest_path: str | os.PathLike[str]) -> None:
    """Write the file ``ref`` names to ``dest_path`` (parent folders created; replaced atomically).

    Nothing is left at ``dest_path`` when the download fails.
    """
    try:
        parse_full_key(ref.key)
    except ValueError as exc:
        raise CacheFileError(FlameErrorCode.INVALID_ARGUMENT, str(exc)) from None
    dest = Path(dest_path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    client = cache_client()
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            if not isinstance(client, CacheClient):
                # Flame's Flight cache has no message limit: the object comes whole.
                base, patches, _version = client.fetch(ref.key, force_full=True)
                for blob in (base, *patches):
                    out.write(_as_bytes(decode_value(blob), ref.key))
            else:
                for part in _read_parts(client, ref.key):
                    out.write(_as_bytes(part, ref.key))
        os.replace(tmp, dest)
    except FlameError as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, CacheFileError):
            raise
        raise CacheFileError(exc.code, f"Failed to download {ref.key} from the cache server: {exc.message}") from exc
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _as_bytes(value: object, key: str) -> bytes:
    if not isinstance(value, bytes):
        raise CacheFileError(
            FlameErrorCode.INVALID_ARGUMENT,
            f"object {key} holds a {type(value).__name__}, not a file stored with upload_object; "
            f"read it with get_object",
        )
    return value
