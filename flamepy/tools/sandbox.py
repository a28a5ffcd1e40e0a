"""``Sandbox``: run Python or shell snippets remotely, through the built-in ``flmexec`` application.

A sandbox is an ``flmexec`` session whose common data records its attributes as JSON, so another process
can ``Sandbox.open(sandbox_id)`` it. Each ``run_code`` is one task: the request is flmexec's JSON
(``language``, ``code``, ``input``, ``runtime``), the answer the script's stdout. Checks that need no
server (types, the language, a closed sandbox) fail before any call, with ``FlameError`` codes as
Flame's ``flamepy.tools`` uses them.
"""

from __future__ import annotations

import dataclasses
import json
from concurrent.futures import Future
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from flamepy_core.client.api import create_session, open_session
from flamepy_core.client.session import Session
from flamepy_core.contracts.errors import FlameError, FlameErrorCode
from flamepy_core.model import ResourceRequirement

FLMEXEC = "flmexec"
LANGUAGES = ("python", "shell")

__all__ = ["Sandbox", "SandboxAttr", "SandboxOutput"]


@dataclass(frozen=True)
class SandboxAttr:
    """What a sandbox runs: ``language`` (python or shell), ``runtime`` (a Python version or a shell),
    how many instances it keeps (``min_instances``) or may use (``max_instances``), and ``resreq``."""

    language: str
    runtime: str | None = None
    min_instances: int = 0
    max_instances: int | None = None
    resreq: ResourceRequirement | None = None


@dataclass
class SandboxOutput:
    """What a snippet wrote to stdout."""

    data: bytes

    def text(self, encoding: str = "utf-8") -> str:
        return self.data.decode(encoding)


def _invalid(message: str) -> FlameError:
    return FlameError(FlameErrorCode.INVALID_ARGUMENT, message)


def _normalised(attr: Any) -> SandboxAttr:
    if not isinstance(attr, SandboxAttr):
        raise _invalid(f"Sandbox.create needs a SandboxAttr, got {type(attr).__name__}")
    if not isinstance(attr.language, str) or attr.language.strip().lower() not in LANGUAGES:
        raise _invalid(f"unsupported sandbox language {attr.language!r}: use one of {', '.join(LANGUAGES)}")
    if attr.runtime is not None and not isinstance(attr.runtime, str):
        raise _invalid(f"runtime must be a string or None, got {attr.runtime!r}")
    resreq = attr.resreq
    if resreq is not None:
        if not isinstance(resreq, ResourceRequirement):
            raise _invalid(f"resreq must be a ResourceRequirement or None, got {type(resreq).__name__}")
        resreq = dataclasses.replace(resreq)  # the caller's object stays theirs
    return dataclasses.replace(attr, language=attr.language.strip().lower(), resreq=resreq)


def _encode_attr(attr: SandboxAttr) -> bytes:
    """The sandbox's common data: its attributes as JSON."""
    resreq = None if attr.resreq is None else dataclasses.asdict(attr.resreq)
    doc = {
        "language": attr.language,
        "runtime": attr.runtime,
        "min_instances": attr.min_instances,
        "max_instances": attr.max_instances,
        "resreq": resreq,
    }
    return json.dumps(doc).encode()


def _decode_attr(data: bytes | None, sandbox_id: str) -> SandboxAttr:
    where = f"session {sandbox_id} is not a sandbox"
    if not data:
        raise _invalid(f"{where}: it has no common data")
    try:
        doc = json.loads(data)
    except ValueError:
        raise _invalid(f"{where}: its common data is not JSON") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("language"), str):
        raise _invalid(f"{where}: its common data has no language")
    resreq = doc.get("resreq")
    try:
        return _normalised(
            SandboxAttr(
                language=doc["language"],
                runtime=doc.get("runtime"),
                min_instances=int(doc.get("min_instances") or 0),
                max_instances=doc.get("max_instances"),
                resreq=ResourceRequirement(**resreq) if isinstance(resreq, dict) else None,
            )
        )
    except (TypeError, ValueError) as exc:
        raise _invalid(f"{where}: {exc}") from None


def _encode_script(attr: SandboxAttr, code: str, input: bytes | None) -> bytes:
    """flmexec's request for one snippet."""
    request: dict[str, Any] = {"language": attr.language, "code": code, "input": None if input is None else list(input)}
    if attr.runtime is not None:
        request["runtime"] = attr.runtime
    return json.dumps(request, separators=(",", ":")).encode()


def _decode_output(output: bytes | None) -> SandboxOutput:
    """flmexec's answer ``{"data": [bytes]}``; no output is empty output."""
    if output is None:
        return SandboxOutput(b"")
    try:
        doc = json.loads(output)
        data = bytes(doc["data"])
    except (ValueError, TypeError, KeyError) as exc:
        raise FlameError(
            FlameErrorCode.INTERNAL,
            f'flmexec answered {len(output)} bytes that are not {{"data": [bytes]}} JSON ({exc}); '
            f"is the application named flmexec the built-in one?",
        ) from None
    return SandboxOutput(data)


class Sandbox:
    """A remote place to run snippets; a context manager that closes it on exit."""

    def __init__(self, session: Session, attr: SandboxAttr) -> None:
        self._session = session
        self._attr = attr
        self._closed = False

    @classmethod
    def create(cls, attr: SandboxAttr) -> Sandbox:
        """A new sandbox (an ``flmexec`` session) with ``attr``."""
        attr = _normalised(attr)
        session = create_session(
            FLMEXEC,
            common_data=_encode_attr(attr),
            min_instances=attr.min_instances,
            max_instances=attr.max_instances,
            resreq=None if attr.resreq is None else dataclasses.replace(attr.resreq),
        )
        return cls(session, attr)

    @classmethod
    def open(cls, sandbox_id: str) -> Sandbox:
        """The open sandbox ``sandbox_id``: NOT_FOUND if there is none, INVALID_ARGUMENT if it is closed
        ("not open", as Flame's server answers) or is not a sandbox."""
        try:
            session = open_session(sandbox_id)
        except FlameError as exc:
            if exc.code == FlameErrorCode.INVALID_STATE:
                raise FlameError(FlameErrorCode.INVALID_ARGUMENT, exc.message) from exc
            raise
        if session.application != FLMEXEC:
            raise _invalid(f"session {sandbox_id} belongs to application {session.application}, not {FLMEXEC}")
        return cls(session, _decode_attr(session.common_data(), sandbox_id))

    @property
    def sandbox_id(self) -> str:
        self._check_open()
        return self._session.id

    @property
    def attr(self) -> SandboxAttr:
        return self._attr

    @property
    def closed(self) -> bool:
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise FlameError(FlameErrorCode.INVALID_STATE, "sandbox is closed")

    def _request(self, code: str, input: bytes | None) -> bytes:
        self._check_open()
        if not isinstance(code, str):
            raise _invalid(f"code must be a string, got {type(code).__name__}")
        if input is not None and type(input) is not bytes:
            raise _invalid(f"input must be bytes or None, got {type(input).__name__}")
        return _encode_script(self._attr, code, input)

    def run_code(self, code: str, input: bytes | None = None) -> SandboxOutput:
        """Run ``code`` (``input`` as its stdin) and return what it wrote to stdout."""
        request = self._request(code, input)
        return _decode_output(self._session.invoke(request))

    def submit_code(self, code: str, input: bytes | None = None) -> Future[SandboxOutput]:
        """Like :meth:`run_code`, without waiting; every error lands in the future."""
        result: Future[SandboxOutput] = Future()
        try:
            request = self._request(code, input)  # closed and bad input are checked before any call
            task = self._session.run(request)
        except BaseException as exc:
            result.set_exception(exc)
            return result

        def settle(done: Future[bytes | None]) -> None:
            try:
                result.set_result(_decode_output(done.result()))
            except BaseException as exc:
                result.set_exception(exc)

        task.add_done_callback(settle)
        return result

    def close(self) -> None:
        """Close the sandbox (its session); it cannot be used or reopened afterwards. Repeat calls do nothing."""
        if self._closed:
            return
        self._closed = True
        self._session.close()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"Sandbox({self._session.id!r}, language={self._attr.language!r}, {state})"
