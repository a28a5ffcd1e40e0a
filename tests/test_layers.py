"""The layers of the core point one way, and the check that says so can fail.

``lint-imports`` (import-linter, configured in ``pyproject.toml``) is what CI runs. These tests prove
that it passes on the tree as it is, that it fails when a backward import is inserted into a copy of the
tree, and that each layer imports alone in a fresh interpreter without loading any layer above it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
LINT_IMPORTS = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")

pytestmark = pytest.mark.skipif(LINT_IMPORTS is None, reason="import-linter is not installed: pip install -e '.[dev]'")

# Each layer, and the packages above it that importing it must not load.
LAYERS: dict[str, tuple[str, ...]] = {
    "flamepy_core.contracts": ("flamepy_core.plugins", "flamepy_core.wire", "flamepy_core.client"),
    "flamepy_core.plugins": ("flamepy_core.wire", "flamepy_core.home", "flamepy_core.client", "flamepy_core.engine"),
    "flamepy_core.transport_kit": ("flamepy_core.plugins", "flamepy_core.client", "flamepy_core.engine"),
    "flamepy_core.plugin_classes": ("flamepy_core.plugins", "pluggy", "flamepy_core.config", "flamepy_core.wire"),
    "flamepy_core.addresses": ("flamepy_core.config", "flamepy_core.plugins", "flamepy_core.kit"),
    "flamepy_core.wire.methods": ("flamepy_core.config", "flamepy_core.client", "flamepy_core.engine"),
    "flamepy_core.wire.envelope": ("flamepy_core.home", "flamepy_core.client", "flamepy_core.engine"),
    "flamepy_core.wire.flight": ("pyarrow", "flamepy_core.client", "flamepy_core.engine"),
    "flamepy_core.config": ("flamepy_core.plugins", "flamepy_core.wire", "flamepy_core.client", "flamepy_core.engine"),
    "flamepy_core.home": ("flamepy_core.client", "flamepy_core.engine"),
    "flamepy_core.model": ("flamepy_core.client", "flamepy_core.engine", "flamepy_core.instance"),
    "flamepy_core.serialization": ("flamepy_core.client", "flamepy_core.engine", "flamepy_core.instance"),
    "flamepy_core.instance.runtime": ("flamepy_core.client", "flamepy_core.engine", "flamepy_core.cli"),
    "flamepy_core.client.connection": ("flamepy_core.engine", "flamepy_core.cli", "flamepy", "pyarrow"),
    "flamepy_core.client.objects": ("flamepy_core.engine", "flamepy_core.cli", "flamepy", "pyarrow"),
    "flamepy_core.engine.server": ("flamepy_core.client", "flamepy_core.cli", "flamepy", "pyarrow"),
    "flamepy_core.cli.main": ("flamepy", "pyarrow"),
    "flamepy": ("pyarrow", "flamepy_core.engine.server"),
}


def _lint(cwd: Path, pythonpath: str | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = pythonpath
    assert LINT_IMPORTS is not None
    return subprocess.run(
        [LINT_IMPORTS, "--no-cache"], cwd=cwd, env=env, capture_output=True, text=True, timeout=120, check=False
    )


def test_the_layering_check_passes_on_the_tree() -> None:
    result = _lint(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "broken" in result.stdout and " 0 broken" in result.stdout, result.stdout


@pytest.mark.parametrize(
    ("module", "backward_import", "contract"),
    [
        ("flamepy_core/wire/methods.py", "import flamepy_core.engine.server", "core-layers"),
        ("flamepy_core/client/objects.py", "import flamepy_core.engine.store", "core-layers"),
        ("flamepy_core/engine/objects.py", "import flamepy_core.client.session", "core-layers"),
        ("flamepy_core/contracts/errors.py", "import flamepy_core.plugins", "core-layers"),
        ("flamepy_core/plugins.py", "import flamepy_transports.zmq.transport", "core-names-no-plugin"),
    ],
)
def test_the_check_fails_on_an_inserted_backward_import(
    tmp_path: Path, module: str, backward_import: str, contract: str
) -> None:
    """A copy of the tree with one arrow pointing back up: ``lint-imports`` must refuse it, naming it."""
    tree = tmp_path / "tree"
    for package in ("flamepy", "flamepy_core"):
        shutil.copytree(REPO / package, tree / package, ignore=shutil.ignore_patterns("__pycache__"))
    for folder in ("transports", "serializers", "conformance"):
        shutil.copytree(REPO / folder, tree / folder, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tree / "pyproject.toml")
    target = tree / module
    target.write_text(target.read_text() + f"\n{backward_import}  # inserted by tests/test_layers.py\n")
    pythonpath = os.pathsep.join(str(tree / p) for p in ("", "transports", "serializers", "conformance"))
    result = _lint(tree, pythonpath)
    assert result.returncode != 0, f"lint-imports accepted {backward_import} in {module}:\n{result.stdout}"
    assert "BROKEN" in result.stdout, result.stdout
    dotted_target = module.removesuffix(".py").replace("/", ".")
    assert dotted_target in result.stdout, f"the report does not name {dotted_target}:\n{result.stdout}"


@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_each_layer_imports_alone_in_a_fresh_interpreter(layer: str) -> None:
    """``import <layer>`` works in a new process and loads nothing from the layers above it."""
    code = f"import importlib, json, sys\nimportlib.import_module({layer!r})\nprint(json.dumps(sorted(sys.modules)))\n"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False, cwd=REPO
    )
    assert result.returncode == 0, f"import {layer} failed in a fresh interpreter:\n{result.stderr}"
    loaded = json.loads(result.stdout)
    above = [m for m in loaded for top in LAYERS[layer] if m == top or m.startswith(top + ".")]
    assert not above, f"importing {layer} also loaded {sorted(above)}, which sit above it"
