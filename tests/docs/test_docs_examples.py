"""Every Python code block of the docs site (and the README) runs, as the page shows it.

Blocks are read from the pages at test time, so the pages cannot drift from what works. Each runnable
block gets a fresh ``FLAME_HOME`` with its own local server (``flame_env``) and a scratch folder holding
the page's modules; it passes when it exits with status 0. A comment just before a block says how to
treat it (CONTRIBUTING.md has the table):

* ``<!-- docs: module -->``: written to the file named on its first line (``# NAME.py``) for the other
  blocks of the page, not run;
* ``<!-- docs: fragment: WHY -->``: not run (a piece of a program, or one that needs a cluster);
* ``<!-- docs: pytest -->``: written to its file and run with pytest;
* ``<!-- docs: needs echo-app -->`` anywhere on a page: ``examples/echo`` is copied into the scratch
  folder and registered as ``echo-app`` before each of the page's blocks runs.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PAGES = [*sorted((REPO / "docs").rglob("*.md")), REPO / "README.md"]
FENCE = re.compile(r"^```python\n(.*?)^```", re.M | re.S)
MARKER = re.compile(r"<!-- docs: ([a-z-]+)(?::\s*(.*?))?\s*-->\s*\Z", re.S)
FILE_LINE = re.compile(r"#\s*([\w/.-]+\.py)\b")
KINDS = ("program", "module", "fragment", "pytest")


@dataclass(frozen=True)
class Block:
    page: Path
    line: int
    code: str
    kind: str
    reason: str

    @property
    def filename(self) -> str | None:
        match = FILE_LINE.match(self.code.splitlines()[0]) if self.code.strip() else None
        return match.group(1) if match else None

    @property
    def id(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line}"


def blocks_of(page: Path) -> list[Block]:
    text = page.read_text()
    found = []
    for match in FENCE.finditer(text):
        before = text[: match.start()].rstrip()
        marker = MARKER.search(before[-400:])
        kind, reason = "program", ""
        if marker and marker.group(1) != "needs":
            kind, reason = marker.group(1), marker.group(2) or ""
        found.append(Block(page, text[: match.start()].count("\n") + 1, match.group(1), kind, reason))
    return found


def needs_echo_app(page: Path) -> bool:
    return "<!-- docs: needs echo-app -->" in page.read_text()


ALL_BLOCKS = [block for page in PAGES for block in blocks_of(page)]
RUNNABLE = [b for b in ALL_BLOCKS if b.kind in ("program", "pytest")]


def test_blocks_are_found_and_marked_with_known_kinds() -> None:
    pages = {b.page.name for b in ALL_BLOCKS}
    assert {"guide.md", "concepts.md", "getting-started.md", "README.md"} <= pages
    assert len(RUNNABLE) >= 10, [b.id for b in RUNNABLE]
    for block in ALL_BLOCKS:
        assert block.kind in KINDS, f"{block.id}: unknown marker {block.kind!r}; use one of {KINDS}"
        if block.kind == "fragment":
            assert block.reason, f"{block.id}: a fragment says why it is not run (<!-- docs: fragment: WHY -->)"
        if block.kind in ("module", "pytest"):
            assert block.filename, f"{block.id}: a {block.kind} block starts with '# NAME.py'"
        if block.kind != "fragment":
            compile(block.code, block.id, "exec")  # a syntax error is reported with the page and line


def prepare(flame_env, block: Block) -> Path:
    """The page's scratch folder: echo-app registered if the page needs it, and the page's modules."""
    folder = flame_env.home / "page"
    folder.mkdir()
    flame_env.env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), flame_env.env.get("PATH", "")])
    if needs_echo_app(block.page):
        for item in (REPO / "examples" / "echo").iterdir():
            if item.is_file():
                shutil.copy(item, folder / item.name)
    for other in blocks_of(block.page):
        if other.kind == "module":
            assert other.filename is not None
            (folder / other.filename).parent.mkdir(parents=True, exist_ok=True)
            (folder / other.filename).write_text(other.code)
    if needs_echo_app(block.page):
        flame_env.run(["flmctl", "register", "--file", "echo-app.yaml"], cwd=folder)
    return folder


@pytest.mark.parametrize("block", RUNNABLE, ids=[b.id for b in RUNNABLE])
def test_docs_block_runs(flame_env, block: Block) -> None:
    folder = prepare(flame_env, block)
    if block.kind == "pytest":
        assert block.filename is not None
        (folder / block.filename).write_text(block.code)
        argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", block.filename]
    elif block.filename:
        (folder / block.filename).write_text(block.code)
        argv = [sys.executable, block.filename]
    else:
        argv = [sys.executable, "-c", block.code]
    proc = flame_env.run(argv, cwd=folder, check=False, timeout=90)
    assert proc.returncode == 0, (
        f"{block.id} exited with {proc.returncode}\n--- block\n{block.code}\n--- stdout\n{proc.stdout}"
        f"\n--- stderr\n{proc.stderr}"
    )
