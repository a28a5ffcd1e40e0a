"""The complete examples of ``docs/sandbox.md`` and ``docs/runner.md`` run as written.

Each page has one Python block under the heading "## A complete example". The block is read from the
page at test time and run as a script in a fresh folder against the test's own embedded server (a fresh
``FLAME_HOME``, nothing configured). Every ``print(...)  # text`` line of the block states what it
prints: the script's output must be exactly those texts, in order.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[2] / "docs"
HEADING = "## A complete example"


def example(page: str) -> str:
    text = (DOCS / page).read_text()
    assert HEADING in text, f"docs/{page} has no '{HEADING}' section"
    section = text.split(HEADING, 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, f"docs/{page}: no python block under '{HEADING}'"
    return match.group(1)


def expected_output(code: str) -> list[str]:
    lines = []
    for line in code.splitlines():
        if "print(" in line and "  # " in line:
            lines.append(line.rsplit("  # ", 1)[1].strip())
    return lines


@pytest.mark.parametrize("page", ["sandbox.md", "runner.md"])
def test_complete_example_runs(page: str, flame_env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    if not (DOCS / page).exists():
        pytest.skip(f"docs/{page} lands with its own slice")
    code = example(page)
    expected = expected_output(code)
    assert expected, f"docs/{page}: the example states no output"
    script = tmp_path / "example.py"
    script.write_text(code)
    done = flame_env.run([sys.executable, str(script)], cwd=tmp_path, timeout=180)
    assert done.stdout.splitlines() == expected, done.stderr
