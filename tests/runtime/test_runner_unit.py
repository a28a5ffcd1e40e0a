"""``flamepy.runner`` without a server: the data types, packaging, storage choice and wrappers.

These are the behaviours Flame's published unit tests pin (including the private names they patch);
the end-to-end behaviour is in ``test_runner.py``.
"""

from __future__ import annotations

import functools
import io
import logging
import tarfile
from pathlib import Path
from typing import Any

import cloudpickle
import pytest
from hypothesis import given
from hypothesis import strategies as st

from flamepy import FlamePackage
from flamepy.runner import ErrorType, RunnerContext, RunnerError, RunnerRequest, SessionContext, get_data, storage
from flamepy.runner import runner as runner_module
from flamepy.runner.runner import ObjectFuture, Runner, RunnerService
from flamepy.runner.runpy import FlameRunpyService
from flamepy_core.contracts.errors import FlameError, FlameErrorCode
from flamepy_core.objref import ObjectRef


def square(x: int) -> int:
    return x * x


class Counter:
    def __init__(self) -> None:
        self.value = 0

    def add(self, n: int) -> int:
        self.value += n
        return self.value

    def close(self) -> str:  # clashes with RunnerService.close: not exposed
        return "mine"

    def _private(self) -> None:
        pass


class CallableThing:
    def __call__(self) -> int:
        return 1


FUNCTIONS = [square, lambda: 1, len, functools.partial(square, 2), CallableThing()]


# -- RunnerContext: the kinds table ----------------------------------------------------------------------


@given(
    kind=st.sampled_from(["function", "class"]),
    autoscale=st.sampled_from([None, True, False]),
    warmup=st.integers(0, 50),
)
def test_functions_and_classes_are_stateless(kind: str, autoscale: bool | None, warmup: int) -> None:
    obj = square if kind == "function" else Counter
    ctx = RunnerContext(obj, autoscale=autoscale, warmup=warmup)
    assert ctx.stateful is False
    scaling = autoscale is not False
    assert ctx.autoscale is scaling
    if scaling:
        assert (ctx.min_instances, ctx.max_instances) == (warmup, None)
    else:
        assert ctx.min_instances == ctx.max_instances == (warmup or 1)
    with pytest.raises(ValueError, match="always stateless"):
        RunnerContext(obj, stateful=True)


@given(warmup=st.integers(-5, 5), autoscale=st.sampled_from([None, True, False]))
def test_objects_are_stateful_and_fixed(warmup: int, autoscale: bool | None) -> None:
    if warmup < 0:
        with pytest.raises(ValueError, match="warmup must be a non-negative integer"):
            RunnerContext(Counter(), autoscale=autoscale, warmup=warmup)
        return
    if autoscale:
        with pytest.raises(ValueError, match="always runs on one fixed instance"):
            RunnerContext(Counter(), autoscale=autoscale, warmup=warmup)
        return
    if warmup > 1:
        with pytest.raises(ValueError, match="only support warmup=0 or warmup=1"):
            RunnerContext(Counter(), autoscale=autoscale, warmup=warmup)
        return
    ctx = RunnerContext(Counter(), autoscale=autoscale, warmup=warmup)
    assert (ctx.stateful, ctx.autoscale, ctx.min_instances, ctx.max_instances) == (True, False, 1, 1)
    with pytest.raises(ValueError, match="always stateful"):
        RunnerContext(Counter(), stateful=False)


def test_callables_of_every_shape_are_functions() -> None:
    for fn in FUNCTIONS:
        assert RunnerContext(fn).stateful is False
    assert "min_instances" not in repr(RunnerContext(square))


def test_session_context_and_request_validation() -> None:
    for bad, message in ((3, "must be a string"), ("", "cannot be empty"), ("x" * 129, "too long")):
        with pytest.raises(ValueError, match=message):
            SessionContext(session_id=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="application_name must be a string"):
        SessionContext(application_name=1)  # type: ignore[arg-type]
    assert SessionContext(session_id=" weird id é", application_name="").session_id == " weird id é"
    for kwargs, message in (
        ({"method": 1}, "method must be a string or None"),
        ({"args": "ab"}, "args must be a tuple or list"),
        ({"kwargs": [1]}, "kwargs must be a dict"),
    ):
        with pytest.raises(ValueError, match=message):
            RunnerRequest(**kwargs)  # type: ignore[arg-type]


# -- packaging ---------------------------------------------------------------------------------------------


def _bare_runner(tmp_path: Path, name: str = "test-run", deps: list[str] | None = None, excludes: Any = None) -> Runner:
    runner = object.__new__(Runner)
    runner._name = name
    runner._dependencies = list(deps or [])
    runner._made_dist = False

    class Ctx:
        package = None if excludes is None else FlamePackage(storage=None, excludes=list(excludes))

    runner._context = Ctx()  # type: ignore[assignment]
    return runner


def _members(archive: Path) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(archive) as tar:
        return {m.name: m for m in tar.getmembers()}


def test_package_excludes_and_generated_pyproject(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project = tmp_path / "proj"
    files = ["app.py", "pkg/mod.py", "pkg/__pycache__/mod.cpython.pyc", "pkg/data.log", ".venv/bin/python"]
    files += ["deep/node_modules/x.js", "keep.txt", "dist/old.tar.gz", "lib.egg-info/PKG-INFO", "a/b/c.pyo"]
    for rel in files:
        (project / rel).parent.mkdir(parents=True, exist_ok=True)
        (project / rel).write_text(rel)
    monkeypatch.chdir(project)
    runner = _bare_runner(tmp_path, deps=["pandas>=2", "numpy"], excludes=["*.log"])
    archive = runner._create_package()
    assert archive == project / "dist" / "test-run.tar.gz"
    names = set(_members(archive))
    assert {"app.py", "pkg/mod.py", "keep.txt", "pyproject.toml"} <= names
    for gone in ("pkg/__pycache__", "pkg/data.log", ".venv", "deep/node_modules", "dist", "lib.egg-info", "a/b/c.pyo"):
        assert not any(n == gone or n.startswith(gone + "/") for n in names), gone
    assert not (project / "pyproject.toml").exists(), "the generated pyproject lives only in the archive"
    info = _members(archive)["pyproject.toml"]
    assert info.mode == 0o644
    with tarfile.open(archive) as tar:
        text = tar.extractfile("pyproject.toml").read().decode()  # type: ignore[union-attr]
    assert 'name = "test-run"' in text and 'dependencies = ["numpy", "pandas>=2"]' in text
    assert "py-modules = []" in text


def test_no_dependencies_and_existing_project_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "a.py").write_text("x = 1\n")
    monkeypatch.chdir(plain)
    with tarfile.open(_bare_runner(tmp_path)._create_package()) as tar:
        assert "dependencies = []" in tar.extractfile("pyproject.toml").read().decode()  # type: ignore[union-attr]
    with_setup = tmp_path / "setup"
    with_setup.mkdir()
    (with_setup / "setup.py").write_text("")
    monkeypatch.chdir(with_setup)
    with caplog.at_level(logging.WARNING, logger="flamepy.runner.runner"):
        archive = _bare_runner(tmp_path, deps=["numpy"])._create_package()
    assert "pyproject.toml" not in _members(archive)
    assert "Skipping pyproject.toml generation" in caplog.text


@pytest.mark.parametrize(
    ("name", "patterns", "excluded"),
    [
        ("__pycache__", ["__pycache__"], True),
        ("pkg/__pycache__", ["__pycache__"], True),
        ("a/b/x.pyc", ["*.pyc"], True),
        ("logs/app.log", ["logs/*"], True),
        ("src/keep.py", ["*.pyc", ".venv"], False),
    ],
)
def test_should_exclude(name: str, patterns: list[str], excluded: bool) -> None:
    assert object.__new__(Runner)._should_exclude(name, patterns) is excluded


def test_flame_package_default_excludes() -> None:
    assert {".venv", "__pycache__", "*.pyc"} <= set(FlamePackage("file:///x").excludes)
    assert FlamePackage("file:///x", excludes=["only"]).excludes == ["only"]


# -- storage -----------------------------------------------------------------------------------------------


def test_storage_factory_and_cache_storage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert isinstance(storage.create_storage_backend(f"file://{tmp_path}"), storage.FileStorage)
    for base in ("grpc://host:9090", "grpcs://host:9443"):
        assert isinstance(storage.create_storage_backend(base, "app"), storage.CacheStorage)
    assert isinstance(storage.create_storage_backend("https://pkgs.example/x"), storage.HttpStorage)
    with pytest.raises(FlameError) as err:
        storage.create_storage_backend("ftp://x/y")
    assert err.value.code == FlameErrorCode.INVALID_CONFIG and "Unsupported storage scheme" in err.value.message
    with pytest.raises(FlameError) as err:
        storage.create_storage_backend(f"file://{tmp_path}/missing")
    assert err.value.code == FlameErrorCode.INVALID_CONFIG
    calls: list[tuple[Any, ...]] = []
    monkeypatch.setattr(storage._cache, "upload_object", lambda key, path: calls.append(("up", key, path)))
    monkeypatch.setattr(storage._cache, "delete_objects", lambda key: calls.append(("del", key)))
    backend = storage.CacheStorage("grpc://host:9090", "myapp")
    url = backend.upload("/tmp/p.tar.gz", "myapp-1.0.0.tar.gz")
    assert url == "grpc://host:9090/myapp/pkg/myapp-1.0.0.tar.gz"
    backend.delete("myapp-1.0.0.tar.gz")
    assert calls == [("up", "myapp/pkg/myapp-1.0.0.tar.gz", "/tmp/p.tar.gz"), ("del", "myapp/pkg/myapp-1.0.0.tar.gz")]
    with pytest.raises(FlameError, match="app_name is required"):
        storage.CacheStorage("grpc://host:9090").upload("/tmp/p.tar.gz", "p.tar.gz")


def test_file_storage_replaces_an_older_package(tmp_path: Path) -> None:
    backend = storage.FileStorage(f"file://{tmp_path}")
    src = tmp_path / "src.tar.gz"
    src.write_bytes(b"one")
    assert backend.upload(src, "app.tar.gz") == f"file://{tmp_path}/app.tar.gz"
    src.write_bytes(b"two")
    backend.upload(src, "app.tar.gz")
    assert (tmp_path / "app.tar.gz").read_bytes() == b"two"  # Flame would keep "one"
    backend.delete("app.tar.gz")
    backend.delete("app.tar.gz")  # never raises


# -- futures, wrappers, the service --------------------------------------------------------------------------


def test_object_future_uses_module_level_names(monkeypatch: pytest.MonkeyPatch) -> None:
    from concurrent.futures import Future

    ref = ObjectRef("grpc://h:9090", "app/ssn/obj", 1)
    done: Future[Any] = Future()
    done.set_result(ref.encode())
    fetched: list[ObjectRef] = []
    monkeypatch.setattr(runner_module, "get_object", lambda r: fetched.append(r) or 42)
    future = ObjectFuture(done)
    assert future.ref() == ref and future.get() == 42 and fetched == [ref]
    passthrough: Future[Any] = Future()
    passthrough.set_result(ref)
    assert ObjectFuture(passthrough).ref() is ref
    failed: Future[Any] = Future()
    failed.set_exception(FlameError(FlameErrorCode.INTERNAL, "boom"))
    bare = object.__new__(Runner)
    with pytest.raises(FlameError, match="boom"):
        bare.get([ObjectFuture(done), ObjectFuture(failed)])
    assert bare.ref([ObjectFuture(done)]) == [ref]
    bare.wait([ObjectFuture(done)])


class FakeSession:
    def __init__(self) -> None:
        self.closed = 0
        self.id = "s"

    def close(self) -> None:
        self.closed += 1


def _bare_service(obj: Any) -> RunnerService:
    service = object.__new__(RunnerService)
    service._app = "app"
    service._execution_object = obj
    service._function_wrapper = None
    service._session = FakeSession()  # type: ignore[assignment]
    service._closed = False
    import threading

    service._lock = threading.Lock()
    service._generate_wrappers()
    return service


def test_wrappers_expose_public_methods_only() -> None:
    instance = _bare_service(Counter())
    assert callable(instance.add) and "_private" not in instance.__dict__
    with pytest.raises(TypeError, match="call its methods"):
        instance()
    with pytest.raises(AttributeError, match="no method 'nope'"):
        instance.nope  # noqa: B018
    instance.close()
    instance.close()
    assert instance._session.closed == 1  # type: ignore[attr-defined]  # the object's own close is not called
    function = _bare_service(square)
    assert function._function_wrapper is not None and "add" not in function.__dict__


def test_runner_service_signature(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(TypeError):
        object.__new__(Runner).service(square, stateful=True)  # type: ignore[call-arg]
    made: list[tuple[Any, ...]] = []
    monkeypatch.setattr(runner_module, "RunnerService", lambda *args: made.append(args) or "svc")
    bare = object.__new__(Runner)
    bare._name, bare._services = "app", []
    assert bare.service(square, True, 2, None) == "svc" and bare._services == ["svc"]
    assert made == [("app", square, True, 2, None)]


def test_wrappers_and_close_on_a_bare_service() -> None:
    """Flame's unit tests build a RunnerService from four attributes only."""
    service = object.__new__(RunnerService)
    service._app, service._execution_object = "app", Counter()
    service._function_wrapper, service._session = None, FakeSession()  # type: ignore[assignment]
    service._generate_wrappers()
    service.close()
    service.close()
    assert service._session.closed == 1  # type: ignore[attr-defined]


def test_runpy_resolves_refs_and_keeps_cached_none(monkeypatch: pytest.MonkeyPatch) -> None:
    from flamepy.runner import runpy

    store = {"a/s/1": None, "a/s/2": 7}
    monkeypatch.setattr(runpy, "get_object", lambda ref: store[ref.key])
    service = FlameRunpyService()
    one, two = ObjectRef("e", "a/s/1", 1), ObjectRef("e", "a/s/2", 1)
    assert service._resolve_object_ref(one) is None
    assert service._resolve_object_ref(two.encode()) == 7
    assert service._resolve_object_ref(b"plain bytes") == b"plain bytes"
    args, kwargs = service._resolve_object_refs_parallel((one, 3, two.encode()), {"k": two, "n": None})
    assert args == (None, 3, 7) and kwargs == {"k": 7, "n": None}
    store.pop("a/s/2")
    with pytest.raises(ValueError, match="Failed to resolve ObjectRef at arg:2"):
        service._resolve_object_refs_parallel((one, 3, two), {})


def test_get_data_decodes_inputs_and_rejects_junk(monkeypatch: pytest.MonkeyPatch) -> None:
    from flamepy.runner import helper

    monkeypatch.setattr(helper, "get_object", lambda ref: {"app/s/r": 9}[ref.key])
    request = RunnerRequest("add", (1, ObjectRef("e", "app/s/r", 1)), {"x": [ObjectRef("e", "app/s/r", 1)]})
    data = get_data(cloudpickle.dumps(request))
    assert data == {
        "type": "input",
        "method": "add",
        "args": (1, 9),
        "kwargs": {"x": [9]},
        "metadata": {"object_ref_key": "app/s/r"},
    }
    assert get_data(cloudpickle.dumps(RunnerRequest()))["method"] is None
    out = get_data(ObjectRef("e", "app/s/r", 1).encode())
    assert out == {"type": "output", "result": 9, "metadata": {"object_ref_key": "app/s/r"}}
    for junk in (b"", b"junk", io.BytesIO(b"x").getvalue()):
        with pytest.raises(RunnerError) as err:
            get_data(junk)
        assert err.value.error_type == ErrorType.DECODE_ERROR and str(err.value).startswith("[decode_error] ")
    with pytest.raises(RunnerError) as missing:
        get_data(ObjectRef("e", "app/s/gone", 1).encode())
    assert missing.value.error_type == ErrorType.CACHE_RETRIEVAL_ERROR and missing.value.key == "app/s/gone"


def test_select_yields_in_completion_order_each_future_once() -> None:
    from concurrent.futures import Future

    from flamepy.runner.runner import ObjectFutureIterator

    raw: list[Future[Any]] = [Future() for _ in range(3)]
    futures = [ObjectFuture(f) for f in raw]
    raw[1].set_exception(FlameError(FlameErrorCode.INTERNAL, "failed first"))  # failed ones are yielded too
    selected = ObjectFutureIterator([*futures, futures[1], futures[0]])
    assert len(selected) == 3
    order = iter(selected)
    assert next(order) is futures[1]
    raw[2].set_result(ObjectRef("e", "a/s/2", 1).encode())
    assert next(order) is futures[2]
    raw[0].set_result(ObjectRef("e", "a/s/0", 1).encode())
    assert next(order) is futures[0]
    with pytest.raises(StopIteration):
        next(order)
    assert {id(f) for f in selected} == {id(f) for f in futures}  # iterable again
    with pytest.raises(TypeError, match="ObjectFutures"):
        ObjectFutureIterator([raw[0]])  # type: ignore[list-item]
