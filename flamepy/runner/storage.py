"""Where ``Runner`` puts the packages it builds: the object cache, a folder, or an HTTP server.

``package.storage`` in ``flame.yaml`` chooses (``create_storage_backend``): unset or ``grpc(s)://`` ->
the object cache (:class:`CacheStorage`, which needs no configuration on the embedded default),
``file://<dir>`` -> :class:`FileStorage`, ``http(s)://<base>`` -> :class:`HttpStorage`. Building a
backend never touches the network; ``upload`` returns the URL the application is registered with, which
the server's installer fetches (see docs/runtime.md, "Packages and installers").
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from abc import ABC, abstractmethod
from pathlib import Path
from urllib.parse import unquote, urlparse

from flamepy.core import cache as _cache
from flamepy.core import types as _types
from flamepy_core.config import resolve_config
from flamepy_core.contracts.errors import FlameError, FlameErrorCode
from flamepy_core.objref import ObjectRef

__all__ = ["CacheStorage", "FileStorage", "HttpStorage", "StorageBackend", "create_storage_backend"]

log = logging.getLogger(__name__)

DEFAULT_CACHE_PORT = 9090


class StorageBackend(ABC):
    """Stores package files by name."""

    @abstractmethod
    def upload(self, local_path: str | os.PathLike[str], filename: str) -> str:
        """Store the file as ``filename``; return the URL the server fetches it from."""

    @abstractmethod
    def delete(self, filename: str) -> None:
        """Remove ``filename``; never raises (a failure is logged)."""

    @abstractmethod
    def download(self, filename: str, local_path: str | os.PathLike[str]) -> None:
        """Copy ``filename`` to ``local_path``."""


class FileStorage(StorageBackend):
    """A folder, named by ``file://<dir>`` (or a plain path), shared with the server's machine.

    Unlike Flame's, an upload replaces a file of the same name (atomically): a Runner that runs again
    with changed code must not get the old package.
    """

    def __init__(self, storage_base: str) -> None:
        parsed = urlparse(storage_base)
        path = unquote(parsed.path) if parsed.scheme == "file" else storage_base
        self.base = Path(path)
        if not self.base.is_dir():
            raise FlameError(
                FlameErrorCode.INVALID_CONFIG,
                f"package storage {storage_base} is not an existing folder; create it or fix package.storage",
            )

    def upload(self, local_path: str | os.PathLike[str], filename: str) -> str:
        target = self.base / filename
        fd, tmp = tempfile.mkstemp(prefix=f".{filename}.", dir=self.base)
        os.close(fd)
        try:
            shutil.copyfile(local_path, tmp)
            os.replace(tmp, target)
        except OSError as exc:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise FlameError(FlameErrorCode.INTERNAL, f"Failed to copy the package to {target}: {exc}") from exc
        return f"file://{target}"

    def delete(self, filename: str) -> None:
        try:
            (self.base / filename).unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("could not delete the package %s: %s", self.base / filename, exc)

    def download(self, filename: str, local_path: str | os.PathLike[str]) -> None:
        try:
            shutil.copyfile(self.base / filename, local_path)
        except OSError as exc:
            where = self.base / filename
            raise FlameError(FlameErrorCode.NOT_FOUND, f"cannot read the package {where}: {exc}") from exc


class HttpStorage(StorageBackend):
    """An HTTP server that accepts ``PUT``/``DELETE``/``GET`` of ``<base>/<filename>``."""

    def __init__(
        self,
        storage_base: str,
        upload_timeout: float = 300,
        delete_timeout: float = 60,
        download_timeout: float = 300,
    ) -> None:
        self.base = storage_base.rstrip("/")
        self.upload_timeout = upload_timeout
        self.delete_timeout = delete_timeout
        self.download_timeout = download_timeout

    def _url(self, filename: str) -> str:
        return f"{self.base}/{filename}"

    def upload(self, local_path: str | os.PathLike[str], filename: str) -> str:
        url = self._url(filename)
        data = Path(local_path).read_bytes()
        request = urllib.request.Request(url, data=data, method="PUT")
        request.add_header("Content-Type", "application/gzip")
        try:
            with urllib.request.urlopen(request, timeout=self.upload_timeout) as reply:
                status = reply.status
        except urllib.error.HTTPError as exc:
            status = exc.code
        except OSError as exc:
            raise FlameError(FlameErrorCode.INTERNAL, f"Failed to upload the package to {url}: {exc}") from exc
        if status not in (200, 201, 204):
            raise FlameError(FlameErrorCode.INTERNAL, f"Failed to upload the package to {url}: HTTP {status}")
        return url

    def delete(self, filename: str) -> None:
        url = self._url(filename)
        try:
            with urllib.request.urlopen(urllib.request.Request(url, method="DELETE"), timeout=self.delete_timeout):
                pass
        except urllib.error.HTTPError as exc:
            if exc.code != 404:
                log.warning("could not delete the package %s: HTTP %s", url, exc.code)
        except OSError as exc:
            log.warning("could not delete the package %s: %s", url, exc)

    def download(self, filename: str, local_path: str | os.PathLike[str]) -> None:
        url = self._url(filename)
        try:
            with urllib.request.urlopen(url, timeout=self.download_timeout) as reply, open(local_path, "wb") as out:
                shutil.copyfileobj(reply, out)
        except (urllib.error.HTTPError, OSError) as exc:
            raise FlameError(FlameErrorCode.INTERNAL, f"Failed to download the package {url}: {exc}") from exc


class CacheStorage(StorageBackend):
    """The object cache: packages are stored as ``<app>/pkg/<filename>`` with ``upload_object``.

    ``storage_base`` (``grpc(s)://host:port``) only names the cache in the URL; the file goes to the
    configured cache (on the embedded default, the local server's, with no configuration). The URL is
    ``<base>/<app>/pkg/<filename>``; the server reads the object by the key its path ends with.
    """

    def __init__(self, storage_base: str | None = None, app_name: str | None = None) -> None:
        self.storage_base = storage_base.rstrip("/") if storage_base else None
        self.app_name = app_name

    def _key(self, filename: str) -> str:
        if not self.app_name:
            raise FlameError(FlameErrorCode.INVALID_ARGUMENT, "app_name is required to store packages in the cache")
        return f"{self.app_name}/pkg/{filename}"

    def _base(self, ref: ObjectRef | None = None) -> str:
        if self.storage_base:
            parsed = urlparse(self.storage_base)
            host = parsed.hostname or "localhost"
            port = parsed.port or DEFAULT_CACHE_PORT
            return f"{parsed.scheme}://{host}:{port}"
        configured = resolve_config().cache_endpoint
        if configured:
            return configured.rstrip("/")
        return (ref.endpoint if ref is not None else _types.FlameContext().cache_endpoint).rstrip("/")

    def upload(self, local_path: str | os.PathLike[str], filename: str) -> str:
        key = self._key(filename)
        ref = _cache.upload_object(key, local_path)
        return f"{self._base(ref)}/{key}"

    def delete(self, filename: str) -> None:
        try:
            _cache.delete_objects(self._key(filename))
        except Exception as exc:  # never raises, as the contract says
            log.warning("could not delete the cached package %s: %s", filename, exc)

    def download(self, filename: str, local_path: str | os.PathLike[str]) -> None:
        key = self._key(filename)
        _cache.download_object(ObjectRef(self._base(), key, 0), local_path)


def create_storage_backend(storage_base: str | None = None, app_name: str | None = None) -> StorageBackend:
    """The backend for ``storage_base``; None reads ``package.storage`` from ``FlameContext()`` now."""
    if storage_base is None:
        package = _types.FlameContext().package
        storage_base = package.storage if package is not None else None
    if storage_base is None:
        return CacheStorage(None, app_name)
    scheme = urlparse(storage_base).scheme.lower()
    if scheme in ("grpc", "grpcs"):
        return CacheStorage(storage_base, app_name)
    if scheme == "file":
        return FileStorage(storage_base)
    if scheme in ("http", "https"):
        return HttpStorage(storage_base)
    raise FlameError(
        FlameErrorCode.INVALID_CONFIG,
        f"Unsupported storage scheme: {storage_base!r}; package.storage takes file://, http(s):// or grpc(s)://",
    )
