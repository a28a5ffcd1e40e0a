"""TLS for the gRPC transport: its options, loading the PEM files, and explaining failed handshakes.

Endpoints ``grpcs://HOST:PORT`` and ``https://HOST:PORT`` are TLS. The transport options (paths of PEM
files, except the last):

* ``ca_file`` - client: the CA certificates that verify the server (default: gRPC's default roots);
* ``cert_file`` + ``key_file`` - server: its certificate (chain) and private key, required to serve TLS;
  client: its certificate for mutual TLS, presented when the server asks for one;
* ``client_ca_file`` - server: require every client to present a certificate signed by one of these CAs
  (mutual TLS); a client without one is refused during the handshake, before any handler runs;
* ``server_name_override`` - client: the name the server's certificate is checked against instead of
  the endpoint's host (a test certificate that names ``localhost`` dialled as ``127.0.0.1``, say).

The files are read and checked with Python's :mod:`ssl` when a TLS channel or server is made, so a
missing, unreadable or mismatched file is a ``FlameError(INVALID_CONFIG)`` naming the option and the
file, not an obscure handshake failure later.

gRPC reports every failed handshake as UNAVAILABLE with terse details; under TLS 1.3 a server that
refuses a client's certificate just closes the connection ("Socket closed"), exactly like a plain
server that was sent TLS. :func:`explain_unavailable` tells these cases apart - from the details, and
when they say only "closed", with one short TLS probe of the server - and says what to change.
"""

from __future__ import annotations

import os
import socket
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from flamepy_core.contracts.errors import FlameError, FlameErrorCode
from flamepy_transports.grpc.address import Address

PROBE_TIMEOUT = 1.0
"""Seconds the diagnostic probe of a failed connection may take, at most."""

CLIENT_CERT_HINT = "FLAME_CLIENT_CERT_FILE and FLAME_CLIENT_KEY_FILE"
CA_HINT = "flame.yaml tls.ca_file or FLAME_CA_FILE"
SERVER_FLAGS_HINT = "--tls-cert and --tls-key of `flmctl server start` / `python -m flamepy_core.engine`"

# Markers in gRPC's details (grpcio 1.5x-1.8x, BoringSSL).
_CLOSED_MARKERS = ("Socket closed", "Connection reset", "Broken pipe", "End of TCP stream", "Handshake read failed")
_PLAIN_PEER_MARKERS = ("WRONG_VERSION_NUMBER", "HTTP_REQUEST", "PACKET_LENGTH_TOO_LONG", "RECORD_TOO_LARGE")
_HOSTNAME_MARKERS = ("Hostname Verification", "No match found for server name", "Peer name")
_VERIFY_MARKER = "CERTIFICATE_VERIFY_FAILED"
_CLIENT_CERT_MARKERS = ("CERTIFICATE_REQUIRED", "PEER_DID_NOT_RETURN_A_CERTIFICATE", "certificate required")
_CERT_ALERT_WORDS = ("CERTIFICATE", "UNKNOWN_CA", "HANDSHAKE_FAILURE", "ACCESS_DENIED")
"""In a TLS alert the server sent the probe: it refused the client's certificate (or its absence)."""


def _config_error(message: str) -> FlameError:
    return FlameError(FlameErrorCode.INVALID_CONFIG, message)


def _path_option(name: str, value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"{name} must be a path (str or os.PathLike) or None, got {type(value).__name__}")
    text = os.fspath(value)
    if not isinstance(text, str):
        raise TypeError(f"{name} must be a text path, got {text!r}")
    if not text.strip():
        raise _config_error(f"the gRPC transport option {name} is empty; name a PEM file, or leave it out")
    return os.path.expanduser(text)


@dataclass(frozen=True)
class TlsOptions:
    """The TLS options of one :class:`~flamepy_transports.grpc.transport.GrpcTransport`, checked."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    client_ca_file: str | None = None
    server_name_override: str | None = None

    @classmethod
    def create(
        cls,
        *,
        ca_file: object = None,
        cert_file: object = None,
        key_file: object = None,
        client_ca_file: object = None,
        server_name_override: object = None,
    ) -> TlsOptions:
        """Check the option types and that ``cert_file`` and ``key_file`` come together."""
        if server_name_override is not None and (
            not isinstance(server_name_override, str) or not server_name_override.strip()
        ):
            raise _config_error(
                f"the gRPC transport option server_name_override must be a non-empty host name, "
                f"got {server_name_override!r}"
            )
        options = cls(
            ca_file=_path_option("ca_file", ca_file),
            cert_file=_path_option("cert_file", cert_file),
            key_file=_path_option("key_file", key_file),
            client_ca_file=_path_option("client_ca_file", client_ca_file),
            server_name_override=server_name_override.strip() if isinstance(server_name_override, str) else None,
        )
        if (options.cert_file is None) != (options.key_file is None):
            given, missing = ("cert_file", "key_file") if options.key_file is None else ("key_file", "cert_file")
            raise _config_error(
                f"the gRPC transport option {given} is set but {missing} is not: a TLS certificate needs its "
                f"private key (cert_file and key_file go together)"
            )
        return options

    @property
    def has_certificate(self) -> bool:
        return self.cert_file is not None


# -- loading the files ------------------------------------------------------------------------------


def _read_pem(option: str, path: str, where: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise _config_error(f"{where}: {option} {path} does not exist") from None
    except OSError as exc:
        raise _config_error(f"{where}: cannot read {option} {path}: {exc.strerror or exc}") from None
    if b"-----BEGIN " not in data:
        raise _config_error(f"{where}: {option} {path} is not a PEM file (it has no '-----BEGIN' line)")
    return data


def _read_ca(option: str, path: str, where: str) -> bytes:
    data = _read_pem(option, path, where)
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=data.decode("latin-1"))
    except (ssl.SSLError, ValueError) as exc:
        raise _config_error(f"{where}: {option} {path} holds no usable CA certificate: {exc}") from None
    return data


class _EncryptedKey(Exception):
    """Raised by the password callback: the key file is encrypted."""


def _no_password() -> str:
    raise _EncryptedKey


def _read_key_pair(options: TlsOptions, where: str) -> tuple[bytes, bytes]:
    """(private key, certificate chain) from ``key_file`` and ``cert_file``, checked to belong together."""
    assert options.cert_file is not None and options.key_file is not None
    chain = _read_pem("cert_file", options.cert_file, where)
    key = _read_pem("key_file", options.key_file, where)
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(
            options.cert_file, options.key_file, password=_no_password
        )
    except _EncryptedKey:
        raise _config_error(
            f"{where}: the key_file {options.key_file} is encrypted; gRPC needs an unencrypted private key "
            f"(decrypt it with `openssl pkey -in ENCRYPTED -out KEY` and protect the file's permissions)"
        ) from None
    except (ssl.SSLError, OSError) as exc:
        raise _config_error(
            f"{where}: cert_file {options.cert_file} and key_file {options.key_file} cannot be used as a "
            f"certificate and its private key: {exc}"
        ) from None
    return key, chain


@dataclass(frozen=True)
class ClientTls:
    """What a TLS channel needs: the PEM data, read once when the channel is made, and the options."""

    options: TlsOptions
    root_certificates: bytes | None
    private_key: bytes | None
    certificate_chain: bytes | None

    def credentials(self) -> Any:
        """Fresh ``grpc.ChannelCredentials`` (made per ``grpc.Channel``, so a forked child builds its own)."""
        return grpc.ssl_channel_credentials(
            root_certificates=self.root_certificates,
            private_key=self.private_key,
            certificate_chain=self.certificate_chain,
        )

    def channel_options(self) -> list[tuple[str, Any]]:
        name = self.options.server_name_override
        return [("grpc.ssl_target_name_override", name)] if name else []

    @property
    def trust(self) -> str:
        """What verifies the server, for messages."""
        if self.options.ca_file is not None:
            return f"the CA in ca_file {self.options.ca_file}"
        return "gRPC's default root certificates (no ca_file is set)"


def client_tls(options: TlsOptions, endpoint: str) -> ClientTls:
    """Read and check what a TLS channel to ``endpoint`` uses; ``FlameError(INVALID_CONFIG)`` if unusable."""
    where = f"cannot connect to {endpoint} with TLS"
    root = _read_ca("ca_file", options.ca_file, where) if options.ca_file is not None else None
    key, chain = _read_key_pair(options, where) if options.has_certificate else (None, None)
    return ClientTls(options, root, key, chain)


def server_credentials(options: TlsOptions, endpoint: str) -> Any:
    """``grpc.ServerCredentials`` for serving ``endpoint``; mutual TLS when ``client_ca_file`` is set."""
    where = f"cannot serve TLS on {endpoint}"
    if not options.has_certificate:
        raise _config_error(
            f"{where}: the server needs its certificate and private key; set the gRPC transport options "
            f"cert_file and key_file ({SERVER_FLAGS_HINT})"
        )
    key, chain = _read_key_pair(options, where)
    client_ca = None
    if options.client_ca_file is not None:
        client_ca = _read_ca("client_ca_file", options.client_ca_file, where)
    return grpc.ssl_server_credentials(
        [(key, chain)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


# -- explaining a failed connection -----------------------------------------------------------------


@dataclass(frozen=True)
class Diagnosis:
    """Why a connection failed, and the code that says it best (UNAVAILABLE or UNAUTHENTICATED)."""

    code: FlameErrorCode
    reason: str


_ACCEPTED = "accepted"  # TLS handshake done and the server spoke (HTTP/2 settings)
_CLOSED = "closed"  # TLS handshake done, then the server hung up without a word: it refused us
_PLAIN = "plain"  # the server answered the TLS hello in plain text: it does not speak TLS
_TLS_ALERT = "alert"  # the server sent a TLS alert: it speaks TLS and refused something


def _probe(address: Address, cert: TlsOptions | None, timeout: float = PROBE_TIMEOUT) -> tuple[str, str] | None:
    """One TLS handshake with the server, then one read: how the server treats this client.

    The server's certificate is not checked here (gRPC already judged it); what is observed is whether
    the server speaks TLS and whether it keeps a client presenting ``cert``'s certificate (or none).
    Returns (verdict, detail), or None when nothing could be learnt within ``timeout``.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    if cert is not None and cert.cert_file is not None and cert.key_file is not None:
        try:
            context.load_cert_chain(cert.cert_file, cert.key_file, password=_no_password)
        except (_EncryptedKey, ssl.SSLError, OSError):
            return None
    deadline = time.monotonic() + timeout
    name = (cert.server_name_override if cert is not None else None) or address.host
    try:
        with socket.create_connection((address.host, address.port), timeout=timeout) as raw:
            raw.settimeout(max(0.05, deadline - time.monotonic()))
            with context.wrap_socket(raw, server_hostname=name) as conn:
                conn.settimeout(max(0.05, deadline - time.monotonic()))
                try:
                    data = conn.recv(1)
                except ssl.SSLError as exc:
                    return (_TLS_ALERT, exc.reason or str(exc)) if "ALERT" in str(exc.reason) else (_CLOSED, str(exc))
                except (ConnectionResetError, BrokenPipeError):
                    return _CLOSED, "connection reset"
                return (_ACCEPTED, "") if data else (_CLOSED, "closed")
    except ssl.SSLError as exc:
        reason = str(exc.reason or exc)
        if "ALERT" in reason:
            return _TLS_ALERT, reason
        if any(marker in reason for marker in _PLAIN_PEER_MARKERS):
            return _PLAIN, reason
        return None
    except OSError:  # refused, unreachable, timed out, reset during the handshake: nothing learnt
        return None


def _looks_closed(details: str) -> bool:
    return any(marker in details for marker in _CLOSED_MARKERS)


def _after(marker: str, details: str) -> str:
    """The text gRPC put after ``marker`` (the OpenSSL reason), without its trailing status noise."""
    rest = details.split(marker, 1)[1].lstrip(": ").strip()
    return rest.removesuffix(": OK").strip() or marker


def _client_certificate_refused(tls: ClientTls, detail: str = "") -> Diagnosis:
    if not tls.options.has_certificate:
        return Diagnosis(
            FlameErrorCode.UNAUTHENTICATED,
            f"the server requires a client certificate (mutual TLS) and this client presents none; set the "
            f"client certificate and key (gRPC transport options cert_file and key_file, or {CLIENT_CERT_HINT})",
        )
    said = f" ({detail})" if detail and detail not in ("closed", "connection reset") else ""
    return Diagnosis(
        FlameErrorCode.UNAUTHENTICATED,
        f"the server refused this client's certificate{said} (cert_file {tls.options.cert_file}); it must be "
        f"signed by a CA the server trusts (its client CA), allow client authentication (extendedKeyUsage "
        f"clientAuth) and be within its validity dates",
    )


def _not_tls(address: Address) -> Diagnosis:
    return Diagnosis(
        FlameErrorCode.UNAVAILABLE,
        f"the server at {address.target} does not speak TLS (a plain gRPC server?): connect with grpc:// or "
        f"http:// instead of {address.scheme}://, or start the server with a certificate",
    )


def explain_unavailable(address: Address, tls: ClientTls | None, details: str) -> Diagnosis | None:
    """Why a connection to ``address`` failed when TLS is the likely cause, else ``None``.

    ``tls`` is the channel's TLS (``None`` for a plain channel); ``details`` are gRPC's status details.
    Costs nothing unless the details say the connection was closed; then one probe of at most
    :data:`PROBE_TIMEOUT` seconds.
    """
    if address.is_unix:
        return None
    if tls is None:
        # A plain client whose connection is closed at once may be talking to a TLS server.
        if _looks_closed(details):
            verdict = _probe(address, None)
            if verdict is not None and verdict[0] in (_ACCEPTED, _CLOSED, _TLS_ALERT):
                return Diagnosis(
                    FlameErrorCode.UNAVAILABLE,
                    f"the server at {address.target} speaks TLS: connect with grpcs:// or https:// instead of "
                    f"{address.scheme}:// (with the CA that signed its certificate in ca_file, {CA_HINT})",
                )
        return None
    if any(marker in details for marker in _PLAIN_PEER_MARKERS):
        return _not_tls(address)
    if any(marker in details for marker in _HOSTNAME_MARKERS):
        name = tls.options.server_name_override or address.host
        return Diagnosis(
            FlameErrorCode.UNAVAILABLE,
            f"the server's certificate does not name '{name}': connect with a host name or IP address that its "
            f"certificate lists (subjectAltName), or set the gRPC transport option server_name_override",
        )
    if _VERIFY_MARKER in details:
        return Diagnosis(
            FlameErrorCode.UNAVAILABLE,
            f"the server's certificate could not be verified ({_after(_VERIFY_MARKER, details)}) with "
            f"{tls.trust}; set ca_file ({CA_HINT}) to the CA certificate that signed the server's",
        )
    if any(marker in details for marker in _CLIENT_CERT_MARKERS):
        return _client_certificate_refused(tls)
    if _looks_closed(details):
        verdict = _probe(address, tls.options)
        if verdict is None:
            return None
        kind, detail = verdict
        if kind == _PLAIN:
            return _not_tls(address)
        if kind == _CLOSED or (kind == _TLS_ALERT and any(word in detail for word in _CERT_ALERT_WORDS)):
            return _client_certificate_refused(tls, detail)
    return None
