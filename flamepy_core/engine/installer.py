"""Preparing an application before its process starts: the interpreter, and its package when it has one.

The launcher calls :meth:`AppInstaller.prepare` with the instance's environment, as Flame's executors run
their installers at bind time:

* Every instance gets ``FLAME_PYTHON``: the interpreter of the server (so the built-in applications'
  ``${FLAME_PYTHON}`` command runs Python with this SDK importable) unless the application's own
  environments set it; a ``FLAME_PYTHON`` in the server's environment does not count.
* ``installer: python`` picks the interpreter from the application's ``FLAME_PYTHON_VERSION`` (the
  server's own when it matches, else ``python<version>`` on ``PATH``, else the bind fails saying so).
  With a ``url`` the package is fetched (a path, ``file://``, ``http(s)://``, or the object cache: any
  other URL whose last three path segments are the object's key, as ``Runner`` writes them), unpacked
  into ``FLAME_HOME/apps/<app>/<digest>/src`` and its declared dependencies installed with pip into
  ``.../deps``; the instance then runs with ``PYTHONPATH=deps:src[:its own]``. Releases are cached by the
  package's SHA-256 and the interpreter, so the next binding reuses them.
* ``installer: binary`` unpacks the package the same way and puts its folder (and ``bin/``) on ``PATH``.

A failure is a ``FlameError`` whose text starts "application install failed (bind result 10)" — Flame's
``BIND_RESULT_APPLICATION_INSTALL_FAILED`` — and ends with the tail of the installer's output; the
scheduler records it as the session's bind-failure event (1001). The output is kept in
``FLAME_HOME/logs/install/<app>.log``.
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import importlib
import importlib.util
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import urllib.request
import zipfile
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from flamepy_core.apps.python_runtime import FLAME_PYTHON, FLAME_PYTHON_VERSION, normalise_version, select_python
from flamepy_core.contracts.errors import FlameError, FlameErrorCode
from flamepy_core.engine.objects import ObjectCache
from flamepy_core.privacy import open_private, private_subdir
from flamepy_core.wire.envelope import KIND_BYTES, MAGIC
from flamepy_core.wire.proto import types_pb2 as pb

__all__ = [
    "BIND_RESULT_APPLICATION_INSTALL_FAILED",
    "AppInstaller",
    "InstallError",
    "ReadObject",
    "object_cache_reader",
]

log = logging.getLogger(__name__)

BIND_RESULT_APPLICATION_INSTALL_FAILED = 10
"""Flame's bind-result code for the install phase."""
INSTALL_TIMEOUT = 1800.0
DOWNLOAD_TIMEOUT = 300.0
OUTPUT_TAIL_LINES = 20
PROJECT_FILES = ("pyproject.toml", "setup.py", "setup.cfg")

ReadObject = Callable[[str], Iterable[bytes]]
"""Reads a cached file's parts (raw bytes, in order) by key; supplied by the server."""


def object_cache_reader(cache: ObjectCache) -> ReadObject:
    """Reads a file stored with ``upload_object`` straight from the server's own cache, part by part."""

    def read(key: str) -> Iterator[bytes]:
        index, parts, version = 0, 1, None
        while index < parts:
            reply = cache.part(key, index)
            if version is not None and reply.version != version:
                raise FlameError(FlameErrorCode.UNAVAILABLE, f"object {key} changed while it was being read")
            version, parts = reply.version, reply.parts
            data = reply.data
            if not data.startswith(MAGIC + bytes([KIND_BYTES])):
                raise FlameError(
                    FlameErrorCode.INVALID_ARGUMENT, f"object {key} is not a file stored with upload_object"
                )
            yield data[4:]
            index += 1

    return read


class InstallError(FlameError):
    """The install phase of a binding failed; ``bind_result`` is Flame's code for that phase."""

    bind_result = BIND_RESULT_APPLICATION_INSTALL_FAILED

    def __init__(self, app: str, detail: str) -> None:
        super().__init__(
            FlameErrorCode.INVALID_CONFIG,
            f"application install failed (bind result {BIND_RESULT_APPLICATION_INSTALL_FAILED}) for {app}: {detail}",
        )


def _prepend(env: dict[str, str], name: str, *paths: str) -> None:
    parts = [p for p in paths if p]
    if env.get(name):
        parts.append(env[name])
    env[name] = os.pathsep.join(parts)


class AppInstaller:
    """Prepares instances' environments; installs packages once per digest. Thread-safe."""

    def __init__(self, home: Path, read_object: ReadObject | None = None) -> None:
        self.home = Path(home)
        self.read_object = read_object
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()

    def _lock(self, app: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(app, threading.Lock())

    # -- the hook ----------------------------------------------------------------------------------------

    def prepare(self, app: pb.Application, env: dict[str, str]) -> None:
        """Complete ``env`` (the instance's environment, application variables already in) for ``app``."""
        name = app.metadata.name
        installer = app.spec.installer.strip().lower() if app.spec.HasField("installer") else ""
        own_python = any(item.name == FLAME_PYTHON for item in app.spec.environments)
        if not installer:
            if not own_python:  # the server's interpreter, whatever the server's own environment says
                env[FLAME_PYTHON] = sys.executable
            return
        url = app.spec.url.strip() if app.spec.HasField("url") else ""
        if installer == "python":
            self._python(name, url, env)
        elif installer == "binary":
            if not own_python:
                env[FLAME_PYTHON] = sys.executable
            if url:
                release = self._release(name, url, "binary", lambda src, deps, log_path: None)
                _prepend(env, "PATH", str(release / "src" / "bin"), str(release / "src"))
        else:
            raise InstallError(name, f"Unknown installer type: {app.spec.installer!r} (use python or binary)")

    def _python(self, name: str, url: str, env: dict[str, str]) -> None:
        try:
            version = normalise_version(env.get(FLAME_PYTHON_VERSION))
            python = select_python(version, env.get("PATH"))
        except FlameError as exc:
            raise InstallError(name, exc.message) from None
        env[FLAME_PYTHON] = python
        env[FLAME_PYTHON_VERSION] = version or f"{sys.version_info[0]}.{sys.version_info[1]}"
        if url:
            release = self._release(
                name, f"{url}\0python{env[FLAME_PYTHON_VERSION]}", "python", lambda s, d, p: _pip(name, python, s, d, p)
            )
            _prepend(env, "PYTHONPATH", str(release / "deps"), str(release / "src"))
            if (release / "deps" / "bin").is_dir():
                _prepend(env, "PATH", str(release / "deps" / "bin"))
        if python != sys.executable:
            _check_sdk_importable(name, python, env)

    # -- releases --------------------------------------------------------------------------------------

    def _release(self, name: str, key: str, kind: str, install: Callable[[Path, Path, Path], None]) -> Path:
        """The unpacked (and installed) release of the package at the URL in ``key``; built once per digest."""
        url = key.split("\0", 1)[0]
        with self._lock(name):
            apps = private_subdir(self.home / "apps" / name)
            with tempfile.TemporaryDirectory(prefix=".download-", dir=apps) as tmp:
                package = self._download(name, url, Path(tmp))
                digest = hashlib.sha256()
                with open(package, "rb") as fh:
                    for block in iter(lambda: fh.read(1 << 20), b""):
                        digest.update(block)
                digest.update(key.encode())
                release = apps / digest.hexdigest()[:24]
                if (release / ".complete").exists():
                    return release
                staging = Path(tempfile.mkdtemp(prefix=".release-", dir=apps))
                try:
                    src = staging / "src"
                    _unpack(name, package, src)
                    if kind == "python" and not any((src / f).is_file() for f in PROJECT_FILES):
                        raise InstallError(
                            name,
                            f"No Python package found in {url}: its top folder needs one of {', '.join(PROJECT_FILES)}",
                        )
                    (staging / "deps").mkdir()
                    log_dir = private_subdir(self.home / "logs" / "install")
                    install(src, staging / "deps", log_dir / f"{name}.log")
                    (staging / ".complete").write_text(url + "\n")
                    shutil.rmtree(release, ignore_errors=True)
                    os.replace(staging, release)
                except BaseException:
                    shutil.rmtree(staging, ignore_errors=True)
                    raise
                log.info("installed release %s of application %s from %s", release.name, name, url)
                return release

    def _download(self, name: str, url: str, folder: Path) -> Path:
        parsed = urlparse(url)
        filename = Path(unquote(parsed.path)).name or "package.tar.gz"
        target = folder / filename
        try:
            if url.startswith("/") or parsed.scheme == "file":
                shutil.copyfile(unquote(parsed.path) if parsed.scheme == "file" else url, target)
            elif parsed.scheme in ("http", "https"):
                with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT) as reply, open(target, "wb") as out:
                    shutil.copyfileobj(reply, out)
            else:
                segments = [s for s in parsed.path.split("/") if s]
                if len(segments) < 3 or self.read_object is None:
                    raise InstallError(
                        name,
                        f"cannot fetch the package {url}: use a path, file://, http(s):// or an object-cache URL "
                        f"ending in <app>/<session>/<object>",
                    )
                key = "/".join(segments[-3:])
                with open(target, "wb") as out:
                    for part in self.read_object(key):
                        out.write(part)
        except InstallError:
            raise
        except (OSError, FlameError) as exc:
            detail = exc.message if isinstance(exc, FlameError) else str(exc)
            raise InstallError(name, f"failed to download the package {url}: {detail}") from None
        return target


def _unpack(name: str, package: Path, dest: Path) -> None:
    dest.mkdir(parents=True)
    filename = package.name.lower()
    try:
        if filename.endswith((".tar.gz", ".tgz", ".tar")):
            with tarfile.open(package) as archive:
                data_filter = getattr(tarfile, "data_filter", None)
                if data_filter is not None:
                    archive.extractall(dest, filter=data_filter)
                else:  # pragma: no cover - Pythons without extraction filters
                    for member in archive.getmembers():
                        target = (dest / member.name).resolve()
                        if not str(target).startswith(str(dest.resolve())) or member.issym() or member.islnk():
                            raise InstallError(name, f"the package has an unsafe member {member.name!r}")
                    archive.extractall(dest)
        elif filename.endswith(".zip"):
            with zipfile.ZipFile(package) as archive:
                for info in archive.infolist():
                    target = (dest / info.filename).resolve()
                    if not str(target).startswith(str(dest.resolve())):
                        raise InstallError(name, f"the package has an unsafe member {info.filename!r}")
                archive.extractall(dest)
        else:
            raise InstallError(name, f"unsupported archive format: {package.name} (use .tar.gz, .tgz or .zip)")
    except (tarfile.TarError, zipfile.BadZipFile, OSError) as exc:
        raise InstallError(name, f"cannot unpack {package.name}: {exc}") from None


def _tail(text: str, lines: int = OUTPUT_TAIL_LINES) -> str:
    return "\n".join(deque(text.rstrip().splitlines(), maxlen=lines))


def _dependencies_only(src: Path) -> list[str] | None:
    """The dependency list of a project that declares nothing else to install (Runner's generated
    ``pyproject.toml``: ``[tool.setuptools] py-modules = []``), else None (install the project itself)."""
    path = src / "pyproject.toml"
    if not path.is_file():
        return None
    text = path.read_text(errors="replace")
    try:
        tomllib: Any = importlib.import_module("tomllib")
    except ModuleNotFoundError:  # pragma: no cover - Python 3.10: read the generated file's one-line list
        if "py-modules = []" not in text:
            return None
        for line in text.splitlines():
            if line.strip().startswith("dependencies"):
                value = ast.literal_eval(line.split("=", 1)[1].strip())
                return [str(v) for v in value]
        return []
    try:
        data = tomllib.loads(text)
    except ValueError:  # tomllib.TOMLDecodeError
        return None
    setuptools = data.get("tool", {}).get("setuptools", {})
    if setuptools.get("py-modules") != [] or "packages" in setuptools:
        return None
    deps = data.get("project", {}).get("dependencies", [])
    return [str(d) for d in deps] if isinstance(deps, list) else None


def _pip(name: str, python: str, src: Path, deps: Path, log_path: Path) -> None:
    """Install the project's dependencies (or the project) into ``deps`` with the chosen interpreter's pip."""
    requirements = _dependencies_only(src)
    base = [python, "-m", "pip", "install", "--no-input", "--disable-pip-version-check", "--target", str(deps)]
    if requirements is not None:
        if not requirements:
            return  # nothing to install: the code is found on PYTHONPATH (src)
        argv = [*base, *requirements]
    else:
        argv = [*base, str(src)]
        if python == sys.executable and importlib.util.find_spec("setuptools") is not None:
            argv.insert(4, "--no-build-isolation")  # works offline for setuptools projects
    with os.fdopen(open_private(log_path, os.O_WRONLY | os.O_APPEND), "ab") as log_file:
        log_file.write(f"\n$ {' '.join(argv)}\n".encode())
        log_file.flush()
        try:
            done = subprocess.run(
                argv,
                cwd=src,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                timeout=INSTALL_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise InstallError(name, f"pip did not finish within {INSTALL_TIMEOUT:.0f} s") from None
        log_file.write(done.stdout)
    if done.returncode != 0:
        raise InstallError(
            name,
            f"Python installation failed: pip exited with status {done.returncode}; the last lines of its output "
            f"(all of it in {log_path}):\n{_tail(done.stdout.decode('utf-8', 'replace'))}",
        )


def _check_sdk_importable(name: str, python: str, env: dict[str, str]) -> None:
    with contextlib.suppress(subprocess.TimeoutExpired):
        done = subprocess.run(
            [python, "-c", "import flamepy"], env=env, capture_output=True, timeout=60, check=False, text=True
        )
        if done.returncode == 0:
            return
        raise InstallError(
            name,
            f"flamepy cannot be imported by {python}: install flamepy for that interpreter, or ask for Python "
            f"{sys.version_info[0]}.{sys.version_info[1]} (the runtime's own); its error:\n{_tail(done.stderr, 5)}",
        )
