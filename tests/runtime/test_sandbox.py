"""``flamepy.tools.Sandbox``: checks made before any call, and real snippets on the embedded server."""

from __future__ import annotations

import json
from typing import Any

import pytest

from flamepy import ResourceRequirement
from flamepy.tools import Sandbox, SandboxAttr, SandboxOutput
from flamepy.tools import sandbox as sandbox_module
from flamepy_core.contracts.errors import FlameError, FlameErrorCode


class FakeSession:
    """Records what the sandbox sends; stands in where no server is needed."""

    def __init__(self, application: str = "flmexec", common_data: bytes | None = None) -> None:
        self.id = "flmexec-abc123"
        self.application = application
        self._common = common_data
        self.sent: list[bytes | None] = []
        self.reply: bytes | None = json.dumps({"data": list(b"out")}).encode()
        self.closed = 0

    def common_data(self) -> bytes | None:
        return self._common

    def invoke(self, data: bytes | None) -> bytes | None:
        self.sent.append(data)
        return self.reply

    def close(self) -> None:
        self.closed += 1


def test_create_validates_before_any_call_and_normalises(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict[str, Any]] = []

    def fake_create(application: str, **kwargs: Any) -> FakeSession:
        calls.append({"application": application, **kwargs})
        return FakeSession()

    monkeypatch.setattr(sandbox_module, "create_session", fake_create)
    for bad in ("python", SandboxAttr("java"), SandboxAttr(" "), SandboxAttr(3)):  # type: ignore[arg-type]
        with pytest.raises(FlameError) as err:
            Sandbox.create(bad)  # type: ignore[arg-type]
        assert err.value.code == FlameErrorCode.INVALID_ARGUMENT
    assert calls == []
    resreq = ResourceRequirement(cpu=1, memory=1024)
    attr = SandboxAttr(" Python ", min_instances=1, max_instances=2, resreq=resreq)
    box = Sandbox.create(attr)
    assert box.attr.language == "python" and box.attr.resreq == resreq and box.attr.resreq is not resreq
    [call] = calls
    assert call["application"] == "flmexec" and call["resreq"] is not resreq and call["resreq"] == resreq
    assert (call["min_instances"], call["max_instances"]) == (1, 2)
    assert json.loads(call["common_data"]) == {
        "language": "python",
        "runtime": None,
        "min_instances": 1,
        "max_instances": 2,
        "resreq": {"cpu": 1, "memory": 1024, "gpu": 0},
    }
    with pytest.raises(AttributeError):
        box.attr.language = "shell"  # type: ignore[misc]  # frozen


def test_requests_outputs_and_closing() -> None:
    session = FakeSession()
    box = Sandbox(session, SandboxAttr("shell", runtime="bash"))  # type: ignore[arg-type]
    assert box.run_code("echo hello", input=b"in") == SandboxOutput(b"out")
    assert json.loads(session.sent[-1]) == {
        "language": "shell",
        "runtime": "bash",
        "code": "echo hello",
        "input": [105, 110],
    }
    no_runtime = Sandbox(session, SandboxAttr("python"))  # type: ignore[arg-type]
    no_runtime.run_code("pass")
    assert json.loads(session.sent[-1]) == {"language": "python", "code": "pass", "input": None}
    with pytest.raises(FlameError) as err:
        box.run_code("x", input=bytearray(b"no"))  # type: ignore[arg-type]
    assert err.value.code == FlameErrorCode.INVALID_ARGUMENT
    session.reply = None
    assert box.run_code("true").data == b""
    session.reply = b"not json"
    with pytest.raises(FlameError) as err:
        box.run_code("true")
    assert err.value.code == FlameErrorCode.INTERNAL
    assert SandboxOutput("héllo".encode()).text() == "héllo"
    box.close()
    box.close()
    assert session.closed == 1
    with pytest.raises(FlameError, match="sandbox is closed") as err:
        box.run_code("x")
    assert err.value.code == FlameErrorCode.INVALID_STATE
    with pytest.raises(FlameError, match="sandbox is closed"):
        _ = box.sandbox_id
    assert box.attr.language == "shell"  # still readable
    future = box.submit_code("x")
    assert isinstance(future.exception(timeout=1), FlameError)


def test_open_refuses_what_is_not_a_sandbox(monkeypatch: pytest.MonkeyPatch) -> None:
    sessions = {
        "other": FakeSession(application="flmping"),
        "empty": FakeSession(common_data=None),
        "junk": FakeSession(common_data=b"{"),
        "nolang": FakeSession(common_data=b'{"runtime": null}'),
        "badlang": FakeSession(common_data=b'{"language": "ruby"}'),
        "good": FakeSession(common_data=b'{"language": "shell", "runtime": "sh", "resreq": {"cpu": 1}}'),
    }
    monkeypatch.setattr(sandbox_module, "open_session", lambda sid: sessions[sid])
    for sid in ("other", "empty", "junk", "nolang", "badlang"):
        with pytest.raises(FlameError) as err:
            Sandbox.open(sid)
        assert err.value.code == FlameErrorCode.INVALID_ARGUMENT, sid
    good = Sandbox.open("good")
    assert good.attr == SandboxAttr("shell", runtime="sh", resreq=ResourceRequirement(cpu=1))


def test_sandbox_end_to_end(flame_env) -> None:  # type: ignore[no-untyped-def]
    with Sandbox.create(SandboxAttr("python")) as box:
        assert box.sandbox_id.startswith("flmexec-")
        assert box.run_code("print(1 + 2)").text() == "3\n"
        assert box.run_code("import sys; print(sys.stdin.read().upper())", input=b"hello").text() == "HELLO\n"
        futures = [box.submit_code(f"print({i} * {i})") for i in range(4)]
        assert [f.result(timeout=60).text() for f in futures] == ["0\n", "1\n", "4\n", "9\n"]
        # A script that crashes still answers its stdout (Flame's rule); stderr is not part of it.
        assert box.run_code("print('before'); 1 / 0").text() == "before\n"
        again = Sandbox.open(box.sandbox_id)
        assert again.attr == box.attr
        assert again.run_code("print('from the other handle')").text() == "from the other handle\n"
        sandbox_id = box.sandbox_id
    assert box.closed
    with pytest.raises(FlameError) as err:
        Sandbox.open(sandbox_id)
    assert err.value.code == FlameErrorCode.INVALID_ARGUMENT and "not open" in err.value.message
    with pytest.raises(FlameError) as err:
        Sandbox.open("flmexec-nosuch")
    assert err.value.code == FlameErrorCode.NOT_FOUND
    with Sandbox.create(SandboxAttr("python", runtime="3.99")) as missing:
        with pytest.raises(FlameError, match=r"Python 3\.99 is not available") as err:
            missing.run_code("print(1)")
        assert err.value.code == FlameErrorCode.INTERNAL
    with Sandbox.create(SandboxAttr("shell")) as shell:
        assert shell.run_code("echo hello; echo to-stderr >&2").text() == "hello\n"
        assert shell.run_code("tr a-z A-Z", input=b"shout").text() == "SHOUT"
