"""The four bundled serializers keep the serializer contract (the whole conformance suite, each).

Also: ``flamepy-conformance --serializer NAME`` runs the serializer layer by name, alone or beside a
transport, and a serializer that breaks the contract fails it (the suite has teeth).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from flamepy_conformance import SerializerTests
from flamepy_conformance.serializer_suite import difference

from flamepy_core.contracts import SerializerSpec, hookimpl
from flamepy_core.contracts.errors import FlameError, FlameErrorCode
from flamepy_core.plugins import PluginRegistry


class TestCloudpickle(SerializerTests):
    serializer_name = "cloudpickle"


class TestPickle(SerializerTests):
    serializer_name = "pickle"


class TestJson(SerializerTests):
    serializer_name = "json"


class TestMsgpack(SerializerTests):
    serializer_name = "msgpack"


# -- the suite has teeth ---------------------------------------------------------------------------------


class _TupleToList:
    """Breaks the contract the way json.dumps would: a tuple quietly comes back as a list."""

    name = "lossy"
    domain = "python"

    def dumps(self, obj: Any) -> bytes:
        import json

        try:
            return json.dumps(obj).encode()
        except TypeError as exc:
            raise FlameError(FlameErrorCode.INVALID_ARGUMENT, f"serializer 'lossy' cannot encode {exc}") from exc

    def loads(self, data: bytes) -> Any:
        import json

        return json.loads(data)  # garbage raises JSONDecodeError, not FlameError


class _LossyPlugin:
    @hookimpl
    def flamepy_add_serializers(self) -> Sequence[SerializerSpec]:
        return [SerializerSpec(name="lossy", domain="python", load=lambda: _TupleToList)]


class _LossyTests(SerializerTests):
    serializer_name = "lossy"
    max_examples = 30

    def plugin_registry(self) -> PluginRegistry:
        registry = PluginRegistry(autoload=False)
        registry.register(_LossyPlugin(), name="lossy-plugin")
        return registry


def test_difference_is_stricter_than_equality() -> None:
    assert difference((1, 2), [1, 2]) is not None
    assert difference(1, True) is not None
    assert difference(1, 1.0) is not None
    assert difference(0.0, -0.0) is not None
    assert difference({"a": 1, "b": 2}, {"b": 2, "a": 1}) is not None  # order is part of the value
    assert difference({"a": [1, (2,)]}, {"a": [1, (2,)]}) is None
    assert difference(float("nan"), float("nan")) is None


@pytest.mark.parametrize(
    ("test_name", "complaint"),
    [
        ("test_serializer_round_trips_its_domain_exactly", "did not round-trip exactly: value: sent tuple"),
        ("test_serializer_decodes_garbage_or_names_itself", "raised JSONDecodeError"),
    ],
)
def test_a_lossy_serializer_fails_the_suite(test_name: str, complaint: str) -> None:
    instance = _LossyTests()
    instance._flamepy_config = None
    instance.serializer = instance.make_serializer()
    with pytest.raises(Exception) as info:  # hypothesis may group several distinct failures
        getattr(instance, test_name)()
    report = "".join(traceback.format_exception(info.value))
    assert complaint in report, report


# -- the command -------------------------------------------------------------------------------------------


def _command() -> list[str]:
    script = Path(sys.executable).with_name("flamepy-conformance")
    if script.exists():
        return [str(script)]
    found = shutil.which("flamepy-conformance")
    return [found] if found else [sys.executable, "-m", "flamepy_conformance.command"]


def _run(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    return subprocess.run(
        [*_command(), *args], capture_output=True, text=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL
    )


def test_command_runs_the_serializer_layer_by_name() -> None:
    result = _run("--serializer", "json", "--max-examples", "10", timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "serializer 'json' (plugin json, distribution flamepy" in output and "domain json" in output, output
    assert "transport '" not in output, output  # --transport is optional when only the serializer layer runs
    assert "13 passed, 0 failed, 0 error, 0 skipped" in output, output


def test_command_with_layer_serializer_needs_a_serializer() -> None:
    result = _run("--transport", "inmem", "--layer", "serializer", timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "--serializer NAME is required for --layer serializer" in result.stderr, result.stderr


def test_command_unknown_serializer_exits_2_listing_installed_ones() -> None:
    result = _run("--serializer", "jsno", timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "unknown serializer 'jsno' (did you mean 'json'?)" in result.stderr, result.stderr
    assert "Installed serializers:" in result.stderr and "msgpack" in result.stderr, result.stderr


def test_command_runs_both_layers_when_both_are_named() -> None:
    result = _run(
        "--transport",
        "inmem",
        "--serializer",
        "msgpack",
        "--max-examples",
        "5",
        "-k",
        "test_unary_round_trip or round_trips_its_domain",
        timeout=300,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "transport 'inmem'" in output and "serializer 'msgpack'" in output, output
    assert "2 passed, 0 failed" in output, output  # one test of each layer
