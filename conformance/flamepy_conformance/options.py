"""What the three suites share: reading the ``--flamepy-*`` pytest options of the run they are in."""

from __future__ import annotations

from typing import TypeVar, cast

import pytest

T = TypeVar("T")


class SuiteOptions:
    """Mixin: the pytest config of the current test, and its ``--flamepy-*`` options with defaults."""

    _flamepy_config: pytest.Config | None = None

    def _option(self, name: str, default: T) -> T:
        """The option ``name`` of this run, or ``default`` outside pytest or when it is not given."""
        if self._flamepy_config is None:
            return default
        value = self._flamepy_config.getoption(name, default)
        return default if value is None else cast(T, value)

    def _plugin_name(self, configured: str | None, option: str, attribute: str, hook: str) -> str:
        """The plugin under test: the class attribute, else the command-line option, else a clear failure."""
        name = configured or self._option(option, "")
        if not name:
            pytest.fail(
                f"{type(self).__name__}: set {attribute} = 'NAME', override {hook}(), "
                f"or run pytest with --{option.replace('_', '-')} NAME"
            )
        return name
