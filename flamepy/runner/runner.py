"""``Runner``: package the current project, register it as an application, and call Python objects in it.

``Runner(name)`` packages the working directory (``dist/<name>.tar.gz``), stores the package
(:mod:`flamepy.runner.storage`), and registers ``<name>`` as a copy of the template application
(``runner.template``, default ``flmrun``) with the package's URL. ``runner.service(obj)`` opens a session
whose instances run ``obj`` (:mod:`flamepy.runner.runpy`); each call on the returned
:class:`RunnerService` is one task and returns an :class:`ObjectFuture` of the result, which the service
stored in the object cache. ``close()`` (or leaving the ``with`` block) undoes everything the Runner
made. If the application already exists, the Runner only uses it: no package, no registration, and its
``close()`` removes nothing.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import fnmatch
import io
import logging
import os
import re
import tarfile
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from pathlib import Path
from types import TracebackType
from typing import Any

import cloudpickle

from flamepy.core import types as _types
from flamepy.runner.storage import StorageBackend, create_storage_backend
from flamepy.runner.types import RunnerContext, RunnerRequest, SessionContext, object_kind
from flamepy_core.client.api import (
    close_session,
    get_application,
    list_sessions,
    open_session,
    register_application,
    unregister_application,
)
from flamepy_core.client.objects import delete_objects, get_object, put_object
from flamepy_core.client.session import Session
from flamepy_core.contracts.errors import FlameError, FlameErrorCode
from flamepy_core.model import ApplicationAttributes, ResourceRequirement, SessionAttributes, SessionState, short_name
from flamepy_core.objref import ObjectRef
from flamepy_core.progress import waiting

__all__ = ["ObjectFuture", "ObjectFutureIterator", "ObjectRef", "Runner", "RunnerService", "get_object"]

log = logging.getLogger(__name__)

DEFAULT_EXCLUDES = (
    ".venv",
    "venv",
    "__pycache__",
    ".pytest_cache",
    ".ruff_cache",
    ".mypy_cache",
    "*.egg-info",
    ".git",
    ".tox",
    "node_modules",
    "*.pyc",
    "*.pyo",
    ".DS_Store",
)
PROJECT_FILES = ("pyproject.toml", "setup.py", "setup.cfg")
PYTHON_VERSION_ENV = "FLAME_PYTHON_VERSION"
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,252}$")


def _check_app_name(name: Any) -> str:
    """Flame's application-name rule, checked before anything is built."""
    if not isinstance(name, str) or not _NAME.match(name) or ".." in name:
        raise FlameError(
            FlameErrorCode.INVALID_ARGUMENT,
            f"invalid Runner name {name!r}: 1 to 253 characters of letters, digits, '.', '_' and '-', "
            f"not starting with '.' or '-', without '..'",
        )
    return name


# -- futures ------------------------------------------------------------------------------------------


class ObjectFuture:
    """The result of one Runner call: a task whose output is an ``ObjectRef`` to the result.

    ``ref()`` waits and returns the ref, ``get()`` fetches the value, ``wait()`` only waits; each
    re-raises the task's failure (a ``FlameError`` whose message carries the remote exception).
    """

    def __init__(self, future: Future[Any]) -> None:
        self._future = future
        self._ref: ObjectRef | None = None

    @property
    def future(self) -> Future[Any]:
        """The underlying task future (``concurrent.futures.Future``)."""
        return self._future

    def ref(self) -> ObjectRef:
        if self._ref is None:
            output = self._future.result()
            if isinstance(output, ObjectRef):
                self._ref = output
            elif isinstance(output, (bytes, bytearray, memoryview)):
                self._ref = ObjectRef.decode(bytes(output))
            else:
                raise FlameError(
                    FlameErrorCode.INTERNAL,
                    f"the Runner task answered {type(output).__name__}, not an ObjectRef of its result; "
                    f"is the application's service flamepy.runner.runpy?",
                )
        return self._ref

    def get(self) -> Any:
        return get_object(self.ref())

    def wait(self) -> None:
        self._future.result()

    def done(self) -> bool:
        return self._future.done()

    def __repr__(self) -> str:
        return f"ObjectFuture({'done' if self._future.done() else 'pending'})"


class ObjectFutureIterator:
    """Iterates futures in the order they complete (failed ones too); each future once; re-iterable."""

    def __init__(self, futures: Iterable[ObjectFuture]) -> None:
        unique: dict[int, ObjectFuture] = {}
        for future in futures:
            if not isinstance(future, ObjectFuture):
                raise TypeError(f"select() takes ObjectFutures, got {type(future).__name__}")
            unique.setdefault(id(future), future)
        self._futures = list(unique.values())

    def __iter__(self) -> Iterator[ObjectFuture]:
        by_task = {id(f.future): f for f in self._futures}
        for done in concurrent.futures.as_completed([f.future for f in self._futures]):
            yield by_task[id(done)]

    def __len__(self) -> int:
        return len(self._futures)


def _to_ref(value: Any) -> Any:
    return value.ref() if isinstance(value, ObjectFuture) else value


# -- services -----------------------------------------------------------------------------------------


class RunnerService:
    """A Runner session running one object: call it (a function) or its methods (a class or an object).

    Construction checks the arguments (``ValueError``/``TypeError``) before any call, then opens the
    session: get-or-create, so a service built from inside its own tasks (recursion) joins the session
    when its ``_session_context.session_id`` names it.
    """

    def __init__(
        self,
        app: str,
        execution_object: Any,
        autoscale: bool | None = None,
        warmup: int = 0,
        resreq: ResourceRequirement | None = None,
    ) -> None:
        context = RunnerContext(execution_object, autoscale=autoscale, warmup=warmup)
        self._app = app
        self._execution_object = execution_object
        self._context = context
        self._closed = False
        self._lock = threading.Lock()
        session_id = _session_id(app, execution_object)
        ref = put_object(f"{app}/{session_id}", cloudpickle.dumps(context, protocol=cloudpickle.DEFAULT_PROTOCOL))
        spec = SessionAttributes(
            application=app,
            id=session_id,
            common_data=ref.encode(),
            min_instances=context.min_instances,
            max_instances=context.max_instances,
            batch_size=1,
            resreq=resreq,
        )
        self._session: Session = open_session(session_id, spec)
        self._function_wrapper: Callable[..., ObjectFuture] | None = None
        self._generate_wrappers()

    @property
    def session_id(self) -> str:
        return self._session.id

    def _submit(self, method: str | None, args: tuple[Any, ...], kwargs: dict[str, Any]) -> ObjectFuture:
        if self._closed:
            raise FlameError(
                FlameErrorCode.INVALID_STATE, f"the Runner service of session {self._session.id} is closed"
            )
        request = RunnerRequest(
            method=method,
            args=tuple(_to_ref(a) for a in args) or None,
            kwargs={k: _to_ref(v) for k, v in kwargs.items()} or None,
        )
        data = cloudpickle.dumps(request, protocol=cloudpickle.DEFAULT_PROTOCOL)
        return ObjectFuture(self._session.run(data))

    def _generate_wrappers(self) -> None:
        """A callable for a function; one attribute per public method for a class or an object."""
        if object_kind(self._execution_object) == "function":

            def call(*args: Any, **kwargs: Any) -> ObjectFuture:
                return self._submit(None, args, kwargs)

            self._function_wrapper = call
            return
        own = set(dir(RunnerService))
        for name in dir(self._execution_object):
            if name.startswith("_"):
                continue
            try:
                member = getattr(self._execution_object, name)
            except AttributeError:
                continue
            if not callable(member):
                continue
            if name in own or name in self.__dict__:
                log.warning(
                    "method %s of %r is not exposed: RunnerService has its own %s",
                    name,
                    type(self._execution_object).__name__,
                    name,
                )
                continue
            setattr(self, name, self._method_wrapper(name))

    def _method_wrapper(self, name: str) -> Callable[..., ObjectFuture]:
        def call(*args: Any, **kwargs: Any) -> ObjectFuture:
            return self._submit(name, args, kwargs)

        call.__name__ = name
        return call

    def __getattr__(self, name: str) -> Callable[..., ObjectFuture]:
        # Only reached for names that are not attributes: the method wrappers are set on the instance.
        if name.startswith("_"):
            raise AttributeError(name)
        target = type(self.__dict__.get("_execution_object")).__name__
        raise AttributeError(f"the Runner service of {target} has no method {name!r} (public callables only)")

    def __call__(self, *args: Any, **kwargs: Any) -> ObjectFuture:
        if self._function_wrapper is None:
            raise TypeError(
                f"this Runner service runs a {object_kind(self._execution_object)}: call its methods "
                f"(e.g. service.method(...)), not the service itself"
            )
        return self._function_wrapper(*args, **kwargs)

    def close(self) -> None:
        """Close the service's session (once)."""
        with self.__dict__.get("_lock") or contextlib.nullcontext():
            if self.__dict__.get("_closed"):
                return
            self._closed = True
        self._session.close()

    def __repr__(self) -> str:
        return f"RunnerService(app={self._app!r}, session={self._session.id!r})"


def _session_id(app: str, obj: Any) -> str:
    """The object's ``_session_context.session_id`` when it is a ``SessionContext`` with one, else a new id."""
    context = getattr(obj, "_session_context", None)
    if context is not None:
        if isinstance(context, SessionContext) and context.session_id:
            if context.application_name and context.application_name != app:
                log.info("_session_context names application %s; the service runs in %s", context.application_name, app)
            return context.session_id
        log.warning("_session_context of %r is not a runner.SessionContext with a session_id: ignored", obj)
    return short_name(app)


# -- the Runner ----------------------------------------------------------------------------------------


class Runner:
    """Package this project, register it as application ``name``, and serve Python objects from it."""

    def __init__(
        self,
        name: str,
        fail_if_exists: bool = False,
        dependencies: list[str] | None = None,
        python_version: str | None = None,
    ) -> None:
        self._name = _check_app_name(name)
        if dependencies is not None and (
            not isinstance(dependencies, (list, tuple)) or not all(isinstance(d, str) for d in dependencies)
        ):
            raise TypeError("dependencies must be a list of requirement strings, e.g. ['numpy>=1.26']")
        self._dependencies = list(dependencies or [])
        self._python_version = python_version
        self._context = _types.FlameContext()
        self._services: list[RunnerService] = []
        self._owner = False
        self._closed = False
        self._storage: StorageBackend | None = None
        self._package_path: Path | None = None
        self._made_dist = False
        self._lock = threading.Lock()
        if get_application(name) is not None:
            if fail_if_exists:
                raise FlameError(FlameErrorCode.ALREADY_EXISTS, f"application {name} already exists")
            log.info("application %s exists: this Runner uses it and will not remove it", name)
            return
        self._start()

    @property
    def name(self) -> str:
        return self._name

    def _filename(self) -> str:
        return f"{self._name}.tar.gz"

    def _start(self) -> None:
        package = self._context.package
        self._storage = create_storage_backend(package.storage if package else None, app_name=self._name)
        url: str | None = None
        try:
            # Both can take a while for a big project: on a terminal, each says so after half a second.
            archive = f"dist/{self._filename()}"
            with waiting(lambda t: f"flamepy: packaging {Path.cwd()} into {archive} ({t:.0f} s)", delay=0.5):
                self._package_path = self._create_package()
            size = self._package_path.stat().st_size / (1 << 20)
            with waiting(lambda t: f"flamepy: uploading {archive} ({size:.1f} MiB, {t:.0f} s)", delay=0.5):
                url = self._storage.upload(self._package_path, self._filename())
            template_name = self._context.runner.template or "flmrun"
            template = get_application(template_name)
            if template is None:
                raise FlameError(
                    FlameErrorCode.INTERNAL,
                    f"Failed to register application: the template application {template_name} does not exist "
                    f"(runner.template in flame.yaml names it; the built-in one is flmrun)",
                )
            register_application(self._name, self._attributes(template, url))
        except BaseException:
            # Leave nothing behind: the uploaded package and the local archive (Flame keeps some).
            if url is not None:
                self._storage.delete(self._filename())
            self._remove_archive()
            raise
        self._owner = True

    def _attributes(self, template: Any, url: str) -> ApplicationAttributes:
        environments = dict(template.environments or {})
        if self._python_version is not None:
            environments[PYTHON_VERSION_ENV] = self._python_version
        working_directory = f"{template.working_directory}/{self._name}" if template.working_directory else None
        return ApplicationAttributes(
            image=template.image,
            description=f"Runner application: {self._name}",
            labels=list(template.labels or []),
            command=template.command,
            arguments=list(template.arguments or []),
            environments=environments,
            working_directory=working_directory,
            max_instances=template.max_instances,
            delay_release=template.delay_release,
            schema=template.schema,
            url=url,
            installer=template.installer,
        )

    # -- packaging ---------------------------------------------------------------------------------------

    def _should_exclude(self, name: str, patterns: Iterable[str]) -> bool:
        """True when a pattern matches the cwd-relative path ``name`` or its last part (``*`` crosses ``/``)."""
        base = os.path.basename(name.rstrip("/"))
        return any(fnmatch.fnmatch(name, p) or fnmatch.fnmatch(base, p) for p in patterns)

    def _patterns(self) -> list[str]:
        patterns = list(DEFAULT_EXCLUDES)
        package = self._context.package
        if package is not None:
            patterns += [p for p in package.excludes if p not in patterns]
        return patterns

    def _create_package(self) -> Path:
        """``dist/<name>.tar.gz`` of the working directory, with a generated ``pyproject.toml`` if it has none."""
        cwd = Path.cwd()
        dist = cwd / "dist"
        archive = dist / self._filename()
        patterns = self._patterns()
        try:
            if not dist.exists():
                dist.mkdir()
                self._made_dist = True
            with tarfile.open(archive, "w:gz") as tar:
                for entry in sorted(os.listdir(cwd)):
                    if entry == "dist" or self._should_exclude(entry, patterns):
                        continue
                    tar.add(cwd / entry, arcname=entry, filter=self._tar_filter(patterns))
                pyproject = self._pyproject(cwd)
                if pyproject is not None:
                    info = tarfile.TarInfo("pyproject.toml")
                    info.size = len(pyproject)
                    info.mode = 0o644
                    tar.addfile(info, io.BytesIO(pyproject))
        except (OSError, tarfile.TarError) as exc:
            raise FlameError(FlameErrorCode.INTERNAL, f"Failed to create package: {exc}") from exc
        return archive

    def _tar_filter(self, patterns: list[str]) -> Callable[[tarfile.TarInfo], tarfile.TarInfo | None]:
        def keep(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
            return None if self._should_exclude(info.name, patterns) else info

        return keep

    def _pyproject(self, cwd: Path) -> bytes | None:
        present = [f for f in PROJECT_FILES if (cwd / f).is_file()]
        if present:
            if self._dependencies:
                log.warning(
                    "%s found in %s: Skipping pyproject.toml generation; declare the dependencies %s there",
                    " and ".join(present),
                    cwd,
                    self._dependencies,
                )
            return None
        deps = ", ".join(f'"{d}"' for d in sorted(self._dependencies))
        text = (
            "[build-system]\n"
            'requires = ["setuptools>=61.0", "wheel"]\n'
            'build-backend = "setuptools.build_meta"\n'
            "\n"
            "[project]\n"
            f'name = "{self._name}"\n'
            'version = "0.1.0"\n'
            'requires-python = ">=3.9"\n'
            f"dependencies = [{deps}]\n"
            "\n"
            "[tool.setuptools]\n"
            "py-modules = []\n"
        )
        return text.encode()

    def _remove_archive(self) -> None:
        if self._package_path is not None:
            try:
                self._package_path.unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("could not remove %s: %s", self._package_path, exc)
            if getattr(self, "_made_dist", False):
                with contextlib.suppress(OSError):
                    self._package_path.parent.rmdir()  # only if we made it and it is empty

    # -- services and results ----------------------------------------------------------------------------

    def service(
        self,
        execution_object: Any,
        autoscale: bool | None = None,
        warmup: int = 0,
        resreq: ResourceRequirement | None = None,
    ) -> RunnerService:
        """A service running ``execution_object`` (a function, a class or an object) in its own session."""
        if getattr(self, "_closed", False):
            raise FlameError(FlameErrorCode.INVALID_STATE, f"Runner {self._name} is closed")
        service = RunnerService(self._name, execution_object, autoscale, warmup, resreq)
        self._services.append(service)
        return service

    def get(self, futures: Iterable[ObjectFuture]) -> list[Any]:
        """The results, in the order given; the first failure raises."""
        return [f.get() for f in futures]

    def ref(self, futures: Iterable[ObjectFuture]) -> list[ObjectRef]:
        return [f.ref() for f in futures]

    def wait(self, futures: Iterable[ObjectFuture]) -> None:
        for future in futures:
            future.wait()

    def select(self, futures: Iterable[ObjectFuture]) -> ObjectFutureIterator:
        """The futures in the order they complete."""
        return ObjectFutureIterator(futures)

    def put_object(self, obj: Any) -> ObjectRef:
        """Store ``obj`` for this Runner's services (under ``<name>/shared``); pass the ref in calls."""
        return put_object(f"{self._name}/shared", obj)

    def close(self) -> None:
        """Close the services, unregister the application, delete its objects and package. Idempotent.

        A Runner that found the application already there only marks itself closed. Each step's error is
        logged and the next step still runs.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if not self._owner:
            return
        for service in self._services:
            _quietly(f"close the session of {service!r}", service.close)
        _quietly(f"unregister application {self._name}", lambda: _unregister(self._name))
        _quietly(f"delete the objects of {self._name}", lambda: delete_objects(f"{self._name}/*"))
        if self._storage is not None:
            _quietly(f"delete the package of {self._name}", lambda: self._storage.delete(self._filename()))  # type: ignore[union-attr]
        self._remove_archive()

    def __enter__(self) -> Runner:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        role = "owner" if self._owner else "user"
        return f"Runner({self._name!r}, {role}, {'closed' if self._closed else 'open'})"


def _unregister(name: str) -> None:
    """Unregister ``name``, closing first the sessions other handles left open (users' services, which
    Flame leaves open so that its owner cannot unregister the application)."""
    try:
        unregister_application(name)
        return
    except FlameError as exc:
        if exc.code != FlameErrorCode.INVALID_STATE:
            raise
    for session in list_sessions():
        if session.application == name and session.state == SessionState.OPEN:
            close_session(session.id)
    unregister_application(name)


def _quietly(what: str, step: Callable[[], Any]) -> None:
    try:
        step()
    except Exception as exc:
        log.warning("Runner.close: could not %s: %s", what, exc)
