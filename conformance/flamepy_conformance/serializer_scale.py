"""Large documents and many threads (a mixin of :class:`~flamepy_conformance.SerializerTests`).

What the contract says and this module checks:

* documents of megabytes round-trip exactly (:func:`~flamepy_conformance.strategies.large_documents`,
  sized by :data:`~flamepy_core.contracts.bounds.LARGE_DOCUMENT_BYTES`): a fixed buffer, a short length
  field or a decompression cap fails here;
* one serializer object shared by many threads gives, from each of them, the same bytes for a value as
  one thread does, and decodes those bytes to the same value: a serializer that reuses a buffer, an
  encoder or a memo between calls mixes its callers' output up. The threads are switched as often as the
  interpreter allows while they run, so a race shows in a few examples.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flamepy_conformance.serializer_base import SerializerSuiteBase, _show, difference
from flamepy_conformance.strategies import large_documents
from flamepy_core.contracts.bounds import LARGE_DOCUMENT_BYTES
from flamepy_core.contracts.errors import FlameError


@contextmanager
def frequent_thread_switches() -> Iterator[None]:
    """Make the interpreter switch threads as often as it can, so races between threads show."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(before)


class SerializerScaleTests(SerializerSuiteBase):
    """Megabyte documents, and the same bytes from many threads as from one."""

    def large_values(self, size: int = LARGE_DOCUMENT_BYTES) -> list[tuple[str, Any]]:
        """Named documents of about ``size`` bytes in the serializer's domain (override for a domain of your own)."""
        try:
            return large_documents(self.serializer.domain, size)
        except ValueError as exc:
            pytest.skip(
                f"serializer {self.serializer.name} declares the domain {self.serializer.domain!r} ({exc}); "
                f"override SerializerTests.large_values() to supply large documents"
            )

    def test_serializer_round_trips_large_documents(self) -> None:
        """Documents of megabytes (a long str, long lists and dicts, raw bytes) come back exactly."""
        name = self.serializer.name
        for what, value in self.large_values():
            started = time.monotonic()
            try:
                data = self.serializer.dumps(value)
                back = self.serializer.loads(data)
            except FlameError as err:
                raise AssertionError(
                    f"serializer {name!r} failed on {what}: FlameError({err.code.name}, {err.message[:300]!r})"
                ) from err
            found = difference(value, back)
            assert found is None, f"serializer {name!r}: {what} ({len(data)} bytes encoded) came back changed: {found}"
            assert time.monotonic() - started < self.call_timeout * 3, f"serializer {name!r}: {what} took too long"

    def test_serializer_gives_the_same_bytes_from_many_threads(self) -> None:
        """Threads sharing one serializer get the bytes one thread gets, and decode them to the same values."""
        values = self.values()
        long_one = [value for _what, value in self.large_values(64 * 1024)][:1]  # keeps each call busy a while
        name = self.serializer.name

        @self.hypothesis_settings(0.1)
        @given(batch=st.lists(values, min_size=4, max_size=8))
        def check(batch: list[Any]) -> None:
            batch = batch + long_one
            expected = [self.serializer.dumps(value) for value in batch]  # one thread
            decoded = [self.serializer.loads(data) for data in expected]
            barrier = threading.Barrier(self.threads)
            problems: list[str] = []

            def work(offset: int) -> None:
                barrier.wait(timeout=self.call_timeout)
                for round_ in range(2):
                    for i in range(len(batch)):
                        k = (i + offset + round_) % len(batch)
                        try:
                            data = self.serializer.dumps(batch[k])
                            back = self.serializer.loads(expected[k])
                        except Exception as exc:  # a shared state broken by another thread
                            problems.append(f"value {k}: {type(exc).__name__}: {str(exc)[:200]}")
                            return
                        if data != expected[k]:
                            problems.append(
                                f"value {k}: dumps gave {len(data)} bytes {_show(data[:40])} in a thread, "
                                f"{len(expected[k])} bytes {_show(expected[k][:40])} alone"
                            )
                            return
                        found = difference(decoded[k], back)
                        if found:
                            problems.append(f"value {k}: loads in a thread gave another value: {found}")
                            return

            workers = [threading.Thread(target=work, args=(n,), daemon=True) for n in range(self.threads)]
            with frequent_thread_switches():
                for worker in workers:
                    worker.start()
                for worker in workers:
                    worker.join(self.call_timeout * 3)
            assert not any(w.is_alive() for w in workers), f"serializer {name!r}: a thread was still working"
            assert not problems, (
                f"serializer {name!r} shared by {self.threads} threads gave what one thread does not: {problems[0]}"
            )

        check()
