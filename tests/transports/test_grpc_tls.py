"""TLS for the gRPC transport: ``grpcs://``/``https://``, mutual TLS, clear errors, and the runtime over it.

Certificates are made at run time with the ``openssl`` command line (a CA, a server certificate for
``IP:127.0.0.1`` and ``DNS:localhost``, client certificates, and a second, untrusted CA); the module is
skipped when ``openssl`` is not installed. Every failure must come promptly and say what to change.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest

pytest.importorskip("flamepy_transports.grpc.transport")

from conftest import FlameEnv
from flamepy_conformance import TransportTests
from flamepy_transports.grpc.plugin import GrpcTransport

from flamepy_core.client.connection import connect, connect_config
from flamepy_core.client.transports import client_tls_options, shared_transport
from flamepy_core.config import FlameClientTls, resolve_config
from flamepy_core.contracts import CallContext, FlameError, FlameErrorCode, Handler, StreamHandler, UnaryHandler
from flamepy_core.contracts.transport import Channel, Server, Transport, TransportSpec
from flamepy_core.engine.server import FlameServer
from flamepy_core.plugins import get_registry

PROMPT_S = 3.0
"""A refused or mismatched handshake must be reported within this many seconds."""
STARTUP_S = 30.0
VENV_BIN = str(Path(sys.executable).parent)
ECHO = "/test.Tls/Echo"
COUNT = "/test.Tls/Count"


# -- certificates ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Certs:
    ca: Path
    other_ca: Path
    server_cert: Path
    server_key: Path
    named_cert: Path
    """A server certificate naming only DNS:flame.test (for server_name_override)."""
    named_key: Path
    client_cert: Path
    client_key: Path
    stranger_cert: Path
    """A client certificate signed by the other CA: not trusted by our servers."""
    stranger_key: Path


def _openssl(folder: Path, *args: str) -> None:
    done = subprocess.run(["openssl", *args], cwd=folder, capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise AssertionError(f"openssl {' '.join(args)} failed:\n{done.stderr}")


def _make_ca(folder: Path, name: str) -> None:
    _openssl(
        folder, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.crt", "-days", "2", "-subj", f"/CN=flamepy test {name}",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip


def _make_leaf(folder: Path, name: str, ca: str, extensions: str) -> None:
    _openssl(
        folder, "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN=flamepy test {name}",
    )  # fmt: skip
    (folder / f"{name}.ext").write_text(textwrap.dedent(extensions))
    _openssl(
        folder, "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
        "-CAcreateserial", "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext",
    )  # fmt: skip


def make_certs(folder: Path) -> Certs:
    """A CA, server and client certificates signed by it, and an untrusted CA with its own client."""
    _make_ca(folder, "ca")
    _make_ca(folder, "other-ca")
    server = """\
        basicConstraints = CA:FALSE
        keyUsage = critical, digitalSignature, keyEncipherment
        extendedKeyUsage = serverAuth
        subjectAltName = IP:127.0.0.1, DNS:localhost
        """
    _make_leaf(folder, "server", "ca", server)
    _make_leaf(folder, "named", "ca", server.replace("IP:127.0.0.1, DNS:localhost", "DNS:flame.test"))
    client = """\
        basicConstraints = CA:FALSE
        keyUsage = critical, digitalSignature
        extendedKeyUsage = clientAuth
        """
    _make_leaf(folder, "client", "ca", client)
    _make_leaf(folder, "stranger", "other-ca", client)
    f = folder
    return Certs(
        ca=f / "ca.crt",
        other_ca=f / "other-ca.crt",
        server_cert=f / "server.crt",
        server_key=f / "server.key",
        named_cert=f / "named.crt",
        named_key=f / "named.key",
        client_cert=f / "client.crt",
        client_key=f / "client.key",
        stranger_cert=f / "stranger.crt",
        stranger_key=f / "stranger.key",
    )


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command line is not installed; it makes this module's test certificates")
    return make_certs(tmp_path_factory.mktemp("tls-certs"))


# -- helpers -----------------------------------------------------------------------------------------


class Counted:
    """Echo handlers that count the calls that reached them."""

    def __init__(self) -> None:
        self.calls = 0
        self._lock = threading.Lock()

    def _hit(self) -> None:
        with self._lock:
            self.calls += 1

    def echo(self, request: bytes, ctx: CallContext) -> bytes:
        self._hit()
        return b"echo:" + request

    def count(self, request: bytes, ctx: CallContext) -> Iterator[bytes]:
        self._hit()
        for i in range(int(request)):
            yield str(i).encode()

    def handlers(self) -> dict[str, Handler]:
        return {ECHO: UnaryHandler(self.echo), COUNT: StreamHandler(self.count)}


def server_transport(certs: Certs, *, mutual: bool = False, named: bool = False) -> GrpcTransport:
    cert, key = (certs.named_cert, certs.named_key) if named else (certs.server_cert, certs.server_key)
    return GrpcTransport(
        default_timeout=10.0, cert_file=cert, key_file=key, client_ca_file=certs.ca if mutual else None
    )


def refused(call: Any, what: str, *codes: FlameErrorCode) -> FlameError:
    """``call()`` must fail promptly with a FlameError of one of ``codes``."""
    start = time.monotonic()
    with pytest.raises(FlameError) as info:
        call()
    took = time.monotonic() - start
    assert info.value.code in codes, f"{what}: {info.value!r}"
    assert took < PROMPT_S, f"{what}: the error came after {took:.2f} s"
    return info.value


@pytest.fixture
def counted() -> Counted:
    return Counted()


@pytest.fixture
def tls_server(certs: Certs, counted: Counted) -> Iterator[Server]:
    server = server_transport(certs).serve("grpcs://127.0.0.1:0", counted.handlers())
    yield server
    server.stop()


@pytest.fixture
def mutual_server(certs: Certs, counted: Counted) -> Iterator[Server]:
    server = server_transport(certs, mutual=True).serve("https://127.0.0.1:0", counted.handlers())
    yield server
    server.stop()


# -- TLS on the transport ----------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["grpcs", "https"])
def test_tls_round_trip(certs: Certs, counted: Counted, scheme: str) -> None:
    server = server_transport(certs).serve(f"{scheme}://127.0.0.1:0", counted.handlers())
    try:
        assert server.endpoint.startswith(f"{scheme}://127.0.0.1:")
        port = server.endpoint.rsplit(":", 1)[1]
        client = GrpcTransport(ca_file=certs.ca)
        for endpoint in (server.endpoint, f"{scheme}://localhost:{port}"):  # both names of its certificate
            with client.connect(endpoint) as channel:
                assert channel.unary(ECHO, b"over TLS", timeout=10) == b"echo:over TLS"
                assert list(channel.stream(COUNT, b"3", timeout=10)) == [b"0", b"1", b"2"]
        assert counted.calls == 4
    finally:
        server.stop()


def test_plain_schemes_stay_plain_with_tls_options_set(certs: Certs, counted: Counted) -> None:
    transport = GrpcTransport(ca_file=certs.ca, cert_file=certs.server_cert, key_file=certs.server_key)
    server = transport.serve("grpc://127.0.0.1:0", counted.handlers())
    try:
        with GrpcTransport().connect(server.endpoint) as plain:
            assert plain.unary(ECHO, b"plain", timeout=10) == b"echo:plain"
        with transport.connect(server.endpoint.replace("grpc://", "http://")) as plain:
            assert plain.unary(ECHO, b"http", timeout=10) == b"echo:http"
    finally:
        server.stop()


def test_a_server_certificate_from_an_unknown_ca_is_a_clear_error(certs: Certs, tls_server: Server) -> None:
    with GrpcTransport(ca_file=certs.other_ca).connect(tls_server.endpoint) as channel:
        err = refused(lambda: channel.unary(ECHO, b"x", timeout=10), "wrong CA", FlameErrorCode.UNAVAILABLE)
    assert "certificate could not be verified" in err.message, err.message
    assert str(certs.other_ca) in err.message and "FLAME_CA_FILE" in err.message, err.message
    with GrpcTransport().connect(tls_server.endpoint) as channel:  # no ca_file: gRPC's default roots
        err = refused(lambda: list(channel.stream(COUNT, b"1", timeout=10)), "no CA", FlameErrorCode.UNAVAILABLE)
    assert "default root certificates" in err.message, err.message


def test_server_name_override(certs: Certs, counted: Counted) -> None:
    server = server_transport(certs, named=True).serve("grpcs://127.0.0.1:0", counted.handlers())
    try:
        with GrpcTransport(ca_file=certs.ca).connect(server.endpoint) as channel:
            err = refused(lambda: channel.unary(ECHO, b"x", timeout=10), "name mismatch", FlameErrorCode.UNAVAILABLE)
            assert "does not name '127.0.0.1'" in err.message and "server_name_override" in err.message, err.message
        with GrpcTransport(ca_file=certs.ca, server_name_override="flame.test").connect(server.endpoint) as channel:
            assert channel.unary(ECHO, b"named", timeout=10) == b"echo:named"
    finally:
        server.stop()


def test_mutual_tls_admits_a_client_with_a_certificate(certs: Certs, mutual_server: Server, counted: Counted) -> None:
    client = GrpcTransport(ca_file=certs.ca, cert_file=certs.client_cert, key_file=certs.client_key)
    with client.connect(mutual_server.endpoint) as channel:
        assert channel.unary(ECHO, b"me", timeout=10) == b"echo:me"
        assert list(channel.stream(COUNT, b"2", timeout=10)) == [b"0", b"1"]
    assert counted.calls == 2


def test_mutual_tls_refuses_a_client_without_a_certificate(
    certs: Certs, mutual_server: Server, counted: Counted
) -> None:
    codes = (FlameErrorCode.UNAUTHENTICATED, FlameErrorCode.UNAVAILABLE)
    with GrpcTransport(ca_file=certs.ca).connect(mutual_server.endpoint) as channel:
        err = refused(lambda: channel.unary(ECHO, b"x", timeout=10), "no client certificate", *codes)
        assert "the server requires a client certificate" in err.message, err.message
        assert "FLAME_CLIENT_CERT_FILE" in err.message, err.message
        err = refused(lambda: list(channel.stream(COUNT, b"1", timeout=10)), "stream without certificate", *codes)
        assert "the server requires a client certificate" in err.message, err.message
    stranger = GrpcTransport(ca_file=certs.ca, cert_file=certs.stranger_cert, key_file=certs.stranger_key)
    with stranger.connect(mutual_server.endpoint) as channel:
        err = refused(lambda: channel.unary(ECHO, b"x", timeout=10), "untrusted client certificate", *codes)
        assert "refused this client's certificate" in err.message and str(certs.stranger_cert) in err.message
    assert counted.calls == 0, "a handler ran for a client the server should have refused"


def test_a_tls_client_against_a_plain_server_fails_promptly(certs: Certs, counted: Counted) -> None:
    server = GrpcTransport().serve("grpc://127.0.0.1:0", counted.handlers())
    try:
        tls_endpoint = server.endpoint.replace("grpc://", "grpcs://")
        with GrpcTransport(ca_file=certs.ca).connect(tls_endpoint) as channel:
            err = refused(lambda: channel.unary(ECHO, b"x", timeout=10), "TLS to plain", FlameErrorCode.UNAVAILABLE)
        assert "does not speak TLS" in err.message and "grpc://" in err.message, err.message
    finally:
        server.stop()
    assert counted.calls == 0


def test_a_plain_client_against_a_tls_server_fails_promptly(tls_server: Server, counted: Counted) -> None:
    plain_endpoint = tls_server.endpoint.replace("grpcs://", "grpc://")
    with GrpcTransport().connect(plain_endpoint) as channel:
        err = refused(lambda: channel.unary(ECHO, b"x", timeout=10), "plain to TLS", FlameErrorCode.UNAVAILABLE)
    assert "speaks TLS" in err.message and "grpcs://" in err.message, err.message
    assert counted.calls == 0


# -- configuration errors ----------------------------------------------------------------------------


def _config_error(call: Any) -> str:
    with pytest.raises(FlameError) as info:
        call()
    assert info.value.code == FlameErrorCode.INVALID_CONFIG, repr(info.value)
    return info.value.message


def test_serving_tls_without_a_certificate_names_the_options(counted: Counted) -> None:
    message = _config_error(lambda: GrpcTransport().serve("https://127.0.0.1:0", counted.handlers()))
    assert "cert_file" in message and "key_file" in message and "--tls-cert" in message, message
    message = _config_error(lambda: get_registry().transport("grpc", cert_file="server.crt"))
    assert "cert_file is set but key_file is not" in message, message


def test_unusable_files_name_the_option_and_the_file(certs: Certs, tmp_path: Path, counted: Counted) -> None:
    missing = tmp_path / "missing.crt"
    message = _config_error(lambda: GrpcTransport(ca_file=missing).connect("grpcs://127.0.0.1:1"))
    assert f"ca_file {missing} does not exist" in message, message
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("hello")
    message = _config_error(lambda: GrpcTransport(ca_file=not_pem).connect("grpcs://127.0.0.1:1"))
    assert "ca_file" in message and "not a PEM file" in message, message
    message = _config_error(lambda: GrpcTransport(ca_file=certs.client_key).connect("grpcs://127.0.0.1:1"))
    assert "no usable CA certificate" in message, message
    wrong_key = GrpcTransport(cert_file=certs.server_cert, key_file=certs.client_key)
    message = _config_error(lambda: wrong_key.serve("grpcs://127.0.0.1:0", counted.handlers()))
    assert "cert_file" in message and "key_file" in message and str(certs.client_key) in message, message
    no_ca = GrpcTransport(cert_file=certs.server_cert, key_file=certs.server_key, client_ca_file=missing)
    message = _config_error(lambda: no_ca.serve("grpcs://127.0.0.1:0", counted.handlers()))
    assert f"client_ca_file {missing}" in message, message


# -- the conformance suite over TLS ------------------------------------------------------------------


class TestGrpcsConformance(TransportTests):
    """The whole transport contract on grpcs:// (one transport: server certificate + CA)."""

    transport_name = "grpc"
    endpoint_scheme = "grpcs"
    certs: ClassVar[Certs]

    @pytest.fixture(autouse=True, scope="class")
    @classmethod
    def _tls_certs(cls, certs: Certs) -> None:
        cls.certs = certs

    def options_for(self, spec: TransportSpec) -> dict[str, Any]:
        options = super().options_for(spec)
        options.update(
            ca_file=str(self.certs.ca), cert_file=str(self.certs.server_cert), key_file=str(self.certs.server_key)
        )
        return options


class _SplitTransport:
    """A server transport and a client transport seen as one, for the suite (mutual TLS needs both)."""

    def __init__(self, server: Transport, client: Transport) -> None:
        self.name = server.name
        self.schemes = server.schemes
        self.capabilities = server.capabilities
        self._server = server
        self._client = client

    def connect(self, endpoint: str) -> Channel:
        return self._client.connect(endpoint)

    def serve(self, endpoint: str, handlers: Mapping[str, Handler]) -> Server:
        return self._server.serve(endpoint, handlers)


class TestHttpsMutualTlsConformance(TransportTests):
    """The contract on https:// with mutual TLS: servers require the client certificate channels present.

    :meth:`options_for` gives the server's options (also what the cross-process test's child serves
    with); :meth:`make_transport` adds a client built with the client certificate.
    """

    transport_name = "grpc"
    endpoint_scheme = "https"
    certs: ClassVar[Certs]

    @pytest.fixture(autouse=True, scope="class")
    @classmethod
    def _tls_certs(cls, certs: Certs) -> None:
        cls.certs = certs

    def options_for(self, spec: TransportSpec) -> dict[str, Any]:
        options = super().options_for(spec)
        options.update(
            cert_file=str(self.certs.server_cert),
            key_file=str(self.certs.server_key),
            client_ca_file=str(self.certs.ca),
        )
        return options

    def client_options(self, spec: TransportSpec) -> dict[str, Any]:
        """What a client of these servers needs: the CA, and the client certificate it presents."""
        options = dict(super().options_for(spec))
        options.update(
            ca_file=str(self.certs.ca), cert_file=str(self.certs.client_cert), key_file=str(self.certs.client_key)
        )
        return options

    def make_transport(self) -> Transport:
        return self.make_transport_with()

    def make_transport_with(self, **options: Any) -> Transport:
        registry = self.plugin_registry()
        chosen = registry.transport_spec(self.resolved_transport_name())

        def build(base: dict[str, Any]) -> Transport:
            merged = {**base, **options}
            return registry.create_transport(chosen, {k: v for k, v in merged.items() if v is not None})

        return _SplitTransport(build(self.options_for(chosen.spec)), build(self.client_options(chosen.spec)))

    def forking_client_argv(self) -> list[str]:
        chosen = self.plugin_registry().transport_spec(self.resolved_transport_name())
        argv = super().forking_client_argv()
        return [*argv[:-1], repr(self.client_options(chosen.spec))]  # the client's options, not the server's


# -- the client: connect, connect_config, shared transports ------------------------------------------


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No FLAME_* variables, and a FLAME_HOME without flame.yaml."""
    for key in [k for k in os.environ if k.startswith("FLAME_")]:
        monkeypatch.delenv(key)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("FLAME_HOME", str(home))
    return home


@pytest.fixture
def tls_flame_server(certs: Certs, clean_env: Path) -> Iterator[FlameServer]:
    """Our runtime in this process on grpcs:// with mutual TLS (no instances are started here)."""
    server = FlameServer(
        clean_env,
        "grpcs://127.0.0.1:0",
        publish=False,
        instance_transport="grpc",
        security={
            "--tls-cert": ("cert_file", str(certs.server_cert)),
            "--tls-key": ("key_file", str(certs.server_key)),
            "--tls-client-ca": ("client_ca_file", str(certs.ca)),
        },
    )
    server.start()
    yield server
    server.stop()


def test_connect_with_tls_config_and_configuration(
    certs: Certs, tls_flame_server: FlameServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    endpoint = tls_flame_server.endpoint
    assert tls_flame_server.cache_endpoint == endpoint
    tls = FlameClientTls(ca_file=str(certs.ca), cert_file=str(certs.client_cert), key_file=str(certs.client_key))
    conn = connect(endpoint, tls_config=tls)
    try:
        assert [a.name for a in conn.list_applications()] == ["flmexec", "flmping", "flmrun"]  # the built-ins
    finally:
        conn.close()

    # Without a client certificate: refused with the clear error, through Connection's wording.
    conn = connect(endpoint, tls_config=FlameClientTls(ca_file=str(certs.ca)))
    try:
        err = refused(conn.list_applications, "connect without a certificate", FlameErrorCode.UNAUTHENTICATED)
        assert "failed to list applications" in err.message and "requires a client certificate" in err.message
    finally:
        conn.close()

    # The same from the environment: FLAME_CA_FILE and the client certificate variables.
    monkeypatch.setenv("FLAME_CA_FILE", str(certs.ca))
    monkeypatch.setenv("FLAME_CLIENT_CERT_FILE", str(certs.client_cert))
    monkeypatch.setenv("FLAME_CLIENT_KEY_FILE", str(certs.client_key))
    for conn in (connect(endpoint), connect_config(resolve_config(endpoint=endpoint))):
        try:
            assert [a.name for a in conn.list_applications()] == ["flmexec", "flmping", "flmrun"]
        finally:
            conn.close()


def test_configured_ca_wins_over_flame_ca_file(certs: Certs, clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (clean_env / "flame.yaml").write_text(
        "current-context: c\ncontexts:\n  - name: c\n    cluster:\n      endpoint: https://127.0.0.1:1\n"
        f"      tls: {{ca_file: {certs.ca}}}\n    cache:\n      endpoint: grpcs://127.0.0.1:2\n"
    )
    monkeypatch.setenv("FLAME_CA_FILE", str(certs.other_ca))
    config = resolve_config()
    assert client_tls_options("https://127.0.0.1:1", config) == {"ca_file": str(certs.ca)}
    assert client_tls_options("grpcs://127.0.0.1:2", config) == {"ca_file": str(certs.other_ca)}  # cache: env
    explicit = client_tls_options("https://127.0.0.1:1", config, ca_file=certs.client_cert)
    assert explicit == {"ca_file": str(certs.client_cert)}
    assert client_tls_options("grpc://127.0.0.1:1", config, ca_file=certs.ca) == {}  # plain stays plain
    monkeypatch.setenv("FLAME_CLIENT_CERT_FILE", str(certs.client_cert))
    config = resolve_config()
    assert config.client_cert_file == str(certs.client_cert)
    assert config.source["client_cert_file"] == "env:FLAME_CLIENT_CERT_FILE"
    message = _config_error(lambda: client_tls_options("https://127.0.0.1:1", config))
    assert "FLAME_CLIENT_CERT_FILE" in message and "FLAME_CLIENT_KEY_FILE is not" in message, message


def test_shared_transports_are_keyed_by_tls_options(certs: Certs, clean_env: Path) -> None:
    endpoint = "grpcs://127.0.0.1:1"
    with_ca = shared_transport(endpoint, ca_file=str(certs.ca))
    assert shared_transport(endpoint, ca_file=str(certs.ca)) is with_ca
    assert shared_transport(endpoint, ca_file=str(certs.other_ca)) is not with_ca
    assert shared_transport(endpoint) is not with_ca  # nothing configured: the default roots
    assert shared_transport("grpc://127.0.0.1:1") is shared_transport("grpc://127.0.0.1:1", max_workers=4)


# -- the server command and the runtime end to end ---------------------------------------------------


def test_server_flags_are_checked(certs: Certs, tmp_path: Path) -> None:
    from flamepy_core.engine.__main__ import main

    # Settings that cannot fit are refused before anything starts, with argparse's exit code.
    assert main(["--home", str(tmp_path), "--tls-cert", str(certs.server_cert)]) == 2  # not the default's transport
    assert main(["--home", str(tmp_path), "--tls-client-ca", str(certs.ca)]) == 2
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLAME_")}
    for extra, needle in (
        (["--listen", "https://127.0.0.1:0"], "--tls-cert"),
        (["--listen", "https://127.0.0.1:0", "--tls-cert", str(certs.server_cert)], "--tls-key"),
        (["--listen", "grpc://127.0.0.1:0", "--tls-cert", str(certs.server_cert), "--tls-key", str(certs.server_key)],
         "is not TLS"),
    ):  # fmt: skip
        argv = [sys.executable, "-m", "flamepy_core.engine", "--home", str(tmp_path / "h"), *extra]
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 2 and needle in done.stderr, done.stderr
        assert "Traceback" not in done.stderr, done.stderr
    flmctl = [sys.executable, "-m", "flamepy_core.cli.main", "server", "start", "--tls-cert", str(certs.server_cert)]
    done = subprocess.run(flmctl, env=dict(env, FLAME_HOME=str(tmp_path / "h")), capture_output=True, text=True)
    assert done.returncode == 1 and "--tls-cert" in done.stderr and "another transport" in done.stderr, done.stderr


SERVICE = """
from flamepy import service

ins = service.FlameInstance()

@ins.entrypoint
def greet(name):
    ctx = ins.context()  # the session context lives in the object cache: on the TLS endpoint
    ins.update_context({**ctx, "greeted": ctx.get("greeted", 0) + 1})
    return f"{ctx['greeting']}, {name}"

if __name__ == "__main__":
    ins.run()
"""

CLIENT = """
from flamepy.service import Session

with Session("tls-app", ctx={"greeting": "hello"}) as session:
    print(session.invoke("tls"))
    print(session.context()["greeted"])
"""


def _wait_for_endpoint(home: Path, server: subprocess.Popen[str], log: Path) -> str:
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"the server exited with {server.returncode}:\n{log.read_text()}")
        try:
            endpoint = str(json.loads((home / "server.json").read_text()).get("endpoint", ""))
        except (FileNotFoundError, ValueError):
            endpoint = ""
        if endpoint.startswith("https://"):
            return endpoint
        time.sleep(0.05)
    raise AssertionError(f"the server published no https:// endpoint within {STARTUP_S} s:\n{log.read_text()}")


@pytest.fixture
def mutual_tls_runtime(flame_env: FlameEnv, certs: Certs) -> Iterator[str]:
    """``flmctl server start --foreground`` on https:// with mutual TLS; its endpoint."""
    flame_env.env["PATH"] = os.pathsep.join([VENV_BIN, flame_env.env.get("PATH", "")])
    # The server's environment carries the certificate its instances present to reach the cache.
    server_env = dict(
        flame_env.env, FLAME_CLIENT_CERT_FILE=str(certs.client_cert), FLAME_CLIENT_KEY_FILE=str(certs.client_key)
    )
    log = flame_env.home / "tls-server.log"
    argv = [
        sys.executable, "-m", "flamepy_core.cli.main", "server", "start", "--foreground",
        "--listen", "https://127.0.0.1:0", "--idle-exit", "0",
        "--tls-cert", str(certs.server_cert), "--tls-key", str(certs.server_key),
        "--tls-client-ca", str(certs.ca), "--tls-ca", str(certs.ca),
    ]  # fmt: skip
    with open(log, "w") as out:
        server = subprocess.Popen(argv, env=server_env, stdout=out, stderr=subprocess.STDOUT, text=True)
    try:
        yield _wait_for_endpoint(flame_env.home, server, log)
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(20.0)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(5.0)


def test_the_runtime_over_mutual_tls(flame_env: FlameEnv, certs: Certs, mutual_tls_runtime: str) -> None:
    flame_env.env.update(
        FLAME_ENDPOINT=mutual_tls_runtime,
        FLAME_CA_FILE=str(certs.ca),
        FLAME_CLIENT_CERT_FILE=str(certs.client_cert),
        FLAME_CLIENT_KEY_FILE=str(certs.client_key),
    )
    flame_env.write_service("tls-app", SERVICE)  # registers it with flmctl, over https:// with the certificate
    run = flame_env.python(CLIENT)
    assert run.stdout.splitlines() == ["hello, tls", "1"], run.stdout + run.stderr
    info = json.loads((flame_env.home / "server.json").read_text())
    assert info["endpoint"] == info["cache_endpoint"] == mutual_tls_runtime

    no_cert = {"FLAME_CLIENT_CERT_FILE": "", "FLAME_CLIENT_KEY_FILE": ""}  # empty = unset
    start = time.monotonic()
    run = flame_env.python(CLIENT, check=False, extra_env=no_cert)
    assert run.returncode != 0 and "the server requires a client certificate" in run.stderr, run.stderr
    listed = flame_env.run(
        [sys.executable, "-m", "flamepy_core.cli.main", "list", "-a"], check=False, extra_env=no_cert
    )
    assert listed.returncode == 1 and "the server requires a client certificate" in listed.stderr, listed.stderr
    assert time.monotonic() - start < 30, "the refused clients took too long"
