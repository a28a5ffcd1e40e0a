"""docs/runtime.md lists every runtime setting with its default, and configuration.md every variable:
a setting added to ``RuntimeSettings`` without its line in both, or a default changed in one place only,
fails here."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

from flamepy_core.config import RuntimeSettings

DOCS = Path(__file__).resolve().parent.parent.parent / "docs"


def _default_text(kind: str, value: float) -> str:
    if kind == "seconds":
        return f"{value:g} s"
    if kind == "bytes":
        return f"{int(value) // (1024 * 1024)} MiB"
    return str(value)


def _table_after(page: str, heading: str) -> dict[str, list[str]]:
    """The first table after ``heading``: its rows by the first cell (a `name`)."""
    text = (DOCS / page).read_text()
    section = text[text.index(heading) :]
    rows: dict[str, list[str]] = {}
    for line in section.splitlines()[1:]:
        if rows and not line.startswith("|"):
            break
        match = re.match(r"\| `(\w+)` \|(.*)\|$", line)
        if match:
            rows[match.group(1)] = [cell.strip() for cell in match.group(2).split("|")]
    return rows


def test_runtime_page_lists_every_setting_with_its_default() -> None:
    rows = _table_after("runtime.md", "## Every setting")
    settings = RuntimeSettings()
    expected = {f.name: _default_text(f.metadata["kind"], getattr(settings, f.name)) for f in fields(settings)}
    assert set(rows) == set(expected), "docs/runtime.md, Every setting: one row per RuntimeSettings field"
    for name, default in expected.items():
        assert rows[name][0] == default, f"{name}: the page says {rows[name][0]!r}, the code {default!r}"


def test_configuration_page_names_every_variable() -> None:
    rows = _table_after("configuration.md", "| setting | variable | default | meaning |")
    for f in fields(RuntimeSettings):
        assert f.name in rows, f"docs/configuration.md has no row for {f.name}"
        assert rows[f.name][0] == f"`{RuntimeSettings.env_var(f.name)}`"
