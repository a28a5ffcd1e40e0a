"""The Flight extra stays optional: nothing imports pyarrow unless a Flight endpoint is used.

These tests need no pyarrow: they run in every environment, including one without the extra, and
check the endpoint rule and the payload translation, which are plain Python.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import cloudpickle
import pytest

from flamepy_core.client.objects import decode_value, encode_value
from flamepy_core.contracts.errors import FlameError, FlameErrorCode
from flamepy_core.plugins import get_registry
from flamepy_core.wire.flight import cache_protocol, flight_location, uses_flight
from flamepy_core.wire.flight.payload import TAG_CLOUDPICKLE, from_flame, to_flame, to_store, to_wire


def _run(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    import os

    full_env = {k: v for k, v in os.environ.items() if not k.startswith("FLAME_")}
    full_env.update(env)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=60, env=full_env
    )


def test_importing_flamepy_leaves_pyarrow_out():
    proc = _run(
        """
        import sys
        import flamepy, flamepy.service, flamepy.cache
        import flamepy_core.client.objects, flamepy_core.wire.flight, flamepy_core.engine.server
        loaded = sorted(m for m in sys.modules if m == "pyarrow" or m.startswith("pyarrow."))
        print(loaded)
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_a_flight_endpoint_without_pyarrow_names_the_extra_to_install():
    proc = _run(
        """
        import sys
        sys.modules["pyarrow"] = None  # as if the extra were not installed
        from flamepy_core.client.objects import cache_client
        from flamepy_core.contracts.errors import FlameError
        try:
            cache_client()
        except FlameError as exc:
            print(exc.code.name, exc.message)
        """,
        FLAME_CACHE_ENDPOINT="flight://127.0.0.1:1",
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("INVALID_CONFIG ")
    assert "pip install 'flamepy[flight]'" in proc.stdout
    assert "flight://127.0.0.1:1" in proc.stdout


@pytest.mark.parametrize(
    ("endpoint", "protocol", "configured", "expected"),
    [
        ("flight://h:1", None, True, True),
        ("flights://h:1", None, True, True),
        ("flight://h:1", None, False, True),  # the explicit scheme wins everywhere
        ("grpc://h:1", None, True, False),
        ("grpc://h:1", "flight", True, True),
        ("grpcs://h:1", "flight", True, True),
        ("grpc+tls://h:1", "flight", True, True),
        ("grpc://h:1", "flight", False, False),  # the local runtime's own grpc:// cache stays ours
        ("grpc://h:1", "flamepy", True, False),
        ("unix:///tmp/x.sock", "flight", True, False),
        ("zmq+ipc:///tmp/x.ipc", "flight", True, False),
    ],
)
def test_which_endpoints_speak_flight(endpoint, protocol, configured, expected):
    env = {} if protocol is None else {"FLAME_CACHE_PROTOCOL": protocol}
    assert uses_flight(endpoint, configured=configured, env=env) is expected


def test_flight_locations_and_a_bad_protocol_value():
    assert flight_location("flight://127.0.0.1:9090") == "grpc://127.0.0.1:9090"
    assert flight_location("flights://cache.example:443/") == "grpc+tls://cache.example:443"
    assert flight_location("grpcs://cache.example:443") == "grpc+tls://cache.example:443"
    assert flight_location("grpc://127.0.0.1:9090") == "grpc://127.0.0.1:9090"
    with pytest.raises(FlameError) as info:
        flight_location("unix:///tmp/cache.sock")
    assert info.value.code == FlameErrorCode.INVALID_CONFIG and "flight://host:port" in info.value.message
    with pytest.raises(FlameError) as info:
        cache_protocol({"FLAME_CACHE_PROTOCOL": "arrow"})
    assert "flamepy, flight" in info.value.message


# -- payload translation -------------------------------------------------------------------------------

CLOUDPICKLE = get_registry().serializer("cloudpickle")


@pytest.mark.parametrize("value", [{"a": [1, 2]}, "text", 3.5, None, (1, "x")])
def test_values_cross_as_flames_tagged_cloudpickle(value):
    blob = encode_value(value, CLOUDPICKLE)
    wire = to_flame(blob)
    assert wire.startswith(TAG_CLOUDPICKLE)
    assert cloudpickle.loads(wire[4:]) == value  # what Flame's SDK does with it
    assert decode_value(from_flame(wire)) == value


def test_bytes_are_cloudpickled_as_flames_sdk_does_so_both_sides_get_bytes_back():
    blob = encode_value(b"\x00raw", CLOUDPICKLE)
    wire = to_flame(blob)
    assert cloudpickle.loads(wire[4:]) == b"\x00raw"
    assert decode_value(from_flame(wire)) == b"\x00raw"
    # The server serves a stored raw-bytes envelope the same way.
    assert cloudpickle.loads(to_wire(blob)[4:]) == b"\x00raw"


def test_another_serializers_value_is_recoded_for_flame():
    json_ser = get_registry().serializer("json")
    wire = to_flame(encode_value({"k": [1]}, json_ser))
    assert cloudpickle.loads(wire[4:]) == {"k": [1]}


def test_untagged_bytes_read_as_plain_cloudpickle_and_unknown_blobs_pass_through_the_server():
    assert decode_value(from_flame(cloudpickle.dumps([7]))) == [7]
    raw = b"PK\x03\x04 a zip file, say"
    assert to_wire(to_store(raw)) == raw
    tagged = TAG_CLOUDPICKLE + cloudpickle.dumps({"x": 1})
    stored = to_store(tagged)
    assert decode_value(stored) == {"x": 1}  # flamepy's own protocol reads it
    assert to_wire(stored) == tagged  # and Flight gives back exactly what was sent
