"""Flame's object-cache protocol (Arrow Flight): our client, our server, our runtime, and Flame's own SDK.

* our Flight client against our Flight server: put/get/update/patch/delete, Flame's version rules, the
  three ``do_get`` answers (full, patch rows only, not modified) counted on the server, key rules, errors;
* the runtime with ``--flight-listen``: ``FlameInstance.context()/update_context()`` and
  ``Session.context()`` over Flight, with instances on our own cache (shared store) or on Flight;
* the published ``flamepy==0.6.0`` (in a venv of its own): its ``put_object``/``get_object``/
  ``update_object``/``patch_object`` against our server, and our client reading what it wrote and back.

Needs pyarrow (the ``flight`` extra, part of ``dev``): skipped with a reason without it, except in CI.
"""

from __future__ import annotations

import contextlib
import fcntl
import inspect
import json
import os
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

if os.environ.get("CI"):
    import pyarrow.flight  # noqa: F401 - in CI the dev extra installs pyarrow: its absence is a failure
pa = pytest.importorskip("pyarrow", reason="pyarrow is not installed: pip install 'flamepy[flight]' to test Flight")
flight = pytest.importorskip("pyarrow.flight", reason="this pyarrow has no Flight support")

import flamepy  # noqa: E402
from flamepy.cache import ObjectRef, delete_objects, get_object, patch_object, put_object, update_object  # noqa: E402
from flamepy.service import Session  # noqa: E402
from flamepy_core import bson  # noqa: E402
from flamepy_core.client.flight import FlightCacheClient  # noqa: E402
from flamepy_core.client.objects import CacheClient, cache_client, decode_value, encode_value  # noqa: E402
from flamepy_core.contracts.errors import FlameError, FlameErrorCode  # noqa: E402
from flamepy_core.engine.flight import FlightCacheServer  # noqa: E402
from flamepy_core.home import read_server_info  # noqa: E402
from flamepy_core.plugins import get_registry  # noqa: E402
from flamepy_core.wire.flight.payload import TAG_ARROW_TABLE, TAG_CLOUDPICKLE  # noqa: E402
from flamepy_core.wire.flight.protocol import ERROR_CODES, flame_code  # noqa: E402

CLOUDPICKLE = get_registry().serializer("cloudpickle")
PUT_SCHEMA = pa.schema([pa.field("version", pa.uint64()), pa.field("data", pa.binary())])


def blob(value: Any) -> bytes:
    return encode_value(value, CLOUDPICKLE)


@pytest.fixture
def server() -> Iterator[FlightCacheServer]:
    srv = FlightCacheServer.standalone()
    try:
        yield srv
    finally:
        srv.stop()


def flight_url(srv: FlightCacheServer) -> str:
    return "flight://" + srv.endpoint.split("://", 1)[1]


@pytest.fixture
def client(server: FlightCacheServer) -> Iterator[FlightCacheClient]:
    c = FlightCacheClient(flight_url(server))
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def raw(server: FlightCacheServer) -> Iterator[Any]:
    """A bare pyarrow client, to see exactly what the server sends."""
    c = flight.FlightClient(server.endpoint)
    try:
        yield c
    finally:
        c.close()


def raw_get(raw_client: Any, ticket: str) -> Any:
    return raw_client.do_get(flight.Ticket(ticket.encode())).read_all()


def raw_put(raw_client: Any, descriptor: Any, table: Any) -> bytes:
    writer, reader = raw_client.do_put(descriptor, table.schema)
    writer.write_table(table)
    writer.done_writing()
    metadata = reader.read()
    writer.close()
    return bytes(metadata.to_pybytes())


def opaque_rows(*chunks: bytes) -> Any:
    return pa.table([pa.array([0] * len(chunks), pa.uint64()), pa.array(list(chunks), pa.binary())], schema=PUT_SCHEMA)


# -- our client against our server ------------------------------------------------------------------


def test_put_get_update_patch_delete_follow_flames_version_rules(client, server):
    ref = client.put("app/ssn", blob({"a": 1}))
    assert ref.endpoint == server.endpoint  # refs name the server's public grpc:// address
    assert ref.key.startswith("app/ssn/") and len(ref.key.split("/")[2]) == 36 and ref.version == 1
    base, patches, version = client.fetch(ref.key)
    assert (decode_value(base), patches, version) == ({"a": 1}, [], 1)

    p1 = client.patch(ref.key, blob([1]))
    p2 = client.patch(ref.key, blob([2]))
    assert (p1.version, p2.version) == (2, 3)
    base, patches, version = client.fetch(ref.key)
    assert decode_value(base) == {"a": 1} and [decode_value(p) for p in patches] == [[1], [2]] and version == 3

    updated = client.update(ref.key, blob("new base"))
    assert updated.key == ref.key and updated.version == 4  # current + 1; the patches are gone
    base, patches, version = client.fetch(ref.key)
    assert (decode_value(base), patches, version) == ("new base", [], 4)

    created = client.update("app/ssn/chosen-id", blob(0))  # updating a key that does not exist creates it
    assert created.version == 1

    client.delete(ref.key)
    with pytest.raises(FlameError) as info:
        client.fetch(ref.key)
    assert info.value.code == FlameErrorCode.NOT_FOUND and ref.key in info.value.message
    assert decode_value(client.fetch("app/ssn/chosen-id")[0]) == 0


def test_not_modified_and_patch_only_replies_are_what_the_server_sends(client, server, raw):
    ref = client.put("app/ssn", blob("base"))
    client.fetch(ref.key)
    assert client.last_reply.kind == "full" and client.last_reply.rows == 1
    assert server.stats.snapshot() == {"full": 1, "patches": 0, "not_modified": 0, "native": 0, "rows": 1}

    client.fetch(ref.key)  # current: the server sends the schema and no row
    assert client.last_reply.kind == "not_modified"
    assert server.stats.not_modified == 1 and server.stats.rows == 1

    client.patch(ref.key, blob("d1"))
    client.patch(ref.key, blob("d2"))
    base, patches, version = client.fetch(ref.key)  # behind by two patches: two patch rows, no base
    assert client.last_reply.kind == "patches" and client.last_reply.rows == 2
    assert server.stats.patches == 1 and server.stats.rows == 3
    assert decode_value(base) == "base" and [decode_value(p) for p in patches] == ["d1", "d2"] and version == 3

    # The same answers on the wire, as Flame's SDK sees them.
    table = raw_get(raw, f"{ref.key}:3")
    assert table.num_rows == 0 and table.schema.names == ["version", "kind", "data"]
    table = raw_get(raw, f"{ref.key}:2")
    assert table.column("kind").to_pylist() == ["patch"] and table.column("version").to_pylist() == [3]
    table = raw_get(raw, f"{ref.key}:0")
    assert table.column("kind").to_pylist() == ["base", "patch", "patch"]
    assert table.column("version").to_pylist() == [1, 2, 3]
    assert table.column("data").to_pylist()[0].startswith(TAG_CLOUDPICKLE)
    assert raw_get(raw, ref.key).num_rows == 3  # no version in the ticket: full
    client.update(ref.key, blob("again"))
    assert raw_get(raw, f"{ref.key}:2").column("kind").to_pylist() == ["base"]  # before the base: full


def test_a_forced_full_fetch_ignores_the_local_copy(client, server):
    ref = client.put("app/ssn", blob(1))
    client.fetch(ref.key)
    client.fetch(ref.key, force_full=True)
    assert client.last_reply.kind == "full" and server.stats.full == 2


def test_key_rules_are_checked_on_both_sides(client, raw):
    for bad in ("app", "app/ssn/id", "app/*", "a/b/c/d", "../x/y", "app/s..s"):
        with pytest.raises(ValueError):
            client.put(bad, blob(1))
    for bad in ("app/ssn", "app/*/id", "app/ssn/*", "app/ssn/a\\b"):
        with pytest.raises(ValueError):
            client.fetch(bad)
        with pytest.raises(ValueError):
            client.update(bad, blob(1))
    with pytest.raises(ValueError):
        client.delete("*/ssn")
    # A client that does not check (Flame's SDK checks too; anything could send these) gets INVALID_ARGUMENT.
    with pytest.raises(pa.ArrowInvalid, match=r"invalid object key"):
        raw_put(raw, flight.FlightDescriptor.for_path("app/*"), opaque_rows(b"x"))
    with pytest.raises(pa.ArrowInvalid, match=r"invalid object key"):
        raw_get(raw, "app/ssn:0")
    with pytest.raises(pa.ArrowInvalid):
        list(raw.do_action(flight.Action("DELETE", b"app")))
    with pytest.raises(pa.ArrowInvalid, match=r"PATCH:<key>"):
        raw_put(raw, flight.FlightDescriptor.for_command(b"MERGE:app/ssn/x"), opaque_rows(b"x"))


def test_missing_objects_and_the_patch_cap_keep_their_codes(client, raw, monkeypatch):
    with pytest.raises(FlameError) as info:
        client.patch("app/ssn/missing", blob(1))
    assert info.value.code == FlameErrorCode.NOT_FOUND
    assert info.value.message.startswith("failed to patch object app/ssn/missing: object app/ssn/missing not found")
    assert "Traceback" not in info.value.message
    with pytest.raises(pa.ArrowKeyError):  # what Flame's SDK sees for NOT_FOUND
        raw_get(raw, "app/ssn/missing:0")

    monkeypatch.setattr("flamepy_core.engine.objects.MAX_PATCHES", 2)
    ref = client.put("app/ssn", blob(0))
    client.patch(ref.key, blob(1))
    client.patch(ref.key, blob(2))
    with pytest.raises(FlameError) as info:
        client.patch(ref.key, blob(3))
    assert info.value.code == FlameErrorCode.RESOURCE_EXHAUSTED and "update it with a new base" in info.value.message


def test_put_result_is_bson_with_an_int64_version(raw, server):
    metadata = raw_put(raw, flight.FlightDescriptor.for_path("app/ssn"), opaque_rows(TAG_CLOUDPICKLE + b"\x80\x05N."))
    doc = bson.decode(metadata)
    assert list(doc) == ["endpoint", "key", "version"] and doc["endpoint"] == server.endpoint and doc["version"] == 1
    assert b"\x12version\x00" in metadata  # int64, as Flame's server writes it
    assert ObjectRef.decode(metadata).key == doc["key"]


def test_delete_by_key_session_and_app(client, raw):
    a1 = client.put("app/s1", blob(1))
    a2 = client.put("app/s1", blob(2))
    b1 = client.put("app/s2", blob(3))
    other = client.put("other/s1", blob(4))
    assert [r.body.to_pybytes() for r in raw.do_action(flight.Action("DELETE", a1.key.encode()))] == [b"OK"]
    assert client.delete("app/s1") == -1  # Flame's server answers "OK", not a count
    for ref in (a1, a2):
        with pytest.raises(FlameError, match="not found"):
            client.fetch(ref.key)
    client.fetch(b1.key)
    client.delete("app/*")
    with pytest.raises(FlameError, match="not found"):
        client.fetch(b1.key)
    assert decode_value(client.fetch(other.key)[0]) == 4


def test_flight_info_list_flights_and_actions(client, raw, server):
    ref = client.put("app/ssn", blob("x" * 100))
    info = raw.get_flight_info(flight.FlightDescriptor.for_path(ref.key))
    assert [loc.uri.decode() for loc in info.endpoints[0].locations] == [server.endpoint]
    assert info.endpoints[0].ticket.ticket == ref.key.encode() and info.total_bytes > 100
    # Flame's SDK asks this for an object it wrote to local storage: the answer is where to read it.
    unknown = raw.get_flight_info(flight.FlightDescriptor.for_path("app/ssn/not-yet"))
    assert unknown.endpoints[0].locations[0].uri.decode() == server.endpoint and unknown.total_bytes == -1
    client.put("zzz/ssn", blob(1))
    keys = [i.descriptor.path[0].decode() for i in raw.list_flights()]
    assert ref.key in keys and len(keys) == 2
    assert [i.descriptor.path[0].decode() for i in raw.list_flights(b"app/")] == [ref.key]
    assert [a.type for a in raw.list_actions()] == ["DELETE"]
    with pytest.raises(pa.ArrowNotImplementedError):
        list(raw.do_action(flight.Action("COMPACT", b"app/ssn")))


def test_native_tables_and_flames_arrow_tagged_values(client, raw, server):
    table = pa.table({"x": [1, 2, 3], "y": ["a", "b", "c"]})
    native = table.replace_schema_metadata(
        {
            b"flame.cache.format": b"arrow-table-v1",
            b"flame.cache.version": b"0",
            b"flame.cache.logical_type": b"pyarrow.table",
        }
    )
    key = bson.decode(raw_put(raw, flight.FlightDescriptor.for_path("app/ssn"), native))["key"]
    answered = raw_get(raw, f"{key}:0")
    assert answered.num_rows == 3 and answered.schema.metadata[b"flame.cache.version"] == b"1"
    base, _patches, version = client.fetch(key)
    assert decode_value(base).equals(table) and version == 1 and server.stats.native >= 1
    info = raw.get_flight_info(flight.FlightDescriptor.for_path(key))
    assert info.schema.names == ["x", "y"]

    # FLM\x02 + Arrow IPC stream: how Flame's SDK tags a pyarrow Table put through the opaque path.
    sink = pa.BufferOutputStream()
    sink.write(TAG_ARROW_TABLE)
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    key = bson.decode(
        raw_put(raw, flight.FlightDescriptor.for_path("app/ssn"), opaque_rows(sink.getvalue().to_pybytes()))
    )["key"]
    assert decode_value(client.fetch(key)[0]).equals(table)


def test_chunked_uploads_come_back_byte_for_byte(raw, client):
    chunks = [os.urandom(1000), os.urandom(10), b"FLM\x00 is not special mid-file"]
    key = bson.decode(raw_put(raw, flight.FlightDescriptor.for_path("app/pkg/app.tar.gz"), opaque_rows(*chunks)))["key"]
    assert key == "app/pkg/app.tar.gz"
    answered = raw_get(raw, f"{key}:0")
    assert answered.column("kind").to_pylist() == ["base"] and answered.column("data")[0].as_py() == b"".join(chunks)


def test_a_large_value_crosses_in_one_row(client):
    big = os.urandom(24 * 1024 * 1024)
    ref = client.put("app/ssn", blob(big))
    assert decode_value(client.fetch(ref.key)[0]) == big


def test_every_pyarrow_error_has_a_code():
    declared = {cls for cls, _code in ERROR_CODES}
    for module in (pa, flight):
        for name, obj in vars(module).items():
            if inspect.isclass(obj) and issubclass(obj, BaseException) and name.startswith(("Arrow", "Flight")):
                assert obj in declared or obj is pa.ArrowIOError, f"{module.__name__}.{name} has no FlameErrorCode"
    assert flame_code(pa.ArrowIOError("connection reset")) == FlameErrorCode.UNAVAILABLE
    assert flame_code(flight.FlightServerError("x", extra_info=b"flamepy:RESOURCE_EXHAUSTED")) == (
        FlameErrorCode.RESOURCE_EXHAUSTED
    )
    assert flame_code(flight.FlightServerError("x", extra_info=b"flamepy:NO_SUCH_CODE")) == FlameErrorCode.INTERNAL


def test_an_unreachable_cache_is_unavailable():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    c = FlightCacheClient(f"flight://127.0.0.1:{port}", timeout=5)
    with pytest.raises(FlameError) as info:
        c.fetch("app/ssn/x")
    assert info.value.code == FlameErrorCode.UNAVAILABLE and info.value.message.startswith("failed to get object")


def test_a_port_in_use_is_a_clear_error(server):
    with pytest.raises(FlameError) as info:
        FlightCacheServer.standalone(server.endpoint)
    assert info.value.code == FlameErrorCode.UNAVAILABLE and "cannot listen" in info.value.message


def test_the_standalone_server_command(tmp_path):
    db = tmp_path / "cache.db"
    argv = [sys.executable, "-m", "flamepy_core.flight", "--listen", "grpc://127.0.0.1:0", "--db", str(db)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("Flame-compatible Flight cache listening on grpc://127.0.0.1:"), proc.stderr
        c = FlightCacheClient("flight://" + line.split("grpc://", 1)[1].strip())
        ref = c.put("app/ssn", blob({"kept": True}))
        assert decode_value(c.fetch(ref.key)[0]) == {"kept": True}
        c.close()
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0
    assert db.exists()


# -- the public API, chosen by endpoint -------------------------------------------------------------


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for key in [k for k in os.environ if k.startswith("FLAME_")]:
        monkeypatch.delenv(key)
    return monkeypatch


def test_flamepy_cache_functions_over_a_flight_endpoint(server, clean_env):
    clean_env.setenv("FLAME_CACHE_ENDPOINT", flight_url(server))
    assert isinstance(cache_client(), FlightCacheClient)
    ref = put_object("app/ssn", {"n": 1})
    assert get_object(ref) == {"n": 1}
    patched = patch_object(ref, {"n": 2})
    assert get_object(patched, deserializer=lambda base, deltas: [base, *deltas]) == [{"n": 1}, {"n": 2}]
    assert get_object(patched) == {"n": 1}  # as in Flame: without a deserializer, the base only
    updated = update_object(patched, b"bytes stay bytes")
    assert updated.version == 3 and get_object(updated) == b"bytes stay bytes"
    delete_objects("app/ssn")
    with pytest.raises(FlameError):
        get_object(updated)


def test_the_protocol_switch_reads_a_grpc_endpoint_as_flight(server, clean_env):
    clean_env.setenv("FLAME_CACHE_ENDPOINT", server.endpoint)  # grpc://127.0.0.1:PORT, as Flame writes it
    clean_env.setenv("FLAME_CACHE_PROTOCOL", "flight")
    assert isinstance(cache_client(), FlightCacheClient)
    ref = put_object("app/ssn", [1, 2, 3])
    assert get_object(ref) == [1, 2, 3]
    clean_env.setenv("FLAME_CACHE_PROTOCOL", "flamepy")  # the same address, our protocol: another client
    assert not isinstance(cache_client(), FlightCacheClient) and isinstance(cache_client(), CacheClient)


# -- the runtime with --flight-listen ----------------------------------------------------------------

CONTEXT_SERVICE = """
import os
from flamepy import service
from flamepy_core.client.objects import cache_client

ins = service.FlameInstance()


@ins.entrypoint
def handle(req):
    history = ins.context() or []
    history.append(req)
    ins.update_context(history)
    return {
        "count": len(history),
        "cache_client": type(cache_client()).__name__,
        "endpoint": os.environ.get("FLAME_CACHE_ENDPOINT"),
        "protocol": os.environ.get("FLAME_CACHE_PROTOCOL"),
    }


if __name__ == "__main__":
    ins.run()
"""


def start_runtime(flame_env: Any, *extra: str) -> dict[str, Any]:
    """Start the server for ``flame_env`` with a Flight cache on a free port; ``flame_env`` stops it."""
    home = flame_env.home
    (home / "logs").mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "flamepy_core.engine", "--home", str(home), "--flight-listen", "grpc://127.0.0.1:0"]
    with open(home / "logs" / "server.log", "ab") as log:
        proc = subprocess.Popen(
            [*argv, *extra], env=flame_env.env, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        info = read_server_info(home)
        if info and info.get("pid") == proc.pid:
            return info
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    proc.wait(timeout=10)
    pytest.fail(f"the server did not start:\n{(home / 'logs' / 'server.log').read_text()[-3000:]}")


def test_contexts_over_flight_with_instances_on_our_own_cache(flame_env, monkeypatch):
    info = start_runtime(flame_env)
    flight_endpoint = info["flight_cache_endpoint"]
    assert flight_endpoint.startswith("grpc://127.0.0.1:") and info["cache_endpoint"] != flight_endpoint
    flame_env.write_service("ctx-app", CONTEXT_SERVICE)
    # The client points at the Flight cache the way one points Flame's SDK at a cluster's cache.
    monkeypatch.setenv("FLAME_CACHE_ENDPOINT", flight_endpoint)
    monkeypatch.setenv("FLAME_CACHE_PROTOCOL", "flight")
    with Session("ctx-app", ctx=["from the client"]) as session:
        first = session.invoke("one")
        assert first["count"] == 2 and first["cache_client"] == "CacheClient"  # instances: our protocol
        assert first["endpoint"] == info["cache_endpoint"] and first["protocol"] == "flamepy"
        assert session.invoke("two")["count"] == 3
        # Written by the instance through our protocol, read here through Flight: one store.
        assert session.context() == ["from the client", "one", "two"]
        assert isinstance(cache_client(), FlightCacheClient)
        ref = ObjectRef.decode(flamepy.get_session(session.id()).common_data() or b"")
        assert ref.endpoint == flight_endpoint  # what Flame's SDK would read it from


def test_a_server_started_on_demand_serves_flight_when_flame_flight_listen_is_set(flame_env, monkeypatch):
    flame_env.env["FLAME_FLIGHT_LISTEN"] = "grpc://127.0.0.1:0"
    monkeypatch.setenv("FLAME_FLIGHT_LISTEN", "grpc://127.0.0.1:0")
    flame_env.flmctl("list", "--application")  # any call starts the local server, which inherits the variable
    info = read_server_info(flame_env.home)
    assert info is not None and str(info["flight_cache_endpoint"]).startswith("grpc://127.0.0.1:")
    c = FlightCacheClient(str(info["flight_cache_endpoint"]).replace("grpc://", "flight://"))
    try:
        ref = c.put("app/ssn", blob("served"))
    finally:
        c.close()
    assert get_object(ref) == "served"  # and our own protocol reads it from the same store


def test_contexts_with_instances_on_the_flight_cache(flame_env, monkeypatch):
    info = start_runtime(flame_env, "--flight-for-instances")
    flight_endpoint = info["flight_cache_endpoint"]
    flame_env.write_service("ctx-flight", CONTEXT_SERVICE)
    monkeypatch.setenv("FLAME_CACHE_ENDPOINT", "flight://" + flight_endpoint.split("://", 1)[1])
    with Session("ctx-flight", ctx=[]) as session:
        reply = session.invoke("a")
        assert reply == {
            "count": 1,
            "cache_client": "FlightCacheClient",
            "endpoint": flight_endpoint,
            "protocol": "flight",
        }
        assert session.invoke("b")["count"] == 2
        assert session.context() == ["a", "b"]


# -- Flame's own SDK (flamepy==0.6.0) ----------------------------------------------------------------

UPSTREAM = "flamepy==0.6.0"
_NETWORK_ERRORS = (
    "NewConnectionError",
    "Failed to establish a new connection",
    "Temporary failure in name resolution",
    "Name or service not known",
    "Network is unreachable",
    "ConnectTimeoutError",
    "ProxyError",
    "Read timed out",
)


REQUIRE_ENV = "FLAMEPY_REQUIRE_INTEROP"


def _venv_dir() -> Path:
    """Shared with tests/interop (same path, same lock file): whoever runs first builds it."""
    return Path(tempfile.gettempdir()) / f"flamepy-interop-venv-{sys.version_info[0]}.{sys.version_info[1]}"


def _clean_env() -> dict[str, str]:
    drop = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith(("FLAME_", "FLAMEPY_"))}
    env["PYTHONNOUSERSITE"] = "1"
    return env


def _venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def _usable(venv: Path) -> bool:
    python = _venv_python(venv)
    if not python.exists():
        return False
    probe = "import importlib.metadata as m, pyarrow.flight; assert m.version('flamepy') == '0.6.0'"
    proc = subprocess.run([str(python), "-c", probe], capture_output=True, cwd=venv, env=_clean_env(), check=False)
    return proc.returncode == 0


def _index_reachable() -> bool:
    url = urllib.parse.urlsplit(os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple"))
    if url.scheme not in ("http", "https") or not url.hostname:
        return True
    try:
        with socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout=10):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def flame_python() -> Path:
    """The interpreter of a venv with Flame's published SDK; created (pip) when no one made it yet.

    Skipped with the reason when PyPI cannot be reached, unless FLAMEPY_REQUIRE_INTEROP=1 (or
    FLAMEPY_REQUIRE_WHEEL=1, which CI sets): then that is a failure.
    """
    venv = _venv_dir()
    if _usable(venv):
        return _venv_python(venv)
    with open(venv.parent / f"{venv.name}.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another test run may be building it
        if not _usable(venv):
            output = ""
            commands = [
                [sys.executable, "-m", "venv", "--clear", str(venv)],
                [
                    str(_venv_python(venv)),
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                    UPSTREAM,
                    "pyarrow",
                ],
            ]
            for cmd in commands:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False, env=_clean_env())
                output += proc.stdout + proc.stderr
                if proc.returncode != 0:
                    break
            if not _usable(venv):
                offline = any(m in output for m in _NETWORK_ERRORS) or not _index_reachable()
                required = any(os.environ.get(v, "") not in ("", "0") for v in (REQUIRE_ENV, "FLAMEPY_REQUIRE_WHEEL"))
                if offline and not required:
                    pytest.skip(f"PyPI is unreachable: cannot install {UPSTREAM} to test interop:\n{output[-1500:]}")
                pytest.fail(f"could not build a venv with {UPSTREAM} in {venv}:\n{output[-4000:]}")
    return _venv_python(venv)


FLAME_SCRIPT = """
import json, sys
from flamepy.cache import ObjectRef, get_object, patch_object, put_object, update_object

def ref_json(ref):
    return [ref.endpoint, ref.key, int(ref.version)]

out = {}
if sys.argv[1] == "write":
    ref = put_object("interop/ssn", {"from": "flame", "n": [1, 2]})
    out["dict"] = ref_json(ref)
    out["bytes"] = ref_json(put_object("interop/ssn", b"flame-bytes"))
    out["patched"] = ref_json(patch_object(ref, {"delta": 1}))
    doomed = put_object("interop/ssn", "old")
    out["updated"] = ref_json(update_object(doomed, "replaced by flame"))
    import pyarrow as pa
    table = pa.table({"x": [1, 2, 3]})
    tref = put_object("interop/ssn", table)  # a native Arrow put
    first, again = get_object(tref), get_object(tref)  # the second read is answered "not modified"
    out["table"] = ref_json(tref)
    out["table_ok"] = first.equals(table) and again.equals(table)
else:
    for name, hexref in json.loads(sys.argv[2]).items():
        ref = ObjectRef.decode(bytes.fromhex(hexref))
        out[name] = repr(get_object(ref))
        out[name + "+patches"] = repr(get_object(ref, deserializer=lambda base, patches: (base, patches)))
        if name == "dict":
            out["updated"] = ref_json(update_object(ref, {"updated": "by flame"}))
print(json.dumps(out))
"""


def run_flame(flame_python: Path, cache_endpoint: str, *args: str) -> dict[str, Any]:
    """Run FLAME_SCRIPT with Flame's SDK, its cache at ``cache_endpoint``; what it printed, as a dict."""
    with tempfile.TemporaryDirectory(prefix="flame-sdk-home-") as home:  # no ~/.flame/flame.yaml of anyone's
        env = {**_clean_env(), "HOME": home, "FLAME_CACHE_ENDPOINT": cache_endpoint}
        proc = subprocess.run(
            [str(flame_python), "-c", textwrap.dedent(FLAME_SCRIPT), *args],
            env=env,
            cwd=home,  # not the repo: `import flamepy` must find Flame's, not ours
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert proc.returncode == 0, f"Flame's SDK failed:\n{proc.stdout}\n{proc.stderr[-4000:]}"
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


@pytest.mark.timeout(900)
def test_what_flames_sdk_writes_our_client_reads(flame_python, server, client):
    out = run_flame(flame_python, server.endpoint, "write")
    assert out["dict"][0] == server.endpoint and out["dict"][2] == 1 and out["patched"][2] == 2
    assert out["updated"][2] == 2
    base, patches, version = client.fetch(out["dict"][1])
    assert decode_value(base) == {"from": "flame", "n": [1, 2]} and version == 2
    assert [decode_value(p) for p in patches] == [{"delta": 1}]
    assert decode_value(client.fetch(out["bytes"][1])[0]) == b"flame-bytes"
    assert decode_value(client.fetch(out["updated"][1])[0]) == "replaced by flame"
    assert out["table_ok"] is True
    assert decode_value(client.fetch(out["table"][1])[0]).equals(pa.table({"x": [1, 2, 3]}))
    assert server.stats.native >= 2 and server.stats.not_modified >= 1


@pytest.mark.timeout(900)
def test_what_our_client_writes_flames_sdk_reads_and_updates(flame_python, server, client):
    mine = client.put("interop/ours", blob({"from": "flamepy"}))
    client.patch(mine.key, blob("our patch"))
    raw_bytes = client.put("interop/ours", encode_value(b"our-bytes", CLOUDPICKLE))
    json_value = client.put("interop/ours", encode_value({"json": True}, get_registry().serializer("json")))
    refs = {"dict": mine, "bytes": raw_bytes, "json": json_value}
    out = run_flame(flame_python, server.endpoint, "read", json.dumps({k: r.encode().hex() for k, r in refs.items()}))
    assert out["dict"] == repr({"from": "flamepy"})
    assert out["dict+patches"] == repr(({"from": "flamepy"}, ["our patch"]))
    assert out["bytes"] == repr(b"our-bytes")
    assert out["json"] == repr({"json": True})
    assert out["updated"][2] == 3  # 1 put + 1 patch + Flame's update
    base, patches, version = client.fetch(mine.key)
    assert (decode_value(base), patches, version) == ({"updated": "by flame"}, [], 3)


@pytest.mark.timeout(900)
def test_flames_sdk_against_the_runtimes_flight_cache_shares_its_store(flame_python, flame_env):
    info = start_runtime(flame_env)
    out = run_flame(flame_python, info["flight_cache_endpoint"], "write")
    # Our default client (our own protocol, no FLAME_CACHE_ENDPOINT) reads the same objects by key.
    assert not isinstance(cache_client(), FlightCacheClient)
    assert get_object(ObjectRef(*out["dict"])) == {"from": "flame", "n": [1, 2]}
    assert get_object(ObjectRef(*out["bytes"])) == b"flame-bytes"
    ours = put_object("interop/ssn", {"from": "our protocol"})
    # Flame's SDK reads from the ref's endpoint: the same key at the Flight endpoint finds the same object.
    via_flight = ObjectRef(info["flight_cache_endpoint"], ours.key, ours.version)
    read = run_flame(
        flame_python, info["flight_cache_endpoint"], "read", json.dumps({"dict": via_flight.encode().hex()})
    )
    assert read["dict"] == repr({"from": "our protocol"})
    assert get_object(ours) == {"updated": "by flame"}
