"""Names a package exports but imports on first use (PEP 562), shared by every package that does so.

The public packages (``flamepy.core``, ``flamepy.service``, the contracts, the kit, ...) re-export names
from many modules. Importing them all at once would load pluggy, protobuf and grpc into a service process
that needs none of them, and slow every start; so each package maps a name to its module and imports it
when first read. This module is the lowest layer of all and imports nothing of flamepy's.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterable, Mapping
from typing import Any


class LazyNames:
    """The ``__getattr__`` and ``__dir__`` of a package whose names ``where`` maps to their modules.

    A package uses it as::

        _names = LazyNames(__name__, _WHERE)

        def __getattr__(name: str) -> Any:
            return _names.load(name)

        def __dir__() -> list[str]:
            return _names.listing()

    (module-level functions of their own, so type checkers see the package's ``__getattr__``).
    """

    def __init__(self, package: str, where: Mapping[str, str], exported: Iterable[str] = ()) -> None:
        self._package = package
        self._where = where
        self._exported = frozenset(exported) | frozenset(where)

    def load(self, name: str) -> Any:
        """Import ``name`` from its module, and keep it in the package so the next read is a plain lookup."""
        module = self._where.get(name)
        if module is None:
            raise AttributeError(f"module {self._package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        setattr(sys.modules[self._package], name, value)
        return value

    def listing(self) -> list[str]:
        """What ``dir()`` shows: what the package holds now, and every name it exports."""
        return sorted({*vars(sys.modules[self._package]), *self._exported})
