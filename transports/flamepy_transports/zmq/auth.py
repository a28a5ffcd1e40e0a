"""CURVE keys and the ZAP handler that admits only the configured client keys.

Keys are the certificate files ``zmq.auth.create_certificates(DIR, NAME)`` writes: ``NAME.key`` holds the
public key (hand it out), ``NAME.key_secret`` holds both keys (keep it private)::

    python -c "import zmq.auth; zmq.auth.create_certificates('keys', 'server')"
    python -c "import zmq.auth; zmq.auth.create_certificates('keys', 'client')"

The server reads its ``.key_secret`` and the allowed clients' ``.key`` files; a client reads its own
``.key_secret`` and the server's ``.key``.

The ZAP handler is not a thread of its own: the server's I/O thread polls the ZAP socket next to its
ROUTER, answers each request from an in-memory set of allowed keys, and binds it *before* the ROUTER, so
there is never a moment when libzmq finds no ZAP handler (libzmq would then admit every CURVE client).
"""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass

import zmq
import zmq.utils.z85

log = logging.getLogger(__name__)

ZAP_ENDPOINT = "inproc://zeromq.zap.01"
ZAP_DOMAIN = b"flamepy"


@dataclass(frozen=True)
class CurveServerKeys:
    """The server's key pair (z85) and the raw 32-byte public keys of the clients it admits."""

    public: bytes
    secret: bytes
    allowed: frozenset[bytes]


@dataclass(frozen=True)
class CurveClientKeys:
    """The server's public key and the client's own key pair, all z85."""

    server_public: bytes
    public: bytes
    secret: bytes


def _load(path: str, *, need_secret: bool, what: str) -> tuple[bytes, bytes | None]:
    # pyzmq's certificate reader, imported only when keys are configured: it costs a process without
    # CURVE (every service instance) a noticeable part of its start.
    import zmq.auth

    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read the {what} from '{path}': {exc}") from exc
    if need_secret and not secret:
        raise ValueError(
            f"the {what} '{path}' holds no secret key; give the '.key_secret' file written by "
            f"zmq.auth.create_certificates"
        )
    return public, secret


def load_server_keys(
    secret_key_file: str, clients_dir: str | None, client_files: Iterable[str] | None
) -> CurveServerKeys:
    public, secret = _load(secret_key_file, need_secret=True, what="server secret key file")
    files: list[str] = list(client_files or ())
    if clients_dir is not None:
        if not os.path.isdir(clients_dir):
            raise ValueError(f"curve_client_public_keys_dir '{clients_dir}' is not a directory")
        files.extend(sorted(glob.glob(os.path.join(clients_dir, "*.key"))))
    allowed = frozenset(
        zmq.utils.z85.decode(_load(f, need_secret=False, what="client public key file")[0]) for f in files
    )
    if not allowed:
        raise ValueError(
            "CURVE is on (curve_server_secret_key_file) but no client key is allowed: give "
            "curve_client_public_keys_dir (a directory of '.key' files) or curve_client_public_key_files"
        )
    assert secret is not None
    return CurveServerKeys(public=public, secret=secret, allowed=allowed)


def load_client_keys(server_public_key_file: str, client_secret_key_file: str) -> CurveClientKeys:
    server_public, _ = _load(server_public_key_file, need_secret=False, what="server public key file")
    public, secret = _load(client_secret_key_file, need_secret=True, what="client secret key file")
    assert secret is not None
    return CurveClientKeys(server_public=server_public, public=public, secret=secret)


def apply_server(sock: zmq.Socket[bytes], keys: CurveServerKeys) -> None:
    sock.setsockopt(zmq.CURVE_SERVER, 1)
    sock.setsockopt(zmq.CURVE_PUBLICKEY, keys.public)
    sock.setsockopt(zmq.CURVE_SECRETKEY, keys.secret)
    sock.setsockopt(zmq.ZAP_DOMAIN, ZAP_DOMAIN)


def apply_client(sock: zmq.Socket[bytes], keys: CurveClientKeys) -> None:
    sock.setsockopt(zmq.CURVE_SERVERKEY, keys.server_public)
    sock.setsockopt(zmq.CURVE_PUBLICKEY, keys.public)
    sock.setsockopt(zmq.CURVE_SECRETKEY, keys.secret)


class ZapHandler:
    """Answers libzmq's ZAP requests (RFC 27) on a REP socket owned by the server's I/O thread."""

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]], allowed: frozenset[bytes]) -> None:
        self._allowed = allowed
        self.socket: zmq.Socket[bytes] = ctx.socket(zmq.REP)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.bind(ZAP_ENDPOINT)
        self.denied = 0

    def handle_pending(self) -> None:
        """Answer every ZAP request waiting on the socket."""
        while True:
            try:
                frames = self.socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self.socket.send_multipart(self._answer(frames))

    def _answer(self, frames: list[bytes]) -> list[bytes]:
        if len(frames) < 6:
            return [b"1.0", frames[1] if len(frames) > 1 else b"", b"500", b"malformed ZAP request", b"", b""]
        version, request_id, _domain, address, _identity, mechanism, *credentials = frames
        if version != b"1.0":
            return [b"1.0", request_id, b"500", b"unsupported ZAP version", b"", b""]
        if mechanism == b"CURVE" and len(credentials) == 1 and credentials[0] in self._allowed:
            return [b"1.0", request_id, b"200", b"OK", zmq.utils.z85.encode(credentials[0]), b""]
        self.denied += 1
        key = zmq.utils.z85.encode(credentials[0]).decode() if len(credentials) == 1 else "?"
        log.warning(
            "refused a %s client from %s with public key %s: not an allowed key",
            mechanism.decode(errors="replace"),
            address.decode(errors="replace"),
            key,
        )
        return [b"1.0", request_id, b"400", b"client key not allowed", b"", b""]

    def close(self) -> None:
        self.socket.close(linger=0)


def _write_key(path: str, public: bytes, secret: bytes | None, mode: int) -> None:
    """A certificate file in the format ``zmq.auth.load_certificate`` reads, created with ``mode``."""
    lines = [
        "# flamepy CURVE " + ("key pair: keep it private" if secret else "public key: hand it out"),
        "metadata",
        "curve",
        f'    public-key = "{public.decode("ascii")}"',
    ]
    if secret is not None:
        lines.append(f'    secret-key = "{secret.decode("ascii")}"')
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w") as fh:
        fh.write("\n".join(lines) + "\n")


def make_key_pair(directory: str, name: str, *, reuse: bool) -> tuple[str, str]:
    """``(<name>.key, <name>.key_secret)`` in ``directory``: a new CURVE key pair, the secret file 0600.

    With ``reuse`` an existing pair is returned as it is; otherwise existing files are an error (a key in
    use is never overwritten).
    """
    os.makedirs(directory, exist_ok=True)
    public_path = os.path.join(directory, f"{name}.key")
    secret_path = os.path.join(directory, f"{name}.key_secret")
    present = [p for p in (public_path, secret_path) if os.path.exists(p)]
    if present and reuse and len(present) == 2:
        return public_path, secret_path
    if present:
        raise FileExistsError(f"{' and '.join(present)} already exist; choose another name or directory")
    public, secret = zmq.curve_keypair()
    _write_key(secret_path, public, secret, 0o600)
    _write_key(public_path, public, None, 0o644)
    return public_path, secret_path


def public_key_file(secret_key_file: str, directory: str) -> str:
    """A public-key file (``server.key`` in ``directory``) for the key pair in ``secret_key_file``."""
    public, _ = _load(secret_key_file, need_secret=True, what="server secret key file")
    path = os.path.join(directory, "server.key")
    if os.path.exists(path):
        if _load(path, need_secret=False, what="server public key file")[0] == public:
            return path
        os.unlink(path)
    _write_key(path, public, None, 0o644)
    return path
