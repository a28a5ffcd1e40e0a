"""zjson keeps flamepy's serializer contract: the conformance suite's serializer layer, unchanged."""

from __future__ import annotations

from flamepy_conformance import SerializerTests


class TestZjson(SerializerTests):
    serializer_name = "zjson"
