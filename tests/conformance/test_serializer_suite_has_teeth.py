"""The serializer suite fails serializers that break the contract, and fails the *right* tests.

Each deliberately broken serializer of ``broken_serializers.py`` runs the suite's test about its fault,
which must fail for that fault's reason, and the tests next to it, which must pass: a fault the old suite
let through, or a suite that fails everything, would show here.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass

import pytest
from broken_serializers import BrokenSerializersPlugin
from flamepy_conformance import SerializerTests

from flamepy_core.plugins import PluginRegistry

REGISTRY = PluginRegistry(autoload=False, strict=True)
REGISTRY.register(BrokenSerializersPlugin(), name="broken-serializers")


@dataclass(frozen=True)
class Fault:
    serializer: str
    fails: str
    evidence: str
    passes: tuple[str, ...]


OUTSIDE_ONCE = "test_serializer_refuses_values_outside_its_domain_when_encoding"

FAULTS = [
    Fault(
        "broken-sharedbuffer",
        "test_serializer_gives_the_same_bytes_from_many_threads",
        "gave what one thread does not",
        ("test_serializer_round_trips_its_domain_exactly", "test_serializer_round_trips_large_documents"),
    ),
    Fault(
        "broken-zipcap",
        "test_serializer_round_trips_large_documents",
        "failed on a str of 8388608 bytes of UTF-8",
        ("test_serializer_round_trips_its_domain_exactly", "test_serializer_gives_the_same_bytes_from_many_threads"),
    ),
    Fault(
        "broken-isinstance",
        "test_serializer_never_silently_converts_subclasses_of_its_domain_types",
        "silently converted",
        (
            "test_serializer_round_trips_its_domain_exactly",
            "test_serializer_refuses_values_outside_its_domain_when_encoding",
        ),
    ),
    Fault(
        "broken-negativecache",
        "test_serializer_refuses_values_outside_its_domain_the_same_way_every_time",
        "must be a FlameError",
        (
            "test_serializer_round_trips_its_domain_exactly",
            "test_serializer_refuses_values_outside_its_domain_when_encoding",
        ),
    ),
]


def _suite(name: str) -> SerializerTests:
    """The suite bound to the broken serializer ``name``, ready to run a test by hand."""

    class Suite(SerializerTests):
        serializer_name = name
        max_examples = 20
        shrink_failures = False

        def plugin_registry(self) -> PluginRegistry:
            return REGISTRY

    suite = Suite()
    suite._flamepy_config = None
    suite.serializer = suite.make_serializer()
    return suite


@pytest.mark.parametrize("fault", FAULTS, ids=[f.serializer for f in FAULTS])
def test_the_serializer_suite_fails_the_broken_serializer(fault: Fault) -> None:
    with pytest.raises(Exception) as info:  # hypothesis may group several distinct failures
        getattr(_suite(fault.serializer), fault.fails)()
    report = "".join(traceback.format_exception(info.value))
    assert fault.evidence in report, report
    for name in fault.passes:  # the fault is caught by the test about it, not by everything
        getattr(_suite(fault.serializer), name)()
