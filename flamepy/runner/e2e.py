"""A smoke test of ``Runner`` against the configured cluster (or the embedded default).

``python -m flamepy.runner`` runs it: in a work folder (a temporary one unless ``--workdir``) it writes a
small module, packages it with ``Runner``, and checks a function service (``square`` over
``range(tasks)``), a chained call (a future passed as an argument), and a stateful object service (a
``Counter`` with ``warmup=1``). It exits 0 when every result is right, 1 otherwise (with the reason on
stderr); ``--json`` prints the results as JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import textwrap
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType

from flamepy.core import types as _types
from flamepy.runner.runner import Runner
from flamepy_core.client.api import get_application
from flamepy_core.model import short_name

__all__ = ["RunnerE2EResult", "main", "run_runner_e2e"]

MODULE = "flamepy_runner_e2e_app"
MODULE_SOURCE = '''
"""Functions and a class served by the Runner smoke test (python -m flamepy.runner)."""


def square(x):
    return x * x


def add(a, b):
    return a + b


class Counter:
    def __init__(self):
        self.value = 0

    def add(self, n):
        self.value += n
        return self.value

    def get(self):
        return self.value
'''
README = "# Runner smoke test\n\nWritten by `python -m flamepy.runner`; packaged and run as a Runner application.\n"


@dataclass
class RunnerE2EResult:
    app_name: str
    template: str
    workdir: str
    function_results: list[int]
    chained_result: int
    stateful_result: int


@contextlib.contextmanager
def _chdir(path: Path) -> Iterator[None]:
    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def _load(folder: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(MODULE, folder / f"{MODULE}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[MODULE] = module  # so cloudpickle pickles its functions by reference, as a project's code
    spec.loader.exec_module(module)
    return module


def run_runner_e2e(
    name: str | None = None,
    tasks: int = 4,
    python_version: str | None = None,
    dependencies: list[str] | None = None,
    workdir: str | os.PathLike[str] | None = None,
    keep_workdir: bool = False,
) -> RunnerE2EResult:
    """Run the smoke test and return what each part computed (raises on any failure)."""
    if not isinstance(tasks, int) or tasks < 1:
        raise ValueError(f"tasks must be a positive integer, got {tasks!r}")
    template = _types.FlameContext().runner.template or "flmrun"
    if get_application(template) is None:
        raise RuntimeError(f"the Runner template application {template} is not registered")
    app = name or short_name("runner-e2e")
    made = workdir is None
    folder = Path(tempfile.mkdtemp(prefix="flamepy-runner-e2e-")) if workdir is None else Path(workdir)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        (folder / f"{MODULE}.py").write_text(textwrap.dedent(MODULE_SOURCE).lstrip())
        if not (folder / "README.md").exists():
            (folder / "README.md").write_text(README)
        module = _load(folder)
        with _chdir(folder), Runner(app, dependencies=dependencies, python_version=python_version) as runner:
            squares = runner.service(module.square)
            function_results = runner.get([squares(i) for i in range(tasks)])
            adder = runner.service(module.add)
            chained = adder(squares(tasks), squares(tasks + 1)).get()
            counter = runner.service(module.Counter(), warmup=1)
            counter.add(2).wait()
            stateful = counter.add(4).get()
        return RunnerE2EResult(app, template, str(folder), function_results, chained, stateful)
    finally:
        sys.modules.pop(MODULE, None)
        if made and not keep_workdir:
            shutil.rmtree(folder, ignore_errors=True)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flamepy.runner", description=__doc__.split("\n\n")[0])
    parser.add_argument("--name", help="application name (default: runner-e2e-<random>)")
    parser.add_argument("--tasks", type=_positive, default=4, help="calls of the function service (default 4)")
    parser.add_argument("--python-version", help="Python version for the application's instances, e.g. 3.12")
    parser.add_argument("--dependency", action="append", default=[], help="a dependency to install (repeatable)")
    parser.add_argument("--workdir", help="folder to package (default: a temporary one)")
    parser.add_argument("--keep-workdir", action="store_true", help="keep the temporary work folder")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    try:
        result = run_runner_e2e(
            name=args.name,
            tasks=args.tasks,
            python_version=args.python_version,
            dependencies=args.dependency or None,
            workdir=args.workdir,
            keep_workdir=args.keep_workdir,
        )
    except Exception as exc:
        print(f"Runner smoke test failed: {exc}", file=sys.stderr)
        return 1
    expected = [i * i for i in range(args.tasks)]
    wrong = []
    if result.function_results != expected:
        wrong.append(f"function results {result.function_results} != {expected}")
    if result.chained_result != args.tasks**2 + (args.tasks + 1) ** 2:
        wrong.append(f"chained result {result.chained_result} != {args.tasks**2 + (args.tasks + 1) ** 2}")
    if result.stateful_result != 6:
        wrong.append(f"stateful result {result.stateful_result} != 6")
    if args.json:
        print(json.dumps(asdict(result), sort_keys=True))
    else:
        print(f"application {result.app_name} (template {result.template}) in {result.workdir}")
        print(f"function results: {result.function_results}")
        print(f"chained result:   {result.chained_result}")
        print(f"stateful result:  {result.stateful_result}")
    for line in wrong:
        print(f"Runner smoke test failed: {line}", file=sys.stderr)
    return 1 if wrong else 0
