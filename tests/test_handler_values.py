"""The four handler kinds behave as values, as the frozen dataclasses they replaced did.

They are plain classes with slots (cheaper to define when a service process starts), so what a
dataclass gave for free is checked here: built by position or keyword, equal and hashed by their
function and kind, immutable, matched by ``case UnaryHandler(fn)``, shown with their function.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from flamepy_core.contracts.transport import DeferredHandler, DeferredStreamHandler, StreamHandler, UnaryHandler

KINDS: list[type[Any]] = [UnaryHandler, StreamHandler, DeferredHandler, DeferredStreamHandler]


def echo(request: bytes, *_rest: object) -> bytes:
    return request


def other(request: bytes, *_rest: object) -> bytes:
    return request[::-1]


@pytest.mark.parametrize("kind", KINDS)
def test_a_handler_is_a_value_of_its_kind_and_function(kind: Callable[..., Any]) -> None:
    handler = kind(echo)
    assert handler.fn is echo and kind(fn=echo).fn is echo
    assert handler == kind(echo) and hash(handler) == hash(kind(echo))
    assert handler != kind(other)
    assert all(handler != another(echo) for another in KINDS if another is not kind), "kinds never compare equal"
    assert len({handler, kind(echo), kind(other)}) == 2
    assert repr(handler) == f"{kind.__name__}(fn={echo!r})"
    with pytest.raises(AttributeError, match="immutable"):
        handler.fn = other
    with pytest.raises(AttributeError, match="immutable"):
        del handler.fn
    with pytest.raises(AttributeError):
        handler.extra = 1  # no instance dict: slots only
    match handler:
        case UnaryHandler(fn) | StreamHandler(fn) | DeferredHandler(fn) | DeferredStreamHandler(fn):
            assert fn is echo
        case _:
            raise AssertionError("a handler did not match its kind's pattern")
