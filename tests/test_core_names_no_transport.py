"""The core names no bundled transport: what it needs from one is a declared capability.

Every string literal in ``flamepy_core/`` and ``flamepy/`` (docstrings excepted: they are documentation)
is searched for a bundled transport's name or scheme (``zmq``, ``grpc``, ``inmem``, ``unix``, ``ipc``).
The allow-list holds what is not about our transports, each with its reason.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CORE = [REPO / "flamepy_core", REPO / "flamepy"]
NAMES = re.compile(r"(?<![A-Za-z0-9_])(zmq|grpc|inmem|unix|ipc)(?![A-Za-z0-9_])")

ALLOWED: dict[str, str] = {
    # Arrow Flight, Flame's object-cache protocol, writes its own locations as grpc:// (and gRPC channel
    # options): a fact of that protocol, not one of our transports.
    "flamepy_core/wire/flight/__init__.py": "Arrow Flight location schemes",
    "flamepy_core/client/flight.py": "Arrow Flight's gRPC channel options and locations",
    "flamepy_core/engine/flight.py": "Arrow Flight listen addresses",
    "flamepy_core/flight/__main__.py": "Arrow Flight listen addresses",
    "flamepy_core/engine/__main__.py": "the --flight-listen help names an Arrow Flight address",
    "flamepy_core/config.py": "Flame's published default cache address (display only, never dialled)",
    "flamepy/runner/storage.py": "Flame's package.storage URL forms (grpc(s):// names Flame's object cache)",
    "flamepy_core/cli/main.py": "flmctl's help text: an example endpoint (documentation shown by --help)",
    "flamepy_core/cli/commands/server.py": "flmctl server's examples (documentation shown by --help)",
}


def _docstrings(tree: ast.AST) -> set[int]:
    """The string constants that are documentation: every string standing alone as a statement (module,
    class and function docstrings, and the attribute docstrings that follow an assignment)."""
    return {
        id(node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)
    }


def _named(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    docs = _docstrings(tree)
    hits = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            match = NAMES.search(node.value)
            if match:
                hits.append((node.lineno, node.value))
    return hits


def _core_files() -> list[Path]:
    files = [p for root in CORE for p in sorted(root.rglob("*.py")) if "_pb2" not in p.name]
    assert len(files) > 50, "the test must see the core"
    return files


def test_the_core_names_no_bundled_transport() -> None:
    offenders = []
    for path in _core_files():
        rel = path.relative_to(REPO).as_posix()
        if rel in ALLOWED:
            continue
        offenders += [f"{rel}:{line}: {text!r}" for line, text in _named(path)]
    assert not offenders, "the core names a bundled transport (declare a capability instead):\n" + "\n".join(offenders)


def test_the_allow_list_is_still_needed() -> None:
    """An allow-list entry whose file no longer names anything must go, so the list stays honest."""
    stale = [rel for rel in ALLOWED if not (REPO / rel).exists() or not _named(REPO / rel)]
    assert not stale, f"allow-list entries that name nothing any more: {stale}"


@pytest.mark.parametrize("text", ['"zmq+ipc://x"', "'grpc'", 'f"unix://{path}"', '"inmem"', '"a.ipc"'])
def test_the_check_sees_a_name(tmp_path: Path, text: str) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text(f'"""docstrings may say zmq."""\nVALUE = {text}\n')
    assert _named(probe), f"{text} went unseen"
