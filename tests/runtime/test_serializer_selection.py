"""Choosing the serializer, end to end: real servers, real instance processes (``flame_env``).

An application registered with ``serializer: json`` is served and called with json without the client
saying so; ``FLAME_SERIALIZER`` switches a whole flow (context included); a client and a service that
disagree get an error naming both serializers; a value the serializer cannot carry fails in the caller
before any task exists.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import flamepy
from flamepy.service import Session
from flamepy_core.client.serializers import forget_application_serializers
from flamepy_core.contracts.errors import FlameError, FlameErrorCode

REPORTING_SERVICE = """
import os
from flamepy import service

ins = service.FlameInstance({keyword})


@ins.entrypoint
def handle(req):
    history = ins.context() or []
    history.append(req["text"])
    ins.update_context(history)
    return {{
        "text": req["text"].upper(),
        "count": len(history),
        "serializer": ins.serializer.name,
        "env": os.environ.get("FLAME_SERIALIZER"),
    }}


if __name__ == "__main__":
    ins.run()
"""


def reporting_service(keyword: str = "") -> str:
    """A service that echoes, keeps a history in the session context, and says which serializer it used."""
    return REPORTING_SERVICE.format(keyword=keyword)


@pytest.fixture(autouse=True)
def _fresh_lookups() -> Iterator[None]:
    forget_application_serializers()
    yield
    forget_application_serializers()


def task_count(session_id: str) -> int:
    s = flamepy.get_session(session_id)
    return s.pending + s.running + s.succeed + s.failed + s.cancelled


def test_application_registered_with_json_is_used_by_a_client_that_names_no_serializer(flame_env):
    flame_env.write_service("json-app", reporting_service(), extra_spec="serializer: json\n")
    app = flamepy.get_application("json-app")
    assert app is not None and (app.environments or {}).get("FLAME_SERIALIZER") == "json"

    with Session("json-app", ctx=[]) as session:
        assert session.serializer.name == "json"
        first = session.invoke({"text": "hello"})
        assert first == {"text": "HELLO", "count": 1, "serializer": "json", "env": "json"}
        assert session.run({"text": "again"}).result(timeout=30)["count"] == 2
        assert session.context() == ["hello", "again"]
        sid = session.id()
        assert sid is not None
        # Reopening by id finds the serializer through the session's application.
        reopened = Session(session_id=sid)
        assert reopened.serializer.name == "json"
        assert reopened.invoke({"text": "third"})["count"] == 3


def test_flame_serializer_msgpack_switches_the_whole_flow(flame_env, monkeypatch):
    # Set before anything starts: the server (started by flmctl register) and its instances inherit it.
    flame_env.env["FLAME_SERIALIZER"] = "msgpack"
    monkeypatch.setenv("FLAME_SERIALIZER", "msgpack")
    flame_env.write_service("echo-mp", reporting_service())

    with Session("echo-mp", ctx=[]) as session:
        assert session.serializer.name == "msgpack"
        assert session.invoke({"text": "hello"}) == {
            "text": "HELLO",
            "count": 1,
            "serializer": "msgpack",
            "env": "msgpack",
        }
        futures = [session.run({"text": f"t{i}"}) for i in range(5)]
        assert sorted(f.result(timeout=30)["count"] for f in futures) == [2, 3, 4, 5, 6]
        assert session.context()[0] == "hello" and len(session.context()) == 6


def test_client_forcing_json_against_a_cloudpickle_service_gets_an_error_naming_both(flame_env):
    flame_env.write_service("plain-app", reporting_service())
    with Session("plain-app", serializer="json") as session:
        with pytest.raises(FlameError) as info:
            session.invoke({"text": "hello"}, timeout=60)
        message = info.value.message
        assert "the client's request was encoded with 'json' but this service uses 'cloudpickle'" in message
        assert "choose the same serializer on both sides" in message
    # The default client still works against the same service.
    with Session("plain-app", ctx=[]) as session:
        assert session.invoke({"text": "ok"})["serializer"] == "cloudpickle"


def test_cloudpickle_client_against_a_json_service_gets_an_error_naming_both(flame_env):
    # The service insists on json in code; the application does not say so, so the client uses the default.
    flame_env.write_service("json-in-code", reporting_service('serializer="json"'))
    with Session("json-in-code") as session:
        assert session.serializer.name == "cloudpickle"
        with pytest.raises(FlameError) as info:
            session.invoke({"text": "hello"}, timeout=60)
        message = info.value.message
        assert (
            "the client's request was encoded with 'cloudpickle' (plain bytes, Flame's default) "
            "but this service uses 'json' (from argument)"
        ) in message, message


def test_unencodable_value_fails_in_the_caller_before_anything_is_sent(flame_env):
    flame_env.write_service("json-strict", reporting_service(), extra_spec="serializer: json\n")
    with Session("json-strict") as session:
        sid = session.id()
        assert sid is not None
        for submit in (session.invoke, session.run):
            with pytest.raises(FlameError) as info:
                submit(lambda: 1)
            assert info.value.code == FlameErrorCode.INVALID_ARGUMENT
            assert "serializer 'json' cannot encode a value of type function" in info.value.message
        with pytest.raises(FlameError, match="serializer 'json' cannot encode a value of type tuple"):
            session.invoke(("a", "tuple"))
        assert task_count(sid) == 0
        assert list(flamepy.get_session(sid).list_tasks()) == []

    # A context the serializer cannot carry fails before the session is created.
    before = {s.id for s in flamepy.list_sessions()}
    with pytest.raises(FlameError, match="serializer 'json' cannot encode a value of type set"):
        Session("json-strict", ctx={1, 2})
    assert {s.id for s in flamepy.list_sessions()} == before
